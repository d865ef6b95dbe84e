//! DCAP collateral: Intel's TCB info (v3, `id: "TDX"`) and QE identity (v2, `id: "TD_QE"`) JSON
//! with their ECDSA P-256 signatures by the TCB Signing certificate, that certificate's issuer
//! chain, and the CRLs. The shape is the one of Phala's `dcap-qvl` collateral files (and of the
//! PCS responses it is assembled from): JSON bodies as strings (signatures cover those exact
//! bytes), signatures as hex `r || s`, CRLs as hex DER, chains as PEM.

use super::x509::{IntelCert, IntelCrl};
use crate::memo::Memo;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Largest collateral document accepted (the real one is 16 KB).
pub const MAX_COLLATERAL_BYTES: usize = 1 << 20;
const MAX_TCB_LEVELS: usize = 256;

/// Collateral as carried in evidence or supplied by the verifier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxCollateral {
    /// PEM: the CA that issued the PCK CRL (PCK Platform or Processor CA), then the root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pck_crl_issuer_chain: String,
    /// Hex DER CRL of the root CA (revokes intermediates and TCB Signing certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_ca_crl: Option<String>,
    /// Hex DER CRL of the PCK CA (revokes PCK certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pck_crl: Option<String>,
    /// PEM: TCB Signing certificate, then the root.
    pub tcb_info_issuer_chain: String,
    /// The TCB info JSON body, exactly as signed.
    pub tcb_info: String,
    /// Hex ECDSA P-256 `r || s` over `tcb_info`.
    pub tcb_info_signature: String,
    pub qe_identity_issuer_chain: String,
    pub qe_identity: String,
    pub qe_identity_signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollateralError {
    #[error("collateral is {0} bytes, more than the limit of {MAX_COLLATERAL_BYTES}")]
    TooLarge(usize),
    #[error("collateral JSON: {0}")]
    Json(String),
    #[error("{what}: {problem}")]
    Field { what: &'static str, problem: String },
}

/// Why a CRL in the collateral could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CrlError {
    #[error("not hex")]
    NotHex,
    #[error("not a DER CRL: {0}")]
    NotDer(super::x509::X509Error),
}

/// Why the TCB Signing key's signature over a collateral body could not be checked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodySignatureError {
    #[error("the issuer chain is empty: no TCB Signing certificate")]
    NoSigner,
    #[error("signature is not hex")]
    NotHex,
    #[error("the TCB Signing certificate's key is not a P-256 key")]
    NotP256,
    #[error(transparent)]
    Crypto(#[from] super::crypto::CryptoError),
}

/// A TCB info or QE identity value that is not hex of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {text:?} is not {len} bytes of hex")]
pub struct HexFieldError {
    pub what: String,
    pub text: String,
    pub len: usize,
}

fn field(what: &'static str, problem: impl Into<String>) -> CollateralError {
    CollateralError::Field {
        what,
        problem: problem.into(),
    }
}

impl TdxCollateral {
    pub fn from_json(bytes: &[u8]) -> Result<Self, CollateralError> {
        if bytes.len() > MAX_COLLATERAL_BYTES {
            return Err(CollateralError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| CollateralError::Json(e.to_string()))
    }
}

/// One TCB component SVN.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TcbComponent {
    pub svn: u16,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlatformTcb {
    pub sgxtcbcomponents: Vec<TcbComponent>,
    pub pcesvn: u16,
    #[serde(default)]
    pub tdxtcbcomponents: Option<Vec<TcbComponent>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbLevel {
    pub tcb: PlatformTcb,
    pub tcb_date: String,
    pub tcb_status: super::tcb::TcbStatus,
    #[serde(default, rename = "advisoryIDs")]
    pub advisory_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IsvSvn {
    pub isvsvn: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IsvTcbLevel {
    pub tcb: IsvSvn,
    pub tcb_date: String,
    pub tcb_status: super::tcb::TcbStatus,
    #[serde(default, rename = "advisoryIDs")]
    pub advisory_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModule {
    pub mrsigner: String,
    pub attributes: String,
    pub attributes_mask: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModuleIdentity {
    pub id: String,
    pub mrsigner: String,
    pub attributes: String,
    pub attributes_mask: String,
    pub tcb_levels: Vec<IsvTcbLevel>,
}

/// TCB info, version 3 (TDX).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbInfo {
    pub id: String,
    pub version: u32,
    pub issue_date: String,
    pub next_update: String,
    pub fmspc: String,
    pub pce_id: String,
    #[serde(default)]
    pub tcb_evaluation_data_number: Option<u32>,
    #[serde(default)]
    pub tdx_module: Option<TdxModule>,
    #[serde(default)]
    pub tdx_module_identities: Vec<TdxModuleIdentity>,
    pub tcb_levels: Vec<TcbLevel>,
}

/// QE identity, version 2 (`TD_QE`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QeIdentity {
    pub id: String,
    pub version: u32,
    pub issue_date: String,
    pub next_update: String,
    #[serde(default)]
    pub tcb_evaluation_data_number: Option<u32>,
    pub miscselect: String,
    pub miscselect_mask: String,
    pub attributes: String,
    pub attributes_mask: String,
    pub mrsigner: String,
    pub isvprodid: u16,
    pub tcb_levels: Vec<IsvTcbLevel>,
}

/// A validity window in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub issued: i64,
    pub next_update: i64,
}

impl Window {
    pub fn contains(&self, at: i64) -> bool {
        self.issued <= at && at <= self.next_update
    }
}

/// Collateral parsed, with what does not depend on the verification time or the roots already
/// checked (the signatures by the TCB Signing key). Cached per process by content.
pub struct ParsedCollateral {
    pub tcb_info: TcbInfo,
    pub tcb_info_window: Window,
    pub qe_identity: QeIdentity,
    pub qe_identity_window: Window,
    /// TCB Signing certificate and anything after it in its chain.
    pub tcb_info_chain: Vec<Arc<IntelCert>>,
    pub qe_identity_chain: Vec<Arc<IntelCert>>,
    pub pck_crl_chain: Vec<Arc<IntelCert>>,
    /// Whether the TCB Signing key's signature over each body verifies (Err: cannot be checked).
    pub tcb_info_signature: Result<bool, BodySignatureError>,
    pub qe_identity_signature: Result<bool, BodySignatureError>,
    pub root_ca_crl: Option<Result<Crl, CrlError>>,
    pub pck_crl: Option<Result<Crl, CrlError>>,
}

/// A CRL of the collateral, read.
pub type Crl = IntelCrl;

/// A CRL's DER and its SHA-256, or why the hex did not decode.
type CrlDer = Option<Result<(Vec<u8>, [u8; 32]), CrlError>>;

/// Digests computed for the memo key and reused by the checks (each body is hashed once).
struct Digests {
    tcb_info: [u8; 32],
    qe_identity: [u8; 32],
    root_ca_crl: CrlDer,
    pck_crl: CrlDer,
}

/// Parses `collateral`, remembering the result per process by the SHA-256 of its fields' digests
/// (the bodies' digests are the ones their signatures are checked over, the CRLs' the ones
/// that name them).
pub fn parse(collateral: &TdxCollateral) -> Result<Arc<ParsedCollateral>, CollateralError> {
    static MEMO: Memo<[u8; 32], Arc<ParsedCollateral>> = Memo::new(64);
    let sha256 = openssl::sha::sha256;
    let c = collateral;
    let digests = Digests {
        tcb_info: sha256(c.tcb_info.as_bytes()),
        qe_identity: sha256(c.qe_identity.as_bytes()),
        root_ca_crl: crl_der(&c.root_ca_crl),
        pck_crl: crl_der(&c.pck_crl),
    };
    let tcb_info_chain = sha256(c.tcb_info_issuer_chain.as_bytes());
    let qe_identity_chain = if c.qe_identity_issuer_chain == c.tcb_info_issuer_chain {
        tcb_info_chain
    } else {
        sha256(c.qe_identity_issuer_chain.as_bytes())
    };
    let crl_part = |crl: &CrlDer, text: &Option<String>| match (crl, text) {
        (Some(Ok((_, id))), _) => [&[1u8][..], id].concat(),
        (Some(Err(_)), Some(text)) => [&[2u8][..], &sha256(text.as_bytes())].concat(),
        _ => vec![0u8],
    };
    let mut hasher = openssl::sha::Sha256::new();
    for part in [
        &sha256(c.pck_crl_issuer_chain.as_bytes())[..],
        &crl_part(&digests.root_ca_crl, &c.root_ca_crl),
        &crl_part(&digests.pck_crl, &c.pck_crl),
        &tcb_info_chain,
        &digests.tcb_info,
        &sha256(c.tcb_info_signature.as_bytes()),
        &qe_identity_chain,
        &digests.qe_identity,
        &sha256(c.qe_identity_signature.as_bytes()),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    MEMO.get_or_try(hasher.finish(), || {
        parse_uncached(collateral, digests).map(Arc::new)
    })
}

fn chain(what: &'static str, pem: &str) -> Result<Vec<Arc<IntelCert>>, CollateralError> {
    if pem.trim().is_empty() {
        return Ok(Vec::new());
    }
    super::certs::parse_pem_certs(pem.as_bytes()).map_err(|e| field(what, e.to_string()))
}

fn crl_der(hex_der: &Option<String>) -> CrlDer {
    let text = hex_der.as_deref()?;
    Some(decode_hex(text.trim()).ok_or(CrlError::NotHex).map(|der| {
        let id = openssl::sha::sha256(&der);
        (der, id)
    }))
}

/// Hex to bytes in one pass (the `hex` crate's iterator costs six times as much per byte, a
/// visible share of a cold verification for the 5 KB PCK CRL).
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let pairs = text.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 2);
    for pair in pairs {
        out.push((nibble(pair[0])? << 4) | nibble(pair[1])?);
    }
    Some(out)
}

fn crl(der: CrlDer) -> Option<Result<Crl, CrlError>> {
    Some(der?.and_then(|(der, id)| IntelCrl::decode(&der, id).map_err(CrlError::NotDer)))
}

fn parse_uncached(c: &TdxCollateral, d: Digests) -> Result<ParsedCollateral, CollateralError> {
    let tcb_info: TcbInfo = serde_json::from_str(&c.tcb_info)
        .map_err(|e| field("tcb_info", format!("not TCB info JSON: {e}")))?;
    if tcb_info.tcb_levels.len() > MAX_TCB_LEVELS
        || tcb_info
            .tdx_module_identities
            .iter()
            .any(|i| i.tcb_levels.len() > MAX_TCB_LEVELS)
    {
        return Err(field("tcb_info", "more than 256 TCB levels"));
    }
    let qe_identity: QeIdentity = serde_json::from_str(&c.qe_identity)
        .map_err(|e| field("qe_identity", format!("not QE identity JSON: {e}")))?;
    if qe_identity.tcb_levels.len() > MAX_TCB_LEVELS {
        return Err(field("qe_identity", "more than 256 TCB levels"));
    }
    let window = |what, issued: &str, next: &str| -> Result<Window, CollateralError> {
        Ok(Window {
            issued: parse_time(issued)
                .ok_or_else(|| field(what, format!("issueDate {issued:?} is not a UTC time")))?,
            next_update: parse_time(next)
                .ok_or_else(|| field(what, format!("nextUpdate {next:?} is not a UTC time")))?,
        })
    };
    let tcb_info_window = window("tcb_info", &tcb_info.issue_date, &tcb_info.next_update)?;
    let qe_identity_window = window(
        "qe_identity",
        &qe_identity.issue_date,
        &qe_identity.next_update,
    )?;
    let tcb_info_chain = chain("tcb_info_issuer_chain", &c.tcb_info_issuer_chain)?;
    // Intel signs both with the same certificate: decoding a certificate costs OpenSSL 3 about
    // as much as checking a signature, so the same PEM text is decoded once.
    let qe_identity_chain = if c.qe_identity_issuer_chain == c.tcb_info_issuer_chain {
        tcb_info_chain.clone()
    } else {
        chain("qe_identity_issuer_chain", &c.qe_identity_issuer_chain)?
    };
    let pck_crl_chain = chain("pck_crl_issuer_chain", &c.pck_crl_issuer_chain)?;
    let tcb_info_signature =
        body_signature(tcb_info_chain.first(), &d.tcb_info, &c.tcb_info_signature);
    let qe_identity_signature = body_signature(
        qe_identity_chain.first(),
        &d.qe_identity,
        &c.qe_identity_signature,
    );
    Ok(ParsedCollateral {
        tcb_info,
        tcb_info_window,
        qe_identity,
        qe_identity_window,
        tcb_info_chain,
        qe_identity_chain,
        pck_crl_chain,
        tcb_info_signature,
        qe_identity_signature,
        root_ca_crl: crl(d.root_ca_crl),
        pck_crl: crl(d.pck_crl),
    })
}

/// The TCB Signing key's signature over a body, given the body's SHA-256.
fn body_signature(
    signer: Option<&Arc<IntelCert>>,
    body_digest: &[u8; 32],
    signature_hex: &str,
) -> Result<bool, BodySignatureError> {
    let signer = signer.ok_or(BodySignatureError::NoSigner)?;
    let signature = hex::decode(signature_hex.trim()).map_err(|_| BodySignatureError::NotHex)?;
    let key = signer.key().ok_or(BodySignatureError::NotP256)?;
    Ok(super::crypto::verify_p256_digest_ec(
        key,
        body_digest,
        &signature,
    )?)
}

/// Seconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
pub fn parse_time(text: &str) -> Option<i64> {
    let body = text.strip_suffix('Z')?;
    let body = body.split('.').next()?;
    let b = body.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = body.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Hex of a fixed length (TCB info and QE identity values).
pub fn hex_field<const N: usize>(what: &str, text: &str) -> Result<[u8; N], HexFieldError> {
    hex::decode(text)
        .ok()
        .and_then(|v| <[u8; N]>::try_from(v).ok())
        .ok_or_else(|| HexFieldError {
            what: what.to_owned(),
            text: text.to_owned(),
            len: N,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hex_as_the_hex_crate_does() {
        for text in [
            "",
            "00",
            "0aFf",
            "deadBEEF01",
            "0",
            "0g",
            "zz",
            "0a f",
            "é0",
        ] {
            assert_eq!(decode_hex(text), hex::decode(text).ok(), "{text:?}");
        }
    }

    #[test]
    fn parses_utc_times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2025-06-01T00:00:00Z"), Some(1_748_736_000));
        assert_eq!(parse_time("2025-07-01T00:00:00.123Z"), Some(1_751_328_000));
        assert_eq!(parse_time("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        for bad in [
            "2025-06-01T00:00:00",
            "2025-13-01T00:00:00Z",
            "2025-06-01 00:00:00Z",
            "",
            "Z",
            "２025-06-01T00:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
