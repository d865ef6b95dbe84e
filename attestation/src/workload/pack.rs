//! Packing a workload folder for upload: a tar of its regular files in byte order of their paths,
//! with fixed times, owners and modes, so the same folder always gives the same archive.

use super::folder::WorkloadError;
use std::path::{Path, PathBuf};

/// Largest total file size packed.
pub const MAX_PACKED_BYTES: u64 = 256 << 20;

/// A deterministic ustar archive of `dir`. Symbolic links are refused (the agent refuses them too).
pub fn pack_folder(dir: &Path) -> Result<Vec<u8>, WorkloadError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| WorkloadError::Io { path, source }
    };
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut archive = tar::Builder::new(Vec::new());
    let mut total = 0u64;
    for (name, path) in files {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        total += bytes.len() as u64;
        if total > MAX_PACKED_BYTES {
            return Err(WorkloadError::Io {
                path: dir.to_owned(),
                source: std::io::Error::other(format!(
                    "more than {} MiB to pack",
                    MAX_PACKED_BYTES >> 20
                )),
            });
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        archive
            .append_data(&mut header, &name, bytes.as_slice())
            .map_err(io(&path))?;
    }
    archive.into_inner().map_err(io(dir))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), WorkloadError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| WorkloadError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_symlink() {
            return Err(WorkloadError::Symlink(path));
        } else if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let name = relative
                .to_str()
                .ok_or_else(|| WorkloadError::NotUtf8(path.clone()))?
                .to_owned();
            out.push((name, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_folder_same_archive_and_links_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("docker-compose.yml"), "services: {}").unwrap();
        std::fs::write(dir.path().join("config/b"), "2").unwrap();
        std::fs::write(dir.path().join("config/a"), "1").unwrap();
        let first = pack_folder(dir.path()).unwrap();
        assert_eq!(first, pack_folder(dir.path()).unwrap());
        let mut archive = tar::Archive::new(first.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["config/a", "config/b", "docker-compose.yml"]);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("config/link")).unwrap();
        assert!(matches!(
            pack_folder(dir.path()),
            Err(WorkloadError::Symlink(_))
        ));
    }
}
