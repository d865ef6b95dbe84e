//! Google's vTPM AK certificate as the trust basis on GCP: the pinned EK/AK CA root and
//! intermediate are Google's published ones, a real AK certificate verifies against them and its
//! instance identity parses, a TEST-ONLY chain verifies only when a test names its root, and
//! every way of faking the chain is refused with the error that names the cause. Untrusted bytes
//! never panic the verifier.

mod mutation;

use cvm_attestation::gcp::{
    ak_key_matches, google_ak_intermediates, google_ak_roots, instance_identity,
    verify_ak_certificate, GceInstance, GceSecurityProperties, GcpError,
    GOOGLE_EK_AK_CA_INTERMEDIATE_V3_PEM, GOOGLE_EK_AK_CA_ROOT_PEM, INSTANCE_IDENTITY_OID,
    MAX_CERTIFICATE_BYTES, MAX_INTERMEDIATES,
};
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tpm::AkPublic;
use mutation::{cases, mutation};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::Rsa;
use openssl::x509::X509;
use proptest::prelude::*;
use std::sync::OnceLock;
use test_support::GoogleTestCa;
use x509_cert::der::Decode;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");

/// 2025-06-15: inside every real and TEST-ONLY certificate's validity.
const NOW: i64 = 1_750_000_000;

/// A REAL GCE vTPM AK certificate (RSA-2048) of a Confidential VM "instance-1" in project
/// "core-eso", zone us-central1-a, as `gcloud compute instances get-shielded-identity` printed it
/// (`signingKey.ekCert`), published in github.com/salrashid123/gcp-vtpm-ek-ak README.md. Issued
/// 2024-05-07 by Google's "EK/AK CA Intermediate" (v3), valid until 2054-04-30.
const REAL_AK_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIF3zCCA8egAwIBAgIUAO5uKOo6RYLl3C2J905G44VhK64wDQYJKoZIhvcNAQEL
BQAwgYYxCzAJBgNVBAYTAlVTMRMwEQYDVQQIEwpDYWxpZm9ybmlhMRYwFAYDVQQH
Ew1Nb3VudGFpbiBWaWV3MRMwEQYDVQQKEwpHb29nbGUgTExDMRUwEwYDVQQLEwxH
b29nbGUgQ2xvdWQxHjAcBgNVBAMTFUVLL0FLIENBIEludGVybWVkaWF0ZTAgFw0y
NDA1MDcxMTI0NDRaGA8yMDU0MDQzMDExMjQ0M1owaTEWMBQGA1UEBxMNdXMtY2Vu
dHJhbDEtYTEeMBwGA1UEChMVR29vZ2xlIENvbXB1dGUgRW5naW5lMREwDwYDVQQL
Ewhjb3JlLWVzbzEcMBoGA1UEAxMTNjUyNDY5Nzk0MzAyMjc0Mzk0MTCCASIwDQYJ
KoZIhvcNAQEBBQADggEPADCCAQoCggEBAKPHklrn4z7GBIWjA06vpHh/zqExRo2i
zPLQ/d5RKr+jI5X5YVT2h9Q6NSnLyDgE9BFWonuldKzGwVPTJp0BLkeLtWt5kD1K
0xFawF+yweoOlY9HfLuHKri4Yk0C3jWLU7oBS5f0O4Nk/CaDv+tVLx2boWVOaMtq
//NFyq+NVjMLAVs+DTwUWp+LW2oFTZ+LzNHg7J2ZDWrnb7jLLkK2GvIHSf9kLpT0
4781eUNuJseJQ8sb6GMF7QhGCnt4NbbarvqB8TUjtgYyyM35iO/k1ZGSkxNo0hVv
dqEzyX750emNRw5pd6dItMUWA4fF/pt7g6lAADeh17gwwfIkjpewLFECAwEAAaOC
AV0wggFZMA4GA1UdDwEB/wQEAwIHgDAMBgNVHRMBAf8EAjAAMB0GA1UdDgQWBBRR
UxLX2O/6vCeNb2yGiiUfy9LbYDAfBgNVHSMEGDAWgBTpZnNUZ2Yb791lv+XoXOOR
C5sFUjCBjQYIKwYBBQUHAQEEgYAwfjB8BggrBgEFBQcwAoZwaHR0cDovL3ByaXZh
dGVjYS1jb250ZW50LTYzM2JlYjk0LTAwMDAtMjVjMS1hOWQ3LTAwMWExMTRiYTZl
OC5zdG9yYWdlLmdvb2dsZWFwaXMuY29tL2M1OWEyMjU4OWFiNDNhNTdlM2E0L2Nh
LmNydDBpBgorBgEEAdZ5AgEVBFswWQwNdXMtY2VudHJhbDEtYQIGAOevc16cDAhj
b3JlLWVzbwIIWoxiNbiXsYUMCmluc3RhbmNlLTGgIDAeoAMCAQChAwEB/6IDAQH/
owMBAQCkAwEBAKUDAQEAMA0GCSqGSIb3DQEBCwUAA4ICAQBWi8Z0cOpjo4dEPAHM
eyoryiOVcYdwc2ovLgF1eBdEvx5MA1L+m0MYJGyEMo31vGU5s068ZGiZrLTNzbsM
kz0ZrQUF/SQfJmCUFFpWpycctJoUysXyWg5Qvtfd1eSZTJ0eIP2YAAIxvsDySE3j
blsQJsLv7ASQbbUspNPhzni+cEGXNj3efk5qkagr2NU9Ah9xyXbSU0lwzRy5YC58
ONvMK7GCGAMN2AMgVbV/vmwx1ja5L8tY65IG0qf8ftg+47fx6Y6IP58MJ156ny1E
RktmC0aUW3tDQwB6jwnwvlGcjum/EnyETYYXi+IIhxuVfnP67Vgp87eeS+NOr/Tz
Oy1FnByW8TcYvpu+1zd2nUe5dhRvjMPfShKo7guRx3WcsvfSHZFxVYFcx7pT5gp7
70oFyM2yta0X1lv0scP54C/DjHflqJXOFLb354p//L9RaKdyK6jjkQAF+aYoPgzc
6XfWK8DIizA6KvwePBlCbTbl+p+oztbMt5H5k5khg/5HymueztgwWqJW9JIJ+u/n
3ijVCeC1oTPmoc40OoWdwXvBBmn1zRvwsY0DzSWPWg4ia2FIM22oQBHYJetLrsYV
IpIXWO6C19crtyJP2yrRIix3oQ4TREBJ4UABnt38t2AU1SChrW8uY6eVPE3lKMSg
JEAtkWH8xN4KNLyQi+HqIrOuVQ==
-----END CERTIFICATE-----
";

fn real_ak_der() -> Vec<u8> {
    X509::from_pem(REAL_AK_CERT_PEM.as_bytes())
        .and_then(|c| c.to_der())
        .expect("real AK certificate")
}

/// What the real certificate's instance identity says (CN and the extension agree).
fn real_instance() -> GceInstance {
    GceInstance {
        zone: "us-central1-a".into(),
        project_id: "core-eso".into(),
        project_number: 995_081_019_036,
        instance_id: 6_524_697_943_022_743_941,
        instance_name: "instance-1".into(),
        security: Some(GceSecurityProperties {
            security_version: Some(0),
            is_production: Some(true),
            other: vec![
                (2, vec![0x01, 0x01, 0xff]),
                (3, vec![0x01, 0x01, 0x00]),
                (4, vec![0x01, 0x01, 0x00]),
                (5, vec![0x01, 0x01, 0x00]),
            ],
        }),
    }
}

fn test_instance() -> GceInstance {
    GceInstance {
        zone: "europe-west4-a".into(),
        project_id: "cvm-toolkit-test".into(),
        project_number: 123_456_789_012,
        instance_id: 9_223_372_036_854_775_907, // above i64::MAX: Google's IDs are unsigned
        instance_name: "tdx-node-1".into(),
        security: Some(GceSecurityProperties {
            security_version: Some(7),
            is_production: Some(true),
            other: vec![],
        }),
    }
}

fn p256() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn public(key: &PKey<Private>) -> PKey<Public> {
    PKey::public_key_from_der(&key.public_key_to_der().unwrap()).unwrap()
}

fn ak_public(key: &PKey<Public>) -> AkPublic {
    AkPublic::from_bytes(&key.public_key_to_der().unwrap()).unwrap()
}

/// The extension value as the certificate carries it.
fn extension_value(der: &[u8], oid: &str) -> Option<Vec<u8>> {
    let cert = x509_cert::Certificate::from_der(der).unwrap();
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes().to_vec())
}

fn vector_der(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(format!("{VECTORS}/gcp/{name}")).unwrap();
    X509::from_der(&bytes)
        .or_else(|_| X509::from_pem(&bytes))
        .and_then(|c| c.to_der())
        .unwrap()
}

fn sha256_fingerprint(cert: &X509) -> String {
    hex::encode_upper(cert.digest(MessageDigest::sha256()).unwrap())
}

#[test]
fn pinned_root_and_intermediate_are_googles_published_certificates() {
    let root = X509::from_pem(GOOGLE_EK_AK_CA_ROOT_PEM.as_bytes()).unwrap();
    let intermediate = X509::from_pem(GOOGLE_EK_AK_CA_INTERMEDIATE_V3_PEM.as_bytes()).unwrap();
    // The same bytes as go-tpm-tools server/ca-certs/ (and, for the root, dstack's copy).
    assert_eq!(root.to_der().unwrap(), vector_der("gcp_ek_ak_ca_root.crt"));
    assert_eq!(root.to_der().unwrap(), vector_der("dstack-gcp-root-ca.pem"));
    assert_eq!(
        intermediate.to_der().unwrap(),
        vector_der("gcp_ek_ak_ca_intermediate_v3.crt")
    );
    assert_eq!(
        sha256_fingerprint(&root),
        "594759594B9B61524F6C8EF668F7177F7B9066BC0674F2F49FE9E052BE78BEB2"
    );
    assert_eq!(
        sha256_fingerprint(&intermediate),
        "C84DE8116DFAF5A908F21E810487791F5437E206D00AD8025050CCA6BD2FF627"
    );
    // Self-signed root; the real intermediate chains to it.
    let root_key = root.public_key().unwrap();
    assert!(root.verify(&root_key).unwrap());
    assert!(intermediate.verify(&root_key).unwrap());
    assert!(!intermediate
        .verify(&intermediate.public_key().unwrap())
        .unwrap());
    let roots = google_ak_roots();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].name, "Google EK/AK CA Root");
    assert!(!roots[0].test_only);
    let pinned = google_ak_intermediates();
    assert_eq!(pinned.len(), 1);
    assert!(pinned[0]
        .verify(&roots[0].certificate.public_key().unwrap())
        .unwrap());
    let cn = |c: &X509| cvm_attestation::snp::certs::common_name(c);
    assert_eq!(cn(&roots[0].certificate), "EK/AK CA Root");
    assert_eq!(cn(&pinned[0]), "EK/AK CA Intermediate");
}

#[test]
fn real_ak_certificate_verifies_against_the_pinned_root_and_names_its_instance() {
    let cert = verify_ak_certificate(&real_ak_der(), &[], &google_ak_roots(), NOW).unwrap();
    assert_eq!(cert.root, "Google EK/AK CA Root");
    assert!(!cert.root_is_test_only);
    assert_eq!(
        cert.subject,
        "L=us-central1-a, O=Google Compute Engine, OU=core-eso, CN=6524697943022743941"
    );
    assert_eq!(cert.instance, Some(real_instance()));
    assert!(cert.instance.as_ref().unwrap().is_production());
    // RSA-2048, the key `signingKey.ekPub` of the same VM.
    assert_eq!(cert.key.rsa().unwrap().size(), 256);
    assert!(ak_key_matches(&cert, &ak_public(&cert.key)));

    // The same with the real intermediate carried in the evidence as well.
    let intermediate = vector_der("gcp_ek_ak_ca_intermediate_v3.crt");
    let carried = verify_ak_certificate(&real_ak_der(), &[&intermediate], &google_ak_roots(), NOW);
    assert_eq!(carried.unwrap().instance, Some(real_instance()));
}

#[test]
fn real_ak_certificate_needs_googles_root_and_its_validity() {
    let test_root = GoogleTestCa::new().unwrap().trusted_root();
    let err = verify_ak_certificate(&real_ak_der(), &[], &[test_root], NOW).unwrap_err();
    assert!(
        matches!(&err, GcpError::UntrustedIntermediate { which: "pinned intermediate", subject, .. }
            if subject == "EK/AK CA Intermediate"),
        "{err}"
    );
    let err = verify_ak_certificate(&real_ak_der(), &[], &[], NOW).unwrap_err();
    assert!(matches!(err, GcpError::NoUsableRoot { .. }), "{err}");

    // Issued 2024-05-07, valid until 2054-04-30 (the CAs are valid 2022..2122).
    for at in [
        1_685_000_000, /* 2023-05 */
        2_700_000_000, /* 2055 */
    ] {
        let err = verify_ak_certificate(&real_ak_der(), &[], &google_ak_roots(), at).unwrap_err();
        assert!(
            matches!(&err, GcpError::Expired(e)
                if e.which == "AK certificate" && e.subject == "6524697943022743941"),
            "{err}"
        );
    }
}

#[test]
fn instance_identity_is_encoded_byte_for_byte_as_google_does() {
    let real = extension_value(&real_ak_der(), INSTANCE_IDENTITY_OID).unwrap();
    assert_eq!(instance_identity(&real).unwrap(), real_instance());
    // The TEST-ONLY CA writes exactly Google's bytes for the same instance.
    assert_eq!(GoogleTestCa::instance_identity_der(&real_instance()), real);

    // Round trip of the test instance, and of one without securityProperties.
    let mut instance = test_instance();
    let der = GoogleTestCa::instance_identity_der(&instance);
    assert_eq!(instance_identity(&der).unwrap(), instance);
    instance.security = None;
    let der = GoogleTestCa::instance_identity_der(&instance);
    assert_eq!(instance_identity(&der).unwrap(), instance);
    assert!(!instance.is_production());

    // Negative project numbers, out-of-order properties and trailing bytes are refused.
    let mut negative = real.clone();
    let at = negative
        .windows(3)
        .position(|w| w == [0x02, 0x06, 0x00])
        .unwrap();
    negative.splice(at..at + 3, [0x02, 0x05]);
    negative[1] -= 1;
    assert!(instance_identity(&negative)
        .unwrap_err()
        .contains("INTEGER"));
    let swapped = real_instance().security.map(|mut s| {
        s.other.swap(0, 1);
        s
    });
    let der = GoogleTestCa::instance_identity_der(&GceInstance {
        security: swapped,
        ..real_instance()
    });
    assert!(instance_identity(&der)
        .unwrap_err()
        .contains("out of order"));
    let mut trailing = real.clone();
    trailing.push(0);
    assert!(instance_identity(&trailing).is_err());
}

/// A TEST-ONLY CA's AK certificate for a fresh key, with the test instance.
fn issued(ca: &GoogleTestCa) -> (Vec<u8>, PKey<Public>) {
    let key = public(&p256());
    let cert = ca
        .issue_ak_certificate(&key, Some(&test_instance()))
        .unwrap();
    (cert, key)
}

#[test]
fn test_only_ak_certificate_verifies_only_when_its_root_is_named() {
    let ca = GoogleTestCa::new().unwrap();
    let (leaf, key) = issued(&ca);
    let intermediate = ca.intermediate_der();

    let err = verify_ak_certificate(&leaf, &[&intermediate], &google_ak_roots(), NOW).unwrap_err();
    assert!(
        matches!(&err, GcpError::UntrustedIntermediate { which: "intermediate carried in the evidence", subject, .. }
            if subject == "TEST-ONLY EK/AK CA Intermediate"),
        "{err}"
    );

    let cert = verify_ak_certificate(&leaf, &[&intermediate], &[ca.trusted_root()], NOW).unwrap();
    assert!(cert.root_is_test_only);
    assert_eq!(cert.root, "TEST-ONLY EK/AK CA Root");
    assert_eq!(cert.instance, Some(test_instance()));
    assert_eq!(
        cert.subject,
        "CN=9223372036854775907, O=TEST ONLY - not Google Compute Engine"
    );
    assert!(ak_key_matches(&cert, &ak_public(&key)));

    // Named next to Google's root, it still verifies; Google's pinned intermediate is no help.
    let mut roots = google_ak_roots();
    roots.push(ca.trusted_root());
    assert!(verify_ak_certificate(&leaf, &[&intermediate], &roots, NOW).is_ok());
    let err = verify_ak_certificate(&leaf, &[], &roots, NOW).unwrap_err();
    assert!(
        matches!(&err, GcpError::UnknownIssuer { issuer, tried: 1, .. }
            if issuer == "TEST-ONLY EK/AK CA Intermediate"),
        "{err}"
    );

    // Without the instance identity the chain still verifies, with no instance.
    let bare = ca.issue_ak_certificate(&key, None).unwrap();
    let cert = verify_ak_certificate(&bare, &[&intermediate], &[ca.trusted_root()], NOW).unwrap();
    assert_eq!(cert.instance, None);
}

#[test]
fn self_made_ca_with_googles_names_is_refused() {
    let impostor = GoogleTestCa::impersonating_google().unwrap();
    let cn = |c: &X509| cvm_attestation::snp::certs::common_name(c);
    assert_eq!(cn(impostor.root()), "EK/AK CA Root");
    let (leaf, _) = issued(&impostor);
    let intermediate = impostor.intermediate_der();
    let root = impostor.root_der();

    for carried in [vec![&intermediate[..]], vec![&intermediate[..], &root[..]]] {
        let err = verify_ak_certificate(&leaf, &carried, &google_ak_roots(), NOW).unwrap_err();
        assert!(
            matches!(&err, GcpError::UntrustedIntermediate { subject, tried, .. }
                if subject == "EK/AK CA Intermediate" && tried == "Google EK/AK CA Root"),
            "{err}"
        );
    }
    // Its root alone in the evidence does not stand in for an intermediate either.
    let err = verify_ak_certificate(&leaf, &[&root], &google_ak_roots(), NOW).unwrap_err();
    assert!(matches!(err, GcpError::UnknownIssuer { .. }), "{err}");
}

#[test]
fn carried_intermediate_not_signed_by_a_named_root_is_refused() {
    let (named, other) = (GoogleTestCa::new().unwrap(), GoogleTestCa::new().unwrap());
    let (leaf, _) = issued(&other);
    let err = verify_ak_certificate(
        &leaf,
        &[&named.intermediate_der(), &other.intermediate_der()],
        &[named.trusted_root()],
        NOW,
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            GcpError::UntrustedIntermediate {
                which: "intermediate carried in the evidence",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn expired_and_not_yet_valid_leaves_are_refused() {
    let ca = GoogleTestCa::new().unwrap();
    let key = public(&p256());
    let intermediate = ca.intermediate_der();
    let valid = (1_600_000_000, 1_700_000_000);
    let leaf = ca
        .issue_ak_certificate_valid(&key, Some(&test_instance()), valid)
        .unwrap();
    let roots = [ca.trusted_root()];
    for at in [valid.0 - 1, valid.1 + 1] {
        let err = verify_ak_certificate(&leaf, &[&intermediate], &roots, at).unwrap_err();
        assert!(
            matches!(&err, GcpError::Expired(e) if e.which == "AK certificate"),
            "{err}"
        );
    }
    // Both bounds are inclusive.
    for at in [valid.0, valid.1] {
        assert!(verify_ak_certificate(&leaf, &[&intermediate], &roots, at).is_ok());
    }
}

#[test]
fn certificate_for_another_key_does_not_match_the_quoting_key() {
    let ca = GoogleTestCa::new().unwrap();
    let (leaf, key) = issued(&ca);
    let cert =
        verify_ak_certificate(&leaf, &[&ca.intermediate_der()], &[ca.trusted_root()], NOW).unwrap();
    assert!(ak_key_matches(&cert, &ak_public(&key)));
    let other_ec = public(&p256());
    assert!(!ak_key_matches(&cert, &ak_public(&other_ec)));
    let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    assert!(!ak_key_matches(&cert, &ak_public(&public(&rsa))));

    // RSA: the real certificate's key matches itself only.
    let real = verify_ak_certificate(&real_ak_der(), &[], &google_ak_roots(), NOW).unwrap();
    assert!(!ak_key_matches(&real, &ak_public(&public(&rsa))));
    assert!(!ak_key_matches(&real, &ak_public(&key)));
}

#[test]
fn certificate_that_is_not_a_ca_cannot_be_an_intermediate() {
    let ca = GoogleTestCa::with_intermediate_not_ca().unwrap();
    let (leaf, _) = issued(&ca);
    let err = verify_ak_certificate(&leaf, &[&ca.intermediate_der()], &[ca.trusted_root()], NOW)
        .unwrap_err();
    assert!(
        matches!(&err, GcpError::IntermediateNotCa { reason, .. } if reason.contains("basicConstraints")),
        "{err}"
    );
    // And a CA certificate is no AK certificate.
    let proper = GoogleTestCa::new().unwrap();
    let err = verify_ak_certificate(
        &proper.intermediate_der(),
        &[],
        &[proper.trusted_root()],
        NOW,
    )
    .unwrap_err();
    assert!(matches!(err, GcpError::LeafIsCa { .. }), "{err}");
}

#[test]
fn untrusted_input_is_bounded() {
    let leaf = real_ak_der();
    let mut large = leaf.clone();
    large.resize(MAX_CERTIFICATE_BYTES + 1, 0);
    let err = verify_ak_certificate(&large, &[], &google_ak_roots(), NOW).unwrap_err();
    assert!(matches!(err, GcpError::TooLarge { .. }), "{err}");
    let err = verify_ak_certificate(&leaf, &[&large], &google_ak_roots(), NOW).unwrap_err();
    assert!(matches!(err, GcpError::TooLarge { .. }), "{err}");
    let many = vec![&leaf[..]; MAX_INTERMEDIATES + 1];
    let err = verify_ak_certificate(&leaf, &many, &google_ak_roots(), NOW).unwrap_err();
    assert!(
        matches!(err, GcpError::TooManyIntermediates { .. }),
        "{err}"
    );
}

#[test]
fn truncated_or_extended_der_is_a_decode_error() {
    let leaf = real_ak_der();
    let roots = google_ak_roots();
    for len in 0..leaf.len() {
        let err = verify_ak_certificate(&leaf[..len], &[], &roots, NOW).unwrap_err();
        assert!(matches!(err, GcpError::Decode { .. }), "{len}: {err}");
        let err = verify_ak_certificate(&leaf, &[&leaf[..len]], &roots, NOW).unwrap_err();
        assert!(matches!(err, GcpError::Decode { .. }), "{len}: {err}");
    }
    // OpenSSL alone would ignore the trailing byte; strict DER does not.
    let mut extended = leaf.clone();
    extended.push(0);
    let err = verify_ak_certificate(&extended, &[], &roots, NOW).unwrap_err();
    assert!(matches!(err, GcpError::Decode { .. }), "{err}");
    let pem = REAL_AK_CERT_PEM.as_bytes();
    let err = verify_ak_certificate(pem, &[], &roots, NOW).unwrap_err();
    assert!(matches!(err, GcpError::Decode { .. }), "{err}");
}

/// Leaves (the real certificate and a TEST-ONLY one), the intermediates, and the roots that
/// make both leaves verify.
struct Seeds {
    leaves: Vec<Vec<u8>>,
    intermediates: Vec<Vec<u8>>,
    roots: Vec<TrustedRoot>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let ca = GoogleTestCa::new().unwrap();
        let (leaf, _) = issued(&ca);
        let mut roots = google_ak_roots();
        roots.push(ca.trusted_root());
        Seeds {
            leaves: vec![real_ak_der(), leaf],
            intermediates: vec![
                ca.intermediate_der(),
                vector_der("gcp_ek_ak_ca_intermediate_v3.crt"),
            ],
            roots,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Damaged leaves never panic and never verify (every byte of a certificate is signed or
    /// checked: a changed one that still verified would be a forgery).
    #[test]
    fn damaged_leaf_never_panics_or_verifies(m in mutation(), which in 0usize..2) {
        let seeds = seeds();
        let original = &seeds.leaves[which];
        let mut leaf = original.clone();
        m.apply_to(&mut leaf);
        let carried = [&seeds.intermediates[0][..]];
        if let Ok(cert) = verify_ak_certificate(&leaf, &carried, &seeds.roots, NOW) {
            prop_assert_eq!(&leaf, original, "a changed certificate verified: {}", cert.subject);
        }
    }

    /// Damaged intermediates and random bytes in the evidence never panic.
    #[test]
    fn damaged_intermediates_never_panic(
        m in mutation(),
        random in prop::collection::vec(any::<u8>(), 0..2048),
        which in 0usize..2,
    ) {
        let seeds = seeds();
        let damaged = m.apply(&seeds.intermediates);
        let carried = [&damaged[..], &random[..]];
        let _ = verify_ak_certificate(&seeds.leaves[which], &carried, &seeds.roots, NOW);
        let _ = verify_ak_certificate(&random, &[&damaged[..]], &seeds.roots, NOW);
        let _ = instance_identity(&random);
    }

    /// Damaged instance identity values never panic.
    #[test]
    fn damaged_instance_identity_never_panics(m in mutation()) {
        let seeds = [GoogleTestCa::instance_identity_der(&real_instance()),
            GoogleTestCa::instance_identity_der(&test_instance())];
        let _ = instance_identity(&m.apply(&seeds));
    }
}
