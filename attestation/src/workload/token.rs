//! The API token's commitment in PCR 23 (docs/measurement.md, section 1).
//!
//! A bare SHA-256 of the token would let anyone holding the (public) event log test guesses
//! against it offline. Instead the event carries `HMAC-SHA256(key = salt, msg = TOKEN_DOMAIN ||
//! token)` with a random 32-byte salt that is published in the event: whoever knows the token
//! recomputes the digest with that salt, and a precomputed table of guesses is useless.

use super::log::{EventKind, WorkloadEvent};
use crate::digest::Sha256Digest;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Domain tag before the token in the HMAC message, NUL included.
pub const TOKEN_DOMAIN: &[u8] = b"cvm-api-token/v1\0";
/// The name of the api-token event.
pub const API_TOKEN_EVENT: &str = "api-token";

/// The token's salted commitment: what the api-token event records.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenCommitment {
    /// The HMAC key, public (kept in the event's `payload` as hex).
    pub salt: [u8; 32],
    /// `HMAC-SHA256(salt, TOKEN_DOMAIN || token)`.
    pub digest: Sha256Digest,
}

impl std::fmt::Debug for TokenCommitment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenCommitment(salt {}, digest {})",
            hex::encode(self.salt),
            self.digest
        )
    }
}

impl TokenCommitment {
    /// Commits to `token` (already trimmed, as the agent reads it) under `salt`.
    pub fn new(salt: [u8; 32], token: &str) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&salt).expect("HMAC accepts a key of any length");
        mac.update(TOKEN_DOMAIN);
        mac.update(token.as_bytes());
        Self {
            salt,
            digest: Sha256Digest(mac.finalize().into_bytes().into()),
        }
    }

    /// The api-token event: the HMAC as `payload_digest`, the salt in hex as `payload`.
    pub fn event(&self) -> WorkloadEvent {
        WorkloadEvent {
            kind: EventKind::ApiToken,
            name: API_TOKEN_EVENT.to_owned(),
            payload_digest: self.digest,
            payload: Some(hex::encode(self.salt)),
        }
    }

    /// The salt an api-token event was made with; `None` for any other event or an unsalted one.
    pub fn salt_of(event: &WorkloadEvent) -> Option<[u8; 32]> {
        if event.kind != EventKind::ApiToken {
            return None;
        }
        parse_salt(event.payload.as_deref()?)
    }

    /// The salt of the first api-token event in `events` (the agent keeps one per boot).
    pub fn first_salt<'a>(events: impl IntoIterator<Item = &'a WorkloadEvent>) -> Option<[u8; 32]> {
        events.into_iter().find_map(Self::salt_of)
    }
}

/// Exactly 64 lowercase hex digits.
pub fn parse_salt(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac() {
        // HMAC-SHA256 by its definition (RFC 2104), with a 32-byte key padded to the block size.
        let salt = [0x42u8; 32];
        let token = "a-token-of-at-least-thirty-two-characters";
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&salt);
        let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let mut inner = pad(0x36);
        inner.extend_from_slice(TOKEN_DOMAIN);
        inner.extend_from_slice(token.as_bytes());
        let mut outer = pad(0x5c);
        outer.extend_from_slice(&Sha256Digest::of(&inner).0);
        assert_eq!(
            TokenCommitment::new(salt, token).digest,
            Sha256Digest::of(&outer)
        );
    }

    #[test]
    fn salts_change_the_digest_and_round_trip_through_the_event() {
        let token = "the same token under two salts 0123456789";
        let a = TokenCommitment::new([1; 32], token);
        let b = TokenCommitment::new([2; 32], token);
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.digest, Sha256Digest::of(token.as_bytes()));
        assert_eq!(TokenCommitment::salt_of(&a.event()), Some([1; 32]));
        assert_eq!(parse_salt(&"AB".repeat(32)), None);
        assert_eq!(parse_salt("00"), None);
    }
}
