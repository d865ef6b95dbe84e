//! The fixed inputs the targets verify against are what they claim: real evidence whose real
//! parts pass their checks, so fuzzed inputs are judged against a meaningful baseline (a target
//! whose baseline already failed every signature would reach little).

use cvm_attestation::verify::{Status, VerificationReport};
use cvm_fuzz::context::{azure_options, context, tdx_options};

fn assert_pass(report: &VerificationReport, names: &[&str]) {
    for name in names {
        let check = report
            .check(name)
            .unwrap_or_else(|| panic!("no check {name}"));
        assert_eq!(check.status, Status::Pass, "{name}: {}", check.reason);
    }
}

#[test]
fn the_azure_evidence_is_real_and_verifies_where_it_can() {
    let c = context();
    let report = cvm_attestation::verify(&c.azure_evidence, &c.azure_golden, &azure_options());
    assert_pass(
        &report,
        &[
            "nonce",
            "tpm.ak",
            "snp.chain",
            "snp.signature",
            "snp.measurement",
            "snp.report_data",
            "tpm.quote.signature",
            "tpm.quote.pcr_digest",
            "pcr[0]",
        ],
    );
}

#[test]
fn the_td_quote_verifies_with_the_real_collateral() {
    let c = context();
    let report = cvm_attestation::verify(&c.tdx_evidence, &c.tdx_golden, &tdx_options());
    assert_pass(
        &report,
        &[
            "tdx.pck_chain",
            "tdx.quote_signature",
            "tdx.tcb_info",
            "tdx.crl",
            "tdx.tcb_status",
            "tdx.mrtd",
        ],
    );
}

#[test]
fn every_target_has_seeds() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for target in cvm_fuzz::seeds::TARGETS {
        assert!(
            !cvm_fuzz::seeds::seeds(target, &repo).is_empty(),
            "{target}"
        );
    }
}
