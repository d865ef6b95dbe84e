//! Golden measurements: what a trustworthy VM of this build and workload must show
//! (docs/golden.md). Computed offline from the image build and the workload folder, never read
//! from a running VM.

use crate::digest::{Sha256Digest, Sha384Digest};
use crate::encoding::decode_base64;
use crate::evidence::Platform;
use crate::snp::policy::Tcb;
use crate::workload::{replay, WorkloadEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GOLDEN_VERSION: u32 = 1;
/// Largest golden document accepted.
pub const MAX_GOLDEN_BYTES: usize = 4 << 20;

/// Where an expected PCR value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcrSource {
    /// Computed offline from the build (PCR 4, 9, 11 of our UKI).
    Predicted,
    /// Read once from a reference VM of the same platform (firmware PCRs on clouds).
    Observed,
    /// Computed offline from the workload folder (PCR 23).
    Computed,
    #[default]
    Unspecified,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenPcr {
    pub sha256: Sha256Digest,
    /// The same PCR in the SHA-384 bank: what AWS's NitroTPM attestation document carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha384: Option<Sha384Digest>,
    #[serde(default)]
    pub source: PcrSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The expected workload (docs/golden.md): which measurements PCR 23 may hold, or `"any"`.
///
/// JSON: `"any"`, or `{"events": [...], "allowed": [...], "allow_updates": bool}`. Every
/// generation in the log (every measurement since boot, the running one last) must be `events`
/// or one of `allowed`; more than one generation needs `allowed` or `allow_updates`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoldenWorkload {
    /// The measurement computed from the workload folder, ending with the separator.
    pub events: Vec<WorkloadEvent>,
    /// Documents before `allowed`: `true` lets the log hold several generations, each equal to
    /// `events` (the same workload measured again), never another workload.
    pub allow_updates: bool,
    /// Further measurements any generation may be (earlier or alternative workloads).
    pub allowed: Vec<AllowedWorkload>,
    /// `"workload": "any"`: the workload is explicitly not checked; the other fields are unused.
    pub any: bool,
}

/// One allowed measurement: its events, or only the digest they replay to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowedWorkload {
    /// The events of the measurement, ending with the separator (differences are then named).
    Events(Vec<WorkloadEvent>),
    /// `replay(events)` from a zero PCR: the measurement alone, as `workload.measurement`
    /// prints it.
    Digest(Sha256Digest),
}

impl AllowedWorkload {
    /// The replay of the measurement alone.
    pub fn digest(&self) -> Sha256Digest {
        match self {
            AllowedWorkload::Events(events) => replay(events),
            AllowedWorkload::Digest(digest) => *digest,
        }
    }
}

/// The object form of [`GoldenWorkload`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenWorkloadObject {
    events: Vec<WorkloadEvent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed: Vec<AllowedWorkload>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    allow_updates: bool,
}

/// The string that opts out of workload checks.
const ANY_WORKLOAD: &str = "any";

impl GoldenWorkload {
    /// Only this measurement, once (no updates).
    pub fn new(events: Vec<WorkloadEvent>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }

    /// `"workload": "any"`.
    pub fn any() -> Self {
        Self {
            any: true,
            ..Self::default()
        }
    }

    /// PCR 23 of a VM that has run only this workload since boot.
    pub fn pcr23(&self) -> Sha256Digest {
        replay(&self.events)
    }

    /// Whether the log may hold more than one generation.
    pub fn allows_several_generations(&self) -> bool {
        self.allow_updates || !self.allowed.is_empty()
    }

    /// Which allowed measurement `generation` is: `Some(None)` for `events`, `Some(Some(i))` for
    /// `allowed[i]`, `None` when it is none of them. Compared by replay, which binds every
    /// event's kind, name and digest in order (the display-only `payload` is not measured).
    pub fn find(&self, generation: &[WorkloadEvent]) -> Option<Option<usize>> {
        let digest = replay(generation);
        if digest == self.pcr23() {
            return Some(None);
        }
        self.allowed
            .iter()
            .position(|allowed| allowed.digest() == digest)
            .map(Some)
    }
}

impl Serialize for GoldenWorkload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.any {
            return serializer.serialize_str(ANY_WORKLOAD);
        }
        GoldenWorkloadObject {
            events: self.events.clone(),
            allowed: self.allowed.clone(),
            allow_updates: self.allow_updates,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for GoldenWorkload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = GoldenWorkload;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""any" or an object {events, allowed?, allow_updates?}"#)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<GoldenWorkload, E> {
                match text {
                    ANY_WORKLOAD => Ok(GoldenWorkload::any()),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<GoldenWorkload, A::Error> {
                let object = GoldenWorkloadObject::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(GoldenWorkload {
                    events: object.events,
                    allow_updates: object.allow_updates,
                    allowed: object.allowed,
                    any: false,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// SEV-SNP expectations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSnp {
    /// Allowed launch measurements; empty means the launch digest is not checked (clouds whose
    /// firmware we do not build), and the report says so.
    #[serde(default)]
    pub measurements: Vec<Sha384Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_tcb: Option<Tcb>,
    #[serde(default)]
    pub allow_debug: bool,
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// Allowed VMPLs of the report requester (default: 0 only).
    #[serde(default = "default_vmpls")]
    pub vmpls: Vec<u32>,
}

fn default_vmpls() -> Vec<u32> {
    vec![0]
}

/// Intel TDX expectations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenTdx {
    /// Allowed MRTDs (the TD's build-time measurement); empty means not checked.
    #[serde(default)]
    pub mrtds: Vec<Sha384Digest>,
    /// Expected run-time measurement registers; each is checked only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr0: Option<Sha384Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr1: Option<Sha384Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr2: Option<Sha384Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr3: Option<Sha384Digest>,
    /// Allowed TDX modules (MRSEAM); empty means not checked.
    #[serde(default)]
    pub mrseams: Vec<Sha384Digest>,
    /// Allowed MRSERVICETDs (the service TDs bound to the TD; stated only by TD report 1.5
    /// bodies, quote v5 body type 3); empty means not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mrservicetds: Vec<Sha384Digest>,
    /// TCB statuses accepted for the platform, the TDX module and the QE (default `UpToDate`).
    #[serde(default = "default_tcb_statuses")]
    pub tcb_statuses: Vec<crate::tdx::TcbStatus>,
    #[serde(default)]
    pub allow_debug: bool,
}

fn default_tcb_statuses() -> Vec<crate::tdx::TcbStatus> {
    crate::tdx::DEFAULT_TCB_STATUSES.to_vec()
}

impl Default for GoldenTdx {
    fn default() -> Self {
        Self {
            mrtds: Vec::new(),
            rtmr0: None,
            rtmr1: None,
            rtmr2: None,
            rtmr3: None,
            mrseams: Vec::new(),
            mrservicetds: Vec::new(),
            tcb_statuses: default_tcb_statuses(),
            allow_debug: false,
        }
    }
}

impl GoldenTdx {
    /// RTMR0..=3 as an array.
    pub fn rtmrs(&self) -> [Option<Sha384Digest>; 4] {
        [self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3]
    }
}

/// The golden document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenMeasurement {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Expected SHA-256 PCR values; exactly these PCRs are checked.
    #[serde(default)]
    pub pcrs: BTreeMap<u8, GoldenPcr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<GoldenWorkload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<GoldenSnp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<GoldenTdx>,
    /// The boot events the image build determines (the UKI in PCR 4, command line and initrd in
    /// PCR 9, the UKI's sections in PCR 11), which the firmware's event log (vTPM) or the CC
    /// event log (TDX) must show whatever the cloud's firmware adds around them (`boot.events`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_events: Vec<GoldenBootEvent>,
}

/// One boot event the image build determines: the digest extended into `pcr` (SHA-256 bank;
/// SHA-384 for the TDX CC event log and the vTPM's SHA-384 bank, when the build predicted it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenBootEvent {
    /// The TPM PCR the event is extended into (on TDX: the RTMR that PCR maps to).
    pub pcr: u8,
    pub sha256: Sha256Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha384: Option<Sha384Digest>,
    /// What was measured, e.g. `UKI`, `Linux initrd`, `.cmdline (content)`.
    pub description: String,
}

/// The boot events of an image build's `measurements.json` (its typed schema, a whole checked
/// document): the predicted events our build determines, by PCR in ascending order and in
/// measurement order within one, without the firmware's own actions and separators
/// ([`crate::measurements::Measurements::golden_boot_events`]).
pub fn predicted_boot_events(
    measurements_json: &[u8],
) -> Result<Vec<GoldenBootEvent>, GoldenError> {
    use crate::measurements::{Measurements, MeasurementsError};
    Measurements::from_json(measurements_json)
        .and_then(|document| document.golden_boot_events())
        .map_err(|error| match error {
            MeasurementsError::TooLarge(size) => GoldenError::TooLarge(size),
            other => GoldenError::Shape(other.to_string()),
        })
}

/// Why a golden document cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("golden measurement is {0} bytes, more than the limit of {MAX_GOLDEN_BYTES}")]
    TooLarge(usize),
    #[error("golden measurement JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("golden measurement version {0} is not supported (expected {GOLDEN_VERSION})")]
    Version(u32),
    #[error("golden measurement (predecessor format): {0}")]
    Legacy(String),
    #[error("golden PCR index {0} is out of range 0..=23")]
    PcrIndex(u8),
    #[error("golden measurement: {0}")]
    Shape(String),
    #[error(
        "golden measurement pins nothing (no PCRs, workload, SEV-SNP or TDX values): it would \
         accept any machine; compute one with `cvm-cli golden`"
    )]
    Empty,
}

/// Keys of the predecessor's golden document (inside `golden_measurement`, or at the top).
const LEGACY_KEYS: &[&str] = &[
    "pcrs",
    "measurement",
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "tdx",
];

/// What the JSON value is, for errors that say what was found.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl GoldenMeasurement {
    /// Reads our format, or the predecessor's (`{golden_measurement: {pcrs, measurement, ...}}`,
    /// also as a JSON string).
    pub fn from_json(bytes: &[u8]) -> Result<Self, GoldenError> {
        if bytes.len() > MAX_GOLDEN_BYTES {
            return Err(GoldenError::TooLarge(bytes.len()));
        }
        let value: serde_json::Value = match serde_json::from_slice::<String>(bytes) {
            Ok(inner) => serde_json::from_str(&inner)?,
            Err(_) => serde_json::from_slice(bytes)?,
        };
        let golden = Self::from_value(value)?;
        if golden.version != GOLDEN_VERSION {
            return Err(GoldenError::Version(golden.version));
        }
        if let Some(&index) = golden.pcrs.keys().find(|&&i| i > 23) {
            return Err(GoldenError::PcrIndex(index));
        }
        if golden.pins_nothing() {
            return Err(GoldenError::Empty);
        }
        Ok(golden)
    }

    /// Ours (also wrapped in `golden_measurement`, as the agent serves it), or the predecessor's.
    /// Anything else is an error that names what was found, never an empty golden.
    fn from_value(value: serde_json::Value) -> Result<Self, GoldenError> {
        let serde_json::Value::Object(map) = &value else {
            return Err(GoldenError::Shape(format!(
                "expected a JSON object, found {}",
                json_kind(&value)
            )));
        };
        if map.contains_key("version") {
            return Ok(serde_json::from_value(value)?);
        }
        if let Some(inner) = map.get("golden_measurement") {
            if inner.get("version").is_some() {
                return Ok(serde_json::from_value(inner.clone())?);
            }
        }
        let body = map.get("golden_measurement").unwrap_or(&value);
        let Some(body_map) = body.as_object() else {
            return Err(GoldenError::Shape(format!(
                "golden_measurement is {}, not an object",
                json_kind(body)
            )));
        };
        if let Some(unknown) = body_map.keys().find(|k| !LEGACY_KEYS.contains(&k.as_str())) {
            return Err(GoldenError::Shape(format!(
                "unknown key {unknown:?} (ours has \"version\"; the predecessor's has {})",
                LEGACY_KEYS.join(", ")
            )));
        }
        legacy(body)
    }

    /// True when nothing at all would be compared.
    pub fn pins_nothing(&self) -> bool {
        self.pcrs.is_empty()
            && self.workload.is_none()
            && self.snp.is_none()
            && self.tdx.is_none()
            && self.boot_events.is_empty()
    }
}

/// The predecessor's golden shape: PCRs as base64 or hex strings (or objects holding one), an
/// SNP `measurement`.
fn legacy(value: &serde_json::Value) -> Result<GoldenMeasurement, GoldenError> {
    let body = value.get("golden_measurement").unwrap_or(value);
    let err = |m: String| GoldenError::Legacy(m);
    let mut pcrs = BTreeMap::new();
    if let Some(map) = body
        .get("pcrs")
        .and_then(|p| p.get("pcrs").or(Some(p)))
        .and_then(|p| p.as_object())
    {
        for (key, entry) in map {
            let index: u8 = key
                .parse()
                .map_err(|_| err(format!("PCR index {key:?} is not a number")))?;
            let text = entry
                .as_str()
                .or_else(|| {
                    ["value", "digest", "sha256"]
                        .iter()
                        .find_map(|f| entry.get(*f)?.as_str())
                })
                .ok_or_else(|| err(format!("PCR {index} has no value")))?;
            pcrs.insert(
                index,
                GoldenPcr {
                    sha256: digest_text(text)
                        .ok_or_else(|| err(format!("PCR {index} value is not a SHA-256 digest")))?,
                    sha384: None,
                    source: PcrSource::Observed,
                    note: Some("from the predecessor's golden measurement".into()),
                },
            );
        }
    }
    let snp = match body.get("measurement").and_then(|m| m.as_str()) {
        Some(text) => {
            let bytes = if text.len() == 96 {
                hex::decode(text).ok()
            } else {
                decode_base64(text)
            }
            .ok_or_else(|| err("measurement is neither hex nor base64".into()))?;
            let digest =
                Sha384Digest::from_slice(&bytes).map_err(|e| err(format!("measurement: {e}")))?;
            Some(GoldenSnp {
                measurements: vec![digest],
                vmpls: default_vmpls(),
                ..GoldenSnp::default()
            })
        }
        None => None,
    };
    let tdx = legacy_tdx(body)?;
    Ok(GoldenMeasurement {
        version: GOLDEN_VERSION,
        platform: None,
        pcrs,
        workload: None,
        snp,
        tdx,
        boot_events: Vec::new(),
    })
}

/// The predecessor's TDX values: `mrtd` and `rtmr0`..`rtmr3` (96 hex digits or base64 of 48
/// bytes), beside `measurement` or in a `tdx` object.
fn legacy_tdx(body: &serde_json::Value) -> Result<Option<GoldenTdx>, GoldenError> {
    let source = body.get("tdx").filter(|t| t.is_object()).unwrap_or(body);
    let read = |name: &str| -> Result<Option<Sha384Digest>, GoldenError> {
        let Some(text) = source.get(name).and_then(|v| v.as_str()) else {
            return Ok(None);
        };
        let bytes = if text.len() == 96 {
            hex::decode(text).ok()
        } else {
            decode_base64(text)
        }
        .ok_or_else(|| GoldenError::Legacy(format!("{name} is neither hex nor base64")))?;
        Sha384Digest::from_slice(&bytes)
            .map(Some)
            .map_err(|e| GoldenError::Legacy(format!("{name}: {e}")))
    };
    let mrtd = read("mrtd")?;
    let rtmrs = [
        read("rtmr0")?,
        read("rtmr1")?,
        read("rtmr2")?,
        read("rtmr3")?,
    ];
    if mrtd.is_none() && rtmrs.iter().all(Option::is_none) {
        return Ok(None);
    }
    Ok(Some(GoldenTdx {
        mrtds: mrtd.into_iter().collect(),
        rtmr0: rtmrs[0],
        rtmr1: rtmrs[1],
        rtmr2: rtmrs[2],
        rtmr3: rtmrs[3],
        ..GoldenTdx::default()
    }))
}

fn digest_text(text: &str) -> Option<Sha256Digest> {
    if text.len() == 64 {
        if let Ok(d) = Sha256Digest::from_hex(text) {
            return Some(d);
        }
    }
    Sha256Digest::from_slice(&decode_base64(text)?).ok()
}

/// The predicted PCRs of an image build's `measurements.json`, read through its typed schema
/// ([`crate::measurements::Measurements`]: a whole, checked document), with their SHA-384 values
/// when the build predicted them; entries the build only observed are left out, since only a
/// prediction made offline can serve as a golden value without trusting a running VM.
pub fn predicted_pcrs(measurements_json: &[u8]) -> Result<BTreeMap<u8, GoldenPcr>, GoldenError> {
    use crate::measurements::{Measurements, MeasurementsError};
    Measurements::from_json(measurements_json)
        .and_then(|document| document.golden_pcrs())
        .map_err(|error| match error {
            MeasurementsError::TooLarge(size) => GoldenError::TooLarge(size),
            other => GoldenError::Shape(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicted_pcrs_read_the_typed_schema_with_sha384() {
        // A real file of the builder from before SHA-384: SHA-256 only.
        let old = include_bytes!("../tests/fixtures/measurements-v1-sha256-only.json");
        let pcrs = predicted_pcrs(old).unwrap();
        assert_eq!(pcrs.keys().copied().collect::<Vec<_>>(), [4, 9, 11, 12]);
        assert!(pcrs.values().all(|p| p.sha384.is_none()));
        // The same file with a SHA-384 prediction for PCR 12 (zero, no events) and PCR 9
        // observed only: PCR 12 gets its SHA-384 value, PCR 9 is left out.
        let mut document: serde_json::Value = serde_json::from_slice(old).unwrap();
        document["pcrs"]["12"]["sha384"] = "00".repeat(48).into();
        document["pcrs"]["9"]["source"] = "observed".into();
        let pcrs = predicted_pcrs(document.to_string().as_bytes()).unwrap();
        assert_eq!(pcrs.keys().copied().collect::<Vec<_>>(), [4, 11, 12]);
        assert_eq!(pcrs[&12].sha384, Some(Sha384Digest([0; 48])));
        assert_eq!(pcrs[&12].source, PcrSource::Predicted);
        // Not the builder's document: refused, not read as "no PCRs".
        document["pcr"] = document["pcrs"].take();
        assert!(matches!(
            predicted_pcrs(document.to_string().as_bytes()),
            Err(GoldenError::Shape(_))
        ));
        assert!(matches!(
            predicted_pcrs(&vec![b' '; MAX_GOLDEN_BYTES + 1]),
            Err(GoldenError::TooLarge(_))
        ));
    }

    #[test]
    fn reads_the_predecessor_shape() {
        let zero = crate::encoding::encode_base64(&[0u8; 32]);
        let json = format!(
            r#"{{"golden_measurement": {{"pcrs": {{"hash": "sha256", "pcrs": {{"4": "{zero}", "9": {{"value": "{}"}}}}}}, "measurement": "{}"}}}}"#,
            "11".repeat(32),
            "22".repeat(48)
        );
        let golden = GoldenMeasurement::from_json(json.as_bytes()).unwrap();
        assert_eq!(golden.pcrs[&4].sha256, Sha256Digest([0; 32]));
        assert_eq!(golden.pcrs[&9].sha256, Sha256Digest([0x11; 32]));
        assert_eq!(golden.snp.unwrap().measurements, [Sha384Digest([0x22; 48])]);
    }

    #[test]
    fn reads_the_predecessors_tdx_values() {
        let json = format!(
            r#"{{"golden_measurement": {{"mrtd": "{}", "rtmr0": "{}", "rtmr2": "{}"}}}}"#,
            "11".repeat(48),
            "22".repeat(48),
            crate::encoding::encode_base64(&[0x33; 48])
        );
        let tdx = GoldenMeasurement::from_json(json.as_bytes())
            .unwrap()
            .tdx
            .unwrap();
        assert_eq!(tdx.mrtds, [Sha384Digest([0x11; 48])]);
        assert_eq!(
            tdx.rtmrs(),
            [
                Some(Sha384Digest([0x22; 48])),
                None,
                Some(Sha384Digest([0x33; 48])),
                None
            ]
        );
        assert_eq!(tdx.tcb_statuses, [crate::tdx::TcbStatus::UpToDate]);
        let ours = format!(
            r#"{{"version": 1, "tdx": {{"mrtds": ["{}"], "rtmr1": "{}", "tcb_statuses": ["UpToDate", "SWHardeningNeeded"]}}}}"#,
            "11".repeat(48),
            "44".repeat(48)
        );
        let tdx = GoldenMeasurement::from_json(ours.as_bytes())
            .unwrap()
            .tdx
            .unwrap();
        assert_eq!(tdx.rtmr1, Some(Sha384Digest([0x44; 48])));
        assert!(!tdx.allow_debug);
        let typo = r#"{"version": 1, "tdx": {"mrtd": []}}"#;
        assert!(GoldenMeasurement::from_json(typo.as_bytes()).is_err());
    }

    #[test]
    fn our_format_is_strict() {
        let typo = br#"{"version": 1, "pcr": {}}"#;
        assert!(GoldenMeasurement::from_json(typo).is_err());
        let bad_index = format!(
            r#"{{"version": 1, "pcrs": {{"24": {{"sha256": "{}"}}}}}}"#,
            "00".repeat(32)
        );
        assert!(matches!(
            GoldenMeasurement::from_json(bad_index.as_bytes()),
            Err(GoldenError::PcrIndex(24))
        ));
    }
}
