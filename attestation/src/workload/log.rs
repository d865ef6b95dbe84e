//! The workload event log: what was extended into PCR 23, in order, replayable by anyone.
//!
//! Each event binds its kind, name and payload digest into the digest that is extended
//! (docs/measurement.md), so no two different events can produce the same extension.

use crate::digest::{Sha256Digest, Sha384Digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};

/// The PCR that holds the workload measurement.
pub const WORKLOAD_PCR: u8 = 23;
/// The only log format version this code reads and writes.
pub const LOG_VERSION: u32 = 1;
/// Domain tag prefixed to every event encoding: no other use of PCR 23 can collide with ours.
pub const EVENT_DOMAIN: &[u8] = b"cvm-workload-event/v1\0";
/// Bounds applied to logs from outside.
pub const MAX_EVENTS: usize = 4096;
pub const MAX_NAME_LEN: usize = 1024;
pub const MAX_PAYLOAD_LEN: usize = 1024;

/// What an event measures. The numeric code is part of the extended digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// `docker-compose.yml`, by content.
    ComposeFile,
    /// A file under `config/`, named by its path relative to the workload folder.
    ConfigFile,
    /// An environment file compose reads (`.env`, `env_file:`), by content.
    EnvFile,
    /// A container image, named by its reference in the compose file; payload is its image ID.
    Image,
    /// The agent's API bearer token as a salted HMAC (`token.rs`), so the host cannot swap the
    /// token unseen and nobody who lacks it can test guesses against the log.
    ApiToken,
    /// Ends one workload measurement. Nothing may follow without a new workload.
    Separator,
    /// Any other regular file of the workload folder (outside `config/` and `secrets/`), which a
    /// bind mount may hand to a container; named by its path relative to the folder.
    File,
    /// A compose bind mount of a host path outside the workload folder, whose content is not
    /// measured: named by the host path; the payload says which services mount it where.
    HostMount,
    /// How `/data` is protected (`data.rs`): the unlock mode as payload; for a pushed key, the
    /// key's commitment as digest.
    DataKey,
}

impl EventKind {
    /// The code bound into the event digest.
    pub const fn code(self) -> u32 {
        match self {
            EventKind::ComposeFile => 1,
            EventKind::ConfigFile => 2,
            EventKind::EnvFile => 3,
            EventKind::Image => 4,
            EventKind::ApiToken => 5,
            EventKind::File => 6,
            EventKind::HostMount => 7,
            EventKind::DataKey => 8,
            EventKind::Separator => 0xffff_ffff,
        }
    }
}

/// One measured input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadEvent {
    pub kind: EventKind,
    pub name: String,
    /// SHA-256 of the measured bytes (file content, image ID text, host mount uses); for
    /// `api-token`, the HMAC of the token keyed by the salt.
    pub payload_digest: Sha256Digest,
    /// The measured bytes themselves when they are short and public (image IDs, host mount
    /// uses), for display; for `api-token`, the salt in hex (the HMAC key, not the payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

impl WorkloadEvent {
    /// An event over `content`, which is hashed and not kept.
    pub fn over(kind: EventKind, name: impl Into<String>, content: &[u8]) -> Self {
        Self::with_digest(kind, name, Sha256Digest::of(content))
    }

    /// An event whose payload was hashed elsewhere (streamed files).
    pub fn with_digest(kind: EventKind, name: impl Into<String>, digest: Sha256Digest) -> Self {
        Self {
            kind,
            name: name.into(),
            payload_digest: digest,
            payload: None,
        }
    }

    /// An image event: `reference` as written in the compose file, `image_id` as `sha256:<hex>`.
    pub fn image(reference: impl Into<String>, image_id: impl Into<String>) -> Self {
        Self::with_payload(EventKind::Image, reference, image_id.into())
    }

    /// An event whose short, public payload is kept for display (image IDs, host mount uses).
    pub fn with_payload(kind: EventKind, name: impl Into<String>, payload: String) -> Self {
        Self {
            kind,
            name: name.into(),
            payload_digest: Sha256Digest::of(payload.as_bytes()),
            payload: Some(payload),
        }
    }

    /// The separator that closes a workload measurement.
    pub fn separator() -> Self {
        Self::over(EventKind::Separator, "", b"")
    }

    /// The digest extended into the PCR:
    /// `SHA-256(EVENT_DOMAIN || u32be(kind) || u32be(len(name)) || name || payload_digest)`.
    pub fn extend_digest(&self) -> Sha256Digest {
        Sha256Digest(self.hash_encoding::<Sha256>().into())
    }

    /// The digest extended into TDX RTMR3: SHA-384 of exactly the bytes [`Self::extend_digest`]
    /// hashes (the same domain tag, kind code, name length, name and SHA-256 payload digest).
    pub fn extend_digest_sha384(&self) -> Sha384Digest {
        Sha384Digest(self.hash_encoding::<Sha384>().into())
    }

    /// `H(EVENT_DOMAIN || u32be(kind) || u32be(len(name)) || name || payload_digest)`: the one
    /// canonical encoding of an event, whatever the register's hash.
    fn hash_encoding<H: Digest>(&self) -> sha2::digest::Output<H> {
        let mut hasher = H::new();
        hasher.update(EVENT_DOMAIN);
        hasher.update(self.kind.code().to_be_bytes());
        hasher.update((self.name.len() as u32).to_be_bytes());
        hasher.update(self.name.as_bytes());
        hasher.update(self.payload_digest.0);
        hasher.finalize()
    }
}

/// `SHA-256(pcr || digest)`: the TPM's extend operation for the SHA-256 bank.
pub fn extend(pcr: &Sha256Digest, digest: &Sha256Digest) -> Sha256Digest {
    let mut hasher = Sha256::new();
    hasher.update(pcr.0);
    hasher.update(digest.0);
    Sha256Digest(hasher.finalize().into())
}

/// Replays events from a zero PCR.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a WorkloadEvent>) -> Sha256Digest {
    events
        .into_iter()
        .fold(Sha256Digest::default(), |pcr, event| {
            extend(&pcr, &event.extend_digest())
        })
}

/// `SHA-384(rtmr || digest)`: the TDX module's extend operation (`TDG.MR.RTMR.EXTEND`).
pub fn extend_sha384(rtmr: &Sha384Digest, digest: &Sha384Digest) -> Sha384Digest {
    let mut hasher = Sha384::new();
    hasher.update(rtmr.0);
    hasher.update(digest.0);
    Sha384Digest(hasher.finalize().into())
}

/// Replays events into a zero 48-byte register with SHA-384: what RTMR3 holds when the agent
/// extended every event of the log into it (and nothing else did).
pub fn replay_sha384<'a>(events: impl IntoIterator<Item = &'a WorkloadEvent>) -> Sha384Digest {
    events
        .into_iter()
        .fold(Sha384Digest::default(), |rtmr, event| {
            extend_sha384(&rtmr, &event.extend_digest_sha384())
        })
}

/// Why a workload log is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("workload log version {0} is not supported (expected {LOG_VERSION})")]
    Version(u32),
    #[error("workload log is for PCR {0}, expected PCR {WORKLOAD_PCR}")]
    Pcr(u8),
    #[error("workload log has {0} events, more than the limit of {MAX_EVENTS}")]
    TooManyEvents(usize),
    #[error("workload log is empty: no workload was measured")]
    Empty,
    #[error("event {index} ({kind:?}): name is {len} bytes, more than {MAX_NAME_LEN}")]
    NameTooLong {
        index: usize,
        kind: EventKind,
        len: usize,
    },
    #[error("event {index} ({kind:?} {name:?}): payload does not hash to its payload_digest")]
    PayloadMismatch {
        index: usize,
        kind: EventKind,
        name: String,
    },
    #[error("event {index} ({kind:?} {name:?}): payload is longer than {MAX_PAYLOAD_LEN} bytes")]
    PayloadTooLong {
        index: usize,
        kind: EventKind,
        name: String,
    },
    #[error("event {index} ({kind:?} {name:?}): the salt is not 64 lowercase hex digits")]
    BadSalt {
        index: usize,
        kind: EventKind,
        name: String,
    },
    #[error("event {index} ({kind:?} {name:?}) follows the last separator: the measurement is unfinished")]
    AfterSeparator {
        index: usize,
        kind: EventKind,
        name: String,
    },
    #[error("rtmr3_failure is {0} bytes, more than {MAX_PAYLOAD_LEN}")]
    Rtmr3FailureTooLong(usize),
}

/// The log the agent keeps and serves, in the order extended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadLog {
    pub version: u32,
    pub pcr: u8,
    pub events: Vec<WorkloadEvent>,
    /// TDX: set by the agent when it could not extend an event into RTMR3 after extending it
    /// into PCR 23 (the kernel offered the interface, the write failed): why. RTMR3 then no
    /// longer follows this log and `workload.rtmr3` fails. Absent otherwise, also when the
    /// kernel has no interface (RTMR3 then stays zero). Written only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr3_failure: Option<String>,
}

impl Default for WorkloadLog {
    fn default() -> Self {
        Self {
            version: LOG_VERSION,
            pcr: WORKLOAD_PCR,
            events: Vec::new(),
            rtmr3_failure: None,
        }
    }
}

impl WorkloadLog {
    /// A log of one measurement.
    pub fn from_events(events: Vec<WorkloadEvent>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }

    /// The PCR value these events produce from a reset PCR.
    pub fn replay(&self) -> Sha256Digest {
        replay(&self.events)
    }

    /// The RTMR3 value these events produce from a zero register (SHA-384 extends of
    /// [`WorkloadEvent::extend_digest_sha384`]).
    pub fn replay_sha384(&self) -> Sha384Digest {
        replay_sha384(&self.events)
    }

    /// Checks structure and bounds; returns the measurements (each ending in its separator),
    /// oldest first. The last one is the workload that runs now.
    pub fn generations(&self) -> Result<Vec<&[WorkloadEvent]>, LogError> {
        if self.version != LOG_VERSION {
            return Err(LogError::Version(self.version));
        }
        if self.pcr != WORKLOAD_PCR {
            return Err(LogError::Pcr(self.pcr));
        }
        if self.events.len() > MAX_EVENTS {
            return Err(LogError::TooManyEvents(self.events.len()));
        }
        if self.events.is_empty() {
            return Err(LogError::Empty);
        }
        if let Some(failure) = &self.rtmr3_failure {
            if failure.len() > MAX_PAYLOAD_LEN {
                return Err(LogError::Rtmr3FailureTooLong(failure.len()));
            }
        }
        for (index, event) in self.events.iter().enumerate() {
            check_event(index, event)?;
        }
        let mut generations = Vec::new();
        let mut start = 0;
        for (index, event) in self.events.iter().enumerate() {
            if event.kind == EventKind::Separator {
                generations.push(&self.events[start..=index]);
                start = index + 1;
            }
        }
        if let Some(event) = self.events.get(start) {
            return Err(LogError::AfterSeparator {
                index: start,
                kind: event.kind,
                name: event.name.clone(),
            });
        }
        Ok(generations)
    }
}

fn check_event(index: usize, event: &WorkloadEvent) -> Result<(), LogError> {
    if event.kind == EventKind::DataKey && super::data::DataState::of(event).is_none() {
        return Err(LogError::PayloadMismatch {
            index,
            kind: event.kind,
            name: event.name.clone(),
        });
    }
    if event.name.len() > MAX_NAME_LEN {
        return Err(LogError::NameTooLong {
            index,
            kind: event.kind,
            len: event.name.len(),
        });
    }
    if let Some(payload) = &event.payload {
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(LogError::PayloadTooLong {
                index,
                kind: event.kind,
                name: event.name.clone(),
            });
        }
        if event.kind == EventKind::ApiToken {
            // The payload is the HMAC key, not what was hashed: only its form can be checked.
            if super::token::parse_salt(payload).is_none() {
                return Err(LogError::BadSalt {
                    index,
                    kind: event.kind,
                    name: event.name.clone(),
                });
            }
        } else if event.kind == EventKind::DataKey {
            // Checked below as a whole: a pushed key's digest is its commitment.
        } else if Sha256Digest::of(payload.as_bytes()) != event.payload_digest {
            return Err(LogError::PayloadMismatch {
                index,
                kind: event.kind,
                name: event.name.clone(),
            });
        }
    }
    Ok(())
}

/// Differences between two measurements, by event kind and name, readable: each event that
/// changed (with both digests), is missing or is extra, or else a change of order. Empty when
/// both are the same measurement.
pub fn differences(expected: &[WorkloadEvent], actual: &[WorkloadEvent]) -> Vec<String> {
    let key = |e: &WorkloadEvent| (e.kind, e.name.clone());
    let describe = |e: &WorkloadEvent| {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if e.name.is_empty() {
            kind
        } else {
            format!("{kind} {:?}", e.name)
        }
    };
    let mut out = Vec::new();
    for e in expected {
        match actual.iter().find(|a| key(a) == key(e)) {
            None => out.push(format!("{} is missing", describe(e))),
            Some(a) if a.payload_digest != e.payload_digest => out.push(format!(
                "{} changed: expected {}{}, got {}{}",
                describe(e),
                short(&e.payload_digest.to_hex()),
                e.payload
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
                short(&a.payload_digest.to_hex()),
                a.payload
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
            )),
            Some(_) => {}
        }
    }
    for a in actual {
        if !expected.iter().any(|e| key(e) == key(a)) {
            out.push(format!("{} is not in the golden measurement", describe(a)));
        }
    }
    if out.is_empty() && expected.iter().map(key).ne(actual.iter().map(key)) {
        out.push("the same events in a different order".into());
    }
    out
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(16)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<WorkloadEvent> {
        vec![
            WorkloadEvent::over(
                EventKind::ComposeFile,
                "docker-compose.yml",
                b"services: {}",
            ),
            WorkloadEvent::image("localhost/app:1", format!("sha256:{}", "ab".repeat(32))),
            WorkloadEvent::separator(),
        ]
    }

    #[test]
    fn kind_name_and_payload_are_all_bound() {
        let base = WorkloadEvent::over(EventKind::ConfigFile, "config/a", b"x");
        let other_kind = WorkloadEvent::over(EventKind::EnvFile, "config/a", b"x");
        let other_name = WorkloadEvent::over(EventKind::ConfigFile, "config/b", b"x");
        let other_payload = WorkloadEvent::over(EventKind::ConfigFile, "config/a", b"y");
        let digests = [&base, &other_kind, &other_name, &other_payload].map(|e| e.extend_digest());
        for (i, a) in digests.iter().enumerate() {
            for b in &digests[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Length prefixing: moving bytes between name and payload changes the digest.
        let split_a =
            WorkloadEvent::with_digest(EventKind::ConfigFile, "ab", Sha256Digest([1; 32]));
        let split_b = WorkloadEvent::with_digest(EventKind::ConfigFile, "a", Sha256Digest([1; 32]));
        assert_ne!(split_a.extend_digest(), split_b.extend_digest());
    }

    #[test]
    fn replay_matches_manual_extends() {
        let events = sample();
        let mut pcr = Sha256Digest::default();
        for event in &events {
            let mut bytes = pcr.0.to_vec();
            bytes.extend_from_slice(&event.extend_digest().0);
            pcr = Sha256Digest::of(&bytes);
        }
        assert_eq!(WorkloadLog::from_events(events).replay(), pcr);
    }

    /// The worked example of docs/measurement.md, section 3.
    fn worked_example() -> Vec<WorkloadEvent> {
        vec![
            WorkloadEvent::over(
                EventKind::ComposeFile,
                "docker-compose.yml",
                b"services:\n  web:\n    image: localhost/web:1\n",
            ),
            WorkloadEvent::over(EventKind::ConfigFile, "config/app.conf", b"port=8080\n"),
            WorkloadEvent::image("localhost/web:1", format!("sha256:{}", "ab".repeat(32))),
            WorkloadEvent::separator(),
        ]
    }

    #[test]
    fn sha384_replay_matches_the_hand_computed_vector() {
        // Computed outside this code (Python hashlib, docs/measurement.md section 7):
        // SHA-384 of the same canonical bytes the SHA-256 extend digest hashes, then
        // rtmr := SHA-384(rtmr || digest) from 48 zero bytes.
        let events = worked_example();
        assert_eq!(
            events[1].extend_digest_sha384().to_hex(),
            "88dda2fc32ed381f811d8db355dad576dcd66192a5143f1d708a14b5d94126ad\
             64a41556f9f4304b3b4c54642fd2146f"
        );
        let log = WorkloadLog::from_events(events.clone());
        assert_eq!(
            log.replay_sha384().to_hex(),
            "e325fb1aaca05308efc1b00481041addf9c52302877c33a2528d96d7540746d7\
             0ea4e10f0be0a9c55852f780f018e401"
        );
        // The SHA-256 side is unchanged (the documented PCR 23 of the same example).
        assert_eq!(
            log.replay().to_hex(),
            "7984f8a6ff7ba94288277f9a253b832b7451d63a1eedc932f4dc32d3a46636c7"
        );
        // One extend by hand, and the empty log is the zero register.
        let first = extend_sha384(&Sha384Digest::default(), &events[0].extend_digest_sha384());
        assert_eq!(
            first.to_hex(),
            "70f9c8bf49fcd6b083accd9d5e778269ecaaf6e24e079cacbe29b061b7152968\
             3e35f392e29ed2d5d9054c46489d6335"
        );
        assert_eq!(replay_sha384(&[]), Sha384Digest::default());
    }

    #[test]
    fn the_rtmr3_failure_is_optional_and_bounded() {
        let mut log = WorkloadLog::from_events(sample());
        let json = serde_json::to_string(&log).unwrap();
        assert!(!json.contains("rtmr3_failure"), "{json}");
        log.rtmr3_failure = Some("writing rtmr3:sha384: Invalid argument".into());
        let json = serde_json::to_string(&log).unwrap();
        assert_eq!(serde_json::from_str::<WorkloadLog>(&json).unwrap(), log);
        assert!(log.generations().is_ok());
        log.rtmr3_failure = Some("x".repeat(MAX_PAYLOAD_LEN + 1));
        assert!(matches!(
            log.generations(),
            Err(LogError::Rtmr3FailureTooLong(_))
        ));
    }

    #[test]
    fn events_after_the_last_separator_are_refused() {
        let mut events = sample();
        events.push(WorkloadEvent::over(
            EventKind::ConfigFile,
            "config/late",
            b"!",
        ));
        let err = WorkloadLog::from_events(events).generations().unwrap_err();
        assert!(
            matches!(err, LogError::AfterSeparator { index: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn generations_split_on_separators() {
        let mut events = sample();
        events.extend(sample());
        let log = WorkloadLog::from_events(events);
        let generations = log.generations().unwrap();
        assert_eq!(generations.len(), 2);
        assert_eq!(generations[1].len(), 3);
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused() {
        let json = r#"{"version":1,"pcr":23,"events":[{"kind":"firmware","name":"x","payload_digest":"00"}]}"#;
        let err = serde_json::from_str::<WorkloadLog>(json).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `firmware`"),
            "{err}"
        );
        let json = r#"{"version":1,"pcr":23,"events":[],"extra":1}"#;
        assert!(serde_json::from_str::<WorkloadLog>(json).is_err());
    }

    #[test]
    fn a_payload_that_lies_about_its_digest_is_refused() {
        let mut events = sample();
        events[1].payload = Some(format!("sha256:{}", "cd".repeat(32)));
        let err = WorkloadLog::from_events(events).generations().unwrap_err();
        assert!(
            matches!(err, LogError::PayloadMismatch { index: 1, .. }),
            "{err}"
        );
    }
}
