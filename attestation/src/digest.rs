//! Fixed-size digests that serialize as lowercase hex and refuse any other length.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256, Sha384};
use std::fmt;

macro_rules! digest_type {
    ($name:ident, $len:expr, $hasher:ty, $doc:expr) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Byte length of the digest.
            pub const LEN: usize = $len;

            /// Hashes `data`.
            pub fn of(data: &[u8]) -> Self {
                Self(<$hasher>::digest(data).into())
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses exactly `2 * LEN` hex digits.
            pub fn from_hex(text: &str) -> Result<Self, DigestParseError> {
                let bytes = hex::decode(text).map_err(|_| DigestParseError::NotHex)?;
                Self::from_slice(&bytes)
            }

            /// Takes exactly `LEN` bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, DigestParseError> {
                bytes
                    .try_into()
                    .map(Self)
                    .map_err(|_| DigestParseError::Length {
                        expected: $len,
                        actual: bytes.len(),
                    })
            }
        }

        impl Default for $name {
            /// All zeros: the value of a reset PCR.
            fn default() -> Self {
                Self([0; $len])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::from_hex(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_type!(Sha256Digest, 32, Sha256, "A SHA-256 digest.");
digest_type!(Sha384Digest, 48, Sha384, "A SHA-384 digest.");

/// Why a digest could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("digest is not hex")]
    NotHex,
    #[error("digest has {actual} bytes, expected {expected}")]
    Length { expected: usize, actual: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_length_checks() {
        let digest = Sha256Digest::of(b"abc");
        assert_eq!(
            digest.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), digest);
        assert_eq!(
            Sha256Digest::from_hex("abcd"),
            Err(DigestParseError::Length {
                expected: 32,
                actual: 2
            })
        );
        assert_eq!(Sha384Digest::from_hex("zz"), Err(DigestParseError::NotHex));
    }
}
