//! ECDSA P-256 with raw `r || s` signatures and raw `x || y` keys, as Intel's quote and
//! collateral carry them.

use crate::memo::Memo;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcKeyRef, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::Verifier;
use std::sync::OnceLock;

/// Why a raw P-256 key or signature could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CryptoError {
    #[error("P-256 is not available in this OpenSSL")]
    NoP256,
    #[error("the attestation key is not a point on P-256")]
    NotOnCurve,
    #[error("signature is {0} bytes, expected 64 (r || s)")]
    SignatureLength(usize),
    #[error("the signing key is not a P-256 key")]
    NotP256Key,
    #[error("{0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

pub(crate) fn p256() -> Result<&'static EcGroup, CryptoError> {
    static GROUP: OnceLock<Option<EcGroup>> = OnceLock::new();
    GROUP
        .get_or_init(|| EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ok())
        .as_ref()
        .ok_or(CryptoError::NoP256)
}

/// The P-256 public key of an uncompressed point without its 0x04 prefix. The point must be on
/// the curve (OpenSSL checks this when decoding it).
pub fn p256_key(xy: &[u8; 64]) -> Result<PKey<Public>, CryptoError> {
    Ok(PKey::from_ec_key(p256_ec_key(xy)?)?)
}

/// [`p256_key`] as an `EcKey`, for [`verify_p256_raw_ec`].
pub fn p256_ec_key(xy: &[u8; 64]) -> Result<EcKey<Public>, CryptoError> {
    let group = p256()?;
    let mut ctx = BigNumContext::new()?;
    let mut encoded = [0u8; 65];
    encoded[0] = 4;
    encoded[1..].copy_from_slice(xy);
    let point =
        EcPoint::from_bytes(group, &encoded, &mut ctx).map_err(|_| CryptoError::NotOnCurve)?;
    Ok(EcKey::from_public_key(group, &point)?)
}

/// [`verify_p256_raw`] with an `EcKey` on P-256, through OpenSSL's ECDSA directly: the EVP
/// route sets up a context and copies the key into a provider per call, which costs as much
/// as a third of the check.
pub fn verify_p256_raw_ec(
    key: &EcKeyRef<Public>,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, CryptoError> {
    verify_p256_digest_ec(key, &openssl::sha::sha256(message), signature)
}

/// [`verify_p256_raw_ec`] over a message whose SHA-256 the caller already has (it also names
/// the message in a per-process memo), so that the message is hashed once.
pub fn verify_p256_digest_ec(
    key: &EcKeyRef<Public>,
    digest: &[u8; 32],
    signature: &[u8],
) -> Result<bool, CryptoError> {
    if signature.len() != 64 {
        return Err(CryptoError::SignatureLength(signature.len()));
    }
    if key.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
        return Err(CryptoError::NotP256Key);
    }
    let r = BigNum::from_slice(&signature[..32])?;
    let s = BigNum::from_slice(&signature[32..])?;
    let sig = EcdsaSig::from_private_components(r, s)?;
    Ok(sig.verify(digest, key).unwrap_or(false))
}

/// Verifies `r || s` (32 bytes each, big-endian) over SHA-256(`message`) with a 256-bit EC key.
/// Err when the key is not a 256-bit EC key or the signature has the wrong size.
pub fn verify_p256_raw(
    key: &PKey<Public>,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, CryptoError> {
    if signature.len() != 64 {
        return Err(CryptoError::SignatureLength(signature.len()));
    }
    if key.id() != Id::EC || key.bits() != 256 {
        return Err(CryptoError::NotP256Key);
    }
    let r = BigNum::from_slice(&signature[..32])?;
    let s = BigNum::from_slice(&signature[32..])?;
    let der = EcdsaSig::from_private_components(r, s).and_then(|sig| sig.to_der())?;
    let mut verifier = Verifier::new(MessageDigest::sha256(), key)?;
    Ok(verifier.verify_oneshot(&der, message).unwrap_or(false))
}

/// [`verify_p256_raw`] for a signature that recurs, remembered per process by the SHA-256 of
/// (`key_id`, `message`, `signature`), where `key_id` identifies `key` by content (the SHA-256 of
/// the certificate that carries it). A platform's QE report and its signature repeat in every
/// quote it makes, so a verifier checks them once. Errors are not remembered.
pub fn verify_p256_raw_remembered(
    key_id: &[u8; 32],
    key: &EcKeyRef<Public>,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, CryptoError> {
    static MEMO: Memo<[u8; 32], bool> = Memo::new(1024);
    // The message is hashed once: its digest names it in the memo and is what ECDSA signs.
    let message_digest = openssl::sha::sha256(message);
    let mut hasher = openssl::sha::Sha256::new();
    for part in [&key_id[..], &message_digest, signature] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    MEMO.get_or_try(hasher.finish(), || {
        verify_p256_digest_ec(key, &message_digest, signature)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::EcKey;
    use openssl::pkey::Private;

    /// A fresh P-256 key, its public half and a raw `r || s` signature over `message`.
    fn signed(message: &[u8]) -> (EcKey<Public>, Vec<u8>) {
        let key = EcKey::generate(p256().unwrap()).unwrap();
        let private: PKey<Private> = PKey::from_ec_key(key.clone()).unwrap();
        let der = openssl::sign::Signer::new(MessageDigest::sha256(), &private)
            .unwrap()
            .sign_oneshot_to_vec(message)
            .unwrap();
        let sig = EcdsaSig::from_der(&der).unwrap();
        let mut raw = sig.r().to_vec_padded(32).unwrap();
        raw.extend(sig.s().to_vec_padded(32).unwrap());
        let public = EcKey::from_public_key(key.group(), key.public_key()).unwrap();
        let evp = PKey::from_ec_key(public.clone()).unwrap();
        assert!(verify_p256_raw(&evp, message, &raw).unwrap());
        (public, raw)
    }

    #[test]
    fn remembered_verification_never_turns_a_failure_into_a_success() {
        let message = b"QE report".to_vec();
        let (good_key, signature) = signed(&message);
        let (other_key, _) = signed(&message);
        let (good_id, other_id) = ([1u8; 32], [2u8; 32]);
        let check = |id, key| verify_p256_raw_remembered(id, key, &message, &signature).unwrap();
        for _ in 0..2 {
            assert!(check(&good_id, &good_key));
            assert!(!check(&other_id, &other_key));
        }
        let mut forged = signature.clone();
        forged[63] ^= 1;
        for _ in 0..2 {
            assert!(!verify_p256_raw_remembered(&good_id, &good_key, &message, &forged).unwrap());
            assert!(
                !verify_p256_raw_remembered(&good_id, &good_key, b"other", &signature).unwrap()
            );
        }
        assert!(
            verify_p256_raw_remembered(&good_id, &good_key, &message, &signature[..63]).is_err()
        );
    }
}
