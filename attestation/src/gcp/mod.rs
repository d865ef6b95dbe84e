//! Google Cloud: the vTPM AK certificate as the trust basis for GCE Confidential VMs (SEV-SNP and
//! TDX).
//!
//! An AK whose TPMT_PUBLIC merely has the right attribute bits proves nothing: any TEE VM can sign
//! made-up PCRs with a software key and describe it so. Google provisions every Shielded and
//! Confidential VM's vTPM with an AK template and a certificate for the key that template yields
//! in the endorsement hierarchy (NV indices below), issued by "EK/AK CA Intermediate" under
//! "EK/AK CA Root" and naming the instance. [`verify_ak_certificate`] checks that chain against
//! pinned roots (plus TEST-ONLY roots a caller names) and reads the instance; [`ak_key_matches`]
//! ties the certificate to the key that signed the quote.

pub mod certs;
mod chain;
pub mod instance;

pub use certs::{
    google_ak_intermediates, google_ak_roots, GOOGLE_EK_AK_CA_INTERMEDIATE_V3_PEM,
    GOOGLE_EK_AK_CA_ROOT_PEM,
};
pub use instance::{instance_identity, GceInstance, GceSecurityProperties, INSTANCE_IDENTITY_OID};

use crate::snp::certs::parse_certificate;
use crate::snp::TrustedRoot;
use crate::tpm::AkPublic;
use chain::Candidate;
use openssl::asn1::Asn1Time;
use openssl::pkey::{Id, PKey, Public};
use openssl::x509::X509;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::KeyUsage;

/// GCE vTPM NV indices (go-tpm-tools `client/handles.go`): the RSA AK certificate and template,
/// and the ECC ones.
pub const GCE_AK_CERT_NV_INDEX_RSA: u32 = 0x01c1_0000;
pub const GCE_AK_TEMPLATE_NV_INDEX_RSA: u32 = 0x01c1_0001;
pub const GCE_AK_CERT_NV_INDEX_ECC: u32 = 0x01c1_0002;
pub const GCE_AK_TEMPLATE_NV_INDEX_ECC: u32 = 0x01c1_0003;

/// Largest certificate accepted from evidence (Google's are about 1.5 KiB).
pub const MAX_CERTIFICATE_BYTES: usize = 8 * 1024;
/// Most intermediates accepted from evidence (Google's chain has one).
pub const MAX_INTERMEDIATES: usize = 4;

/// An AK certificate whose chain checked out.
#[derive(Debug, Clone)]
pub struct GceAkCertificate {
    /// The certified attestation key.
    pub key: PKey<Public>,
    /// The instance the certificate names; `None` when it carries no instance identity.
    pub instance: Option<GceInstance>,
    /// The certificate's subject, e.g. "L=us-central1-a, O=Google Compute Engine, OU=..., CN=...".
    pub subject: String,
    /// Name of the trusted root the chain ends in.
    pub root: String,
    pub root_is_test_only: bool,
}

/// Why an AK certificate is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GcpError {
    #[error("{which} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        which: String,
        size: usize,
        limit: usize,
    },
    #[error(
        "the evidence carries {count} intermediate certificates, more than the limit of {limit}"
    )]
    TooManyIntermediates { count: usize, limit: usize },
    #[error("{which} is not a DER X.509 certificate: {reason}")]
    Decode { which: String, reason: String },
    #[error("{which} ({subject}): extension {extension} is malformed: {reason}")]
    Extension {
        which: String,
        subject: String,
        extension: &'static str,
        reason: String,
    },
    #[error("AK certificate ({subject}) is a CA certificate, not an attestation key's")]
    LeafIsCa { subject: String },
    #[error("AK certificate ({subject}) does not allow digitalSignature (keyUsage), so it certifies no signing key")]
    LeafNotForSigning { subject: String },
    #[error("none of the trusted roots ({tried}) is a validly self-signed certificate")]
    NoUsableRoot { tried: String },
    #[error("AK certificate ({subject}) is signed directly by the root {root}; Google's AK certificates are issued by an intermediate CA")]
    SignedByRoot { subject: String, root: String },
    #[error("AK certificate ({subject}) is not signed by any of the {tried} known intermediates (its issuer is named {issuer})")]
    UnknownIssuer {
        subject: String,
        issuer: String,
        tried: usize,
    },
    #[error("{which} ({subject}) is not a CA and must not issue certificates: {reason}")]
    IntermediateNotCa {
        which: &'static str,
        subject: String,
        reason: &'static str,
    },
    #[error("{which} ({subject}) is not signed by any trusted root ({tried}); roots carried in evidence are never trusted")]
    UntrustedIntermediate {
        which: &'static str,
        subject: String,
        tried: String,
    },
    #[error(transparent)]
    Expired(crate::pki::NotValid),
    #[error("openssl: {0}")]
    Crypto(String),
}

impl From<openssl::error::ErrorStack> for GcpError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        GcpError::Crypto(e.to_string())
    }
}

/// Verifies a GCE vTPM AK certificate: `leaf_der` <- an intermediate CA (Google's pinned ones or
/// one of `carried_intermediates`, which counts only when one of `roots` signed it) <- one of
/// `roots`, every certificate valid at `at_unix`, and reads the instance it names.
pub fn verify_ak_certificate(
    leaf_der: &[u8],
    carried_intermediates: &[&[u8]],
    roots: &[TrustedRoot],
    at_unix: i64,
) -> Result<GceAkCertificate, GcpError> {
    bounded("AK certificate", leaf_der)?;
    if carried_intermediates.len() > MAX_INTERMEDIATES {
        return Err(GcpError::TooManyIntermediates {
            count: carried_intermediates.len(),
            limit: MAX_INTERMEDIATES,
        });
    }
    let carried = carried_intermediates
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let which = format!("intermediate #{i} carried in the evidence");
            bounded(&which, der)?;
            // Strict DER first: OpenSSL accepts trailing bytes and BER leniencies.
            strict(&which, der)?;
            Ok((openssl_certificate(&which, der)?, *der))
        })
        .collect::<Result<Vec<_>, GcpError>>()?;
    let leaf = strict("AK certificate", leaf_der)?;
    let leaf_x509 = openssl_certificate("AK certificate", leaf_der)?;
    let subject = distinguished_name(&leaf_x509);
    let profile = instance::profile(&leaf, "AK certificate", &subject)?;
    if profile.is_ca {
        return Err(GcpError::LeafIsCa { subject });
    }
    if !profile.allows(KeyUsage::digital_signature) {
        return Err(GcpError::LeafNotForSigning { subject });
    }
    let pinned = certs::pinned_intermediates()
        .iter()
        .map(|(cert, der)| Candidate {
            which: "pinned intermediate",
            cert,
            der,
        });
    let carried = carried.iter().map(|(cert, der)| Candidate {
        which: "intermediate carried in the evidence",
        cert,
        der,
    });
    let candidates: Vec<Candidate<'_>> = pinned.chain(carried).collect();
    let at = Asn1Time::from_unix(at_unix)?;
    let root = chain::anchor(&leaf_x509, &subject, &candidates, roots, &at)?;
    chain::validity("AK certificate", &leaf_x509, &at)?;
    Ok(GceAkCertificate {
        key: leaf_x509.public_key()?,
        instance: profile.instance,
        subject,
        root: root.name.clone(),
        root_is_test_only: root.test_only,
    })
}

/// Whether the certificate certifies `ak`, the key that signed the quote.
pub fn ak_key_matches(cert: &GceAkCertificate, ak: &AkPublic) -> bool {
    public_keys_equal(&cert.key, &ak.key)
}

/// Compares two public keys by their numbers: RSA modulus and exponent, or EC curve and point.
/// Other key types never match.
pub fn public_keys_equal(a: &PKey<Public>, b: &PKey<Public>) -> bool {
    match (a.id(), b.id()) {
        (Id::RSA, Id::RSA) => match (a.rsa(), b.rsa()) {
            (Ok(a), Ok(b)) => a.n() == b.n() && a.e() == b.e(),
            _ => false,
        },
        (Id::EC, Id::EC) => match (a.ec_key(), b.ec_key()) {
            (Ok(a), Ok(b)) => {
                let group = a.group();
                let same_curve =
                    group.curve_name().is_some() && group.curve_name() == b.group().curve_name();
                same_curve
                    && openssl::bn::BigNumContext::new()
                        .and_then(|mut ctx| a.public_key().eq(group, b.public_key(), &mut ctx))
                        .unwrap_or(false)
            }
            _ => false,
        },
        _ => false,
    }
}

fn bounded(which: &str, der: &[u8]) -> Result<(), GcpError> {
    if der.len() > MAX_CERTIFICATE_BYTES {
        return Err(GcpError::TooLarge {
            which: which.to_owned(),
            size: der.len(),
            limit: MAX_CERTIFICATE_BYTES,
        });
    }
    Ok(())
}

fn strict(which: &str, der: &[u8]) -> Result<x509_cert::Certificate, GcpError> {
    x509_cert::Certificate::from_der(der).map_err(|e| GcpError::Decode {
        which: which.to_owned(),
        reason: e.to_string(),
    })
}

fn openssl_certificate(which: &str, der: &[u8]) -> Result<X509, GcpError> {
    parse_certificate(der).map_err(|e| GcpError::Decode {
        which: which.to_owned(),
        reason: e.to_string(),
    })
}

/// "L=us-central1-a, O=Google Compute Engine, OU=core-eso, CN=6524697943022743941".
fn distinguished_name(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .map(|entry| {
            let key = entry
                .object()
                .nid()
                .short_name()
                .map(str::to_owned)
                .unwrap_or_else(|_| entry.object().to_string());
            let value = String::from_utf8_lossy(entry.data().as_slice());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
