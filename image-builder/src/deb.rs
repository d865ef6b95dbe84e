//! Debian packages as build inputs: downloaded with `apt-get download` into a cache (never
//! installed), checked against the SHA-256 that apt's signed index gives, and unpacked with
//! `dpkg-deb -x`. The kernel and the EFI stub come from here, so the host's own kernel never
//! leaks into an image.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cmd;
use crate::error::{invalid, IoContext, Result};

/// A directory holding downloaded `.deb` files and their unpacked trees.
#[derive(Debug, Clone)]
pub struct DebCache {
    root: PathBuf,
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(path).ctx("opening for hashing", path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).ctx("hashing", path)?;
    Ok(h.finalize().into())
}

/// `apt-cache show` of the candidate version; an error when apt knows no such package.
fn apt_show(package: &str) -> Result<String> {
    let show = cmd::stdout(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    if !show.lines().any(|l| l.starts_with("Filename:")) {
        return Err(invalid(format!(
            "apt knows no downloadable {package} (run `apt-get update`?)"
        )));
    }
    Ok(show)
}

fn is_root() -> bool {
    cmd::stdout(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

impl DebCache {
    /// Uses `dir`, creating it when needed.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let root = dir.into();
        std::fs::create_dir_all(root.join("debs")).ctx("creating cache", &root)?;
        std::fs::create_dir_all(root.join("unpacked")).ctx("creating cache", &root)?;
        Ok(Self { root })
    }

    /// `$CVM_IMAGE_CACHE`, else `$XDG_CACHE_HOME/cvm-image`, else `~/.cache/cvm-image`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("CVM_IMAGE_CACHE") {
            return d.into();
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("cvm-image");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/cvm-image")
    }

    /// The `.deb` of the candidate version of `package`, downloaded unless already cached with
    /// the digest apt expects.
    pub fn fetch(&self, package: &str) -> Result<PathBuf> {
        if package.is_empty()
            || !package
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.:~_".contains(c))
        {
            return Err(invalid(format!("not a Debian package name: {package:?}")));
        }
        let show = match apt_show(package) {
            Ok(s) => s,
            // Fresh machines and containers often have empty apt lists: as root, fetch them once.
            Err(_) if self.cached(package).is_none() && is_root() => {
                cmd::run(Command::new("apt-get").args(["-q", "update"]))?;
                apt_show(package)?
            }
            // Offline, or apt's lists being replaced right now: a cached download still serves.
            Err(e) => return self.cached(package).ok_or(e),
        };
        let field = |name: &str| {
            show.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let (Some(filename), Some(sha)) = (field("Filename:"), field("SHA256:")) else {
            return Err(invalid(format!(
                "apt knows no downloadable {package} (run `apt-get update`?)"
            )));
        };
        let base = Path::new(&filename)
            .file_name()
            .ok_or_else(|| invalid(format!("odd Filename {filename}")))?;
        let target = self.root.join("debs").join(base);
        if target.exists() && hex::encode(sha256_file(&target)?) == sha {
            return Ok(target);
        }
        let tmp = tempfile::tempdir_in(&self.root).ctx("creating download dir", &self.root)?;
        cmd::run(
            Command::new("apt-get")
                .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
                .current_dir(tmp.path()),
        )?;
        let got = tmp.path().join(base);
        if hex::encode(sha256_file(&got)?) != sha {
            return Err(invalid(format!(
                "{} does not have the SHA-256 apt expects",
                got.display()
            )));
        }
        std::fs::rename(&got, &target).ctx("moving download into cache", &target)?;
        Ok(target)
    }

    /// The newest cached `.deb` of `package`, if any.
    fn cached(&self, package: &str) -> Option<PathBuf> {
        let prefix = format!("{package}_");
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.root.join("debs"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .collect();
        found.sort();
        found.pop()
    }

    /// Unpacks `deb` once and returns the tree.
    pub fn unpack(&self, deb: &Path) -> Result<PathBuf> {
        let digest = hex::encode(sha256_file(deb)?);
        let dir = self.root.join("unpacked").join(&digest[..32]);
        if dir.join(".complete").exists() {
            return Ok(dir);
        }
        // Unpack into a private temp dir and rename: concurrent builds may race here.
        let tmp = tempfile::tempdir_in(self.root.join("unpacked"))
            .ctx("creating unpack dir", &self.root)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(tmp.path()))?;
        std::fs::write(tmp.path().join(".complete"), b"")
            .ctx("marking unpack complete", tmp.path())?;
        let tmp = tmp.keep();
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            if !dir.join(".complete").exists() {
                return Err(invalid(format!(
                    "cannot move unpacked {} into {}",
                    deb.display(),
                    dir.display()
                )));
            }
        }
        Ok(dir)
    }

    /// The `Depends:` package names of `deb` (alternatives and versions dropped).
    pub fn depends(deb: &Path) -> Result<Vec<String>> {
        let field = cmd::stdout(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"))?;
        Ok(field
            .split(',')
            .filter_map(|d| d.split('|').next())
            .filter_map(|d| d.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }
}
