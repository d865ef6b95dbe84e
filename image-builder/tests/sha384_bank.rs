//! The SHA-384 bank predicted for PCR 4, 9, 11 and 12 against a real boot of the `tiny` image
//! (QEMU TCG + OVMF + swtpm): swtpm without `swtpm_setup` allocates all its banks (SHA-1,
//! SHA-256, SHA-384, SHA-512), OVMF and both stubs extend every active bank, and the tiny init
//! prints the firmware's event log. Replayed, that log must give the guest's SHA-256 PCRs (so it
//! is the TPM's log) and, in the SHA-384 bank, exactly the prediction in `measurements.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cvm_attestation::eventlog::TcgLog;
use cvm_attestation::measurements::Measurements;
use cvm_attestation::tpm::HashAlg;
use image_builder::boot::{self, BootConfig};
use image_builder::config::{Config, Format};
use image_builder::deb::DebCache;
use image_builder::pipeline::{self, Quiet};

/// The hex between `CVM-EVENTLOG-BEGIN` and `CVM-EVENTLOG-END` on the serial console.
fn event_log(serial: &str) -> Vec<u8> {
    let begin = serial
        .find("CVM-EVENTLOG-BEGIN")
        .expect("no event log on the console");
    let rest = &serial[begin + "CVM-EVENTLOG-BEGIN".len()..];
    let end = rest
        .find("CVM-EVENTLOG-END")
        .expect("event log not terminated");
    let text: String = rest[..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    hex::decode(text).expect("event log hex")
}

#[test]
fn sha384_bank_of_a_real_boot_equals_the_prediction() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/tiny.toml");
    let mut cfg = Config::load(&path).expect("images/tiny.toml loads");
    cfg.formats = vec![Format::Raw];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = DebCache::new(DebCache::default_dir()).expect("cache dir");
    pipeline::build(&cfg, &out, &cache, &Quiet).expect("tiny image build");
    let predicted = Measurements::from_reader(
        std::fs::File::open(out.join("measurements.json")).expect("measurements.json"),
    )
    .expect("measurements.json reads through the shared schema");

    let mut boot_cfg = BootConfig::new(out.join("disk.raw"));
    boot_cfg.timeout = Duration::from_secs(420);
    let outcome = boot::boot(&boot_cfg, |s| s.contains("CVM-BOOT-DONE")).unwrap();
    let serial = &outcome.serial;
    let tail: String = serial.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    assert!(
        !outcome.timed_out,
        "boot timed out; serial (reversed):\n{tail}"
    );

    let log = TcgLog::parse(&event_log(serial)).expect("event log parses");
    assert!(
        log.banks
            .iter()
            .any(|(alg, _)| *alg == HashAlg::Sha384.tpm_id()),
        "the TPM has no active SHA-384 bank: {:?}",
        log.banks
    );
    let replay = |bank: HashAlg| -> BTreeMap<u32, String> {
        log.replay(bank)
            .into_iter()
            .map(|(pcr, value)| (pcr, hex::encode(value)))
            .collect()
    };
    let (sha256, sha384) = (replay(HashAlg::Sha256), replay(HashAlg::Sha384));
    let seen = boot::parse_pcr_lines(serial);
    for pcr in [4u32, 9, 11, 12] {
        let value = predicted.pcr(pcr as u8).expect("PCR predicted");
        let zero = |len: usize| "00".repeat(len);
        // The log is the TPM's: its SHA-256 replay is what the guest read from the TPM.
        assert_eq!(
            sha256.get(&pcr).cloned().unwrap_or_else(|| zero(32)),
            seen[&pcr.to_string()],
            "PCR {pcr}: SHA-256 log replay vs the TPM"
        );
        assert_eq!(
            seen[&pcr.to_string()],
            value.sha256,
            "PCR {pcr}: SHA-256 guest vs prediction"
        );
        assert_eq!(
            Some(sha384.get(&pcr).cloned().unwrap_or_else(|| zero(48))),
            value.sha384,
            "PCR {pcr}: SHA-384 log replay vs prediction"
        );
    }
    eprintln!("boot took {:.0} s", outcome.elapsed.as_secs_f64());
}
