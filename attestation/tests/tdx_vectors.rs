//! The real TDX quote and Intel collateral in ../shared/vectors/tdx verify against Intel's pinned
//! root with TCB status UpToDate at a pinned time; every flipped signed byte fails; a time outside
//! the collateral's validity fails by name; the real Azure TDX HCL report parses and binds its
//! var_data.

use cvm_attestation::azure::{HclReport, HclReportType};
use cvm_attestation::golden::GoldenTdx;
use cvm_attestation::tdx::certs::INTEL_SGX_ROOT_CA_PEM;
use cvm_attestation::tdx::collateral::parse_time;
use cvm_attestation::tdx::{
    intel_roots, looks_like_td_quote, sgx_extensions, TdQuote, TdReportBody, TdxCollateral,
};
use cvm_attestation::verify::{verify_tdx_quote, Status};
use cvm_attestation::{Sha384Digest, VerificationReport, VerifyOptions};
use openssl::hash::MessageDigest;
use openssl::x509::X509;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
/// 2025-07-01T00:00:00Z: inside the collateral's windows (TCB info 2025-06-19T10:16:03Z to
/// 2025-07-19T10:16:03Z, QE identity 2025-06-19T10:32:27Z to 2025-07-19T10:32:27Z, PCK CRL
/// 2025-06-19T10:00:35Z to 2025-07-19T10:00:35Z) and every certificate's validity.
const AT: i64 = 1_751_328_000;

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn collateral() -> TdxCollateral {
    TdxCollateral::from_json(&vector("tdx/tdx_quote_collateral.json")).unwrap()
}

fn verify_at(quote: &[u8], at: i64) -> VerificationReport {
    verify_tdx_quote(
        quote,
        Some(&collateral()),
        &GoldenTdx::default(),
        &VerifyOptions::new(at),
    )
}

fn failed(report: &VerificationReport) -> Vec<&str> {
    report.failures().map(|c| c.name.as_str()).collect()
}

#[test]
fn the_pinned_intel_root_is_intels() {
    let root = X509::from_pem(INTEL_SGX_ROOT_CA_PEM.as_bytes()).unwrap();
    let subject: Vec<String> = root
        .subject_name()
        .entries()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .collect();
    assert_eq!(
        subject,
        [
            "Intel SGX Root CA",
            "Intel Corporation",
            "Santa Clara",
            "CA",
            "US"
        ]
    );
    assert!(root.verify(&root.public_key().unwrap()).unwrap());
    assert_eq!(
        hex::encode(root.digest(MessageDigest::sha256()).unwrap()),
        "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
    );
    // The same certificate ends the real quote's PCK chain and the collateral's chains.
    let quote = TdQuote::parse(&vector("tdx/tdx_quote")).unwrap();
    let chain = X509::stack_from_pem(&quote.pck_chain_pem).unwrap();
    assert_eq!(
        chain.last().unwrap().to_der().unwrap(),
        root.to_der().unwrap()
    );
    assert_eq!(intel_roots().len(), 1);
}

#[test]
fn the_real_quote_verifies_up_to_date_at_the_pinned_time() {
    let quote = vector("tdx/tdx_quote");
    assert!(looks_like_td_quote(&quote));
    let report = verify_at(&quote, AT);
    assert!(report.verified, "{report}");
    for name in [
        "tdx.quote",
        "tdx.pck_chain",
        "tdx.qe_report_signature",
        "tdx.qe_report_data",
        "tdx.quote_signature",
        "tdx.collateral",
        "tdx.tcb_info",
        "tdx.qe_identity",
        "tdx.crl",
        "tdx.tcb_status",
        "tdx.debug",
    ] {
        assert_eq!(
            report.check(name).map(|c| c.status),
            Some(Status::Pass),
            "{name}: {report}"
        );
    }
    let status = report.check("tdx.tcb_status").unwrap();
    assert!(
        status
            .actual
            .as_ref()
            .unwrap()
            .contains("platform UpToDate"),
        "{report}"
    );
    assert!(!status.reason.contains("advisories"), "{report}");
    assert!(report
        .check("tdx.pck_chain")
        .unwrap()
        .reason
        .contains("Intel SGX Root CA (pinned)"));
    for name in ["tdx.mrtd", "tdx.mrseam", "tdx.rtmr[0]", "tdx.rtmr[3]"] {
        assert_eq!(report.check(name).unwrap().status, Status::Skip, "{name}");
    }

    // PCK extensions: the platform the collateral is for.
    let parsed = TdQuote::parse(&quote).unwrap();
    let leaf = X509::stack_from_pem(&parsed.pck_chain_pem).unwrap()[0]
        .to_der()
        .unwrap();
    let ext = sgx_extensions(&leaf).unwrap();
    assert_eq!(hex::encode_upper(ext.fmspc), "B0C06F000000");
    assert_eq!(ext.pce_id, [0, 0]);
}

#[test]
fn golden_values_are_compared() {
    let quote = vector("tdx/tdx_quote");
    let parsed = TdQuote::parse(&quote).unwrap();
    let body = &parsed.body;
    let golden = GoldenTdx {
        mrtds: vec![Sha384Digest(body.mrtd)],
        rtmr0: Some(Sha384Digest(body.rtmr[0])),
        rtmr1: Some(Sha384Digest(body.rtmr[1])),
        rtmr2: Some(Sha384Digest(body.rtmr[2])),
        rtmr3: Some(Sha384Digest(body.rtmr[3])),
        mrseams: vec![Sha384Digest(body.mrseam)],
        ..GoldenTdx::default()
    };
    let options = VerifyOptions::new(AT);
    let report = verify_tdx_quote(&quote, Some(&collateral()), &golden, &options);
    assert!(report.verified, "{report}");
    let mut wrong = golden.clone();
    wrong.rtmr2 = Some(Sha384Digest([0; 48]));
    wrong.mrtds = vec![Sha384Digest([1; 48])];
    let report = verify_tdx_quote(&quote, Some(&collateral()), &wrong, &options);
    assert_eq!(failed(&report), ["tdx.mrtd", "tdx.rtmr[2]"], "{report}");
    // A status allow-list without UpToDate refuses the real quote.
    let strict = GoldenTdx {
        tcb_statuses: vec!["OutOfDate".into()],
        ..GoldenTdx::default()
    };
    let report = verify_tdx_quote(&quote, Some(&collateral()), &strict, &options);
    assert_eq!(failed(&report), ["tdx.tcb_status"], "{report}");
}

#[test]
fn a_flipped_byte_in_any_signed_part_fails() {
    let quote = vector("tdx/tdx_quote");
    let parsed = TdQuote::parse(&quote).unwrap();
    let chain_start = quote.len() - parsed.pck_chain_pem.len();
    // Header, body, quote signature, attestation key, QE report, its signature, auth data.
    let mut offsets: Vec<usize> = (0..chain_start).step_by(7).collect();
    offsets.extend([0, 8, 47, 48, 631, 632, 636, 700, 764, 1000, 1020, 1100]);
    let mut failures = 0;
    for offset in offsets {
        let mut altered = quote.clone();
        altered[offset] ^= 0x01;
        let report = verify_at(&altered, AT);
        assert!(
            !report.verified,
            "flipping byte {offset} still verifies:\n{report}"
        );
        failures += 1;
    }
    assert!(failures > 100);
    // The PEM chain: a changed certificate byte breaks the chain or its parse.
    let mut altered = quote.clone();
    altered[chain_start + 200] ^= 0x01;
    assert!(!verify_at(&altered, AT).verified);
}

#[test]
fn a_time_outside_the_collateral_fails_by_name() {
    let quote = vector("tdx/tdx_quote");
    let after = parse_time("2025-08-01T00:00:00Z").unwrap();
    let report = verify_at(&quote, after);
    let failures = failed(&report);
    assert!(failures.contains(&"tdx.tcb_info"), "{report}");
    assert!(failures.contains(&"tdx.qe_identity"), "{report}");
    let reason = &report.check("tdx.tcb_info").unwrap().reason;
    assert!(
        reason.contains("TCB info is not valid at")
            && reason.contains("nextUpdate 2025-07-19T10:16:03Z"),
        "{reason}"
    );
    // Before it was issued.
    let before = parse_time("2025-06-01T00:00:00Z").unwrap();
    let report = verify_at(&quote, before);
    assert!(failed(&report).contains(&"tdx.tcb_info"), "{report}");
    assert!(
        report
            .check("tdx.crl")
            .unwrap()
            .reason
            .contains("not current"),
        "{report}"
    );
}

#[test]
fn without_collateral_the_quote_is_not_verified() {
    let quote = vector("tdx/tdx_quote");
    let report = verify_tdx_quote(&quote, None, &GoldenTdx::default(), &VerifyOptions::new(AT));
    assert_eq!(failed(&report), ["tdx.collateral"], "{report}");
    // Supplied by the verifier instead.
    let options = VerifyOptions::new(AT).with_tdx_collateral(collateral());
    let report = verify_tdx_quote(&quote, None, &GoldenTdx::default(), &options);
    assert!(report.verified, "{report}");
}

#[test]
fn the_tappd_quote_parses() {
    let text = String::from_utf8(vector("tdx/quote-from-tappd.hex")).unwrap();
    let quote = TdQuote::parse(&hex::decode(text.trim()).unwrap()).unwrap();
    assert_eq!(quote.header.tee_type, 0x81);
    assert!(!quote.body.debug());
}

#[test]
fn the_real_azure_tdx_hcl_report_parses_and_binds_var_data() {
    let bytes = vector("azure-cvm-tooling/hcl-report-tdx.bin");
    let hcl = HclReport::parse(&bytes).unwrap();
    assert_eq!(hcl.report_type, HclReportType::Tdx);
    let td = TdReportBody::from_td_report(hcl.hardware_report).unwrap();
    assert_eq!(td.report_data, hcl.report_data());
    assert!(cvm_attestation::binding::azure_var_data_bound(
        &td.report_data,
        hcl.var_data
    ));
    assert!(cvm_attestation::azure::ak_from_var_data(hcl.var_data).is_ok());
    assert!(
        !td.debug(),
        "td_attributes {}",
        hex::encode(td.td_attributes)
    );
    // Another var_data does not fit.
    let mut other = hcl.var_data.to_vec();
    other[10] ^= 1;
    assert!(!cvm_attestation::binding::azure_var_data_bound(
        &td.report_data,
        &other
    ));
}

#[test]
fn collateral_signed_by_a_pck_key_is_refused() {
    let signer = test_support::tdx_signer::TdxTestSigner::new().unwrap();
    let quote = signer.quote(&signer.body(&[3; 64])).unwrap();
    let options = VerifyOptions::new(parse_time("2030-01-01T00:00:00Z").unwrap())
        .with_tdx_test_roots([cvm_attestation::snp::TrustedRoot {
            name: "TDX test signer".into(),
            certificate: signer.root().clone(),
            test_only: true,
        }]);
    let good = TdxCollateral::from_json(&signer.collateral_json().unwrap()).unwrap();
    let report = verify_tdx_quote(&quote, Some(&good), &GoldenTdx::default(), &options);
    assert!(report.verified, "{report}");
    assert!(report
        .check("tdx.pck_chain")
        .unwrap()
        .reason
        .contains("TEST-ONLY root"));
    let forged =
        TdxCollateral::from_json(&signer.collateral_json_signed_by_pck().unwrap()).unwrap();
    let report = verify_tdx_quote(&quote, Some(&forged), &GoldenTdx::default(), &options);
    assert_eq!(
        failed(&report),
        ["tdx.tcb_info", "tdx.qe_identity"],
        "{report}"
    );
    assert!(report
        .check("tdx.tcb_info")
        .unwrap()
        .reason
        .contains("signed directly by"));
}

/// A QE identity signed by a certificate the root CA CRL revokes (its chain is not the TCB
/// info's) is refused by `tdx.crl`: before, only the TCB info's signer was looked up in that CRL.
#[test]
fn a_qe_identity_signer_the_root_revoked_is_refused() {
    let signer = test_support::tdx_signer::TdxTestSigner::new().unwrap();
    let quote = signer.quote(&signer.body(&[4; 64])).unwrap();
    let options = VerifyOptions::new(parse_time("2030-01-01T00:00:00Z").unwrap())
        .with_tdx_test_roots([cvm_attestation::snp::TrustedRoot {
            name: "TDX test signer".into(),
            certificate: signer.root().clone(),
            test_only: true,
        }]);
    let withdrawn = signer.collateral_json_with_revoked_qe_signer().unwrap();
    let collateral = TdxCollateral::from_json(&withdrawn).unwrap();
    let report = verify_tdx_quote(&quote, Some(&collateral), &GoldenTdx::default(), &options);
    assert_eq!(failed(&report), ["tdx.crl"], "{report}");
    assert!(
        report
            .check("tdx.crl")
            .unwrap()
            .reason
            .contains("TEST-ONLY SGX TCB Signing (revoked)"),
        "{report}"
    );
}
