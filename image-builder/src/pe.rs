//! Just enough PE/COFF (PE32+) for a UKI: reading the section table, appending sections to the
//! systemd stub, the PE checksum, and the Authenticode digest that firmware measures into PCR 4
//! (in each active bank: SHA-256, SHA-384).
//!
//! Authenticode hash (Microsoft PE/COFF spec, "Calculating the PE Image Hash"): the headers up to
//! `SizeOfHeaders` without the checksum field and the certificate-table directory entry, then each
//! section's raw data in file order, then any data after the last section up to the attribute
//! certificate table (which is excluded).

use sha2::digest::{Digest, Output};
use sha2::{Sha256, Sha384};

use crate::error::{invalid, Result};

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
    pub characteristics: u32,
}

/// The parts of a PE32+ header the UKI writer and the hash need.
#[derive(Debug, Clone)]
pub struct Pe {
    /// Offset of the optional header.
    pub opt: usize,
    pub section_table: usize,
    pub sections: Vec<Section>,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_headers: u32,
    /// (file offset, size) of the attribute certificate table, if any.
    pub cert_table: Option<(u32, u32)>,
}

fn rd16(b: &[u8], o: usize) -> Result<u16> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| invalid("PE file truncated"))
}

fn rd32(b: &[u8], o: usize) -> Result<u32> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| invalid("PE file truncated"))
}

fn wr32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

const OPT_CHECKSUM: usize = 64;
const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_SIZE_OF_INIT_DATA: usize = 8;
const OPT_NUM_DIRS: usize = 108;
const OPT_DIRS: usize = 112;
const DIR_SECURITY: usize = 4;
const SECTION_HEADER: usize = 40;
/// Largest section we accept (a kernel or initrd is far smaller).
const MAX_SECTION: u32 = 256 << 20;

/// Characteristics of a read-only initialized data section.
pub const SCN_DATA_READ: u32 = 0x4000_0040;

impl Pe {
    /// Parses a PE32+ image.
    pub fn parse(b: &[u8]) -> Result<Pe> {
        if b.get(..2) != Some(b"MZ") {
            return Err(invalid("not a PE file (no MZ header)"));
        }
        let pe = rd32(b, 0x3c)? as usize;
        if b.get(pe..pe + 4) != Some(b"PE\0\0") {
            return Err(invalid("not a PE file (no PE signature)"));
        }
        let coff = pe + 4;
        let nsections = rd16(b, coff + 2)? as usize;
        let opt_size = rd16(b, coff + 16)? as usize;
        let opt = coff + 20;
        if rd16(b, opt)? != 0x20b {
            return Err(invalid("not a PE32+ image"));
        }
        let ndirs = rd32(b, opt + OPT_NUM_DIRS)? as usize;
        let cert_table = if ndirs > DIR_SECURITY {
            let at = opt + OPT_DIRS + DIR_SECURITY * 8;
            let (off, size) = (rd32(b, at)?, rd32(b, at + 4)?);
            (size != 0).then_some((off, size))
        } else {
            None
        };
        let section_table = opt + opt_size;
        let mut sections = Vec::with_capacity(nsections);
        for i in 0..nsections {
            let h = section_table + i * SECTION_HEADER;
            let raw_name = b
                .get(h..h + 8)
                .ok_or_else(|| invalid("PE section table truncated"))?;
            let end = raw_name.iter().position(|&c| c == 0).unwrap_or(8);
            sections.push(Section {
                name: String::from_utf8_lossy(&raw_name[..end]).into_owned(),
                virtual_size: rd32(b, h + 8)?,
                virtual_address: rd32(b, h + 12)?,
                raw_size: rd32(b, h + 16)?,
                raw_offset: rd32(b, h + 20)?,
                characteristics: rd32(b, h + 36)?,
            });
        }
        let parsed = Pe {
            opt,
            section_table,
            sections,
            section_alignment: rd32(b, opt + 32)?,
            file_alignment: rd32(b, opt + 36)?,
            size_of_headers: rd32(b, opt + 60)?,
            cert_table,
        };
        // PE spec: FileAlignment is a power of two in 512..=64K; SectionAlignment a power of two
        // not below it. Larger values (and sections over 256 MiB) only come from damaged input.
        if parsed.size_of_headers as usize > b.len()
            || !parsed.file_alignment.is_power_of_two()
            || !(512..=65536).contains(&parsed.file_alignment)
            || !parsed.section_alignment.is_power_of_two()
            || !(parsed.file_alignment..=1 << 21).contains(&parsed.section_alignment)
        {
            return Err(invalid("PE header fields out of range"));
        }
        for s in &parsed.sections {
            if s.virtual_size > MAX_SECTION {
                return Err(invalid(format!(
                    "PE section {} is implausibly large",
                    s.name
                )));
            }
            if (s.raw_offset as usize).saturating_add(s.raw_size as usize) > b.len() {
                return Err(invalid(format!(
                    "PE section {} extends past the file",
                    s.name
                )));
            }
        }
        if let Some((off, size)) = parsed.cert_table {
            if (off as usize).saturating_add(size as usize) > b.len() {
                return Err(invalid("PE certificate table extends past the file"));
            }
        }
        Ok(parsed)
    }

    /// The loaded content of section `name`: `VirtualSize` bytes, zero-filled past the raw data
    /// (what the stub sees in memory and measures).
    pub fn section_data(&self, b: &[u8], name: &str) -> Option<Vec<u8>> {
        let s = self.sections.iter().find(|s| s.name == name)?;
        let raw = &b[s.raw_offset as usize..(s.raw_offset + s.raw_size) as usize];
        let mut v = raw[..raw.len().min(s.virtual_size as usize)].to_vec();
        v.resize(s.virtual_size as usize, 0);
        Some(v)
    }
}

/// The PE checksum: 16-bit one's-complement-style sum of the file with the checksum field taken
/// as zero, plus the file length.
pub fn checksum(b: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in b.chunks(2).enumerate() {
        let at = i * 2;
        if at == checksum_offset || at == checksum_offset + 2 {
            continue;
        }
        let w = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u64;
        sum += w;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(b.len() as u32)
}

/// SHA-256 Authenticode digest of a PE32+ image.
pub fn authenticode_sha256(b: &[u8]) -> Result<[u8; 32]> {
    Ok(authenticode::<Sha256>(b)?.into())
}

/// SHA-384 Authenticode digest of a PE32+ image (what firmware extends into a SHA-384 bank).
pub fn authenticode_sha384(b: &[u8]) -> Result<[u8; 48]> {
    Ok(authenticode::<Sha384>(b)?.into())
}

/// Authenticode digest of a PE32+ image with hash `D`.
pub fn authenticode<D: Digest>(b: &[u8]) -> Result<Output<D>> {
    let pe = Pe::parse(b)?;
    let ck = pe.opt + OPT_CHECKSUM;
    let cert_dir = pe.opt + OPT_DIRS + DIR_SECURITY * 8;
    let hdr_end = pe.size_of_headers as usize;
    if cert_dir + 8 > hdr_end {
        return Err(invalid("PE image has no certificate-table directory entry"));
    }
    let mut h = D::new();
    h.update(&b[..ck]);
    h.update(&b[ck + 4..cert_dir]);
    h.update(&b[cert_dir + 8..hdr_end]);
    let mut sections: Vec<&Section> = pe.sections.iter().filter(|s| s.raw_size > 0).collect();
    sections.sort_by_key(|s| s.raw_offset);
    let mut hashed = hdr_end;
    for s in sections {
        h.update(&b[s.raw_offset as usize..(s.raw_offset + s.raw_size) as usize]);
        hashed += s.raw_size as usize;
    }
    let cert_size = pe.cert_table.map_or(0, |(_, size)| size as usize);
    if b.len() > hashed + cert_size {
        h.update(&b[hashed..b.len() - cert_size]);
    }
    Ok(h.finalize())
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Refuses a signed stub, a header without room for `new`'s section headers, and new names that
/// are too long or already taken.
fn check_can_append(pe: &Pe, new: &[(&str, &[u8])]) -> Result<()> {
    if pe.cert_table.is_some() {
        return Err(invalid(
            "the stub is signed; appending sections would break the signature",
        ));
    }
    let table_end = pe.section_table + (pe.sections.len() + new.len()) * SECTION_HEADER;
    let first_raw = pe
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_offset)
        .min();
    if table_end > pe.size_of_headers as usize
        || first_raw.is_some_and(|r| (r as usize) < table_end)
    {
        return Err(invalid(
            "no room in the stub's PE header for more section headers",
        ));
    }
    for (name, _) in new {
        if name.len() > 8 || pe.sections.iter().any(|s| s.name == *name) {
            return Err(invalid(format!(
                "section name {name} too long or already in the stub"
            )));
        }
    }
    Ok(())
}

/// The stub up to the end of its sections' raw data, padded to `FileAlignment`.
fn stub_raw_data(image: &[u8], pe: &Pe) -> Vec<u8> {
    let fa = pe.file_alignment as u64;
    let mut out = image.to_vec();
    // Raw data of the stub's sections is kept; new data goes after the last of it.
    let raw_end = pe
        .sections
        .iter()
        .map(|s| (s.raw_offset + s.raw_size) as u64)
        .max()
        .unwrap_or(0)
        .max(pe.size_of_headers as u64);
    out.truncate(raw_end as usize);
    out.resize(align(raw_end, fa) as usize, 0);
    out
}

/// A read-only data section header.
fn section_header(
    name: &str,
    len: usize,
    va: u64,
    raw_size: u64,
    raw_offset: u64,
) -> [u8; SECTION_HEADER] {
    let mut hdr = [0u8; SECTION_HEADER];
    hdr[..name.len()].copy_from_slice(name.as_bytes());
    hdr[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    hdr[12..16].copy_from_slice(&(va as u32).to_le_bytes());
    hdr[16..20].copy_from_slice(&(raw_size as u32).to_le_bytes());
    hdr[20..24].copy_from_slice(&(raw_offset as u32).to_le_bytes());
    hdr[36..40].copy_from_slice(&SCN_DATA_READ.to_le_bytes());
    hdr
}

/// Appends each new section's data and header; returns the end of the virtual image and the
/// new `SizeOfInitializedData`.
fn append_sections(
    out: &mut Vec<u8>,
    pe: &Pe,
    image: &[u8],
    new: &[(&str, &[u8])],
) -> Result<(u64, u64)> {
    let fa = pe.file_alignment as u64;
    let sa = pe.section_alignment.max(4096) as u64;
    let mut va = pe
        .sections
        .iter()
        .map(|s| s.virtual_address as u64 + s.virtual_size.max(s.raw_size) as u64)
        .max()
        .unwrap_or(0);
    let mut init_data = rd32(image, pe.opt + OPT_SIZE_OF_INIT_DATA)? as u64;
    for (i, (name, data)) in new.iter().enumerate() {
        va = align(va, sa);
        let raw_offset = out.len() as u64;
        let raw_size = align(data.len() as u64, fa);
        if va + data.len() as u64 > u32::MAX as u64 || raw_offset + raw_size > u32::MAX as u64 {
            return Err(invalid("UKI would exceed 4 GiB"));
        }
        out.extend_from_slice(data);
        out.resize((raw_offset + raw_size) as usize, 0);
        let h = pe.section_table + (pe.sections.len() + i) * SECTION_HEADER;
        let hdr = section_header(name, data.len(), va, raw_size, raw_offset);
        out[h..h + SECTION_HEADER].copy_from_slice(&hdr);
        va += data.len() as u64;
        init_data += raw_size;
    }
    Ok((va, init_data))
}

/// Updates the COFF and optional headers for `added` new sections, then the checksum.
fn finish_headers(out: &mut [u8], pe: &Pe, added: usize, va: u64, init_data: u64) {
    let coff = pe.opt - 20;
    let n = (pe.sections.len() + added) as u16;
    out[coff + 2..coff + 4].copy_from_slice(&n.to_le_bytes());
    wr32(out, coff + 4, 0); // TimeDateStamp: none, for reproducibility
    wr32(
        out,
        pe.opt + OPT_SIZE_OF_INIT_DATA,
        init_data.min(u32::MAX as u64) as u32,
    );
    wr32(
        out,
        pe.opt + OPT_SIZE_OF_IMAGE,
        align(va, pe.section_alignment as u64) as u32,
    );
    let ck = checksum(out, pe.opt + OPT_CHECKSUM);
    wr32(out, pe.opt + OPT_CHECKSUM, ck);
}

/// Appends `(name, content)` sections to an unsigned PE image. Each section's `VirtualSize` is
/// its exact content length, so the stub measures exactly the content; raw data is padded to
/// `FileAlignment`. Sets the timestamp to zero and recomputes `SizeOfImage` and the checksum.
pub fn add_sections(image: &[u8], new: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let pe = Pe::parse(image)?;
    check_can_append(&pe, new)?;
    let mut out = stub_raw_data(image, &pe);
    let (va, init_data) = append_sections(&mut out, &pe, image, new)?;
    finish_headers(&mut out, &pe, new.len(), va, init_data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_pe() {
        assert!(Pe::parse(b"MZ").is_err());
        assert!(Pe::parse(b"hello world").is_err());
        assert!(authenticode_sha256(&[0u8; 1000]).is_err());
    }

    #[test]
    fn damaged_headers_give_errors_not_panics() {
        // A small but complete PE32+ image: headers, one section.
        let mut img = vec![0u8; 0x400];
        img[..2].copy_from_slice(b"MZ");
        img[0x3c] = 0x40;
        img[0x40..0x44].copy_from_slice(b"PE\0\0");
        img[0x46] = 1; // one section
        img[0x54] = 240; // optional header size
        img[0x58..0x5a].copy_from_slice(&0x20bu16.to_le_bytes());
        wr32(&mut img, 0x58 + 32, 0x1000);
        wr32(&mut img, 0x58 + 36, 0x200);
        wr32(&mut img, 0x58 + 60, 0x200);
        wr32(&mut img, 0x58 + OPT_NUM_DIRS, 16);
        let sec = 0x58 + 240;
        img[sec..sec + 5].copy_from_slice(b".text");
        wr32(&mut img, sec + 8, 0x10);
        wr32(&mut img, sec + 12, 0x1000);
        wr32(&mut img, sec + 16, 0x200);
        wr32(&mut img, sec + 20, 0x200);
        assert!(authenticode_sha256(&img).is_ok());
        let with = add_sections(&img, &[(".osrel", b"ID=x\n")]).unwrap();
        let parsed = Pe::parse(&with).unwrap();
        assert_eq!(parsed.section_data(&with, ".osrel").unwrap(), b"ID=x\n");
        // Every single-byte change of the headers must be handled without a panic.
        let mut x = 0x1234_5678u32;
        for at in 0..0x200 {
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let mut bad = img.clone();
                bad[at] = x as u8;
                let _ = Pe::parse(&bad).map(|p| p.section_data(&bad, ".text"));
                let _ = authenticode_sha256(&bad);
                let _ = add_sections(&bad, &[(".osrel", b"a")]);
                let _ = checksum(&bad, 0x58 + OPT_CHECKSUM);
            }
        }
        let _ = authenticode_sha256(&img[..0x300]);
    }

    #[test]
    fn checksum_skips_its_own_field() {
        let mut a = vec![1u8; 100];
        let b = a.clone();
        a[64..68].copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(checksum(&a, 64), checksum(&b, 64));
    }
}
