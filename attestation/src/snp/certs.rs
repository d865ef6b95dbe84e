//! AMD's key hierarchy: ARK (root, pinned here) -> ASK or ASVK (intermediate) -> VCEK or VLEK
//! (signs reports). Only the ARKs are trust anchors; intermediates may come with the evidence and
//! are accepted only when a pinned ARK signed them.

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::x509::X509;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A trust anchor: a named, self-signed ARK.
#[derive(Clone)]
pub struct TrustedRoot {
    pub name: String,
    pub certificate: X509,
    /// True for roots made by tests; reports name them so nobody mistakes them for AMD's.
    pub test_only: bool,
}

impl std::fmt::Debug for TrustedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedRoot")
            .field("name", &self.name)
            .field("test_only", &self.test_only)
            .finish()
    }
}

/// Why a certificate chain does not lead to a trusted root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("certificate is not DER or PEM X.509: {0}")]
    Decode(String),
    #[error(
        "no intermediate (ASK/ASVK) certificate: none in the evidence and none built in for {0}"
    )]
    NoIntermediate(String),
    #[error("{which} ({subject}) is not signed by any trusted ARK ({tried})")]
    UntrustedIntermediate {
        which: &'static str,
        subject: String,
        tried: String,
    },
    #[error("{which} ({subject}) is not signed by the intermediate {issuer}")]
    BadLeafSignature {
        which: &'static str,
        subject: String,
        issuer: String,
    },
    #[error("{which} ({subject}) is not valid at {at}: valid from {not_before} to {not_after}")]
    Expired {
        which: &'static str,
        subject: String,
        at: String,
        not_before: String,
        not_after: String,
    },
    #[error("openssl: {0}")]
    Crypto(String),
}

impl From<openssl::error::ErrorStack> for ChainError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        ChainError::Crypto(e.to_string())
    }
}

/// AMD's ARKs for Milan, Genoa and Turin, as pinned in the `sev` crate.
pub fn amd_roots() -> Vec<TrustedRoot> {
    [
        ("ARK-Milan", sev::certs::snp::builtin::milan::ARK),
        ("ARK-Genoa", sev::certs::snp::builtin::genoa::ARK),
        ("ARK-Turin", sev::certs::snp::builtin::turin::ARK),
    ]
    .into_iter()
    .filter_map(|(name, pem)| {
        Some(TrustedRoot {
            name: name.to_owned(),
            certificate: X509::from_pem(pem).ok()?,
            test_only: false,
        })
    })
    .collect()
}

/// AMD's ASKs built into the `sev` crate, used when the evidence carries no intermediate.
/// Parsed once per process (parsing them cost more than a signature check on every verify).
pub fn amd_builtin_asks() -> Vec<X509> {
    static ASKS: OnceLock<Vec<X509>> = OnceLock::new();
    ASKS.get_or_init(|| {
        [
            sev::certs::snp::builtin::milan::ASK,
            sev::certs::snp::builtin::genoa::ASK,
            sev::certs::snp::builtin::turin::ASK,
        ]
        .into_iter()
        .filter_map(|pem| X509::from_pem(pem).ok())
        .collect()
    })
    .clone()
}

/// Whether `cert` carries a valid signature by `issuer`'s key.
///
/// The answer depends only on the two certificates' bytes, so it is remembered per process by
/// the SHA-256 of both DER encodings: a verifier that sees the same chain again (the same VM, or
/// the pinned ARK's self-signature) does not repeat RSA-4096 or P-384 checks. Validity dates are
/// not part of this and are checked on every call.
pub(crate) fn signed_by(cert: &X509, issuer: &X509) -> bool {
    type Memo = Mutex<HashMap<(Vec<u8>, Vec<u8>), bool>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    const MAX_ENTRIES: usize = 1024;
    let check = || {
        issuer
            .public_key()
            .is_ok_and(|key| cert.verify(&key).unwrap_or(false))
    };
    let (Ok(cert_digest), Ok(issuer_digest)) = (
        cert.digest(MessageDigest::sha256()),
        issuer.digest(MessageDigest::sha256()),
    ) else {
        return check();
    };
    let key = (cert_digest.to_vec(), issuer_digest.to_vec());
    let memo = MEMO.get_or_init(Memo::default);
    if let Some(known) = memo.lock().ok().and_then(|m| m.get(&key).copied()) {
        return known;
    }
    let result = check();
    if let Ok(mut memo) = memo.lock() {
        if memo.len() >= MAX_ENTRIES {
            memo.clear();
        }
        memo.insert(key, result);
    }
    result
}

/// Reads one DER or PEM certificate.
///
/// Parsed certificates are remembered per process by the SHA-256 of their bytes: OpenSSL 3 takes
/// longer to decode a certificate than to check a P-256 signature, and a verifier sees the same
/// VCEK and ASK with every request from a VM.
pub fn parse_certificate(bytes: &[u8]) -> Result<X509, ChainError> {
    type Memo = Mutex<HashMap<[u8; 32], X509>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    const MAX_ENTRIES: usize = 256;
    if bytes.len() > 64 * 1024 {
        return Err(ChainError::Decode("certificate larger than 64 KiB".into()));
    }
    let digest = openssl::sha::sha256(bytes);
    let memo = MEMO.get_or_init(Memo::default);
    if let Some(cert) = memo.lock().ok().and_then(|m| m.get(&digest).cloned()) {
        return Ok(cert);
    }
    let cert = X509::from_der(bytes)
        .or_else(|_| X509::from_pem(bytes))
        .map_err(|e| ChainError::Decode(e.to_string()))?;
    if let Ok(mut memo) = memo.lock() {
        if memo.len() >= MAX_ENTRIES {
            memo.clear();
        }
        memo.insert(digest, cert.clone());
    }
    Ok(cert)
}

/// Reads every PEM certificate in `bytes` (a chain file), at most 8.
pub fn parse_pem_chain(bytes: &[u8]) -> Result<Vec<X509>, ChainError> {
    if bytes.len() > 256 * 1024 {
        return Err(ChainError::Decode("chain larger than 256 KiB".into()));
    }
    let certs = X509::stack_from_pem(bytes).map_err(|e| ChainError::Decode(e.to_string()))?;
    if certs.len() > 8 {
        return Err(ChainError::Decode(format!(
            "{} certificates in one chain",
            certs.len()
        )));
    }
    Ok(certs)
}

/// The subject's common name, for messages.
pub fn common_name(cert: &X509) -> String {
    cert.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .unwrap_or_else(|| "(no common name)".into())
}

/// A chain that checked out.
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    pub root: String,
    pub root_is_test_only: bool,
    pub intermediate: String,
    pub leaf: String,
    pub leaf_key: PKey<Public>,
}

/// Verifies `leaf` <- one of `intermediates` <- one of `roots`, all valid at `at_unix`.
pub fn verify_chain(
    leaf: &X509,
    intermediates: &[X509],
    roots: &[TrustedRoot],
    at_unix: i64,
) -> Result<VerifiedChain, ChainError> {
    let at = Asn1Time::from_unix(at_unix)?;
    let tried = roots
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut last_error = None;
    for intermediate in intermediates {
        // Which pinned root signed this intermediate? (The root's own self-signature is checked
        // too: a corrupted pinned certificate must not anchor anything.)
        let Some(root) = roots.iter().find(|root| {
            signed_by(intermediate, &root.certificate)
                && signed_by(&root.certificate, &root.certificate)
        }) else {
            last_error = Some(ChainError::UntrustedIntermediate {
                which: "intermediate",
                subject: common_name(intermediate),
                tried: tried.clone(),
            });
            continue;
        };
        if !signed_by(leaf, intermediate) {
            last_error = Some(ChainError::BadLeafSignature {
                which: "VCEK/VLEK",
                subject: common_name(leaf),
                issuer: common_name(intermediate),
            });
            continue;
        }
        for (which, cert) in [
            ("ARK", &root.certificate),
            ("intermediate", intermediate),
            ("VCEK/VLEK", leaf),
        ] {
            check_validity(which, cert, &at)?;
        }
        return Ok(VerifiedChain {
            root: root.name.clone(),
            root_is_test_only: root.test_only,
            intermediate: common_name(intermediate),
            leaf: common_name(leaf),
            leaf_key: leaf.public_key()?,
        });
    }
    Err(last_error.unwrap_or(ChainError::NoIntermediate(tried)))
}

fn check_validity(which: &'static str, cert: &X509, at: &Asn1Time) -> Result<(), ChainError> {
    let before = cert.not_before().compare(at)?;
    let after = cert.not_after().compare(at)?;
    if before == Ordering::Greater || after == Ordering::Less {
        return Err(ChainError::Expired {
            which,
            subject: common_name(cert),
            at: at.to_string(),
            not_before: cert.not_before().to_string(),
            not_after: cert.not_after().to_string(),
        });
    }
    Ok(())
}
