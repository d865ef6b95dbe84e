//! ECDSA P-256 with raw `r || s` signatures and raw `x || y` keys, as Intel's quote and
//! collateral carry them.

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};

/// The P-256 public key of an uncompressed point without its 0x04 prefix.
pub fn p256_key(xy: &[u8; 64]) -> Result<PKey<Public>, String> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(|e| e.to_string())?;
    let mut ctx = BigNumContext::new().map_err(|e| e.to_string())?;
    let mut encoded = [0u8; 65];
    encoded[0] = 4;
    encoded[1..].copy_from_slice(xy);
    let point = EcPoint::from_bytes(&group, &encoded, &mut ctx)
        .map_err(|_| "the attestation key is not a point on P-256".to_owned())?;
    let key = EcKey::from_public_key(&group, &point).map_err(|e| e.to_string())?;
    key.check_key()
        .map_err(|_| "the attestation key is not a valid P-256 key".to_owned())?;
    PKey::from_ec_key(key).map_err(|e| e.to_string())
}

/// Verifies `r || s` (32 bytes each, big-endian) over SHA-256(`message`) with a P-256 key.
/// Err when the key is not P-256 or the signature has the wrong size.
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
    let ec = key
        .ec_key()
        .map_err(|_| "the signing key is not an EC key".to_owned())?;
    if ec.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
        return Err("the signing key is not on P-256".into());
    }
    let r = BigNum::from_slice(&signature[..32]).map_err(|e| e.to_string())?;
    let s = BigNum::from_slice(&signature[32..]).map_err(|e| e.to_string())?;
    let sig = EcdsaSig::from_private_components(r, s).map_err(|e| e.to_string())?;
    let digest = openssl::sha::sha256(message);
    Ok(sig.verify(&digest, &ec).unwrap_or(false))
}
