//! The certificate chain a document carries: `cabundle` is root first, then intermediates, and
//! `certificate` (the leaf) signs the document. The root is never taken from the document:
//! cabundle[0] must be byte for byte one of the roots the caller trusts.

use super::NitroError;
use crate::snp::certs::signed_by;
use crate::snp::TrustedRoot;
use openssl::asn1::Asn1Time;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509StoreContext, X509};

/// A chain that checked out.
pub(super) struct Chain<'r> {
    pub root: &'r TrustedRoot,
    pub leaf: X509,
    /// Subjects, leaf first, root last.
    pub subjects: Vec<String>,
}

/// Reads one certificate of the document, which must be exactly one DER X.509 certificate.
fn certificate(which: &str, der: &[u8]) -> Result<X509, NitroError> {
    let invalid = |reason: String| NitroError::Certificate {
        which: which.to_owned(),
        reason,
    };
    let cert = X509::from_der(der).map_err(|e| invalid(e.to_string()))?;
    // OpenSSL keeps the encoding it parsed: a shorter one means bytes trailed the certificate.
    if cert.to_der().map_err(|e| invalid(e.to_string()))? != der {
        return Err(invalid("bytes follow the DER certificate".into()));
    }
    Ok(cert)
}

/// The subject as one line, e.g. "C=US, O=Amazon, OU=AWS, CN=aws.nitro-enclaves".
pub(super) fn subject(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .map(|entry| {
            let name = entry.object().nid().short_name().unwrap_or("?");
            format!(
                "{name}={}",
                String::from_utf8_lossy(entry.data().as_slice())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Verifies leaf <- cabundle[n-1] <- ... <- cabundle[0] == a trusted root, every certificate
/// valid at `at_unix`, then lets OpenSSL's path validation check the X.509 constraints (basic
/// constraints, key usage, path length, names) the explicit steps do not.
pub(super) fn verify<'r>(
    leaf_der: &[u8],
    cabundle: &[Vec<u8>],
    roots: &'r [TrustedRoot],
    at_unix: i64,
) -> Result<Chain<'r>, NitroError> {
    let bundle = cabundle
        .iter()
        .enumerate()
        .map(|(i, der)| certificate(&format!("cabundle[{i}]"), der))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = certificate("signing certificate", leaf_der)?;
    let (first, intermediates) = bundle.split_first().ok_or(NitroError::CabundleSize(0))?;
    let root = trusted_root(first, roots)?;
    for (i, pair) in bundle.windows(2).enumerate() {
        if !signed_by(&pair[1], &pair[0]) {
            return Err(NitroError::ChainBroken {
                index: i + 1,
                subject: subject(&pair[1]),
                issuer: subject(&pair[0]),
            });
        }
    }
    let last = bundle.last().unwrap_or(first);
    if !signed_by(&leaf, last) {
        return Err(NitroError::LeafNotSignedByChain {
            subject: subject(&leaf),
            issuer: subject(last),
        });
    }
    let at = Asn1Time::from_unix(at_unix).map_err(crypto)?;
    // Leaf first: it lives hours, the others years, so it is the one that explains a failure.
    validity("signing", &leaf, &at)?;
    for (i, cert) in bundle.iter().enumerate().rev() {
        validity(&format!("cabundle[{i}]"), cert, &at)?;
    }
    path_constraints(&root.certificate, intermediates, &leaf, at_unix)?;
    let subjects = std::iter::once(&leaf)
        .chain(bundle.iter().rev())
        .map(subject)
        .collect();
    Ok(Chain {
        root,
        leaf,
        subjects,
    })
}

fn crypto(e: openssl::error::ErrorStack) -> NitroError {
    NitroError::Crypto(e.to_string())
}

/// The root the caller trusts whose DER is exactly `claimed`, and which is properly self-signed.
fn trusted_root<'r>(
    claimed: &X509,
    roots: &'r [TrustedRoot],
) -> Result<&'r TrustedRoot, NitroError> {
    let claimed_der = claimed.to_der().map_err(crypto)?;
    let untrusted = || NitroError::UntrustedRoot {
        subject: subject(claimed),
        tried: roots
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    };
    roots
        .iter()
        .find(|root| {
            root.certificate
                .to_der()
                .is_ok_and(|der| der == claimed_der)
        })
        .filter(|root| signed_by(&root.certificate, &root.certificate))
        .ok_or_else(untrusted)
}

fn validity(which: &str, cert: &X509, at: &Asn1Time) -> Result<(), NitroError> {
    crate::pki::check_validity(&format!("{which} certificate"), cert, at).map_err(|e| match e {
        crate::pki::ValidityError::NotValid(e) => NitroError::CertificateNotValid(e),
        crate::pki::ValidityError::Crypto(e) => crypto(e),
    })
}

/// RFC 5280 path validation by OpenSSL with `root` as the only trust anchor, at `at_unix`.
fn path_constraints(
    root: &X509,
    intermediates: &[X509],
    leaf: &X509,
    at_unix: i64,
) -> Result<(), NitroError> {
    let mut store = X509StoreBuilder::new().map_err(crypto)?;
    store.add_cert(root.clone()).map_err(crypto)?;
    let mut param = X509VerifyParam::new().map_err(crypto)?;
    param.set_time(at_unix as _);
    store.set_param(&param).map_err(crypto)?;
    let store = store.build();
    let mut untrusted = Stack::new().map_err(crypto)?;
    for cert in intermediates {
        untrusted.push(cert.clone()).map_err(crypto)?;
    }
    let mut context = X509StoreContext::new().map_err(crypto)?;
    let outcome = context
        .init(&store, leaf, &untrusted, |ctx| {
            let ok = ctx.verify_cert()?;
            Ok((!ok).then(|| ctx.error().error_string().to_owned()))
        })
        .map_err(crypto)?;
    match outcome {
        None => Ok(()),
        Some(reason) => Err(NitroError::ChainConstraints(reason)),
    }
}
