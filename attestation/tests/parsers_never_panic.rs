//! Property tests: every parser of untrusted bytes returns (an error or a value) on any input and
//! never panics, on random bytes as well as on single- and multi-byte mutations and truncations of
//! the real vectors in ../shared/vectors; `verify` never panics on mutated evidence; and a few real
//! properties (strict prefixes of a quote never parse, a flipped signed byte never verifies, ...).

#[path = "../benches/support/mod.rs"]
mod support;

mod mutation;

use cvm_attestation::azure::{ak_from_var_data, HclReport};
use cvm_attestation::encoding::{decode_base64, encode_base64};
use cvm_attestation::snp::certs::{parse_certificate, parse_pem_chain};
use cvm_attestation::snp::{amd_extensions, SnpReport};
use cvm_attestation::tpm::{AkPublic, Quote, QuoteSignature};
use cvm_attestation::workload::{archived_images, Compose, WorkloadEvent, WorkloadLog};
use cvm_attestation::{verify, Evidence, GoldenMeasurement};
use mutation::{cases, mutation};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use support::{fixture, Fixture, Kind};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Real inputs, read once.
struct Seeds {
    snp_reports: Vec<Vec<u8>>,
    hcl_reports: Vec<Vec<u8>>,
    var_data: Vec<Vec<u8>>,
    quotes: Vec<Vec<u8>>,
    ak_publics: Vec<Vec<u8>>,
    tpmt_signatures: Vec<Vec<u8>>,
    certificates: Vec<Vec<u8>>,
    evidence_json: Vec<Vec<u8>>,
    golden_json: Vec<Vec<u8>>,
    workload_logs: Vec<Vec<u8>>,
    compose_files: Vec<Vec<u8>>,
    archives: Vec<Vec<u8>>,
    /// report_milan and the key of the VCEK that signed it.
    milan: (Vec<u8>, openssl::pkey::PKey<openssl::pkey::Public>),
    fixtures: Vec<Fixture>,
}

/// The TPMS_ATTEST inside azure-cvm-tooling's bincode quote file (u64 len | sig, u64 len | msg).
fn azure_quote_message() -> Vec<u8> {
    let bytes = vector("azure-cvm-tooling/quote.bin");
    let sig_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let at = 8 + sig_len;
    let msg_len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    bytes[at + 8..at + 8 + msg_len].to_vec()
}

fn tar_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

fn image_archives() -> Vec<Vec<u8>> {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = hex::encode(openssl::sha::sha256(config));
    let docker = tar_archive(&[
        (
            "manifest.json",
            format!(
                r#"[{{"Config":"{config_digest}.json","RepoTags":["localhost/app:1"],"Layers":[]}}]"#
            )
            .as_bytes(),
        ),
        (&format!("{config_digest}.json"), config),
    ]);
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{}}},"layers":[]}}"#,
        config.len()
    );
    let manifest_digest = hex::encode(openssl::sha::sha256(manifest.as_bytes()));
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{manifest_digest}","annotations":{{"io.containerd.image.name":"localhost/app:1"}}}}]}}"#
    );
    let oci = tar_archive(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", index.as_bytes()),
        (
            &format!("blobs/sha256/{manifest_digest}"),
            manifest.as_bytes(),
        ),
        (&format!("blobs/sha256/{config_digest}"), config),
    ]);
    vec![docker, oci]
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let report_milan = hex::decode(
            String::from_utf8(vector("virtee-sev/report_milan.hex"))
                .unwrap()
                .trim(),
        )
        .unwrap();
        let milan_key = parse_certificate(&vector("virtee-sev/vcek_milan.der"))
            .unwrap()
            .public_key()
            .unwrap();
        let hcl_reports: Vec<Vec<u8>> = [
            "azure-cvm-tooling/hcl-report-snp.bin",
            "azure-cvm-tooling/hcl-report-tdx.bin",
            "trustee/az-snp-hcl-report.bin",
            "derived/v2-hcl-report.bin",
        ]
        .into_iter()
        .map(vector)
        .collect();
        let mut snp_reports = vec![
            report_milan.clone(),
            vector("trustee/snp-test-report.bin"),
            vector("trustee/snp-test-vlek-report.bin"),
        ];
        let mut var_data = vec![vector("azure-cvm-tooling/var-data.bin")];
        for hcl in &hcl_reports {
            let parsed = HclReport::parse(hcl).unwrap();
            var_data.push(parsed.var_data.to_vec());
            snp_reports.push(parsed.hardware_report.to_vec());
        }
        let trustee_quote: serde_json::Value =
            serde_json::from_slice(&vector("trustee/az-snp-tpm-quote-v1.json")).unwrap();
        let fixtures = vec![
            fixture(Kind::GcpSnp),
            fixture(Kind::AzureSnp),
            fixture(Kind::Qemu),
        ];
        let mut quotes = vec![
            azure_quote_message(),
            hex::decode(trustee_quote["message"].as_str().unwrap()).unwrap(),
            vector("derived/v2-tpm-quote.msg"),
            vector("trustee/az-snp-tpm-quote.msg"),
        ];
        let mut ak_publics = vec![vector("azure-cvm-tooling/akpub.pem")];
        let mut tpmt_signatures = Vec::new();
        let mut evidence_json = vec![vector("trustee/az-snp-evidence-v2.json")];
        let mut golden_json = Vec::new();
        let mut workload_logs = Vec::new();
        for f in &fixtures {
            quotes.push(f.evidence.tpm.quote.0.clone());
            ak_publics.push(f.evidence.tpm.ak_pub.0.clone());
            // Also as TPM2B_PUBLIC (size-prefixed) and as DER SubjectPublicKeyInfo.
            let tpmt = &f.evidence.tpm.ak_pub.0;
            let mut tpm2b = (tpmt.len() as u16).to_be_bytes().to_vec();
            tpm2b.extend_from_slice(tpmt);
            ak_publics.push(tpm2b);
            ak_publics.push(f.ak_key.public_key_to_der().unwrap());
            tpmt_signatures.push(f.evidence.tpm.signature.clone().unwrap().0);
            evidence_json.push(f.json.clone());
            golden_json.push(f.golden_json.clone());
            workload_logs
                .push(serde_json::to_vec(f.evidence.event_logs.workload.as_ref().unwrap()).unwrap());
            if let Some(snp) = &f.evidence.sev_snp {
                snp_reports.push(snp.attestation_report.0.clone());
            }
        }
        // The predecessor's evidence shape (also wrapped in a JSON string) and golden shape.
        let legacy = serde_json::json!({
            "nonce": encode_base64(support::NONCE),
            "tpm": {
                "quote": encode_base64(&quotes[0]),
                "raw_sig": encode_base64(&[1u8; 256]),
                "pcrs": {"hash": "sha256", "pcrs": {"0": encode_base64(&[0u8; 32])}},
                "ak_pub": encode_base64(&ak_publics[0]),
            },
            "sev_snp": {
                "attestation_report": encode_base64(&report_milan),
                "vek_cert": encode_base64(&vector("virtee-sev/vcek_milan.der")),
            }
        })
        .to_string();
        evidence_json.push(legacy.clone().into_bytes());
        evidence_json.push(serde_json::to_vec(&legacy).unwrap());
        let legacy_golden = format!(
            r#"{{"golden_measurement": {{"pcrs": {{"hash": "sha256", "pcrs": {{"4": "{}", "9": {{"value": "{}"}}}}}}, "measurement": "{}"}}}}"#,
            encode_base64(&[0u8; 32]),
            "11".repeat(32),
            "22".repeat(48)
        );
        golden_json.push(serde_json::to_vec(&legacy_golden).unwrap());
        golden_json.push(legacy_golden.into_bytes());
        let compose_files = vec![
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../workload/docker-compose.yml"
            ))
            .unwrap(),
            br#"
x-defaults: &defaults
  image: docker.io/library/busybox:1.36
  env_file: [common.env, {path: ./more/extra.env, required: false}]
services:
  web:
    <<: *defaults
    ports: ["8080:80"]
  worker:
    image: localhost/worker:2
    env_file: worker.env
    profiles: [batch]
"#
            .to_vec(),
        ];
        let certificates = vec![
            vector("virtee-sev/vcek_milan.der"),
            vector("trustee/snp-test-vlek.der"),
            vector("derived/v2-vcek.der"),
        ];
        Seeds {
            snp_reports,
            hcl_reports,
            var_data,
            quotes,
            ak_publics,
            tpmt_signatures,
            certificates,
            evidence_json,
            golden_json,
            workload_logs,
            compose_files,
            archives: image_archives(),
            milan: (report_milan, milan_key),
            fixtures,
        }
    })
}

fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

// Each parser's whole surface, errors allowed.

fn exercise_snp_report(bytes: &[u8]) {
    if let Ok(report) = SnpReport::parse(bytes) {
        let _ = report.signature_valid(&seeds().milan.1);
        let _ = cvm_attestation::snp::policy::signing_key(&report);
        let _ = cvm_attestation::snp::policy::chip_id_masked(&report);
        for cert in &seeds().certificates {
            if let Ok(ext) = amd_extensions(cert) {
                let _ = cvm_attestation::snp::policy::leaf_matches_report(&ext, &report);
            }
        }
    }
}

fn exercise_hcl(bytes: &[u8]) {
    if let Ok(hcl) = HclReport::parse(bytes) {
        let _ = hcl.report_data();
        let _ = ak_from_var_data(hcl.var_data);
        exercise_snp_report(hcl.hardware_report);
    }
}

fn exercise_compose(bytes: &[u8]) {
    if let Ok(compose) = Compose::parse(bytes) {
        if let Ok(services) = compose.services() {
            let pinned: BTreeMap<String, String> = services
                .iter()
                .map(|s| (s.image.clone(), format!("{}@sha256:00", s.image)))
                .collect();
            let _ = compose.with_images(&pinned);
        }
        let _ = compose.images();
    }
}

fn exercise_log(bytes: &[u8]) {
    if let Ok(log) = serde_json::from_slice::<WorkloadLog>(bytes) {
        let _ = log.generations();
        let _ = log.replay();
    }
}

fn exercise_evidence(bytes: &[u8]) {
    if let Ok(evidence) = Evidence::from_json(bytes) {
        let _ = evidence.platform();
        for f in &seeds().fixtures {
            let _ = verify(&evidence, &f.golden, &f.options);
        }
    }
}

fn exercise_golden(bytes: &[u8]) {
    if let Ok(golden) = GoldenMeasurement::from_json(bytes) {
        let f = &seeds().fixtures[0];
        let _ = verify(&f.evidence, &golden, &f.options);
        if let Some(workload) = &golden.workload {
            let _ = workload.pcr23();
        }
    }
}

fn exercise_ak(bytes: &[u8]) {
    if let Ok(ak) = AkPublic::from_bytes(bytes) {
        let _ = ak.is_restricted_signing_key();
        let _ = ak.spki_der();
        let _ = QuoteSignature::from_raw(&[0x55; 64], &ak.key).map(|s| s.verify(&ak.key, b"m"));
    }
}

fn exercise_signature(bytes: &[u8]) {
    if let Ok(signature) = QuoteSignature::from_tpmt(bytes) {
        let _ = signature.hash();
        for f in &seeds().fixtures {
            let _ = signature.verify(&f.ak_key, &f.evidence.tpm.quote.0);
        }
    }
    for f in &seeds().fixtures {
        let _ = QuoteSignature::from_raw(bytes, &f.ak_key).map(|s| s.verify(&f.ak_key, bytes));
    }
}

fn exercise_certificate(bytes: &[u8]) {
    let _ = amd_extensions(bytes);
    let _ = parse_certificate(bytes);
    let _ = parse_pem_chain(bytes);
}

/// The fields of evidence a mutation can target, as (section, bytes).
fn evidence_fields(evidence: &mut Evidence) -> Vec<&mut Vec<u8>> {
    let mut fields = vec![
        &mut evidence.nonce.0,
        &mut evidence.tpm.quote.0,
        &mut evidence.tpm.ak_pub.0,
    ];
    if let Some(sig) = &mut evidence.tpm.signature {
        fields.push(&mut sig.0);
    }
    if let Some(var_data) = &mut evidence.tpm.var_data {
        fields.push(&mut var_data.0);
    }
    fields.extend(evidence.tpm.pcrs.pcrs.values_mut().map(|v| &mut v.0));
    if let Some(snp) = &mut evidence.sev_snp {
        fields.push(&mut snp.attestation_report.0);
        fields.push(&mut snp.vek_cert.0);
        fields.extend(snp.cert_chain.iter_mut().map(|c| &mut c.0));
        if let Some(hcl) = &mut snp.hcl_report {
            fields.push(&mut hcl.0);
        }
    }
    fields
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn snp_report_parser(random in random_bytes(1300), m in mutation(), version in 0u8..8) {
        let seeds = seeds();
        exercise_snp_report(&random);
        exercise_snp_report(&m.apply(&seeds.snp_reports));
        // Random bytes of the right size with a supported version and algorithm reach the decoder.
        let mut sized = random.clone();
        sized.resize(1184, 0xa5);
        sized[..4].copy_from_slice(&u32::from(version).to_le_bytes());
        sized[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        exercise_snp_report(&sized);
    }

    #[test]
    fn hcl_report_parser(random in random_bytes(3000), m in mutation(), m2 in mutation()) {
        let seeds = seeds();
        exercise_hcl(&random);
        let mut mutated = m.apply(&seeds.hcl_reports);
        exercise_hcl(&mutated);
        // Aim at the request-data area, whose lengths and types the parser trusts least.
        if mutated.len() > 0x4d4 {
            let mut header = mutated[0x4c0..0x4d4].to_vec();
            m2.apply_to(&mut header);
            header.resize(20, 0xff);
            mutated[0x4c0..0x4d4].copy_from_slice(&header);
            exercise_hcl(&mutated);
        }
    }

    #[test]
    fn var_data_parser(random in random_bytes(2000), m in mutation(), n in random_bytes(600), e in random_bytes(8)) {
        exercise_hcl(&random);
        let _ = ak_from_var_data(&random);
        let _ = ak_from_var_data(&m.apply(&seeds().var_data));
        // Well-formed JSON with arbitrary key material.
        let json = serde_json::json!({"keys": [{"kid": "HCLAkPub", "kty": "RSA",
            "n": encode_base64(&n), "e": encode_base64(&e)}]});
        if let Ok(key) = ak_from_var_data(json.to_string().as_bytes()) {
            let sig = QuoteSignature::from_raw(&n, &key);
            let _ = sig.map(|s| s.verify(&key, b"message"));
        }
    }

    #[test]
    fn quote_parser(random in random_bytes(1100), m in mutation()) {
        let _ = Quote::parse(&random);
        let _ = Quote::parse(&m.apply(&seeds().quotes));
    }

    #[test]
    fn strict_prefixes_and_extensions_of_a_quote_never_parse(seed in any::<Index>(), cut in any::<Index>(), extra in random_bytes(8)) {
        let quote = seed.get(&seeds().quotes);
        if Quote::parse(quote).is_ok() {
            prop_assert!(Quote::parse(&quote[..cut.index(quote.len())]).is_err());
            if !extra.is_empty() {
                let longer = [quote.as_slice(), &extra].concat();
                prop_assert!(Quote::parse(&longer).is_err());
            }
        }
    }

    #[test]
    fn ak_public_parser(random in random_bytes(700), m in mutation()) {
        exercise_ak(&random);
        exercise_ak(&m.apply(&seeds().ak_publics));
        let mut pem = b"-----BEGIN PUBLIC KEY-----\n".to_vec();
        pem.extend_from_slice(&random);
        exercise_ak(&pem);
    }

    #[test]
    fn signature_parser(random in random_bytes(700), m in mutation()) {
        exercise_signature(&random);
        exercise_signature(&m.apply(&seeds().tpmt_signatures));
    }

    #[test]
    fn certificate_parsers(random in random_bytes(1500), m in mutation()) {
        exercise_certificate(&random);
        exercise_certificate(&m.apply(&seeds().certificates));
    }

    #[test]
    fn evidence_parser(random in random_bytes(2000), m in mutation()) {
        exercise_evidence(&random);
        exercise_evidence(&m.apply(&seeds().evidence_json));
    }

    #[test]
    fn verify_never_panics_on_mutated_evidence(which in 0usize..3, field in any::<Index>(), m in mutation()) {
        let f = &seeds().fixtures[which];
        let mut evidence = f.evidence.clone();
        let mut fields = evidence_fields(&mut evidence);
        let target = field.index(fields.len());
        m.apply_to(fields[target]);
        // Through JSON, as a verifier receives it.
        let json = serde_json::to_vec(&evidence).unwrap();
        if let Ok(parsed) = Evidence::from_json(&json) {
            prop_assert_eq!(&parsed, &evidence);
            let _ = verify(&parsed, &f.golden, &f.options);
        }
    }

    #[test]
    fn a_flipped_signed_byte_never_verifies(which in 0usize..3, part in 0usize..4, at in any::<Index>(), bit in 0u8..8) {
        let f = &seeds().fixtures[which];
        prop_assert!(verify(&f.evidence, &f.golden, &f.options).verified);
        let mut evidence = f.evidence.clone();
        let target: &mut Vec<u8> = match (part, evidence.sev_snp.as_mut()) {
            (0, _) => &mut evidence.tpm.quote.0,
            (1, _) => evidence.tpm.signature.as_mut().map(|s| &mut s.0).unwrap(),
            (2, Some(snp)) if which != 1 => &mut snp.attestation_report.0,
            (2, Some(snp)) => snp.hcl_report.as_mut().map(|h| &mut h.0).unwrap(),
            _ => &mut evidence.tpm.ak_pub.0,
        };
        let offset = match (part, which) {
            // The SNP report's signed bytes.
            (2, 0) => at.index(0x2a0),
            // In an HCL report: the signed bytes of the SNP report at 0x20, or var_data at 0x4d4
            // (the paravisor's header and request-data sizes are not signed by anything).
            (2, 1) => {
                let i = at.index(0x2a0 + target.len() - 0x4d4);
                if i < 0x2a0 { 0x20 + i } else { 0x4d4 + i - 0x2a0 }
            }
            _ => at.index(target.len()),
        };
        target[offset] ^= 1 << bit;
        let report = verify(&evidence, &f.golden, &f.options);
        // Azure takes the AK from var_data, so its ak_pub field is informational only.
        if !(which == 1 && part == 3) {
            prop_assert!(!report.verified, "{}", report);
        }
    }

    #[test]
    fn a_real_report_with_a_signed_byte_flipped_never_verifies(at in 0usize..0x2a0, bit in 0u8..8) {
        let (report, key) = &seeds().milan;
        prop_assert!(SnpReport::parse(report).unwrap().signature_valid(key).unwrap());
        let mut bytes = report.clone();
        bytes[at] ^= 1 << bit;
        if let Ok(parsed) = SnpReport::parse(&bytes) {
            prop_assert!(!parsed.signature_valid(key).unwrap());
        }
    }

    #[test]
    fn golden_parser(random in random_bytes(1500), m in mutation()) {
        exercise_golden(&random);
        exercise_golden(&m.apply(&seeds().golden_json));
    }

    #[test]
    fn workload_log_parser(random in random_bytes(1500), m in mutation()) {
        exercise_log(&random);
        exercise_log(&m.apply(&seeds().workload_logs));
    }

    #[test]
    fn generations_partition_the_log_and_end_in_separators(kinds in prop::collection::vec(0usize..6, 0..40)) {
        use cvm_attestation::workload::EventKind::*;
        let all = [ComposeFile, ConfigFile, EnvFile, Image, ApiToken, Separator];
        let events: Vec<WorkloadEvent> = kinds
            .iter()
            .enumerate()
            .map(|(i, &k)| WorkloadEvent::over(all[k], format!("e{i}"), &[i as u8]))
            .collect();
        let log = WorkloadLog::from_events(events.clone());
        match log.generations() {
            Ok(generations) => {
                prop_assert!(events.last().is_some_and(|e| e.kind == Separator));
                prop_assert_eq!(generations.concat(), events);
                for generation in &generations {
                    prop_assert_eq!(generation.last().unwrap().kind, Separator);
                    prop_assert_eq!(
                        generation.iter().filter(|e| e.kind == Separator).count(),
                        1
                    );
                }
            }
            Err(_) => prop_assert!(events.last().is_none_or(|e| e.kind != Separator)),
        }
    }

    #[test]
    fn compose_parser(random in random_bytes(1500), text in "[ -~\n]{0,400}", m in mutation()) {
        exercise_compose(&random);
        exercise_compose(text.as_bytes());
        exercise_compose(&m.apply(&seeds().compose_files));
    }

    #[test]
    fn archive_parser(random in random_bytes(3000), m in mutation()) {
        let _ = archived_images(random.as_slice());
        let _ = archived_images(m.apply(&seeds().archives).as_slice());
    }

    #[test]
    fn base64_fields_round_trip(bytes in random_bytes(300)) {
        prop_assert_eq!(decode_base64(&encode_base64(&bytes)), Some(bytes));
    }
}

#[test]
fn the_seed_archives_are_read() {
    for archive in &seeds().archives {
        let images = archived_images(archive.as_slice()).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].tags, ["localhost/app:1"]);
    }
}

#[test]
fn deeply_nested_yaml_is_an_error_not_a_crash() {
    // Block nesting used to overflow the stack in yaml-rust2's recursive loader (about 1000
    // levels, a 500 KB file, well under the 1 MiB limit).
    for depth in [65, 1_000, 1_400] {
        let block: String = (0..depth)
            .map(|i| format!("{}- \n", " ".repeat(i)))
            .collect();
        let err = Compose::parse(block.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{depth}: {err}");
        let mapping: String = (0..depth)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(Compose::parse(mapping.as_bytes()).is_err(), "{depth}");
    }
    for depth in [1_000, 100_000] {
        for (open, close) in [("[", "]"), ("{a: ", "}")] {
            let text = format!("services: {}1{}", open.repeat(depth), close.repeat(depth));
            assert!(Compose::parse(text.as_bytes()).is_err());
        }
    }
    // Ordinary nesting still reads.
    let nested = "services:\n  a:\n    image: x\n    labels:\n      l: {m: [[[1]]]}\n";
    assert_eq!(
        Compose::parse(nested.as_bytes())
            .unwrap()
            .services()
            .unwrap()
            .len(),
        1
    );
}
