//! `cvm-cli inspect` on real files: GCE firmware event logs, a TDX CC event log, AMD VCEK/VLEK,
//! Intel PCK (from a real TD quote) and Google CA certificates, public keys.

mod common;

use common::{cli, vector};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha384};
use test_support::tcg_log::{Bank, TcgLogBuilder, EV_EFI_BOOT_SERVICES_APPLICATION, EV_IPL};

/// `inspect --json FILE` as JSON, asserting success.
fn inspect(path: &str) -> Value {
    let output = cli(&["inspect", "--json", path]);
    assert!(
        output.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Replays a bank from the events `inspect` lists: the registers must be what it says they are.
fn replay_events(events: &[Value], bank: &str, size: usize) -> Vec<(String, String)> {
    let mut registers: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for event in events.iter().filter(|e| e["extended"] == true) {
        let Some(digest) = event["digests"][bank].as_str() else {
            continue;
        };
        let register = event["register"].as_str().unwrap().to_owned();
        let value = registers.entry(register).or_insert_with(|| vec![0; size]);
        let mut input = value.clone();
        input.extend(hex::decode(digest).unwrap());
        *value = match bank {
            "sha256" => Sha256::digest(&input).to_vec(),
            _ => Sha384::digest(&input).to_vec(),
        };
    }
    registers
        .into_iter()
        .map(|(register, value)| (register, hex::encode(value)))
        .collect()
}

#[test]
fn real_gce_firmware_logs_show_events_and_the_pcrs_they_replay_to() {
    for (file, events) in [
        ("ubuntu-2404-amd-sevsnp.bin", 116),
        ("cos-101-amd-sev.bin", 0),
        ("rhel8-uefi.bin", 0),
    ] {
        let value = inspect(&vector(&format!("eventlogs/{file}")));
        assert!(value["kind"]
            .as_str()
            .unwrap()
            .starts_with("TCG firmware event log"));
        let content = &value["content"];
        let listed = content["events"].as_array().unwrap();
        if events > 0 {
            assert_eq!(listed.len(), events, "{file}");
        }
        // The firmware's separators are the SHA-256 of four zero bytes, as the spec says.
        let separator = hex::encode(Sha256::digest([0u8; 4]));
        let separators: Vec<&Value> = listed
            .iter()
            .filter(|e| e["type"] == "EV_SEPARATOR")
            .collect();
        assert!(!separators.is_empty(), "{file}");
        assert!(
            separators
                .iter()
                .all(|e| e["digests"]["sha256"] == separator),
            "{file}"
        );
        // What it says each PCR replays to follows from the events it lists.
        let replayed: Vec<(String, String)> = content["replayed"]["sha256"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let mut expected = replay_events(listed, "sha256", 32);
        if let Some(locality) = content["startup_locality"].as_u64() {
            assert_eq!(locality, 0, "{file}: a locality-3 start changes PCR 0");
        }
        expected.sort();
        let mut replayed = replayed;
        replayed.sort();
        assert_eq!(replayed, expected, "{file}");
        assert!(replayed.iter().any(|(r, _)| r == "PCR 4"), "{file}");
    }
    let text = common::stdout(&cli(&[
        "inspect",
        &vector("eventlogs/ubuntu-2404-amd-sevsnp.bin"),
    ]));
    assert!(text.contains("\"GCE Virtual Firmware v2\""), "{text}");
    assert!(text.contains("variable SecureBoot"), "{text}");
    assert!(text.contains("replayed (sha256):"), "{text}");
}

#[test]
fn an_old_sha1_only_log_is_read_too() {
    let value = inspect(&vector("eventlogs/debian-10.bin"));
    assert_eq!(
        value["kind"],
        "TCG firmware event log (SHA-1 only, TCG 1.2 format)"
    );
    let events = value["content"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 25);
    assert_eq!(events[0]["data"], "\"GCE Virtual Firmware v1\"");
    assert!(value["content"]["replayed"]["sha1"]["PCR 0"].is_string());
}

#[test]
fn a_cc_event_log_replays_to_rtmrs() {
    let mut log = TcgLogBuilder::new(&[Bank::Sha384]);
    log.measure(2, EV_EFI_BOOT_SERVICES_APPLICATION, b"the UKI")
        .measure(3, EV_IPL, b"kernel");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ccel.bin");
    std::fs::write(&path, log.bytes()).unwrap();
    let value = inspect(path.to_str().unwrap());
    assert_eq!(value["kind"], "TDX CC event log (RTMRs)");
    let rtmr = |data: &[u8]| {
        let mut input = vec![0u8; 48];
        input.extend(Sha384::digest(data));
        hex::encode(Sha384::digest(&input))
    };
    let replayed = &value["content"]["replayed"]["sha384"];
    assert_eq!(replayed["RTMR1"], rtmr(b"the UKI"));
    assert_eq!(replayed["RTMR2"], rtmr(b"kernel"));
    assert_eq!(value["content"]["events"][0]["register"], "RTMR1");
}

#[test]
fn amd_certificates_show_their_extensions() {
    let vcek = inspect(&vector("virtee-sev/vcek_milan.der"));
    assert_eq!(vcek["kind"], "X.509 certificate: AMD VCEK (Milan)");
    let amd = &vcek["content"]["amd"];
    assert_eq!(amd["product_name"], "Milan-B0");
    for field in ["blSPL", "teeSPL", "snpSPL", "ucodeSPL"] {
        assert!(amd[field].is_u64(), "{field}: {amd}");
    }
    assert_eq!(amd["hwID"].as_str().unwrap().len(), 128);
    assert_eq!(vcek["content"]["key"]["algorithm"], "EC secp384r1");

    let vlek = inspect(&vector("trustee/snp-test-vlek.der"));
    assert_eq!(vlek["kind"], "X.509 certificate: AMD VLEK (Milan)");
    assert!(vlek["content"]["amd"]["csp_id"].is_string());
    assert!(vlek["content"]["amd"]["hwID"].is_null());
    assert_eq!(vlek["content"]["valid_now"], false, "expired 2025-12-10");

    let chain = inspect(&vector("trustee/milan_ask_ark_asvk.pem"));
    assert_eq!(chain["kind"], "X.509 certificates (3)");
    let roles: Vec<&str> = chain["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "AMD ASK (Milan)",
            "AMD root key ARK (Milan)",
            "AMD ASVK (Milan)"
        ]
    );
}

#[test]
fn the_pck_certificate_of_a_real_td_quote_shows_its_sgx_extensions() {
    let quote = std::fs::read(vector("tdx/tdx_quote")).unwrap();
    let quote = cvm_attestation::tdx::TdQuote::parse(&quote).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pck.pem");
    std::fs::write(&path, &quote.pck_chain_pem).unwrap();
    let value = inspect(path.to_str().unwrap());
    let leaf = &value["content"][0];
    assert_eq!(leaf["role"], "Intel SGX PCK certificate");
    let leaf_der = openssl::x509::X509::stack_from_pem(&quote.pck_chain_pem).unwrap()[0]
        .to_der()
        .unwrap();
    let expected = cvm_attestation::tdx::sgx_extensions(&leaf_der).unwrap();
    assert_eq!(
        leaf["intel_sgx"]["fmspc"],
        hex::encode_upper(expected.fmspc)
    );
    assert_eq!(
        leaf["intel_sgx"]["pce_id"],
        hex::encode_upper(expected.pce_id)
    );
    assert_eq!(leaf["intel_sgx"]["pcesvn"], expected.pcesvn);
    let last = value["content"].as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "Intel SGX root CA");
}

#[test]
fn google_ca_certificates_and_keys_are_named() {
    let intermediate = inspect(&vector("gcp/gcp_ek_ak_ca_intermediate_v3.crt"));
    assert_eq!(
        intermediate["kind"],
        "X.509 certificate: Google EK/AK CA intermediate"
    );
    let key = inspect(&vector("azure-cvm-tooling/akpub.pem"));
    assert_eq!(key["kind"], "public key (SubjectPublicKeyInfo)");
    assert_eq!(key["content"]["algorithm"], "RSA 2048 bits");
}

/// TPMT_PUBLIC of a fresh ECC P-256 restricted signing key, as a TPM would return it.
fn tpmt_public() -> Vec<u8> {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey};
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key = EcKey::generate(&group).unwrap();
    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    let mut ctx = BigNumContext::new().unwrap();
    key.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    let mut out = Vec::new();
    out.extend(0x0023u16.to_be_bytes()); // TPM_ALG_ECC
    out.extend(0x000bu16.to_be_bytes()); // nameAlg SHA-256
    out.extend(0x0005_0072u32.to_be_bytes()); // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign
    out.extend(0u16.to_be_bytes()); // authPolicy
    out.extend(0x0010u16.to_be_bytes()); // symmetric: null
    out.extend(0x0018u16.to_be_bytes()); // scheme: ECDSA
    out.extend(0x000bu16.to_be_bytes()); // with SHA-256
    out.extend(0x0003u16.to_be_bytes()); // NIST P-256
    out.extend(0x0010u16.to_be_bytes()); // kdf: null
    for coordinate in [x, y] {
        let bytes = coordinate.to_vec_padded(32).unwrap();
        out.extend((bytes.len() as u16).to_be_bytes());
        out.extend(bytes);
    }
    out
}

#[test]
fn a_tpm_public_key_shows_its_attributes_raw_or_base64() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ak.tpmt");
    let bytes = tpmt_public();
    std::fs::write(&raw, &bytes).unwrap();
    let encoded = dir.path().join("ak.pub");
    std::fs::write(
        &encoded,
        base64::engine::general_purpose::STANDARD.encode(&bytes),
    )
    .unwrap();
    for (path, kind) in [
        (&raw, "TPM public key (TPMT_PUBLIC)"),
        (&encoded, "TPM public key (TPMT_PUBLIC, base64)"),
    ] {
        let value = inspect(path.to_str().unwrap());
        assert_eq!(value["kind"], kind);
        assert_eq!(value["content"]["restricted_signing_key"], true);
        assert_eq!(value["content"]["algorithm"], "EC prime256v1");
        let set = &value["content"]["object_attributes"]["set"];
        assert!(
            set.as_array().unwrap().contains(&"restricted".into()),
            "{set}"
        );
    }
}
