//! Workload checks: the PCR 23 log replays to the quoted value (and, on TDX, its SHA-384 replay to
//! the TD's own RTMR3), and every measurement in it (each generation since boot, the running one
//! last) is one the golden measurement allows, with a readable difference when it is not.

use super::report::{Checks, Claim};
use super::Facts;
use crate::evidence::{Cloud, Evidence, Tee};
use crate::golden::{GoldenMeasurement, GoldenWorkload};
use crate::workload::{
    differences as diff, replay, DataState, EventKind, WorkloadEvent, WorkloadLog, WORKLOAD_PCR,
};

/// The first Linux release whose TDX guest driver lets user space extend an RTMR
/// (`/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384`; docs/measurement.md).
pub const RTMR_EXTEND_LINUX: &str = "6.16";

pub(crate) fn verify(
    evidence: &Evidence,
    golden: &GoldenMeasurement,
    facts: &Facts,
    checks: &mut Checks,
) {
    let Some(expected) = &golden.workload else {
        checks.skip(
            "workload",
            "the golden measurement has no workload section: PCR 23 is not interpreted",
        );
        return;
    };
    if expected.any {
        checks.skip(
            "workload",
            "the golden accepts any workload (\"workload\": \"any\"): PCR 23 is not interpreted",
        );
        return;
    }
    let Some(log) = &evidence.event_logs.workload else {
        checks.fail("workload.log", "the evidence has no workload event log");
        return;
    };
    let generations = match log.generations() {
        Ok(generations) => generations,
        Err(e) => {
            checks.fail("workload.log", e.to_string());
            return;
        }
    };
    checks.pass(
        "workload.log",
        format!(
            "{} events in {} measurement(s)",
            log.events.len(),
            generations.len()
        ),
    );

    let replayed = log.replay();
    match facts
        .quoted_pcrs
        .as_ref()
        .and_then(|pcrs| pcrs.get(&WORKLOAD_PCR))
    {
        Some(quoted) => checks.compare(
            "workload.replay",
            quoted.as_slice() == replayed.0,
            Claim::new(
                "replaying the log gives the PCR 23 value the TPM quoted",
                "replaying the log does not give the PCR 23 value the TPM quoted: the log is not \
                 what was measured",
            ),
            hex::encode(quoted),
            replayed.to_hex(),
        ),
        None => checks.fail(
            "workload.replay",
            "PCR 23 is not covered by a verified quote",
        ),
    }
    let platform = evidence.platform();
    if platform.tee == Tee::Tdx {
        check_rtmr3(log, platform.cloud, facts.rtmr3, checks);
    }

    let Some((current, earlier)) = generations.split_last() else {
        return;
    };
    check_running(expected, current, checks);
    check_earlier(expected, earlier, checks);
    check_data(current, checks);
}

/// `data.encryption`: how the running measurement says `/data` is protected. The golden's events
/// pin the same `data-key` event (`workload.measurement`); this line says what it means.
fn check_data(current: &[WorkloadEvent], checks: &mut Checks) {
    const NAME: &str = "data.encryption";
    match current.iter().find_map(DataState::of) {
        Some(state) => checks.pass(NAME, state.describe()),
        None => checks.skip(
            NAME,
            "the workload log records no data key: the agent does not encrypt /data on this \
             image (test images); the host can read and change it",
        ),
    }
}

/// `workload.rtmr3` (TDX): the TD's own register confirms the workload log. The agent extends
/// each event's SHA-384 digest into RTMR3 next to PCR 23, so RTMR3 must be the log's SHA-384
/// replay. `rtmr3` is the quoted value, present only when the TD quote verified. A zero RTMR3
/// means the TD's kernel offered no way to extend it: skipped, never passed.
fn check_rtmr3(log: &WorkloadLog, cloud: Cloud, rtmr3: Option<[u8; 48]>, checks: &mut Checks) {
    const NAME: &str = "workload.rtmr3";
    if cloud == Cloud::Azure {
        return checks.skip(
            NAME,
            "Azure: the TD quote is of the TD report the paravisor made at boot, so RTMR3 \
             cannot show the workload; PCR 23 is in the paravisor's vTPM inside the TD",
        );
    }
    let Some(rtmr3) = rtmr3 else {
        // tdx::verify returns no RTMR3 only after failing a tdx.* check: never a pass.
        return checks.skip(
            NAME,
            "the TD quote did not verify (see the tdx checks): RTMR3 is not a fact",
        );
    };
    let replayed = log.replay_sha384();
    let (expected, actual) = (
        format!("{replayed} (SHA-384 replay of the workload log)"),
        hex::encode(rtmr3),
    );
    if let Some(failure) = &log.rtmr3_failure {
        return checks.compare(
            NAME,
            false,
            Claim::outcome(format!(
                "the agent could not extend RTMR3 after PCR 23 ({failure}): RTMR3 does not \
                 follow the workload log"
            )),
            expected,
            actual,
        );
    }
    if rtmr3 == replayed.0 {
        checks.compare(
            NAME,
            true,
            format!(
                "the TEE's own register confirms the workload log: RTMR3 is the SHA-384 replay \
                 of its {} events",
                log.events.len()
            ),
            expected,
            actual,
        );
    } else if rtmr3 == [0; 48] && !log.events.is_empty() {
        checks.skip(
            NAME,
            format!(
                "the TD's kernel offers no RTMR extension to user space (Linux < \
                 {RTMR_EXTEND_LINUX}): the workload rests on the vTPM's PCR 23 alone"
            ),
        );
    } else {
        checks.compare(
            NAME,
            false,
            Claim::outcome(
                "RTMR3 is not the SHA-384 replay of the workload log: the TD extended other \
                 events than this log holds (a log replayed into PCR 23 by the host, or events \
                 missing)",
            ),
            expected,
            actual,
        );
    }
}

/// `workload.measurement`: the running workload (the last generation) is the golden one. The
/// `allowed` measurements are history (what may have run before it since boot), never what a
/// golden for this workload accepts as running now.
fn check_running(expected: &GoldenWorkload, current: &[WorkloadEvent], checks: &mut Checks) {
    let (passed, reason) = match expected.find(current) {
        Some(None) => (true, "the running workload is the golden one".to_owned()),
        Some(Some(index)) => (
            false,
            format!(
                "the running workload is allowed measurement {index} of the golden (allowed only \
                 before it), not the golden one: {}",
                diff(&expected.events, current).join("; ")
            ),
        ),
        None => (
            false,
            format!(
                "the running workload differs: {}{}",
                diff(&expected.events, current).join("; "),
                others(expected)
            ),
        ),
    };
    checks.compare(
        "workload.measurement",
        passed,
        Claim::outcome(reason),
        format!("{} (PCR 23 from boot)", expected.pcr23().to_hex()),
        format!("{} (this measurement alone)", replay(current).to_hex()),
    );
}

/// `workload.updates`: a workload replaced after boot is allowed at all, and every earlier
/// generation was an allowed measurement too (uploading something else and then the golden
/// workload again must not pass).
/// Empty generations (an image booted without a workload: only the token's commitment was
/// measured, nothing ran) are not workloads and are not counted.
fn check_earlier(expected: &GoldenWorkload, earlier: &[&[WorkloadEvent]], checks: &mut Checks) {
    let empty = earlier.iter().filter(|g| is_empty_generation(g)).count();
    let total = earlier.len() + 1;
    let updates = earlier.len() - empty;
    if updates == 0 {
        checks.pass(
            "workload.updates",
            match empty {
                0 => "the workload has not been replaced since boot".to_owned(),
                n => format!(
                    "no other workload ran since boot (before it: {n} empty generation(s), \
                     nothing ran: only the API token's commitment and the state of /data were measured)"
                ),
            },
        );
        return;
    }
    if !expected.allows_several_generations() {
        checks.fail(
            "workload.updates",
            format!(
                "the workload was replaced {updates} time(s) after boot ({total} generations); \
                 the golden measurement does not allow updates"
            ),
        );
        return;
    }
    let problems: Vec<String> = earlier
        .iter()
        .enumerate()
        .filter(|(_, generation)| !is_empty_generation(generation))
        .filter(|(_, generation)| expected.find(generation).is_none())
        .map(|(index, generation)| {
            format!(
                "generation {} of {total} (measurement {}) is not an allowed measurement: {}{}",
                index + 1,
                replay(generation.iter()).to_hex(),
                diff(&expected.events, generation).join("; "),
                others(expected)
            )
        })
        .collect();
    if problems.is_empty() {
        checks.pass(
            "workload.updates",
            format!(
                "the workload was replaced {updates} time(s) after boot; every earlier \
                 generation is a measurement the golden allows"
            ),
        );
    } else {
        checks.fail("workload.updates", problems.join(" | "));
    }
}

/// A generation in which nothing ran: the API token's commitment and how `/data` is protected
/// (e.g. still locked) at most, then the separator.
fn is_empty_generation(generation: &[WorkloadEvent]) -> bool {
    generation.iter().all(|e| {
        matches!(
            e.kind,
            EventKind::ApiToken | EventKind::Separator | EventKind::DataKey
        )
    })
}

/// Says that the other allowed measurements did not match either.
fn others(expected: &GoldenWorkload) -> String {
    match expected.allowed.len() {
        0 => String::new(),
        n => format!(" (nor is it any of the {n} other allowed measurement(s))"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::{Status, VerificationReport};
    use super::*;
    use crate::golden::AllowedWorkload;
    use crate::workload::EventKind;

    /// A measurement with fresh random config content (never seen by an earlier run).
    fn measurement() -> Vec<WorkloadEvent> {
        let mut config = [0u8; 16];
        openssl::rand::rand_bytes(&mut config).unwrap();
        vec![
            WorkloadEvent::over(
                EventKind::ComposeFile,
                "docker-compose.yml",
                b"services: {}",
            ),
            WorkloadEvent::over(EventKind::ConfigFile, "config/app", &config),
            WorkloadEvent::separator(),
        ]
    }

    fn checked(golden: &GoldenWorkload, generations: &[&Vec<WorkloadEvent>]) -> VerificationReport {
        let slices: Vec<&[WorkloadEvent]> = generations.iter().map(|g| g.as_slice()).collect();
        let (current, earlier) = slices.split_last().unwrap();
        let mut checks = Checks::default();
        check_running(golden, current, &mut checks);
        check_earlier(golden, earlier, &mut checks);
        checks.finish("test".into())
    }

    fn status(report: &VerificationReport, name: &str) -> (Status, String) {
        let check = report.check(name).unwrap();
        (check.status, check.reason.clone())
    }

    #[test]
    fn an_evil_generation_before_the_golden_one_fails_by_index() {
        let (good, evil) = (measurement(), measurement());
        // The old document form: allow_updates only ever allowed the golden's own events.
        let golden = GoldenWorkload {
            allow_updates: true,
            ..GoldenWorkload::new(good.clone())
        };
        let report = checked(&golden, &[&good, &evil, &good]);
        assert_eq!(status(&report, "workload.measurement").0, Status::Pass);
        let (state, reason) = status(&report, "workload.updates");
        assert_eq!(state, Status::Fail, "{reason}");
        assert!(reason.contains("generation 2 of 3"), "{reason}");
        assert!(
            reason.contains("config-file \"config/app\" changed"),
            "{reason}"
        );
        assert!(!reason.contains("generation 1 "), "{reason}");
        // Restarts of the same workload still pass.
        let report = checked(&golden, &[&good, &good]);
        assert_eq!(status(&report, "workload.updates").0, Status::Pass);
    }

    #[test]
    fn empty_generations_are_not_workloads_but_do_not_hide_evil_ones() {
        let (good, evil) = (measurement(), measurement());
        let token = crate::workload::TokenCommitment::new([7; 32], "t".repeat(40).as_str());
        let empty = vec![token.event(), WorkloadEvent::separator()];
        // Booted without a workload, then the golden one uploaded: no update in the golden sense.
        let report = checked(&GoldenWorkload::new(good.clone()), &[&empty, &good]);
        let (state, reason) = status(&report, "workload.updates");
        assert_eq!(state, Status::Pass, "{reason}");
        assert!(reason.contains("1 empty generation"), "{reason}");
        // An evil generation after the empty one still fails, numbered as in the log.
        let golden = GoldenWorkload {
            allow_updates: true,
            ..GoldenWorkload::new(good.clone())
        };
        let report = checked(&golden, &[&empty, &evil, &good]);
        let (state, reason) = status(&report, "workload.updates");
        assert_eq!(state, Status::Fail, "{reason}");
        assert!(reason.contains("generation 2 of 3"), "{reason}");
        // Nothing running (the empty generation is current) is not the golden workload.
        let report = checked(&golden, &[&empty]);
        assert_eq!(status(&report, "workload.measurement").0, Status::Fail);
    }

    #[test]
    fn allowed_measurements_pass_in_every_generation_and_nothing_else_does() {
        let (v1, v2, v3, evil) = (measurement(), measurement(), measurement(), measurement());
        let golden = GoldenWorkload {
            allowed: vec![
                AllowedWorkload::Events(v1.clone()),
                AllowedWorkload::Digest(replay(&v3)),
            ],
            ..GoldenWorkload::new(v2.clone())
        };
        let report = checked(&golden, &[&v1, &v3, &v2]);
        assert!(report.failures().next().is_none(), "{report}");
        // Rolling back to an allowed measurement is not running the golden workload.
        let (state, reason) = status(&checked(&golden, &[&v2, &v1]), "workload.measurement");
        assert_eq!(
            (state, reason.contains("allowed measurement 0")),
            (Status::Fail, true)
        );
        let report = checked(&golden, &[&v1, &evil, &v2]);
        let (state, reason) = status(&report, "workload.updates");
        assert_eq!(state, Status::Fail);
        assert!(reason.contains("generation 2 of 3"), "{reason}");
        assert!(reason.contains("nor is it any of the 2 other"), "{reason}");
        let (state, reason) = status(&checked(&golden, &[&evil]), "workload.measurement");
        assert_eq!(state, Status::Fail, "{reason}");
    }

    fn rtmr3_check(log: &WorkloadLog, cloud: Cloud, rtmr3: Option<[u8; 48]>) -> (Status, String) {
        let mut checks = Checks::default();
        check_rtmr3(log, cloud, rtmr3, &mut checks);
        status(&checks.finish("test".into()), "workload.rtmr3")
    }

    #[test]
    fn rtmr3_passes_only_as_the_logs_sha384_replay() {
        let events = [measurement(), measurement()].concat();
        let mut log = WorkloadLog::from_events(events.clone());
        let replayed = log.replay_sha384().0;
        let (state, reason) = rtmr3_check(&log, Cloud::Gcp, Some(replayed));
        assert_eq!(state, Status::Pass, "{reason}");
        assert!(reason.contains("TEE's own register"), "{reason}");

        // A register that lacks the last event: the TD extended another log.
        let short = WorkloadLog::from_events(events[..events.len() - 1].to_vec());
        let (state, _) = rtmr3_check(&log, Cloud::Gcp, Some(short.replay_sha384().0));
        assert_eq!(state, Status::Fail);

        // A kernel without the interface left RTMR3 zero: skipped with the reason, never passed.
        let (state, reason) = rtmr3_check(&log, Cloud::Gcp, Some([0; 48]));
        assert_eq!(state, Status::Skip);
        assert!(reason.contains("Linux < 6.16"), "{reason}");
        assert!(reason.contains("PCR 23 alone"), "{reason}");

        // No verified quote (a tdx.* check failed already): nothing to judge.
        assert_eq!(rtmr3_check(&log, Cloud::Gcp, None).0, Status::Skip);
        // The agent says it failed to extend: fail.
        log.rtmr3_failure = Some("EINVAL".into());
        let (state, reason) = rtmr3_check(&log, Cloud::Gcp, Some([0; 48]));
        assert_eq!(state, Status::Fail);
        assert!(reason.contains("EINVAL"), "{reason}");

        // Azure's quote is from boot: nothing to compare.
        assert_eq!(rtmr3_check(&log, Cloud::Azure, None).0, Status::Skip);
    }

    #[test]
    fn a_replaced_workload_fails_when_updates_are_not_allowed() {
        let good = measurement();
        let report = checked(&GoldenWorkload::new(good.clone()), &[&good, &good]);
        let (state, reason) = status(&report, "workload.updates");
        assert_eq!(state, Status::Fail);
        assert!(reason.contains("does not allow updates"), "{reason}");
    }
}
