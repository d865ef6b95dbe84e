//! TCG2 crypto-agile event logs: the firmware's `binary_bios_measurements` (events and the PCRs
//! they replay to, per bank) and the TDX CC event log (the same format, whose "PCR index" is a
//! measurement register: 0 = MRTD, 1..=4 = RTMR0..3, replayed in SHA-384).

use super::Found;
use anyhow::Result;
use cvm_attestation::eventlog::{TcgEvent, TcgLog, EV_NO_ACTION};
use cvm_attestation::tpm::HashAlg;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Offset of the Spec ID signature in the first event (pcrIndex, eventType, SHA-1 digest,
/// eventSize).
const SPEC_ID_AT: usize = 4 + 4 + 20 + 4;
const TPM_ALG_SHA384: u16 = 0x000c;
/// Longest event data shown as text.
const MAX_SHOWN: usize = 96;

/// Which kind of log: they differ in what the register numbers mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogKind {
    /// A vTPM's firmware log: registers are PCRs.
    Firmware,
    /// TDX CCEL: registers are MRTD and RTMR0..3.
    CcEventLog,
}

impl LogKind {
    fn of(log: &TcgLog) -> Self {
        let sha384_only = log.banks.iter().all(|(alg, _)| *alg == TPM_ALG_SHA384);
        if sha384_only && log.events.iter().all(|e| e.index <= 4) {
            Self::CcEventLog
        } else {
            Self::Firmware
        }
    }

    fn register(self, index: u32) -> String {
        match (self, index) {
            (Self::CcEventLog, 0) => "MRTD".into(),
            (Self::CcEventLog, n) => format!("RTMR{}", n - 1),
            (Self::Firmware, n) => format!("PCR {n}"),
        }
    }
}

/// A TCG2 log (starts with the Spec ID event), or an older SHA-1-only log that parses whole;
/// `None` when the file is neither.
pub fn tcg_log(bytes: &[u8]) -> Option<Result<Found>> {
    let signature = bytes.get(SPEC_ID_AT..SPEC_ID_AT + 15)?;
    if signature != b"Spec ID Event03" {
        return sha1_log(bytes).map(|log| Ok(render(&log, "SHA-1 only, TCG 1.2 format")));
    }
    Some(
        TcgLog::parse(bytes)
            .map(|log| render(&log, "crypto-agile"))
            .map_err(|e| anyhow::Error::new(e).context("a TCG2 event log that does not parse")),
    )
}

/// The SHA-1-only format older firmware writes (TCG_PCClientPCREvent throughout, no Spec ID
/// event): accepted only when every event is plausible and the events fill the file.
fn sha1_log(bytes: &[u8]) -> Option<TcgLog> {
    const SHA1: u16 = 0x0004;
    let mut events = Vec::new();
    let mut rest = bytes;
    while !rest.iter().all(|&b| b == 0) {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?))
        };
        let (index, event_type, size) = (word(0)?, word(4)?, word(28)? as usize);
        let known = event_type_name(event_type).is_some();
        if index > 23 || !known || events.len() >= cvm_attestation::eventlog::MAX_EVENTS {
            return None;
        }
        let data = rest.get(32..32usize.checked_add(size)?)?;
        events.push(TcgEvent {
            index,
            event_type,
            digests: vec![(SHA1, rest[8..28].to_vec())],
            data: data.to_vec(),
        });
        rest = &rest[32 + size..];
    }
    (!events.is_empty()).then_some(TcgLog {
        banks: vec![(SHA1, 20)],
        events,
        startup_locality: None,
    })
}

/// Per bank the log has digests for: the registers it replays to, by index.
type Replayed = Vec<(String, BTreeMap<u32, Vec<u8>>)>;

fn render(log: &TcgLog, format: &str) -> Found {
    let kind = LogKind::of(log);
    let replayed: Replayed = log
        .banks
        .iter()
        .filter_map(|(alg, _)| HashAlg::from_tpm(*alg))
        .map(|bank| (bank_name(bank.tpm_id()), log.replay(bank)))
        .collect();
    let replayed_json: Map<String, Value> = replayed
        .iter()
        .map(|(bank, registers)| {
            let registers: Map<String, Value> = registers
                .iter()
                .map(|(index, value)| (kind.register(*index), json!(hex::encode(value))))
                .collect();
            (bank.clone(), Value::Object(registers))
        })
        .collect();
    let events: Vec<Value> = log
        .events
        .iter()
        .enumerate()
        .map(|(i, event)| event_value(kind, i + 1, event))
        .collect();
    let value = json!({
        "format": format,
        "banks": log.banks.iter().map(|(alg, _)| bank_name(*alg)).collect::<Vec<_>>(),
        "startup_locality": log.startup_locality,
        "events": events,
        "replayed": replayed_json,
    });
    let kind_text = match kind {
        LogKind::Firmware => format!("TCG firmware event log ({format})"),
        LogKind::CcEventLog => "TDX CC event log (RTMRs)".to_owned(),
    };
    let text = text(log, kind, &replayed);
    Found {
        kind: kind_text,
        value,
        text: Some(text),
    }
}

fn event_value(kind: LogKind, number: usize, event: &TcgEvent) -> Value {
    let digests: Map<String, Value> = event
        .digests
        .iter()
        .map(|(alg, digest)| (bank_name(*alg), json!(hex::encode(digest))))
        .collect();
    json!({
        "number": number,
        "register": kind.register(event.index),
        "type": event_type_name(event.event_type)
            .map_or_else(|| format!("{:#010x}", event.event_type), str::to_owned),
        "extended": event.event_type != EV_NO_ACTION,
        "digests": digests,
        "data": describe_data(event),
        "data_size": event.data.len(),
    })
}

/// One line per event (the preferred bank's digest shortened; all of them with -v), then the
/// replayed registers.
fn text(log: &TcgLog, kind: LogKind, replayed: &Replayed) -> String {
    let verbose = crate::output::verbosity() >= crate::output::Verbosity::Verbose;
    let has = |name: &str| replayed.iter().any(|(bank, _)| bank == name);
    let preferred = match kind {
        LogKind::CcEventLog => "sha384",
        LogKind::Firmware if has("sha256") => "sha256",
        LogKind::Firmware => replayed.first().map_or("sha1", |(bank, _)| bank.as_str()),
    };
    let mut out = String::new();
    let banks: Vec<String> = log.banks.iter().map(|(a, _)| bank_name(*a)).collect();
    let _ = writeln!(
        out,
        "  banks: {}; {} events; startup locality: {}",
        banks.join(", "),
        log.events.len(),
        log.startup_locality
            .map_or_else(|| "-".into(), |l| l.to_string())
    );
    let _ = writeln!(out, "  events ({preferred} digest):");
    for (i, event) in log.events.iter().enumerate() {
        let name = event_type_name(event.event_type)
            .map_or_else(|| format!("{:#010x}", event.event_type), str::to_owned);
        let digest = event
            .digests
            .iter()
            .find(|(alg, _)| bank_name(*alg) == preferred)
            .map(|(_, d)| hex::encode(d))
            .unwrap_or_default();
        let shown = if verbose {
            &digest[..]
        } else {
            &digest[..digest.len().min(16)]
        };
        let _ = writeln!(
            out,
            "    {:>4}  {:<7} {:<34} {shown}  {}",
            i + 1,
            kind.register(event.index),
            name,
            describe_data(event)
        );
    }
    for (bank, registers) in replayed {
        if bank != preferred && !verbose {
            continue;
        }
        let _ = writeln!(out, "  replayed ({bank}):");
        for (index, value) in registers {
            let register = kind.register(*index);
            let _ = writeln!(out, "    {register:<7} {}", hex::encode(value));
        }
    }
    out
}

fn bank_name(alg: u16) -> String {
    match HashAlg::from_tpm(alg) {
        Some(HashAlg::Sha1) => "sha1".into(),
        Some(HashAlg::Sha256) => "sha256".into(),
        Some(HashAlg::Sha384) => "sha384".into(),
        Some(HashAlg::Sha512) => "sha512".into(),
        None => format!("alg {alg:#06x}"),
    }
}

/// TCG PC Client PFP event type names (section 10.4.1).
fn event_type_name(kind: u32) -> Option<&'static str> {
    Some(match kind {
        0x0 => "EV_PREBOOT_CERT",
        0x1 => "EV_POST_CODE",
        0x3 => "EV_NO_ACTION",
        0x4 => "EV_SEPARATOR",
        0x5 => "EV_ACTION",
        0x6 => "EV_EVENT_TAG",
        0x7 => "EV_S_CRTM_CONTENTS",
        0x8 => "EV_S_CRTM_VERSION",
        0x9 => "EV_CPU_MICROCODE",
        0xa => "EV_PLATFORM_CONFIG_FLAGS",
        0xb => "EV_TABLE_OF_DEVICES",
        0xc => "EV_COMPACT_HASH",
        0xd => "EV_IPL",
        0xe => "EV_IPL_PARTITION_DATA",
        0xf => "EV_NONHOST_CODE",
        0x10 => "EV_NONHOST_CONFIG",
        0x11 => "EV_NONHOST_INFO",
        0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000c => "EV_EFI_VARIABLE_BOOT2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00e1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00e2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        _ => return None,
    })
}

/// The event data, readably: an EFI variable's name, text (ASCII or UTF-16), or its size.
fn describe_data(event: &TcgEvent) -> String {
    let data = &event.data;
    let variable_event = matches!(
        event.event_type,
        0x8000_0001 | 0x8000_0002 | 0x8000_000c | 0x8000_00e0
    );
    if variable_event {
        if let Some(name) = efi_variable_name(data) {
            return format!("variable {name} ({} bytes)", data.len());
        }
    }
    if let Some(text) = ascii(data).or_else(|| utf16(data)) {
        return format!("{text:?}");
    }
    if data.len() <= 8 {
        return format!("0x{}", hex::encode(data));
    }
    format!("{} bytes", data.len())
}

/// UEFI_VARIABLE_DATA: VariableName GUID, name length (chars), data length, UTF-16 name.
fn efi_variable_name(data: &[u8]) -> Option<String> {
    let chars = u64::from_le_bytes(data.get(16..24)?.try_into().ok()?);
    let chars = usize::try_from(chars).ok().filter(|&n| n > 0 && n <= 256)?;
    let name = data.get(32..32 + 2 * chars)?;
    let units: Vec<u16> = name
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

/// Printable ASCII, with trailing NULs allowed, shortened.
fn ascii(data: &[u8]) -> Option<String> {
    let text = data.strip_suffix(&[0]).unwrap_or(data);
    if text.is_empty() || !text.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return None;
    }
    Some(shorten(&String::from_utf8_lossy(text)))
}

/// Printable UTF-16LE (systemd-stub's and the kernel's strings), shortened.
fn utf16(data: &[u8]) -> Option<String> {
    if data.len() < 4 || data.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let units = units.strip_suffix(&[0]).unwrap_or(&units);
    let text = String::from_utf16(units).ok()?;
    let printable = text.chars().all(|c| !c.is_control());
    (printable && !text.is_empty()).then(|| shorten(&text))
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}
