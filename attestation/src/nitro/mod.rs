//! AWS Nitro attestation documents: what a NitroTPM returns for its vendor command 0x20000001 and
//! what the Nitro Security Module returns inside an enclave.
//!
//! A document is a COSE_Sign1 (ES384) whose payload is a CBOR map: module ID, digest, timestamp,
//! PCRs (`nitrotpm_pcrs` on NitroTPM, `pcrs` in an enclave), the signing certificate, the CA
//! bundle (root first) and the caller's optional public key, user data and nonce. The Nitro
//! hypervisor signs it under AWS's Nitro Attestation PKI, whose root "AWS Nitro root G1" is pinned
//! in [`roots`]. Trust comes only from the roots the caller passes: the document's own cabundle[0]
//! must be byte for byte one of them.
//!
//! Verification order: size bound, framing ([`framing`]), COSE structure and algorithm, payload
//! syntax, certificate chain at the given time, the ES384 signature with the leaf's key, and the
//! document's timestamp inside the leaf's validity. Everything is bounded and returns a typed
//! [`NitroError`]; nothing panics on any input.

mod chain;
mod cose;
mod document;
pub mod framing;
pub mod nsm;
pub mod roots;

pub use document::{MAX_CABUNDLE, MAX_CERTIFICATE, MAX_PCRS, MAX_USER_FIELD};
pub use roots::{aws_nitro_roots, AWS_NITRO_ROOT_G1_NAME, AWS_NITRO_ROOT_G1_PEM};

use crate::snp::TrustedRoot;
use openssl::asn1::Asn1Time;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Largest input accepted: the format caps the payload at 16 KiB, and a NitroTPM document with all
/// three optional fields at their 1 KiB maximum stays near 8 KiB.
pub const MAX_DOCUMENT: usize = 16 * 1024;

/// The hash the PCRs were computed with. AWS documents SHA384 for both Enclaves and NitroTPM; the
/// NSM API's `Digest` also names SHA256 and SHA512 (PCRs of 32 and 64 bytes), accepted as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NitroDigest {
    Sha256,
    Sha384,
    Sha512,
}

impl NitroDigest {
    /// Length of a PCR value in this digest.
    pub fn pcr_len(self) -> usize {
        match self {
            NitroDigest::Sha256 => 32,
            NitroDigest::Sha384 => 48,
            NitroDigest::Sha512 => 64,
        }
    }

    /// The name the document uses.
    pub fn name(self) -> &'static str {
        match self {
            NitroDigest::Sha256 => "SHA256",
            NitroDigest::Sha384 => "SHA384",
            NitroDigest::Sha512 => "SHA512",
        }
    }
}

impl std::fmt::Display for NitroDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A document whose signature and chain checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NitroDocument {
    pub module_id: String,
    /// When the hypervisor made the document, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub digest: NitroDigest,
    /// PCR index to value, from `nitrotpm_pcrs` (NitroTPM) or `pcrs` (Enclaves).
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
    /// Name of the trusted root the chain ends in.
    pub root: String,
    /// True when that root is a TEST-ONLY root the caller named.
    pub root_is_test_only: bool,
    /// Certificate subjects, leaf first, root last.
    pub chain: Vec<String>,
}

/// Why a document was refused: one variant per cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NitroError {
    #[error("the attestation document is empty")]
    Empty,
    #[error("the attestation document is {len} bytes, more than the {max} accepted")]
    TooLarge { len: usize, max: usize },
    #[error("the input starts with {0:#04x}: neither a COSE_Sign1 (0x84, or tag 18 = 0xd2) nor dstack's attestation envelope (0x00)")]
    UnknownFraming(u8),
    #[error("the dstack attestation envelope around the document is malformed: {0}")]
    DstackEnvelope(&'static str),
    #[error("the document is not a COSE_Sign1 structure: {0}")]
    Cose(String),
    #[error(
        "the COSE signature algorithm is {0}, not ES384 (-35), the only one the Nitro PKI uses"
    )]
    UnsupportedAlgorithm(String),
    #[error(
        "the COSE protected header lists critical parameters, which Nitro documents never carry"
    )]
    CriticalHeader,
    #[error(
        "the COSE unprotected header is not empty: Nitro documents carry nothing unsigned there"
    )]
    UnprotectedHeader,
    #[error("the COSE_Sign1 carries no payload (detached), so it holds no attestation document")]
    DetachedPayload,
    #[error("the ES384 signature is {0} bytes, not 96 (r || s)")]
    SignatureLength(usize),
    #[error("the attestation document payload is not a CBOR map: {0}")]
    Payload(String),
    #[error("the attestation document has the unknown field {0:?}")]
    UnknownField(String),
    #[error("the attestation document has the field {0:?} twice")]
    DuplicateField(&'static str),
    #[error("the attestation document lacks the mandatory field {0} (or it is null)")]
    MissingField(&'static str),
    #[error("the field {field} is not {expected}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("the field {field} is {len} bytes, outside the {min}..={max} the format allows")]
    FieldLength {
        field: String,
        len: usize,
        min: usize,
        max: usize,
    },
    #[error("the module_id is empty")]
    EmptyModuleId,
    #[error("the digest {0:?} is not one of SHA256, SHA384, SHA512")]
    UnsupportedDigest(String),
    #[error("the timestamp is 0")]
    ZeroTimestamp,
    #[error("the document has both pcrs and nitrotpm_pcrs")]
    AmbiguousPcrs,
    #[error("the document has {0} PCRs; it must have 1 to 32")]
    PcrCount(usize),
    #[error("PCR index {0} is not in 0..32")]
    PcrIndex(String),
    #[error("PCR {index} is {len} bytes, but {digest} PCRs are {} bytes", digest.pcr_len())]
    PcrLength {
        index: u8,
        len: usize,
        digest: NitroDigest,
    },
    #[error("the cabundle holds {0} certificates; 1 to 4 (root first) are accepted")]
    CabundleSize(usize),
    #[error("the {which} is not one DER X.509 certificate: {reason}")]
    Certificate { which: String, reason: String },
    #[error("cabundle[0] ({subject}) is none of the trusted roots ({tried}); a root that comes with the document is never trusted")]
    UntrustedRoot { subject: String, tried: String },
    #[error("cabundle[{index}] ({subject}) is not signed by the certificate before it ({issuer})")]
    ChainBroken {
        index: usize,
        subject: String,
        issuer: String,
    },
    #[error("the signing certificate ({subject}) is not signed by the last cabundle certificate ({issuer})")]
    LeafNotSignedByChain { subject: String, issuer: String },
    #[error("the {0}")]
    CertificateNotValid(crate::pki::NotValid),
    #[error("the certificate chain violates X.509 path constraints: {0}")]
    ChainConstraints(String),
    #[error("the signing certificate's key is not an EC P-384 key: {0}")]
    LeafKey(String),
    #[error("the ES384 signature does not verify with the signing certificate's key: the document was altered or signed by another key")]
    BadSignature,
    #[error("the document's timestamp {timestamp_ms} ms lies outside its signing certificate's validity ({not_before} to {not_after})")]
    TimestampOutsideLeaf {
        timestamp_ms: u64,
        not_before: String,
        not_after: String,
    },
    #[error("openssl: {0}")]
    Crypto(String),
}

/// Verifies a Nitro attestation document (raw COSE_Sign1, tagged or untagged, or in dstack's
/// envelope, see [`framing`]) against `roots` at `at_unix` (seconds), and returns its fields.
pub fn verify_document(
    bytes: &[u8],
    roots: &[TrustedRoot],
    at_unix: i64,
) -> Result<NitroDocument, NitroError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(NitroError::TooLarge {
            len: bytes.len(),
            max: MAX_DOCUMENT,
        });
    }
    let sign1 = cose::Sign1::parse(framing::cose_sign1(bytes)?)?;
    let payload = document::parse(sign1.payload())?;
    let chain = chain::verify(&payload.certificate, &payload.cabundle, roots, at_unix)?;
    sign1.verify(&chain.leaf)?;
    timestamp_within_leaf(payload.timestamp_ms, &chain.leaf)?;
    Ok(NitroDocument {
        module_id: payload.module_id,
        timestamp_ms: payload.timestamp_ms,
        digest: payload.digest,
        pcrs: payload.pcrs,
        public_key: payload.public_key,
        user_data: payload.user_data,
        nonce: payload.nonce,
        root: chain.root.name.clone(),
        root_is_test_only: chain.root.test_only,
        chain: chain.subjects,
    })
}

/// The hypervisor signs with a leaf it holds for a few hours; a document dated outside that
/// window was not made by it when it claims.
fn timestamp_within_leaf(timestamp_ms: u64, leaf: &openssl::x509::X509) -> Result<(), NitroError> {
    let crypto = |e: openssl::error::ErrorStack| NitroError::Crypto(e.to_string());
    let seconds = i64::try_from(timestamp_ms / 1000).unwrap_or(i64::MAX);
    let outside = || NitroError::TimestampOutsideLeaf {
        timestamp_ms,
        not_before: leaf.not_before().to_string(),
        not_after: leaf.not_after().to_string(),
    };
    let at = Asn1Time::from_unix(seconds).map_err(|_| outside())?;
    let early = leaf.not_before().compare(&at).map_err(crypto)? == Ordering::Greater;
    let late = leaf.not_after().compare(&at).map_err(crypto)? == Ordering::Less;
    if early || late {
        return Err(outside());
    }
    Ok(())
}
