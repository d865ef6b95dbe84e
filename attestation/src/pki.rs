//! X.509 rules every chain check shares (AMD, Intel, Google AK CA, AWS Nitro): validity windows
//! and how a certificate is named in reports.

use openssl::asn1::Asn1TimeRef;
use openssl::error::ErrorStack;
use openssl::x509::X509Ref;
use std::cmp::Ordering;

/// A certificate used outside its validity period (both bounds inclusive, as RFC 5280 has them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{which} ({subject}) is not valid at {at}: valid from {not_before} to {not_after}")]
pub struct NotValid {
    /// Its role in the chain, e.g. `VCEK/VLEK`, `AK certificate`, `signing`.
    pub which: String,
    pub subject: String,
    pub at: String,
    pub not_before: String,
    pub not_after: String,
}

/// Why validity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ValidityError {
    #[error(transparent)]
    NotValid(#[from] NotValid),
    #[error("openssl: {0}")]
    Crypto(#[from] ErrorStack),
}

/// Whether `cert` is valid at `at`.
pub fn check_validity(which: &str, cert: &X509Ref, at: &Asn1TimeRef) -> Result<(), ValidityError> {
    let before = cert.not_before().compare(at)?;
    let after = cert.not_after().compare(at)?;
    if before == Ordering::Greater || after == Ordering::Less {
        return Err(NotValid {
            which: which.to_owned(),
            subject: common_name(cert),
            at: at.to_string(),
            not_before: cert.not_before().to_string(),
            not_after: cert.not_after().to_string(),
        }
        .into());
    }
    Ok(())
}

/// [`check_validity`] for a certificate read without OpenSSL, its bounds and `at` in Unix
/// seconds (both bounds inclusive).
pub fn check_validity_unix(
    which: &str,
    subject: &str,
    (not_before, not_after): (i64, i64),
    at: i64,
) -> Result<(), NotValid> {
    if not_before <= at && at <= not_after {
        return Ok(());
    }
    Err(NotValid {
        which: which.to_owned(),
        subject: subject.to_owned(),
        at: time_text(at),
        not_before: time_text(not_before),
        not_after: time_text(not_after),
    })
}

/// A Unix time as OpenSSL prints certificate times ("May 21 10:45:10 2018 GMT").
pub fn time_text(unix: i64) -> String {
    openssl::asn1::Asn1Time::from_unix(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// The subject's common name, for reports.
pub fn common_name(cert: &X509Ref) -> String {
    cert.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .unwrap_or_else(|| "(no common name)".into())
}
