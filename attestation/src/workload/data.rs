//! How the data partition (`/data`: the workload, its secrets, everything it writes) is
//! protected, recorded in PCR 23's log as one `data-key` event per measurement: the unlock mode
//! and, for a pushed key, a commitment to it, never the key. docs/data-at-rest.md.

use super::log::{EventKind, WorkloadEvent};
use crate::Sha256Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The event's name.
pub const DATA_EVENT: &str = "data";
/// Domain of a pushed key's commitment.
const KEY_DOMAIN: &[u8] = b"cvm-data-key/v1\0";
/// Accepted sizes of a pushed key, in bytes (random keys only: its commitment is unsalted).
pub const KEY_SIZES: [usize; 2] = [32, 64];

/// Where the key of `/data` comes from, chosen per deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataUnlock {
    /// A random key made inside the VM at each boot and never stored: `/data` is new each boot.
    Ephemeral,
    /// The VM boots with `/data` locked and waits for `cvm-cli unlock`, which sends the key only
    /// after verifying the VM.
    Pushed,
    /// A key kept across reboots by a root of trust inside the TEE ([`SealRoot`]); refused where
    /// the only TPM is the host's.
    Sealed,
}

impl DataUnlock {
    pub fn as_str(self) -> &'static str {
        match self {
            DataUnlock::Ephemeral => "ephemeral",
            DataUnlock::Pushed => "pushed",
            DataUnlock::Sealed => "sealed",
        }
    }
}

/// What keeps a sealed key: both live inside the TEE, out of the host's reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SealRoot {
    /// The SEV-SNP firmware's derived key (MSG_KEY_REQ from the chip's VCEK) with the launch
    /// measurement and the guest policy mixed in: another image or policy gets another key.
    SnpDerivedKey,
    /// Azure's paravisor vTPM: a key sealed under its storage hierarchy to PCRs 4, 9 and 11
    /// (the UKI: kernel, initrd, command line with the root hash).
    AzureVtpm,
}

impl SealRoot {
    pub fn as_str(self) -> &'static str {
        match self {
            SealRoot::SnpDerivedKey => "snp-derived-key",
            SealRoot::AzureVtpm => "azure-vtpm",
        }
    }

    /// What the key is bound to, for reports.
    pub fn bound_to(self) -> &'static str {
        match self {
            SealRoot::SnpDerivedKey => {
                "the SEV-SNP firmware's derived key (this chip's VCEK) mixed with the launch \
                 measurement and the guest policy"
            }
            SealRoot::AzureVtpm => {
                "the paravisor vTPM's storage hierarchy under a policy on PCRs 4, 9 and 11"
            }
        }
    }
}

impl std::str::FromStr for SealRoot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "snp-derived-key" => Ok(SealRoot::SnpDerivedKey),
            "azure-vtpm" => Ok(SealRoot::AzureVtpm),
            other => Err(format!("{other:?}: expected snp-derived-key or azure-vtpm")),
        }
    }
}

impl std::str::FromStr for DataUnlock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ephemeral" => Ok(DataUnlock::Ephemeral),
            "pushed" => Ok(DataUnlock::Pushed),
            "sealed" => Ok(DataUnlock::Sealed),
            other => Err(format!("{other:?}: expected ephemeral, pushed or sealed")),
        }
    }
}

/// What one `data-key` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataState {
    /// Opened with a key made in the VM this boot.
    Ephemeral,
    /// Pushed mode, no key received yet: nothing of `/data` is readable, nothing runs.
    Locked,
    /// Opened with a pushed key, committed to by this digest.
    Pushed(Sha256Digest),
    /// Opened with a key kept by this root of trust. No commitment: nobody outside the VM knows
    /// the key, and the same one opens `/data` at every boot of the same image.
    Sealed(SealRoot),
}

/// A sealed state's payload: `sealed:<root>`.
const SEALED_PREFIX: &str = "sealed:";

/// Why a data key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a data key must be 32 or 64 random bytes, not {0}")]
pub struct KeySizeError(pub usize);

/// The commitment to a pushed key: `SHA-256("cvm-data-key/v1\0" || key)`.
pub fn key_commitment(key: &[u8]) -> Result<Sha256Digest, KeySizeError> {
    if !KEY_SIZES.contains(&key.len()) {
        return Err(KeySizeError(key.len()));
    }
    let mut hash = Sha256::new();
    hash.update(KEY_DOMAIN);
    hash.update(key);
    Ok(Sha256Digest(hash.finalize().into()))
}

impl DataState {
    /// The event recording this state.
    pub fn event(self) -> WorkloadEvent {
        match self {
            DataState::Ephemeral => {
                WorkloadEvent::with_payload(EventKind::DataKey, DATA_EVENT, "ephemeral".into())
            }
            DataState::Locked => {
                WorkloadEvent::with_payload(EventKind::DataKey, DATA_EVENT, "locked".into())
            }
            DataState::Pushed(commitment) => WorkloadEvent {
                kind: EventKind::DataKey,
                name: DATA_EVENT.into(),
                payload_digest: commitment,
                payload: Some("pushed".into()),
            },
            DataState::Sealed(root) => WorkloadEvent::with_payload(
                EventKind::DataKey,
                DATA_EVENT,
                format!("{SEALED_PREFIX}{}", root.as_str()),
            ),
        }
    }

    /// The state a `data-key` event records; `None` for any other event or a malformed one.
    pub fn of(event: &WorkloadEvent) -> Option<Self> {
        if event.kind != EventKind::DataKey || event.name != DATA_EVENT {
            return None;
        }
        let digest_of = |s: &str| Sha256Digest::of(s.as_bytes());
        match event.payload.as_deref()? {
            "ephemeral" if event.payload_digest == digest_of("ephemeral") => {
                Some(DataState::Ephemeral)
            }
            "locked" if event.payload_digest == digest_of("locked") => Some(DataState::Locked),
            "pushed" => Some(DataState::Pushed(event.payload_digest)),
            sealed if event.payload_digest == digest_of(sealed) => {
                let root = sealed.strip_prefix(SEALED_PREFIX)?.parse().ok()?;
                Some(DataState::Sealed(root))
            }
            _ => None,
        }
    }

    /// One line for reports.
    pub fn describe(self) -> String {
        match self {
            DataState::Ephemeral => {
                "ephemeral: /data is encrypted with integrity under a key made \
                                     in the VM at this boot and never stored"
                    .into()
            }
            DataState::Locked => {
                "locked: /data waits for its pushed key (cvm-cli unlock); nothing runs".into()
            }
            DataState::Pushed(c) => format!(
                "pushed: /data is encrypted with integrity under a key sent after verification \
                 (cvm-cli unlock), committed to as {}",
                &c.to_hex()[..16]
            ),
            DataState::Sealed(root) => format!(
                "sealed ({}): /data is encrypted with integrity under a key kept across reboots \
                 by {}",
                root.as_str(),
                root.bound_to()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_malformed_ones_are_not_states() {
        let key = [7u8; 32];
        let pushed = DataState::Pushed(key_commitment(&key).unwrap());
        for state in [DataState::Ephemeral, DataState::Locked, pushed] {
            assert_eq!(DataState::of(&state.event()), Some(state));
        }
        // An "ephemeral" payload with another digest is not ephemeral.
        let mut forged = DataState::Ephemeral.event();
        forged.payload_digest = Sha256Digest::of(b"x");
        assert_eq!(DataState::of(&forged), None);
        assert_eq!(key_commitment(b"short"), Err(KeySizeError(5)));
        assert_ne!(
            key_commitment(&[1u8; 64]).unwrap(),
            key_commitment(&[2u8; 64]).unwrap()
        );
        assert_eq!("sealed".parse::<DataUnlock>(), Ok(DataUnlock::Sealed));
        assert!("sealed:x".parse::<DataUnlock>().is_err());
        for root in [SealRoot::SnpDerivedKey, SealRoot::AzureVtpm] {
            let state = DataState::Sealed(root);
            assert_eq!(DataState::of(&state.event()), Some(state));
            assert!(state.describe().contains(root.as_str()));
        }
        let unknown =
            WorkloadEvent::with_payload(EventKind::DataKey, DATA_EVENT, "sealed:x".into());
        assert_eq!(DataState::of(&unknown), None);
        assert_eq!("pushed".parse::<DataUnlock>(), Ok(DataUnlock::Pushed));
    }
}
