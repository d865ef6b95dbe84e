//! TD quotes version 5 (TDX 1.5 modules): TEST-ONLY v5 quotes from the TDX test signer, with a
//! TD report 1.0 body (type 2) and a 1.5 body (type 3, TEE_TCB_SVN2 and MRSERVICETD), verify end
//! to end through every check a v4 quote gets; the golden MRSERVICETD is compared; Intel's TD
//! relaunch rule on TEE_TCB_SVN2 applies; and forged descriptors, truncations and changed bytes
//! fail by a named check or a typed parse error. (No real v5 quote is stored here: the one in
//! dcap-qvl's samples is binary, which could not be retrieved byte-exact.)

use cvm_attestation::golden::GoldenTdx;
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tdx::collateral::parse_time;
use cvm_attestation::tdx::quote::QuoteError;
use cvm_attestation::tdx::{decode_hex_quote, looks_like_td_quote, TdQuote, TdxCollateral};
use cvm_attestation::verify::{verify_tdx_quote, Status};
use cvm_attestation::{Sha384Digest, VerificationReport, VerifyOptions};
use std::sync::OnceLock;
use test_support::tdx_signer::{CollateralOptions, TdxTestSigner, TEE_TCB_SVN};

/// Offsets in a v5 quote: header, descriptor, the 1.0 body, then the 1.5 fields.
const DESCRIPTOR: usize = 48;
const BODY: usize = 54;
const TEE_TCB_SVN2_AT: usize = BODY + 584;
const MRSERVICETD_AT: usize = TEE_TCB_SVN2_AT + 16;
const MRSERVICETD: [u8; 48] = [0x5d; 48];

fn signer() -> &'static TdxTestSigner {
    static SIGNER: OnceLock<TdxTestSigner> = OnceLock::new();
    SIGNER.get_or_init(|| TdxTestSigner::new().unwrap())
}

fn options() -> VerifyOptions {
    VerifyOptions::new(parse_time("2030-01-01T00:00:00Z").unwrap()).with_tdx_test_roots([
        TrustedRoot {
            name: "TEST-ONLY TDX signer".into(),
            certificate: signer().root().clone(),
            test_only: true,
        },
    ])
}

fn collateral_with(options: CollateralOptions) -> TdxCollateral {
    TdxCollateral::from_json(&signer().collateral_json_with(options).unwrap()).unwrap()
}

/// A v5 quote with a TD report 1.5 body: the module running now is the one launched under.
fn quote15() -> Vec<u8> {
    let body = signer().body15(&[9; 64], &TEE_TCB_SVN, &MRSERVICETD);
    signer().quote_v5(&body).unwrap()
}

fn verify_with(quote: &[u8], golden: &GoldenTdx, c: CollateralOptions) -> VerificationReport {
    verify_tdx_quote(quote, Some(&collateral_with(c)), golden, &options())
}

fn verify(quote: &[u8]) -> VerificationReport {
    verify_with(quote, &GoldenTdx::default(), CollateralOptions::default())
}

fn failed(report: &VerificationReport) -> Vec<&str> {
    report.failures().map(|c| c.name.as_str()).collect()
}

fn parse_error(quote: &[u8]) -> QuoteError {
    TdQuote::parse(quote).expect_err("must not parse")
}

/// A refused quote: only `tdx.quote` fails, and its reason is the parse error.
fn assert_refused_by_the_parser(quote: &[u8], words: &[&str]) {
    let report = verify(quote);
    assert_eq!(failed(&report), ["tdx.quote"], "{report}");
    let reason = &report.check("tdx.quote").unwrap().reason;
    for word in words {
        assert!(reason.contains(word), "{word:?} not in {reason:?}");
    }
}

#[test]
fn a_v5_quote_with_a_td_report_15_body_verifies_end_to_end() {
    let quote = quote15();
    assert!(looks_like_td_quote(&quote));
    let parsed = TdQuote::parse(&quote).unwrap();
    assert_eq!(parsed.header.version, 5);
    assert_eq!(parsed.body_type(), Some(3));
    assert_eq!(parsed.body_descriptor.unwrap().size, 648);
    let td15 = parsed.td15.as_ref().unwrap();
    assert_eq!(td15.tee_tcb_svn2, TEE_TCB_SVN);
    assert_eq!(td15.mrservicetd, MRSERVICETD);
    assert_eq!(parsed.body.report_data, [9; 64]);
    assert_eq!(parsed.signed_bytes(), &quote[..48 + 6 + 648]);

    let report = verify(&quote);
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
        let check = report.check(name);
        assert_eq!(
            check.map(|c| c.status),
            Some(Status::Pass),
            "{name}: {report}"
        );
    }
    let parsed_reason = &report.check("tdx.quote").unwrap().reason;
    assert!(
        parsed_reason.contains("version 5 (body type 3, TD report 1.5, 648 bytes)"),
        "{parsed_reason}"
    );
    let status = report.check("tdx.tcb_status").unwrap();
    let actual = status.actual.as_deref().unwrap();
    assert!(actual.contains("no relaunch advised"), "{actual}");
    assert_eq!(
        report.check("tdx.mrservicetd").unwrap().status,
        Status::Skip
    );
}

#[test]
fn a_v5_quote_with_a_td_report_10_body_verifies_end_to_end() {
    let quote = signer().quote_v5(&signer().body(&[4; 64])).unwrap();
    let parsed = TdQuote::parse(&quote).unwrap();
    assert_eq!((parsed.body_type(), parsed.td15.is_none()), (Some(2), true));
    let report = verify(&quote);
    assert!(report.verified, "{report}");
    assert!(report
        .check("tdx.quote")
        .unwrap()
        .reason
        .contains("body type 2, TD report 1.0, 584 bytes"));
    // The same body in a v4 quote is the same TD; the two quotes differ in their signed bytes.
    let v4 = signer().quote(&signer().body(&[4; 64])).unwrap();
    assert_eq!(TdQuote::parse(&v4).unwrap().body, parsed.body);
    assert!(verify(&v4).verified);
}

#[test]
fn the_golden_mrservicetd_is_compared() {
    let quote = quote15();
    let pinned = GoldenTdx {
        mrservicetds: vec![Sha384Digest(MRSERVICETD)],
        ..GoldenTdx::default()
    };
    let c = CollateralOptions::default;
    let report = verify_with(&quote, &pinned, c());
    assert!(report.verified, "{report}");
    assert_eq!(
        report.check("tdx.mrservicetd").unwrap().status,
        Status::Pass
    );
    let other = GoldenTdx {
        mrservicetds: vec![Sha384Digest([0; 48])],
        ..GoldenTdx::default()
    };
    let report = verify_with(&quote, &other, c());
    assert_eq!(failed(&report), ["tdx.mrservicetd"], "{report}");
    // A TD report 1.0 body (v4, or v5 type 2) cannot state it: a pinned value refuses it.
    for quote in [
        signer().quote(&signer().body(&[1; 64])).unwrap(),
        signer().quote_v5(&signer().body(&[1; 64])).unwrap(),
    ] {
        let report = verify_with(&quote, &pinned, c());
        assert_eq!(failed(&report), ["tdx.mrservicetd"], "{report}");
        let reason = &report.check("tdx.mrservicetd").unwrap().reason;
        assert!(reason.contains("TD report 1.0 body"), "{reason}");
    }
    // The golden document names it `mrservicetds`, like `mrtds`.
    let json = serde_json::to_string(&pinned).unwrap();
    assert!(json.contains("\"mrservicetds\""), "{json}");
    let default_json = serde_json::to_string(&GoldenTdx::default()).unwrap();
    assert!(!default_json.contains("mrservicetds"), "{default_json}");
}

#[test]
fn a_td_launched_under_an_old_module_gets_intels_relaunch_verdict() {
    // TEE_TCB_SVN (launch) states module SVN 6, which this TCB info rates OutOfDate; the
    // module running now (TEE_TCB_SVN2) has SVN 7, the newest level.
    let newer = CollateralOptions {
        module_newest_svn: Some(TEE_TCB_SVN[0] + 1),
        ..CollateralOptions::default()
    };
    let mut svn2 = TEE_TCB_SVN;
    svn2[0] += 1;
    let relaunched = signer().body15(&[2; 64], &svn2, &[0; 48]);
    let quote = signer().quote_v5(&relaunched).unwrap();
    let report = verify_with(&quote, &GoldenTdx::default(), newer);
    assert_eq!(failed(&report), ["tdx.tcb_status"], "{report}");
    let check = report.check("tdx.tcb_status").unwrap();
    assert!(
        check
            .reason
            .contains("status TDRelaunchAdvised is not allowed"),
        "{}",
        check.reason
    );
    let allowing = GoldenTdx {
        tcb_statuses: vec!["UpToDate".into(), "TDRelaunchAdvised".into()],
        ..GoldenTdx::default()
    };
    let report = verify_with(&quote, &allowing, newer);
    assert!(report.verified, "{report}");

    // Not running the newest module now (TEE_TCB_SVN2 = TEE_TCB_SVN): plain OutOfDate, which
    // allowing TDRelaunchAdvised does not accept.
    let report = verify_with(&quote15(), &allowing, newer);
    assert_eq!(failed(&report), ["tdx.tcb_status"], "{report}");
    let reason = &report.check("tdx.tcb_status").unwrap().reason;
    assert!(
        reason.contains("status OutOfDate is not allowed"),
        "{reason}"
    );
    // A v4 quote of the same TD has no TEE_TCB_SVN2: OutOfDate.
    let v4 = signer().quote(&signer().body(&[2; 64])).unwrap();
    let report = verify_with(&v4, &allowing, newer);
    assert_eq!(failed(&report), ["tdx.tcb_status"], "{report}");
    // TEE_TCB_SVN2 naming a module major version TCB info does not list fails by name.
    let mut unknown = svn2;
    unknown[1] = 9;
    let body = signer().body15(&[2; 64], &unknown, &[0; 48]);
    let report = verify_with(&signer().quote_v5(&body).unwrap(), &allowing, newer);
    let reason = &report.check("tdx.tcb_status").unwrap().reason;
    assert!(reason.contains("no TDX module identity TDX_09"), "{reason}");
}

#[test]
fn a_body_size_that_does_not_match_the_body_type_is_refused() {
    let body15 = signer().body15(&[9; 64], &TEE_TCB_SVN, &MRSERVICETD);
    let body10 = signer().body(&[9; 64]);
    for (body_type, declared, body) in [
        (3, 584, &body15), // type 3, the 1.0 size
        (3, 700, &body15), // type 3, a larger size
        (3, 584, &body10), // type 3 over a 1.0 body
        (2, 648, &body15), // type 2 claiming the 1.5 body's size
        (2, 0, &body10),   // an empty body
        (2, u32::MAX, &body10),
    ] {
        let quote = signer()
            .quote_v5_declaring(body_type, declared, body)
            .unwrap();
        let expected = if body_type == 3 { 648 } else { 584 };
        assert_eq!(
            parse_error(&quote),
            QuoteError::BodySize {
                body_type,
                declared,
                expected
            },
            "type {body_type} size {declared}"
        );
        let words = [
            format!("must be {expected} bytes"),
            format!("says {declared}"),
        ];
        assert_refused_by_the_parser(&quote, &[&words[0], &words[1]]);
    }
}

#[test]
fn type_2_carrying_a_15_body_is_refused() {
    // The descriptor claims a 1.0 body of 584 bytes, but 648 follow (all signed): the 64 extra
    // bytes are read as the signature data length and what follows, which is no such thing.
    let body15 = signer().body15(&[9; 64], &TEE_TCB_SVN, &MRSERVICETD);
    let quote = signer().quote_v5_declaring(2, 584, &body15).unwrap();
    let error = parse_error(&quote);
    assert!(matches!(error, QuoteError::Wire(_)), "{error}");
    assert_eq!(failed(&verify(&quote)), ["tdx.quote"]);
}

#[test]
fn other_body_types_are_refused() {
    let body = signer().body(&[9; 64]);
    for body_type in [0u16, 1, 4, 0xffff] {
        let quote = signer().quote_v5_declaring(body_type, 584, &body).unwrap();
        assert_eq!(parse_error(&quote), QuoteError::BodyType(body_type));
        assert_refused_by_the_parser(&quote, &["body type", "is not a TD report body"]);
    }
    // Versions other than 4 and 5.
    let mut quote = quote15();
    for version in [3u16, 6] {
        quote[..2].copy_from_slice(&version.to_le_bytes());
        assert_eq!(parse_error(&quote), QuoteError::Version(version));
    }
}

#[test]
fn every_truncation_of_a_v5_quote_is_a_parse_error() {
    let quote = quote15();
    for cut in 0..quote.len() {
        let error = parse_error(&quote[..cut]);
        assert!(
            matches!(error, QuoteError::Wire(_) | QuoteError::Version(_)),
            "cut {cut}: {error}"
        );
    }
    // Inside the descriptor and inside the body, the error names the field.
    let error = parse_error(&quote[..DESCRIPTOR + 3]).to_string();
    assert!(error.contains("body_size"), "{error}");
    let error = parse_error(&quote[..MRSERVICETD_AT]).to_string();
    assert!(error.contains("body"), "{error}");
    assert_refused_by_the_parser(&quote[..quote.len() - 1], &["TD quote"]);
}

#[test]
fn a_changed_mrservicetd_or_tee_tcb_svn2_breaks_the_quote_signature() {
    let quote = quote15();
    for offset in [
        MRSERVICETD_AT,
        MRSERVICETD_AT + 47,
        TEE_TCB_SVN2_AT,
        TEE_TCB_SVN2_AT + 15,
    ] {
        let mut altered = quote.clone();
        altered[offset] ^= 0x01;
        let parsed = TdQuote::parse(&altered).unwrap();
        assert_ne!(parsed.td15, TdQuote::parse(&quote).unwrap().td15);
        let report = verify(&altered);
        assert_eq!(
            failed(&report),
            ["tdx.quote_signature"],
            "{offset}: {report}"
        );
    }
}

#[test]
fn every_flipped_signed_byte_of_a_v5_quote_fails() {
    let quote = quote15();
    let signed = TdQuote::parse(&quote).unwrap().signed_bytes().len();
    for offset in (0..signed)
        .step_by(5)
        .chain([DESCRIPTOR, BODY - 1, signed - 1])
    {
        let mut altered = quote.clone();
        altered[offset] ^= 0x01;
        let report = verify(&altered);
        assert!(!report.verified, "byte {offset} still verifies");
    }
}

#[test]
fn hex_quotes_are_read_with_or_without_0x_and_whitespace() {
    let quote = quote15();
    let hex = hex::encode(&quote);
    for text in [
        hex.clone(),
        format!("0x{hex}"),
        format!("0X{}", hex.to_uppercase()),
        format!("\n  0x{hex}\r\n"),
        format!("{hex}\n"),
    ] {
        assert_eq!(
            decode_hex_quote(text.as_bytes()).as_deref(),
            Some(&quote[..])
        );
    }
    for text in ["", "0x", "0x0x00", "zz", "0x0400"] {
        assert_eq!(decode_hex_quote(text.as_bytes()), None, "{text}");
    }
    // Hex of something else is not a TD quote; nor is an SEV-SNP report of version 5 whose
    // guest SVN happens to be 0x81 (its version is a u32: bytes 2..4 are zero).
    assert_eq!(decode_hex_quote(hex::encode([0u8; 64]).as_bytes()), None);
    let mut snp = [0u8; 1184];
    snp[0] = 5;
    snp[4] = 0x81;
    assert!(!looks_like_td_quote(&snp));
}
