//! The read-only root filesystem image, made by `mkfs.erofs` from a staging tree without root
//! privileges, loop devices or mounts. Reproducible: one fixed timestamp (`-T`), a UUID derived
//! from the content, all files owned by root, no xattrs from the build host.

use std::path::Path;
use std::process::Command;

use crate::cmd;
use crate::error::Result;
use crate::verity::uuid_string;

/// How to make the image.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// All files owned by root and no xattrs (trees staged by copying).
    pub all_root: bool,
    /// `lz4` or `lz4hc[,level]`; `None`: uncompressed.
    pub compression: Option<String>,
}

/// Writes an erofs image of `tree` to `out`, padded to a whole number of 4 KiB blocks (what
/// dm-verity hashes).
pub fn mkfs(tree: &Path, out: &Path, epoch: u64, uuid: &[u8; 16], opts: &Options) -> Result<u64> {
    if let Some(c) = &opts.compression {
        if !c.chars().all(|c| c.is_ascii_alphanumeric() || c == ',') {
            return Err(crate::error::invalid(format!(
                "odd erofs compression {c:?}"
            )));
        }
    }
    let _ = std::fs::remove_file(out);
    cmd::run(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(format!("-T{epoch}"))
            .arg(format!("-U{}", uuid_string(uuid)))
            // Staged trees carry no meaningful owners or xattrs; a Debian root keeps both
            // (file capabilities are xattrs).
            .args(opts.all_root.then_some("--all-root"))
            .args(opts.all_root.then_some("-x-1"))
            .args(opts.compression.as_ref().map(|c| format!("-z{c}")))
            .arg(out)
            .arg(tree),
    )?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(|e| crate::Error::Io {
            context: "opening erofs image",
            path: out.into(),
            source: e,
        })?;
    let len = f
        .metadata()
        .map_err(|e| crate::Error::Io {
            context: "sizing erofs image",
            path: out.into(),
            source: e,
        })?
        .len();
    let padded = len.div_ceil(4096) * 4096;
    f.set_len(padded).map_err(|e| crate::Error::Io {
        context: "padding erofs image",
        path: out.into(),
        source: e,
    })?;
    Ok(padded)
}
