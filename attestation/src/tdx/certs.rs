//! Intel's PKI for DCAP: Intel SGX Root CA (pinned here) -> Intel SGX PCK Platform/Processor CA
//! -> PCK certificate (signs the QE report), and Root CA -> Intel SGX TCB Signing (signs TCB info
//! and QE identity). Roots are a parameter: Intel's pinned root, plus test roots only when the
//! caller names them. CRLs from the collateral revoke intermediates and leaves.

use super::x509::{IntelCert, IntelCrl, X509Error};
use crate::memo::Memo;
use crate::pki::NotValid;
use crate::snp::certs::ChainError;
use crate::snp::TrustedRoot;
use openssl::x509::X509;
use std::sync::{Arc, Mutex, OnceLock};

/// Why an Intel certificate chain or CRL could not be read or does not check out.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("the chain is empty")]
    EmptyChain,
    #[error(transparent)]
    Extensions(#[from] super::pck::PckError),
    #[error(transparent)]
    Validity(#[from] NotValid),
    #[error("{0}")]
    Decode(#[from] X509Error),
    #[error("no {leaf_name}: the chain is empty")]
    NoLeaf { leaf_name: String },
    #[error("{leaf_name} ({subject}) is not {shape} a trusted root ({tried})")]
    Untrusted {
        leaf_name: String,
        subject: String,
        /// "signed by an intermediate CA signed by" or "signed directly by".
        shape: &'static str,
        tried: String,
    },
    #[error("{which} is not signed by {issuer}")]
    CrlNotSigned { which: String, issuer: String },
    #[error("{which} is not current at {at}: issued {issued}, next update {next_update}")]
    CrlNotCurrent {
        which: String,
        at: String,
        issued: String,
        next_update: String,
    },
    #[error("{subject} (serial {serial}) is revoked by the {which}")]
    Revoked {
        subject: String,
        serial: String,
        which: String,
    },
}

/// The quote's PCK chain as the verifier reads it, with the leaf's SGX extensions.
pub struct PckCerts {
    pub certs: Vec<Arc<IntelCert>>,
    pub extensions: Result<super::SgxExtensions, CertError>,
}

/// Reads the quote's PEM chain (at most 8 certificates) and the leaf's SGX extensions,
/// remembered per process by the SHA-256 of the PEM: a verifier sees the same platform's chain
/// with every quote.
pub fn parse_pck_certs(pem: &[u8]) -> Result<Arc<PckCerts>, CertError> {
    static MEMO: Memo<[u8; 32], Arc<PckCerts>> = Memo::new(256);
    MEMO.get_or_try(openssl::sha::sha256(pem), || {
        let certs = parse_pem_certs(pem)?;
        let extensions = match certs.first() {
            Some(leaf) => leaf.sgx_extensions().map_err(CertError::from),
            None => Err(CertError::EmptyChain),
        };
        Ok(Arc::new(PckCerts { certs, extensions }))
    })
}

/// Every certificate of a PEM chain (at most 8), each decoded once per process
/// ([`super::x509::certificate`]).
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<Arc<IntelCert>>, ChainError> {
    pem_blocks(pem)?
        .iter()
        .map(|der| {
            super::x509::certificate(der).map_err(|e| ChainError::Decode(format!("PEM chain: {e}")))
        })
        .collect()
}

/// Most certificates in one PEM chain (Intel's have two or three).
const MAX_CHAIN_CERTS: usize = 8;
/// Largest PEM chain accepted.
const MAX_CHAIN_PEM: usize = 256 * 1024;

/// Reads every `CERTIFICATE` block of a PEM chain (at most 8) with OpenSSL, each decoded once
/// per process through [`crate::snp::certs::parse_certificate`] (the pinned root as a
/// [`TrustedRoot`]).
pub fn parse_pem_chain_memo(pem: &[u8]) -> Result<Vec<X509>, ChainError> {
    pem_blocks(pem)?
        .iter()
        .map(|der| crate::snp::certs::parse_certificate(der))
        .collect()
}

/// The DER of every `CERTIFICATE` block of a PEM chain (at most 8; any other block is an error).
fn pem_blocks(pem: &[u8]) -> Result<Vec<Vec<u8>>, ChainError> {
    use base64::Engine as _;
    let decode = |problem: &str| ChainError::Decode(format!("PEM chain: {problem}"));
    if pem.len() > MAX_CHAIN_PEM {
        return Err(decode("larger than 256 KiB"));
    }
    let text = std::str::from_utf8(pem).map_err(|_| decode("not UTF-8"))?;
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start + "-----BEGIN ".len()..];
        let (label, body) = block
            .split_once("-----")
            .ok_or_else(|| decode("unterminated BEGIN line"))?;
        if label != "CERTIFICATE" {
            return Err(decode(&format!("{label:?} block, expected CERTIFICATE")));
        }
        let (body, after) = body
            .split_once("-----END CERTIFICATE-----")
            .ok_or_else(|| decode("no END CERTIFICATE line"))?;
        let base64: String = body.split_ascii_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|e| decode(&format!("not base64: {e}")))?;
        if blocks.len() == MAX_CHAIN_CERTS {
            return Err(decode("more than 8 certificates"));
        }
        blocks.push(der);
        rest = after;
    }
    Ok(blocks)
}

/// Intel SGX Root CA (CN=Intel SGX Root CA, O=Intel Corporation, L=Santa Clara, ST=CA, C=US),
/// valid 2018-05-21 to 2049-12-31, SHA-256 fingerprint
/// 44:A0:19:6B:2B:99:F8:89:B8:E1:49:E9:5B:80:7A:35:0E:74:24:96:43:99:E8:85:A7:CB:B8:CC:FA:B6:74:D3.
/// Published by Intel at https://certificates.trustedservices.intel.com/IntelSGXRootCA.der; the
/// same bytes appear in public DCAP verifiers and at the end of every PCK chain Intel issues.
/// A test checks its subject, self-signature and fingerprint.
pub const INTEL_SGX_ROOT_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----
";

/// Intel's pinned root as a trust anchor, decoded once per process (every `VerifyOptions` asks
/// for it; cloning an `X509` only takes a reference).
pub fn intel_roots() -> Vec<TrustedRoot> {
    static ROOTS: OnceLock<Vec<TrustedRoot>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            parse_pem_chain_memo(INTEL_SGX_ROOT_CA_PEM.as_bytes())
                .unwrap_or_default()
                .into_iter()
                .map(|certificate| TrustedRoot {
                    name: "Intel SGX Root CA".into(),
                    certificate,
                    test_only: false,
                })
                .collect()
        })
        .clone()
}

/// A trusted root as the chain checks read it, decoded once per process; None when it is not a
/// certificate they can read. Roots are few and asked for by every chain check, so they are
/// found by comparing DER, which costs less than hashing it again.
fn root_certificate(root: &TrustedRoot) -> Option<Arc<IntelCert>> {
    static ROOTS: OnceLock<Mutex<Vec<Arc<IntelCert>>>> = OnceLock::new();
    const MAX_ROOTS: usize = 16;
    let der = root.certificate.to_der().ok()?;
    let roots = ROOTS.get_or_init(Mutex::default);
    if let Some(hit) = roots
        .lock()
        .ok()
        .and_then(|r| r.iter().find(|c| c.der == der).cloned())
    {
        return Some(hit);
    }
    let cert = super::x509::certificate(&der).ok()?;
    if let Ok(mut roots) = roots.lock() {
        if roots.len() >= MAX_ROOTS {
            roots.clear();
        }
        roots.push(cert.clone());
    }
    Some(cert)
}

/// A chain that checked out: leaf <- (intermediate <-)? root.
#[derive(Debug, Clone)]
pub struct IntelChain {
    pub root: String,
    pub root_is_test_only: bool,
    pub root_certificate: Arc<IntelCert>,
    pub intermediate: Option<Arc<IntelCert>>,
    pub leaf: Arc<IntelCert>,
}

impl IntelChain {
    /// "PCK <- PCK Platform CA <- root" for messages.
    pub fn describe(&self) -> String {
        let root = if self.root_is_test_only {
            format!("TEST-ONLY root {} (named by the caller)", self.root)
        } else {
            format!("{} (pinned)", self.root)
        };
        match &self.intermediate {
            Some(i) => format!("{} <- {} <- {root}", self.leaf.subject, i.subject),
            None => format!("{} <- {root}", self.leaf.subject),
        }
    }
}

fn validity(which: &str, cert: &IntelCert, at: i64) -> Result<(), CertError> {
    let bounds = (cert.not_before, cert.not_after);
    Ok(crate::pki::check_validity_unix(
        which,
        &cert.subject,
        bounds,
        at,
    )?)
}

/// How a leaf must hang from the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainShape {
    /// PCK certificate <- PCK Platform/Processor CA <- root.
    ThroughIntermediate,
    /// TCB Signing certificate <- root: a key certified by an intermediate (a PCK key, which a
    /// compromised platform could leak) must never sign TCB info or QE identity.
    DirectlyUnderRoot,
}

/// The trusted roots whose own self-signature holds (a corrupted pinned certificate must not
/// anchor anything), with their names.
fn anchors(roots: &[TrustedRoot]) -> Vec<(&TrustedRoot, Arc<IntelCert>)> {
    roots
        .iter()
        .filter_map(|root| Some((root, root_certificate(root)?)))
        .filter(|(_, cert)| super::x509::signed_by(cert, cert))
        .collect()
}

/// Verifies `certs[0]` (the leaf) up to one of `roots` in the given shape, the intermediate taken
/// from `certs[1..]` (a root in `certs` is ignored: roots are pinned), every certificate valid at
/// `at_unix`. `leaf_name` names the leaf in errors ("PCK certificate", "TCB Signing certificate").
pub fn verify_intel_chain(
    leaf_name: &str,
    certs: &[Arc<IntelCert>],
    shape: ChainShape,
    roots: &[TrustedRoot],
    at_unix: i64,
) -> Result<IntelChain, CertError> {
    use super::x509::signed_by;
    let leaf = certs.first().ok_or_else(|| CertError::NoLeaf {
        leaf_name: leaf_name.to_owned(),
    })?;
    let anchors = anchors(roots);
    let candidates: Vec<Option<&Arc<IntelCert>>> = match shape {
        ChainShape::DirectlyUnderRoot => vec![None],
        ChainShape::ThroughIntermediate => certs[1..].iter().map(Some).collect(),
    };
    for intermediate in candidates {
        let issuer_of_leaf = intermediate.unwrap_or(leaf);
        let Some((root, root_cert)) = anchors
            .iter()
            .find(|(_, root_cert)| signed_by(issuer_of_leaf, root_cert))
        else {
            continue;
        };
        if let Some(intermediate) = intermediate {
            // The root's own certificate as the "intermediate" is not one.
            if !signed_by(leaf, intermediate) || intermediate.same_key(root_cert) {
                continue;
            }
        }
        validity("root", root_cert, at_unix)?;
        if let Some(intermediate) = intermediate {
            validity("intermediate CA", intermediate, at_unix)?;
        }
        validity(leaf_name, leaf, at_unix)?;
        return Ok(IntelChain {
            root: root.name.clone(),
            root_is_test_only: root.test_only,
            root_certificate: root_cert.clone(),
            intermediate: intermediate.cloned(),
            leaf: leaf.clone(),
        });
    }
    Err(CertError::Untrusted {
        leaf_name: leaf_name.to_owned(),
        subject: leaf.subject.clone(),
        shape: match shape {
            ChainShape::ThroughIntermediate => "signed by an intermediate CA signed by",
            ChainShape::DirectlyUnderRoot => "signed directly by",
        },
        tried: crate::snp::certs::root_names(roots),
    })
}

/// Checks a CRL: signed by `issuer`, current at `at_unix`, and not listing `certs` (each issued
/// by `issuer`).
pub fn check_crl(
    which: &str,
    crl: &IntelCrl,
    issuer: &IntelCert,
    certs: &[&IntelCert],
    at_unix: i64,
) -> Result<(), CertError> {
    if !crl.signed_by(issuer) {
        return Err(CertError::CrlNotSigned {
            which: which.to_owned(),
            issuer: issuer.subject.clone(),
        });
    }
    let late = crl.this_update > at_unix;
    let expired = crl.next_update.is_some_and(|next| next < at_unix);
    if late || expired {
        use crate::pki::time_text;
        return Err(CertError::CrlNotCurrent {
            which: which.to_owned(),
            at: time_text(at_unix),
            issued: time_text(crl.this_update),
            next_update: crl.next_update.map(time_text).unwrap_or_else(|| "-".into()),
        });
    }
    if let Some(cert) = certs.iter().find(|cert| crl.revokes(cert)) {
        return Err(CertError::Revoked {
            subject: cert.subject.clone(),
            serial: cert.serial_hex(),
            which: which.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_quote_chain() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/vectors/tdx/tdx_quote"
        );
        let quote = std::fs::read(path).expect("real quote");
        crate::tdx::TdQuote::parse(&quote)
            .expect("parses")
            .pck_chain_pem
    }

    fn ders(certs: &[X509]) -> Vec<Vec<u8>> {
        certs.iter().map(|c| c.to_der().unwrap()).collect()
    }

    #[test]
    fn pem_chain_reads_what_openssl_reads() {
        let pem = real_quote_chain();
        let ours = parse_pem_chain_memo(&pem).unwrap();
        let openssl = X509::stack_from_pem(&pem).unwrap();
        assert_eq!(ours.len(), 3);
        assert_eq!(ders(&ours), ders(&openssl));
        // CRLF line ends and text around the blocks are fine; nothing is not an error.
        let text = String::from_utf8(pem.clone()).unwrap();
        let crlf = format!("leading text\r\n{}", text.replace('\n', "\r\n"));
        assert_eq!(
            ders(&parse_pem_chain_memo(crlf.as_bytes()).unwrap()),
            ders(&ours)
        );
        assert!(parse_pem_chain_memo(b"").unwrap().is_empty());
        // The pinned root is the chain's last certificate.
        assert_eq!(
            ders(&[ours[2].clone()]),
            ders(&[intel_roots()[0].certificate.clone()])
        );
    }

    #[test]
    fn pem_chain_refuses_bad_input() {
        let pem = String::from_utf8(real_quote_chain()).unwrap();
        let first_end = pem.find("-----END CERTIFICATE-----").unwrap() + 25;
        let one = &pem[..first_end];
        let cases = [
            one.replace("BEGIN CERTIFICATE", "BEGIN PRIVATE KEY"),
            one.replacen("MII", "M!I", 1),
            one.replace("-----END CERTIFICATE-----", ""),
            one.replacen("MII", "MIJ", 1),
            format!("{one}\n").repeat(9),
        ];
        for case in &cases {
            assert!(parse_pem_chain_memo(case.as_bytes()).is_err(), "{case}");
        }
        assert_eq!(
            parse_pem_chain_memo(format!("{one}\n").repeat(8).as_bytes())
                .unwrap()
                .len(),
            8
        );
        let huge = vec![b'A'; MAX_CHAIN_PEM + 1];
        assert!(parse_pem_chain_memo(&huge).is_err());
        assert!(parse_pem_chain_memo(&[0xff, 0xfe]).is_err());
    }
}
