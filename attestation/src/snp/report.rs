//! The SEV-SNP attestation report (AMD SEV-SNP ABI, Table 22): typed fields from the `sev` crate,
//! signature checked over the raw signed bytes, never over a re-serialisation.

use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::pkey::{PKey, Public};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

/// Size of a report as the firmware returns it.
pub const REPORT_LEN: usize = 1184;
/// Bytes 0..0x2a0 are signed; the signature follows.
pub const SIGNED_LEN: usize = 0x2a0;
/// ECDSA P-384 with SHA-384, the only algorithm SNP firmware uses.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Why bytes are not an SNP report we can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("SNP report is {0} bytes, expected {REPORT_LEN}")]
    Length(usize),
    #[error("SNP report version {0} is not supported (2, 3, 4 and 5 are)")]
    Version(u32),
    #[error("SNP report signature algorithm {0} is not ECDSA P-384/SHA-384")]
    SignatureAlgorithm(u32),
    #[error("SNP report cannot be parsed: {0}")]
    Parse(String),
}

/// A parsed report that keeps its exact bytes.
#[derive(Debug, Clone)]
pub struct SnpReport {
    raw: Vec<u8>,
    pub fields: AttestationReport,
}

impl SnpReport {
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() != REPORT_LEN {
            return Err(ReportError::Length(bytes.len()));
        }
        let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        // Version 4 (GCP since late 2025) has version 3's layout with more fields defined in
        // reserved space; version 5 adds the launch mitigation vector.
        if !matches!(version, 2..=5) {
            return Err(ReportError::Version(version));
        }
        let sig_algo = u32::from_le_bytes([bytes[0x34], bytes[0x35], bytes[0x36], bytes[0x37]]);
        if sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(ReportError::SignatureAlgorithm(sig_algo));
        }
        // The crate's decoder indexes fixed ranges of a buffer whose length we checked above;
        // catch_unwind is a second fence so a decoder bug on hostile bytes is an error, not a crash.
        let fields = std::panic::catch_unwind(|| AttestationReport::from_bytes(bytes))
            .map_err(|_| ReportError::Parse("decoder panicked".into()))?
            .map_err(|e| ReportError::Parse(e.to_string()))?;
        Ok(Self {
            raw: bytes.to_vec(),
            fields,
        })
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    pub fn report_data(&self) -> &[u8; 64] {
        &self.fields.report_data
    }

    /// Checks the ECDSA P-384 signature over the raw signed bytes with the VCEK/VLEK key.
    pub fn signature_valid(&self, key: &PKey<Public>) -> Result<bool, openssl::error::ErrorStack> {
        // r and s are little-endian in 72-byte fields at 0x2a0 and 0x2e8.
        let component = |offset: usize| {
            let mut be = self.raw[offset..offset + 72].to_vec();
            be.reverse();
            BigNum::from_slice(&be)
        };
        let signature = EcdsaSig::from_private_components(component(0x2a0)?, component(0x2e8)?)?;
        let digest = openssl::sha::sha384(self.signed_bytes());
        let ec = key.ec_key()?;
        Ok(signature.verify(&digest, &ec).unwrap_or(false))
    }
}
