//! Offline prediction of the TPM PCRs that this build alone determines, and `measurements.json`.
//!
//! What is measured on a UEFI boot of our UKI (verified against a real OVMF + swtpm boot in
//! `tests/boot.rs`):
//! - PCR 4 (firmware): `EV_EFI_ACTION` "Calling EFI Application from Boot Option", the
//!   `EV_SEPARATOR` (four zero bytes), the Authenticode SHA-256 of the UKI, then the Authenticode
//!   SHA-256 of the `.linux` kernel that the stub hands to the firmware's `LoadImage` (Secure Boot
//!   off; with it on that last event is absent).
//! - PCR 11 (systemd-stub): for every section the stub knows, in its fixed order, the SHA-256 of
//!   the section name with its NUL and then of the section content (`VirtualSize` bytes).
//! - PCR 9 (the kernel's EFI stub, `EV_EVENT_TAG`): the command line the stub passed as
//!   `LoadOptions` (UTF-16LE with its NUL terminator), if the kernel measures it (Debian's 6.1.19x
//!   does: its EFI stub contains the `LOADED_IMAGE::LoadOptions` tag), then the initrd it receives
//!   over `LoadFile2`: the `.initrd` section, followed, with newer stubs, by the cpio archive
//!   that carries `.osrel` as `/.extra/os-release` (see [`initrd_as_passed`]).
//! - PCR 12 (systemd-stub): credentials, system extensions and an overriding command line; our
//!   images carry none, so it stays zero.
//!
//! Firmware PCRs 0-3, 5 and 7 depend on the platform's firmware and are observed, not predicted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::pe;

/// Sections systemd-stub measures into PCR 11, in its order (`.pcrsig` never is). A given stub
/// measures only the names it knows; see [`measured_sections`].
const STUB_SECTION_ORDER: &[&str] = &[
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
    ".pcrpkey", ".profile", ".dtbauto", ".hwids", ".efifw",
];

/// The tag of the kernel's command-line event in PCR 9.
const LOAD_OPTIONS_TAG: &[u8] = b"LOADED_IMAGE::LoadOptions";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The firmware's PCR 4 action string for a boot-option launch.
pub const BOOT_OPTION_ACTION: &str = "Calling EFI Application from Boot Option";

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `pcr = SHA-256(pcr || digest)`.
pub fn extend(pcr: &mut [u8; 32], digest: &[u8; 32]) {
    let mut h = Sha256::new();
    h.update(*pcr);
    h.update(digest);
    *pcr = h.finalize().into();
}

/// One predicted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// TCG event type name, e.g. `EV_EFI_ACTION`, `EV_IPL`.
    pub event_type: String,
    pub sha256: String,
    pub description: String,
}

/// One PCR's value and how we know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrValue {
    pub sha256: String,
    /// `predicted` (computed from the build) or `observed` (read from a booted VM).
    pub source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

/// A digest and size of one output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub sha256: String,
    pub size: u64,
}

/// The content of `measurements.json` (schema in docs/image.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    pub version: u32,
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

/// Sections of this stub that it measures, in measurement order: the known order filtered to
/// the names the stub's code and data contain as NUL-terminated strings (its section headers
/// are skipped: a header name could match by accident).
pub fn measured_sections(stub: &[u8]) -> Vec<&'static str> {
    let body = pe::Pe::parse(stub)
        .ok()
        .and_then(|p| stub.get(p.size_of_headers as usize..))
        .unwrap_or(stub);
    STUB_SECTION_ORDER
        .iter()
        .copied()
        .filter(|name| {
            let mut needle = vec![0u8];
            needle.extend_from_slice(name.as_bytes());
            needle.push(0);
            contains(body, &needle)
        })
        .collect()
}

struct Chain {
    value: [u8; 32],
    events: Vec<Event>,
}

impl Chain {
    fn new() -> Self {
        Self {
            value: [0; 32],
            events: Vec::new(),
        }
    }
    fn ext(&mut self, event_type: &str, digest: [u8; 32], description: impl Into<String>) {
        extend(&mut self.value, &digest);
        self.events.push(Event {
            event_type: event_type.into(),
            sha256: hex::encode(digest),
            description: description.into(),
        });
    }
    fn done(self) -> PcrValue {
        PcrValue {
            sha256: hex::encode(self.value),
            source: "predicted".into(),
            events: self.events,
        }
    }
}

/// The initrd the stub hands the kernel: `.initrd`, plus, for stubs that pass `.osrel` to the
/// initrd as `/.extra/os-release` (they contain that name as a UTF-16 string; 257 does, 252 does
/// not), the cpio archive they generate for it, appended at a 4-byte boundary.
pub fn initrd_as_passed(pe: &pe::Pe, uki: &[u8], stub: &[u8]) -> Vec<u8> {
    let mut initrd = pe.section_data(uki, ".initrd").unwrap_or_default();
    let utf16: Vec<u8> = "os-release"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    if let (true, Some(osrel)) = (contains(stub, &utf16), pe.section_data(uki, ".osrel")) {
        initrd.resize(initrd.len().div_ceil(4) * 4, 0);
        initrd.extend_from_slice(&crate::cpio::systemd_stub_extra("os-release", &osrel));
    }
    initrd
}

/// Predicts PCR 4, 9, 11 and 12 for booting `uki` (built from `stub`) from a firmware boot
/// option, with Secure Boot on or off (on: the stub's `LoadImage` of `.linux` is not measured).
pub fn predict(uki: &[u8], stub: &[u8], secure_boot: bool) -> Result<BTreeMap<String, PcrValue>> {
    let pe = pe::Pe::parse(uki)?;
    let section = |name: &str| pe.section_data(uki, name).unwrap_or_default();
    let linux = section(".linux");

    let mut pcr4 = Chain::new();
    pcr4.ext(
        "EV_EFI_ACTION",
        sha256(BOOT_OPTION_ACTION.as_bytes()),
        BOOT_OPTION_ACTION,
    );
    pcr4.ext("EV_SEPARATOR", sha256(&[0; 4]), "separator");
    pcr4.ext(
        "EV_EFI_BOOT_SERVICES_APPLICATION",
        pe::authenticode_sha256(uki)?,
        "UKI",
    );
    if !secure_boot {
        pcr4.ext(
            "EV_EFI_BOOT_SERVICES_APPLICATION",
            pe::authenticode_sha256(&linux)?,
            ".linux loaded by the stub",
        );
    }

    let mut pcr11 = Chain::new();
    for name in measured_sections(stub) {
        if pe
            .sections
            .iter()
            .any(|s| s.name == name && s.virtual_size > 0)
        {
            let mut with_nul = name.as_bytes().to_vec();
            with_nul.push(0);
            pcr11.ext("EV_IPL", sha256(&with_nul), format!("{name} (name)"));
            pcr11.ext(
                "EV_IPL",
                sha256(&section(name)),
                format!("{name} (content)"),
            );
        }
    }

    let mut pcr9 = Chain::new();
    // The EFI stub is in the uncompressed part of a bzImage, so its event tags are searchable.
    if contains(&linux, LOAD_OPTIONS_TAG) {
        let cmdline = String::from_utf8_lossy(&section(".cmdline")).into_owned();
        let mut utf16: Vec<u8> = cmdline.encode_utf16().flat_map(u16::to_le_bytes).collect();
        utf16.extend_from_slice(&[0, 0]);
        pcr9.ext("EV_EVENT_TAG", sha256(&utf16), "LOADED_IMAGE::LoadOptions");
    }
    pcr9.ext(
        "EV_EVENT_TAG",
        sha256(&initrd_as_passed(&pe, uki, stub)),
        "Linux initrd",
    );

    let mut out = BTreeMap::new();
    out.insert("4".into(), pcr4.done());
    out.insert("9".into(), pcr9.done());
    out.insert("11".into(), pcr11.done());
    out.insert("12".into(), Chain::new().done());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_from_zero() {
        let mut p = [0u8; 32];
        extend(&mut p, &[1; 32]);
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update([1u8; 32]);
        assert_eq!(p, <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn section_filter_uses_stub_strings() {
        let stub = b"xx\0.linux\0.cmdline\0.sbat,1\0";
        assert_eq!(measured_sections(stub), vec![".linux", ".cmdline"]);
    }
}
