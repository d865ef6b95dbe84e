//! `boot.events` end to end (docs/golden.md): a golden that pins the boot chain by the events the
//! image build determines verifies where the firmware adds events of its own (so the predicted
//! PCR values do not match), and is refused when the build's UKI is not among the events, when
//! another boot application ran before it, or when the log does not replay to the verified quote
//! or RTMRs. Evidence is forged by hand with fresh keys every run (`benches/support`), firmware
//! logs are built with `test_support::tcg_log`.

#[path = "../benches/support/mod.rs"]
mod support;

use cvm_attestation::golden::{predicted_boot_events, predicted_pcrs, GoldenBootEvent};
use cvm_attestation::verify::{Status, VerificationReport};
use cvm_attestation::{verify, Sha256Digest, Sha384Digest};
use support::{fixture, fixture_with_firmware_log, gcp_tdx_fixture, Kind};
use test_support::tcg_log::{
    Bank, TcgLogBuilder, EV_EFI_ACTION, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EVENT_TAG, EV_IPL,
    EV_SEPARATOR,
};

/// A real `measurements.json` of a `tiny` build (SHA-256 only).
const MEASUREMENTS: &[u8] = include_bytes!("fixtures/measurements-v1-sha256-only.json");
/// Its UKI's Authenticode digest.
const UKI: &str = "916424a0a409a7357259d46e68de1788494d8d9c0d91b25dfdef7df24d916bee";

fn check<'a>(report: &'a VerificationReport, name: &str) -> &'a cvm_attestation::verify::Check {
    report
        .check(name)
        .unwrap_or_else(|| panic!("no {name} check:\n{report}"))
}

fn refused_by(report: &VerificationReport, name: &str, says: &str) {
    assert!(!report.verified, "verified:\n{report}");
    let check = check(report, name);
    assert_eq!(check.status, Status::Fail, "{report}");
    assert!(check.reason.contains(says), "{name}: {}", check.reason);
}

/// How the firmware log of a boot of the `tiny` build looks.
#[derive(Default)]
struct Boot {
    /// Leave the build's UKI event out.
    without_uki: bool,
    /// A boot application the firmware started before the UKI (a loader that chain-loads it).
    loader_first: bool,
}

/// The firmware log of a boot of the build in `MEASUREMENTS`, as a cloud's firmware writes it:
/// its own PCR 0 event, an extra boot-option action in PCR 4 that the build cannot predict, then
/// the build's events (PCR 4, 9, 11) with their digests.
fn firmware_log(boot: Boot) -> Vec<u8> {
    let measurements: serde_json::Value = serde_json::from_slice(MEASUREMENTS).unwrap();
    let mut log = TcgLogBuilder::new(&[Bank::Sha256]);
    log.measure(0, 0x0000_0008, b"cloud firmware 1.0"); // EV_S_CRTM_VERSION
    log.measure(
        4,
        EV_EFI_ACTION,
        b"Returning from EFI Application from Boot Option",
    );
    for pcr in ["4", "11", "9"] {
        for event in measurements["pcrs"][pcr]["events"].as_array().unwrap() {
            let description = event["description"].as_str().unwrap();
            let event_type = match event["event_type"].as_str().unwrap() {
                "EV_EFI_ACTION" => EV_EFI_ACTION,
                "EV_SEPARATOR" => EV_SEPARATOR,
                "EV_EFI_BOOT_SERVICES_APPLICATION" => EV_EFI_BOOT_SERVICES_APPLICATION,
                "EV_EVENT_TAG" => EV_EVENT_TAG,
                "EV_IPL" => EV_IPL,
                other => panic!("event type {other}"),
            };
            if description == "UKI" {
                if boot.loader_first {
                    log.measure(4, EV_EFI_BOOT_SERVICES_APPLICATION, b"a loader");
                }
                if boot.without_uki {
                    continue;
                }
            }
            let digest = hex::decode(event["sha256"].as_str().unwrap()).unwrap();
            log.extend(
                pcr.parse().unwrap(),
                event_type,
                &[&digest],
                description.as_bytes(),
            );
        }
    }
    log.bytes()
}

/// The fixture's golden with the build's boot events in place of its boot PCR values.
fn golden_by_events(f: &support::Fixture) -> cvm_attestation::GoldenMeasurement {
    let mut golden = f.golden.clone();
    golden.pcrs.retain(|index, _| *index == 0);
    golden.boot_events = predicted_boot_events(MEASUREMENTS).unwrap();
    golden
}

#[test]
fn boot_events_verify_where_the_firmware_adds_its_own() {
    let f = fixture_with_firmware_log(Kind::GcpSnp, firmware_log(Boot::default()));
    let golden = golden_by_events(&f);
    assert_eq!(golden.boot_events[0].sha256.to_hex(), UKI);
    let report = verify(&f.evidence, &golden, &f.options);
    assert!(report.verified, "{report}");
    let pins = &check(&report, "golden.boot_chain").reason;
    assert!(
        pins.contains("boot events: UKI 916424a0a409a735 in PCR 4 (12 events in PCR 4, 9, 11)"),
        "{pins}"
    );
    let events = check(&report, "boot.events");
    assert_eq!(events.status, Status::Pass);
    assert!(
        events.reason.contains(
            "12 boot events of the build (PCR 4: 2, PCR 9: 2, PCR 11: 8) appear in order in \
             the firmware event log, which replays to the quoted PCR 4, 9, 11"
        ),
        "{}",
        events.reason
    );
    // The checks run after eventlog.firmware.
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    let at = |name| names.iter().position(|n| *n == name).unwrap();
    assert_eq!(at("boot.events"), at("eventlog.firmware") + 1);

    // The same machine against the build's predicted PCR values: PCR 4 holds the firmware's
    // extra event, so the value golden fails where the event golden passes.
    let mut by_values = f.golden.clone();
    by_values.pcrs = predicted_pcrs(MEASUREMENTS).unwrap();
    let report = verify(&f.evidence, &by_values, &f.options);
    assert_eq!(check(&report, "pcr[4]").status, Status::Fail, "{report}");
    assert_eq!(check(&report, "pcr[9]").status, Status::Pass, "{report}");
    assert!(report.check("boot.events").is_none(), "not in this golden");

    // Through JSON, as `cvm-cli golden` writes it.
    let text = serde_json::to_string(&golden).unwrap();
    assert!(text.contains(&format!(
        r#""boot_events":[{{"pcr":4,"sha256":"{UKI}","description":"UKI"}}"#
    )));
    let read = cvm_attestation::GoldenMeasurement::from_json(text.as_bytes()).unwrap();
    assert_eq!(read, golden);
}

#[test]
fn a_log_without_the_uki_fails_naming_it() {
    let f = fixture_with_firmware_log(
        Kind::GcpSnp,
        firmware_log(Boot {
            without_uki: true,
            ..Boot::default()
        }),
    );
    let report = verify(&f.evidence, &golden_by_events(&f), &f.options);
    refused_by(
        &report,
        "boot.events",
        "missing from the firmware event log: UKI (PCR 4, 916424a0a409a735)",
    );
    // The log itself is genuine: it explains the quote.
    assert_eq!(
        check(&report, "eventlog.firmware").status,
        Status::Pass,
        "{report}"
    );
}

#[test]
fn a_log_that_does_not_replay_to_the_quote_proves_nothing() {
    // The machine booted without our UKI; the evidence carries the log of an honest boot.
    let mut f = fixture_with_firmware_log(
        Kind::GcpSnp,
        firmware_log(Boot {
            without_uki: true,
            ..Boot::default()
        }),
    );
    f.evidence.event_logs.firmware = Some(firmware_log(Boot::default()).into());
    let report = verify(&f.evidence, &golden_by_events(&f), &f.options);
    refused_by(
        &report,
        "boot.events",
        "does not replay to the quoted PCRs, so its events prove nothing: PCR 4: log",
    );
}

#[test]
fn a_loader_that_ran_before_the_uki_is_refused() {
    let f = fixture_with_firmware_log(
        Kind::GcpSnp,
        firmware_log(Boot {
            loader_first: true,
            ..Boot::default()
        }),
    );
    let report = verify(&f.evidence, &golden_by_events(&f), &f.options);
    refused_by(
        &report,
        "boot.events",
        "boot applications the golden does not name ran before the build's own: PCR 4 event",
    );
}

#[test]
fn without_a_log_or_a_trusted_quote_boot_events_fail() {
    // No firmware log in the evidence.
    let f = fixture(Kind::GcpSnp);
    let report = verify(&f.evidence, &golden_by_events(&f), &f.options);
    refused_by(&report, "boot.events", "event_logs.firmware");

    // A log, but nobody vouches for the AK: the quoted PCRs are no facts.
    let f = fixture_with_firmware_log(Kind::Qemu, firmware_log(Boot::default()));
    let golden = golden_by_events(&f);
    assert!(verify(&f.evidence, &golden, &f.options).verified);
    let mut options = f.options.clone();
    options.trusted_ak = None;
    let report = verify(&f.evidence, &golden, &options);
    refused_by(
        &report,
        "boot.events",
        "no verified quote under a trusted AK",
    );

    // A golden without boot events: no such check.
    let report = verify(&f.evidence, &f.golden, &f.options);
    assert!(report.verified, "{report}");
    assert!(report.check("boot.events").is_none());
}

/// Data measured in both banks, as the golden carries it.
fn measured(pcr: u8, data: &[u8], description: &str) -> GoldenBootEvent {
    GoldenBootEvent {
        pcr,
        sha256: Sha256Digest(Bank::Sha256.digest(data).try_into().unwrap()),
        sha384: Some(Sha384Digest(Bank::Sha384.digest(data).try_into().unwrap())),
        description: description.into(),
    }
}

/// The CC event log of a TDX boot of a build: TDVF's RTMR0 event, PCR 4's events in RTMR1
/// (CC MR index 2), systemd-stub's PCR 11 and the kernel's PCR 9 events in RTMR2 (index 3).
fn ccel(with_uki: bool) -> Vec<u8> {
    let mut log = TcgLogBuilder::new(&[Bank::Sha384]);
    log.measure(1, 0x8000_0008, b"TD HOB") // EV_EFI_HANDOFF_TABLES2
        .measure(
            2,
            EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        )
        .measure(2, EV_EFI_ACTION, b"a cloud's extra action")
        .measure(2, EV_SEPARATOR, &[0; 4]);
    if with_uki {
        log.measure(2, EV_EFI_BOOT_SERVICES_APPLICATION, b"the UKI");
    }
    log.measure(3, EV_IPL, b".linux\0")
        .measure(3, EV_IPL, b"the kernel")
        .measure(3, EV_EVENT_TAG, b"the command line")
        .measure(3, EV_EVENT_TAG, b"the initrd");
    log.bytes()
}

fn tdx_boot_events() -> Vec<GoldenBootEvent> {
    vec![
        measured(4, b"the UKI", "UKI"),
        measured(9, b"the command line", "LOADED_IMAGE::LoadOptions"),
        measured(9, b"the initrd", "Linux initrd"),
        measured(11, b".linux\0", ".linux (name)"),
        measured(11, b"the kernel", ".linux (content)"),
    ]
}

#[test]
fn on_tdx_the_events_come_from_the_cc_event_log_under_the_verified_quote() {
    let f = gcp_tdx_fixture(ccel(true));
    let mut golden = f.golden.clone();
    golden.boot_events = tdx_boot_events();
    let report = verify(&f.evidence, &golden, &f.options);
    assert!(report.verified, "{report}");
    assert_eq!(check(&report, "tdx.ccel").status, Status::Pass);
    let events = &check(&report, "boot.events").reason;
    assert!(
        events.contains(
            "appear in order in the CC event log, which replays to the quoted RTMR1, RTMR2"
        ),
        "{events}"
    );
    assert!(check(&report, "golden.boot_chain")
        .reason
        .contains("boot events: UKI"));

    // A CC event log that is not the one the quoted RTMRs were extended with.
    let mut swapped = f.evidence.clone();
    swapped.event_logs.ccel = Some(ccel(false).into());
    let report = verify(&swapped, &golden, &f.options);
    refused_by(&report, "tdx.ccel", "RTMR1");
    refused_by(
        &report,
        "boot.events",
        "does not replay to the quoted RTMRs (tdx.ccel)",
    );

    // None at all.
    let mut without = f.evidence.clone();
    without.event_logs.ccel = None;
    refused_by(
        &verify(&without, &golden, &f.options),
        "boot.events",
        "neither the CC event log (event_logs.ccel)",
    );

    // A TD that booted without our UKI, its log genuine.
    let f = gcp_tdx_fixture(ccel(false));
    let report = verify(&f.evidence, &golden, &f.options);
    assert_eq!(check(&report, "tdx.ccel").status, Status::Pass);
    refused_by(
        &report,
        "boot.events",
        "missing from the CC event log: UKI (PCR 4,",
    );
}
