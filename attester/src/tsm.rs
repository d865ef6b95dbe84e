//! The kernel's generic attestation interface, configfs-tsm (Linux 6.7+,
//! `/sys/kernel/config/tsm/report`): one ABI for TDX and SEV-SNP guests. Write up to 64 bytes to
//! `inblob`, read the signed report from `outblob` (a TD quote, or an SNP report) and, for SNP,
//! the host's certificates from `auxblob`. `generation` counts writes: if it moved by more than
//! our own write, another process changed the request and the report is discarded.

use crate::tee::{TeeBackend, TeeError, TeeEvidence};
use crate::tpm::Tpm;
use cvm_attestation::binding::report_data;
use cvm_attestation::encoding::Bytes;
use cvm_attestation::evidence::{SnpEvidence, TdxEvidence, Tee};
use std::path::{Path, PathBuf};

/// Where the kernel mounts the interface.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// The GUID of the VCEK in an SNP certificate table (GHCB specification).
const VCEK_GUID: [u8; 16] = guid("63da758d-e664-4564-adc5-f4b93be8accd");
/// The GUID of the VLEK.
const VLEK_GUID: [u8; 16] = guid("a8074bc2-a25a-483e-aae6-39c045a0b8a1");
/// Largest blob read back (the kernel's own limit is 32 KiB for outblob).
const MAX_BLOB: u64 = 64 * 1024;

/// A report through configfs-tsm.
pub struct ConfigfsTsm {
    pub root: PathBuf,
    pub tee: Tee,
    /// SNP only: VCEK (DER) when the host puts none in `auxblob`.
    pub vcek_der: Option<Vec<u8>>,
}

/// What one request returned.
#[derive(Debug, Clone)]
pub struct TsmReport {
    pub provider: String,
    pub outblob: Vec<u8>,
    pub auxblob: Option<Vec<u8>>,
}

impl ConfigfsTsm {
    pub fn new(tee: Tee, vcek_der: Option<Vec<u8>>) -> Self {
        Self {
            root: TSM_REPORT_ROOT.into(),
            tee,
            vcek_der,
        }
    }

    /// One report over `inblob`, in a directory of our own that is removed afterwards.
    pub fn report(&self, inblob: &[u8; 64]) -> Result<TsmReport, TeeError> {
        let fail = |what: &str, path: &Path, e: std::io::Error| {
            TeeError::Other(format!("configfs-tsm: {what} {}: {e}", path.display()))
        };
        let dir = self.root.join(format!("cvm-agent-{}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail("creating", &dir, e)),
        }
        let result = (|| {
            let inblob_path = dir.join("inblob");
            std::fs::write(&inblob_path, inblob).map_err(|e| fail("writing", &inblob_path, e))?;
            let before = read_generation(&dir)?;
            let outblob = read_bounded(&dir.join("outblob"))?;
            let auxblob = read_bounded(&dir.join("auxblob"))
                .ok()
                .filter(|b| !b.is_empty());
            let provider = std::fs::read_to_string(dir.join("provider"))
                .map(|p| p.trim().to_owned())
                .unwrap_or_default();
            if read_generation(&dir)? != before {
                return Err(TeeError::Other(
                    "configfs-tsm: another process changed the request while it was served".into(),
                ));
            }
            Ok(TsmReport {
                provider,
                outblob,
                auxblob,
            })
        })();
        let _ = std::fs::remove_dir(&dir);
        result
    }
}

fn read_generation(dir: &Path) -> Result<u64, TeeError> {
    let path = dir.join("generation");
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| {
            TeeError::Other(format!("configfs-tsm: no generation in {}", path.display()))
        })
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TeeError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| TeeError::Other(format!("configfs-tsm: reading {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_BLOB + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TeeError::Other(format!("configfs-tsm: reading {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_BLOB {
        return Err(TeeError::Other(format!(
            "configfs-tsm: {} is larger than {MAX_BLOB} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The VCEK or VLEK from an SNP certificate table: entries of (GUID, offset u32 LE, length u32
/// LE) ending with an all-zero entry; offsets are from the table's start.
pub fn vek_from_cert_table(table: &[u8]) -> Option<Vec<u8>> {
    for entry in table.chunks_exact(24).take(64) {
        let (guid, rest) = entry.split_at(16);
        if guid.iter().all(|&b| b == 0) {
            break;
        }
        if guid == VCEK_GUID || guid == VLEK_GUID {
            let offset = u32::from_le_bytes(rest[0..4].try_into().ok()?) as usize;
            let length = u32::from_le_bytes(rest[4..8].try_into().ok()?) as usize;
            return table
                .get(offset..offset.checked_add(length)?)
                .map(<[u8]>::to_vec);
        }
    }
    None
}

impl TeeBackend for ConfigfsTsm {
    fn tee(&self) -> Tee {
        self.tee
    }

    fn evidence(
        &mut self,
        _: &mut Tpm,
        ak_public: &[u8],
        nonce: &[u8],
    ) -> Result<TeeEvidence, TeeError> {
        let report = self.report(&report_data(ak_public, nonce))?;
        match self.tee {
            Tee::Tdx => Ok(TeeEvidence {
                tdx: Some(TdxEvidence {
                    quote: Bytes(report.outblob),
                    // Intel's collateral is fetched by the verifier (PCS), not by the guest.
                    collateral: None,
                    hcl_report: None,
                }),
                ..TeeEvidence::default()
            }),
            Tee::SevSnp => {
                let vek = report
                    .auxblob
                    .as_deref()
                    .and_then(vek_from_cert_table)
                    .or_else(|| self.vcek_der.clone())
                    .ok_or_else(|| {
                        TeeError::Vcek(
                            "the host provided none and no vcek_path is configured".into(),
                        )
                    })?;
                Ok(TeeEvidence {
                    snp: Some(SnpEvidence {
                        attestation_report: Bytes(report.outblob),
                        vek_cert: Bytes(vek),
                        cert_chain: Vec::new(),
                        hcl_report: None,
                    }),
                    ..TeeEvidence::default()
                })
            }
            Tee::None => Err(TeeError::Other("configfs-tsm needs a TEE".into())),
        }
    }
}

/// Parses a GUID's text form into its on-wire byte order (first three fields little-endian).
const fn guid(text: &str) -> [u8; 16] {
    let t = text.as_bytes();
    let mut hex = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < t.len() {
        if t[i] != b'-' {
            let digit = match t[i] {
                b'0'..=b'9' => t[i] - b'0',
                b'a'..=b'f' => t[i] - b'a' + 10,
                _ => panic!("GUID constant is not lowercase hex"),
            };
            if n % 2 == 0 {
                hex[n / 2] = digit << 4;
            } else {
                hex[n / 2] |= digit;
            }
            n += 1;
        }
        i += 1;
    }
    [
        hex[3], hex[2], hex[1], hex[0], hex[5], hex[4], hex[7], hex[6], hex[8], hex[9], hex[10],
        hex[11], hex[12], hex[13], hex[14], hex[15],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_vcek_in_a_certificate_table_and_refuses_bad_offsets() {
        let cert = b"vcek-der-bytes".to_vec();
        let mut table = Vec::new();
        table.extend_from_slice(&guid("c0b406a4-a803-4952-9743-3fb6014cd0ae")); // ARK
        table.extend_from_slice(&[0; 8]);
        table.extend_from_slice(&VCEK_GUID);
        table.extend_from_slice(&72u32.to_le_bytes());
        table.extend_from_slice(&(cert.len() as u32).to_le_bytes());
        table.extend_from_slice(&[0; 24]);
        table.extend_from_slice(&cert);
        assert_eq!(vek_from_cert_table(&table), Some(cert.clone()));
        let mut bad = table.clone();
        bad[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(vek_from_cert_table(&bad), None);
        assert_eq!(vek_from_cert_table(&[0; 10]), None);
        assert_eq!(&VCEK_GUID[..4], &[0x8d, 0x75, 0xda, 0x63]);
    }
}
