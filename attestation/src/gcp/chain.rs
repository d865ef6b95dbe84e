//! The AK certificate's path: leaf <- intermediate CA <- trusted root, built from the signature
//! checks and names of `snp::certs` (memoized per process), with what Google's shape adds: the
//! intermediate must be a CA, and the leaf never hangs directly from a root.

use super::instance::profile;
use super::GcpError;
use crate::snp::certs::{common_name, signed_by};
use crate::snp::TrustedRoot;
use openssl::asn1::Asn1Time;
use openssl::x509::X509;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::KeyUsage;
use x509_cert::Certificate;

/// A certificate that may have issued the AK certificate.
pub(crate) struct Candidate<'a> {
    /// "pinned intermediate" or "intermediate carried in the evidence".
    pub which: &'static str,
    pub cert: &'a X509,
    pub der: &'a [u8],
}

/// Finds the trusted root the leaf hangs from through one of `candidates`.
///
/// Every candidate whose key signed the leaf is tried; the first that leads to a root wins, else
/// the first such candidate's failure is reported (it is the one the leaf names by signature).
pub(crate) fn anchor<'r>(
    leaf: &X509,
    leaf_subject: &str,
    candidates: &[Candidate<'_>],
    roots: &'r [TrustedRoot],
    at: &Asn1Time,
) -> Result<&'r TrustedRoot, GcpError> {
    let tried = crate::snp::certs::root_names(roots);
    // A root whose own self-signature fails must not anchor anything.
    let anchors = crate::snp::certs::anchors(roots);
    if anchors.is_empty() {
        return Err(GcpError::NoUsableRoot { tried });
    }
    if let Some(root) = anchors.iter().find(|r| signed_by(leaf, &r.certificate)) {
        return Err(GcpError::SignedByRoot {
            subject: leaf_subject.to_owned(),
            root: root.name.clone(),
        });
    }
    let mut first_error = None;
    for candidate in candidates.iter().filter(|c| signed_by(leaf, c.cert)) {
        match through(candidate, &anchors, &tried, at) {
            Ok(root) => return Ok(root),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| GcpError::UnknownIssuer {
        subject: leaf_subject.to_owned(),
        issuer: issuer_common_name(leaf),
        tried: candidates.len(),
    }))
}

/// The root that signed `candidate`, once the candidate is shown to be a CA valid at `at`.
fn through<'r>(
    candidate: &Candidate<'_>,
    anchors: &[&'r TrustedRoot],
    tried: &str,
    at: &Asn1Time,
) -> Result<&'r TrustedRoot, GcpError> {
    let subject = common_name(candidate.cert);
    let parsed = Certificate::from_der(candidate.der).map_err(|e| GcpError::Decode {
        which: candidate.which.to_owned(),
        reason: e.to_string(),
    })?;
    let profile = profile(&parsed, candidate.which, &subject)?;
    if !profile.is_ca {
        return Err(GcpError::IntermediateNotCa {
            which: candidate.which,
            subject,
            reason: "basicConstraints does not say CA:TRUE",
        });
    }
    if !profile.allows(KeyUsage::key_cert_sign) {
        return Err(GcpError::IntermediateNotCa {
            which: candidate.which,
            subject,
            reason: "keyUsage lacks keyCertSign",
        });
    }
    let root = anchors
        .iter()
        .copied()
        .find(|root| signed_by(candidate.cert, &root.certificate))
        .ok_or_else(|| GcpError::UntrustedIntermediate {
            which: candidate.which,
            subject,
            tried: tried.to_owned(),
        })?;
    validity("root", &root.certificate, at)?;
    validity("intermediate", candidate.cert, at)?;
    Ok(root)
}

/// Whether `cert` is valid at `at` (`pki::check_validity`).
pub(crate) fn validity(which: &'static str, cert: &X509, at: &Asn1Time) -> Result<(), GcpError> {
    crate::pki::check_validity(which, cert, at).map_err(|e| match e {
        crate::pki::ValidityError::NotValid(e) => GcpError::Expired(e),
        crate::pki::ValidityError::Crypto(e) => e.into(),
    })
}

fn issuer_common_name(cert: &X509) -> String {
    cert.issuer_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .unwrap_or_else(|| "(no common name)".into())
}
