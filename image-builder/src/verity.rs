//! dm-verity hash tree and superblock (format version 1, SHA-256), byte-compatible with
//! `veritysetup format`.
//!
//! Why our own: `veritysetup` picks a random salt and UUID unless told otherwise, needs the
//! cryptsetup binary at build time, and hashes on one core. Writing the tree ourselves makes the
//! root hash a pure function of the data, salt and UUID, and lets us hash with every core.
//!
//! Layout written to the hash device (the same as cryptsetup's, offset 0):
//! - block 0: the 512-byte superblock, zero-padded to one hash block;
//! - then the tree levels from the top (one block, holding the digests that the root hash covers)
//!   down to level 0 (one digest per data block). Each digest is `SHA-256(salt || block)`, each hash
//!   block holds `hash_block_size / 32` digests and is zero-padded.
//!
//! The root hash is `SHA-256(salt || top block)`; with a single data block there is no tree and it
//! is the digest of that block (as in cryptsetup).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{invalid, IoContext, Result};

const DIGEST: usize = 32;
const SB_SIZE: usize = 512;
/// Bytes read per `pread` while hashing data blocks.
const READ_CHUNK: usize = 1 << 20;

/// Parameters of a verity hash tree; [`VerityParams::new`] gives `veritysetup`'s defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Salt prepended to every hashed block (at most 256 bytes).
    pub salt: Vec<u8>,
    /// UUID stored in the superblock (bytes in the order of the textual form).
    pub uuid: [u8; 16],
    pub data_block_size: u32,
    pub hash_block_size: u32,
}

impl VerityParams {
    /// 4096-byte data and hash blocks, the `veritysetup format` defaults.
    pub fn new(salt: Vec<u8>, uuid: [u8; 16]) -> Self {
        Self {
            salt,
            uuid,
            data_block_size: 4096,
            hash_block_size: 4096,
        }
    }

    fn check(&self) -> Result<()> {
        for (name, size) in [
            ("data", self.data_block_size),
            ("hash", self.hash_block_size),
        ] {
            if !(512..=(1 << 20)).contains(&size) || !size.is_power_of_two() {
                return Err(invalid(format!(
                    "verity {name} block size {size} is not a power of two in 512..=1MiB"
                )));
            }
        }
        if self.salt.len() > 256 {
            return Err(invalid("verity salt longer than 256 bytes"));
        }
        Ok(())
    }
}

/// What a hash tree build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    pub root_hash: [u8; 32],
    pub data_blocks: u64,
    /// Size in bytes of the hash device content (superblock block + tree).
    pub hash_size: u64,
}

/// Formats a UUID (16 bytes) in its canonical textual form.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Number of tree levels and the block count of each level (level 0 first), as cryptsetup
/// computes them.
fn level_sizes(data_blocks: u64, hashes_per_block: u64) -> Vec<u64> {
    let bits = hashes_per_block.trailing_zeros();
    let mut levels = 0u32;
    if data_blocks > 0 {
        while bits * levels < 64 && ((data_blocks - 1) >> (bits * levels)) != 0 {
            levels += 1;
        }
    }
    (0..levels)
        .map(|i| {
            let shift = bits * (i + 1);
            if shift >= 64 {
                1
            } else {
                (data_blocks + (1u64 << shift) - 1) >> shift
            }
        })
        .collect()
}

fn salted(salt: &[u8]) -> Sha256 {
    let mut h = Sha256::new();
    h.update(salt);
    h
}

/// Hashes data blocks `[first, first + out.len() / 32)` of `file` into `out`.
fn hash_data_range(
    file: &File,
    path: &Path,
    block_size: usize,
    first: u64,
    out: &mut [u8],
    salt: &Sha256,
) -> Result<()> {
    let count = out.len() / DIGEST;
    let per_read = (READ_CHUNK / block_size).max(1);
    let mut buf = vec![0u8; per_read * block_size];
    let mut done = 0usize;
    while done < count {
        let n = per_read.min(count - done);
        let bytes = &mut buf[..n * block_size];
        file.read_exact_at(bytes, (first + done as u64) * block_size as u64)
            .ctx("reading verity data", path)?;
        for (i, block) in bytes.chunks_exact(block_size).enumerate() {
            let mut h = salt.clone();
            h.update(block);
            let at = (done + i) * DIGEST;
            out[at..at + DIGEST].copy_from_slice(&h.finalize());
        }
        done += n;
    }
    Ok(())
}

/// Hashes every block of `input` (a whole number of blocks) into `out`, one digest each.
fn hash_blocks(input: &[u8], block_size: usize, out: &mut [u8], salt: &Sha256) {
    for (i, block) in input.chunks_exact(block_size).enumerate() {
        let mut h = salt.clone();
        h.update(block);
        out[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(&h.finalize());
    }
}

/// Builds the 512-byte superblock.
fn superblock(p: &VerityParams, data_blocks: u64) -> [u8; SB_SIZE] {
    let mut sb = [0u8; SB_SIZE];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type 1 (the normal one)
    sb[16..32].copy_from_slice(&p.uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&p.data_block_size.to_le_bytes());
    sb[68..72].copy_from_slice(&p.hash_block_size.to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(p.salt.len() as u16).to_le_bytes());
    sb[88..88 + p.salt.len()].copy_from_slice(&p.salt);
    sb
}

/// The data being hashed: its file and block geometry.
struct Source<'a> {
    file: &'a File,
    path: &'a Path,
    /// Data block size.
    dbs: u64,
    /// Hash block size.
    hbs: usize,
    data_blocks: u64,
}

impl Source<'_> {
    /// Level 0 from the data, split into runs of whole hash blocks, one run per thread.
    fn level0(&self, level_blocks: u64, threads: u64, salt: &Sha256) -> Result<Vec<u8>> {
        let (file, data, dbs) = (self.file, self.path, self.dbs);
        let per_block = (self.hbs / DIGEST) as u64;
        let mut level0 = vec![0u8; level_blocks as usize * self.hbs];
        let blocks_per_thread = level_blocks.div_ceil(threads) * per_block;
        let digest_bytes = (self.data_blocks as usize) * DIGEST;
        std::thread::scope(|s| -> Result<()> {
            let mut handles = Vec::new();
            let mut rest = &mut level0[..digest_bytes];
            let mut first = 0u64;
            while !rest.is_empty() {
                let take = ((blocks_per_thread as usize) * DIGEST).min(rest.len());
                let (mine, tail) = rest.split_at_mut(take);
                rest = tail;
                let start = first;
                handles.push(
                    s.spawn(move || hash_data_range(file, data, dbs as usize, start, mine, salt)),
                );
                first += (take / DIGEST) as u64;
            }
            for h in handles {
                h.join()
                    .map_err(|_| invalid("verity hashing thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(level0)
    }

    /// All tree levels (level 0 first) and the root hash.
    fn tree(&self, sizes: &[u64], threads: u64, salt: &Sha256) -> Result<(Vec<Vec<u8>>, [u8; 32])> {
        let hbs = self.hbs;
        let mut levels: Vec<Vec<u8>> = Vec::with_capacity(sizes.len());
        if sizes.is_empty() {
            let mut out = [0u8; DIGEST];
            hash_data_range(self.file, self.path, self.dbs as usize, 0, &mut out, salt)?;
            return Ok((levels, out));
        }
        levels.push(self.level0(sizes[0], threads, salt)?);
        for &blocks in &sizes[1..] {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let mut out = vec![0u8; blocks as usize * hbs];
            let n = below.len() / hbs;
            hash_blocks(below, hbs, &mut out[..n * DIGEST], salt);
            levels.push(out);
        }
        let top = levels.last().map(Vec::as_slice).unwrap_or_default();
        let mut h = salt.clone();
        h.update(top);
        Ok((levels, h.finalize().into()))
    }
}

/// Writes the superblock block, then the levels from the top down.
fn write_hash_file(
    hash_out: &Path,
    params: &VerityParams,
    data_blocks: u64,
    levels: &[Vec<u8>],
) -> Result<()> {
    let hbs = params.hash_block_size as usize;
    let mut out = std::io::BufWriter::with_capacity(
        READ_CHUNK,
        File::create(hash_out).ctx("creating verity hash file", hash_out)?,
    );
    let mut header = vec![0u8; hbs];
    header[..SB_SIZE].copy_from_slice(&superblock(params, data_blocks));
    out.write_all(&header)
        .ctx("writing verity superblock", hash_out)?;
    for level in levels.iter().rev() {
        out.write_all(level).ctx("writing verity tree", hash_out)?;
    }
    // No fsync: like veritysetup, leave durability to the caller (the disk image is synced).
    out.into_inner()
        .map_err(|e| e.into_error())
        .ctx("writing verity tree", hash_out)?;
    Ok(())
}

/// Builds the hash tree of `data` (its size must be a multiple of the data block size) and writes
/// superblock + tree to `hash_out`, using `threads` threads for the data blocks.
pub fn format(
    data: &Path,
    hash_out: &Path,
    params: &VerityParams,
    threads: usize,
) -> Result<VerityTree> {
    params.check()?;
    let file = File::open(data).ctx("opening verity data", data)?;
    let len = file.metadata().ctx("reading verity data size", data)?.len();
    let dbs = params.data_block_size as u64;
    let hbs = params.hash_block_size as usize;
    if len == 0 || len % dbs != 0 {
        return Err(invalid(format!(
            "{}: size {len} is not a non-zero multiple of the {dbs}-byte data block",
            data.display()
        )));
    }
    let data_blocks = len / dbs;
    let per_block = (hbs / DIGEST) as u64;
    let sizes = level_sizes(data_blocks, per_block);
    let salt = salted(&params.salt);
    let source = Source {
        file: &file,
        path: data,
        dbs,
        hbs,
        data_blocks,
    };
    let (levels, root_hash) = source.tree(&sizes, threads.clamp(1, 64) as u64, &salt)?;
    write_hash_file(hash_out, params, data_blocks, &levels)?;
    let hash_size = hbs as u64 * (1 + sizes.iter().sum::<u64>());
    Ok(VerityTree {
        root_hash,
        data_blocks,
        hash_size,
    })
}

/// The number of threads worth using for hashing on this machine.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_sizes_match_cryptsetup_rules() {
        assert_eq!(level_sizes(1, 128), Vec::<u64>::new());
        assert_eq!(level_sizes(2, 128), vec![1]);
        assert_eq!(level_sizes(128, 128), vec![1]);
        assert_eq!(level_sizes(129, 128), vec![2, 1]);
        assert_eq!(level_sizes(128 * 128 + 1, 128), vec![129, 2, 1]);
    }

    #[test]
    fn rejects_partial_blocks_and_bad_params() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::write(&data, vec![1u8; 5000]).unwrap();
        let p = VerityParams::new(vec![0; 32], [0; 16]);
        assert!(format(&data, &dir.path().join("h"), &p, 2).is_err());
        let mut bad = p.clone();
        bad.hash_block_size = 3000;
        std::fs::write(&data, vec![1u8; 4096]).unwrap();
        assert!(format(&data, &dir.path().join("h"), &bad, 2).is_err());
    }

    #[test]
    fn thread_count_does_not_change_output() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        let bytes: Vec<u8> = (0..4096u32 * 300).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&data, bytes).unwrap();
        let p = VerityParams::new(b"salt".to_vec(), [7; 16]);
        let a = format(&data, &dir.path().join("a"), &p, 1).unwrap();
        let b = format(&data, &dir.path().join("b"), &p, 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            std::fs::read(dir.path().join("a")).unwrap(),
            std::fs::read(dir.path().join("b")).unwrap()
        );
        assert_eq!(a.hash_size, 4096 * (1 + 3 + 1));
    }
}
