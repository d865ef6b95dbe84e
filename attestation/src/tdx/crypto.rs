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

fn p256() -> Result<&'static EcGroup, String> {
    static GROUP: OnceLock<Option<EcGroup>> = OnceLock::new();
    GROUP
        .get_or_init(|| EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ok())
        .as_ref()
        .ok_or_else(|| "P-256 is not available in this OpenSSL".to_owned())
}

/// The P-256 public key of an uncompressed point without its 0x04 prefix. The point must be on
/// the curve (OpenSSL checks this when decoding it).
pub fn p256_key(xy: &[u8; 64]) -> Result<PKey<Public>, String> {
    let group = p256()?;
    let mut ctx = BigNumContext::new().map_err(|e| e.to_string())?;
    let mut encoded = [0u8; 65];
    encoded[0] = 4;
    encoded[1..].copy_from_slice(xy);
    let point = EcPoint::from_bytes(group, &encoded, &mut ctx)
        .map_err(|_| "the attestation key is not a point on P-256".to_owned())?;
    let key = EcKey::from_public_key(group, &point).map_err(|e| e.to_string())?;
    PKey::from_ec_key(key).map_err(|e| e.to_string())
}

/// Verifies `r || s` (32 bytes each, big-endian) over SHA-256(`message`) with a 256-bit EC key.
/// Err when the key is not a 256-bit EC key or the signature has the wrong size.
pub fn verify_p256_raw(
    key: &PKey<Public>,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, String> {
    if signature.len() != 64 {
        return Err(format!(
            "signature is {} bytes, expected 64 (r || s)",
            signature.len()
        ));
    }
    if key.id() != Id::EC || key.bits() != 256 {
        return Err("the signing key is not a P-256 key".into());
    }
    let r = BigNum::from_slice(&signature[..32]).map_err(|e| e.to_string())?;
    let s = BigNum::from_slice(&signature[32..]).map_err(|e| e.to_string())?;
    let der = EcdsaSig::from_private_components(r, s)
        .and_then(|sig| sig.to_der())
        .map_err(|e| e.to_string())?;
    let mut verifier = Verifier::new(MessageDigest::sha256(), key).map_err(|e| e.to_string())?;
    Ok(verifier.verify_oneshot(&der, message).unwrap_or(false))
}
