//! The COSE_Sign1 envelope (RFC 9052): `[protected: bstr {1: -35}, unprotected: {}, payload:
//! bstr, signature: bstr]`, optionally under CBOR tag 18. The Nitro PKI signs with ES384 only:
//! ECDSA P-384 over SHA-384 of the Sig_structure `["Signature1", protected, h'', payload]`, the
//! signature being r || s, 48 bytes each.

use super::NitroError;
use coset::iana::Algorithm;
use coset::{CborSerializable, CoseSign1, RegisteredLabelWithPrivate, TaggedCborSerializable};
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::x509::X509;

/// ES384's r || s.
const SIGNATURE_LEN: usize = 96;

/// A parsed COSE_Sign1 whose header says ES384; its signature is not checked yet.
pub(super) struct Sign1 {
    inner: CoseSign1,
}

impl Sign1 {
    /// Parses tagged or untagged COSE_Sign1 bytes (nothing may follow them) and checks the header.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, NitroError> {
        let parsed = if bytes.first() == Some(&0xd2) {
            CoseSign1::from_tagged_slice(bytes)
        } else {
            CoseSign1::from_slice(bytes)
        };
        let inner = parsed.map_err(|e| NitroError::Cose(e.to_string()))?;
        check_headers(&inner)?;
        if inner.payload.is_none() {
            return Err(NitroError::DetachedPayload);
        }
        if inner.signature.len() != SIGNATURE_LEN {
            return Err(NitroError::SignatureLength(inner.signature.len()));
        }
        Ok(Self { inner })
    }

    /// The signed payload (the CBOR attestation document).
    pub(super) fn payload(&self) -> &[u8] {
        self.inner.payload.as_deref().unwrap_or_default()
    }

    /// Checks the ES384 signature over the Sig_structure with `signer`'s key, which must be an
    /// EC P-384 key.
    pub(super) fn verify(&self, signer: &X509) -> Result<(), NitroError> {
        let key = signer
            .public_key()
            .and_then(|key| key.ec_key())
            .map_err(|e| NitroError::LeafKey(e.to_string()))?;
        let curve = key.group().curve_name();
        if curve != Some(Nid::SECP384R1) {
            return Err(NitroError::LeafKey(format!(
                "the curve is {curve:?}, not P-384"
            )));
        }
        let (r, s) = self.inner.signature.split_at(SIGNATURE_LEN / 2);
        let signature = BigNum::from_slice(r)
            .and_then(|r| Ok((r, BigNum::from_slice(s)?)))
            .and_then(|(r, s)| EcdsaSig::from_private_components(r, s))
            .map_err(|e| NitroError::Crypto(e.to_string()))?;
        // The Sig_structure embeds the protected header's original bytes, as signed.
        let digest = openssl::sha::sha384(&self.inner.tbs_data(&[]));
        match signature.verify(&digest, &key) {
            Ok(true) => Ok(()),
            _ => Err(NitroError::BadSignature),
        }
    }
}

/// The protected header must name ES384 and nothing the verifier would have to understand; the
/// unprotected header must be empty.
fn check_headers(sign1: &CoseSign1) -> Result<(), NitroError> {
    let protected = &sign1.protected.header;
    let es384 = RegisteredLabelWithPrivate::Assigned(Algorithm::ES384);
    match &protected.alg {
        Some(alg) if *alg == es384 => {}
        Some(alg) => return Err(NitroError::UnsupportedAlgorithm(algorithm_name(alg))),
        None => return Err(NitroError::UnsupportedAlgorithm("none".into())),
    }
    if !protected.crit.is_empty() {
        return Err(NitroError::CriticalHeader);
    }
    // Nothing unprotected is signed; Nitro documents leave that header empty, so anything there
    // is someone else's addition.
    if !sign1.unprotected.is_empty() {
        return Err(NitroError::UnprotectedHeader);
    }
    Ok(())
}

fn algorithm_name(alg: &coset::Algorithm) -> String {
    match alg {
        RegisteredLabelWithPrivate::Assigned(known) => format!("{known:?} ({})", *known as i64),
        RegisteredLabelWithPrivate::PrivateUse(value) => format!("private-use {value}"),
        RegisteredLabelWithPrivate::Text(text) => format!("{text:?}"),
    }
}
