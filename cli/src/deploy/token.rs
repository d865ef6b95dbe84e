//! The agent's API token of a deployment. Every deploy makes a fresh random token, keeps it on
//! this machine in the deployment's state directory (mode 0600, never overwritten) and hands it
//! to the agent through the platform: QEMU's fw_cfg (`deploy-local`), or the cloud's user data /
//! instance metadata as the typed document `cvm_attestation::provision::UserData`. The agent
//! measures a salted commitment to the token into PCR 23 before using it.

use anyhow::{bail, Context, Result};
use cvm_attestation::provision::UserData;
use std::path::{Path, PathBuf};

/// The token's file name in a state directory.
pub const TOKEN_FILE: &str = "api-token";

/// A fresh random API token (64 hex digits, no newline) written to `dir/api-token`, readable by
/// the owner only. An existing file is never replaced (the write fails).
fn write_new_token(dir: &Path) -> Result<(PathBuf, String)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).context("random API token")?;
    let token = hex::encode(bytes);
    let path = dir.join(TOKEN_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(token.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((path, token))
}

/// Where a cloud deployment keeps its state on this machine: `$XDG_STATE_HOME` (else
/// `~/.local/state`) `/cvm-cli/<cloud>/<name>`, beside deploy-local's `cvm-cli/local/<name>`.
pub fn state_dir(cloud: &str, name: &str) -> Result<PathBuf> {
    let plain = |text: &str| {
        !text.is_empty()
            && text != "."
            && text != ".."
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !plain(cloud) || !plain(name) {
        bail!("deployment name {name:?}: use letters, digits, '-' and '_'");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .context("neither XDG_STATE_HOME nor HOME is set")?;
    Ok(base.join("cvm-cli").join(cloud).join(name))
}

/// Where a cloud deployment's token file is (or will be).
pub fn token_path(cloud: &str, name: &str) -> Result<PathBuf> {
    Ok(state_dir(cloud, name)?.join(TOKEN_FILE))
}

/// Refuses, touching nothing, when the deployment already has a token file (an earlier deploy's
/// VM may still need it). `cleanup` is the command that removes the earlier deployment.
pub fn check_free(cloud: &str, name: &str, cleanup: &str) -> Result<()> {
    let path = token_path(cloud, name)?;
    if std::fs::symlink_metadata(&path).is_ok() {
        bail!(
            "{} already exists: it holds the API token of an earlier deploy of {cloud} \
             deployment {name:?}, whose VM may still use it, and is never overwritten. Remove \
             that deployment first ({cleanup}; it deletes the token file too), deploy under \
             another --name, or delete the file yourself if no VM uses it any more",
            path.display()
        );
    }
    Ok(())
}

/// The new token of a deploy in progress. Dropped without [`DeployToken::keep`], its file (and
/// the directories made for it, when empty) are removed again: a deploy that fails before any
/// VM could carry the token leaves nothing behind.
pub struct DeployToken {
    pub path: PathBuf,
    token: String,
    /// The directories this deploy created, innermost first.
    made_dirs: Vec<PathBuf>,
    kept: bool,
}

impl DeployToken {
    /// Writes a fresh token for `cloud`/`name`; refuses, touching nothing, when the deployment
    /// already has one (an earlier deploy's VM may still need it). `cleanup` is the command that
    /// removes the earlier deployment.
    pub fn create(cloud: &str, name: &str, cleanup: &str) -> Result<Self> {
        check_free(cloud, name, cleanup)?;
        let dir = state_dir(cloud, name)?;
        let path = dir.join(TOKEN_FILE);
        let mut made_dirs = Vec::new();
        let mut missing = Some(dir.as_path());
        while let Some(at) = missing.filter(|at| !at.exists()) {
            made_dirs.push(at.to_owned());
            missing = at.parent();
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let written = write_new_token(&dir).with_context(|| {
            format!(
                "{} (never overwritten; remove the earlier deployment first: {cleanup})",
                path.display()
            )
        });
        let (path, token) = match written {
            Ok(written) => written,
            Err(error) => {
                // The file is not ours: only the directories made for it go.
                for made in &made_dirs {
                    if std::fs::remove_dir(made).is_err() {
                        break;
                    }
                }
                return Err(error);
            }
        };
        Ok(Self {
            path,
            token,
            made_dirs,
            kept: false,
        })
    }

    /// The provisioning document (`{"cvm_api_token": ...}`) for the platform's user data.
    pub fn user_data(&self) -> Result<String> {
        Ok(UserData::new(&self.token)
            .context("the new API token is not one the agent accepts")?
            .to_json())
    }

    /// Keeps the token file: a VM carries the token.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// After a failed deploy: keeps the file when a VM that may carry the token is kept, removes
    /// it otherwise; says which on stderr.
    pub fn after_failure(mut self, vm_kept: bool) {
        if vm_kept {
            self.keep();
            eprintln!(
                "kept the API token {} (the kept VM carries it)",
                self.path.display()
            );
        } else {
            self.remove();
            eprintln!(
                "removed the API token {} (no VM carries it)",
                self.path.display()
            );
        }
    }

    fn remove(&mut self) {
        self.kept = true;
        let _ = std::fs::remove_file(&self.path);
        for dir in &self.made_dirs {
            // Only while empty: nothing of anyone else's goes.
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

impl Drop for DeployToken {
    fn drop(&mut self) {
        if !self.kept {
            self.remove();
        }
    }
}

impl std::fmt::Debug for DeployToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployToken")
            .field("path", &self.path)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `cleanup` of a cloud deployment, after its resources were deleted: its token file (and the
/// state directory, when empty) go too. When cleanup found nothing of the deployment (another
/// region or group, or already deleted by hand) the file is kept and the user told: its VM may
/// be elsewhere. `dry_run` only says what would happen.
pub fn forget(
    cloud: &str,
    name: &str,
    found: bool,
    dry_run: bool,
    report: &mut crate::cleanup::Report,
) -> Result<()> {
    let dir = state_dir(cloud, name)?;
    let path = dir.join(TOKEN_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(());
    }
    if !found {
        report.note(format!(
            "kept the API token {}: nothing of the deployment was found here (if its VM is gone, \
             delete the file)",
            path.display()
        ));
        return Ok(());
    }
    if dry_run {
        report.note(format!("would remove the API token {}", path.display()));
        return Ok(());
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let _ = std::fs::remove_dir(&dir);
    report.note(format!("removed the API token {}", path.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_token_is_private_never_overwritten_and_removed_unless_kept() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("cvm-cli/aws/demo");
        let path = dir.join(TOKEN_FILE);
        // Not through state_dir: the environment is the process's, shared by parallel tests.
        let make = || {
            let mut made = Vec::new();
            let mut at = Some(dir.as_path());
            while let Some(d) = at.filter(|d| !d.exists()) {
                made.push(d.to_owned());
                at = d.parent();
            }
            std::fs::create_dir_all(&dir).unwrap();
            let (path, token) = write_new_token(&dir).unwrap();
            DeployToken {
                path,
                token,
                made_dirs: made,
                kept: false,
            }
        };
        let token = make();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 64);
        let doc = UserData::parse(token.user_data().unwrap().as_bytes()).unwrap();
        assert_eq!(doc.cvm_api_token, text);
        assert!(!format!("{token:?}").contains(&text));
        assert!(write_new_token(&dir).is_err(), "an existing file is kept");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

        drop(token);
        assert!(!path.exists());
        assert!(!home.path().join("cvm-cli").exists(), "made dirs removed");

        let mut token = make();
        token.keep();
        drop(token);
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();

        let second = make();
        let first = std::fs::read_to_string(&path).unwrap();
        second.after_failure(true);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        std::fs::remove_file(&path).unwrap();
        make().after_failure(false);
        assert!(!path.exists());
    }

    #[test]
    fn state_dirs_refuse_odd_names() {
        for bad in ["", "..", "a/b", "a b"] {
            assert!(state_dir("aws", bad).is_err(), "{bad:?}");
        }
    }
}
