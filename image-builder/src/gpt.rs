//! A GPT disk image written directly (no `sfdisk`, no loop device): protective MBR, primary and
//! backup headers and partition arrays, partitions aligned to 1 MiB, total size a whole number of
//! MiB (what Azure requires of a VHD's virtual size). Unwritten regions stay holes, so the raw
//! file is sparse.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{invalid, IoContext, Result};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors of the partition array (128 entries of 128 bytes).
const ARRAY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// Well-known partition type GUIDs (textual byte order).
pub mod types {
    /// EFI system partition.
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    /// Discoverable Partitions: root, x86-64.
    pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
    /// Discoverable Partitions: root verity, x86-64.
    pub const ROOT_VERITY_X86_64: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";
    /// Linux filesystem data.
    pub const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
}

/// GPT attribute bit 60: read-only (Discoverable Partitions).
pub const ATTR_READ_ONLY: u64 = 1 << 60;

/// Parses a textual UUID into its 16 bytes (textual order).
pub fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    let bytes = hex::decode(s.replace('-', "")).map_err(|_| invalid(format!("bad UUID {s}")))?;
    bytes
        .try_into()
        .map_err(|_| invalid(format!("bad UUID {s}")))
}

/// GPT stores the first three UUID fields little-endian.
pub fn guid_on_disk(u: &[u8; 16]) -> [u8; 16] {
    let mut g = *u;
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

/// Marks 16 bytes as a version-4 (random) UUID, for GUIDs we derive from hashes.
pub fn v4(mut u: [u8; 16]) -> [u8; 16] {
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// One partition to write.
#[derive(Debug, Clone)]
pub struct Partition {
    pub name: String,
    pub type_guid: [u8; 16],
    pub uuid: [u8; 16],
    pub attributes: u64,
    /// Content copied to the start of the partition (`None`: zeros).
    pub content: Option<PathBuf>,
    /// Size in bytes (rounded up to 1 MiB); at least the content's size.
    pub size: u64,
}

/// Where a partition landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Placed {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// IEEE CRC-32 (as GPT uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn header(
    disk_guid: &[u8; 16],
    my: u64,
    alt: u64,
    first: u64,
    last: u64,
    array: u64,
    array_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my.to_le_bytes());
    h[32..40].copy_from_slice(&alt.to_le_bytes());
    h[40..48].copy_from_slice(&first.to_le_bytes());
    h[48..56].copy_from_slice(&last.to_le_bytes());
    h[56..72].copy_from_slice(&guid_on_disk(disk_guid));
    h[72..80].copy_from_slice(&array.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&array_crc.to_le_bytes());
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Fills one partition-array entry.
fn fill_entry(e: &mut [u8], p: &Partition, offset: u64, size: u64) -> Result<()> {
    e[0..16].copy_from_slice(&guid_on_disk(&p.type_guid));
    e[16..32].copy_from_slice(&guid_on_disk(&p.uuid));
    e[32..40].copy_from_slice(&(offset / SECTOR).to_le_bytes());
    e[40..48].copy_from_slice(&((offset + size) / SECTOR - 1).to_le_bytes());
    e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
    let name: Vec<u16> = p.name.encode_utf16().collect();
    if name.len() > 36 {
        return Err(invalid(format!(
            "partition name {} longer than 36 UTF-16 units",
            p.name
        )));
    }
    for (j, c) in name.iter().enumerate() {
        e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
    }
    Ok(())
}

/// Places the partitions one after another from 1 MiB: the partition array, where each
/// landed, and the end of the last one.
fn layout(parts: &[Partition]) -> Result<(Vec<u8>, Vec<Placed>, u64)> {
    let mut placed = Vec::new();
    let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let mut offset = MIB;
    for (i, p) in parts.iter().enumerate() {
        let content_len = match &p.content {
            Some(c) => std::fs::metadata(c)
                .ctx("sizing partition content", c)?
                .len(),
            None => 0,
        };
        let size = p.size.max(content_len).max(1).div_ceil(MIB) * MIB;
        let e = &mut array[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        fill_entry(e, p, offset, size)?;
        placed.push(Placed {
            name: p.name.clone(),
            offset,
            size,
        });
        offset += size;
    }
    Ok((array, placed, offset))
}

/// The protective MBR: one 0xEE partition covering the disk (capped at 2 TiB).
fn protective_mbr(last_lba: u64) -> Vec<u8> {
    let mut mbr = vec![0u8; SECTOR as usize];
    let pe = &mut mbr[446..462];
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    pe[4] = 0xee; // GPT protective
    pe[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    pe[12..16].copy_from_slice(&(last_lba.min(u32::MAX as u64) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

fn write_at(f: &mut File, out: &Path, pos: u64, data: &[u8]) -> Result<()> {
    f.seek(SeekFrom::Start(pos))
        .ctx("seeking in disk image", out)?;
    f.write_all(data).ctx("writing disk image", out)
}

/// Copies each partition's content to where it was placed.
fn copy_contents(f: &mut File, out: &Path, parts: &[Partition], placed: &[Placed]) -> Result<()> {
    for (p, pl) in parts.iter().zip(placed) {
        if let Some(c) = &p.content {
            let mut src = File::open(c).ctx("opening partition content", c)?;
            f.seek(SeekFrom::Start(pl.offset))
                .ctx("seeking in disk image", out)?;
            std::io::copy(&mut src, f).ctx("copying partition content", c)?;
        }
    }
    Ok(())
}

/// Writes the disk image `out` and returns where each partition is.
pub fn write(out: &Path, disk_guid: &[u8; 16], parts: &[Partition]) -> Result<Vec<Placed>> {
    if parts.len() as u64 > ENTRIES {
        return Err(invalid("too many partitions"));
    }
    let (array, placed, offset) = layout(parts)?;
    // Backup array + header need 33 sectors after the last partition; keep the total in MiB.
    let total = (offset + (ARRAY_SECTORS + 1) * SECTOR).div_ceil(MIB) * MIB;
    let last_lba = total / SECTOR - 1;
    let first_usable = 2 + ARRAY_SECTORS;
    let last_usable = last_lba - 1 - ARRAY_SECTORS;
    let array_crc = crc32(&array);

    let _ = std::fs::remove_file(out);
    let mut f = File::create(out).ctx("creating disk image", out)?;
    f.set_len(total).ctx("sizing disk image", out)?;

    write_at(&mut f, out, 0, &protective_mbr(last_lba))?;
    let primary = header(
        disk_guid,
        1,
        last_lba,
        first_usable,
        last_usable,
        2,
        array_crc,
    );
    write_at(&mut f, out, SECTOR, &primary)?;
    write_at(&mut f, out, 2 * SECTOR, &array)?;
    let backup_array = last_lba - ARRAY_SECTORS;
    write_at(&mut f, out, backup_array * SECTOR, &array)?;
    let backup = header(
        disk_guid,
        last_lba,
        1,
        first_usable,
        last_usable,
        backup_array,
        array_crc,
    );
    write_at(&mut f, out, last_lba * SECTOR, &backup)?;
    copy_contents(&mut f, out, parts, &placed)?;
    f.sync_all().ctx("syncing disk image", out)?;
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn guid_mixed_endian() {
        let u = parse_uuid(types::ESP).unwrap();
        assert_eq!(
            hex::encode(guid_on_disk(&u)),
            "28732ac11ff8d211ba4b00a0c93ec93b"
        );
    }
}
