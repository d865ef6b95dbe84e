//! Access to a TPM 2.0 through any TCTI (`device:/dev/tpmrm0` in the guest,
//! `swtpm:host=...,port=...` in tests), using tss-esapi.
//!
//! One `Tpm` owns one ESAPI context; callers serialize access (the TPM is one device) and no
//! session outlives a call.

use sha2::{Digest as _, Sha256};
use std::str::FromStr;
use tss_esapi::abstraction::pcr::read_all;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues, PcrSelectionListBuilder, PcrSlot};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

/// The workload measurement register (see docs/measurement.md).
pub const WORKLOAD_PCR: u8 = 23;

/// Failures talking to the TPM, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("invalid TCTI configuration {tcti:?}: {source}")]
    Tcti {
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("cannot open the TPM through {tcti:?}: {source}")]
    Open {
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("PCR index {0} is out of range 0..=23")]
    PcrIndex(u8),
    #[error("TPM {operation} failed: {source}")]
    Command {
        operation: &'static str,
        source: tss_esapi::Error,
    },
    #[error("the TPM returned no SHA-256 value for PCR {0}")]
    MissingPcr(u8),
}

fn command(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { operation, source }
}

/// A connection to one TPM.
pub struct Tpm {
    context: Context,
}

impl Tpm {
    /// Opens the TPM named by a TCTI string such as `device:/dev/tpmrm0`.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::Tcti {
            tcti: tcti.to_owned(),
            source,
        })?;
        let context = Context::new(conf).map_err(|source| TpmError::Open {
            tcti: tcti.to_owned(),
            source,
        })?;
        Ok(Self { context })
    }

    /// Extends a SHA-256 digest into PCR `index`: PCR := SHA-256(PCR || digest).
    pub fn extend_sha256(&mut self, index: u8, digest: &[u8; 32]) -> Result<(), TpmError> {
        let handle = pcr_handle(index)?;
        let mut values = DigestValues::new();
        let digest = Digest::try_from(digest.to_vec()).map_err(command("digest conversion"))?;
        values.set(HashingAlgorithm::Sha256, digest);
        self.context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.pcr_extend(handle, values)
            })
            .map_err(command("PCR_Extend"))
    }

    /// Reads the SHA-256 bank values of the given PCRs, in the order asked.
    pub fn read_sha256(&mut self, indices: &[u8]) -> Result<Vec<[u8; 32]>, TpmError> {
        let slots = indices
            .iter()
            .map(|&i| pcr_slot(i))
            .collect::<Result<Vec<_>, _>>()?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(command("PCR selection"))?;
        let data = self
            .context
            .execute_without_session(|ctx| read_all(ctx, selection))
            .map_err(command("PCR_Read"))?;
        let bank = data
            .pcr_bank(HashingAlgorithm::Sha256)
            .ok_or(TpmError::MissingPcr(indices.first().copied().unwrap_or(0)))?;
        indices
            .iter()
            .zip(slots)
            .map(|(&index, slot)| {
                let value = bank.get_digest(slot).ok_or(TpmError::MissingPcr(index))?;
                value
                    .value()
                    .try_into()
                    .map_err(|_| TpmError::MissingPcr(index))
            })
            .collect()
    }
}

/// The value a SHA-256 PCR takes after extending `digest` into `previous`.
pub fn extended(previous: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(digest);
    hasher.finalize().into()
}

fn pcr_slot(index: u8) -> Result<PcrSlot, TpmError> {
    if index > 23 {
        return Err(TpmError::PcrIndex(index));
    }
    PcrSlot::try_from(1u32 << index).map_err(|_| TpmError::PcrIndex(index))
}

fn pcr_handle(index: u8) -> Result<PcrHandle, TpmError> {
    use PcrHandle::*;
    const HANDLES: [PcrHandle; 24] = [
        Pcr0, Pcr1, Pcr2, Pcr3, Pcr4, Pcr5, Pcr6, Pcr7, Pcr8, Pcr9, Pcr10, Pcr11, Pcr12, Pcr13,
        Pcr14, Pcr15, Pcr16, Pcr17, Pcr18, Pcr19, Pcr20, Pcr21, Pcr22, Pcr23,
    ];
    HANDLES
        .get(usize::from(index))
        .copied()
        .ok_or(TpmError::PcrIndex(index))
}
