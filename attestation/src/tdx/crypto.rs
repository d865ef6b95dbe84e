//! ECDSA P-256 with raw `r || s` signatures and raw `x || y` keys, as Intel's quote and
//! collateral carry them.

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
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

fn p256() -> Result<&'static EcGroup, CryptoError> {
    static GROUP: OnceLock<Option<EcGroup>> = OnceLock::new();
    GROUP
        .get_or_init(|| EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ok())
        .as_ref()
        .ok_or(CryptoError::NoP256)
}

/// The P-256 public key of an uncompressed point without its 0x04 prefix. The point must be on
/// the curve (OpenSSL checks this when decoding it).
pub fn p256_key(xy: &[u8; 64]) -> Result<PKey<Public>, CryptoError> {
    let group = p256()?;
    let mut ctx = BigNumContext::new()?;
    let mut encoded = [0u8; 65];
    encoded[0] = 4;
    encoded[1..].copy_from_slice(xy);
    let point =
        EcPoint::from_bytes(group, &encoded, &mut ctx).map_err(|_| CryptoError::NotOnCurve)?;
    let key = EcKey::from_public_key(group, &point)?;
    Ok(PKey::from_ec_key(key)?)
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
