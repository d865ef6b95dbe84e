//! Property tests for the TDX parsers and verifier (the pattern of parsers_never_panic.rs): TD
//! quotes (v4 and TEST-ONLY v5, both body types), TDREPORTs, PCK certificate extensions, collateral JSON (the document and the TCB info
//! / QE identity bodies inside it) and evidence with a `tdx` section return a value or an error
//! on any input, mutated real vectors included, and never panic. Plus real properties: strict
//! prefixes of a quote never parse, and a flipped byte of a quote's signed part never verifies.

mod mutation;

use cvm_attestation::azure::HclReport;
use cvm_attestation::encoding::encode_base64;
use cvm_attestation::golden::{GoldenMeasurement, GoldenTdx};
use cvm_attestation::tdx::{collateral, sgx_extensions, TdQuote, TdReportBody, TdxCollateral};
use cvm_attestation::verify::verify_tdx_quote;
use cvm_attestation::{verify, Evidence, VerifyOptions};
use mutation::{cases, mutation};
use proptest::prelude::*;
use proptest::sample::Index;
use std::sync::OnceLock;
use test_support::tdx_signer::TdxTestSigner;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
/// 2025-07-01: inside the real collateral's validity.
const AT: i64 = 1_751_328_000;

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Seeds {
    quotes: Vec<Vec<u8>>,
    collaterals: Vec<Vec<u8>>,
    real_collateral: TdxCollateral,
    pck_certs: Vec<Vec<u8>>,
    td_reports: Vec<Vec<u8>>,
    evidence_json: Vec<Vec<u8>>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let real = vector("tdx/tdx_quote");
        let tappd = hex::decode(
            String::from_utf8(vector("tdx/quote-from-tappd.hex"))
                .unwrap()
                .trim(),
        )
        .unwrap();
        let signer = TdxTestSigner::new().unwrap();
        let test_quote = signer.quote(&signer.body(&[7; 64])).unwrap();
        let svn = test_support::tdx_signer::TEE_TCB_SVN;
        let v5_quotes = [
            signer.body(&[8; 64]),
            signer.body15(&[8; 64], &svn, &[0x5d; 48]),
        ]
        .map(|body| signer.quote_v5(&body).unwrap());
        let pck_certs = [&real, &test_quote]
            .iter()
            .map(|q| {
                let quote = TdQuote::parse(q).unwrap();
                openssl::x509::X509::stack_from_pem(&quote.pck_chain_pem).unwrap()[0]
                    .to_der()
                    .unwrap()
            })
            .collect();
        let real_collateral_json = vector("tdx/tdx_quote_collateral.json");
        let hcl = vector("azure-cvm-tooling/hcl-report-tdx.bin");
        let td_reports = vec![
            HclReport::parse(&hcl).unwrap().hardware_report.to_vec(),
            signer.td_report(&signer.body(&[1; 64])),
        ];
        let evidence = serde_json::json!({
            "version": 1,
            "platform": {"cloud": "gcp", "tee": "tdx"},
            "nonce": encode_base64(b"nonce 0123456789"),
            "tdx": {
                "quote": encode_base64(&test_quote),
                "collateral": serde_json::from_slice::<serde_json::Value>(&signer.collateral_json().unwrap()).unwrap(),
            },
            "tpm": {"quote": "", "pcrs": {"hash": "sha256", "pcrs": {}}, "ak_pub": ""}
        });
        let predecessor = serde_json::json!({
            "nonce": encode_base64(b"nonce 0123456789"),
            "tdx": {"attestation_report": encode_base64(&real)},
            "tpm": {"quote": "", "pcrs": {"hash": "sha256", "pcrs": {}}, "ak_pub": ""}
        });
        Seeds {
            quotes: [vec![real, tappd, test_quote], v5_quotes.to_vec()].concat(),
            real_collateral: TdxCollateral::from_json(&real_collateral_json).unwrap(),
            collaterals: vec![real_collateral_json, signer.collateral_json().unwrap()],
            pck_certs,
            td_reports,
            evidence_json: vec![
                serde_json::to_vec(&evidence).unwrap(),
                serde_json::to_vec(&predecessor).unwrap(),
            ],
        }
    })
}

fn exercise_quote(bytes: &[u8]) {
    if let Ok(quote) = TdQuote::parse(bytes) {
        let _ = quote.expected_qe_report_data();
        let _ = quote.body.debug();
        let _ = TdReportBody::parse(&quote.body.to_bytes());
        let report = verify_tdx_quote(
            bytes,
            Some(&seeds().real_collateral),
            &GoldenTdx::default(),
            &VerifyOptions::new(AT),
        );
        let _ = report.to_string();
    }
}

fn exercise_collateral(bytes: &[u8]) {
    if let Ok(c) = TdxCollateral::from_json(bytes) {
        let _ = collateral::parse(&c);
        let report = verify_tdx_quote(
            &seeds().quotes[0],
            Some(&c),
            &GoldenTdx::default(),
            &VerifyOptions::new(AT),
        );
        let _ = report.to_string();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn td_quote_parsing_never_panics(m in mutation()) {
        exercise_quote(&m.apply(&seeds().quotes));
    }

    #[test]
    fn random_bytes_are_not_quotes_and_do_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), tee in any::<bool>(), v5 in any::<bool>()) {
        let mut bytes = bytes;
        if tee && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(&[if v5 { 5 } else { 4 }, 0, 2, 0, 0x81, 0, 0, 0]);
        }
        exercise_quote(&bytes);
    }

    #[test]
    fn td_reports_never_panic(m in mutation()) {
        let _ = TdReportBody::from_td_report(&m.apply(&seeds().td_reports));
    }

    #[test]
    fn pck_extensions_never_panic(m in mutation()) {
        let _ = sgx_extensions(&m.apply(&seeds().pck_certs));
    }

    #[test]
    fn collateral_json_never_panics(m in mutation()) {
        exercise_collateral(&m.apply(&seeds().collaterals));
    }

    #[test]
    fn mutated_tcb_info_and_qe_identity_bodies_never_panic(m in mutation(), which in 0..3usize) {
        let mut c = seeds().real_collateral.clone();
        let field = match which {
            0 => &mut c.tcb_info,
            1 => &mut c.qe_identity,
            _ => &mut c.tcb_info_issuer_chain,
        };
        let mutated = m.apply(&[field.clone().into_bytes()]);
        *field = String::from_utf8_lossy(&mutated).into_owned();
        let _ = collateral::parse(&c);
        let _ = verify_tdx_quote(&seeds().quotes[0], Some(&c), &GoldenTdx::default(), &VerifyOptions::new(AT));
    }

    #[test]
    fn evidence_with_tdx_never_panics(m in mutation()) {
        if let Ok(evidence) = Evidence::from_json(&m.apply(&seeds().evidence_json)) {
            let golden = GoldenMeasurement::from_json(br#"{"version": 1, "workload": "any", "tdx": {}}"#).unwrap();
            let _ = verify(&evidence, &golden, &VerifyOptions::new(AT)).to_string();
        }
    }

    #[test]
    fn strict_prefixes_of_a_quote_never_parse(cut in any::<Index>(), seed in any::<Index>()) {
        let quote = seed.get(&seeds().quotes);
        // The real quotes end in zero padding; cut inside the structure.
        let end = TdQuote::parse(quote).unwrap().raw().len()
            - quote.iter().rev().take_while(|b| **b == 0).count();
        let cut = cut.index(end);
        prop_assert!(TdQuote::parse(&quote[..cut]).is_err());
    }

    #[test]
    fn a_flipped_signed_byte_never_verifies(at in any::<Index>(), bit in 0..8u8) {
        let mut quote = seeds().quotes[0].clone();
        let parsed = TdQuote::parse(&quote).unwrap();
        let signed_end = quote.len() - parsed.pck_chain_pem.len() - 70;
        let i = at.index(signed_end);
        quote[i] ^= 1 << bit;
        let report = verify_tdx_quote(&quote, Some(&seeds().real_collateral), &GoldenTdx::default(), &VerifyOptions::new(AT));
        prop_assert!(!report.verified, "byte {} bit {}: {}", i, bit, report);
    }
}

#[test]
fn the_predecessor_name_reads_as_the_quote() {
    let evidence = Evidence::from_json(&seeds().evidence_json[1]).unwrap();
    assert_eq!(
        evidence.tdx.unwrap().quote.as_slice(),
        seeds().quotes[0].as_slice()
    );
}
