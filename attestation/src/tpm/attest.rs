//! TPMS_ATTEST for TPM2_Quote (TPM 2.0 Part 2, 10.12): what the AK signed.

use super::wire::{Reader, WireError};
use super::HashAlg;

/// `TPM_GENERATED_VALUE`: the TPM signs only attestation structures starting with this.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// Largest TPMS_ATTEST accepted.
pub const MAX_ATTEST_BYTES: usize = 1024;

/// One bank's PCR selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    pub hash: HashAlg,
    /// Selected PCR indices, ascending.
    pub pcrs: Vec<u8>,
}

/// The parsed quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub qualified_signer: Vec<u8>,
    /// The qualifying data the caller passed to TPM2_Quote (our nonce binding).
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    pub selections: Vec<PcrSelection>,
    /// Digest of the selected PCR values, concatenated in selection order.
    pub pcr_digest: Vec<u8>,
}

impl Quote {
    /// Parses a TPMS_ATTEST of type quote, refusing anything else or any trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new("TPMS_ATTEST", bytes);
        if bytes.len() > MAX_ATTEST_BYTES {
            return Err(r.too_large("structure", bytes.len(), MAX_ATTEST_BYTES));
        }
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED {
            return Err(r.unsupported("magic", magic));
        }
        let kind = r.u16("type")?;
        if kind != ST_ATTEST_QUOTE {
            return Err(r.unsupported("type", u32::from(kind)));
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", 2 + 64)?.to_vec();
        let extra_data = r.tpm2b("extraData", 64)?.to_vec();
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let safe = r.u8("clockInfo.safe")? != 0;
        let firmware_version = r.u64("firmwareVersion")?;
        let count = r.u32("pcrSelect.count")?;
        if count > 16 {
            return Err(r.too_large("pcrSelect.count", count as usize, 16));
        }
        let mut selections = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let alg = r.u16("pcrSelect.hash")?;
            let hash = HashAlg::from_tpm(alg)
                .ok_or_else(|| r.unsupported("pcrSelect.hash", alg.into()))?;
            let size = r.u8("pcrSelect.sizeofSelect")?;
            if size > 4 {
                return Err(r.too_large("pcrSelect.sizeofSelect", size.into(), 4));
            }
            let bitmap = r.take("pcrSelect.pcrSelect", size.into())?;
            let pcrs = (0..u16::from(size) * 8)
                .filter(|&i| bitmap[usize::from(i / 8)] & (1 << (i % 8)) != 0)
                .map(|i| i as u8)
                .collect();
            selections.push(PcrSelection { hash, pcrs });
        }
        let pcr_digest = r.tpm2b("pcrDigest", 64)?.to_vec();
        r.finish()?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            selections,
            pcr_digest,
        })
    }
}
