//! Offline prediction of the TPM PCRs that this build alone determines, and `measurements.json`.
//!
//! What is measured on a UEFI boot of our UKI (verified against real OVMF + swtpm boots in
//! `tests/image.rs`, and for the SHA-384 bank in `tests/sha384_bank.rs`):
//! - PCR 4 (firmware): `EV_EFI_ACTION` "Calling EFI Application from Boot Option", the
//!   `EV_SEPARATOR` (four zero bytes), the Authenticode digest of the UKI, then the Authenticode
//!   digest of the `.linux` kernel that the stub hands to the firmware's `LoadImage` (Secure Boot
//!   off; with it on that last event is absent).
//! - PCR 11 (systemd-stub): for every section the stub knows, in its fixed order, the digest of
//!   the section name with its NUL and then of the section content (`VirtualSize` bytes).
//! - PCR 9 (the kernel's EFI stub, `EV_EVENT_TAG`): the command line the stub passed as
//!   `LoadOptions` (UTF-16LE with its NUL terminator), if the kernel measures it (Debian's 6.1.19x
//!   does: its EFI stub contains the `LOADED_IMAGE::LoadOptions` tag), then the initrd it receives
//!   over `LoadFile2`: the `.initrd` section, followed, with newer stubs, by the cpio archive
//!   that carries `.osrel` as `/.extra/os-release` (see [`initrd_as_passed`]).
//! - PCR 12 (systemd-stub): credentials, system extensions and an overriding command line; our
//!   images carry none, so it stays zero.
//!
//! The firmware and both stubs measure through the TPM's `HashLogExtendEvent`, which hashes the
//! same data once per active PCR bank. So every event is predicted in the SHA-256 bank and in the
//! SHA-384 bank (the one AWS's NitroTPM attestation document carries): the same events, each
//! digest computed with that bank's hash (the code is generic over sha2's `Digest`), extended
//! with it from a zero PCR.
//!
//! Firmware PCRs 0-3, 5 and 7 depend on the platform's firmware and are observed, not predicted.

use std::borrow::Cow;
use std::collections::BTreeMap;

use sha2::digest::{Digest, Output};
use sha2::{Sha256, Sha384};

use crate::error::Result;
use crate::pe;

/// The `measurements.json` schema, shared with the verifier side.
pub use cvm_attestation::measurements::{
    Event, FileDigest, Measurements, PcrValue, ValueSource, MEASUREMENTS_VERSION,
};

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
    *pcr = extended::<Sha256>(&(*pcr).into(), digest).into();
}

/// `H(pcr || digest)`: a TPM extend in the bank of hash `D`.
pub fn extended<D: Digest>(pcr: &Output<D>, digest: &[u8]) -> Output<D> {
    let mut h = D::new();
    h.update(pcr);
    h.update(digest);
    h.finalize()
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

/// What an event hashes, the same in every bank.
enum Measured<'a> {
    /// The bytes themselves.
    Data(Cow<'a, [u8]>),
    /// The Authenticode digest of a PE image (`LoadImage`).
    Authenticode(&'a [u8]),
}

/// One event to predict: its type, what it hashes, and a description.
struct Planned<'a> {
    event_type: &'static str,
    measured: Measured<'a>,
    description: String,
}

impl<'a> Planned<'a> {
    fn data(
        event_type: &'static str,
        data: impl Into<Cow<'a, [u8]>>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            event_type,
            measured: Measured::Data(data.into()),
            description: description.into(),
        }
    }

    fn authenticode(event_type: &'static str, image: &'a [u8], description: &str) -> Self {
        Self {
            event_type,
            measured: Measured::Authenticode(image),
            description: description.into(),
        }
    }
}

/// One PCR's events replayed in the bank of hash `D`: each event's digest and the final value.
struct Bank<D: Digest> {
    digests: Vec<Output<D>>,
    value: Output<D>,
}

impl<D: Digest> Bank<D> {
    fn replay(events: &[Planned]) -> Result<Self> {
        let mut value = Output::<D>::default();
        let mut digests = Vec::with_capacity(events.len());
        for event in events {
            let digest = match &event.measured {
                Measured::Data(data) => D::digest(data),
                Measured::Authenticode(image) => pe::authenticode::<D>(image)?,
            };
            value = extended::<D>(&value, &digest);
            digests.push(digest);
        }
        Ok(Self { digests, value })
    }
}

/// A predicted PCR in the SHA-256 and SHA-384 banks (hashed side by side: the UKI and kernel
/// are tens of MiB).
fn predicted(events: &[Planned]) -> Result<PcrValue> {
    let (sha256, sha384) = std::thread::scope(|s| {
        let sha384 = s.spawn(|| Bank::<Sha384>::replay(events));
        let sha256 = Bank::<Sha256>::replay(events);
        let sha384 = sha384
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (sha256, sha384)
    });
    let (sha256, sha384) = (sha256?, sha384?);
    let events = events
        .iter()
        .zip(sha256.digests.iter().zip(&sha384.digests))
        .map(|(event, (d256, d384))| Event {
            event_type: event.event_type.into(),
            sha256: hex::encode(d256),
            sha384: Some(hex::encode(d384)),
            description: event.description.clone(),
        })
        .collect();
    Ok(PcrValue {
        sha256: hex::encode(sha256.value),
        sha384: Some(hex::encode(sha384.value)),
        source: ValueSource::Predicted,
        events,
    })
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

/// Predicts PCR 4, 9, 11 and 12, in the SHA-256 and SHA-384 banks, for booting `uki` (built
/// from `stub`) from a firmware boot option, with Secure Boot on or off (on: the stub's
/// `LoadImage` of `.linux` is not measured).
pub fn predict(uki: &[u8], stub: &[u8], secure_boot: bool) -> Result<BTreeMap<String, PcrValue>> {
    let pe = pe::Pe::parse(uki)?;
    let section = |name: &str| pe.section_data(uki, name).unwrap_or_default();
    let linux = section(".linux");

    let mut pcr4 = vec![
        Planned::data(
            "EV_EFI_ACTION",
            BOOT_OPTION_ACTION.as_bytes(),
            BOOT_OPTION_ACTION,
        ),
        Planned::data("EV_SEPARATOR", &[0u8; 4][..], "separator"),
        Planned::authenticode("EV_EFI_BOOT_SERVICES_APPLICATION", uki, "UKI"),
    ];
    if !secure_boot {
        pcr4.push(Planned::authenticode(
            "EV_EFI_BOOT_SERVICES_APPLICATION",
            &linux,
            ".linux loaded by the stub",
        ));
    }

    let mut pcr11 = Vec::new();
    for name in measured_sections(stub) {
        if pe
            .sections
            .iter()
            .any(|s| s.name == name && s.virtual_size > 0)
        {
            let mut with_nul = name.as_bytes().to_vec();
            with_nul.push(0);
            pcr11.push(Planned::data("EV_IPL", with_nul, format!("{name} (name)")));
            let content = if name == ".linux" {
                Cow::Borrowed(&linux[..])
            } else {
                Cow::Owned(section(name))
            };
            pcr11.push(Planned::data(
                "EV_IPL",
                content,
                format!("{name} (content)"),
            ));
        }
    }

    let mut pcr9 = Vec::new();
    // The EFI stub is in the uncompressed part of a bzImage, so its event tags are searchable.
    if contains(&linux, LOAD_OPTIONS_TAG) {
        let cmdline = String::from_utf8_lossy(&section(".cmdline")).into_owned();
        let mut utf16: Vec<u8> = cmdline.encode_utf16().flat_map(u16::to_le_bytes).collect();
        utf16.extend_from_slice(&[0, 0]);
        pcr9.push(Planned::data(
            "EV_EVENT_TAG",
            utf16,
            "LOADED_IMAGE::LoadOptions",
        ));
    }
    pcr9.push(Planned::data(
        "EV_EVENT_TAG",
        initrd_as_passed(&pe, uki, stub),
        "Linux initrd",
    ));

    let mut out = BTreeMap::new();
    out.insert("4".into(), predicted(&pcr4)?);
    out.insert("9".into(), predicted(&pcr9)?);
    out.insert("11".into(), predicted(&pcr11)?);
    out.insert("12".into(), predicted(&[])?);
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

    // The synthetic UKI's kernel (it measures its command line: the tag is in it) and sections.
    const TINY_KERNEL: &[u8] = b"kernel code LOADED_IMAGE::LoadOptions Linux initrd";
    const TINY_OSREL: &[u8] = b"ID=tiny\n";
    const TINY_CMDLINE: &str = "console=ttyS0 roothash=00";
    const TINY_INITRD: &[u8] = b"070701 an initrd";

    /// A minimal PE32+ image: 0x400 bytes of headers (room for six more section headers) and one
    /// `.text` section holding `body`.
    fn tiny_pe(body: &[u8]) -> Vec<u8> {
        fn put(img: &mut [u8], at: usize, v: u32) {
            img[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        let raw = body.len().div_ceil(0x200) * 0x200;
        let mut img = vec![0u8; 0x400 + raw];
        img[..2].copy_from_slice(b"MZ");
        img[0x3c] = 0x40;
        img[0x40..0x44].copy_from_slice(b"PE\0\0");
        img[0x46] = 1; // one section
        img[0x54] = 240; // optional header size
        img[0x58..0x5a].copy_from_slice(&0x20bu16.to_le_bytes());
        put(&mut img, 0x58 + 32, 0x1000); // SectionAlignment
        put(&mut img, 0x58 + 36, 0x200); // FileAlignment
        put(&mut img, 0x58 + 60, 0x400); // SizeOfHeaders
        put(&mut img, 0x58 + 108, 16); // NumberOfRvaAndSizes
        let sec = 0x58 + 240;
        img[sec..sec + 5].copy_from_slice(b".text");
        put(&mut img, sec + 8, body.len() as u32);
        put(&mut img, sec + 12, 0x1000);
        put(&mut img, sec + 16, raw as u32);
        put(&mut img, sec + 20, 0x400);
        img[0x400..0x400 + body.len()].copy_from_slice(body);
        img
    }

    /// A synthetic stub that measures `.linux`, `.osrel`, `.cmdline`, `.initrd`, and a UKI made
    /// from it whose kernel measures its command line.
    fn tiny_uki() -> (Vec<u8>, Vec<u8>) {
        let stub = tiny_pe(b"stub code\0.linux\0.osrel\0.cmdline\0.initrd\0.sbat\0");
        let kernel = tiny_pe(TINY_KERNEL);
        let uki = pe::add_sections(
            &stub,
            &[
                (".osrel", TINY_OSREL),
                (".cmdline", TINY_CMDLINE.as_bytes()),
                (".initrd", TINY_INITRD),
                (".linux", &kernel),
            ],
        )
        .unwrap();
        (uki, stub)
    }

    /// Predictions of the code before SHA-384 was added, for [`tiny_uki`].
    const SHA256_FIXTURE: &str = include_str!("../tests/fixtures/synthetic_uki_sha256.json");

    /// The predictions as JSON with every `sha384` removed.
    fn without_sha384(pcrs: &BTreeMap<String, PcrValue>) -> serde_json::Value {
        fn strip(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    map.remove("sha384");
                    map.values_mut().for_each(strip);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(pcrs).unwrap();
        strip(&mut v);
        v
    }

    /// The value with every object's keys in sorted order, whatever serde_json's map keeps.
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }

    #[test]
    fn sha256_predictions_are_unchanged() {
        let fixture: serde_json::Value = serde_json::from_str(SHA256_FIXTURE).unwrap();
        let (uki, stub) = tiny_uki();
        for (secure_boot, key) in [(false, "secure_boot_off"), (true, "secure_boot_on")] {
            let pcrs = predict(&uki, &stub, secure_boot).unwrap();
            assert_eq!(without_sha384(&pcrs), fixture[key], "{key}");
            // Byte for byte as written before, once the new bank is left out (keys sorted: a
            // workspace test build may have serde_json's preserve_order, through a dev-dependency).
            assert_eq!(
                serde_json::to_string_pretty(&sorted(without_sha384(&pcrs))).unwrap(),
                serde_json::to_string_pretty(&sorted(fixture[key].clone())).unwrap()
            );
        }
    }

    /// The Authenticode SHA-384 of a [`tiny_pe`] or a UKI made from one, by hand: their section
    /// data follows the 0x400 bytes of headers back to back up to the end of the file and there
    /// is no certificate table, so it is the whole file without the checksum (0x98..0x9c) and
    /// the certificate-table directory entry (0xe8..0xf0).
    fn authenticode_sha384_by_hand(image: &[u8]) -> Vec<u8> {
        let mut h = Sha384::new();
        h.update(&image[..0x98]);
        h.update(&image[0x9c..0xe8]);
        h.update(&image[0xf0..]);
        h.finalize().to_vec()
    }

    fn sha384(data: &[u8]) -> Vec<u8> {
        Sha384::digest(data).to_vec()
    }

    /// `(events, value)` of a chain of SHA-384 event digests.
    fn chain384(digests: Vec<Vec<u8>>) -> (Vec<String>, String) {
        let mut pcr = vec![0u8; 48];
        for d in &digests {
            pcr = Sha384::new()
                .chain_update(&pcr)
                .chain_update(d)
                .finalize()
                .to_vec();
        }
        (digests.iter().map(hex::encode).collect(), hex::encode(pcr))
    }

    fn sha384_of(p: &PcrValue) -> (Vec<String>, String) {
        (
            p.events.iter().map(|e| e.sha384.clone().unwrap()).collect(),
            p.sha384.clone().unwrap(),
        )
    }

    #[test]
    fn sha384_predictions_equal_a_hand_computation() {
        let (uki, stub) = tiny_uki();
        let kernel = tiny_pe(TINY_KERNEL);
        let (cmdline, initrd) = (TINY_CMDLINE.as_bytes(), TINY_INITRD);
        // The kernel's PE header lies inside the UKI; it must be hashed as it is there.
        assert!(contains(&uki, &kernel));
        assert_ne!(
            authenticode_sha384_by_hand(&uki),
            authenticode_sha384_by_hand(&kernel)
        );
        assert_eq!(
            pe::authenticode_sha384(&uki).unwrap().to_vec(),
            authenticode_sha384_by_hand(&uki)
        );
        let utf16: Vec<u8> = cmdline.iter().flat_map(|&c| [c, 0]).chain([0, 0]).collect();
        for secure_boot in [false, true] {
            let pcrs = predict(&uki, &stub, secure_boot).unwrap();
            let mut pcr4 = vec![
                sha384(b"Calling EFI Application from Boot Option"),
                sha384(&[0, 0, 0, 0]),
                authenticode_sha384_by_hand(&uki),
            ];
            if !secure_boot {
                pcr4.push(authenticode_sha384_by_hand(&kernel));
            }
            assert_eq!(sha384_of(&pcrs["4"]), chain384(pcr4), "PCR 4");
            let pcr11 = vec![
                sha384(b".linux\0"),
                sha384(&kernel),
                sha384(b".osrel\0"),
                sha384(TINY_OSREL),
                sha384(b".cmdline\0"),
                sha384(cmdline),
                sha384(b".initrd\0"),
                sha384(initrd),
            ];
            assert_eq!(sha384_of(&pcrs["11"]), chain384(pcr11), "PCR 11");
            let pcr9 = vec![sha384(&utf16), sha384(initrd)];
            assert_eq!(sha384_of(&pcrs["9"]), chain384(pcr9), "PCR 9");
            assert_eq!(pcrs["12"].sha384.as_deref(), Some(&*"00".repeat(48)));
            assert!(pcrs["12"].events.is_empty());
        }
    }

    #[test]
    fn predictions_read_back_through_the_shared_schema() {
        let (uki, stub) = tiny_uki();
        let document = Measurements {
            version: MEASUREMENTS_VERSION,
            pcrs: predict(&uki, &stub, false).unwrap(),
            verity_root_hash: "00".repeat(32),
            uki_sha256: hex::encode(sha256(&uki)),
            uki_authenticode_sha256: hex::encode(pe::authenticode_sha256(&uki).unwrap()),
            kernel_cmdline: TINY_CMDLINE.into(),
            kernel_version: "0".into(),
            stub: "synthetic".into(),
            secure_boot: false,
            images: BTreeMap::new(),
        };
        let json = serde_json::to_vec_pretty(&document).unwrap();
        let read = Measurements::from_json(&json).unwrap();
        assert_eq!(read, document);
        let golden = read.golden_pcrs().unwrap();
        assert_eq!(golden.keys().copied().collect::<Vec<_>>(), [4, 9, 11, 12]);
        for (index, pcr) in golden {
            let written = &document.pcrs[&index.to_string()];
            assert_eq!(pcr.sha256.to_hex(), written.sha256);
            assert_eq!(pcr.sha384.map(|d| d.to_hex()), written.sha384);
        }
    }
}
