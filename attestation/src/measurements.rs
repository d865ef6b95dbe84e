//! The image build's `measurements.json` (docs/image.md): the one schema that the writer
//! (`image_builder::measure`, re-exporting these types) and the readers
//! ([`crate::golden::predicted_pcrs`], the agent's golden values) share.
//!
//! Digests stay lowercase hex strings in these types, as the builder writes and compares them;
//! [`Measurements::from_json`] and [`Measurements::from_reader`] accept only a document whose
//! every digest, PCR index and predicted event chain is valid, and [`PcrValue::digests`] gives
//! them typed.
//!
//! Each PCR has its SHA-256 bank value and, from builds that predict it, its SHA-384 bank value
//! (AWS's NitroTPM attestation document carries that bank); events carry the same banks as their
//! PCR. Files written before SHA-384 was predicted simply have no `sha384` and still read.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};

use crate::digest::{DigestParseError, Sha256Digest, Sha384Digest};
use crate::golden::{GoldenBootEvent, GoldenPcr, PcrSource};

/// The `version` this schema reads and writes.
pub const MEASUREMENTS_VERSION: u32 = 1;
/// Largest `measurements.json` accepted (a real one is a few KiB).
pub const MAX_MEASUREMENTS_BYTES: usize = 4 << 20;
/// Highest TPM PCR index.
const MAX_PCR: u8 = 23;
/// Event types the firmware measures on its own account (boot-option actions, separators,
/// informational events): the cloud's firmware logs its own, so they pin nothing of our build.
const FIRMWARE_EVENT_TYPES: &[&str] = &["EV_EFI_ACTION", "EV_SEPARATOR", "EV_NO_ACTION"];

/// How a PCR value is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueSource {
    /// Computed from the build alone.
    Predicted,
    /// Read from a booted VM.
    Observed,
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueSource::Predicted => "predicted",
            ValueSource::Observed => "observed",
        })
    }
}

/// One event extended into a PCR, with its digest in each bank of that PCR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// TCG event type name, e.g. `EV_EFI_ACTION`, `EV_IPL`.
    pub event_type: String,
    /// SHA-256 digest extended (hex).
    pub sha256: String,
    /// SHA-384 digest extended (hex); present exactly when the PCR has a `sha384` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha384: Option<String>,
    pub description: String,
}

/// One PCR's value in each bank and how we know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrValue {
    /// SHA-256 bank value (hex).
    pub sha256: String,
    /// SHA-384 bank value (hex), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha384: Option<String>,
    pub source: ValueSource,
    /// The events extended from the reset value, in order (may be absent for observed values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

/// A digest and size of one output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// SHA-256 of the file (hex).
    pub sha256: String,
    pub size: u64,
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    /// [`MEASUREMENTS_VERSION`].
    pub version: u32,
    /// By PCR index as a decimal string (`"4"`, `"9"`, `"11"`, `"12"`).
    pub pcrs: BTreeMap<String, PcrValue>,
    pub verity_root_hash: String,
    pub uki_sha256: String,
    pub uki_authenticode_sha256: String,
    pub kernel_cmdline: String,
    pub kernel_version: String,
    pub stub: String,
    /// PCR 4 is predicted for Secure Boot on (the UKI is signed) or off.
    #[serde(default)]
    pub secure_boot: bool,
    /// Output files by name (`disk.raw`, `disk.vhd`...).
    #[serde(default)]
    pub images: BTreeMap<String, FileDigest>,
}

/// A PCR's values, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcrDigests {
    pub sha256: Sha256Digest,
    pub sha384: Option<Sha384Digest>,
}

/// Why a `measurements.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum MeasurementsError {
    #[error(
        "measurements.json is {0} bytes (or more), more than the limit of {MAX_MEASUREMENTS_BYTES}"
    )]
    TooLarge(usize),
    #[error("reading measurements.json: {0}")]
    Io(#[from] std::io::Error),
    #[error("measurements.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("measurements.json version {0} is not supported (expected {MEASUREMENTS_VERSION})")]
    Version(u32),
    #[error("measurements.json: PCR key {0:?} is not a PCR index 0..=23 in decimal")]
    PcrIndex(String),
    #[error("measurements.json: {field}: {error}")]
    Digest {
        field: String,
        error: DigestParseError,
    },
    #[error("measurements.json: PCR {pcr}: {detail}")]
    Banks { pcr: u8, detail: String },
    #[error(
        "measurements.json: PCR {pcr}: its {bank} events replay to {replayed}, not to its value \
         {value}"
    )]
    Replay {
        pcr: u8,
        bank: &'static str,
        replayed: String,
        value: String,
    },
}

/// The PCR index a `pcrs` key names: canonical decimal, 0..=23.
pub fn pcr_index(key: &str) -> Result<u8, MeasurementsError> {
    key.parse::<u8>()
        .ok()
        .filter(|index| *index <= MAX_PCR && index.to_string() == key)
        .ok_or_else(|| MeasurementsError::PcrIndex(key.to_string()))
}

fn sha256_field(
    field: impl FnOnce() -> String,
    text: &str,
) -> Result<Sha256Digest, MeasurementsError> {
    Sha256Digest::from_hex(text).map_err(|error| MeasurementsError::Digest {
        field: field(),
        error,
    })
}

fn sha384_field(
    field: impl FnOnce() -> String,
    text: &str,
) -> Result<Sha384Digest, MeasurementsError> {
    Sha384Digest::from_hex(text).map_err(|error| MeasurementsError::Digest {
        field: field(),
        error,
    })
}

/// Extends `digests` in order from a zero register with hash `D`.
fn replay<D: Digest>(digests: &[Vec<u8>]) -> Vec<u8> {
    let mut register = vec![0u8; <D as Digest>::output_size()];
    for digest in digests {
        let mut h = D::new();
        h.update(&register);
        h.update(digest);
        register = h.finalize().to_vec();
    }
    register
}

impl PcrValue {
    /// The values, typed (`key` names the PCR in errors).
    pub fn digests(&self, key: &str) -> Result<PcrDigests, MeasurementsError> {
        Ok(PcrDigests {
            sha256: sha256_field(|| format!("pcrs.{key}.sha256"), &self.sha256)?,
            sha384: self
                .sha384
                .as_deref()
                .map(|text| sha384_field(|| format!("pcrs.{key}.sha384"), text))
                .transpose()?,
        })
    }

    /// Checks the digests, that the events carry the same banks as the value, and, for a
    /// predicted value with events, that they replay to it in every bank.
    fn check(&self, key: &str, index: u8) -> Result<(), MeasurementsError> {
        let values = self.digests(key)?;
        let mut sha256 = Vec::with_capacity(self.events.len());
        let mut sha384 = Vec::with_capacity(self.events.len());
        for (n, event) in self.events.iter().enumerate() {
            let field = |bank: &str| format!("pcrs.{key}.events[{n}].{bank}");
            sha256.push(sha256_field(|| field("sha256"), &event.sha256)?.0.to_vec());
            match (&event.sha384, values.sha384.is_some()) {
                (Some(text), true) => {
                    sha384.push(sha384_field(|| field("sha384"), text)?.0.to_vec())
                }
                (None, false) => {}
                (Some(_), false) => {
                    return Err(MeasurementsError::Banks {
                        pcr: index,
                        detail: format!(
                            "event {n} has a sha384 digest, the PCR has no sha384 value"
                        ),
                    })
                }
                (None, true) => {
                    return Err(MeasurementsError::Banks {
                        pcr: index,
                        detail: format!(
                            "event {n} has no sha384 digest, the PCR has a sha384 value"
                        ),
                    })
                }
            }
        }
        if self.source != ValueSource::Predicted || self.events.is_empty() {
            return Ok(());
        }
        let mismatch = |bank, replayed: Vec<u8>, value: &[u8]| {
            (replayed != value).then(|| MeasurementsError::Replay {
                pcr: index,
                bank,
                replayed: hex::encode(replayed),
                value: hex::encode(value),
            })
        };
        if let Some(error) = mismatch("sha256", replay::<Sha256>(&sha256), &values.sha256.0) {
            return Err(error);
        }
        if let Some(value) = values.sha384 {
            if let Some(error) = mismatch("sha384", replay::<Sha384>(&sha384), &value.0) {
                return Err(error);
            }
        }
        Ok(())
    }
}

impl Measurements {
    /// Reads and checks a document of at most [`MAX_MEASUREMENTS_BYTES`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, MeasurementsError> {
        if bytes.len() > MAX_MEASUREMENTS_BYTES {
            return Err(MeasurementsError::TooLarge(bytes.len()));
        }
        let document: Measurements = serde_json::from_slice(bytes)?;
        document.check()?;
        Ok(document)
    }

    /// Reads at most [`MAX_MEASUREMENTS_BYTES`] + 1 bytes from `reader` (a file, say), then as
    /// [`Measurements::from_json`]: a larger input is refused without being read to its end.
    pub fn from_reader(reader: impl Read) -> Result<Self, MeasurementsError> {
        let mut bytes = Vec::new();
        reader
            .take(MAX_MEASUREMENTS_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        Self::from_json(&bytes)
    }

    /// The checks [`Measurements::from_json`] makes after parsing: the version, PCR indices,
    /// every digest's length, event banks, and that predicted event chains replay to their
    /// values.
    pub fn check(&self) -> Result<(), MeasurementsError> {
        if self.version != MEASUREMENTS_VERSION {
            return Err(MeasurementsError::Version(self.version));
        }
        for (key, value) in &self.pcrs {
            value.check(key, pcr_index(key)?)?;
        }
        sha256_field(|| "verity_root_hash".into(), &self.verity_root_hash)?;
        sha256_field(|| "uki_sha256".into(), &self.uki_sha256)?;
        sha256_field(
            || "uki_authenticode_sha256".into(),
            &self.uki_authenticode_sha256,
        )?;
        for (name, file) in &self.images {
            sha256_field(|| format!("images.{name}.sha256"), &file.sha256)?;
        }
        Ok(())
    }

    /// The PCR at `index`.
    pub fn pcr(&self, index: u8) -> Option<&PcrValue> {
        self.pcrs.get(&index.to_string())
    }

    /// The predicted PCRs by index, typed (observed ones left out).
    pub fn predicted(&self) -> Result<BTreeMap<u8, PcrDigests>, MeasurementsError> {
        self.pcrs
            .iter()
            .filter(|(_, value)| value.source == ValueSource::Predicted)
            .map(|(key, value)| Ok((pcr_index(key)?, value.digests(key)?)))
            .collect()
    }

    /// The predicted PCRs as golden values (`source: predicted`, with SHA-384 when the build
    /// predicted it). Observed values are left out: only a prediction made offline can serve as
    /// a golden value without trusting a running VM.
    pub fn golden_pcrs(&self) -> Result<BTreeMap<u8, GoldenPcr>, MeasurementsError> {
        Ok(self
            .predicted()?
            .into_iter()
            .map(|(index, digests)| {
                let pcr = GoldenPcr {
                    sha256: digests.sha256,
                    sha384: digests.sha384,
                    source: PcrSource::Predicted,
                    note: Some("predicted by the image build".into()),
                };
                (index, pcr)
            })
            .collect())
    }

    /// The predicted events our build determines, as golden boot events (docs/golden.md,
    /// `boot_events`): PCR 4's boot applications (the UKI's Authenticode digest, and without
    /// Secure Boot the `.linux` the stub loads), PCR 9's command line and initrd, PCR 11's
    /// sections; by PCR in ascending order, in measurement order within one. The firmware's own
    /// actions and separators (`EV_EFI_ACTION`, `EV_SEPARATOR`, `EV_NO_ACTION`) and observed PCRs
    /// are left out.
    pub fn golden_boot_events(&self) -> Result<Vec<GoldenBootEvent>, MeasurementsError> {
        let mut pcrs = self
            .pcrs
            .iter()
            .filter(|(_, value)| value.source == ValueSource::Predicted)
            .map(|(key, value)| Ok((pcr_index(key)?, key, value)))
            .collect::<Result<Vec<_>, MeasurementsError>>()?;
        pcrs.sort_by_key(|(index, _, _)| *index);
        let mut events = Vec::new();
        for (index, key, value) in pcrs {
            for (n, event) in value.events.iter().enumerate() {
                if FIRMWARE_EVENT_TYPES.contains(&event.event_type.as_str()) {
                    continue;
                }
                let field = |bank: &str| format!("pcrs.{key}.events[{n}].{bank}");
                events.push(GoldenBootEvent {
                    pcr: index,
                    sha256: sha256_field(|| field("sha256"), &event.sha256)?,
                    sha384: event
                        .sha384
                        .as_deref()
                        .map(|text| sha384_field(|| field("sha384"), text))
                        .transpose()?,
                    description: event.description.clone(),
                });
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `measurements.json` of a `tiny` build from before SHA-384 was predicted.
    const SHA256_ONLY: &[u8] = include_bytes!("../tests/fixtures/measurements-v1-sha256-only.json");

    fn hex_of<D: Digest>(data: &[u8]) -> String {
        hex::encode(D::digest(data))
    }

    /// A predicted PCR with both banks from the data of its events.
    fn predicted(events: &[&[u8]]) -> PcrValue {
        let events: Vec<Event> = events
            .iter()
            .map(|data| Event {
                event_type: "EV_IPL".into(),
                sha256: hex_of::<Sha256>(data),
                sha384: Some(hex_of::<Sha384>(data)),
                description: "test".into(),
            })
            .collect();
        let bank = |f: fn(&Event) -> String| events.iter().map(f).map(|h| hex::decode(h).unwrap());
        PcrValue {
            sha256: hex::encode(replay::<Sha256>(
                &bank(|e| e.sha256.clone()).collect::<Vec<_>>(),
            )),
            sha384: Some(hex::encode(replay::<Sha384>(
                &bank(|e| e.sha384.clone().unwrap()).collect::<Vec<_>>(),
            ))),
            source: ValueSource::Predicted,
            events,
        }
    }

    fn document() -> Measurements {
        let mut pcrs = BTreeMap::new();
        pcrs.insert("4".to_string(), predicted(&[b"a", b"b"]));
        pcrs.insert("12".to_string(), predicted(&[]));
        pcrs.insert(
            "0".to_string(),
            PcrValue {
                sha256: "11".repeat(32),
                sha384: None,
                source: ValueSource::Observed,
                events: Vec::new(),
            },
        );
        Measurements {
            version: 1,
            pcrs,
            verity_root_hash: "22".repeat(32),
            uki_sha256: "33".repeat(32),
            uki_authenticode_sha256: "44".repeat(32),
            kernel_cmdline: "console=ttyS0".into(),
            kernel_version: "6.1".into(),
            stub: "systemd-stub 252".into(),
            secure_boot: false,
            images: BTreeMap::from([(
                "disk.raw".to_string(),
                FileDigest {
                    sha256: "55".repeat(32),
                    size: 1 << 20,
                },
            )]),
        }
    }

    fn json(document: &Measurements) -> Vec<u8> {
        serde_json::to_vec_pretty(document).unwrap()
    }

    #[test]
    fn reads_a_file_of_the_builder_before_sha384() {
        let m = Measurements::from_json(SHA256_ONLY).unwrap();
        assert_eq!(m.pcrs.len(), 4);
        assert!(m.pcrs.values().all(|p| p.sha384.is_none()));
        let golden = m.golden_pcrs().unwrap();
        assert_eq!(golden.keys().copied().collect::<Vec<_>>(), [4, 9, 11, 12]);
        assert_eq!(
            golden[&4].sha256.to_hex(),
            "820d4fd65371da5feebecd404aae721fca704621d25841f1cdd1ea8e6f34506e"
        );
        assert_eq!(golden[&12].sha256, Sha256Digest::default());
        assert!(golden.values().all(|p| p.sha384.is_none()));
        assert!(golden.values().all(|p| p.source == PcrSource::Predicted));
        // Written again it is the same document, byte for byte (modulo the final newline).
        let again = serde_json::to_string_pretty(&m).unwrap();
        assert_eq!(
            again.trim_end(),
            std::str::from_utf8(SHA256_ONLY).unwrap().trim_end()
        );
    }

    #[test]
    fn reads_sha384_and_leaves_observed_out() {
        let doc = document();
        let m = Measurements::from_json(&json(&doc)).unwrap();
        assert_eq!(m, doc);
        let golden = m.golden_pcrs().unwrap();
        assert_eq!(golden.keys().copied().collect::<Vec<_>>(), [4, 12]);
        let sha384 = golden[&4].sha384.unwrap();
        let mut expected = [0u8; 48];
        for data in [b"a", b"b"] {
            let mut h = Sha384::new();
            h.update(expected);
            h.update(Sha384::digest(data));
            expected = h.finalize().into();
        }
        assert_eq!(sha384, Sha384Digest(expected));
        assert_eq!(golden[&12].sha384, Some(Sha384Digest::default()));
        assert_eq!(m.pcr(4), doc.pcrs.get("4"));
    }

    #[test]
    fn refuses_what_the_builder_never_writes() {
        let reject = |change: &dyn Fn(&mut Measurements)| {
            let mut doc = document();
            change(&mut doc);
            Measurements::from_json(&json(&doc)).unwrap_err()
        };
        let pcr4 = |doc: &mut Measurements| doc.pcrs.get_mut("4").unwrap().clone();
        assert!(matches!(
            reject(&|d| d.version = 2),
            MeasurementsError::Version(2)
        ));
        for key in ["24", "04", "+4", "x"] {
            let err = reject(&|d| {
                let value = pcr4(d);
                d.pcrs.insert(key.into(), value);
            });
            assert!(
                matches!(err, MeasurementsError::PcrIndex(ref k) if k == key),
                "{err}"
            );
        }
        let err = reject(&|d| d.pcrs.get_mut("4").unwrap().events[1].sha384 = Some("00".into()));
        assert!(err.to_string().contains("pcrs.4.events[1].sha384"), "{err}");
        let err = reject(&|d| d.pcrs.get_mut("4").unwrap().events[0].sha384 = None);
        assert!(
            matches!(err, MeasurementsError::Banks { pcr: 4, .. }),
            "{err}"
        );
        let err = reject(&|d| d.pcrs.get_mut("4").unwrap().sha384 = Some("00".repeat(48)));
        assert!(
            matches!(
                err,
                MeasurementsError::Replay {
                    pcr: 4,
                    bank: "sha384",
                    ..
                }
            ),
            "{err}"
        );
        let err = reject(&|d| d.pcrs.get_mut("4").unwrap().events.pop().map(drop).unwrap());
        assert!(
            matches!(
                err,
                MeasurementsError::Replay {
                    pcr: 4,
                    bank: "sha256",
                    ..
                }
            ),
            "{err}"
        );
        let err = reject(&|d| d.images.get_mut("disk.raw").unwrap().sha256 = "zz".into());
        assert!(err.to_string().contains("images.disk.raw.sha256"), "{err}");
        let err = reject(&|d| d.uki_authenticode_sha256.truncate(62));
        assert!(err.to_string().contains("uki_authenticode_sha256"), "{err}");

        let mut value: serde_json::Value = serde_json::from_slice(&json(&document())).unwrap();
        value["pcrs"]["4"]["sha512"] = "00".into();
        let err = Measurements::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, MeasurementsError::Json(_)), "{err}");
        let mut value: serde_json::Value = serde_json::from_slice(&json(&document())).unwrap();
        value["pcrs"]["4"]["source"] = "guessed".into();
        assert!(Measurements::from_json(value.to_string().as_bytes()).is_err());
        let mut value: serde_json::Value = serde_json::from_slice(&json(&document())).unwrap();
        value["extra"] = true.into();
        assert!(Measurements::from_json(value.to_string().as_bytes()).is_err());
    }

    #[test]
    fn boot_events_are_the_builds_own_in_pcr_order() {
        let m = Measurements::from_json(SHA256_ONLY).unwrap();
        let events = m.golden_boot_events().unwrap();
        let described: Vec<(u8, &str)> = events
            .iter()
            .map(|e| (e.pcr, e.description.as_str()))
            .collect();
        // PCR 4 without the firmware's action and separator; 9 before 11 (numeric order, not
        // the keys' string order); PCR 12 has none.
        assert_eq!(
            described[..4],
            [
                (4, "UKI"),
                (4, ".linux loaded by the stub"),
                (9, "LOADED_IMAGE::LoadOptions"),
                (9, "Linux initrd"),
            ]
        );
        assert_eq!(events.len(), 4 + 8);
        assert!(events[4..].iter().all(|e| e.pcr == 11));
        assert_eq!(events[0].sha256.to_hex(), m.uki_authenticode_sha256);
        assert!(events.iter().all(|e| e.sha384.is_none()));
        // The golden constructor reads the same through the whole checked document.
        assert_eq!(
            crate::golden::predicted_boot_events(SHA256_ONLY).unwrap(),
            events
        );

        // With SHA-384 the events carry it; observed PCRs give none.
        let mut doc = document();
        doc.pcrs.get_mut("4").unwrap().events[0].event_type = "EV_EFI_ACTION".into();
        let events = doc.golden_boot_events().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].pcr, 4);
        assert_eq!(events[0].sha384.unwrap().to_hex(), hex_of::<Sha384>(b"b"));
        doc.pcrs.get_mut("4").unwrap().source = ValueSource::Observed;
        assert!(doc.golden_boot_events().unwrap().is_empty());
    }

    #[test]
    fn reading_is_bounded() {
        let endless = std::io::repeat(b' ');
        assert!(matches!(
            Measurements::from_reader(endless),
            Err(MeasurementsError::TooLarge(n)) if n == MAX_MEASUREMENTS_BYTES + 1
        ));
        assert!(matches!(
            Measurements::from_json(&vec![b' '; MAX_MEASUREMENTS_BYTES + 1]),
            Err(MeasurementsError::TooLarge(_))
        ));
        let m = Measurements::from_reader(SHA256_ONLY).unwrap();
        assert_eq!(m.version, MEASUREMENTS_VERSION);
    }
}
