//! The Intel TDX DCAP quote, versions 4 and 5 (Intel TDX DCAP Quote Generation Library and Quote
//! Verification Library, "Quote Format"): a 48-byte header; in v4 the 584-byte TD report body, in
//! v5 a body descriptor (body type u16, body size u32) and the body it announces (type 2: the TD
//! report 1.0 body, 584 bytes; type 3: the TD report 1.5 body, 648 bytes: the 1.0 body, then
//! TEE_TCB_SVN2 and MRSERVICETD); then the signature data: the ECDSA P-256 signature over
//! everything before it (header || body, or header || descriptor || body) by the attestation key,
//! the attestation key, and certification data of type 6 holding the Quoting Enclave's report, its
//! signature by the PCK key, the QE authentication data, and certification data of type 5 (the
//! PCK certificate chain, PEM). All integers little-endian; signatures and keys big-endian.

use super::body::{Td15Fields, TdReportBody, BODY15_LEN, BODY_LEN};
use super::reader::LeReader;
use crate::tpm::wire::WireError;

/// Quote versions read: 4 (TDX 1.0 quotes) and 5 (with a body descriptor; what current DCAP
/// stacks produce).
pub const QUOTE_VERSION_4: u16 = 4;
pub const QUOTE_VERSION_5: u16 = 5;
/// TEE type of a TDX quote (0x00 is SGX).
pub const TEE_TYPE_TDX: u32 = 0x81;
/// ECDSA-256-with-P-256 attestation key.
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
pub const HEADER_LEN: usize = 48;
/// Body type and body size in a v5 quote.
pub const BODY_DESCRIPTOR_LEN: usize = 6;
/// v5 body types (Intel's BODY_SGX_ENCLAVE_REPORT_TYPE = 1 is not a TD report).
pub const BODY_TYPE_TD_REPORT10: u16 = 2;
pub const BODY_TYPE_TD_REPORT15: u16 = 3;
/// Header and body of a v4 quote: the bytes its signature covers.
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
    #[error("TD quote version {0} is not supported (4 and 5 are)")]
    Version(u16),
    #[error("TD quote TEE type {0:#x} is not TDX (0x81)")]
    TeeType(u32),
    #[error("TD quote attestation key type {0} is not ECDSA P-256 (2)")]
    KeyType(u16),
    #[error(
        "TD quote v5 body type {0} is not a TD report body (2 = TD report 1.0, 3 = TD report 1.5; \
         1 is an SGX enclave report)"
    )]
    BodyType(u16),
    #[error(
        "TD quote v5 body type {body_type} ({}) must be {expected} bytes, but its descriptor says {declared}",
        body_type_name(*.body_type)
    )]
    BodySize {
        body_type: u16,
        declared: u32,
        expected: usize,
    },
    #[error("TD quote certification data type {actual} where {expected} was expected")]
    CertDataType { expected: u16, actual: u16 },
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Intel's name of a v5 body type.
pub fn body_type_name(body_type: u16) -> &'static str {
    match body_type {
        1 => "SGX enclave report",
        BODY_TYPE_TD_REPORT10 => "TD report 1.0",
        BODY_TYPE_TD_REPORT15 => "TD report 1.5",
        _ => "unknown",
    }
}

/// A v5 quote's body descriptor, as read (its size already checked against the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDescriptor {
    pub body_type: u16,
    pub size: u32,
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
    /// The body descriptor of a v5 quote; `None` for v4 (always a TD report 1.0 body).
    pub body_descriptor: Option<BodyDescriptor>,
    /// The TD report 1.0 body (of a 1.5 body, its first 584 bytes).
    pub body: TdReportBody,
    /// TEE_TCB_SVN2 and MRSERVICETD: only in a TD report 1.5 body (v5, body type 3).
    pub td15: Option<Td15Fields>,
    /// Header, descriptor and body: the bytes the attestation key signs.
    signed_len: usize,
    /// ECDSA P-256 `r || s` over the signed bytes, by the attestation key.
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

/// The header, checked: version 4 or 5, ECDSA P-256, TDX.
fn parse_header(r: &mut LeReader) -> Result<QuoteHeader, QuoteError> {
    let version = r.u16("version")?;
    if version != QUOTE_VERSION_4 && version != QUOTE_VERSION_5 {
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
    Ok(QuoteHeader {
        version,
        att_key_type,
        tee_type,
        qe_vendor_id: r.array("qe_vendor_id")?,
        user_data: r.array("user_data")?,
    })
}

/// The body after the header: v4, the 1.0 body; v5, the descriptor, whose size must be the one
/// of its type, and the body it announces.
type ParsedBody = (Option<BodyDescriptor>, TdReportBody, Option<Td15Fields>);

fn parse_body(r: &mut LeReader, version: u16) -> Result<ParsedBody, QuoteError> {
    if version == QUOTE_VERSION_4 {
        let body = TdReportBody::parse(r.take("body", BODY_LEN)?)?;
        return Ok((None, body, None));
    }
    let descriptor = BodyDescriptor {
        body_type: r.u16("body_type")?,
        size: r.u32("body_size")?,
    };
    let expected = match descriptor.body_type {
        BODY_TYPE_TD_REPORT10 => BODY_LEN,
        BODY_TYPE_TD_REPORT15 => BODY15_LEN,
        other => return Err(QuoteError::BodyType(other)),
    };
    if usize::try_from(descriptor.size).ok() != Some(expected) {
        return Err(QuoteError::BodySize {
            body_type: descriptor.body_type,
            declared: descriptor.size,
            expected,
        });
    }
    let bytes = r.take("body", expected)?;
    let (base, extra) = bytes.split_at(BODY_LEN);
    let body = TdReportBody::parse(base)?;
    let td15 = (!extra.is_empty())
        .then(|| Td15Fields::parse(extra))
        .transpose()?;
    Ok((Some(descriptor), body, td15))
}

/// What the signature data holds, with the QE report's offset inside it.
struct SignatureData {
    signature: [u8; 64],
    attestation_key: [u8; 64],
    qe_report_offset: usize,
    qe_report: QeReport,
    qe_report_signature: [u8; 64],
    qe_auth_data: Vec<u8>,
    pck_chain_pem: Vec<u8>,
}

/// The signature data: signature, key, certification data type 6 (QE report, its signature,
/// QE auth data, certification data type 5: the PCK chain). Nothing may follow either level.
fn parse_signature_data(sig_data: &[u8]) -> Result<SignatureData, QuoteError> {
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
    let qe_report_offset = s.offset();
    let outer = s.sized("certification_data", outer_len, MAX_QUOTE_BYTES)?;
    s.finish()?;

    let mut q = LeReader::new("QE report certification data", outer);
    let qe_report = QeReport::parse(q.take("qe_report", QE_REPORT_LEN)?)?;
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
    Ok(SignatureData {
        signature,
        attestation_key,
        qe_report_offset,
        qe_report,
        qe_report_signature,
        qe_auth_data,
        pck_chain_pem,
    })
}

impl TdQuote {
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.len() > MAX_QUOTE_BYTES {
            return Err(QuoteError::TooLarge(bytes.len()));
        }
        let mut r = LeReader::new("TD quote", bytes);
        let header = parse_header(&mut r)?;
        let (body_descriptor, body, td15) = parse_body(&mut r, header.version)?;
        let signed_len = r.offset();
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
        let sig = parse_signature_data(sig_data)?;
        let qe_start = sig_start + sig.qe_report_offset;
        Ok(Self {
            raw: bytes.to_vec(),
            header,
            body_descriptor,
            body,
            td15,
            signed_len,
            signature: sig.signature,
            attestation_key: sig.attestation_key,
            qe_report_range: (qe_start, qe_start + QE_REPORT_LEN),
            qe_report: sig.qe_report,
            qe_report_signature: sig.qe_report_signature,
            qe_auth_data: sig.qe_auth_data,
            pck_chain_pem: sig.pck_chain_pem,
        })
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Header || body (v5: header || body descriptor || body): what the attestation key signs.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..self.signed_len]
    }

    /// The v5 body type (2 or 3); `None` for a v4 quote.
    pub fn body_type(&self) -> Option<u16> {
        self.body_descriptor.map(|d| d.body_type)
    }

    /// "TD quote version 4", "TD quote version 5 (body type 3, TD report 1.5, 648 bytes)".
    pub fn describe(&self) -> String {
        match self.body_descriptor {
            None => format!("TD quote version {}", self.header.version),
            Some(d) => format!(
                "TD quote version {} (body type {}, {}, {} bytes)",
                self.header.version,
                d.body_type,
                body_type_name(d.body_type),
                d.size
            ),
        }
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

/// Whether `bytes` look like a TD quote (version 4 or 5, attestation key type 2, TEE type 0x81),
/// without parsing further. An SEV-SNP report never does: its version is a u32, so bytes 2..4
/// are zero.
pub fn looks_like_td_quote(bytes: &[u8]) -> bool {
    bytes.len() >= 8
        && (bytes[0..2] == QUOTE_VERSION_4.to_le_bytes()
            || bytes[0..2] == QUOTE_VERSION_5.to_le_bytes())
        && bytes[2..4] == ATT_KEY_TYPE_ECDSA_P256.to_le_bytes()
        && bytes[4..8] == TEE_TYPE_TDX.to_le_bytes()
}

/// A TD quote given as hex text: surrounding whitespace and a `0x` / `0X` prefix are allowed (as
/// DCAP tools and dstack print quotes). `None` when the text is not hex of a TD quote's shape
/// ([`looks_like_td_quote`]) or longer than a quote may be.
pub fn decode_hex_quote(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.len() > 2 * MAX_QUOTE_BYTES {
        return None;
    }
    hex::decode(digits)
        .ok()
        .filter(|bytes| looks_like_td_quote(bytes))
}
