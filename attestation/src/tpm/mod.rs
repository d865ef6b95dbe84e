//! TPM 2.0 structures a verifier needs, parsed without a TPM stack: quotes (TPMS_ATTEST),
//! signatures (TPMT_SIGNATURE) and AK public keys (TPMT_PUBLIC), plus the PCR digest a quote
//! commits to.

pub mod attest;
pub mod public;
pub mod signature;
pub mod wire;

pub use attest::{PcrSelection, Quote};
pub use public::{AkPublic, PublicKeyError};
pub use signature::{QuoteSignature, SignatureError};
pub use wire::WireError;

use openssl::hash::MessageDigest;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::BTreeMap;

/// Domain tag of the TPM quote's qualifying data (docs/evidence.md).
pub const QUOTE_DOMAIN: &[u8] = b"cvm-tpm-quote/v1\0";

/// `SHA-256(QUOTE_DOMAIN || nonce)`: the qualifying data passed to TPM2_Quote. A fixed 32 bytes,
/// so it fits TPM2B_DATA whatever the nonce length.
pub fn qualifying_data(nonce: &[u8]) -> [u8; 32] {
    let mut hasher = sha2::Sha256::new();
    hasher.update(QUOTE_DOMAIN);
    hasher.update(nonce);
    hasher.finalize().into()
}

/// Domain tag of the qualifying data of a quote that also binds the TEE report.
pub const QUOTE_REPORT_DOMAIN: &[u8] = b"cvm-tpm-quote/v2\0";

/// The qualifying data of a quote taken after a TEE report the agent asked for itself (GCP, AWS,
/// local SEV-SNP): `SHA-256(QUOTE_REPORT_DOMAIN || u32be(len(nonce)) || nonce ||
/// SHA-256(report))`, else [`qualifying_data`].
///
/// Why: a TEE report that binds an AK proves only that *some* guest asked for it. An attacker
/// with root in their own TEE guest can bind the AK and nonce of an honest, non-confidential VM
/// running the golden image. Only the agent that produced the quote (running the measured image,
/// so honest when its PCRs verify) can bind the report it got from its own hardware into it.
pub fn quote_qualifying_data(nonce: &[u8], tee_report: Option<&[u8]>) -> [u8; 32] {
    let Some(report) = tee_report else {
        return qualifying_data(nonce);
    };
    let mut hasher = sha2::Sha256::new();
    hasher.update(QUOTE_REPORT_DOMAIN);
    hasher.update((nonce.len() as u32).to_be_bytes());
    hasher.update(nonce);
    hasher.update(sha2::Sha256::digest(report));
    hasher.finalize().into()
}

/// TPM hash algorithms (TPM_ALG_ID) this code supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn from_tpm(id: u16) -> Option<Self> {
        match id {
            0x0004 => Some(Self::Sha1),
            0x000b => Some(Self::Sha256),
            0x000c => Some(Self::Sha384),
            0x000d => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn tpm_id(self) -> u16 {
        match self {
            Self::Sha1 => 0x0004,
            Self::Sha256 => 0x000b,
            Self::Sha384 => 0x000c,
            Self::Sha512 => 0x000d,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    pub fn message_digest(self) -> MessageDigest {
        match self {
            Self::Sha1 => MessageDigest::sha1(),
            Self::Sha256 => MessageDigest::sha256(),
            Self::Sha384 => MessageDigest::sha384(),
            Self::Sha512 => MessageDigest::sha512(),
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => openssl::sha::sha1(data).to_vec(),
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// Why the quoted PCR digest cannot be recomputed from the reported values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcrDigestError {
    #[error(
        "the quote selects PCR {index} of the {hash:?} bank, which the evidence does not report"
    )]
    Missing { index: u8, hash: HashAlg },
    #[error("reported PCR {index} has {actual} bytes, the {hash:?} bank has {expected}")]
    Length {
        index: u8,
        hash: HashAlg,
        expected: usize,
        actual: usize,
    },
}

/// The digest a TPM puts in a quote: `H(PCR[i] for each selected i, banks in order)`, with `H`
/// the signing scheme's hash.
pub fn pcr_digest(
    quote: &Quote,
    banks: &BTreeMap<HashAlg, BTreeMap<u8, Vec<u8>>>,
    hash: HashAlg,
) -> Result<Vec<u8>, PcrDigestError> {
    let mut concatenated = Vec::new();
    for selection in &quote.selections {
        for &index in &selection.pcrs {
            let value = banks
                .get(&selection.hash)
                .and_then(|bank| bank.get(&index))
                .ok_or(PcrDigestError::Missing {
                    index,
                    hash: selection.hash,
                })?;
            if value.len() != selection.hash.size() {
                return Err(PcrDigestError::Length {
                    index,
                    hash: selection.hash,
                    expected: selection.hash.size(),
                    actual: value.len(),
                });
            }
            concatenated.extend_from_slice(value);
        }
    }
    Ok(hash.digest(&concatenated))
}
