//! Cloud image formats made from `disk.raw`:
//! - Azure: a fixed VHD = the raw disk + a 512-byte footer (our own writer; a copy plus one
//!   sector, faster than `qemu-img convert`). The raw size is already a whole number of MiB, as
//!   Azure requires; the footer is never truncated.
//! - GCP: `disk.tar.gz` holding `disk.raw` in GNU tar's oldgnu sparse format (GNU tar + gzip -n).
//! - AWS: a stream-optimized VMDK from `qemu-img convert`, with the random descriptor `CID`
//!   replaced by one derived from the content so equal inputs give equal bytes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use crate::cmd;
use crate::error::{invalid, IoContext, Result};

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z).
const VHD_EPOCH: u64 = 946_684_800;

/// CHS geometry of a VHD footer (VHD specification, appendix "CHS calculation").
fn vhd_geometry(size: u64) -> (u16, u8, u8) {
    let mut sectors = (size / 512).min(65535 * 16 * 255);
    let (spt, heads, cyl_heads);
    if sectors >= 65535 * 16 * 63 {
        sectors = sectors.min(65535 * 16 * 255);
        spt = 255;
        heads = 16;
        cyl_heads = sectors / spt;
    } else {
        let mut s = 17;
        let mut ch = sectors / s;
        let mut h = ch.div_ceil(1024).max(4);
        if ch >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            ch = sectors / s;
        }
        if ch >= h * 1024 {
            s = 63;
            h = 16;
            ch = sectors / s;
        }
        spt = s;
        heads = h;
        cyl_heads = ch;
    }
    ((cyl_heads / heads) as u16, heads as u8, spt as u8)
}

/// The 512-byte footer of a fixed VHD of `size` bytes.
pub fn vhd_footer(size: u64, epoch: u64, unique_id: &[u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed disk)
    f[24..28].copy_from_slice(&(epoch.saturating_sub(VHD_EPOCH) as u32).to_be_bytes());
    // "qem2": the creator tag qemu and Azure tooling read as "the current size is exact" (it is
    // what `qemu-img convert -o force_size` writes); with other tags qemu rounds to CHS.
    f[28..32].copy_from_slice(b"qem2");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = vhd_geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(unique_id);
    let sum: u32 = f.iter().map(|&b| b as u32).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// Writes `out` = `raw` + VHD footer. `raw`'s size must be a whole number of MiB.
pub fn write_vhd(raw: &Path, out: &Path, epoch: u64, unique_id: &[u8; 16]) -> Result<u64> {
    let size = std::fs::metadata(raw).ctx("sizing raw disk", raw)?.len();
    if size == 0 || size % (1 << 20) != 0 {
        return Err(invalid(format!(
            "VHD virtual size {size} is not a whole number of MiB"
        )));
    }
    let _ = std::fs::remove_file(out);
    // std::fs::copy uses copy_file_range, which keeps holes and shares extents where it can.
    std::fs::copy(raw, out).ctx("copying raw disk to VHD", out)?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out)
        .ctx("opening VHD", out)?;
    f.write_all(&vhd_footer(size, epoch, unique_id))
        .ctx("writing VHD footer", out)?;
    Ok(size + 512)
}

/// Writes the GCP tarball: `disk.raw` as an oldgnu sparse member, gzip without name/time.
pub fn write_gcp_tar(raw: &Path, out: &Path, epoch: u64) -> Result<()> {
    let dir = raw
        .parent()
        .ok_or_else(|| invalid("raw disk has no directory"))?;
    if raw.file_name().and_then(|n| n.to_str()) != Some("disk.raw") {
        return Err(invalid("the GCP tarball member must be named disk.raw"));
    }
    let out_abs = std::path::absolute(out).ctx("resolving output", out)?;
    cmd::run(
        Command::new("tar")
            .arg("--format=oldgnu")
            .arg("--sparse")
            .arg("--use-compress-program=gzip -n")
            .arg(format!("--mtime=@{epoch}"))
            .args(["--owner=0", "--group=0", "--numeric-owner", "--mode=0644"])
            .arg("-cf")
            .arg(&out_abs)
            .arg("-C")
            .arg(dir)
            .arg("disk.raw"),
    )?;
    Ok(())
}

/// Writes the AWS stream-optimized VMDK and pins its descriptor CID to `cid`.
pub fn write_vmdk(raw: &Path, out: &Path, cid: u32) -> Result<()> {
    let _ = std::fs::remove_file(out);
    cmd::run(
        Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(raw)
            .arg(out),
    )?;
    // The descriptor is plain text in a fixed, NUL-padded region the sparse header points to.
    // qemu writes the CID with `%x` (no zero padding), so its length varies.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .ctx("opening VMDK", out)?;
    let mut header = [0u8; 512];
    f.read_exact(&mut header).ctx("reading VMDK header", out)?;
    if &header[..4] != b"KDMV" {
        return Err(invalid("qemu-img wrote no VMDK sparse header"));
    }
    let sectors = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap_or_default());
    let (desc_off, desc_len) = (sectors(28) * 512, sectors(36) * 512);
    if desc_off == 0 || desc_len == 0 || desc_len > 1 << 20 {
        return Err(invalid("VMDK without an embedded descriptor"));
    }
    let mut desc = vec![0u8; desc_len as usize];
    f.seek(SeekFrom::Start(desc_off))
        .ctx("seeking in VMDK", out)?;
    f.read_exact(&mut desc)
        .ctx("reading VMDK descriptor", out)?;
    let text_end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    let text = String::from_utf8_lossy(&desc[..text_end]).into_owned();
    let mut replaced = false;
    let new_text: String = text
        .split_inclusive('\n')
        .map(|line| {
            if !replaced && line.starts_with("CID=") {
                replaced = true;
                format!("CID={cid:08x}\n")
            } else {
                line.to_string()
            }
        })
        .collect();
    if !replaced || new_text.len() >= desc.len() {
        return Err(invalid(
            "unexpected VMDK descriptor (no CID line, or no room)",
        ));
    }
    let mut region = new_text.into_bytes();
    region.resize(desc.len(), 0);
    f.seek(SeekFrom::Start(desc_off))
        .ctx("seeking in VMDK", out)?;
    f.write_all(&region).ctx("writing VMDK descriptor", out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_checksum_and_fields() {
        let f = vhd_footer(64 << 20, VHD_EPOCH + 10, &[1; 16]);
        assert_eq!(&f[0..8], b"conectix");
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut g = f;
        g[64..68].fill(0);
        let sum: u32 = g.iter().map(|&b| b as u32).sum();
        assert_eq!(stored, !sum);
        assert_eq!(u32::from_be_bytes(f[24..28].try_into().unwrap()), 10);
    }

    #[test]
    fn geometry_small_disk() {
        let (c, h, s) = vhd_geometry(64 << 20);
        assert!(c as u64 * h as u64 * s as u64 * 512 <= 64 << 20);
        assert_eq!((h, s), (8, 17));
    }

    #[test]
    fn vmdk_is_reproducible_whatever_cid_qemu_picks() {
        // qemu's CID is random and printed without zero padding; repeat to hit short ones.
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(4 << 20).unwrap();
        let first = dir.path().join("a.vmdk");
        write_vmdk(&raw, &first, 0x00ab_cdef).unwrap();
        let want = std::fs::read(&first).unwrap();
        for i in 0..8 {
            let p = dir.path().join(format!("{i}.vmdk"));
            write_vmdk(&raw, &p, 0x00ab_cdef).unwrap();
            // Same descriptor bytes except the extent file name qemu records.
            let got = std::fs::read(&p).unwrap();
            assert_eq!(got.len(), want.len());
            let text = String::from_utf8_lossy(&got);
            assert!(text.contains("CID=00abcdef\n"));
        }
        let out = std::process::Command::new("qemu-img")
            .args(["check", "-f", "vmdk"])
            .arg(&first)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
