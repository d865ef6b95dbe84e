//! The AK's signature over a quote: TPMT_SIGNATURE as the TPM returns it, or a bare signature as
//! Azure and the predecessor carry it (`raw_sig`), interpreted by the key type.

use super::wire::{Reader, WireError};
use super::HashAlg;
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};

const ALG_RSASSA: u16 = 0x0014;
const ALG_RSAPSS: u16 = 0x0016;
const ALG_ECDSA: u16 = 0x0018;

/// A quote signature with its scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuoteSignature {
    RsaSsa {
        hash: HashAlg,
        signature: Vec<u8>,
    },
    RsaPss {
        hash: HashAlg,
        signature: Vec<u8>,
    },
    Ecdsa {
        hash: HashAlg,
        r: Vec<u8>,
        s: Vec<u8>,
    },
}

/// Why a signature could not be checked (a wrong signature is `Ok(false)`, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("signature: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error("signature scheme {scheme} does not fit a {key} key")]
    KeyMismatch {
        scheme: &'static str,
        key: &'static str,
    },
    #[error("raw signature of {0} bytes cannot be interpreted for this key")]
    RawLength(usize),
}

impl QuoteSignature {
    /// Parses TPMT_SIGNATURE (TPM 2.0 Part 2, 11.3.4).
    pub fn from_tpmt(bytes: &[u8]) -> Result<Self, SignatureError> {
        let mut r = Reader::new("TPMT_SIGNATURE", bytes);
        let alg = r.u16("sigAlg")?;
        let hash_raw = r.u16("hash")?;
        let hash =
            HashAlg::from_tpm(hash_raw).ok_or_else(|| r.unsupported("hash", hash_raw.into()))?;
        let signature = match alg {
            ALG_RSASSA => Self::RsaSsa {
                hash,
                signature: r.tpm2b("signature", 512)?.to_vec(),
            },
            ALG_RSAPSS => Self::RsaPss {
                hash,
                signature: r.tpm2b("signature", 512)?.to_vec(),
            },
            ALG_ECDSA => Self::Ecdsa {
                hash,
                r: r.tpm2b("signatureR", 66)?.to_vec(),
                s: r.tpm2b("signatureS", 66)?.to_vec(),
            },
            other => return Err(r.unsupported("sigAlg", other.into()).into()),
        };
        r.finish()?;
        Ok(signature)
    }

    /// Interprets a bare signature: RSASSA-PKCS1-v1_5 with SHA-256 for RSA keys (what Azure's
    /// vTPM AK and the predecessor use); for EC keys, `r || s` of the curve's size or DER.
    pub fn from_raw(bytes: &[u8], key: &PKey<Public>) -> Result<Self, SignatureError> {
        match key.id() {
            Id::RSA => Ok(Self::RsaSsa {
                hash: HashAlg::Sha256,
                signature: bytes.to_vec(),
            }),
            Id::EC => {
                let field = key.ec_key()?.group().degree().div_ceil(8) as usize;
                let hash = if field > 32 {
                    HashAlg::Sha384
                } else {
                    HashAlg::Sha256
                };
                if bytes.len() == 2 * field {
                    let (r, s) = bytes.split_at(field);
                    return Ok(Self::Ecdsa {
                        hash,
                        r: r.to_vec(),
                        s: s.to_vec(),
                    });
                }
                let sig = EcdsaSig::from_der(bytes)
                    .map_err(|_| SignatureError::RawLength(bytes.len()))?;
                Ok(Self::Ecdsa {
                    hash,
                    r: sig.r().to_vec(),
                    s: sig.s().to_vec(),
                })
            }
            _ => Err(SignatureError::RawLength(bytes.len())),
        }
    }

    /// The hash algorithm the signature was made over (also used for the quote's PCR digest).
    pub fn hash(&self) -> HashAlg {
        match self {
            Self::RsaSsa { hash, .. } | Self::RsaPss { hash, .. } | Self::Ecdsa { hash, .. } => {
                *hash
            }
        }
    }

    /// Checks the signature over `message` with `key`.
    pub fn verify(&self, key: &PKey<Public>, message: &[u8]) -> Result<bool, SignatureError> {
        let key_kind = match key.id() {
            Id::RSA => "RSA",
            Id::EC => "EC",
            _ => "unsupported",
        };
        let mismatch = |scheme| SignatureError::KeyMismatch {
            scheme,
            key: key_kind,
        };
        match self {
            Self::RsaSsa { hash, signature } => {
                if key.id() != Id::RSA {
                    return Err(mismatch("RSASSA"));
                }
                let mut verifier = Verifier::new(hash.message_digest(), key)?;
                verifier.set_rsa_padding(Padding::PKCS1)?;
                verifier.update(message)?;
                Ok(verifier.verify(signature).unwrap_or(false))
            }
            Self::RsaPss { hash, signature } => {
                if key.id() != Id::RSA {
                    return Err(mismatch("RSAPSS"));
                }
                let mut verifier = Verifier::new(hash.message_digest(), key)?;
                verifier.set_rsa_padding(Padding::PKCS1_PSS)?;
                // TPMs use the largest salt the key allows; AUTO accepts any valid salt length.
                verifier.set_rsa_pss_saltlen(RsaPssSaltlen::custom(-2))?;
                verifier.update(message)?;
                Ok(verifier.verify(signature).unwrap_or(false))
            }
            Self::Ecdsa { hash, r, s } => {
                if key.id() != Id::EC {
                    return Err(mismatch("ECDSA"));
                }
                let sig = EcdsaSig::from_private_components(
                    BigNum::from_slice(r)?,
                    BigNum::from_slice(s)?,
                )?;
                let digest = hash.digest(message);
                let ec = key.ec_key()?;
                Ok(sig.verify(&digest, &ec).unwrap_or(false))
            }
        }
    }
}
