//! Benchmark of `verify()` and its parts, with the raw cost of the signature checks it cannot
//! avoid as the reference. No criterion: `std::time::Instant`, median of per-op times over many
//! batches. Run with `cargo bench -p cvm-attestation --bench verify` (or `bench/verify.sh`).
//!
//! (a) full verification of realistic GCP-style SEV-SNP evidence (TEST-ONLY SNP signer, EC P-256
//!     AK, a TPMS_ATTEST quote built by hand: no TPM needed);
//! (b) its parts, and the real AMD Milan chain (RSA-PSS 4096) with the real report_milan vector;
//! (c) the same primitives called directly through openssl;
//! (d) Intel TDX: the real TD quote with its Intel collateral (cached, as a verifier holding
//!     collateral per FMSPC would), parts, and first-time verification of TEST-ONLY chains.

mod support;

use cvm_attestation::golden::GoldenTdx;
use cvm_attestation::snp::certs::{amd_builtin_asks, parse_certificate, parse_pem_chain};
use cvm_attestation::snp::{amd_extensions, amd_roots, verify_chain, SnpReport};
use cvm_attestation::tdx::crypto::{p256_key, verify_p256_raw};
use cvm_attestation::tdx::{TdQuote, TdxCollateral};
use cvm_attestation::tpm::{AkPublic, Quote, QuoteSignature};
use cvm_attestation::verify::verify_tdx_quote;
use cvm_attestation::{verify, Evidence, VerifyOptions};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use openssl::x509::X509;
use std::hint::black_box;
use std::time::{Duration, Instant};
use support::{fixture, Kind};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
/// 2025-06-01: inside the real Milan certificates' validity.
const REAL_AT: i64 = 1_748_736_000;
/// 2025-07-01: inside the real TDX collateral's validity.
const TDX_AT: i64 = 1_751_328_000;
/// Batches per measurement; the median batch's per-op time is reported.
const SAMPLES: usize = 31;
/// Wall time aimed at per batch.
const BATCH_TARGET: Duration = Duration::from_millis(15);

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Median time per call of `f`, in microseconds.
fn measure(name: &str, f: impl FnMut()) -> f64 {
    let t = test_support::bench::time_per_call(SAMPLES, BATCH_TARGET, BATCH_TARGET / 3, f);
    println!(
        "{name:<58} {:>10.2} us/op   (min {:.2}, max {:.2}, {} ops x {SAMPLES})",
        t.median, t.min, t.max, t.batch
    );
    t.median
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: run anyway,
    // it takes a few seconds.
    println!("cvm-attestation verify benchmark (median of {SAMPLES} batches)\n");

    // ---------------------------------------------------------------- (a) full verification
    let gcp = fixture(Kind::GcpSnp);
    let report = verify(&gcp.evidence, &gcp.golden, &gcp.options);
    assert!(report.verified, "{report}");
    println!(
        "(a) full verification, GCP SEV-SNP evidence with Google's (TEST-ONLY) AK certificate ({} checks, {} bytes of JSON)",
        report.checks.len(),
        gcp.json.len()
    );
    let full = measure("verify() [parsed evidence]", || {
        black_box(verify(black_box(&gcp.evidence), &gcp.golden, &gcp.options));
    });
    let full_json = measure("Evidence::from_json + verify()", || {
        let evidence = Evidence::from_json(black_box(&gcp.json)).unwrap();
        black_box(verify(&evidence, &gcp.golden, &gcp.options));
    });
    // The first verification of a chain checks its signatures; verify_chain remembers the
    // outcome per (certificate, issuer) pair, so repeated evidence from the same VM (above) does
    // not. Fresh test chains show the cost of a first verification.
    let fresh: Vec<_> = (0..SAMPLES).map(|_| fixture(Kind::GcpSnp)).collect();
    let mut cold: Vec<f64> = fresh
        .iter()
        .map(|f| {
            let start = Instant::now();
            black_box(verify(&f.evidence, &f.golden, &f.options));
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    cold.sort_by(|a, b| a.total_cmp(b));
    let full_cold = cold[SAMPLES / 2];
    println!(
        "{:<58} {full_cold:>10.2} us/op   (min {:.2}, max {:.2}, 1 op x {SAMPLES} new chains)",
        "verify() [first time this chain is seen]",
        cold[0],
        cold[SAMPLES - 1]
    );
    let azure = fixture(Kind::AzureSnp);
    assert!(verify(&azure.evidence, &azure.golden, &azure.options).verified);
    measure("verify() [Azure-style: HCL report, RSA-2048 AK]", || {
        black_box(verify(
            black_box(&azure.evidence),
            &azure.golden,
            &azure.options,
        ));
    });
    let qemu = fixture(Kind::Qemu);
    assert!(verify(&qemu.evidence, &qemu.golden, &qemu.options).verified);
    measure("verify() [QEMU without TEE, pinned AK]", || {
        black_box(verify(
            black_box(&qemu.evidence),
            &qemu.golden,
            &qemu.options,
        ));
    });

    // ---------------------------------------------------------------- (b) parts
    println!("\n(b) parts of verify()");
    let snp = gcp.evidence.sev_snp.as_ref().unwrap();
    let snp_report = SnpReport::parse(snp.attestation_report.as_slice()).unwrap();
    let vcek = parse_certificate(snp.vek_cert.as_slice()).unwrap();
    let ask = parse_certificate(snp.cert_chain[0].as_slice()).unwrap();
    let vcek_key = vcek.public_key().unwrap();
    let part_report_sig = measure("SNP report signature (ECDSA P-384, test VCEK)", || {
        assert!(black_box(&snp_report).signature_valid(&vcek_key).unwrap());
    });
    let intermediates = [ask.clone()];
    let part_chain_test = measure("chain VCEK <- ASK <- ARK (test signer, remembered)", || {
        black_box(
            verify_chain(
                &vcek,
                black_box(&intermediates),
                &gcp.options.snp_roots,
                support::AT,
            )
            .unwrap(),
        );
    });
    let ak = AkPublic::from_bytes(gcp.evidence.tpm.ak_pub.as_slice()).unwrap();
    let quote_bytes = gcp.evidence.tpm.quote.as_slice();
    let tpmt_signature = gcp.evidence.tpm.signature.as_ref().unwrap().as_slice();
    let part_quote_sig = measure("quote signature (TPMT_SIGNATURE ECDSA P-256)", || {
        let signature = QuoteSignature::from_tpmt(black_box(tpmt_signature)).unwrap();
        assert!(signature.verify(&ak.key, quote_bytes).unwrap());
    });
    let part_json = measure("Evidence::from_json", || {
        black_box(Evidence::from_json(black_box(&gcp.json)).unwrap());
    });
    measure("AkPublic::from_bytes (TPMT_PUBLIC, EC point check)", || {
        black_box(AkPublic::from_bytes(black_box(gcp.evidence.tpm.ak_pub.as_slice())).unwrap());
    });
    let ak_cert = gcp.evidence.tpm.ak_cert.as_ref().unwrap().as_slice();
    let gcp_intermediates: Vec<&[u8]> = gcp
        .options
        .gcp_intermediates
        .iter()
        .map(Vec::as_slice)
        .collect();
    measure(
        "GCP AK certificate: chain (remembered), instance identity",
        || {
            black_box(
                cvm_attestation::gcp::verify_ak_certificate(
                    black_box(ak_cert),
                    &gcp_intermediates,
                    &gcp.options.gcp_roots,
                    gcp.options.at_unix,
                )
                .unwrap(),
            );
        },
    );
    measure("Quote::parse", || {
        black_box(Quote::parse(black_box(quote_bytes)).unwrap());
    });
    measure("SnpReport::parse", || {
        black_box(SnpReport::parse(black_box(snp.attestation_report.as_slice())).unwrap());
    });
    measure("parse_certificate (VCEK DER, remembered)", || {
        black_box(parse_certificate(black_box(snp.vek_cert.as_slice())).unwrap());
    });
    measure("amd_extensions (VCEK DER)", || {
        black_box(amd_extensions(black_box(snp.vek_cert.as_slice())).unwrap());
    });
    measure("amd_builtin_asks (3 built-in ASKs)", || {
        black_box(amd_builtin_asks());
    });
    measure("amd_roots (3 pinned ARKs)", || {
        black_box(amd_roots());
    });
    let log = gcp.evidence.event_logs.workload.as_ref().unwrap();
    measure("workload log generations + replay", || {
        black_box(log.generations().unwrap());
        black_box(log.replay());
    });

    println!("\n(b') real AMD data: report_milan, vcek_milan, pinned Milan ARK/ASK");
    let real_report = SnpReport::parse(
        &hex::decode(
            String::from_utf8(vector("virtee-sev/report_milan.hex"))
                .unwrap()
                .trim(),
        )
        .unwrap(),
    )
    .unwrap();
    let real_vcek = parse_certificate(&vector("virtee-sev/vcek_milan.der")).unwrap();
    let real_ask = parse_pem_chain(&vector("virtee-sev/milan_ask.pem")).unwrap();
    let roots = amd_roots();
    let real_vcek_key = real_vcek.public_key().unwrap();
    let real_report_sig = measure("SNP report signature (ECDSA P-384, real VCEK)", || {
        assert!(black_box(&real_report)
            .signature_valid(&real_vcek_key)
            .unwrap());
    });
    let real_chain = measure("chain VCEK <- ASK <- ARK-Milan (remembered)", || {
        black_box(verify_chain(&real_vcek, black_box(&real_ask), &roots, REAL_AT).unwrap());
    });
    let ark = &roots[0].certificate;
    let ark_key = ark.public_key().unwrap();
    let ask_key = real_ask[0].public_key().unwrap();
    let x509_pss = measure("X509::verify VCEK by ASK (one RSA-PSS 4096 check)", || {
        assert!(black_box(&real_vcek).verify(&ask_key).unwrap());
    });
    measure("X509::verify ARK self-signature (RSA-PSS 4096)", || {
        assert!(black_box(ark).verify(&ark_key).unwrap());
    });

    // ---------------------------------------------------------------- (c) raw primitives
    println!("\n(c) raw openssl primitives (reference)");
    let message = b"the bytes a signature covers";
    let p384 = EcKey::generate(&EcGroup::from_curve_name(Nid::SECP384R1).unwrap()).unwrap();
    let digest384 = openssl::sha::sha384(message);
    let sig384 = EcdsaSig::sign(&digest384, &p384).unwrap();
    let raw_p384 = measure("openssl ECDSA P-384 verify (SHA-384 digest given)", || {
        assert!(sig384.verify(black_box(&digest384), &p384).unwrap());
    });
    let p256 = EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
    let digest256 = openssl::sha::sha256(message);
    let sig256 = EcdsaSig::sign(&digest256, &p256).unwrap();
    let raw_p256 = measure("openssl ECDSA P-256 verify (SHA-256 digest given)", || {
        assert!(sig256.verify(black_box(&digest256), &p256).unwrap());
    });
    // The GCP AK certificate chain (TEST-ONLY CA, like Google's: RSA-2048 PKCS#1 v1.5, SHA-256):
    // leaf by intermediate and intermediate by root, both only the first time a chain is seen.
    let rsa2048 = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut signer = Signer::new(MessageDigest::sha256(), &rsa2048).unwrap();
    signer.update(message).unwrap();
    let rsa2048_sig = signer.sign_to_vec().unwrap();
    let raw_rsa2048 = measure("openssl RSA-2048 PKCS#1/SHA-256 verify", || {
        let mut verifier = Verifier::new(MessageDigest::sha256(), &rsa2048).unwrap();
        verifier.update(black_box(message)).unwrap();
        assert!(verifier.verify(&rsa2048_sig).unwrap());
    });
    let rsa = PKey::from_rsa(Rsa::generate(4096).unwrap()).unwrap();
    let mut signer = Signer::new(MessageDigest::sha384(), &rsa).unwrap();
    signer.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
    signer
        .set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
        .unwrap();
    signer.update(message).unwrap();
    let rsa_sig = signer.sign_to_vec().unwrap();
    let raw_rsa = measure("openssl RSA-4096 PSS/SHA-384 verify", || {
        let mut verifier = Verifier::new(MessageDigest::sha384(), &rsa).unwrap();
        verifier.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
        verifier
            .set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
            .unwrap();
        verifier.update(black_box(message)).unwrap();
        assert!(verifier.verify(&rsa_sig).unwrap());
    });

    let test_ark = &gcp.options.snp_roots.last().unwrap().certificate;
    let test_ark_key = test_ark.public_key().unwrap();
    let ask_test_key = ask.public_key().unwrap();
    let x509_p384 = measure("X509::verify test VCEK by ASK (one P-384 check)", || {
        assert!(black_box(&vcek).verify(&ask_test_key).unwrap());
    });
    measure("X509::verify test ASK by ARK (one P-384 check)", || {
        assert!(black_box(&ask).verify(&test_ark_key).unwrap());
    });

    // ---------------------------------------------------------------- (d) TDX
    println!("\n(d) Intel TDX: real TD quote (tdx/tdx_quote) + Intel collateral, at 2025-07-01");
    let tdx_quote = vector("tdx/tdx_quote");
    let tdx_collateral =
        TdxCollateral::from_json(&vector("tdx/tdx_quote_collateral.json")).unwrap();
    let tdx_options = VerifyOptions::new(TDX_AT);
    let tdx_golden = GoldenTdx::default();
    let tdx_report = verify_tdx_quote(&tdx_quote, Some(&tdx_collateral), &tdx_golden, &tdx_options);
    assert!(tdx_report.verified, "{tdx_report}");
    let tdx_full = measure("verify_tdx_quote [collateral and chain cached]", || {
        black_box(verify_tdx_quote(
            black_box(&tdx_quote),
            Some(&tdx_collateral),
            &tdx_golden,
            &tdx_options,
        ));
    });
    let tdx_parsed = TdQuote::parse(&tdx_quote).unwrap();
    let tdx_parse = measure("TdQuote::parse", || {
        black_box(TdQuote::parse(black_box(&tdx_quote)).unwrap());
    });
    let pck_key = X509::stack_from_pem(&tdx_parsed.pck_chain_pem).unwrap()[0]
        .public_key()
        .unwrap();
    let tdx_sigs = measure(
        "QE report sig + quote sig (2 x P-256 via tdx::crypto)",
        || {
            let q = black_box(&tdx_parsed);
            assert!(
                verify_p256_raw(&pck_key, q.qe_report_bytes(), &q.qe_report_signature).unwrap()
            );
            let ak = p256_key(&q.attestation_key).unwrap();
            assert!(verify_p256_raw(&ak, q.signed_bytes(), &q.signature).unwrap());
        },
    );
    let pck_chain = measure("X509::stack_from_pem (PCK chain, 3 certs)", || {
        black_box(X509::stack_from_pem(black_box(&tdx_parsed.pck_chain_pem)).unwrap());
    });
    // First verification of a new platform: new PCK chain and new collateral (TEST-ONLY signers,
    // same shapes as Intel's): PCK <- CA <- root, root self-signature, TCB Signing <- root, TCB
    // info and QE identity signatures, QE report and quote signatures: 8 P-256 checks.
    let signers: Vec<_> = (0..SAMPLES)
        .map(|_| {
            let signer = test_support::tdx_signer::TdxTestSigner::new().unwrap();
            let quote = signer.quote(&signer.body(&[9; 64])).unwrap();
            let collateral = TdxCollateral::from_json(&signer.collateral_json().unwrap()).unwrap();
            let options = VerifyOptions::new(support::AT).with_tdx_test_roots([
                cvm_attestation::snp::TrustedRoot {
                    name: "TEST-ONLY TDX bench signer".into(),
                    certificate: signer.root().clone(),
                    test_only: true,
                },
            ]);
            (quote, collateral, options)
        })
        .collect();
    let mut tdx_cold: Vec<f64> = signers
        .iter()
        .map(|(quote, collateral, options)| {
            let start = Instant::now();
            let report = verify_tdx_quote(quote, Some(collateral), &tdx_golden, options);
            let elapsed = start.elapsed().as_secs_f64() * 1e6;
            assert!(report.verified, "{report}");
            elapsed
        })
        .collect();
    tdx_cold.sort_by(|a, b| a.total_cmp(b));
    let tdx_cold = tdx_cold[SAMPLES / 2];
    println!(
        "{:<58} {tdx_cold:>10.2} us/op   (1 op x {SAMPLES} new chains and collaterals)",
        "verify_tdx_quote [first time: new chain + collateral]"
    );

    // ---------------------------------------------------------------- summary
    // What verify() cannot avoid for this evidence: the report signature (P-384), the quote
    // signature (P-256), and, unless the chain is cached, VCEK <- ASK and ASK <- ARK (P-384 each
    // with the test signer). The pinned ARK's self-signature is not among them: a pinned root
    // needs checking once, not per call.
    let unavoidable_cached = raw_p384 + raw_p256;
    let unavoidable_uncached = 3.0 * raw_p384 + raw_p256 + 2.0 * raw_rsa2048;
    println!("\nsummary (medians, us)");
    println!("  unavoidable, chain known      P-384 (report) + P-256 (quote)            {unavoidable_cached:>9.2}");
    println!("  unavoidable, chain new        3 x P-384 (report, VCEK, ASK) + P-256");
    println!("                                + 2 x RSA-2048 (AK certificate chain)     {unavoidable_uncached:>9.2}");
    println!(
        "  verify(), chain known                                                   {full:>9.2}"
    );
    println!("  verify(), chain new                                                     {full_cold:>9.2}");
    println!("  Evidence::from_json + verify(), chain known                             {full_json:>9.2}");
    println!(
        "  parts: report sig {part_report_sig:.2} + chain {part_chain_test:.2} + quote sig {part_quote_sig:.2} + JSON {part_json:.2} = {:.2}",
        part_report_sig + part_chain_test + part_quote_sig + part_json
    );
    println!(
        "  one X509 P-384 check {x509_p384:.2}; real Milan chain (remembered) {real_chain:.2}, one X509 RSA-PSS 4096 check {x509_pss:.2} (raw RSA-4096 verify {raw_rsa:.2}); real report sig {real_report_sig:.2}"
    );
    println!(
        "  RATIO verify() / unavoidable, chain known = {:.2}",
        full / unavoidable_cached
    );
    println!(
        "  RATIO verify() / unavoidable, chain new   = {:.2}",
        full_cold / unavoidable_uncached
    );
    // TDX: with collateral and chain cached, only the QE report and the quote signatures are
    // unavoidable per quote (2 x P-256); first time, 8 P-256 checks.
    println!(
        "  TDX verify_tdx_quote, cached {tdx_full:.2} (parse {tdx_parse:.2}, 2 sigs {tdx_sigs:.2}, PCK PEM {pck_chain:.2}); first time {tdx_cold:.2}; peer's DCAP verification ~500"
    );
    println!(
        "  RATIO TDX cached / 2 x raw P-256          = {:.2}",
        tdx_full / (2.0 * raw_p256)
    );
    println!(
        "  RATIO TDX first time / 8 x raw P-256      = {:.2}",
        tdx_cold / (8.0 * raw_p256)
    );
}
