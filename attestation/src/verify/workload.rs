//! Workload checks: the PCR 23 log replays to the quoted value, and the running measurement equals
//! the golden one, with a readable difference when it does not.

use super::report::Checks;
use super::Facts;
use crate::evidence::Evidence;
use crate::golden::GoldenMeasurement;
use crate::workload::{replay, WorkloadEvent, WORKLOAD_PCR};

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

    let Some(current) = generations.last() else {
        return;
    };
    let differences = diff(&expected.events, current);
    checks.compare(
        "workload.measurement",
        differences.is_empty(),
        if differences.is_empty() {
            "the running workload is the golden one".to_owned()
        } else {
            format!("the running workload differs: {}", differences.join("; "))
        },
        format!("{} (PCR 23 from boot)", replay(&expected.events).to_hex()),
        format!(
            "{} (this measurement alone)",
            replay(current.iter()).to_hex()
        ),
    );
    let updates = generations.len() - 1;
    if updates == 0 {
        checks.pass(
            "workload.updates",
            "the workload has not been replaced since boot",
        );
    } else if expected.allow_updates {
        checks.pass(
            "workload.updates",
            format!("the workload was replaced {updates} time(s) after boot; the golden measurement allows it"),
        );
    } else {
        checks.fail(
            "workload.updates",
            format!("the workload was replaced {updates} time(s) after boot; the golden measurement does not allow updates"),
        );
    }
}

/// Differences between two measurements, by event kind and name.
fn diff(expected: &[WorkloadEvent], actual: &[WorkloadEvent]) -> Vec<String> {
    let key = |e: &WorkloadEvent| (e.kind, e.name.clone());
    let describe = |e: &WorkloadEvent| {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if e.name.is_empty() {
            kind
        } else {
            format!("{kind} {:?}", e.name)
        }
    };
    let mut out = Vec::new();
    for e in expected {
        match actual.iter().find(|a| key(a) == key(e)) {
            None => out.push(format!("{} is missing", describe(e))),
            Some(a) if a.payload_digest != e.payload_digest => out.push(format!(
                "{} changed: expected {}{}, got {}{}",
                describe(e),
                short(&e.payload_digest.to_hex()),
                e.payload
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
                short(&a.payload_digest.to_hex()),
                a.payload
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
            )),
            Some(_) => {}
        }
    }
    for a in actual {
        if !expected.iter().any(|e| key(e) == key(a)) {
            out.push(format!("{} is not in the golden measurement", describe(a)));
        }
    }
    if out.is_empty() && expected.iter().map(key).ne(actual.iter().map(key)) {
        out.push("the same events in a different order".into());
    }
    out
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(16)]
}
