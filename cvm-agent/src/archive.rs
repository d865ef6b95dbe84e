//! Unpacking an uploaded workload (zip or tar) into a fresh staging folder, refusing anything that
//! could write outside it or exhaust the disk: absolute or `..` paths, links of any kind, device
//! files, too many entries, too many bytes. A single top-level folder wrapping everything is
//! removed, so both `zip -r w.zip .` and `zip -r w.zip workload/` work.

use cvm_attestation::workload::paths::{relative_path, PathError};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Limits on what an upload may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_total_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the upload is neither a zip nor a tar archive")]
    Format,
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("entry {name:?}: {source}")]
    Path { name: String, source: PathError },
    #[error("entry {0:?} is a link; links are not accepted in a workload")]
    Link(String),
    #[error("entry {0:?} is not a regular file or directory")]
    Special(String),
    #[error("the archive has more than {0} entries")]
    TooManyEntries(usize),
    #[error("the archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("entry {0:?} appears twice")]
    Duplicate(String),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

enum Entry {
    Dir(String),
    File(String, Vec<u8>),
}

/// Unpacks `bytes` into `target` (which must not exist yet).
pub fn unpack(bytes: &[u8], target: &Path, limits: Limits) -> Result<(), ArchiveError> {
    let entries = if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes, limits)?
    } else if bytes.len() >= 512 && &bytes[257..262] == b"ustar" {
        read_tar(bytes, limits)?
    } else {
        return Err(ArchiveError::Format);
    };
    let entries = strip_single_top_folder(entries);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ArchiveError::Io { path, source }
    };
    std::fs::create_dir(target).map_err(io(target))?;
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries {
        match entry {
            Entry::Dir(name) => {
                let path = target.join(&name);
                std::fs::create_dir_all(&path).map_err(io(&path))?;
            }
            Entry::File(name, contents) => {
                if !seen.insert(name.clone()) {
                    return Err(ArchiveError::Duplicate(name));
                }
                let path = target.join(&name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::write(&path, contents).map_err(io(&path))?;
            }
        }
    }
    Ok(())
}

fn checked_name(raw: &str) -> Result<String, ArchiveError> {
    relative_path(raw).map_err(|source| ArchiveError::Path {
        name: raw.to_owned(),
        source,
    })
}

fn read_zip(bytes: &[u8], limits: Limits) -> Result<Vec<Entry>, ArchiveError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    if zip.len() > limits.max_entries {
        return Err(ArchiveError::TooManyEntries(limits.max_entries));
    }
    let mut total = 0u64;
    let mut entries = Vec::new();
    for index in 0..zip.len() {
        let mut file = zip
            .by_index(index)
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let raw = file
            .name()
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?
            .into_owned();
        if file.is_symlink() {
            return Err(ArchiveError::Link(raw));
        }
        if file.is_dir() {
            if raw.trim_matches('/').is_empty() || raw == "./" {
                continue;
            }
            entries.push(Entry::Dir(checked_name(&raw)?));
            continue;
        }
        let name = checked_name(&raw)?;
        let contents = read_within_budget(&mut file, &raw, &mut total, limits)?;
        entries.push(Entry::File(name, contents));
    }
    Ok(entries)
}

fn read_tar(bytes: &[u8], limits: Limits) -> Result<Vec<Entry>, ArchiveError> {
    let mut archive = tar::Archive::new(bytes);
    let mut total = 0u64;
    let mut entries = Vec::new();
    for (count, entry) in archive
        .entries()
        .map_err(|e| ArchiveError::Corrupt(e.to_string()))?
        .enumerate()
    {
        if count >= limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let mut entry = entry.map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(ArchiveError::Link(raw));
        }
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
        {
            continue;
        }
        if kind.is_dir() {
            if raw.trim_matches('/').is_empty() || raw == "./" {
                continue;
            }
            entries.push(Entry::Dir(checked_name(&raw)?));
            continue;
        }
        if !kind.is_file() {
            return Err(ArchiveError::Special(raw));
        }
        let name = checked_name(&raw)?;
        let contents = read_within_budget(&mut entry, &raw, &mut total, limits)?;
        entries.push(Entry::File(name, contents));
    }
    Ok(entries)
}

/// Reads one entry, counting it against the total budget. The declared size is never trusted:
/// at most what is left of the budget plus one byte is read.
fn read_within_budget(
    reader: &mut impl Read,
    name: &str,
    total: &mut u64,
    limits: Limits,
) -> Result<Vec<u8>, ArchiveError> {
    let budget = limits.max_total_bytes - *total;
    let mut contents = Vec::new();
    reader
        .take(budget + 1)
        .read_to_end(&mut contents)
        .map_err(|e| ArchiveError::Corrupt(format!("{name}: {e}")))?;
    *total += contents.len() as u64;
    if *total > limits.max_total_bytes {
        return Err(ArchiveError::TooLarge(limits.max_total_bytes));
    }
    Ok(contents)
}

/// `workload/docker-compose.yml, workload/config/..` -> `docker-compose.yml, config/..`.
fn strip_single_top_folder(entries: Vec<Entry>) -> Vec<Entry> {
    let name = |e: &Entry| match e {
        Entry::Dir(n) | Entry::File(n, _) => n.clone(),
    };
    let Some(first) = entries.first().map(name) else {
        return entries;
    };
    let top = first.split('/').next().unwrap_or_default().to_owned();
    let wrapped = entries.iter().all(|e| {
        let n = name(e);
        n == top && matches!(e, Entry::Dir(_)) || n.starts_with(&format!("{top}/"))
    }) && !entries.iter().any(|e| name(e) == "docker-compose.yml");
    if !wrapped {
        return entries;
    }
    let prefix = format!("{top}/");
    entries
        .into_iter()
        .filter_map(|e| match e {
            Entry::Dir(n) => n.strip_prefix(&prefix).map(|n| Entry::Dir(n.to_owned())),
            Entry::File(n, c) => n
                .strip_prefix(&prefix)
                .map(|n| Entry::File(n.to_owned(), c)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LIMITS: Limits = Limits {
        max_entries: 100,
        max_total_bytes: 1 << 20,
    };

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, contents) in files {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(contents).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn tar_with(kind: tar::EntryType, name: &str, link: Option<&str>) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o644);
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        // Write the raw name, bypassing the tar crate's own checks, as an attacker would.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn unpacks_zip_and_strips_one_wrapping_folder() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = zip_of(&[
            ("w/docker-compose.yml", b"services: {}"),
            ("w/config/a", b"1"),
        ]);
        unpack(&bytes, &dir.path().join("out"), LIMITS).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("out/config/a")).unwrap(),
            b"1"
        );
        assert!(dir.path().join("out/docker-compose.yml").exists());
    }

    #[test]
    fn refuses_traversal_links_bombs_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let out = |n: &str| dir.path().join(n);
        let err = unpack(&zip_of(&[("../evil", b"x")]), &out("a"), LIMITS).unwrap_err();
        assert!(matches!(err, ArchiveError::Path { .. }), "{err}");
        let err = unpack(
            &tar_with(tar::EntryType::Regular, "/etc/evil", None),
            &out("b"),
            LIMITS,
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Path { .. }), "{err}");
        let err = unpack(
            &tar_with(tar::EntryType::Symlink, "config/x", Some("/etc/shadow")),
            &out("c"),
            LIMITS,
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Link(_)), "{err}");
        let err = unpack(
            &tar_with(tar::EntryType::Char, "dev", None),
            &out("d"),
            LIMITS,
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Special(_)), "{err}");
        let big = vec![0u8; 2 << 20]; // compresses to almost nothing
        let err = unpack(&zip_of(&[("big", &big)]), &out("e"), LIMITS).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");
        let err = unpack(b"PK\x03\x04 corrupt", &out("f"), LIMITS).unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt(_)), "{err}");
        assert!(matches!(
            unpack(b"hello", &out("g"), LIMITS),
            Err(ArchiveError::Format)
        ));
        assert!(!out("a/../evil").exists() && !dir.path().parent().unwrap().join("evil").exists());
    }
}
