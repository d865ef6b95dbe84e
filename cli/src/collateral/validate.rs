//! What each kind of collateral must parse as before it is cached (and again when it is read
//! back or imported), and the dates that decide how long it stays current. Parsing is not
//! trusting: signatures and chains are checked by `verify` against the pinned roots.

use super::cache::Kind;
use cvm_attestation::snp::certs::{parse_certificate, parse_pem_chain};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::x509::{X509Crl, X509};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The dates of a valid document, and the signed JSON body of an Intel one.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub next_update: Option<i64>,
    pub not_after: Option<i64>,
    pub signed: Option<SignedBody>,
}

/// A TCB info or QE identity body exactly as signed, and its hex signature.
#[derive(Debug, Clone)]
pub struct SignedBody {
    pub body: String,
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("not a certificate: {0}")]
    Certificate(String),
    #[error("not a PEM certificate chain: {0}")]
    Chain(String),
    #[error("not a CRL (DER, PEM or hex)")]
    Crl,
    #[error("a CRL without nextUpdate")]
    CrlNextUpdate,
    #[error("not Intel's JSON response: {0}")]
    Json(String),
    #[error("no issuer chain")]
    NoIssuerChain,
    #[error("{0}")]
    Time(String),
}

/// Checks that `body` (and the issuer chain) is what `kind` says.
pub fn validate(kind: Kind, body: &[u8], chain: Option<&str>) -> Result<Parsed, ValidateError> {
    match kind {
        Kind::AmdVcek => {
            let cert =
                parse_certificate(body).map_err(|e| ValidateError::Certificate(e.to_string()))?;
            Ok(Parsed {
                not_after: Some(unix(cert.not_after())?),
                ..Parsed::default()
            })
        }
        Kind::AmdCertChain | Kind::AmdVlekCertChain => Ok(Parsed {
            not_after: chain_expiry(body)?,
            ..Parsed::default()
        }),
        Kind::AmdCrl | Kind::AmdVlekCrl | Kind::IntelRootCaCrl => crl_dates(body),
        Kind::IntelPckCrl => {
            let parsed = crl_dates(body)?;
            issuer_chain(chain)?;
            Ok(parsed)
        }
        Kind::IntelTcbInfo | Kind::IntelQeIdentity => {
            let field = if kind == Kind::IntelTcbInfo {
                "tcbInfo"
            } else {
                "enclaveIdentity"
            };
            let signed = signed_body(body, field)?;
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Dates {
                next_update: String,
            }
            let dates: Dates = serde_json::from_str(&signed.body)
                .map_err(|e| ValidateError::Json(format!("{field}: {e}")))?;
            let next_update = cvm_attestation::tdx::collateral::parse_time(&dates.next_update)
                .ok_or_else(|| {
                    ValidateError::Json(format!("nextUpdate {:?} is not a time", dates.next_update))
                })?;
            Ok(Parsed {
                next_update: Some(next_update),
                not_after: issuer_chain(chain)?,
                signed: Some(signed),
            })
        }
    }
}

/// `{"<field>": {...}, "signature": "<hex>"}`, keeping the body's exact bytes.
fn signed_body(body: &[u8], field: &str) -> Result<SignedBody, ValidateError> {
    let map: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| ValidateError::Json(e.to_string()))?;
    let raw = map
        .get(field)
        .ok_or_else(|| ValidateError::Json(format!("no {field:?}")))?;
    let signature: String = map
        .get("signature")
        .ok_or_else(|| ValidateError::Json("no \"signature\"".into()))
        .and_then(|s| {
            serde_json::from_str(s.get()).map_err(|e| ValidateError::Json(e.to_string()))
        })?;
    if !raw.get().starts_with('{') {
        return Err(ValidateError::Json(format!("{field:?} is not an object")));
    }
    Ok(SignedBody {
        body: raw.get().to_owned(),
        signature,
    })
}

fn issuer_chain(chain: Option<&str>) -> Result<Option<i64>, ValidateError> {
    chain_expiry(chain.ok_or(ValidateError::NoIssuerChain)?.as_bytes())
}

fn chain_expiry(pem: &[u8]) -> Result<Option<i64>, ValidateError> {
    let certs: Vec<X509> = parse_pem_chain(pem).map_err(|e| ValidateError::Chain(e.to_string()))?;
    if certs.is_empty() {
        return Err(ValidateError::Chain("no certificate".into()));
    }
    let mut earliest = None;
    for cert in &certs {
        let at = unix(cert.not_after())?;
        earliest = Some(earliest.map_or(at, |e: i64| e.min(at)));
    }
    Ok(earliest)
}

fn crl_dates(der: &[u8]) -> Result<Parsed, ValidateError> {
    let crl = X509Crl::from_der(der).map_err(|_| ValidateError::Crl)?;
    let next = crl.next_update().ok_or(ValidateError::CrlNextUpdate)?;
    Ok(Parsed {
        next_update: Some(unix(next)?),
        ..Parsed::default()
    })
}

/// A CRL as served (DER, PEM, or hex text as some PCCS versions send it) as DER.
pub fn crl_to_der(body: &[u8]) -> Result<Vec<u8>, ValidateError> {
    if body.starts_with(b"-----BEGIN") {
        return X509Crl::from_pem(body)
            .and_then(|crl| crl.to_der())
            .map_err(|_| ValidateError::Crl);
    }
    let text = std::str::from_utf8(body).map(str::trim).unwrap_or("");
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(text).map_err(|_| ValidateError::Crl);
    }
    Ok(body.to_vec())
}

/// Unix seconds of an ASN.1 time.
pub fn unix(time: &Asn1TimeRef) -> Result<i64, ValidateError> {
    let epoch = Asn1Time::from_unix(0).map_err(|e| ValidateError::Time(e.to_string()))?;
    let diff = epoch
        .diff(time)
        .map_err(|e| ValidateError::Time(e.to_string()))?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}
