//! `cvm-cli verify` and `inspect` on the real vectors in ../shared/vectors: exit status, named
//! checks, tamper detection.

use std::path::Path;
mod common;
use common::{cli, stdout, vector};

const AT: &str = "2025-06-01T00:00:00Z";
/// The real vectors come from machines below AMD's current published minimum TCB (which the
/// verifier applies by default, and which the first test shows refusing them): their era's TCB.
const VECTOR_ERA_TCB: &str = "bootloader=2,tee=0,snp=6,microcode=93";

#[test]
fn bare_reports_verify_and_exit_zero() {
    for (report, vcek) in [
        ("virtee-sev/report_milan.hex", "virtee-sev/vcek_milan.der"),
        ("trustee/snp-test-report.bin", "trustee/snp-test-vcek.der"),
        (
            "trustee/az-snp-hcl-report.bin",
            "trustee/az-snp-vcek-chain.pem",
        ),
        ("derived/v2-hcl-report.bin", "derived/v2-vcek.der"),
    ] {
        let output = cli(&[
            "verify",
            "--report",
            &vector(report),
            "--vcek",
            &vector(vcek),
            "--at",
            AT,
            "--min-tcb",
            VECTOR_ERA_TCB,
        ]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{report}:\n{}",
            stdout(&output)
        );
        assert!(stdout(&output).contains("PASS  snp.signature"), "{report}");
    }
}

/// Without a minimum, AMD's published one for the product applies: the 2023 Milan vector's SNP
/// firmware (8) predates the fix for AMD-SB-3019 and is refused by name.
#[test]
fn old_firmware_is_refused_by_the_default_minimum_tcb() {
    let output = cli(&[
        "verify",
        "--report",
        &vector("virtee-sev/report_milan.hex"),
        "--vcek",
        &vector("virtee-sev/vcek_milan.der"),
        "--at",
        AT,
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(text.contains("FAIL  snp.tcb"), "{text}");
    assert!(text.contains("AMD's published minimum"), "{text}");
}

#[test]
fn vlek_report_verifies_through_the_asvk_chain_and_expires() {
    let args = |at: &str| {
        cli(&[
            "verify",
            "--report",
            &vector("trustee/snp-test-vlek-report.bin"),
            "--vcek",
            &vector("trustee/snp-test-vlek.der"),
            "--chain",
            &vector("trustee/milan_ask_ark_asvk.pem"),
            "--at",
            at,
            "--min-tcb",
            VECTOR_ERA_TCB,
        ])
    };
    assert_eq!(args(AT).status.code(), Some(0), "{}", stdout(&args(AT)));
    let expired = args("2026-06-01T00:00:00Z");
    assert_eq!(expired.status.code(), Some(1));
    assert!(
        stdout(&expired).contains("is not valid at"),
        "{}",
        stdout(&expired)
    );
}

#[test]
fn a_flipped_byte_fails_with_exit_one_and_json_names_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = std::fs::read(vector("trustee/snp-test-report.bin")).unwrap();
    report[0x90] ^= 1; // first byte of the launch measurement
    let path = dir.path().join("report.bin");
    std::fs::write(&path, report).unwrap();
    let output = cli(&[
        "verify",
        "--report",
        path.to_str().unwrap(),
        "--vcek",
        &vector("trustee/snp-test-vcek.der"),
        "--at",
        AT,
        "--min-tcb",
        VECTOR_ERA_TCB,
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["verified"], false);
    let failed: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["snp.signature"]);
}

#[test]
fn unreadable_input_exits_two_with_a_message() {
    let output = cli(&[
        "verify",
        "--report",
        "/nonexistent/report.bin",
        "--vcek",
        "/nonexistent/v.der",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent"));
    let output = cli(&[
        "verify",
        "--collaterals",
        &vector("trustee/snp-test-report.bin"),
        "--golden",
        &vector("trustee/snp-test-report.bin"),
    ]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn inspect_detects_each_kind() {
    let dir = tempfile::tempdir().unwrap();
    // The Azure quote's TPMS_ATTEST message, cut out of its bincode wrapper.
    let quote = std::fs::read(vector("azure-cvm-tooling/quote.bin")).unwrap();
    let sig_len = u64::from_le_bytes(quote[0..8].try_into().unwrap()) as usize;
    let msg_start = 8 + sig_len + 8;
    let msg_len = u64::from_le_bytes(quote[8 + sig_len..msg_start].try_into().unwrap()) as usize;
    let attest = dir.path().join("attest.bin");
    std::fs::write(&attest, &quote[msg_start..msg_start + msg_len]).unwrap();
    for (file, kind) in [
        (
            vector("trustee/snp-test-report.bin"),
            "SEV-SNP attestation report",
        ),
        (
            vector("virtee-sev/report_milan.hex"),
            "SEV-SNP attestation report (hex)",
        ),
        (
            vector("azure-cvm-tooling/hcl-report-snp.bin"),
            "Azure HCL report",
        ),
        (
            vector("azure-cvm-tooling/hcl-report-tdx.bin"),
            "Azure HCL report",
        ),
        (attest.display().to_string(), "TPM quote (TPMS_ATTEST)"),
    ] {
        let output = cli(&["inspect", &file, "--json"]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["kind"], kind, "{file}");
    }
    let output = cli(&["inspect", &vector("PROVENANCE.md")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(Path::new(&vector("PROVENANCE.md")).exists());
}
