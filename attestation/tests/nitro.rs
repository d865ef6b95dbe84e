//! AWS Nitro attestation documents: the real Nitro Enclave document in ../shared/vectors/aws
//! verifies against the pinned AWS Nitro root at its own time and fails by expiry now; TEST-ONLY
//! documents (as a NitroTPM makes them) verify only when their root is named; each attack is
//! refused by its own error; damaged and random inputs never panic.

mod mutation;

use cvm_attestation::nitro::{
    aws_nitro_roots, verify_document, NitroDigest, NitroDocument, NitroError, AWS_NITRO_ROOT_G1_PEM,
};
use cvm_attestation::snp::TrustedRoot;
use mutation::{cases, mutation};
use openssl::hash::MessageDigest;
use openssl::x509::X509;
use proptest::prelude::*;
use std::collections::BTreeMap;
use test_support::{NitroTestSigner, ES384};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");

fn real_document() -> Vec<u8> {
    let path = format!("{VECTORS}/aws/nsm_attestation_enclave.bin");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The real document's timestamp (2025-12-25T13:15:37.578Z), in seconds: inside its leaf's
/// three-hour validity (13:15:34Z to 16:15:37Z).
const REAL_AT: i64 = 1_766_668_537;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn test_root(signer: &NitroTestSigner) -> Vec<TrustedRoot> {
    vec![TrustedRoot {
        name: "TEST-ONLY Nitro root".into(),
        certificate: signer.root(),
        test_only: true,
    }]
}

fn pcrs() -> BTreeMap<u8, Vec<u8>> {
    [0u8, 4, 7, 12]
        .into_iter()
        .map(|i| (i, vec![i.wrapping_mul(17); 48]))
        .collect()
}

/// A TEST-ONLY document with recognizable user data, made now.
fn test_document(signer: &NitroTestSigner) -> Vec<u8> {
    signer.document(
        &pcrs(),
        Some(b"user-data-marker"),
        Some(b"nonce-0123456789"),
        None,
        now() as u64 * 1000,
    )
}

#[test]
fn the_pinned_root_is_aws_nitro_root_g1() {
    let root = X509::from_pem(AWS_NITRO_ROOT_G1_PEM.as_bytes()).unwrap();
    let published = std::fs::read(format!("{VECTORS}/aws/AWS_NitroEnclaves_Root-G1.pem")).unwrap();
    assert_eq!(root, X509::from_pem(&published).unwrap());
    let fingerprint = hex::encode(root.digest(MessageDigest::sha256()).unwrap());
    assert_eq!(
        fingerprint,
        "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
    );
    assert!(root.verify(&root.public_key().unwrap()).unwrap());
    let roots = aws_nitro_roots();
    assert_eq!(roots.len(), 1);
    assert!(!roots[0].test_only);
}

#[test]
fn the_real_document_verifies_at_its_own_time() {
    let doc = verify_document(&real_document(), &aws_nitro_roots(), REAL_AT).unwrap();
    println!(
        "module_id {}, {} PCRs, digest {}, chain {:?}",
        doc.module_id,
        doc.pcrs.len(),
        doc.digest,
        doc.chain
    );
    assert_eq!(doc.module_id, "i-0827e799ec9232d44-enc019b55a68bd2ed4b");
    assert_eq!(doc.digest, NitroDigest::Sha384);
    assert_eq!(doc.timestamp_ms, 1_766_668_537_578);
    assert_eq!(
        doc.pcrs.keys().copied().collect::<Vec<_>>(),
        (0..16).collect::<Vec<u8>>()
    );
    assert!(doc.pcrs.values().all(|pcr| pcr.len() == 48));
    assert_eq!(doc.user_data.as_deref(), Some(&[0u8; 64][..]));
    assert_eq!((doc.nonce.as_ref(), doc.public_key.as_ref()), (None, None));
    assert_eq!(
        (doc.root.as_str(), doc.root_is_test_only),
        ("AWS Nitro root G1", false)
    );
    assert_eq!(doc.chain.len(), 5, "leaf, three intermediates, root");
    assert_eq!(
        doc.chain[4],
        "C=US, O=Amazon, OU=AWS, CN=aws.nitro-enclaves"
    );
    assert!(
        doc.chain[0].contains("i-0827e799ec9232d44"),
        "{}",
        doc.chain[0]
    );
}

#[test]
fn the_real_document_has_expired_by_now() {
    let err = verify_document(&real_document(), &aws_nitro_roots(), now()).unwrap_err();
    assert!(
        matches!(&err, NitroError::CertificateNotValid(e) if e.which == "signing certificate"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("to Dec 25 16:15:37 2025 GMT"),
        "{err}"
    );
}

#[test]
fn the_real_document_verifies_bare_and_tagged() {
    // The vector is dstack's envelope: 0x00 0x02, SCALE compact length 4527, the COSE_Sign1.
    let real = real_document();
    assert_eq!(&real[..4], &[0x00, 0x02, 0xbd, 0x46]);
    let bare = &real[4..4 + 4527];
    let expected = verify_document(&real, &aws_nitro_roots(), REAL_AT).unwrap();
    assert_eq!(
        verify_document(bare, &aws_nitro_roots(), REAL_AT).unwrap(),
        expected
    );
    let tagged = [&[0xd2][..], bare].concat();
    assert_eq!(
        verify_document(&tagged, &aws_nitro_roots(), REAL_AT).unwrap(),
        expected
    );
}

#[test]
fn a_test_document_verifies_only_when_its_root_is_named() {
    let signer = NitroTestSigner::new().unwrap();
    let bytes = test_document(&signer);
    let doc: NitroDocument = verify_document(&bytes, &test_root(&signer), now()).unwrap();
    assert!(doc.root_is_test_only);
    assert_eq!(doc.pcrs, pcrs());
    assert_eq!(doc.user_data.as_deref(), Some(&b"user-data-marker"[..]));
    assert_eq!(doc.nonce.as_deref(), Some(&b"nonce-0123456789"[..]));
    assert_eq!(doc.chain.len(), 3);
    let err = verify_document(&bytes, &aws_nitro_roots(), now()).unwrap_err();
    assert!(matches!(err, NitroError::UntrustedRoot { .. }), "{err:?}");
    // A root the caller trusts for something else does not help either.
    let other = NitroTestSigner::new().unwrap();
    let err = verify_document(&bytes, &test_root(&other), now()).unwrap_err();
    assert!(matches!(err, NitroError::UntrustedRoot { .. }), "{err:?}");
}

#[test]
fn a_self_made_root_calling_itself_aws_is_refused() {
    let impostor = NitroTestSigner::with_root_name("aws.nitro-enclaves").unwrap();
    let err = verify_document(&test_document(&impostor), &aws_nitro_roots(), now()).unwrap_err();
    assert!(
        matches!(&err, NitroError::UntrustedRoot { subject, .. } if subject.contains("CN=aws.nitro-enclaves")),
        "{err:?}"
    );
    // Carrying AWS's real root as cabundle[0] does not chain the impostor's intermediate to it.
    let mut payload = impostor.payload(&pcrs(), None, None, None, now() as u64 * 1000);
    let aws_root = X509::from_pem(AWS_NITRO_ROOT_G1_PEM.as_bytes()).unwrap();
    payload.cabundle[0] = aws_root.to_der().unwrap();
    let forged = impostor.sign(&payload.to_cbor(), ES384);
    let err = verify_document(&forged, &aws_nitro_roots(), now()).unwrap_err();
    assert!(
        matches!(err, NitroError::ChainBroken { index: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn a_flipped_payload_byte_is_refused() {
    let signer = NitroTestSigner::new().unwrap();
    let mut bytes = test_document(&signer);
    let at = find(&bytes, b"user-data-marker");
    bytes[at] ^= 0x01;
    let err = verify_document(&bytes, &test_root(&signer), now()).unwrap_err();
    assert_eq!(err, NitroError::BadSignature);
}

#[test]
fn a_flipped_signature_byte_is_refused() {
    let signer = NitroTestSigner::new().unwrap();
    for offset in [1, 48, 96] {
        let mut bytes = test_document(&signer);
        let at = bytes.len() - offset;
        bytes[at] ^= 0x80;
        let err = verify_document(&bytes, &test_root(&signer), now()).unwrap_err();
        assert_eq!(err, NitroError::BadSignature, "byte {offset} from the end");
    }
}

#[test]
fn an_algorithm_other_than_es384_is_refused() {
    let signer = NitroTestSigner::new().unwrap();
    let payload = signer.payload(&pcrs(), None, None, None, now() as u64 * 1000);
    for (alg, name) in [
        (-7, "ES256 (-7)"),
        (-36, "ES512 (-36)"),
        (-37, "PS256 (-37)"),
    ] {
        let bytes = signer.sign(&payload.to_cbor(), alg);
        let err = verify_document(&bytes, &test_root(&signer), now()).unwrap_err();
        assert_eq!(err, NitroError::UnsupportedAlgorithm(name.into()));
    }
}

#[test]
fn anything_in_the_unsigned_header_is_refused() {
    let signer = NitroTestSigner::new().unwrap();
    let bytes = test_document(&signer);
    // [0x84, protected bstr (5 bytes: 44 a1 01 38 22), unprotected {} (a0), ...]
    assert_eq!(&bytes[..7], &[0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0]);
    let with_kid = [&bytes[..6], &[0xa1, 0x04, 0x41, 0x00], &bytes[7..]].concat();
    let err = verify_document(&with_kid, &test_root(&signer), now()).unwrap_err();
    assert_eq!(err, NitroError::UnprotectedHeader);
}

#[test]
fn a_leaf_not_signed_by_the_chain_is_refused() {
    let signer = NitroTestSigner::new().unwrap();
    let stranger = NitroTestSigner::new().unwrap();
    // The stranger's own leaf, signing for itself, presented under the signer's cabundle.
    let mut payload = signer.payload(&pcrs(), None, None, None, now() as u64 * 1000);
    payload.certificate = stranger.payload(&pcrs(), None, None, None, 1).certificate;
    let bytes = stranger.sign(&payload.to_cbor(), ES384);
    let err = verify_document(&bytes, &test_root(&signer), now()).unwrap_err();
    assert!(
        matches!(err, NitroError::LeafNotSignedByChain { .. }),
        "{err:?}"
    );
}

#[test]
fn syntax_rules_are_enforced_with_named_errors() {
    let signer = NitroTestSigner::new().unwrap();
    let roots = test_root(&signer);
    let base = signer.payload(&pcrs(), None, None, None, now() as u64 * 1000);
    let check = |edit: &dyn Fn(&mut test_support::NitroPayload), expected: NitroError| {
        let mut payload = base.clone();
        edit(&mut payload);
        let bytes = signer.sign(&payload.to_cbor(), ES384);
        assert_eq!(
            verify_document(&bytes, &roots, now()).unwrap_err(),
            expected
        );
    };
    check(
        &|p| p.digest = "SHA1".into(),
        NitroError::UnsupportedDigest("SHA1".into()),
    );
    check(&|p| p.module_id.clear(), NitroError::EmptyModuleId);
    check(&|p| p.timestamp_ms = 0, NitroError::ZeroTimestamp);
    check(&|p| p.pcrs.clear(), NitroError::PcrCount(0));
    check(
        &|p| p.pcrs = (0..33).map(|i| (i, vec![0; 48])).collect(),
        NitroError::PcrCount(33),
    );
    check(
        &|p| {
            p.pcrs.insert(32, vec![0; 48]);
        },
        NitroError::PcrIndex("32".into()),
    );
    check(
        &|p| {
            p.pcrs.insert(5, vec![0; 32]);
        },
        NitroError::PcrLength {
            index: 5,
            len: 32,
            digest: NitroDigest::Sha384,
        },
    );
    check(&|p| p.cabundle.clear(), NitroError::CabundleSize(0));
    check(
        &|p| p.cabundle = vec![p.cabundle[0].clone(); 5],
        NitroError::CabundleSize(5),
    );
    check(
        &|p| p.nonce = Some(vec![1; 1025]),
        NitroError::FieldLength {
            field: "nonce".into(),
            len: 1025,
            min: 0,
            max: 1024,
        },
    );
    check(
        &|p| p.public_key = Some(vec![]),
        NitroError::FieldLength {
            field: "public_key".into(),
            len: 0,
            min: 1,
            max: 1024,
        },
    );
    check(
        &|p| p.pcrs_field = "pcr",
        NitroError::UnknownField("pcr".into()),
    );
    // Four hours on, the document is dated after its three-hour leaf expired.
    check(
        &|p| p.timestamp_ms += 4 * 3600 * 1000,
        timestamp_error(&base),
    );
}

fn timestamp_error(base: &test_support::NitroPayload) -> NitroError {
    let leaf = X509::from_der(&base.certificate).unwrap();
    NitroError::TimestampOutsideLeaf {
        timestamp_ms: base.timestamp_ms + 4 * 3600 * 1000,
        not_before: leaf.not_before().to_string(),
        not_after: leaf.not_after().to_string(),
    }
}

#[test]
fn enclave_documents_use_the_pcrs_key_and_one_map_only() {
    let signer = NitroTestSigner::new().unwrap();
    let mut payload = signer.payload(&pcrs(), None, None, None, now() as u64 * 1000);
    payload.pcrs_field = "pcrs";
    let bytes = signer.sign(&payload.to_cbor(), ES384);
    let doc = verify_document(&bytes, &test_root(&signer), now()).unwrap();
    assert_eq!(doc.pcrs, pcrs());
    let bytes = signer.sign(&with_second_pcr_map(&payload.to_cbor()), ES384);
    let err = verify_document(&bytes, &test_root(&signer), now()).unwrap_err();
    assert_eq!(err, NitroError::AmbiguousPcrs);
}

/// `cbor` (an indefinite-length map) with a `nitrotpm_pcrs: {0: 48 zero bytes}` entry added
/// before its closing break.
fn with_second_pcr_map(cbor: &[u8]) -> Vec<u8> {
    let mut out = cbor[..cbor.len() - 1].to_vec();
    out.push(0x6d);
    out.extend_from_slice(b"nitrotpm_pcrs");
    out.extend_from_slice(&[0xa1, 0x00, 0x58, 0x30]);
    out.extend_from_slice(&[0u8; 48]);
    out.push(0xff);
    out
}

#[test]
fn oversized_truncated_and_garbage_inputs_are_refused_by_name() {
    let roots = aws_nitro_roots();
    assert_eq!(
        verify_document(&[], &roots, REAL_AT),
        Err(NitroError::Empty)
    );
    let big = vec![0x84; 16 * 1024 + 1];
    assert!(matches!(
        verify_document(&big, &roots, REAL_AT),
        Err(NitroError::TooLarge { .. })
    ));
    assert_eq!(
        verify_document(b"hello", &roots, REAL_AT),
        Err(NitroError::UnknownFraming(b'h'))
    );
    let real = real_document();
    for cut in [1, 3, 4, 100, 4530, real.len() - 1] {
        assert!(
            verify_document(&real[..cut], &roots, REAL_AT).is_err(),
            "{cut}"
        );
    }
    let bare = &real[4..4 + 4527];
    for cut in [1, 2, 10, 4000, 4526] {
        assert!(
            matches!(
                verify_document(&bare[..cut], &roots, REAL_AT),
                Err(NitroError::Cose(_))
            ),
            "{cut}"
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("marker present")
}

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let real = real_document();
        let bare = real[4..4 + 4527].to_vec();
        let signer = NitroTestSigner::new().unwrap();
        vec![real, bare, test_document(&signer)]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Damaged documents are refused or (when the damage hit nothing signed) verify, and
    /// never panic; random bytes never verify.
    #[test]
    fn damaged_documents_never_panic(m in mutation()) {
        let bytes = m.apply(seeds());
        let _ = verify_document(&bytes, &aws_nitro_roots(), REAL_AT);
    }

    #[test]
    fn random_bytes_never_verify(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(verify_document(&bytes, &aws_nitro_roots(), REAL_AT).is_err());
    }

    /// A document that verifies after damage carries exactly the original's fields: the damage
    /// can only have hit bytes outside the signature's coverage (dstack's envelope trailer).
    #[test]
    fn damage_never_changes_what_verifies(m in mutation()) {
        let original = verify_document(&seeds()[0], &aws_nitro_roots(), REAL_AT).unwrap();
        let mut bytes = seeds()[0].clone();
        m.apply_to(&mut bytes);
        if let Ok(doc) = verify_document(&bytes, &aws_nitro_roots(), REAL_AT) {
            prop_assert_eq!(doc, original);
        }
    }
}
