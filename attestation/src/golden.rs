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
    #[serde(default)]
    pub source: PcrSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The expected workload: the events of one measurement, ending with the separator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenWorkload {
    pub events: Vec<WorkloadEvent>,
    /// Whether a workload replaced after boot (`/update-workload`) may pass: the running
    /// measurement must still equal `events`, but PCR 23 then also covers earlier ones.
    #[serde(default)]
    pub allow_updates: bool,
}

impl GoldenWorkload {
    /// PCR 23 of a VM that has run only this workload since boot.
    pub fn pcr23(&self) -> Sha256Digest {
        replay(&self.events)
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
    /// TCB statuses accepted for the platform, the TDX module and the QE (default `UpToDate`).
    #[serde(default = "default_tcb_statuses")]
    pub tcb_statuses: Vec<String>,
    #[serde(default)]
    pub allow_debug: bool,
}

fn default_tcb_statuses() -> Vec<String> {
    crate::tdx::DEFAULT_TCB_STATUSES
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
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
        let golden = if value.get("version").is_some() {
            serde_json::from_value::<GoldenMeasurement>(value)?
        } else {
            legacy(&value)?
        };
        if golden.version != GOLDEN_VERSION {
            return Err(GoldenError::Version(golden.version));
        }
        if let Some(&index) = golden.pcrs.keys().find(|&&i| i > 23) {
            return Err(GoldenError::PcrIndex(index));
        }
        Ok(golden)
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

/// The predicted PCRs of an image build's `measurements.json` (`{"pcrs": {"4": {"sha256": ..,
/// "source": "predicted"}}}`); entries the build only observed are left out, since only a
/// prediction made offline can serve as a golden value without trusting a running VM.
pub fn predicted_pcrs(measurements_json: &[u8]) -> Result<BTreeMap<u8, GoldenPcr>, GoldenError> {
    if measurements_json.len() > MAX_GOLDEN_BYTES {
        return Err(GoldenError::TooLarge(measurements_json.len()));
    }
    let document: serde_json::Value = serde_json::from_slice(measurements_json)?;
    let mut pcrs = BTreeMap::new();
    for (index, entry) in document["pcrs"].as_object().into_iter().flatten() {
        if entry["source"].as_str() != Some("predicted") {
            continue;
        }
        let index: u8 = index
            .parse()
            .map_err(|_| GoldenError::Legacy(format!("measurements.json: PCR index {index:?}")))?;
        if index > 23 {
            return Err(GoldenError::PcrIndex(index));
        }
        let digest = entry["sha256"]
            .as_str()
            .and_then(|text| Sha256Digest::from_hex(text).ok())
            .ok_or_else(|| {
                GoldenError::Legacy(format!("measurements.json: PCR {index} has no sha256"))
            })?;
        pcrs.insert(
            index,
            GoldenPcr {
                sha256: digest,
                source: PcrSource::Predicted,
                note: Some("predicted by the image build".into()),
            },
        );
    }
    Ok(pcrs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(tdx.tcb_statuses, ["UpToDate"]);
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
