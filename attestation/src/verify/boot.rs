//! `boot.events`: the boot chain pinned by the events the image build determines, not by PCR
//! values (docs/golden.md). A cloud's firmware adds its own events to the boot PCRs, so a value
//! predicted from the build alone does not match there; the build's own events (the UKI's
//! Authenticode digest in PCR 4, the command line and initrd in PCR 9, the UKI's sections in
//! PCR 11) appear unchanged in the firmware's TCG2 event log and, with SHA-384 digests, in the
//! TDX CC event log.
//!
//! A log proves nothing by itself: the firmware log counts only when it replays to PCR values of
//! a verified quote under a trusted AK ([`Facts::quoted_pcrs`]), the CC event log only when it
//! replays to the RTMRs of a verified TD quote (`tdx.ccel`, whose replay is reused, not redone).
//! Then every expected event must appear among its PCR's events (on TDX: the RTMR that PCR maps
//! to), in the golden's order, and no boot application the golden does not name may have run
//! before the build's own in that register: code that ran first could have loaded ours and
//! extended whatever it liked.

use super::report::{Checks, Status};
use super::Facts;
use crate::eventlog::{TcgLog, EV_NO_ACTION};
use crate::evidence::{Evidence, Tee};
use crate::golden::{GoldenBootEvent, GoldenMeasurement};
use crate::tpm::HashAlg;
use std::collections::{BTreeMap, BTreeSet};

const CHECK: &str = "boot.events";
/// `EV_EFI_BOOT_SERVICES_APPLICATION`: a UEFI application was loaded (its Authenticode digest).
const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;

/// `boot.events`, emitted only when the golden has boot events. TDX evidence with a CC event log
/// is judged by it; otherwise by the firmware's TCG2 log under the vTPM quote.
pub(crate) fn verify(
    evidence: &Evidence,
    golden: &GoldenMeasurement,
    facts: &Facts,
    checks: &mut Checks,
) {
    let expected = &golden.boot_events;
    if expected.is_empty() {
        return;
    }
    let logs = &evidence.event_logs;
    let result = match (evidence.platform().tee, &logs.ccel, &logs.firmware) {
        (Tee::Tdx, Some(ccel), _) => {
            cc_event_log(ccel.as_slice(), checks.status("tdx.ccel"), expected)
        }
        (_, _, Some(log)) => firmware_log(
            log.as_slice(),
            facts.quoted_pcrs.as_ref(),
            HashAlg::Sha256,
            expected,
        ),
        (Tee::Tdx, None, None) => Err("the golden pins boot events, and the evidence carries \
             neither the CC event log (event_logs.ccel) nor the firmware event log \
             (event_logs.firmware)"
            .into()),
        (_, _, None) => Err(
            "the golden pins boot events, and the evidence carries no firmware \
             event log (event_logs.firmware)"
                .into(),
        ),
    };
    checks.result(CHECK, result);
}

/// The CC event log register (CC MR index) that holds what a vTPM measures into `pcr`
/// (UEFI 2.10 section 38.4.1): PCR 1 and 7 -> RTMR0 (1), PCR 2-6 -> RTMR1 (2), PCR 8-15 ->
/// RTMR2 (3). PCR 0 is MRTD (0, never extended at run time); later PCRs have none.
fn ccel_register(pcr: u8) -> Option<u32> {
    match pcr {
        1 | 7 => Some(1),
        2..=6 => Some(2),
        8..=15 => Some(3),
        _ => None,
    }
}

fn pcr_name(register: u32) -> String {
    format!("PCR {register}")
}

fn rtmr_name(register: u32) -> String {
    format!("RTMR{}", register.saturating_sub(1))
}

/// The first 8 bytes of a digest in hex, to name it in a reason.
fn short(digest: &[u8]) -> String {
    hex::encode(&digest[..digest.len().min(8)])
}

fn joined<T>(items: impl IntoIterator<Item = T>, f: impl Fn(T) -> String) -> String {
    items.into_iter().map(f).collect::<Vec<_>>().join(", ")
}

/// vTPM: the firmware's log, authenticated by replaying in `bank` to PCR values already verified
/// (a quote under a trusted AK in SHA-256; on AWS, the NitroTPM document's SHA-384 PCRs).
pub(crate) fn firmware_log(
    bytes: &[u8],
    quoted: Option<&BTreeMap<u8, Vec<u8>>>,
    bank: HashAlg,
    expected: &[GoldenBootEvent],
) -> Result<String, String> {
    let log = TcgLog::parse(bytes)
        .map_err(|e| format!("the firmware event log (event_logs.firmware) does not parse: {e}"))?;
    let Some(quoted) = quoted else {
        return Err(
            "no verified quote under a trusted AK: the firmware event log is not \
                    authenticated, so its events prove nothing"
                .into(),
        );
    };
    if let Some(event) = expected.iter().find(|e| e.pcr > 23) {
        return Err(format!(
            "boot event {:?} names PCR {}, which is not a TPM PCR",
            event.description, event.pcr
        ));
    }
    let pcrs: BTreeSet<u8> = expected.iter().map(|e| e.pcr).collect();
    let replayed = log.replay(bank);
    let mut unexplained = Vec::new();
    for &pcr in &pcrs {
        let from_log = replayed
            .get(&u32::from(pcr))
            .cloned()
            .unwrap_or_else(|| vec![0; bank.size()]);
        match quoted.get(&pcr) {
            Some(value) if *value == from_log => {}
            Some(value) => unexplained.push(format!(
                "PCR {pcr}: log {}, quote {}",
                hex::encode(&from_log),
                hex::encode(value)
            )),
            None => unexplained.push(format!("PCR {pcr}: not in the verified quote")),
        }
    }
    if !unexplained.is_empty() {
        return Err(format!(
            "the firmware event log does not replay to the quoted PCRs, so its events prove \
             nothing: {}",
            unexplained.join("; ")
        ));
    }
    let mut wanted = Vec::new();
    for event in expected {
        let digest: &[u8] = match bank {
            HashAlg::Sha384 => match &event.sha384 {
                Some(digest) => &digest.0,
                None => {
                    return Err(format!(
                        "boot event {:?} has no SHA-384 digest in the golden",
                        event.description
                    ))
                }
            },
            _ => &event.sha256.0,
        };
        wanted.push(Wanted {
            register: u32::from(event.pcr),
            digest,
            event,
        });
    }
    find_events(&log, bank, &wanted).verdict(
        &wanted,
        "firmware event log",
        &format!("the quoted PCR {}", joined(&pcrs, u8::to_string)),
        pcr_name,
    )
}

/// TDX: the CC event log, authenticated by `tdx.ccel` (its replay to the verified quote's RTMRs).
fn cc_event_log(
    bytes: &[u8],
    replay: Option<Status>,
    expected: &[GoldenBootEvent],
) -> Result<String, String> {
    match replay {
        Some(Status::Pass) => {}
        Some(_) => {
            return Err(
                "the CC event log does not replay to the quoted RTMRs (tdx.ccel), so \
                        its events prove nothing"
                    .into(),
            )
        }
        None => {
            return Err(
                "no verified TD quote to authenticate the CC event log with (tdx.ccel \
                        did not run), so its events prove nothing"
                    .into(),
            )
        }
    }
    let log = TcgLog::parse(bytes)
        .map_err(|e| format!("the CC event log (event_logs.ccel) does not parse: {e}"))?;
    let mut problems = Vec::new();
    let mut wanted = Vec::new();
    for event in expected {
        match (ccel_register(event.pcr), &event.sha384) {
            (Some(register), Some(digest)) => wanted.push(Wanted {
                register,
                digest: &digest.0,
                event,
            }),
            (None, _) => problems.push(format!(
                "{} (PCR {}): no RTMR holds that PCR",
                event.description, event.pcr
            )),
            (Some(_), None) => problems.push(format!(
                "{} (PCR {}): the golden has no sha384 digest, and the CC event log has SHA-384 \
                 only (compute the golden from a build that predicts SHA-384)",
                event.description, event.pcr
            )),
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "boot events the CC event log cannot show: {}",
            problems.join(", ")
        ));
    }
    let registers: BTreeSet<u32> = wanted.iter().map(|w| w.register).collect();
    find_events(&log, HashAlg::Sha384, &wanted).verdict(
        &wanted,
        "CC event log",
        &format!("the quoted {}", joined(registers, rtmr_name)),
        rtmr_name,
    )
}

/// One expected event, located: the log register it must be in (a PCR, or a CC MR index) and its
/// digest in the bank the log is read in.
struct Wanted<'a> {
    register: u32,
    digest: &'a [u8],
    event: &'a GoldenBootEvent,
}

impl Wanted<'_> {
    fn describe(&self) -> String {
        format!(
            "{} (PCR {}, {})",
            self.event.description,
            self.event.pcr,
            short(self.digest)
        )
    }
}

/// What a log shows of the expected events.
#[derive(Debug, Default, PartialEq, Eq)]
struct Found {
    /// For each expected event, in order: the position in `TcgLog::events` it was found at.
    at: Vec<Option<usize>>,
    /// The expected events not found after the previous one of their PCR, described.
    missing: Vec<String>,
    /// Boot applications the golden does not name that ran before the build's own in their
    /// register: (register, position in `TcgLog::events`, digest).
    foreign: Vec<(u32, usize, Vec<u8>)>,
}

/// One extended event of a register, in log order: (position in `TcgLog::events`, event type,
/// digest in the bank the log is read in).
type LogEvent<'a> = (usize, u32, &'a [u8]);

/// The step function: looks for the `wanted` events in `log`'s `bank` digests. Within one PCR
/// they must appear in order (other events between them are the firmware's or another PCR's
/// sharing the register); an event extended into no register of interest, or informational
/// (`EV_NO_ACTION`), is never a match. The log is assumed authenticated already.
fn find_events(log: &TcgLog, bank: HashAlg, wanted: &[Wanted]) -> Found {
    let registers: BTreeSet<u32> = wanted.iter().map(|w| w.register).collect();
    let mut events: BTreeMap<u32, Vec<LogEvent>> = BTreeMap::new();
    for (position, event) in log.events.iter().enumerate() {
        if event.event_type == EV_NO_ACTION || !registers.contains(&event.index) {
            continue;
        }
        if let Some((_, digest)) = event.digests.iter().find(|(alg, _)| *alg == bank.tpm_id()) {
            events.entry(event.index).or_default().push((
                position,
                event.event_type,
                digest.as_slice(),
            ));
        }
    }

    let mut found = Found::default();
    // Per (register, PCR): where the search for the next expected event starts.
    let mut cursors: BTreeMap<(u32, u8), usize> = BTreeMap::new();
    for w in wanted {
        let list = events.get(&w.register).map(Vec::as_slice).unwrap_or(&[]);
        let cursor = cursors.entry((w.register, w.event.pcr)).or_insert(0);
        match list[*cursor..].iter().position(|(_, _, d)| *d == w.digest) {
            Some(offset) => {
                found.at.push(Some(list[*cursor + offset].0));
                *cursor += offset + 1;
            }
            None => {
                let earlier = list[..*cursor].iter().any(|(_, _, d)| *d == w.digest);
                found.at.push(None);
                found.missing.push(if earlier {
                    format!("{} (present, but out of order)", w.describe())
                } else {
                    w.describe()
                });
            }
        }
    }

    // Nothing the golden does not name may have been started before the build's own events
    // (the last one found) in a register: it could have loaded ours and extended anything.
    for (&register, list) in &events {
        let ours: Vec<(&Wanted, Option<usize>)> = wanted
            .iter()
            .zip(found.at.iter().copied())
            .filter(|(w, _)| w.register == register)
            .collect();
        let Some(last) = ours.iter().filter_map(|(_, at)| *at).max() else {
            continue;
        };
        let digests: BTreeSet<&[u8]> = ours.iter().map(|(w, _)| w.digest).collect();
        for &(position, event_type, digest) in list {
            if position < last
                && event_type == EV_EFI_BOOT_SERVICES_APPLICATION
                && !digests.contains(digest)
            {
                found.foreign.push((register, position, digest.to_vec()));
            }
        }
    }
    found
}

impl Found {
    /// The check's outcome: `Ok(reason)` when every event was found and nothing foreign ran
    /// first, else `Err` naming what is missing (by description) and what ran first.
    fn verdict(
        &self,
        wanted: &[Wanted],
        log_name: &str,
        replayed_to: &str,
        register_name: fn(u32) -> String,
    ) -> Result<String, String> {
        let mut problems = Vec::new();
        if !self.missing.is_empty() {
            problems.push(format!(
                "missing from the {log_name}: {}",
                self.missing.join(", ")
            ));
        }
        if !self.foreign.is_empty() {
            problems.push(format!(
                "boot applications the golden does not name ran before the build's own: {}",
                joined(&self.foreign, |(register, position, digest)| format!(
                    "{} event {} ({})",
                    register_name(*register),
                    position + 1,
                    short(digest)
                ))
            ));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let mut per_pcr: BTreeMap<u8, usize> = BTreeMap::new();
        for w in wanted {
            *per_pcr.entry(w.event.pcr).or_default() += 1;
        }
        Ok(format!(
            "{} boot events of the build ({}) appear in order in the {log_name}, which replays to \
             {replayed_to}; no other boot application ran before them",
            wanted.len(),
            joined(per_pcr, |(pcr, n)| format!("PCR {pcr}: {n}"))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sha256Digest, Sha384Digest};
    use test_support::tcg_log::{
        Bank, TcgLogBuilder, EV_EFI_ACTION, EV_EVENT_TAG, EV_IPL, EV_SEPARATOR,
    };

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");

    /// A real firmware event log of a GCE confidential VM (go-tpm-tools' test logs).
    fn real_log(name: &str) -> TcgLog {
        let bytes = std::fs::read(format!("{VECTORS}/eventlogs/{name}")).unwrap();
        TcgLog::parse(&bytes).unwrap()
    }

    /// The SHA-256 digests of the events of `event_type` in `pcr`, in log order.
    fn digests(log: &TcgLog, pcr: u32, event_type: u32) -> Vec<[u8; 32]> {
        log.events
            .iter()
            .filter(|e| e.index == pcr && e.event_type == event_type)
            .map(|e| {
                let (_, d) = e.digests.iter().find(|(alg, _)| *alg == 0x000b).unwrap();
                d.as_slice().try_into().unwrap()
            })
            .collect()
    }

    fn event(pcr: u8, sha256: [u8; 32], description: &str) -> GoldenBootEvent {
        GoldenBootEvent {
            pcr,
            sha256: Sha256Digest(sha256),
            sha384: None,
            description: description.into(),
        }
    }

    fn wanted_sha256(events: &[GoldenBootEvent]) -> Vec<Wanted<'_>> {
        events
            .iter()
            .map(|event| Wanted {
                register: u32::from(event.pcr),
                digest: &event.sha256.0,
                event,
            })
            .collect()
    }

    /// `find_events` in the SHA-256 bank and its verdict for a firmware log.
    fn judge(log: &TcgLog, events: &[GoldenBootEvent]) -> (Found, Result<String, String>) {
        let wanted = wanted_sha256(events);
        let found = find_events(log, HashAlg::Sha256, &wanted);
        let verdict = found.verdict(&wanted, "firmware event log", "the quote", pcr_name);
        (found, verdict)
    }

    #[test]
    fn an_application_in_pcr_4_of_a_real_gce_log_is_found_and_an_absent_one_named() {
        let log = real_log("ubuntu-2404-amd-sevsnp.bin");
        let apps = digests(&log, 4, EV_EFI_BOOT_SERVICES_APPLICATION);
        assert_eq!(apps.len(), 2, "shim, then GRUB");
        let shim = event(4, apps[0], "shim");
        let (found, verdict) = judge(&log, std::slice::from_ref(&shim));
        assert!(found.at[0].is_some() && found.missing.is_empty() && found.foreign.is_empty());
        assert_eq!(log.events[found.at[0].unwrap()].index, 4);
        let reason = verdict.unwrap();
        assert!(
            reason.contains("1 boot events of the build (PCR 4: 1)"),
            "{reason}"
        );

        // A digest the log does not hold: missing, named by its description.
        let ours = event(4, [0xee; 32], "UKI");
        let (found, verdict) = judge(&log, &[shim, ours]);
        assert_eq!(found.at[1], None);
        let reason = verdict.unwrap_err();
        assert!(
            reason.contains("missing from the firmware event log: UKI (PCR 4, eeeeeeeeeeeeeeee)"),
            "{reason}"
        );
        // In the wrong PCR it is not found either.
        let (found, _) = judge(&log, &[event(9, apps[0], "shim in PCR 9")]);
        assert_eq!(found.missing.len(), 1);
    }

    #[test]
    fn a_boot_application_that_ran_before_the_expected_one_is_named() {
        let log = real_log("ubuntu-2404-amd-sevsnp.bin");
        let apps = digests(&log, 4, EV_EFI_BOOT_SERVICES_APPLICATION);
        // GRUB alone is there, but shim ran before it: whatever ran first could have loaded it.
        let (found, verdict) = judge(&log, &[event(4, apps[1], "GRUB")]);
        assert!(found.missing.is_empty());
        assert_eq!(found.foreign.len(), 1);
        let reason = verdict.unwrap_err();
        assert!(
            reason.contains("ran before the build's own: PCR 4 event 25"),
            "{reason}"
        );
        // Named as well, shim then GRUB: found, in order.
        assert!(judge(
            &log,
            &[event(4, apps[0], "shim"), event(4, apps[1], "GRUB")]
        )
        .1
        .is_ok());
        // The other way round: GRUB found, shim out of order.
        let reason = judge(
            &log,
            &[event(4, apps[1], "GRUB"), event(4, apps[0], "shim")],
        )
        .1
        .unwrap_err();
        assert!(
            reason.contains("shim (PCR 4, 724de6844dd0fe61) (present, but out of order)"),
            "{reason}"
        );
    }

    #[test]
    fn every_boot_event_of_another_real_log_is_found_by_pcr() {
        let log = real_log("cos-101-amd-sev.bin");
        let mut expected: Vec<GoldenBootEvent> = digests(&log, 4, EV_EFI_BOOT_SERVICES_APPLICATION)
            .into_iter()
            .enumerate()
            .map(|(n, d)| event(4, d, &format!("application {n}")))
            .collect();
        // COS loads the same kernel image twice: both events are expected, in order.
        assert_eq!(expected.len(), 4);
        expected.extend(
            digests(&log, 9, EV_IPL)
                .into_iter()
                .map(|d| event(9, d, "GRUB file")),
        );
        let (found, verdict) = judge(&log, &expected);
        assert!(found.at.iter().all(Option::is_some), "{found:?}");
        let reason = verdict.unwrap();
        assert!(reason.contains("(PCR 4: 4, PCR 9: 2)"), "{reason}");
        // Ubuntu's shim is no event of this log.
        let ubuntu = real_log("ubuntu-2404-amd-sevsnp.bin");
        let shim = digests(&ubuntu, 4, EV_EFI_BOOT_SERVICES_APPLICATION)[0];
        expected.insert(0, event(4, shim, "Ubuntu's shim"));
        let reason = judge(&log, &expected).1.unwrap_err();
        assert!(
            reason.contains("missing from the firmware event log: Ubuntu's shim"),
            "{reason}"
        );
    }

    #[test]
    fn the_firmware_log_counts_only_when_it_replays_to_the_quoted_pcrs() {
        let uki = [0x11; 32];
        let mut log = TcgLogBuilder::new(&[Bank::Sha256]);
        log.measure(
            4,
            EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        )
        .measure(4, EV_SEPARATOR, &[0; 4])
        .extend(4, EV_EFI_BOOT_SERVICES_APPLICATION, &[&uki], b"UKI");
        let bytes = log.bytes();
        let mut quoted: BTreeMap<u8, Vec<u8>> = TcgLog::parse(&bytes)
            .unwrap()
            .replay(HashAlg::Sha256)
            .into_iter()
            .map(|(i, v)| (i as u8, v))
            .collect();
        let expected = [event(4, uki, "UKI")];
        let reason = firmware_log(&bytes, Some(&quoted), HashAlg::Sha256, &expected).unwrap();
        assert!(reason.contains("replays to the quoted PCR 4"), "{reason}");

        let reason = firmware_log(&bytes, None, HashAlg::Sha256, &expected).unwrap_err();
        assert!(reason.contains("not authenticated"), "{reason}");
        quoted.get_mut(&4).unwrap()[0] ^= 1;
        let reason = firmware_log(&bytes, Some(&quoted), HashAlg::Sha256, &expected).unwrap_err();
        assert!(
            reason.contains("its events prove nothing: PCR 4: log"),
            "{reason}"
        );
        quoted.remove(&4);
        let reason = firmware_log(&bytes, Some(&quoted), HashAlg::Sha256, &expected).unwrap_err();
        assert!(
            reason.contains("PCR 4: not in the verified quote"),
            "{reason}"
        );
        let reason =
            firmware_log(b"garbage", Some(&quoted), HashAlg::Sha256, &expected).unwrap_err();
        assert!(reason.contains("event_logs.firmware"), "{reason}");
    }

    #[test]
    fn pcrs_map_to_the_rtmrs_of_the_uefi_spec() {
        let mapped: Vec<Option<u32>> = (0..=16).map(ccel_register).collect();
        let expected = [
            None,
            Some(1),
            Some(2),
            Some(2),
            Some(2),
            Some(2),
            Some(2),
            Some(1),
            Some(3),
            Some(3),
            Some(3),
            Some(3),
            Some(3),
            Some(3),
            Some(3),
            Some(3),
            None,
        ];
        assert_eq!(mapped, expected);
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

    #[test]
    fn the_cc_event_log_shows_the_events_in_the_mapped_rtmrs_with_sha384() {
        // TDVF measures PCR 4 into RTMR1 (CC MR index 2), PCR 9 and 11 into RTMR2 (index 3);
        // systemd-stub's PCR 11 events come before the kernel's PCR 9 events in RTMR2.
        let mut ccel = TcgLogBuilder::new(&[Bank::Sha384]);
        ccel.measure(
            2,
            EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        )
        .measure(2, EV_SEPARATOR, &[0; 4])
        .measure(2, EV_EFI_BOOT_SERVICES_APPLICATION, b"the UKI")
        .measure(3, EV_IPL, b".linux\0")
        .measure(3, EV_IPL, b"kernel")
        .measure(3, EV_EVENT_TAG, b"cmdline")
        .measure(3, EV_EVENT_TAG, b"initrd");
        let bytes = ccel.bytes();
        let expected = vec![
            measured(4, b"the UKI", "UKI"),
            measured(9, b"cmdline", "LOADED_IMAGE::LoadOptions"),
            measured(9, b"initrd", "Linux initrd"),
            measured(11, b".linux\0", ".linux (name)"),
            measured(11, b"kernel", ".linux (content)"),
        ];
        let reason = cc_event_log(&bytes, Some(Status::Pass), &expected).unwrap();
        assert!(
            reason.contains("replays to the quoted RTMR1, RTMR2"),
            "{reason}"
        );
        assert!(reason.contains("5 boot events"), "{reason}");

        // Only a replay to a verified quote authenticates the log.
        let reason = cc_event_log(&bytes, Some(Status::Fail), &expected).unwrap_err();
        assert!(
            reason.contains("does not replay to the quoted RTMRs (tdx.ccel)"),
            "{reason}"
        );
        let reason = cc_event_log(&bytes, None, &expected).unwrap_err();
        assert!(reason.contains("no verified TD quote"), "{reason}");

        // In the wrong RTMR (PCR 7 -> RTMR0), or without a SHA-384 digest: not shown.
        let mut wrong = expected.clone();
        wrong[0].pcr = 7;
        let reason = cc_event_log(&bytes, Some(Status::Pass), &wrong).unwrap_err();
        assert!(
            reason.contains("missing from the CC event log: UKI (PCR 7"),
            "{reason}"
        );
        let mut sha256_only = expected.clone();
        sha256_only[2].sha384 = None;
        sha256_only[3].pcr = 16;
        let reason = cc_event_log(&bytes, Some(Status::Pass), &sha256_only).unwrap_err();
        assert!(
            reason.contains("Linux initrd (PCR 9): the golden has no sha384"),
            "{reason}"
        );
        assert!(
            reason.contains(".linux (name) (PCR 16): no RTMR"),
            "{reason}"
        );
        // A boot application before ours in RTMR1 is named by its RTMR.
        let mut evil = TcgLogBuilder::new(&[Bank::Sha384]);
        evil.measure(2, EV_EFI_BOOT_SERVICES_APPLICATION, b"a loader")
            .measure(2, EV_EFI_BOOT_SERVICES_APPLICATION, b"the UKI");
        let reason = cc_event_log(&evil.bytes(), Some(Status::Pass), &expected[..1]).unwrap_err();
        assert!(
            reason.contains("ran before the build's own: RTMR1 event 1"),
            "{reason}"
        );
    }
}
