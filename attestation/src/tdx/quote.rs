//! The Intel TDX DCAP quote, version 4 (Intel TDX DCAP Quote Generation Library and Quote
//! Verification Library, "Quote Format"): a 48-byte header, the 584-byte TD report body, and the
//! signature data: the ECDSA P-256 signature over header || body by the attestation key, the
//! attestation key, and certification data of type 6 holding the Quoting Enclave's report, its
//! signature by the PCK key, the QE authentication data, and certification data of type 5 (the
//! PCK certificate chain, PEM). All integers little-endian; signatures and keys big-endian.

use super::body::{TdReportBody, BODY_LEN};
use super::reader::LeReader;
use crate::tpm::wire::WireError;

pub const QUOTE_VERSION: u16 = 4;
/// TEE type of a TDX quote (0x00 is SGX).
pub const TEE_TYPE_TDX: u32 = 0x81;
/// ECDSA-256-with-P-256 attestation key.
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
pub const HEADER_LEN: usize = 48;
/// Header and body: the bytes the quote signature covers.
pub const SIGNED_LEN: usize = HEADER_LEN + BODY_LEN;
pub const QE_REPORT_LEN: usize = 384;
/// Certification data types.
pub const CERT_DATA_PCK_CHAIN: u16 = 5;
pub const CERT_DATA_QE_REPORT: u16 = 6;
/// Largest quote accepted (real ones are about 5 KB, most of it the PEM chain).
pub const MAX_QUOTE_BYTES: usize = 64 * 1024;
const MAX_AUTH_DATA: usize = 4096;
const MAX_CERT_DATA: usize = 48 * 1024;

/// Why bytes are not a TD quote we can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("TD quote is {0} bytes, more than the limit of {MAX_QUOTE_BYTES}")]
    TooLarge(usize),
    #[error("TD quote version {0} is not supported (4 is)")]
    Version(u16),
    #[error("TD quote TEE type {0:#x} is not TDX (0x81)")]
    TeeType(u32),
    #[error("TD quote attestation key type {0} is not ECDSA P-256 (2)")]
    KeyType(u16),
    #[error("TD quote certification data type {actual} where {expected} was expected")]
    CertDataType { expected: u16, actual: u16 },
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// The quote header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteHeader {
    pub version: u16,
    pub att_key_type: u16,
    pub tee_type: u32,
    pub qe_vendor_id: [u8; 16],
    pub user_data: [u8; 20],
}

/// The Quoting Enclave's SGX report (384 bytes): who signed the quote's attestation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QeReport {
    pub cpusvn: [u8; 16],
    pub miscselect: u32,
    pub attributes: [u8; 16],
    pub mrenclave: [u8; 32],
    pub mrsigner: [u8; 32],
    pub isvprodid: u16,
    pub isvsvn: u16,
    pub report_data: [u8; 64],
}

impl QeReport {
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = LeReader::new("QE report", bytes);
        let cpusvn = r.array("cpusvn")?;
        let miscselect = r.u32("miscselect")?;
        r.take("reserved1", 28)?;
        let attributes = r.array("attributes")?;
        let mrenclave = r.array("mrenclave")?;
        r.take("reserved2", 32)?;
        let mrsigner = r.array("mrsigner")?;
        r.take("reserved3", 96)?;
        let isvprodid = r.u16("isvprodid")?;
        let isvsvn = r.u16("isvsvn")?;
        r.take("reserved4", 60)?;
        let report_data = r.array("report_data")?;
        r.finish()?;
        Ok(Self {
            cpusvn,
            miscselect,
            attributes,
            mrenclave,
            mrsigner,
            isvprodid,
            isvsvn,
            report_data,
        })
    }
}

/// A parsed quote that keeps its exact bytes (signatures are checked over them, never over a
/// re-serialisation).
#[derive(Debug, Clone)]
pub struct TdQuote {
    raw: Vec<u8>,
    pub header: QuoteHeader,
    pub body: TdReportBody,
    /// ECDSA P-256 `r || s` over header || body, by the attestation key.
    pub signature: [u8; 64],
    /// The attestation key, uncompressed point without the 0x04 prefix (`x || y`).
    pub attestation_key: [u8; 64],
    qe_report_range: (usize, usize),
    pub qe_report: QeReport,
    /// ECDSA P-256 `r || s` over the QE report, by the PCK key.
    pub qe_report_signature: [u8; 64],
    pub qe_auth_data: Vec<u8>,
    /// PCK leaf, intermediate and root, PEM.
    pub pck_chain_pem: Vec<u8>,
}

impl TdQuote {
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.len() > MAX_QUOTE_BYTES {
            return Err(QuoteError::TooLarge(bytes.len()));
        }
        let mut r = LeReader::new("TD quote", bytes);
        let version = r.u16("version")?;
        if version != QUOTE_VERSION {
            return Err(QuoteError::Version(version));
        }
        let att_key_type = r.u16("att_key_type")?;
        if att_key_type != ATT_KEY_TYPE_ECDSA_P256 {
            return Err(QuoteError::KeyType(att_key_type));
        }
        let tee_type = r.u32("tee_type")?;
        if tee_type != TEE_TYPE_TDX {
            return Err(QuoteError::TeeType(tee_type));
        }
        r.take("reserved", 4)?;
        let header = QuoteHeader {
            version,
            att_key_type,
            tee_type,
            qe_vendor_id: r.array("qe_vendor_id")?,
            user_data: r.array("user_data")?,
        };
        let body = TdReportBody::parse(r.take("body", BODY_LEN)?)?;
        let sig_len = r.u32("signature_data_len")? as usize;
        let sig_start = r.offset();
        let sig_data = r.sized("signature_data", sig_len, MAX_QUOTE_BYTES)?;
        // Quote buffers are often handed over zero-padded (the real vectors end in 70 zero
        // bytes); anything else after the structure is refused.
        let rest = r.take("padding", r.remaining())?;
        if let Some(count) = rest.iter().position(|b| *b != 0).map(|_| rest.len()) {
            return Err(QuoteError::Wire(WireError::Trailing {
                structure: "TD quote (non-zero bytes after the signature data)",
                count,
            }));
        }

        let mut s = LeReader::new("TD quote signature data", sig_data);
        let signature = s.array("quote_signature")?;
        let attestation_key = s.array("attestation_key")?;
        let outer_type = s.u16("certification_data_type")?;
        if outer_type != CERT_DATA_QE_REPORT {
            return Err(QuoteError::CertDataType {
                expected: CERT_DATA_QE_REPORT,
                actual: outer_type,
            });
        }
        let outer_len = s.u32("certification_data_size")? as usize;
        let outer = s.sized("certification_data", outer_len, MAX_QUOTE_BYTES)?;
        s.finish()?;
        let outer_start = sig_start + sig_data.len() - outer.len();

        let mut q = LeReader::new("QE report certification data", outer);
        let qe_report_bytes = q.take("qe_report", QE_REPORT_LEN)?;
        let qe_report = QeReport::parse(qe_report_bytes)?;
        let qe_report_signature = q.array("qe_report_signature")?;
        let auth_len = usize::from(q.u16("qe_auth_data_size")?);
        let qe_auth_data = q.sized("qe_auth_data", auth_len, MAX_AUTH_DATA)?.to_vec();
        let inner_type = q.u16("pck_certification_data_type")?;
        if inner_type != CERT_DATA_PCK_CHAIN {
            return Err(QuoteError::CertDataType {
                expected: CERT_DATA_PCK_CHAIN,
                actual: inner_type,
            });
        }
        let chain_len = q.u32("pck_certification_data_size")? as usize;
        let pck_chain_pem = q
            .sized("pck_cert_chain", chain_len, MAX_CERT_DATA)?
            .to_vec();
        q.finish()?;

        Ok(Self {
            raw: bytes.to_vec(),
            header,
            body,
            signature,
            attestation_key,
            qe_report_range: (outer_start, outer_start + QE_REPORT_LEN),
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain_pem,
        })
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Header || body: what the attestation key signs.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// The QE report's exact bytes: what the PCK key signs.
    pub fn qe_report_bytes(&self) -> &[u8] {
        &self.raw[self.qe_report_range.0..self.qe_report_range.1]
    }

    /// What the QE report's `report_data[0..32]` must be: SHA-256(attestation key || QE
    /// authentication data), followed by 32 zero bytes.
    pub fn expected_qe_report_data(&self) -> [u8; 64] {
        let mut hasher = openssl::sha::Sha256::new();
        hasher.update(&self.attestation_key);
        hasher.update(&self.qe_auth_data);
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&hasher.finish());
        out
    }
}

/// Whether `bytes` look like a TD quote (version 4, TEE type 0x81), without parsing further.
pub fn looks_like_td_quote(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..2] == [4, 0] && bytes[4..8] == TEE_TYPE_TDX.to_le_bytes()
}
