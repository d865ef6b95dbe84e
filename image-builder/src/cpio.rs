//! A reproducible `newc` cpio writer for the initrd: entries in sorted path order, inode numbers
//! counted from 1, one fixed mtime, owner root, normalized modes. The kernel unpacks this format
//! (uncompressed) directly.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{invalid, IoContext, Result};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File { data: Vec<u8>, executable: bool },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// Archive members by path (relative, no leading `/`), kept sorted.
#[derive(Debug, Default)]
pub struct Archive {
    entries: std::collections::BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one member.
    pub fn add(&mut self, path: &str, entry: Entry) {
        self.entries
            .insert(path.trim_start_matches('/').to_string(), entry);
    }

    /// Adds every file, directory and symlink below `dir`.
    pub fn add_tree(&mut self, dir: &Path) -> Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).ctx("reading initrd tree", &d)? {
                let path = e.ctx("reading initrd tree", &d)?.path();
                let rel = path
                    .strip_prefix(dir)
                    .map_err(|_| invalid("path outside tree"))?
                    .to_string_lossy()
                    .into_owned();
                let meta = std::fs::symlink_metadata(&path).ctx("reading", &path)?;
                let entry = if meta.file_type().is_symlink() {
                    Entry::Symlink(
                        std::fs::read_link(&path)
                            .ctx("reading link", &path)?
                            .to_string_lossy()
                            .into_owned(),
                    )
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    Entry::Dir
                } else if meta.is_file() {
                    Entry::File {
                        data: std::fs::read(&path).ctx("reading", &path)?,
                        executable: meta.mode() & 0o111 != 0,
                    }
                } else {
                    return Err(invalid(format!(
                        "{}: unsupported file type in initrd tree",
                        path.display()
                    )));
                };
                self.add(&rel, entry);
            }
        }
        Ok(())
    }

    /// Writes the archive with every mtime set to `mtime`.
    pub fn write(&self, out: &mut impl Write, mtime: u64) -> std::io::Result<u64> {
        let mut written = 0u64;
        let mut ino = 0u32;
        for (name, entry) in &self.entries {
            ino += 1;
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040755, 2, &[], (0, 0)),
                Entry::File { data, executable } => (
                    if *executable { 0o100755 } else { 0o100644 },
                    1,
                    data,
                    (0, 0),
                ),
                Entry::Symlink(target) => (0o120777, 1, target.as_bytes(), (0, 0)),
                Entry::CharDev { major, minor, mode } => {
                    (0o020000 | (mode & 0o777), 1, &[], (*major, *minor))
                }
            };
            written += write_member(out, ino, mode, nlink, mtime, name, data, rdev)?;
        }
        written += write_member(out, 0, 0, 1, 0, "TRAILER!!!", &[], (0, 0))?;
        Ok(written)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_member(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u64,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) -> std::io::Result<u64> {
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0, // uid
        0, // gid
        mtime as u32,
        data.len() as u32,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() + 1,
        0, // check
    );
    let pad = |n: usize| (4 - n % 4) % 4;
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    let name_pad = pad(header.len() + name.len() + 1);
    out.write_all(&[0u8; 4][..1 + name_pad])?;
    out.write_all(data)?;
    out.write_all(&[0u8; 3][..pad(data.len())])?;
    Ok((header.len() + name.len() + 1 + name_pad + data.len() + pad(data.len())) as u64)
}

/// The cpio archive systemd-stub (since v253 or so; 257 in Debian 13) generates to pass a UKI
/// section to the initrd as `/.extra/<name>` and appends after `.initrd`, byte for byte as
/// observed from the initrd such a stub handed to the kernel (`retain_initrd` +
/// `/sys/firmware/initrd`): a `.extra` directory (inode 1, mode 040555, nlink 1, mtime 0), the
/// file (inode 2, mode 0100444), and a trailer whose name size is written `0000000B`.
/// Needed to predict the kernel's PCR 9 initrd event.
pub fn systemd_stub_extra(name: &str, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let header = |ino: u32, mode: u32, size: usize, name_len: usize| {
        format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
            0, 0, 1, 0, 0, 0, 0, 0, 0
        )
    };
    let pad = |out: &mut Vec<u8>| out.resize(out.len().div_ceil(4) * 4, 0);
    out.extend_from_slice(header(1, 0o040555, 0, 7).as_bytes());
    out.extend_from_slice(b".extra\0");
    pad(&mut out);
    let path = format!(".extra/{name}");
    out.extend_from_slice(header(2, 0o100444, content.len(), path.len() + 1).as_bytes());
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    pad(&mut out);
    out.extend_from_slice(content);
    pad(&mut out);
    out.extend_from_slice(
        b"07070100000000000000000000000000000000000000010000000000000000000000000000000000000000000000000000000B00000000TRAILER!!!\0",
    );
    pad(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc() {
        let mut a = Archive::new();
        a.add(
            "/init",
            Entry::File {
                data: b"#!/bin/sh\n".to_vec(),
                executable: true,
            },
        );
        a.add("bin", Entry::Dir);
        let mut out = Vec::new();
        let n = a.write(&mut out, 7).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // "bin" sorts before "init".
        assert_eq!(&out[110..114], b"bin\0");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("#!/bin/sh\n"));
    }

    #[test]
    fn gnu_cpio_reads_it_back() {
        let mut a = Archive::new();
        a.add("etc", Entry::Dir);
        a.add(
            "etc/x",
            Entry::File {
                data: b"hello".to_vec(),
                executable: false,
            },
        );
        a.add("bin/sh", Entry::Symlink("busybox".into()));
        let mut out = Vec::new();
        a.write(&mut out, 1_700_000_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("GNU cpio is installed");
        child.stdin.take().unwrap().write_all(&out).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(dir.path().join("etc/x")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let mtime = std::fs::metadata(dir.path().join("etc/x")).unwrap().mtime();
        assert_eq!(mtime, 1_700_000_000);
    }

    #[test]
    fn stub_extra_layout() {
        let x = systemd_stub_extra("os-release", b"ID=cvm\n");
        assert_eq!(x.len() % 4, 0);
        assert!(x.starts_with(b"0707010000000100004"));
        let text = String::from_utf8_lossy(&x);
        assert!(text.contains(".extra/os-release\0ID=cvm\n"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }
}
