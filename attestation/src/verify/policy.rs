//! Policy checks that say what the verdict covers: freshness, and whether the golden document
//! pins enough for "verified" to mean this exact boot chain and workload (docs/golden.md,
//! "Policy"). They run first, so a report that would otherwise pass fails visibly here.

use super::report::Checks;
use super::{Freshness, VerifyOptions};
use crate::evidence::{Cloud, Evidence, Tee};
use crate::golden::GoldenMeasurement;

/// The nonce: the evidence answers the verifier's challenge, or the caller explicitly waived
/// freshness (then a SKIP that says a replayed document would pass).
pub(crate) fn freshness(evidence: &Evidence, options: &VerifyOptions, checks: &mut Checks) {
    match (&options.expected_nonce, options.freshness) {
        (Some(expected), _) => checks.compare(
            "nonce",
            expected.as_slice() == evidence.nonce.as_slice(),
            "the evidence answers the nonce the verifier sent",
            hex::encode(expected),
            hex::encode(evidence.nonce.as_slice()),
        ),
        (None, Freshness::Required) => checks.fail(
            "nonce",
            "no nonce to check: without a fresh challenge a replayed evidence document would pass \
             (send a nonce: verify --host does, or pass --nonce; --no-freshness waives this)",
        ),
        (None, Freshness::Waived) => checks.skip(
            "nonce",
            "FRESHNESS NOT CHECKED (waived by the caller): a replayed evidence document passes",
        ),
    }
}

/// What pins the boot chain in `golden` for `platform`, or why nothing does.
pub(crate) fn boot_chain_pins(golden: &GoldenMeasurement, cloud: Cloud, tee: Tee) -> Vec<String> {
    let mut pins = Vec::new();
    let pcr = |i: u8| golden.pcrs.contains_key(&i);
    if pcr(4) && pcr(11) {
        let listed: Vec<String> = golden.pcrs.keys().map(u8::to_string).collect();
        pins.push(format!("PCR {}", listed.join(", ")));
    }
    // Direct boot: the launch digest covers firmware, kernel, initrd and command line
    // (kernel-hashes). On clouds the firmware loads the UKI from disk, unmeasured by it.
    if cloud == Cloud::Qemu && tee == Tee::SevSnp {
        if let Some(snp) = golden.snp.as_ref().filter(|s| !s.measurements.is_empty()) {
            pins.push(format!(
                "SEV-SNP launch digest ({} allowed)",
                snp.measurements.len()
            ));
        }
    }
    if let Some(tdx) = &golden.tdx {
        if tdx.rtmr1.is_some() && tdx.rtmr2.is_some() {
            pins.push("RTMR1 and RTMR2".into());
        }
    }
    // The build's own boot events (`boot.events`): the first boot application in PCR 4 is the
    // UKI, whose Authenticode digest covers its kernel, initrd, command line and sections.
    if let Some(uki) = golden.boot_events.iter().find(|e| e.pcr == 4) {
        let pcrs: std::collections::BTreeSet<u8> =
            golden.boot_events.iter().map(|e| e.pcr).collect();
        let pcrs: Vec<String> = pcrs.iter().map(u8::to_string).collect();
        pins.push(format!(
            "boot events: UKI {} in PCR 4 ({} events in PCR {})",
            &uki.sha256.to_hex()[..16],
            golden.boot_events.len(),
            pcrs.join(", ")
        ));
    }
    pins
}

/// The golden document must pin the boot chain and the workload; a golden that pins nothing
/// would make any machine of the platform "verified".
pub(crate) fn golden_coverage(
    golden: &GoldenMeasurement,
    evidence: &Evidence,
    checks: &mut Checks,
) {
    let platform = golden.platform.unwrap_or_else(|| evidence.platform());
    let pins = boot_chain_pins(golden, platform.cloud, platform.tee);
    if pins.is_empty() {
        checks.fail(
            "golden.boot_chain",
            "the golden measurement does not pin the boot chain: it needs PCR 4 and 11 or the \
             build's boot events (both from cvm-cli golden --measurements), TDX RTMR1 and RTMR2, \
             or a local SEV-SNP launch digest",
        );
    } else {
        checks.pass(
            "golden.boot_chain",
            format!("the boot chain is pinned by {}", pins.join("; ")),
        );
    }
    if golden.workload.is_none() {
        checks.fail(
            "golden.workload",
            "the golden measurement pins no workload (cvm-cli golden --workload DIR computes one; \
             write \"workload\": \"any\" to accept any workload explicitly)",
        );
    }
}
