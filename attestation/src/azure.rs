//! Azure's HCL report (vTPM NV index 0x01400001): the paravisor's header, the hardware report
//! (SNP report or TDX TD report), the IGVM request data, and `var_data`, a JSON document that
//! holds the vTPM's AK and EK public keys and that the hardware report binds by hash.
//!
//! Layout: 0x00 header ("HCLA", version, size, request type, status); 0x20 hardware report
//! (1184 bytes); 0x4c0 request data (data size, version, report type, hash type, var_data size);
//! 0x4d4 var_data.

use crate::encoding::decode_base64;
use crate::tpm::public::rsa_from_jwk;
use openssl::pkey::{PKey, Public};
use serde::Deserialize;

pub const HCL_NV_INDEX: u32 = 0x0140_0001;
const MAGIC: &[u8; 4] = b"HCLA";
const HW_REPORT_OFFSET: usize = 0x20;
const HW_REPORT_LEN: usize = 1184;
const REQUEST_OFFSET: usize = 0x4c0;
const VAR_DATA_OFFSET: usize = 0x4d4;
/// Largest HCL report accepted.
pub const MAX_HCL_BYTES: usize = 16 * 1024;

/// Which hardware report the HCL report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HclReportType {
    Snp,
    Tdx,
}

/// Why bytes are not a usable HCL report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HclError {
    #[error("HCL report is {0} bytes: too short for its header, hardware report and request data")]
    TooShort(usize),
    #[error("HCL report is {0} bytes, more than the limit of {MAX_HCL_BYTES}")]
    TooLarge(usize),
    #[error("HCL report does not start with \"HCLA\"")]
    Magic,
    #[error("HCL report type {0} is neither SNP (2) nor TDX (4)")]
    ReportType(u32),
    #[error("HCL var_data claims {claimed} bytes but only {available} follow")]
    VarDataLength { claimed: usize, available: usize },
    #[error("HCL var_data hash type {0} is not SHA-256 (1)")]
    HashType(u32),
    #[error("var_data is not the expected JSON: {0}")]
    VarDataJson(String),
    #[error("var_data has no RSA key with kid \"HCLAkPub\"")]
    NoAk,
    #[error("var_data HCLAkPub is not a valid RSA key: {0}")]
    BadAk(String),
}

/// A parsed HCL report (borrowed from its bytes).
#[derive(Debug, Clone)]
pub struct HclReport<'a> {
    pub report_type: HclReportType,
    /// The 1184-byte hardware report area (SNP report, or TD report padded).
    pub hardware_report: &'a [u8],
    pub var_data: &'a [u8],
}

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

impl<'a> HclReport<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, HclError> {
        if bytes.len() > MAX_HCL_BYTES {
            return Err(HclError::TooLarge(bytes.len()));
        }
        if bytes.len() < VAR_DATA_OFFSET {
            return Err(HclError::TooShort(bytes.len()));
        }
        if &bytes[..4] != MAGIC {
            return Err(HclError::Magic);
        }
        // The request data's report type says which hardware report follows (the header's field
        // at 12 is the request type, 2 for both).
        let report_type = match le_u32(bytes, REQUEST_OFFSET + 8) {
            2 => HclReportType::Snp,
            4 => HclReportType::Tdx,
            other => return Err(HclError::ReportType(other)),
        };
        let hash_type = le_u32(bytes, REQUEST_OFFSET + 12);
        if hash_type != 1 {
            return Err(HclError::HashType(hash_type));
        }
        let claimed = le_u32(bytes, REQUEST_OFFSET + 16) as usize;
        let available = bytes.len() - VAR_DATA_OFFSET;
        if claimed > available {
            return Err(HclError::VarDataLength { claimed, available });
        }
        Ok(Self {
            report_type,
            hardware_report: &bytes[HW_REPORT_OFFSET..HW_REPORT_OFFSET + HW_REPORT_LEN],
            var_data: &bytes[VAR_DATA_OFFSET..VAR_DATA_OFFSET + claimed],
        })
    }

    /// The TD report's `report_data` (TDX) or the SNP report's, 64 bytes.
    pub fn report_data(&self) -> [u8; 64] {
        let offset = match self.report_type {
            HclReportType::Snp => 0x50,
            // REPORTMACSTRUCT.report_data at 128 in the TD report.
            HclReportType::Tdx => 128,
        };
        let mut data = [0u8; 64];
        data.copy_from_slice(&self.hardware_report[offset..offset + 64]);
        data
    }
}

#[derive(Deserialize)]
struct VarData {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: String,
    kty: String,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// The vTPM AK public key (`HCLAkPub`) from `var_data`.
pub fn ak_from_var_data(var_data: &[u8]) -> Result<PKey<Public>, HclError> {
    let parsed: VarData =
        serde_json::from_slice(var_data).map_err(|e| HclError::VarDataJson(e.to_string()))?;
    let key = parsed
        .keys
        .iter()
        .find(|k| k.kid == "HCLAkPub" && k.kty == "RSA")
        .ok_or(HclError::NoAk)?;
    let decode = |field: &Option<String>| {
        field
            .as_deref()
            .and_then(decode_base64)
            .ok_or_else(|| HclError::BadAk("n or e is missing or not base64url".into()))
    };
    rsa_from_jwk(&decode(&key.n)?, &decode(&key.e)?).map_err(|e| HclError::BadAk(e.to_string()))
}
