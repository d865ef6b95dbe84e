//! Workload checks: the PCR 23 log replays to the quoted value, and every measurement in it (each
//! generation since boot, the running one last) is one the golden measurement allows, with a
//! readable difference when it is not.

use super::report::Checks;
use super::Facts;
use crate::evidence::Evidence;
use crate::golden::{GoldenMeasurement, GoldenWorkload};
use crate::workload::{differences as diff, replay, WorkloadEvent, WORKLOAD_PCR};

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
            "replaying the log gives the PCR 23 value the TPM quoted",
            hex::encode(quoted),
            replayed.to_hex(),
        ),
        None => checks.fail(
            "workload.replay",
            "PCR 23 is not covered by a verified quote",
        ),
    }

    let Some((current, earlier)) = generations.split_last() else {
        return;
    };
    check_running(expected, current, checks);
    check_earlier(expected, earlier, checks);
}

/// `workload.measurement`: the running workload (the last generation) is an allowed one.
fn check_running(expected: &GoldenWorkload, current: &[WorkloadEvent], checks: &mut Checks) {
    let (passed, reason) = match expected.find(current) {
        Some(None) => (true, "the running workload is the golden one".to_owned()),
        Some(Some(index)) => (
            true,
            format!("the running workload is allowed measurement {index} of the golden"),
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
        reason,
        format!("{} (PCR 23 from boot)", expected.pcr23().to_hex()),
        format!("{} (this measurement alone)", replay(current).to_hex()),
    );
}

/// `workload.updates`: a workload replaced after boot is allowed at all, and every earlier
/// generation was an allowed measurement too (uploading something else and then the golden
/// workload again must not pass).
fn check_earlier(expected: &GoldenWorkload, earlier: &[&[WorkloadEvent]], checks: &mut Checks) {
    let updates = earlier.len();
    if updates == 0 {
        checks.pass(
            "workload.updates",
            "the workload has not been replaced since boot",
        );
        return;
    }
    let total = updates + 1;
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
        // Rolling back to an allowed measurement is allowed, and said.
        let (state, reason) = status(&checked(&golden, &[&v2, &v1]), "workload.measurement");
        assert_eq!(
            (state, reason.contains("allowed measurement 0")),
            (Status::Pass, true)
        );
        let report = checked(&golden, &[&v1, &evil, &v2]);
        let (state, reason) = status(&report, "workload.updates");
        assert_eq!(state, Status::Fail);
        assert!(reason.contains("generation 2 of 3"), "{reason}");
        assert!(reason.contains("nor is it any of the 2 other"), "{reason}");
        let (state, reason) = status(&checked(&golden, &[&evil]), "workload.measurement");
        assert_eq!(state, Status::Fail, "{reason}");
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
