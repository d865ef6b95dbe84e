//! Binary fields in JSON: written as standard base64, read as standard or URL-safe base64 (with or
//! without padding) so evidence from the predecessor and from Azure tooling reads as is.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest binary field accepted in evidence (an event log is the largest thing it carries).
pub const MAX_FIELD_BYTES: usize = 4 << 20;

/// Bytes that serialize as base64.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Self(v.to_vec())
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

/// Decodes base64 in any of the four common alphabets/paddings.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode_base64(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if text.len() > MAX_FIELD_BYTES / 3 * 4 + 4 {
            return Err(serde::de::Error::custom(format!(
                "binary field is larger than {MAX_FIELD_BYTES} bytes"
            )));
        }
        decode_base64(&text)
            .map(Bytes)
            .ok_or_else(|| serde::de::Error::custom("binary field is not base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_base64_flavour() {
        for text in ["+/8=", "-_8=", "+/8", "-_8"] {
            assert_eq!(decode_base64(text), Some(vec![0xfb, 0xff]), "{text}");
        }
        assert_eq!(decode_base64("not base64!"), None);
        let json = serde_json::to_string(&Bytes(vec![1, 2, 3])).unwrap();
        assert_eq!(json, "\"AQID\"");
    }
}
