//! AMD's key hierarchy: ARK (root, pinned here) -> ASK or ASVK (intermediate) -> VCEK or VLEK
//! (signs reports). Only the ARKs are trust anchors; intermediates may come with the evidence and
//! are accepted only when a pinned ARK signed them.

use crate::memo::Memo;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::x509::{X509Crl, X509NameRef, X509};
use std::cmp::Ordering;
use std::sync::OnceLock;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};

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
    #[error(
        "{which} ({subject}) names {issuer} as its issuer, and no intermediate (evidence \
         cert_chain or built-in ASK) signed by a trusted ARK has that name"
    )]
    UnknownIssuer {
        which: &'static str,
        subject: String,
        issuer: String,
    },
    /// No ASVK is built in (the `sev` crate ships ASKs only), so a VLEK without its chain
    /// cannot be verified: say so rather than that no intermediate has the issuer's name.
    #[error(
        "the VLEK ({subject}) is issued by {issuer}, AMD's ASVK for {product}, which is not \
         built in: a VLEK verifies only with its chain (ASVK and ARK, from AMD KDS \
         /vlek/v1/{product}/cert_chain)"
    )]
    VlekNeedsChain {
        subject: String,
        issuer: String,
        product: String,
    },
    #[error("{which} ({subject}) cannot sign SEV-SNP reports: {problem}")]
    NotAReportKey {
        which: &'static str,
        subject: String,
        problem: String,
    },
    #[error("AMD CRL: {0}")]
    Crl(String),
    #[error("{which} ({subject}, serial {serial}) is revoked by {issuer}'s CRL (since {since})")]
    Revoked {
        which: &'static str,
        subject: String,
        serial: String,
        issuer: String,
        since: String,
    },
    #[error(transparent)]
    Expired(crate::pki::NotValid),
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
    // Parsed once per process: every VerifyOptions starts from these.
    static ROOTS: OnceLock<Vec<TrustedRoot>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
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
        })
        .clone()
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

/// The roots a chain may end in, for every chain walker (AMD, Intel, Google, AWS): their names
/// for reports, and the ones whose own self-signature holds (a corrupted pinned certificate must
/// not anchor anything).
pub(crate) fn root_names(roots: &[TrustedRoot]) -> String {
    roots
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// See [`root_names`].
pub(crate) fn anchors(roots: &[TrustedRoot]) -> Vec<&TrustedRoot> {
    roots
        .iter()
        .filter(|root| signed_by(&root.certificate, &root.certificate))
        .collect()
}

/// Whether `cert` carries a valid signature by `issuer`'s key.
///
/// The answer depends only on the two certificates' bytes, so it is remembered per process by
/// the SHA-256 of both DER encodings: a verifier that sees the same chain again (the same VM, or
/// the pinned ARK's self-signature) does not repeat RSA-4096 or P-384 checks. Validity dates are
/// not part of this and are checked on every call.
pub(crate) fn signed_by(cert: &X509, issuer: &X509) -> bool {
    static MEMO: Memo<(Vec<u8>, Vec<u8>), bool> = Memo::new(1024);
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
    MEMO.get_or((cert_digest.to_vec(), issuer_digest.to_vec()), check)
}

/// Reads one DER or PEM certificate.
///
/// Parsed certificates are remembered per process by the SHA-256 of their bytes: OpenSSL 3 takes
/// longer to decode a certificate than to check a P-256 signature, and a verifier sees the same
/// VCEK and ASK with every request from a VM.
pub fn parse_certificate(bytes: &[u8]) -> Result<X509, ChainError> {
    static MEMO: Memo<[u8; 32], X509> = Memo::new(256);
    if bytes.len() > 64 * 1024 {
        return Err(ChainError::Decode("certificate larger than 64 KiB".into()));
    }
    MEMO.get_or_try(openssl::sha::sha256(bytes), || {
        X509::from_der(bytes)
            .or_else(|_| X509::from_pem(bytes))
            .map_err(|e| ChainError::Decode(e.to_string()))
    })
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
    crate::pki::common_name(cert)
}

/// A chain that checked out.
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    /// The trusted root's name (`ARK-Milan`, `ARK-Genoa`, `ARK-Turin`, or a test root's).
    pub root: String,
    pub root_is_test_only: bool,
    pub intermediate: String,
    pub leaf: String,
    pub leaf_key: PKey<Public>,
    /// The trusted ARK that signed the intermediate (what [`check_amd_crl`] needs).
    pub root_certificate: X509,
    /// The ASK or ASVK that signed the leaf (what AMD's CRL may revoke).
    pub intermediate_certificate: X509,
}

/// Whether `a` and `b` are the same distinguished name.
fn same_name(a: &X509NameRef, b: &X509NameRef) -> bool {
    a.try_cmp(b).is_ok_and(|order| order == Ordering::Equal)
}

/// A certificate whose subject is its issuer: a root. The evidence may carry AMD's ARK beside
/// the ASK (KDS serves them together), but a root from the evidence is never a trust anchor nor
/// an intermediate: anchors come only from the verifier's `roots`.
fn self_issued(cert: &X509) -> bool {
    same_name(cert.subject_name(), cert.issuer_name())
}

/// VCEKs and VLEKs are ECDSA P-384 keys; anything else (an ASK's RSA key, say) never signed a
/// report.
fn check_report_key(leaf: &X509) -> Result<PKey<Public>, ChainError> {
    let problem = |problem: String| ChainError::NotAReportKey {
        which: "VCEK/VLEK",
        subject: common_name(leaf),
        problem,
    };
    let key = leaf.public_key()?;
    let ec = key
        .ec_key()
        .map_err(|_| problem(format!("its key is {:?}, not ECDSA P-384", key.id())))?;
    if ec.group().curve_name() != Some(Nid::SECP384R1) {
        return Err(problem("its EC key is not on P-384".into()));
    }
    if self_issued(leaf) {
        return Err(problem("it is a self-issued (root) certificate".into()));
    }
    Ok(key)
}

/// Verifies `leaf` <- one of `intermediates` <- one of `roots`, all valid at `at_unix`.
///
/// Exactly three levels, by key and by name: the intermediate is named as the leaf's issuer and
/// signed by a root in `roots` (named as the intermediate's issuer, and self-signed); the leaf
/// is signed by the intermediate and holds an ECDSA P-384 key. Self-issued certificates among
/// `intermediates` (an ARK the evidence carries, AMD's or anybody's) are ignored: the evidence
/// never supplies a root, and a root is never an intermediate.
pub fn verify_chain(
    leaf: &X509,
    intermediates: &[X509],
    roots: &[TrustedRoot],
    at_unix: i64,
) -> Result<VerifiedChain, ChainError> {
    let at = Asn1Time::from_unix(at_unix)?;
    let tried = root_names(roots);
    let leaf_key = check_report_key(leaf)?;
    // Errors about intermediates that carry the leaf's issuer name say more than errors about
    // the others (built-in ASKs of other products, say).
    let mut named_error = None;
    let mut other_error = None;
    for intermediate in intermediates.iter().filter(|cert| !self_issued(cert)) {
        if !same_name(intermediate.subject_name(), leaf.issuer_name()) {
            other_error.get_or_insert(ChainError::UnknownIssuer {
                which: "VCEK/VLEK",
                subject: common_name(leaf),
                issuer: name_text(leaf.issuer_name()),
            });
            continue;
        }
        // Which pinned root signed this intermediate? (The root's own self-signature is checked
        // too: a corrupted pinned certificate must not anchor anything.)
        let Some(root) = roots.iter().find(|root| {
            same_name(root.certificate.subject_name(), intermediate.issuer_name())
                && signed_by(intermediate, &root.certificate)
                && signed_by(&root.certificate, &root.certificate)
        }) else {
            named_error = Some(ChainError::UntrustedIntermediate {
                which: "intermediate",
                subject: common_name(intermediate),
                tried: tried.clone(),
            });
            continue;
        };
        if !signed_by(leaf, intermediate) {
            named_error = Some(ChainError::BadLeafSignature {
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
            leaf_key,
            root_certificate: root.certificate.clone(),
            intermediate_certificate: intermediate.clone(),
        });
    }
    if named_error.is_none() {
        let issuer = name_text(leaf.issuer_name());
        if let Some(product) = issuer.strip_prefix("SEV-VLEK-") {
            return Err(ChainError::VlekNeedsChain {
                subject: common_name(leaf),
                product: product.to_owned(),
                issuer,
            });
        }
    }
    Err(named_error
        .or(other_error)
        .unwrap_or(ChainError::NoIntermediate(tried)))
}

/// A distinguished name for messages: its common name, else the whole name.
fn name_text(name: &X509NameRef) -> String {
    name.entries_by_nid(Nid::COMMONNAME)
        .next()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .unwrap_or_else(|| format!("{name:?}"))
}

fn check_validity(which: &'static str, cert: &X509, at: &Asn1Time) -> Result<(), ChainError> {
    crate::pki::check_validity(which, cert, at).map_err(|e| match e {
        crate::pki::ValidityError::NotValid(e) => ChainError::Expired(e),
        crate::pki::ValidityError::Crypto(e) => e.into(),
    })
}

/// The largest CRL [`check_amd_crl`] reads. AMD's are under 1 KiB (one entry at most so far).
pub const MAX_CRL_BYTES: usize = 64 * 1024;
/// The most entries [`check_amd_crl`] reads from one CRL.
pub const MAX_CRL_ENTRIES: usize = 1024;

const OID_AUTHORITY_KEY_IDENTIFIER: &str = "2.5.29.35";
const OID_CRL_NUMBER: &str = "2.5.29.20";
const OID_DELTA_CRL_INDICATOR: &str = "2.5.29.27";

/// Checks the intermediate that signed a VCEK or VLEK against AMD's CRL for its product
/// (`https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,Turin}/crl` for ASKs, `/vlek/v1/.../crl` for
/// ASVKs; DER, signed by the product's ARK with RSA-PSS / SHA-384):
///
/// - `crl_der` is at most [`MAX_CRL_BYTES`], strict DER with nothing after it, a complete CRL
///   (not a delta CRL), with no critical extension this function does not know (CRL or entry)
///   and at most [`MAX_CRL_ENTRIES`] entries;
/// - its issuer is `ark`'s subject and `ark`'s key verifies its signature (`ark` must be the
///   pinned root that [`verify_chain`] named: [`VerifiedChain::root_certificate`]);
/// - it is current at `at_unix`: thisUpdate <= at <= nextUpdate (a CRL without nextUpdate
///   could never go stale, and is refused);
/// - `ask_or_asvk` was issued by `ark` (else this CRL cannot speak for it) and its serial
///   number is not listed.
pub fn check_amd_crl(
    crl_der: &[u8],
    ark: &X509,
    ask_or_asvk: &X509,
    at_unix: i64,
) -> Result<(), ChainError> {
    let (list, parsed) = parse_crl(crl_der)?;
    let tbs = &list.tbs_cert_list;
    let ark_name = common_name(ark);
    let entries = check_crl_structure(&list)?;
    check_crl_issuer(&parsed, ark, &ark_name)?;
    check_crl_current(tbs, at_unix)?;
    check_not_revoked(entries, ark, ark_name, ask_or_asvk)
}

fn crl_error(message: String) -> ChainError {
    ChainError::Crl(message)
}

/// The CRL's structure from a strict DER parser (which also refuses trailing bytes) and, for its
/// signature, OpenSSL's parse of the same bytes.
fn parse_crl(crl_der: &[u8]) -> Result<(CertificateList, X509Crl), ChainError> {
    use x509_cert::der::Decode;
    if crl_der.is_empty() {
        return Err(crl_error("empty".into()));
    }
    if crl_der.len() > MAX_CRL_BYTES {
        return Err(crl_error(format!(
            "{} bytes, more than the limit of {MAX_CRL_BYTES}",
            crl_der.len()
        )));
    }
    let list =
        CertificateList::from_der(crl_der).map_err(|e| crl_error(format!("not a DER CRL: {e}")))?;
    let parsed = X509Crl::from_der(crl_der).map_err(|e| crl_error(format!("not a CRL: {e}")))?;
    Ok((list, parsed))
}

/// A complete CRL with consistent algorithms, no unknown critical extension (CRL or entry) and
/// at most [`MAX_CRL_ENTRIES`] entries; returns its entries.
fn check_crl_structure(list: &CertificateList) -> Result<&[RevokedCert], ChainError> {
    let tbs = &list.tbs_cert_list;
    if tbs.signature != list.signature_algorithm {
        return Err(crl_error(
            "the signed and the outer signature algorithms differ".into(),
        ));
    }
    for ext in tbs.crl_extensions.iter().flatten() {
        let oid = ext.extn_id.to_string();
        if oid == OID_DELTA_CRL_INDICATOR {
            return Err(crl_error(
                "a delta CRL lists only changes; the complete CRL is needed".into(),
            ));
        }
        if ext.critical && oid != OID_AUTHORITY_KEY_IDENTIFIER && oid != OID_CRL_NUMBER {
            return Err(crl_error(format!("unknown critical extension {oid}")));
        }
    }
    let entries = tbs.revoked_certificates.as_deref().unwrap_or_default();
    if entries.len() > MAX_CRL_ENTRIES {
        return Err(crl_error(format!(
            "{} entries, more than the limit of {MAX_CRL_ENTRIES}",
            entries.len()
        )));
    }
    if let Some((entry, ext)) = entries.iter().find_map(|entry| {
        entry
            .crl_entry_extensions
            .iter()
            .flatten()
            .find(|ext| ext.critical)
            .map(|ext| (entry, ext))
    }) {
        return Err(crl_error(format!(
            "entry for serial {} has the critical extension {} (an indirect CRL?)",
            hex::encode(entry.serial_number.as_bytes()),
            ext.extn_id
        )));
    }
    Ok(entries)
}

/// The CRL names `ark` as its issuer and `ark`'s key verifies its signature.
fn check_crl_issuer(parsed: &X509Crl, ark: &X509, ark_name: &str) -> Result<(), ChainError> {
    if !same_name(parsed.issuer_name(), ark.subject_name()) {
        return Err(crl_error(format!(
            "issued by {}, not by {ark_name}",
            name_text(parsed.issuer_name())
        )));
    }
    let ark_key = ark.public_key()?;
    if !parsed.verify(&ark_key).unwrap_or(false) {
        return Err(crl_error(format!("not signed by {ark_name}")));
    }
    Ok(())
}

/// thisUpdate <= `at_unix` <= nextUpdate; a CRL without nextUpdate is refused.
fn check_crl_current(tbs: &TbsCertList, at_unix: i64) -> Result<(), ChainError> {
    let this_update = tbs.this_update.to_unix_duration().as_secs();
    let next_update = tbs
        .next_update
        .map(|t| t.to_unix_duration().as_secs())
        .ok_or_else(|| crl_error("it has no nextUpdate, so it could never go stale".into()))?;
    let at = u64::try_from(at_unix).unwrap_or(0);
    if at_unix < 0 || at < this_update || at > next_update {
        return Err(crl_error(format!(
            "not current at {}: thisUpdate {}, nextUpdate {}",
            Asn1Time::from_unix(at_unix)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| at_unix.to_string()),
            tbs.this_update,
            tbs.next_update
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into())
        )));
    }
    Ok(())
}

/// `ask_or_asvk` was issued by `ark` (else the CRL cannot speak for it) and is not listed.
fn check_not_revoked(
    entries: &[RevokedCert],
    ark: &X509,
    ark_name: String,
    ask_or_asvk: &X509,
) -> Result<(), ChainError> {
    let which = if common_name(ask_or_asvk).contains("VLEK") {
        "ASVK"
    } else {
        "ASK"
    };
    if !same_name(ask_or_asvk.issuer_name(), ark.subject_name()) || !signed_by(ask_or_asvk, ark) {
        return Err(crl_error(format!(
            "the {which} {} was not issued by {ark_name}, so this CRL cannot speak for it",
            common_name(ask_or_asvk)
        )));
    }
    let serial = ask_or_asvk.serial_number().to_bn()?.to_vec();
    let magnitude =
        |bytes: &[u8]| -> Vec<u8> { bytes.iter().copied().skip_while(|b| *b == 0).collect() };
    if let Some(entry) = entries
        .iter()
        .find(|entry| magnitude(entry.serial_number.as_bytes()) == magnitude(&serial))
    {
        return Err(ChainError::Revoked {
            which,
            subject: common_name(ask_or_asvk),
            serial: hex::encode(&serial),
            issuer: ark_name,
            since: entry.revocation_date.to_string(),
        });
    }
    Ok(())
}
