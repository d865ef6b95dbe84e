//! Attacks on the SEV-SNP certificate chain: the evidence's `cert_chain` is never a root, a
//! name is never a key, a VCEK chain never vouches for a VLEK report (nor the other way round),
//! and an intermediate AMD revoked stays revoked (`check_amd_crl`). Every attacker chain and
//! every CRL is made fresh per run by the TEST-ONLY signer; the real AMD material comes from
//! ../shared/vectors.

use cvm_attestation::encoding::Bytes;
use cvm_attestation::golden::GoldenSnp;
use cvm_attestation::snp::certs::{check_amd_crl, parse_certificate, MAX_CRL_BYTES};
use cvm_attestation::snp::{amd_roots, verify_chain, ChainError, TrustedRoot};
use cvm_attestation::verify::{verify_snp_report, Status, VerificationReport, VerifyOptions};
use openssl::x509::X509;
use test_support::SnpTestSigner;
use x509_cert::crl::{CertificateList, RevokedCert};
use x509_cert::der::asn1::{ObjectIdentifier, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
/// 2025-06-01: inside the real vector certificates' validity (the VLEK expires 2025-12-10) and
/// inside the TEST-ONLY signer's.
const AT: i64 = 1_748_736_000;
const REPORT_DATA: [u8; 64] = [0x5a; 64];
const MEASUREMENT: [u8; 48] = [0x3c; 48];
/// SMT allowed, ABI 0.31: what a normal guest runs with.
const POLICY: u64 = 0x3_001f;

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pem_chain(path: &str) -> Vec<X509> {
    X509::stack_from_pem(&vector(path)).unwrap()
}

fn der(cert: &X509) -> Bytes {
    cert.to_der().unwrap().into()
}

fn expectations() -> GoldenSnp {
    GoldenSnp {
        vmpls: vec![0, 1],
        ..GoldenSnp::default()
    }
}

fn test_root(signer: &SnpTestSigner) -> TrustedRoot {
    TrustedRoot {
        name: "TEST-ONLY ARK".into(),
        certificate: signer.ark().clone(),
        test_only: true,
    }
}

/// AMD's pinned ARKs plus `signer`'s root, named by the caller.
fn options_naming(signer: &SnpTestSigner) -> VerifyOptions {
    VerifyOptions::new(AT).with_test_roots([test_root(signer)])
}

fn genuine_report(signer: &SnpTestSigner) -> Vec<u8> {
    signer.report(&REPORT_DATA, &MEASUREMENT, POLICY).unwrap()
}

fn status(report: &VerificationReport, name: &str) -> Option<Status> {
    report.check(name).map(|c| c.status)
}

/// `snp.chain` failed, nothing signed by the leaf was believed, and the report is not verified.
fn assert_chain_refused(report: &VerificationReport, what: &str) {
    let chain = report
        .check("snp.chain")
        .unwrap_or_else(|| panic!("{what}: no snp.chain check in {report:#?}"));
    assert_eq!(chain.status, Status::Fail, "{what}: {chain:?}");
    assert!(
        report.check("snp.signature").is_none(),
        "{what}: checks after a failed chain must not run: {report:#?}"
    );
    assert!(!report.verified, "{what}: verified");
}

#[test]
fn the_genuine_test_chain_verifies_when_its_root_is_named() {
    let signer = SnpTestSigner::new().unwrap();
    let report = verify_snp_report(
        &genuine_report(&signer),
        &signer.vcek_der(),
        &[signer.ask_der().into()],
        &expectations(),
        &options_naming(&signer),
    );
    assert!(report.verified, "{report:#?}");
    let chain = report.check("snp.chain").unwrap();
    assert!(chain.reason.contains("TEST-ONLY root"), "{chain:?}");
}

/// (a) A complete, internally valid chain of the attacker's own, with its ARK in `cert_chain`:
/// the evidence cannot bring its own anchor, whatever roots the verifier trusts.
#[test]
fn a_self_made_chain_with_its_own_ark_in_cert_chain_is_refused() {
    let trusted = SnpTestSigner::new().unwrap();
    let attacker = SnpTestSigner::new().unwrap();
    let report = genuine_report(&attacker);
    let orders: [(&str, Vec<Bytes>); 4] = [
        (
            "ASK then ARK",
            vec![attacker.ask_der().into(), attacker.ark_der().into()],
        ),
        (
            "ARK then ASK",
            vec![attacker.ark_der().into(), attacker.ask_der().into()],
        ),
        ("ARK alone", vec![attacker.ark_der().into()]),
        (
            "ARK, ASK, and the trusted root too",
            vec![
                attacker.ark_der().into(),
                attacker.ask_der().into(),
                trusted.ark_der().into(),
            ],
        ),
    ];
    for (what, chain) in orders {
        for (roots, options) in [
            ("AMD roots only", VerifyOptions::new(AT)),
            ("AMD roots and another test root", options_naming(&trusted)),
        ] {
            let result = verify_snp_report(
                &report,
                &attacker.vcek_der(),
                &chain,
                &expectations(),
                &options,
            );
            assert_chain_refused(&result, &format!("{what}, {roots}"));
        }
    }
}

/// (b) A root of the attacker's making that carries the real AMD ARK's subject, byte for byte:
/// trust is by key, never by name.
#[test]
fn the_real_ark_subject_copied_into_a_self_made_root_is_refused() {
    for root in amd_roots() {
        let impostor = SnpTestSigner::impostor(root.certificate.subject_name()).unwrap();
        assert_eq!(
            impostor.ark().subject_name().to_der().unwrap(),
            root.certificate.subject_name().to_der().unwrap(),
            "{}: the impostor's ARK must carry AMD's name",
            root.name
        );
        let report = verify_snp_report(
            &genuine_report(&impostor),
            &impostor.vcek_der(),
            &[impostor.ask_der().into(), impostor.ark_der().into()],
            &expectations(),
            &VerifyOptions::new(AT),
        );
        assert_chain_refused(&report, &root.name);
        let reason = &report.check("snp.chain").unwrap().reason;
        assert!(
            !reason.contains("AMD root"),
            "{}: the reason must not credit AMD: {reason}",
            root.name
        );
    }
}

/// (c) A VCEK under an ASK the attacker signed, whose issuer field names the real ARK; the
/// attacker even supplies the real ARK (and AMD's real ASK) to complete the path.
#[test]
fn an_ask_that_claims_the_real_ark_as_issuer_is_refused() {
    let amd = amd_roots();
    let milan = &amd[0];
    let impostor = SnpTestSigner::impostor(milan.certificate.subject_name()).unwrap();
    assert_eq!(
        impostor.ask().issuer_name().to_der().unwrap(),
        milan.certificate.subject_name().to_der().unwrap(),
        "the forged ASK must name the real ARK as its issuer"
    );
    let real_ask = pem_chain("virtee-sev/cert_chain_milan.pem")[0].clone();
    let chains: [(&str, Vec<Bytes>); 3] = [
        ("forged ASK alone", vec![impostor.ask_der().into()]),
        (
            "forged ASK and the real ARK",
            vec![impostor.ask_der().into(), der(&milan.certificate)],
        ),
        (
            "the real ASK and ARK beside the forged ASK",
            vec![
                der(&real_ask),
                impostor.ask_der().into(),
                der(&milan.certificate),
            ],
        ),
    ];
    for (what, chain) in chains {
        let report = verify_snp_report(
            &genuine_report(&impostor),
            &impostor.vcek_der(),
            &chain,
            &expectations(),
            &VerifyOptions::new(AT),
        );
        assert_chain_refused(&report, what);
    }
}

/// The evidence's `cert_chain` holding a trusted root itself does not shorten the chain: a
/// certificate the ARK signed directly (an ASK) is not a VCEK, even with the ARK "as
/// intermediate". With AMD's real Milan ARK, ASK and report.
#[test]
fn a_root_in_cert_chain_is_never_an_intermediate() {
    let report = hex::decode(
        String::from_utf8(vector("virtee-sev/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let milan = pem_chain("virtee-sev/cert_chain_milan.pem");
    let (ask, ark) = (&milan[0], &milan[1]);
    let result = verify_snp_report(
        &report,
        &ask.to_der().unwrap(),
        &[der(ark)],
        &expectations(),
        &VerifyOptions::new(AT),
    );
    assert_chain_refused(&result, "ASK as leaf under the ARK as intermediate");

    // The same with the TEST-ONLY signer: its ASK as the "VCEK", its named root as intermediate.
    let signer = SnpTestSigner::new().unwrap();
    let result = verify_snp_report(
        &genuine_report(&signer),
        &signer.ask_der(),
        &[signer.ark_der().into()],
        &expectations(),
        &options_naming(&signer),
    );
    assert_chain_refused(&result, "test ASK as leaf under the named test ARK");
}

/// (d) A real VLEK report (AMD's ASVK chain) presented with AMD's VCEK chain: the VLEK is not
/// signed by any ASK, so there is no chain.
#[test]
fn a_real_vlek_report_with_a_vcek_chain_is_refused() {
    let report = vector("trustee/snp-test-vlek-report.bin");
    let vlek = vector("trustee/snp-test-vlek.der");
    let vcek_chain: Vec<Bytes> = pem_chain("virtee-sev/cert_chain_milan.pem")
        .iter()
        .map(der)
        .collect();
    let result = verify_snp_report(
        &report,
        &vlek,
        &vcek_chain,
        &expectations(),
        &VerifyOptions::new(AT),
    );
    assert_chain_refused(&result, "VLEK with the ASK/ARK chain");

    // Control: the same report with its own ASVK chain gets past the chain and the signature.
    let vlek_chain: Vec<Bytes> = pem_chain("trustee/milan_ask_ark_asvk.pem")
        .iter()
        .map(der)
        .collect();
    let result = verify_snp_report(
        &report,
        &vlek,
        &vlek_chain,
        &expectations(),
        &VerifyOptions::new(AT),
    );
    assert_eq!(
        status(&result, "snp.chain"),
        Some(Status::Pass),
        "{result:#?}"
    );
    assert_eq!(
        status(&result, "snp.signature"),
        Some(Status::Pass),
        "{result:#?}"
    );
    assert_eq!(
        status(&result, "snp.vcek_matches_report"),
        Some(Status::Pass),
        "{result:#?}"
    );
}

/// (d) Every mix of VCEK and VLEK with the TEST-ONLY signer: only the matching pairs verify.
#[test]
fn vcek_and_vlek_never_stand_in_for_each_other() {
    let signer = SnpTestSigner::new().unwrap();
    let options = options_naming(&signer);
    let vcek_chain: Vec<Bytes> = vec![signer.ask_der().into()];
    let vlek_chain: Vec<Bytes> = vec![signer.asvk_der().into()];
    let both: Vec<Bytes> = vec![signer.ask_der().into(), signer.asvk_der().into()];
    let vlek_report = signer
        .vlek_report(&REPORT_DATA, &MEASUREMENT, POLICY)
        .unwrap();
    let vcek_report = genuine_report(&signer);

    // Controls: each report with its own key and chain verifies.
    for (what, report, leaf, chain) in [
        (
            "VCEK report, VCEK chain",
            &vcek_report,
            signer.vcek_der(),
            &vcek_chain,
        ),
        (
            "VLEK report, VLEK chain",
            &vlek_report,
            signer.vlek_der(),
            &vlek_chain,
        ),
        (
            "VLEK report, both intermediates",
            &vlek_report,
            signer.vlek_der(),
            &both,
        ),
    ] {
        let result = verify_snp_report(report, &leaf, chain, &expectations(), &options);
        assert!(result.verified, "{what}: {result:#?}");
    }

    // A VLEK report with the VCEK certificate and chain: the signature is not the VCEK's.
    let result = verify_snp_report(
        &vlek_report,
        &signer.vcek_der(),
        &vcek_chain,
        &expectations(),
        &options,
    );
    assert_eq!(status(&result, "snp.signature"), Some(Status::Fail));
    assert!(!result.verified, "{result:#?}");

    // The VLEK certificate with the VCEK chain: no ASK signed it.
    let result = verify_snp_report(
        &vlek_report,
        &signer.vlek_der(),
        &vcek_chain,
        &expectations(),
        &options,
    );
    assert_chain_refused(&result, "VLEK under the ASK");

    // A VCEK under the ASVK-only chain: no ASVK signed it.
    let result = verify_snp_report(
        &vcek_report,
        &signer.vcek_der(),
        &vlek_chain,
        &expectations(),
        &options,
    );
    assert_chain_refused(&result, "VCEK under the ASVK");

    // Signed by the VCEK but KEY_INFO says VLEK (no chip binding would be checked): the
    // certificate names a chip, not a cloud provider.
    let forged = signer
        .vcek_signed_report_claiming_vlek(&REPORT_DATA, &MEASUREMENT, POLICY)
        .unwrap();
    let result = verify_snp_report(
        &forged,
        &signer.vcek_der(),
        &vcek_chain,
        &expectations(),
        &options,
    );
    assert_eq!(
        status(&result, "snp.vcek_matches_report"),
        Some(Status::Fail),
        "{result:#?}"
    );
    assert!(!result.verified, "VCEK-signed report claiming VLEK");

    // Signed by the VLEK but KEY_INFO says VCEK and names this chip: a VLEK names no chip.
    let forged = signer
        .vlek_signed_report_claiming_vcek(&REPORT_DATA, &MEASUREMENT, POLICY)
        .unwrap();
    let result = verify_snp_report(
        &forged,
        &signer.vlek_der(),
        &vlek_chain,
        &expectations(),
        &options,
    );
    assert_eq!(
        status(&result, "snp.vcek_matches_report"),
        Some(Status::Fail),
        "{result:#?}"
    );
    assert!(!result.verified, "VLEK-signed report claiming VCEK");
}

// ---- AMD's CRL: ASK/ASVK revocation ------------------------------------------------------

/// thisUpdate and nextUpdate of the CRLs below: a day before `AT` to a month after.
const THIS_UPDATE: i64 = AT - 86_400;
const NEXT_UPDATE: i64 = AT + 30 * 86_400;

fn crl_error(result: Result<(), ChainError>, what: &str) -> String {
    match result {
        Err(ChainError::Crl(message)) => message,
        other => panic!("{what}: expected a CRL error, got {other:?}"),
    }
}

#[test]
fn a_current_crl_that_lists_neither_intermediate_passes() {
    let signer = SnpTestSigner::new().unwrap();
    let crl = signer.crl(&[], THIS_UPDATE, NEXT_UPDATE);
    for intermediate in [signer.ask(), signer.asvk()] {
        check_amd_crl(&crl, signer.ark(), intermediate, AT).unwrap();
        // The window's ends are inside it.
        check_amd_crl(&crl, signer.ark(), intermediate, THIS_UPDATE).unwrap();
        check_amd_crl(&crl, signer.ark(), intermediate, NEXT_UPDATE).unwrap();
    }
    // Another product's ASK on the same CRL: listed intermediates of others do not matter.
    let other = SnpTestSigner::new().unwrap();
    let crl = signer.crl(&[other.ask()], THIS_UPDATE, NEXT_UPDATE);
    check_amd_crl(&crl, signer.ark(), signer.ask(), AT).unwrap();
}

#[test]
fn a_revoked_ask_or_asvk_is_refused_by_serial() {
    let signer = SnpTestSigner::new().unwrap();
    let crl = signer.crl(&[signer.ask()], THIS_UPDATE, NEXT_UPDATE);
    match check_amd_crl(&crl, signer.ark(), signer.ask(), AT) {
        Err(ChainError::Revoked {
            which: "ASK",
            serial,
            ..
        }) => assert_eq!(serial, hex::encode(signer.ask_serial())),
        other => panic!("revoked ASK: {other:?}"),
    }
    // Its sibling ASVK is not on the list.
    check_amd_crl(&crl, signer.ark(), signer.asvk(), AT).unwrap();

    let crl = signer.crl(&[signer.asvk()], THIS_UPDATE, NEXT_UPDATE);
    match check_amd_crl(&crl, signer.ark(), signer.asvk(), AT) {
        Err(ChainError::Revoked {
            which: "ASVK",
            serial,
            ..
        }) => assert_eq!(serial, hex::encode(signer.asvk_serial())),
        other => panic!("revoked ASVK: {other:?}"),
    }
    check_amd_crl(&crl, signer.ark(), signer.ask(), AT).unwrap();
}

/// The intermediate and the root the CRL is checked against are the ones `verify_chain`
/// established, so a revoked ASK is caught on the path a report actually took.
#[test]
fn the_chain_the_verifier_found_is_what_the_crl_judges() {
    let signer = SnpTestSigner::new().unwrap();
    let leaf = parse_certificate(&signer.vcek_der()).unwrap();
    let chain = verify_chain(
        &leaf,
        &[signer.ark().clone(), signer.ask().clone()],
        &[test_root(&signer)],
        AT,
    )
    .unwrap();
    assert_eq!(
        chain.intermediate_certificate.to_der().unwrap(),
        signer.ask_der()
    );
    assert_eq!(chain.root_certificate.to_der().unwrap(), signer.ark_der());
    let clean = signer.crl(&[], THIS_UPDATE, NEXT_UPDATE);
    check_amd_crl(
        &clean,
        &chain.root_certificate,
        &chain.intermediate_certificate,
        AT,
    )
    .unwrap();
    let revoking = signer.crl(&[signer.ask()], THIS_UPDATE, NEXT_UPDATE);
    assert!(matches!(
        check_amd_crl(
            &revoking,
            &chain.root_certificate,
            &chain.intermediate_certificate,
            AT
        ),
        Err(ChainError::Revoked { .. })
    ));
}

#[test]
fn only_the_arks_own_crl_counts() {
    let signer = SnpTestSigner::new().unwrap();
    let other = SnpTestSigner::new().unwrap();

    // Another ARK's CRL (the same TEST-ONLY name, another key), listing nothing.
    let foreign = other.crl(&[], THIS_UPDATE, NEXT_UPDATE);
    let message = crl_error(
        check_amd_crl(&foreign, signer.ark(), signer.ask(), AT),
        "another ARK's CRL",
    );
    assert!(message.contains("not signed by"), "{message}");

    // The impostor ARK with AMD's Milan name cannot issue Milan's CRL.
    let milan = amd_roots().remove(0);
    let impostor = SnpTestSigner::impostor(milan.certificate.subject_name()).unwrap();
    let forged = impostor.crl(&[], THIS_UPDATE, NEXT_UPDATE);
    let real_ask = pem_chain("virtee-sev/cert_chain_milan.pem").remove(0);
    let message = crl_error(
        check_amd_crl(&forged, &milan.certificate, &real_ask, AT),
        "a CRL under AMD's name",
    );
    assert!(message.contains("not signed by ARK-Milan"), "{message}");

    // A flipped bit anywhere in the signed part or the signature.
    let crl = signer.crl(&[], THIS_UPDATE, NEXT_UPDATE);
    for offset in [crl.len() / 3, crl.len() - 5] {
        let mut tampered = crl.clone();
        tampered[offset] ^= 0x01;
        assert!(
            check_amd_crl(&tampered, signer.ark(), signer.ask(), AT).is_err(),
            "flip at {offset}"
        );
    }

    // The CRL cannot speak for an intermediate another ARK issued.
    let message = crl_error(
        check_amd_crl(&crl, signer.ark(), other.ask(), AT),
        "another ARK's ASK",
    );
    assert!(message.contains("not issued by"), "{message}");
}

#[test]
fn a_stale_or_future_crl_is_refused() {
    let signer = SnpTestSigner::new().unwrap();
    let crl = signer.crl(&[], THIS_UPDATE, NEXT_UPDATE);
    for at in [THIS_UPDATE - 1, NEXT_UPDATE + 1, -1] {
        let message = crl_error(
            check_amd_crl(&crl, signer.ark(), signer.ask(), at),
            &format!("at {at}"),
        );
        assert!(message.contains("not current"), "{message}");
    }
    // A CRL whose window closed before `AT` hides a revocation made since: stale.
    let old = signer.crl(&[], AT - 60 * 86_400, AT - 30 * 86_400);
    assert!(check_amd_crl(&old, signer.ark(), signer.ask(), AT).is_err());
}

/// What the builder refuses to make, signed by the ARK all the same: every rule of
/// `check_amd_crl` is about the content, not about who can sign it.
#[test]
fn partial_malformed_and_oversized_crls_are_refused() {
    let signer = SnpTestSigner::new().unwrap();
    let base = CertificateList::from_der(&signer.crl(&[], THIS_UPDATE, NEXT_UPDATE)).unwrap();
    let resign = |edit: &dyn Fn(&mut CertificateList)| {
        let mut list = base.clone();
        edit(&mut list);
        signer
            .sign_crl_tbs(&list.tbs_cert_list.to_der().unwrap())
            .unwrap()
    };
    let extension = |oid: &str, critical: bool, value: &[u8]| Extension {
        extn_id: ObjectIdentifier::new_unwrap(oid),
        critical,
        extn_value: OctetString::new(value).unwrap(),
    };

    // Control: re-signing the unchanged content gives a CRL that passes.
    check_amd_crl(&resign(&|_| {}), signer.ark(), signer.ask(), AT).unwrap();
    // A non-critical extension nobody knows is fine.
    let unknown = resign(&|list| {
        let ext = extension("1.3.6.1.4.1.3704.99", false, &[0x05, 0x00]);
        list.tbs_cert_list
            .crl_extensions
            .get_or_insert_with(Vec::new)
            .push(ext);
    });
    check_amd_crl(&unknown, signer.ark(), signer.ask(), AT).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "no nextUpdate",
            resign(&|list| list.tbs_cert_list.next_update = None),
            "nextUpdate",
        ),
        (
            "a delta CRL",
            resign(&|list| {
                let ext = extension("2.5.29.27", true, &[0x02, 0x01, 0x01]);
                list.tbs_cert_list
                    .crl_extensions
                    .get_or_insert_with(Vec::new)
                    .push(ext);
            }),
            "delta",
        ),
        (
            "an unknown critical extension",
            resign(&|list| {
                let ext = extension("1.3.6.1.4.1.3704.99", true, &[0x05, 0x00]);
                list.tbs_cert_list
                    .crl_extensions
                    .get_or_insert_with(Vec::new)
                    .push(ext);
            }),
            "critical",
        ),
        (
            "an entry with a critical extension (indirect CRL)",
            resign(&|list| {
                let this_update = list.tbs_cert_list.this_update;
                list.tbs_cert_list.revoked_certificates = Some(vec![RevokedCert {
                    serial_number: SerialNumber::new(&[0x42]).unwrap(),
                    revocation_date: this_update,
                    crl_entry_extensions: Some(vec![extension("2.5.29.29", true, &[0x30, 0x00])]),
                }]);
            }),
            "critical",
        ),
        (
            "issued in the ASK's name",
            resign(&|list| {
                list.tbs_cert_list.issuer =
                    Name::from_der(&signer.ask().subject_name().to_der().unwrap()).unwrap();
            }),
            "issued by",
        ),
        (
            "inner and outer signature algorithms differ",
            resign(&|list| {
                // ecdsa-with-SHA256 inside, ecdsa-with-SHA384 outside.
                list.tbs_cert_list.signature.oid =
                    ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
            }),
            "algorithms differ",
        ),
    ];
    for (what, crl, expected) in cases {
        let message = crl_error(check_amd_crl(&crl, signer.ark(), signer.ask(), AT), what);
        assert!(message.contains(expected), "{what}: {message}");
    }

    let crl = signer.crl(&[], THIS_UPDATE, NEXT_UPDATE);
    let mut trailing = crl.clone();
    trailing.push(0);
    let mut oversized = crl.clone();
    oversized.resize(MAX_CRL_BYTES + 1, 0);
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("garbage", vec![0x30, 0x03, 0x02, 0x01, 0x01]),
        ("a certificate", signer.ark_der()),
        ("a byte after the CRL", trailing),
        ("larger than the limit", oversized),
        ("truncated", crl[..crl.len() - 1].to_vec()),
    ] {
        crl_error(check_amd_crl(&bytes, signer.ark(), signer.ask(), AT), what);
    }
}
