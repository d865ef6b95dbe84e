//! The attestation key's public part: TPMT_PUBLIC as the TPM gives it (with its attributes, so a
//! verifier can insist on a restricted signing key), or a plain SubjectPublicKeyInfo when a cloud
//! provides the AK that way (Azure's `var_data` JWK, the predecessor's PEM).

use super::wire::{Reader, WireError};
use super::HashAlg;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;

const ALG_RSA: u16 = 0x0001;
const ALG_ECC: u16 = 0x0023;
const ALG_NULL: u16 = 0x0010;
const ECC_NIST_P256: u16 = 0x0003;
const ECC_NIST_P384: u16 = 0x0004;

/// TPMA_OBJECT bits a restricted attestation key must have.
pub mod attributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN_ENCRYPT: u32 = 1 << 18;
}

/// Why an AK public key is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PublicKeyError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("AK public key: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error("AK public key: RSA exponent must be 65537 or 0 (default), got {0}")]
    Exponent(u32),
    #[error("AK public key is neither PEM, DER SubjectPublicKeyInfo nor TPM2B_PUBLIC")]
    Format,
}

/// An AK public key with what is known about it.
#[derive(Debug, Clone)]
pub struct AkPublic {
    pub key: PKey<Public>,
    /// TPMA_OBJECT, when the key came as TPMT_PUBLIC.
    pub object_attributes: Option<u32>,
    /// The TPMT_PUBLIC bytes, when known (they define the key's TPM name).
    pub tpmt_public: Option<Vec<u8>>,
    pub name_alg: Option<HashAlg>,
}

impl AkPublic {
    /// Reads a key in any of the accepted encodings: PEM SPKI, DER SPKI, TPM2B_PUBLIC or
    /// TPMT_PUBLIC.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PublicKeyError> {
        if bytes.starts_with(b"-----BEGIN") {
            return Ok(Self::spki(PKey::public_key_from_pem(bytes)?));
        }
        if bytes.len() > 2
            && usize::from(u16::from_be_bytes([bytes[0], bytes[1]])) == bytes.len() - 2
        {
            if let Ok(key) = Self::from_tpmt_public(&bytes[2..]) {
                return Ok(key);
            }
        }
        if let Ok(key) = Self::from_tpmt_public(bytes) {
            return Ok(key);
        }
        PKey::public_key_from_der(bytes)
            .map(Self::spki)
            .map_err(|_| PublicKeyError::Format)
    }

    fn spki(key: PKey<Public>) -> Self {
        Self {
            key,
            object_attributes: None,
            tpmt_public: None,
            name_alg: None,
        }
    }

    /// Parses TPMT_PUBLIC (TPM 2.0 Part 2, 12.2.4) for RSA and ECC signing keys.
    pub fn from_tpmt_public(bytes: &[u8]) -> Result<Self, PublicKeyError> {
        let mut r = Reader::new("TPMT_PUBLIC", bytes);
        let kind = r.u16("type")?;
        let name_alg_raw = r.u16("nameAlg")?;
        let name_alg = HashAlg::from_tpm(name_alg_raw);
        let object_attributes = r.u32("objectAttributes")?;
        r.tpm2b("authPolicy", 64)?;
        let symmetric = r.u16("parameters.symmetric")?;
        if symmetric != ALG_NULL {
            r.u16("parameters.symmetric.keyBits")?;
            r.u16("parameters.symmetric.mode")?;
        }
        let scheme = r.u16("parameters.scheme")?;
        if scheme != ALG_NULL {
            r.u16("parameters.scheme.hashAlg")?;
        }
        let key = match kind {
            ALG_RSA => {
                let _key_bits = r.u16("parameters.keyBits")?;
                let exponent = r.u32("parameters.exponent")?;
                let exponent = match exponent {
                    0 | 65537 => 65537,
                    other => return Err(PublicKeyError::Exponent(other)),
                };
                let modulus = r.tpm2b("unique.rsa", 512)?;
                let rsa = Rsa::from_public_components(
                    BigNum::from_slice(modulus)?,
                    BigNum::from_u32(exponent)?,
                )?;
                PKey::from_rsa(rsa)?
            }
            ALG_ECC => {
                let curve = r.u16("parameters.curveID")?;
                let kdf = r.u16("parameters.kdf")?;
                if kdf != ALG_NULL {
                    r.u16("parameters.kdf.hashAlg")?;
                }
                let nid = match curve {
                    ECC_NIST_P256 => Nid::X9_62_PRIME256V1,
                    ECC_NIST_P384 => Nid::SECP384R1,
                    other => return Err(r.unsupported("parameters.curveID", other.into()).into()),
                };
                let x = r.tpm2b("unique.ecc.x", 66)?;
                let y = r.tpm2b("unique.ecc.y", 66)?;
                let group = EcGroup::from_curve_name(nid)?;
                let (x, y) = (BigNum::from_slice(x)?, BigNum::from_slice(y)?);
                // OpenSSL's EC_KEY_set_public_key_affine_coordinates refuses points off the
                // curve and runs EC_KEY_check_key itself; a second check_key here doubled the
                // cost of reading the AK (two scalar multiplications) for nothing.
                let ec = EcKey::from_public_key_affine_coordinates(&group, &x, &y)?;
                PKey::from_ec_key(ec)?
            }
            other => return Err(r.unsupported("type", other.into()).into()),
        };
        r.finish()?;
        Ok(Self {
            key,
            object_attributes: Some(object_attributes),
            tpmt_public: Some(bytes.to_vec()),
            name_alg,
        })
    }

    /// True when the TPM attributes say: restricted signing key that never left this TPM.
    /// `None` when the key came without attributes (the caller must trust its source instead).
    pub fn is_restricted_signing_key(&self) -> Option<bool> {
        use attributes::*;
        let required = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN_ENCRYPT;
        self.object_attributes
            .map(|a| a & required == required && a & DECRYPT == 0)
    }

    /// DER SubjectPublicKeyInfo, the canonical encoding used in bindings when no TPMT_PUBLIC is
    /// known.
    pub fn spki_der(&self) -> Result<Vec<u8>, PublicKeyError> {
        Ok(self.key.public_key_to_der()?)
    }
}

/// An RSA public key from a JWK's base64url `n` and `e` (Azure's HCLAkPub).
pub fn rsa_from_jwk(n: &[u8], e: &[u8]) -> Result<PKey<Public>, PublicKeyError> {
    let rsa = Rsa::from_public_components(BigNum::from_slice(n)?, BigNum::from_slice(e)?)?;
    Ok(PKey::from_rsa(rsa)?)
}
