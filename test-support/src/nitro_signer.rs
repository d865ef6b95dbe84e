//! A TEST-ONLY stand-in for the Nitro hypervisor's attestation PKI: a P-384 root -> intermediate
//! -> leaf chain generated at run time (every name says TEST ONLY), and attestation documents
//! signed with that leaf exactly as a NitroTPM signs them: an untagged COSE_Sign1 with protected
//! header {1: -35} (ES384), an empty unprotected header, the CBOR AttestationDocument as payload
//! (an indefinite-length map in the NSM's field order, PCRs under `nitrotpm_pcrs`) and r || s.
//! Verifiers trust its root only when a test names it.
//!
//! The CBOR is written here by hand, independently of the ciborium/coset decoder the verifier uses,
//! so the two check each other.

use anyhow::Result;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::collections::BTreeMap;

/// COSE algorithm ES384, the Nitro PKI's.
pub const ES384: i64 = -35;

/// Generated keys and certificates.
pub struct NitroTestSigner {
    root: X509,
    intermediate: X509,
    leaf: X509,
    leaf_key: PKey<Private>,
}

/// An attestation document's fields before encoding; tests change them to build bad documents.
#[derive(Debug, Clone)]
pub struct NitroPayload {
    pub module_id: String,
    pub digest: String,
    pub timestamp_ms: u64,
    /// `nitrotpm_pcrs` (NitroTPM) or `pcrs` (Nitro Enclaves).
    pub pcrs_field: &'static str,
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub certificate: Vec<u8>,
    pub cabundle: Vec<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

fn p384_key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::SECP384R1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn certificate(
    common_name: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    valid: (i64, i64),
) -> Result<X509> {
    crate::certs::certificate(crate::certs::CertSpec {
        common_name,
        organization: "TEST ONLY - not AWS",
        key,
        issuer,
        ca,
        extensions: vec![],
        digest: MessageDigest::sha384(),
        valid,
    })
}

impl NitroTestSigner {
    /// A fresh chain whose root is "TEST-ONLY Nitro root".
    pub fn new() -> Result<Self> {
        Self::with_root_name("TEST-ONLY Nitro root")
    }

    /// A fresh chain whose root has the common name `root_common_name` (e.g. an impostor calling
    /// itself "aws.nitro-enclaves"; the organization still says TEST ONLY). Like the hypervisor's,
    /// the leaf is short-lived: valid from a minute ago for three hours.
    pub fn with_root_name(root_common_name: &str) -> Result<Self> {
        let now = now();
        let long = (now - 86_400, now + 10 * 365 * 86_400);
        let root_key = p384_key()?;
        let root = certificate(root_common_name, &root_key, None, true, long)?;
        let intermediate_key = p384_key()?;
        let intermediate = certificate(
            "TEST-ONLY Nitro intermediate",
            &intermediate_key,
            Some((&root, &root_key)),
            true,
            long,
        )?;
        let leaf_key = p384_key()?;
        let leaf = certificate(
            "TEST-ONLY Nitro hypervisor",
            &leaf_key,
            Some((&intermediate, &intermediate_key)),
            false,
            (now - 60, now + 3 * 3600),
        )?;
        Ok(Self {
            root,
            intermediate,
            leaf,
            leaf_key,
        })
    }

    /// The TEST-ONLY root, for a verifier's explicitly named test roots.
    pub fn root(&self) -> X509 {
        self.root.clone()
    }

    /// The payload a NitroTPM would sign for these inputs: SHA384 PCRs, this signer's leaf and
    /// cabundle [root, intermediate].
    pub fn payload(
        &self,
        pcrs: &BTreeMap<u8, Vec<u8>>,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
        timestamp_ms: u64,
    ) -> NitroPayload {
        let der = |cert: &X509| cert.to_der().expect("DER of a generated certificate");
        NitroPayload {
            module_id: "i-0123456789abcdef0-TEST-ONLY".into(),
            digest: "SHA384".into(),
            timestamp_ms,
            pcrs_field: "nitrotpm_pcrs",
            pcrs: pcrs.clone(),
            certificate: der(&self.leaf),
            cabundle: vec![der(&self.root), der(&self.intermediate)],
            public_key: public_key.map(<[u8]>::to_vec),
            user_data: user_data.map(<[u8]>::to_vec),
            nonce: nonce.map(<[u8]>::to_vec),
        }
    }

    /// A signed document, as the NitroTPM vendor command returns it.
    pub fn document(
        &self,
        pcrs: &BTreeMap<u8, Vec<u8>>,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
        timestamp_ms: u64,
    ) -> Vec<u8> {
        let payload = self.payload(pcrs, user_data, nonce, public_key, timestamp_ms);
        self.sign(&payload.to_cbor(), ES384)
    }

    /// An untagged COSE_Sign1 over `payload` whose protected header names `alg`, signed with
    /// this signer's leaf key (ECDSA P-384, SHA-384) whatever `alg` says.
    pub fn sign(&self, payload: &[u8], alg: i64) -> Vec<u8> {
        let mut protected = Vec::new();
        head(&mut protected, MAP, 1);
        int(&mut protected, 1);
        int(&mut protected, alg);
        let mut to_be_signed = Vec::new();
        head(&mut to_be_signed, ARRAY, 4);
        text(&mut to_be_signed, "Signature1");
        bytes(&mut to_be_signed, &protected);
        bytes(&mut to_be_signed, &[]);
        bytes(&mut to_be_signed, payload);
        let signature = self.raw_signature(&to_be_signed);
        let mut out = Vec::new();
        head(&mut out, ARRAY, 4);
        bytes(&mut out, &protected);
        head(&mut out, MAP, 0);
        bytes(&mut out, payload);
        bytes(&mut out, &signature);
        out
    }

    /// ECDSA P-384 over SHA-384 of `message`, as r || s (48 bytes each).
    fn raw_signature(&self, message: &[u8]) -> Vec<u8> {
        let digest = openssl::sha::sha384(message);
        let key = self.leaf_key.ec_key().expect("EC leaf key");
        let signature = EcdsaSig::sign(&digest, &key).expect("ECDSA P-384 signature");
        let mut out = Vec::with_capacity(96);
        for component in [signature.r(), signature.s()] {
            let padded = component.to_vec_padded(48).expect("48-byte component");
            out.extend_from_slice(&padded);
        }
        out
    }
}

impl NitroPayload {
    /// The CBOR map as the hypervisor writes it: indefinite length, fields in the NSM's order,
    /// absent optional fields as null.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = vec![0xbf];
        text(&mut out, "module_id");
        text(&mut out, &self.module_id);
        text(&mut out, "digest");
        text(&mut out, &self.digest);
        text(&mut out, "timestamp");
        head(&mut out, UNSIGNED, self.timestamp_ms);
        text(&mut out, self.pcrs_field);
        head(&mut out, MAP, self.pcrs.len() as u64);
        for (index, value) in &self.pcrs {
            head(&mut out, UNSIGNED, u64::from(*index));
            bytes(&mut out, value);
        }
        text(&mut out, "certificate");
        bytes(&mut out, &self.certificate);
        text(&mut out, "cabundle");
        head(&mut out, ARRAY, self.cabundle.len() as u64);
        for der in &self.cabundle {
            bytes(&mut out, der);
        }
        for (name, value) in [
            ("public_key", &self.public_key),
            ("user_data", &self.user_data),
            ("nonce", &self.nonce),
        ] {
            text(&mut out, name);
            match value {
                Some(value) => bytes(&mut out, value),
                None => out.push(NULL),
            }
        }
        out.push(0xff);
        out
    }
}

const UNSIGNED: u8 = 0;
const NEGATIVE: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const NULL: u8 = 0xf6;

/// A CBOR item head in its shortest form (RFC 8949, 4.2.1).
fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let major = major << 5;
    match value {
        0..=23 => out.push(major | value as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, value as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

fn int(out: &mut Vec<u8>, value: i64) {
    if value >= 0 {
        head(out, UNSIGNED, value as u64);
    } else {
        head(out, NEGATIVE, (-1 - value) as u64);
    }
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    head(out, BYTES, value.len() as u64);
    out.extend_from_slice(value);
}

fn text(out: &mut Vec<u8>, value: &str) {
    head(out, TEXT, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}
