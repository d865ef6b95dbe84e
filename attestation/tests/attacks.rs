//! The attack suite (issue "Sound verification"): each test performs one attack that fooled an
//! earlier verifier, with fresh keys every run, and asserts that a named check refuses it.
//!
//! Evidence is forged by hand (`benches/support`): a software "AK" with the attribute bits of a
//! restricted TPM key, TPMS_ATTEST quotes carrying whatever PCRs the attacker wants, and genuine
//! SEV-SNP reports from a TEST-ONLY signer that stands in for the attacker's own TEE guest.

#[path = "../benches/support/mod.rs"]
mod support;

use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::golden::{GoldenError, GoldenMeasurement};
use cvm_attestation::verify::{Status, VerificationReport};
use cvm_attestation::{verify, Evidence};
use support::{fixture, Kind};

fn failed(report: &VerificationReport) -> Vec<&str> {
    report.failures().map(|c| c.name.as_str()).collect()
}

/// Asserts the report is not verified and that `check` is among its failures.
fn refused_by(report: &VerificationReport, check: &str) {
    assert!(!report.verified, "the attack verified:\n{report}");
    assert!(
        failed(report).contains(&check),
        "expected {check} to fail, failures: {:?}\n{report}",
        failed(report)
    );
}

fn on(evidence: &Evidence, cloud: Cloud) -> Evidence {
    let mut evidence = evidence.clone();
    evidence.platform = Some(Platform {
        cloud,
        tee: Tee::SevSnp,
    });
    evidence
}

/// The honest baseline the attacks below start from: GCP evidence whose AK Google (a TEST-ONLY
/// CA here) certified verifies.
#[test]
fn honest_gcp_evidence_verifies() {
    let honest = fixture(Kind::GcpSnp);
    let report = verify(&honest.evidence, &honest.golden, &honest.options);
    assert!(report.verified, "{report}");
    let ak = &report.check("tpm.ak").unwrap().reason;
    assert!(
        ak.contains("Google AK certificate") && ak.contains("bench-1"),
        "{ak}"
    );
}

/// Attack 1: root in any SEV-SNP guest asks its own firmware for a genuine report binding a
/// software key, then signs a made-up quote with the golden PCRs. The key's TPMT_PUBLIC claims
/// every attribute of a restricted TPM key. Nothing vouches that the key is in a TPM.
#[test]
fn a_self_asserted_ak_is_refused_on_gcp_and_aws() {
    let mut forged = fixture(Kind::GcpSnp);
    forged.evidence.tpm.ak_cert = None;
    for cloud in [Cloud::Gcp, Cloud::Aws] {
        let mut golden = forged.golden.clone();
        golden.platform = Some(Platform {
            cloud,
            tee: Tee::SevSnp,
        });
        let report = verify(&on(&forged.evidence, cloud), &golden, &forged.options);
        refused_by(&report, "tpm.ak");
        // The genuine TEE report still checks out: the refusal is about the AK alone.
        assert_eq!(report.check("snp.signature").unwrap().status, Status::Pass);
        // No PCR was taken from the forged quote.
        assert_eq!(report.check("pcr[4]").unwrap().status, Status::Fail);
    }
}

/// Attack 1, with a certificate: a genuine Google AK certificate of another VM (the attacker's
/// own, or anyone's) beside the attacker's software key.
#[test]
fn an_ak_certificate_for_another_key_is_refused() {
    let mut forged = fixture(Kind::GcpSnp);
    let other = fixture(Kind::GcpSnp);
    forged.evidence.tpm.ak_cert = other.evidence.tpm.ak_cert.clone();
    // The other certificate's CA is named too: only the key mismatch refuses it.
    let options = other.options.clone();
    let mut options_both = forged.options.clone();
    options_both.gcp_roots.extend(options.gcp_roots);
    options_both
        .gcp_intermediates
        .extend(options.gcp_intermediates);
    let report = verify(&forged.evidence, &forged.golden, &options_both);
    refused_by(&report, "tpm.ak");
    let reason = &report.check("tpm.ak").unwrap().reason;
    assert!(reason.contains("not the key"), "{reason}");
}

/// Attack 1, across machines: an honest, non-confidential VM running the golden image (its AK
/// certified by Google, its quote genuine) plus a genuine SEV-SNP report from the attacker's
/// own guest that binds the honest VM's AK and the nonce. The honest agent never saw that
/// report, so its quote cannot bind it.
#[test]
fn a_tee_report_from_another_guest_is_refused() {
    let mut mixed = fixture(Kind::GcpSnp);
    // The honest VM has no TEE: its quote binds the nonce alone.
    support::resign_quote(
        &mut mixed,
        &cvm_attestation::tpm::qualifying_data(support::NONCE),
    );
    let report = verify(&mixed.evidence, &mixed.golden, &mixed.options);
    refused_by(&report, "tpm.quote.nonce");
    // Everything else checks out: AK certified, SNP report genuine and bound to that AK.
    for name in [
        "tpm.ak",
        "snp.signature",
        "snp.report_data",
        "tpm.quote.signature",
    ] {
        assert_eq!(report.check(name).unwrap().status, Status::Pass, "{name}");
    }
}

/// Attack 1, on a platform without a trust basis for AKs (a TDX or SNP claim on a cloud we do
/// not know the TPM of): refused, whatever the attribute bits say.
#[test]
fn attribute_bits_never_vouch_for_a_key() {
    let forged = fixture(Kind::Qemu);
    let mut options = forged.options.clone();
    options.trusted_ak = None;
    let report = verify(&forged.evidence, &forged.golden, &options);
    refused_by(&report, "tpm.ak");
    let reason = &report.check("tpm.ak").unwrap().reason;
    assert!(reason.contains("nothing vouches"), "{reason}");
}

/// Attack 2: goldens that pin nothing. Each is an input error naming what is wrong, never an
/// empty golden that lets everything pass.
#[test]
fn goldens_that_pin_nothing_are_input_errors() {
    for (text, says) in [
        ("{\"version\":1}", "pins nothing"),
        ("{}", "pins nothing"),
        ("null", "found null"),
        ("[]", "found an array"),
        ("42", "found a number"),
        (
            "{\"golden_measurment\": {\"pcrs\": {}}}",
            "unknown key \"golden_measurment\"",
        ),
        (
            "{\"golden_measurement\": {\"pcr\": {}}}",
            "unknown key \"pcr\"",
        ),
        ("{\"golden_measurement\": []}", "not an object"),
        ("{\"golden_measurement\": {\"pcrs\": {}}}", "pins nothing"),
    ] {
        let error = GoldenMeasurement::from_json(text.as_bytes())
            .expect_err(&format!("{text} was accepted"));
        assert!(
            error.to_string().contains(says),
            "{text}: {error} (expected it to say {says:?})"
        );
        assert!(matches!(
            error,
            GoldenError::Shape(_) | GoldenError::Empty | GoldenError::Json(_)
        ));
    }
}

/// Attack 2: the agent's own `GET /golden-measurement` answer, read the legacy way, dropped its
/// workload and platform. It now reads back as ours, whole.
#[test]
fn the_agents_golden_document_reads_back_whole() {
    let golden = fixture(Kind::Qemu).golden;
    let served = serde_json::json!({ "golden_measurement": golden });
    let read = GoldenMeasurement::from_json(served.to_string().as_bytes()).unwrap();
    assert_eq!(read, golden);
    assert!(read.workload.is_some() && read.platform.is_some());
}

/// Attack 2: a golden that pins only part of the machine fails by name.
#[test]
fn a_golden_must_pin_the_boot_chain_and_the_workload() {
    let f = fixture(Kind::Qemu);
    let mut no_boot = f.golden.clone();
    no_boot.pcrs.retain(|index, _| *index == 0);
    refused_by(
        &verify(&f.evidence, &no_boot, &f.options),
        "golden.boot_chain",
    );
    let mut no_workload = f.golden.clone();
    no_workload.workload = None;
    refused_by(
        &verify(&f.evidence, &no_workload, &f.options),
        "golden.workload",
    );
    // The complete golden verifies (the attacks above are refused for what they lack).
    let report = verify(&f.evidence, &f.golden, &f.options);
    assert!(report.verified, "{report}");
}

/// Attack 3: evidence without a nonce is a replay waiting to happen. Freshness is required; the
/// waiver is a loud SKIP, never a pass.
#[test]
fn evidence_without_a_fresh_nonce_fails() {
    let f = fixture(Kind::Qemu);
    let mut options = f.options.clone();
    options.expected_nonce = None;
    refused_by(&verify(&f.evidence, &f.golden, &options), "nonce");

    let report = verify(&f.evidence, &f.golden, &options.clone().without_freshness());
    let nonce = report.check("nonce").unwrap();
    assert_eq!(nonce.status, Status::Skip);
    assert!(
        nonce.reason.contains("FRESHNESS NOT CHECKED"),
        "{}",
        nonce.reason
    );

    // A replay: the evidence answers an older nonce than the one sent.
    let replayed = verify(
        &f.evidence,
        &f.golden,
        &f.options
            .clone()
            .with_nonce(b"a fresh nonce 00002".to_vec()),
    );
    refused_by(&replayed, "nonce");
}
