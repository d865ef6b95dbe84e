//! What a deploy hands the agent through the platform (cloud user data / metadata, QEMU fw_cfg):
//! one typed document shared by its writer (`cvm-cli deploy-*`) and its reader (`cvm-agent
//! provision`). The host and the cloud's metadata service are adversaries: everything here is
//! bounded, and the agent measures what it uses (a salted commitment to the token in PCR 23)
//! before using it.

use serde::{Deserialize, Serialize};

/// Largest user-data document accepted (AWS allows 16 KiB of user data; Azure 64 KiB).
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;
/// Shortest and longest API token accepted (the CLI writes 64 hex digits).
pub const TOKEN_LEN: std::ops::RangeInclusive<usize> = 32..=128;
/// The GCP metadata attribute (instance `metadata.items[].key`) that carries the document.
pub const GCP_METADATA_KEY: &str = "cvm-agent";

/// The provisioning document: JSON, `{"cvm_api_token": "<token>"}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserData {
    /// The agent's API token (update routes); printable ASCII, no whitespace.
    pub cvm_api_token: String,
    /// Where the key of `/data` comes from (absent: the image's default, `ephemeral`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_unlock: Option<crate::workload::DataUnlock>,
}

impl std::fmt::Debug for UserData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserData")
            .field("cvm_api_token", &"<redacted>")
            .field("data_unlock", &self.data_unlock)
            .finish()
    }
}

/// Why a provisioning document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserDataError {
    #[error("user data is {0} bytes, more than the {MAX_USER_DATA_BYTES} accepted")]
    TooLarge(usize),
    #[error("user data is not a cvm-agent document ({{\"cvm_api_token\": ...}}): {0}")]
    Json(String),
    #[error("cvm_api_token must be {min}..={max} printable ASCII characters without whitespace", min = TOKEN_LEN.start(), max = TOKEN_LEN.end())]
    BadToken,
}

impl UserData {
    /// The document for `token`; refuses a token the agent would refuse.
    pub fn new(token: &str) -> Result<Self, UserDataError> {
        let data = Self {
            cvm_api_token: token.to_owned(),
            data_unlock: None,
        };
        data.check()?;
        Ok(data)
    }

    /// Parses and checks a document as the platform delivered it.
    pub fn parse(bytes: &[u8]) -> Result<Self, UserDataError> {
        if bytes.len() > MAX_USER_DATA_BYTES {
            return Err(UserDataError::TooLarge(bytes.len()));
        }
        let data: Self =
            serde_json::from_slice(bytes).map_err(|e| UserDataError::Json(e.to_string()))?;
        data.check()?;
        Ok(data)
    }

    /// The JSON the deploy sends.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings serializes")
    }

    fn check(&self) -> Result<(), UserDataError> {
        let token = &self.cvm_api_token;
        if !TOKEN_LEN.contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UserDataError::BadToken);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_documents() {
        let token = "ab".repeat(32);
        let doc = UserData::new(&token).unwrap();
        assert_eq!(UserData::parse(doc.to_json().as_bytes()).unwrap(), doc);
        assert!(
            !format!("{doc:?}").contains(&token),
            "Debug leaks the token"
        );
        assert_eq!(UserData::new("short"), Err(UserDataError::BadToken));
        assert_eq!(
            UserData::new(&format!("{} x", "a".repeat(40))),
            Err(UserDataError::BadToken)
        );
        let extra = format!(r#"{{"cvm_api_token":"{token}","x":1}}"#);
        assert!(matches!(
            UserData::parse(extra.as_bytes()),
            Err(UserDataError::Json(_))
        ));
        assert_eq!(
            UserData::parse(&vec![b' '; MAX_USER_DATA_BYTES + 1]),
            Err(UserDataError::TooLarge(MAX_USER_DATA_BYTES + 1))
        );
        assert!(matches!(
            UserData::parse(b"#cloud-config\n"),
            Err(UserDataError::Json(_))
        ));
    }
}
