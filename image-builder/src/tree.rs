//! Staging trees on disk: copying overlays with normalized permissions and copying dynamically
//! linked binaries together with the shared libraries `ldd` reports, so a glibc-linked binary
//! runs in a root that has no glibc of its own (the busybox root, the initrd).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::error::{invalid, IoContext, Result};

/// `root` + an absolute in-image path.
pub fn in_root(root: &Path, abs: &Path) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    for c in abs.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            _ => return Err(invalid(format!("unsafe in-image path {}", abs.display()))),
        }
    }
    Ok(out)
}

/// Files get 0755 when any execute bit is set and 0644 otherwise; directories 0755. Source
/// checkouts differ in umask, images must not.
fn normalized_mode(mode: u32, is_dir: bool) -> u32 {
    if is_dir || mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Copies one regular file with a normalized mode, replacing whatever is at `to`.
pub fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).ctx("creating directory", parent)?;
    }
    if to.symlink_metadata().is_ok() {
        std::fs::remove_file(to).ctx("replacing file", to)?;
    }
    std::fs::copy(from, to).ctx("copying file", from)?;
    let mode = std::fs::metadata(from)
        .ctx("reading mode", from)?
        .permissions()
        .mode();
    std::fs::set_permissions(
        to,
        std::fs::Permissions::from_mode(normalized_mode(mode, false)),
    )
    .ctx("setting mode", to)
}

/// Copies the tree `src` over `dest` (files, directories, symlinks); later overlays win.
pub fn copy_overlay(src: &Path, dest: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .ctx("reading overlay", src)?
        .collect::<std::io::Result<_>>()
        .ctx("reading overlay", src)?;
    entries.sort_by_key(|e| e.file_name());
    std::fs::create_dir_all(dest).ctx("creating directory", dest)?;
    for e in entries {
        let from = e.path();
        let to = dest.join(e.file_name());
        let meta = std::fs::symlink_metadata(&from).ctx("reading overlay entry", &from)?;
        if meta.is_dir() {
            if to.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(&to).ctx("replacing with a directory", &to)?;
            }
            copy_overlay(&from, &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
                .ctx("setting mode", &to)?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).ctx("reading symlink", &from)?;
            if to.symlink_metadata().is_ok() {
                std::fs::remove_file(&to).ctx("replacing symlink", &to)?;
            }
            symlink(&target, &to).ctx("creating symlink", &to)?;
        } else if meta.is_file() {
            copy_file(&from, &to)?;
        } else {
            return Err(invalid(format!(
                "{}: only files, directories and symlinks can be in an overlay",
                from.display()
            )));
        }
    }
    Ok(())
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `binary`; empty for a static one.
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .ctx("running ldd on", binary)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits 1 and says so for static binaries.
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(invalid(format!("ldd {}: {}", binary.display(), all.trim())));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            return Err(invalid(format!(
                "{}: library missing: {}",
                binary.display(),
                line.trim()
            )));
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Copies `binary` to `dest_abs` inside `root`, plus every library it needs at the same absolute
/// path it has on the build host (where the dynamic loader looks for it).
pub fn copy_with_libs(binary: &Path, root: &Path, dest_abs: &Path) -> Result<()> {
    copy_file(binary, &in_root(root, dest_abs)?)?;
    for lib in shared_libs(binary)? {
        let target = in_root(root, &lib)?;
        if !target.exists() {
            copy_file(&lib, &target)?;
        }
    }
    Ok(())
}

/// Copies `binary` to `dest_abs` inside a distribution root that brings its own libraries: every
/// library `ldd` resolves on the build host must exist by name in the root's library directories,
/// else the error names the missing ones (add their packages to the root).
pub fn copy_checking_libs(binary: &Path, root: &Path, dest_abs: &Path) -> Result<()> {
    let dirs = [
        "usr/lib/x86_64-linux-gnu",
        "lib/x86_64-linux-gnu",
        "usr/lib64",
        "lib64",
        "usr/lib",
    ];
    let missing: Vec<String> = shared_libs(binary)?
        .iter()
        .filter_map(|lib| lib.file_name()?.to_str().map(String::from))
        .filter(|name| !dirs.iter().any(|d| root.join(d).join(name).exists()))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "{} needs libraries the root lacks: {} (add their packages)",
            binary.display(),
            missing.join(", ")
        )));
    }
    copy_file(binary, &in_root(root, dest_abs)?)
}

/// Creates the busybox applet symlinks (`bin/sh -> /bin/busybox`...) that `busybox --list-full`
/// names, skipping paths that already exist.
pub fn busybox_links(busybox: &Path, root: &Path) -> Result<()> {
    let list = crate::cmd::stdout(Command::new(busybox).arg("--list-full"))?;
    for rel in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = in_root(root, Path::new(rel))?;
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).ctx("creating directory", parent)?;
        }
        symlink("/bin/busybox", &link).ctx("creating applet link", &link)?;
    }
    Ok(())
}

/// A digest of a staging tree (paths, types, normalized modes, contents, link targets) in sorted
/// order: the seed for IDs that must be known before the filesystem exists (its UUID).
pub fn digest(root: &Path, owners: bool) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    let mut all = Vec::new();
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).ctx("reading tree", &dir)? {
            let e = e.ctx("reading tree", &dir)?;
            let r = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(root.join(&r)).ctx("reading tree", &r)?;
            if meta.is_dir() {
                stack.push(r.clone());
            }
            all.push((r, meta));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (rel, meta) in all {
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let full = root.join(&rel);
        if meta.file_type().is_symlink() {
            h.update(b"l");
            h.update(
                std::fs::read_link(&full)
                    .ctx("reading link", &full)?
                    .to_string_lossy()
                    .as_bytes(),
            );
        } else if meta.is_dir() {
            h.update(b"d");
        } else if meta.is_file() {
            h.update(b"f");
            let mode = if owners {
                meta.mode()
            } else {
                normalized_mode(meta.mode(), false)
            };
            h.update(mode.to_le_bytes());
            if owners {
                h.update(meta.uid().to_le_bytes());
                h.update(meta.gid().to_le_bytes());
            }
            let mut f = std::fs::File::open(&full).ctx("reading", &full)?;
            std::io::copy(&mut f, &mut h).ctx("reading", &full)?;
        } else {
            // Device nodes, FIFOs, sockets: never opened.
            h.update(b"s");
            h.update(meta.mode().to_le_bytes());
            h.update(meta.rdev().to_le_bytes());
        }
        h.update([0]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escaping_paths() {
        assert!(in_root(Path::new("/r"), Path::new("/a/../../etc")).is_err());
        assert_eq!(
            in_root(Path::new("/r"), Path::new("/a/b")).unwrap(),
            Path::new("/r/a/b")
        );
    }

    #[test]
    fn ldd_closure_of_a_glibc_binary() {
        // /usr/sbin/veritysetup links libcryptsetup and glibc; the loader must come along.
        let libs = shared_libs(Path::new("/usr/sbin/veritysetup")).unwrap();
        assert!(libs
            .iter()
            .any(|l| l.to_string_lossy().contains("libcryptsetup")));
        assert!(libs
            .iter()
            .any(|l| l.to_string_lossy().contains("ld-linux")));
        assert!(shared_libs(Path::new("/bin/busybox")).unwrap().is_empty());
    }
}
