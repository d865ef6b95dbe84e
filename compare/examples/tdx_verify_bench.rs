//! Our TDX quote verification next to dcap-qvl's, in one run, on the same real quote and Intel
//! collateral (../shared/vectors/tdx, the same files dcap-qvl ships as its sample), with the
//! raw ECDSA P-256 checks both cannot avoid as the floor. Run by `bench/tdx-verify.sh`:
//!
//!     cargo run --release -p cvm-compare --example tdx_verify_bench
//!
//! - cold: the first verification of this quote and collateral in a fresh process (collateral
//!   JSON parsed, PCK chain parsed and verified, collateral signatures checked): each sample is
//!   a child process that first verifies a TEST-ONLY quote with both (so one-time library set-up
//!   is not counted) and then times one verification of the real quote by each;
//! - cached: the same quote again, the collateral already deserialized; ours remembers the
//!   decoded certificates, the parsed PCK chain, the verified chain links, the parsed and
//!   signature-checked collateral, the CRL signatures and the QE report signature per process,
//!   by content digest; dcap-qvl has no such cache;
//! - raw: two P-256 verifications (QE report and quote signature; cached, ours now repeats only
//!   the second) through OpenSSL (ours) and through ring as webpki calls it (dcap-qvl's), keys
//!   and DER signatures prepared beforehand;
//! - `--count-ours` / `--count-theirs`: one cold verification by one of them after the same
//!   warm-up, for `valgrind --tool=callgrind --toggle-collect='*counted_*'` (instruction counts
//!   do not move when other builds share the machine; `BENCH_CALLGRIND=1 bench/tdx-verify.sh`).

use cvm_attestation::golden::GoldenTdx;
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tdx::crypto::{p256_ec_key, verify_p256_raw_ec};
use cvm_attestation::tdx::{TdQuote, TdxCollateral};
use cvm_attestation::verify::verify_tdx_quote;
use cvm_attestation::VerifyOptions;
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
/// 2025-07-01: inside the real collateral's validity.
const AT: i64 = 1_751_328_000;
/// Batches per in-process measurement (the median batch's per-op time is reported).
const SAMPLES: usize = 31;
/// Wall time aimed at per batch.
const BATCH: Duration = Duration::from_millis(20);

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The real quote, its collateral JSON and the parsed forms.
struct Inputs {
    quote: Vec<u8>,
    json: Vec<u8>,
    ours: TdxCollateral,
    theirs: dcap_qvl::QuoteCollateralV3,
}

fn inputs() -> Inputs {
    let json = vector("tdx/tdx_quote_collateral.json");
    Inputs {
        quote: vector("tdx/tdx_quote"),
        ours: TdxCollateral::from_json(&json).expect("our collateral parse"),
        theirs: serde_json::from_slice(&json).expect("dcap-qvl collateral parse"),
        json,
    }
}

/// Ours from the collateral's JSON; panics unless it verifies.
fn ours_from_json(quote: &[u8], json: &[u8], options: &VerifyOptions) {
    let collateral = TdxCollateral::from_json(json).expect("collateral");
    let report = verify_tdx_quote(quote, Some(&collateral), &GoldenTdx::default(), options);
    assert!(report.verified, "{report}");
}

/// dcap-qvl from the collateral's JSON; panics unless it verifies.
fn theirs_from_json(
    verifier: &dcap_qvl::verify::QuoteVerifier,
    quote: &[u8],
    json: &[u8],
    at: i64,
) {
    let collateral: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(json).expect("json");
    let report = verifier
        .verify(quote, &collateral, at as u64)
        .expect("dcap-qvl verifies");
    assert_eq!(report.status, "UpToDate");
}

/// Child mode: warm both libraries up on a TEST-ONLY quote, then time one cold verification of
/// the real quote by each (in the order given) and print "ours_us theirs_us".
fn cold_child(theirs_first: bool) {
    warm_up();
    let real = inputs();
    let options = VerifyOptions::new(AT);
    let verifier = dcap_qvl::verify::QuoteVerifier::new_prod();
    let time = |f: &dyn Fn()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64() * 1e6
    };
    let ours = || ours_from_json(&real.quote, &real.json, &options);
    let theirs = || theirs_from_json(&verifier, &real.quote, &real.json, AT);
    let (o, t) = if theirs_first {
        let t = time(&theirs);
        (time(&ours), t)
    } else {
        let o = time(&ours);
        (o, time(&theirs))
    };
    println!("{o:.2} {t:.2}");
}

/// One-time library set-up for both, on a TEST-ONLY quote (nothing of it is Intel's).
fn warm_up() {
    let signer = test_support::tdx_signer::TdxTestSigner::new().expect("test signer");
    let quote = signer.quote(&signer.body(&[5; 64])).expect("quote");
    let json = signer.collateral_json().expect("collateral");
    let at = support_time();
    let options = VerifyOptions::new(at).with_tdx_test_roots([TrustedRoot {
        name: "TEST-ONLY bench root".into(),
        certificate: signer.root().clone(),
        test_only: true,
    }]);
    ours_from_json(&quote, &json, &options);
    let test_verifier = dcap_qvl::verify::QuoteVerifier::new(signer.root().to_der().unwrap());
    let collateral: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(&json).unwrap();
    test_verifier
        .verify(&quote, &collateral, at as u64)
        .expect("dcap-qvl on the test quote");
}

/// Child mode for instruction counts (`valgrind --tool=callgrind --toggle-collect='*counted_*'`):
/// the same warm-up as [`cold_child`], then one cold verification by `ours` or `theirs` only.
fn count_child(ours: bool) {
    warm_up();
    let real = inputs();
    if ours {
        counted_ours(&real.quote, &real.json, &VerifyOptions::new(AT));
    } else {
        let verifier = dcap_qvl::verify::QuoteVerifier::new_prod();
        counted_theirs(&verifier, &real.quote, &real.json);
    }
}

#[inline(never)]
fn counted_ours(quote: &[u8], json: &[u8], options: &VerifyOptions) {
    ours_from_json(black_box(quote), json, options);
}

#[inline(never)]
fn counted_theirs(verifier: &dcap_qvl::verify::QuoteVerifier, quote: &[u8], json: &[u8]) {
    theirs_from_json(verifier, black_box(quote), json, AT);
}

/// A time inside the test signer's collateral (2020-2049).
fn support_time() -> i64 {
    1_893_456_000
}

/// Median per-call time of `f` in microseconds, over SAMPLES batches of about BATCH each.
fn measure(name: &str, f: impl FnMut()) -> f64 {
    let t = test_support::bench::time_per_call(SAMPLES, BATCH, BATCH / 2, f);
    println!(
        "{name:<62} {:>9.1} us  (min {:.1}, max {:.1}; {} x {SAMPLES})",
        t.median, t.min, t.max, t.batch
    );
    t.median
}

/// Medians of the cold verification of each, over `runs` child processes.
fn cold(runs: usize) -> (f64, f64) {
    let exe = std::env::current_exe().expect("own path");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let arg = if run % 2 == 0 {
            "--cold-child"
        } else {
            "--cold-child-theirs-first"
        };
        let output = Command::new(&exe).arg(arg).output().expect("child runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cold child: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut values = text
            .split_whitespace()
            .map(|v| v.parse::<f64>().expect("number"));
        ours.push(values.next().expect("ours"));
        theirs.push(values.next().expect("theirs"));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (o, t) = (median(&mut ours), median(&mut theirs));
    let range = |v: &[f64]| {
        format!(
            "min {:.1}, max {:.1}; {runs} processes",
            v[0],
            v[v.len() - 1]
        )
    };
    println!(
        "{:<62} {o:>9.1} us  ({})",
        "cold: ours (collateral JSON + verify_tdx_quote)",
        range(&ours)
    );
    println!(
        "{:<62} {t:>9.1} us  ({})",
        "cold: dcap-qvl (collateral JSON + verify)",
        range(&theirs)
    );
    (o, t)
}

/// DER `Ecdsa-Sig-Value` of a raw `r || s`.
fn der_signature(raw: &[u8; 64]) -> Vec<u8> {
    let r = BigNum::from_slice(&raw[..32]).unwrap();
    let s = BigNum::from_slice(&raw[32..]).unwrap();
    EcdsaSig::from_private_components(r, s)
        .unwrap()
        .to_der()
        .unwrap()
}

/// The two P-256 checks a verification with everything cached still needs, each way.
fn raw(real: &Inputs) -> (f64, f64) {
    let quote = TdQuote::parse(&real.quote).unwrap();
    let chain = openssl::x509::X509::stack_from_pem(&quote.pck_chain_pem).unwrap();
    let pck = chain[0].public_key().unwrap().ec_key().unwrap();
    let attestation_key = p256_ec_key(&quote.attestation_key).unwrap();
    // OpenSSL's ECDSA on an EC_KEY, as ours calls it (no EVP context per check).
    let ours = measure("raw: 2 x P-256 verify, OpenSSL ECDSA (ours)", || {
        let qe_report = quote.qe_report_bytes();
        assert!(verify_p256_raw_ec(&pck, qe_report, &quote.qe_report_signature).unwrap());
        assert!(
            verify_p256_raw_ec(&attestation_key, quote.signed_bytes(), &quote.signature).unwrap()
        );
    });
    // The signature algorithm dcap-qvl hands webpki with its ring backend.
    let algorithm = <dcap_qvl::crypto::RingCrypto as dcap_qvl::config::CryptoProvider>::sig_algo();
    let pck_point = pck.public_key_to_der().unwrap();
    // The SPKI's last 65 bytes are the uncompressed point.
    let pck_point = &pck_point[pck_point.len() - 65..];
    let mut ak_point = vec![4u8];
    ak_point.extend_from_slice(&quote.attestation_key);
    let qe_sig = der_signature(&quote.qe_report_signature);
    let quote_sig = der_signature(&quote.signature);
    let theirs = measure(
        "raw: 2 x P-256 verify, ring via webpki (dcap-qvl's)",
        || {
            algorithm
                .verify_signature(pck_point, quote.qe_report_bytes(), &qe_sig)
                .unwrap();
            algorithm
                .verify_signature(&ak_point, quote.signed_bytes(), &quote_sig)
                .unwrap();
        },
    );
    (ours, theirs)
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--cold-child") => return cold_child(false),
        Some("--cold-child-theirs-first") => return cold_child(true),
        Some("--count-ours") => return count_child(true),
        Some("--count-theirs") => return count_child(false),
        _ => {}
    }
    let runs: usize = std::env::var("BENCH_COLD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let real = inputs();
    println!(
        "TDX quote verification, real quote (tdx/tdx_quote, {} bytes) + Intel collateral ({} bytes) at 2025-07-01",
        real.quote.len(),
        real.json.len()
    );
    let (cold_ours, cold_theirs) = cold(runs);
    let options = VerifyOptions::new(AT);
    let golden = GoldenTdx::default();
    let cached_ours = measure("cached: ours (verify_tdx_quote, collateral parsed)", || {
        let report = verify_tdx_quote(black_box(&real.quote), Some(&real.ours), &golden, &options);
        assert!(report.verified);
    });
    let verifier = dcap_qvl::verify::QuoteVerifier::new_prod();
    let cached_theirs = measure("cached: dcap-qvl (verify, collateral deserialized)", || {
        let report = verifier
            .verify(black_box(&real.quote), &real.theirs, AT as u64)
            .unwrap();
        assert_eq!(report.status, "UpToDate");
    });
    let (raw_ours, raw_theirs) = raw(&real);
    println!();
    println!(
        "RATIO cold   ours / dcap-qvl            = {:.2}  (goal <= 1.00)",
        cold_ours / cold_theirs
    );
    println!(
        "RATIO cached dcap-qvl / ours            = {:.2}  (goal >= 5.00)",
        cached_theirs / cached_ours
    );
    println!(
        "RATIO cached ours / raw sigs (OpenSSL)  = {:.2}  (goal <= 1.20)",
        cached_ours / raw_ours
    );
    println!(
        "RATIO cached ours / raw sigs (ring)     = {:.2}",
        cached_ours / raw_theirs
    );
    println!(
        "RATIO raw OpenSSL / raw ring            = {:.2}",
        raw_ours / raw_theirs
    );
}
