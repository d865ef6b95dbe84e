//! Every real SNP report in ../shared/vectors verifies against its real chain and AMD's pinned
//! ARKs; a flipped signed byte or another chip's VCEK fails.

use cvm_attestation::snp::certs::{amd_builtin_asks, parse_certificate, parse_pem_chain};
use cvm_attestation::snp::policy::leaf_matches_report;
use cvm_attestation::snp::{amd_extensions, amd_roots, verify_chain, ChainError, SnpReport};
use openssl::x509::X509;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
/// 2025-06-01: inside every vector certificate's validity (the VLEK expires 2025-12-10).
const AT: i64 = 1_748_736_000;

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Case {
    report: Vec<u8>,
    leaf: X509,
    intermediates: Vec<X509>,
}

fn cases() -> Vec<(&'static str, Case)> {
    let hex_report = hex::decode(
        String::from_utf8(vector("virtee-sev/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let hcl = vector("derived/v2-hcl-report.bin");
    let milan_chain = parse_pem_chain(&vector("virtee-sev/cert_chain_milan.pem")).unwrap();
    let vlek_chain = parse_pem_chain(&vector("trustee/milan_ask_ark_asvk.pem")).unwrap();
    let azure_chain = parse_pem_chain(&vector("trustee/az-snp-vcek-chain.pem")).unwrap();
    vec![
        (
            "virtee milan",
            Case {
                report: hex_report,
                leaf: parse_certificate(&vector("virtee-sev/vcek_milan.der")).unwrap(),
                intermediates: milan_chain.clone(),
            },
        ),
        (
            "trustee milan",
            Case {
                report: vector("trustee/snp-test-report.bin"),
                leaf: parse_certificate(&vector("trustee/snp-test-vcek.der")).unwrap(),
                intermediates: amd_builtin_asks(),
            },
        ),
        (
            "trustee vlek",
            Case {
                report: vector("trustee/snp-test-vlek-report.bin"),
                leaf: parse_certificate(&vector("trustee/snp-test-vlek.der")).unwrap(),
                intermediates: vlek_chain,
            },
        ),
        (
            "azure hcl v2 (report at 0x20)",
            Case {
                report: hcl[0x20..0x20 + 1184].to_vec(),
                leaf: parse_certificate(&vector("derived/v2-vcek.der")).unwrap(),
                intermediates: milan_chain,
            },
        ),
        (
            "azure hcl trustee",
            Case {
                report: vector("trustee/az-snp-hcl-report.bin")[0x20..0x20 + 1184].to_vec(),
                leaf: azure_chain[0].clone(),
                intermediates: azure_chain[1..].to_vec(),
            },
        ),
    ]
}

#[test]
fn real_reports_verify_against_pinned_amd_roots() {
    for (name, case) in cases() {
        let report = SnpReport::parse(&case.report).unwrap_or_else(|e| panic!("{name}: {e}"));
        let chain = verify_chain(&case.leaf, &case.intermediates, &amd_roots(), AT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(chain.root, "ARK-Milan", "{name}");
        assert!(!chain.root_is_test_only);
        assert!(
            report.signature_valid(&chain.leaf_key).unwrap(),
            "{name}: signature"
        );
        let ext = amd_extensions(&case.leaf.to_der().unwrap()).unwrap();
        leaf_matches_report(&ext, &report).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn every_signed_byte_matters() {
    for (name, case) in cases() {
        let key = case.leaf.public_key().unwrap();
        // Flip one bit in every 7th signed byte (and the reserved TCB bytes sev's check missed).
        let mut offsets: Vec<usize> = (0..0x2a0).step_by(7).collect();
        offsets.extend([0x3a, 0x3d, 0x182, 0x185, 0x1e2, 0x1e5, 0x1f2, 0x1f5]);
        for offset in offsets {
            let mut bytes = case.report.clone();
            bytes[offset] ^= 0x01;
            if let Ok(report) = SnpReport::parse(&bytes) {
                assert!(
                    !report.signature_valid(&key).unwrap(),
                    "{name}: flip at {offset:#x} passed"
                );
            }
        }
    }
}

#[test]
fn another_chips_vcek_does_not_verify_the_report() {
    let all = cases();
    let (_, virtee) = &all[0];
    let (_, trustee) = &all[1];
    let report = SnpReport::parse(&virtee.report).unwrap();
    assert!(!report
        .signature_valid(&trustee.leaf.public_key().unwrap())
        .unwrap());
    // And its extensions name another chip.
    let ext = amd_extensions(&trustee.leaf.to_der().unwrap()).unwrap();
    let err = leaf_matches_report(&ext, &report).unwrap_err();
    assert!(err.contains("hwID") || err.contains("certificate"), "{err}");
}

#[test]
fn expired_vlek_is_refused_by_name_at_the_current_time() {
    let all = cases();
    let (_, vlek) = &all[2];
    let now = 1_790_000_000; // 2026-09
    let err = verify_chain(&vlek.leaf, &vlek.intermediates, &amd_roots(), now).unwrap_err();
    assert!(
        matches!(&err, ChainError::Expired(e) if e.which == "VCEK/VLEK"),
        "{err}"
    );
}

#[test]
fn a_chain_with_its_own_root_is_not_trusted() {
    // The evidence's own ARK is never a trust anchor: with no pinned roots nothing verifies.
    let all = cases();
    let (_, case) = &all[0];
    let err = verify_chain(&case.leaf, &case.intermediates, &[], AT).unwrap_err();
    assert!(
        matches!(err, ChainError::UntrustedIntermediate { .. }),
        "{err}"
    );
}

#[test]
fn malformed_reports_are_errors() {
    assert!(SnpReport::parse(&[0u8; 10]).is_err());
    let mut bytes = vec![0u8; 1184];
    bytes[0] = 9;
    assert!(SnpReport::parse(&bytes)
        .unwrap_err()
        .to_string()
        .contains("version 9"));
}

/// GCP's SEV-SNP VMs report version 4 (version 3's layout): it must parse.
#[test]
fn version_4_reports_parse() {
    let signer = test_support::SnpTestSigner::new().unwrap();
    let mut bytes = signer.report(&[7; 64], &[0x42; 48], 0x3_0000).unwrap();
    bytes[0..4].copy_from_slice(&4u32.to_le_bytes());
    let report = SnpReport::parse(&bytes).unwrap();
    assert_eq!(report.fields.version, 4);
    assert_eq!(report.report_data(), &[7; 64]);
}
