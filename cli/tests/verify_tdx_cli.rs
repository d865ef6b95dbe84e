//! `cvm-cli verify --report TDQUOTE --collateral FILE` and `inspect` on the real TDX vectors in
//! ../shared/vectors/tdx and the Azure TDX HCL report: exit status, named checks, tampering,
//! expiry. And a TEST-ONLY v5 quote (hex with `0x`): the TDX checks run, inspect shows its body
//! type, TEE_TCB_SVN2 and MRSERVICETD.

mod common;
use common::{cli, stdout, vector};
use std::process::Output;

/// Inside the real collateral's validity (TCB info 2025-06-19 to 2025-07-19).
const AT: &str = "2025-07-01T00:00:00Z";

fn failed_checks(output: &Output) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn verify_quote(quote: &str, at: &str, extra: &[&str]) -> Output {
    let collateral = vector("tdx/tdx_quote_collateral.json");
    let mut args = vec![
        "verify",
        "--report",
        quote,
        "--collateral",
        &collateral,
        "--at",
        at,
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

#[test]
fn the_real_td_quote_verifies_up_to_date() {
    let output = verify_quote(&vector("tdx/tdx_quote"), AT, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let text = stdout(&output);
    for line in [
        "PASS  tdx.pck_chain",
        "PASS  tdx.quote_signature",
        "PASS  tdx.tcb_status",
        "platform UpToDate",
        "Intel SGX Root CA (pinned)",
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
}

#[test]
fn expired_collateral_and_a_flipped_byte_exit_one_with_named_checks() {
    let output = verify_quote(
        &vector("tdx/tdx_quote"),
        "2025-08-01T00:00:00Z",
        &["--json"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        failed_checks(&output),
        ["tdx.tcb_info", "tdx.qe_identity", "tdx.crl"]
    );
    assert!(stdout(&output).contains("TCB info is not valid at"));

    let dir = tempfile::tempdir().unwrap();
    let mut quote = std::fs::read(vector("tdx/tdx_quote")).unwrap();
    quote[48 + 136] ^= 1; // MRTD
    let path = dir.path().join("quote.bin");
    std::fs::write(&path, quote).unwrap();
    let output = verify_quote(path.to_str().unwrap(), AT, &["--json"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(failed_checks(&output), ["tdx.quote_signature"]);
}

#[test]
fn without_collateral_the_tcb_is_not_judged_and_statuses_are_configurable() {
    let output = cli(&[
        "verify",
        "--report",
        &vector("tdx/tdx_quote"),
        "--at",
        AT,
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(failed_checks(&output), ["tdx.collateral"]);

    let output = verify_quote(
        &vector("tdx/tdx_quote"),
        AT,
        &["--tcb-status", "OutOfDate", "--json"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(failed_checks(&output), ["tdx.tcb_status"]);
}

#[test]
fn a_broken_collateral_file_exits_two() {
    let output = cli(&[
        "verify",
        "--report",
        &vector("tdx/tdx_quote"),
        "--collateral",
        &vector("tdx/PROVENANCE.md"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("collateral JSON"));
}

#[test]
fn inspect_shows_td_quotes_and_tdx_hcl_reports() {
    for (file, kind) in [
        (vector("tdx/tdx_quote"), "TDX quote (v4)"),
        (vector("tdx/quote-from-tappd.hex"), "TDX quote (v4, hex)"),
    ] {
        let output = cli(&["inspect", &file, "--json"]);
        assert_eq!(output.status.code(), Some(0), "{file}");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["kind"], kind, "{file}");
        let content = &json["content"];
        assert_eq!(content["pck_platform"]["fmspc"], "B0C06F000000", "{file}");
        assert_eq!(content["td"]["mrtd"].as_str().unwrap().len(), 96);
        assert_eq!(content["td"]["debug"], false);
        assert!(content["td"]["rtmr3"].is_string());
    }
    let output = cli(&[
        "inspect",
        &vector("azure-cvm-tooling/hcl-report-tdx.bin"),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let content = &json["content"];
    assert_eq!(content["report_type"], "Tdx");
    assert_eq!(content["report_data_binds_var_data"], true);
    assert_eq!(
        content["hardware_report"]["mrtd"].as_str().unwrap().len(),
        96
    );
    assert_eq!(content["hardware_report"]["debug"], false);
}

/// A TEST-ONLY v5 quote (TD report 1.5 body) as hex text with `0x` and a trailing newline, its
/// collateral and the test signer's root, in `dir`.
fn v5_files(dir: &std::path::Path) -> (String, String, String) {
    use test_support::tdx_signer::{TdxTestSigner, TEE_TCB_SVN};
    let signer = TdxTestSigner::new().unwrap();
    let body = signer.body15(&[6; 64], &TEE_TCB_SVN, &[0x5d; 48]);
    let quote = signer.quote_v5(&body).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    (
        write(
            "quote-v5.hex",
            format!("0x{}\n", hex::encode(quote)).as_bytes(),
        ),
        write("collateral.json", &signer.collateral_json().unwrap()),
        write("root.pem", &signer.root_pem()),
    )
}

#[test]
fn a_v5_quote_runs_the_tdx_checks_and_inspect_shows_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (quote, collateral, root) = v5_files(dir.path());
    let args = [
        "verify",
        "--report",
        &quote,
        "--collateral",
        &collateral,
        "--test-root",
        &root,
        "--at",
        "2030-01-01T00:00:00Z",
        "--json",
    ];
    let output = cli(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{}{stderr}", stdout(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = json["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in ["tdx.quote", "tdx.quote_signature", "tdx.tcb_status"] {
        assert!(names.contains(&name), "{name}: {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("snp.")), "{names:?}");
    let parsed = checks.iter().find(|c| c["name"] == "tdx.quote").unwrap();
    let reason = parsed["reason"].as_str().unwrap();
    assert!(reason.contains("version 5 (body type 3"), "{reason}");

    // Without the test root it is the same TDX path, failing at the PCK chain.
    let output = cli(&args[..5]
        .iter()
        .chain(&args[7..])
        .copied()
        .collect::<Vec<_>>());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(failed_checks(&output), ["tdx.pck_chain"]);

    let output = cli(&["inspect", &quote, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["kind"], "TDX quote (v5, hex)");
    let content = &json["content"];
    assert_eq!(content["version"], 5);
    assert_eq!(content["body"]["type"], 3);
    assert_eq!(content["body"]["name"], "TD report 1.5");
    assert_eq!(content["body"]["size"], 648);
    assert_eq!(content["td"]["mrservicetd"], "5d".repeat(48));
    assert_eq!(content["td"]["tee_tcb_svn2"], content["td"]["tee_tcb_svn"]);
    let text = stdout(&cli(&["inspect", &quote]));
    for line in [
        "TDX quote (v5, hex)",
        "mrservicetd: 5d5d",
        "tee_tcb_svn2: ",
        "name: TD report 1.5",
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
}
