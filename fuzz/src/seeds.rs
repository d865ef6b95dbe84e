//! The seed corpus: for every target, the real inputs of its kind from `shared/vectors` and the
//! repository (the example workload), plus what is derived from them mechanically (reports cut
//! out of HCL reports, a v4 quote re-framed as v5, a firmware log re-framed as a CC event log,
//! evidence and golden documents assembled from real reports). Written afresh on every run.

use crate::context::{azure_quote, context, vector};
use cvm_attestation::azure::HclReport;
use cvm_attestation::eventlog::{TcgLog, EV_NO_ACTION};
use cvm_attestation::golden::{GoldenMeasurement, GoldenWorkload};
use cvm_attestation::tpm::HashAlg;
use cvm_attestation::workload::WorkloadFolder;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Every fuzz target, by name (as in Cargo.toml and scripts/fuzz.sh).
pub const TARGETS: &[&str] = &[
    "snp_report",
    "hcl_report",
    "tpms_attest",
    "tpmt_public",
    "tpmt_signature",
    "tcg2_event_log",
    "cc_event_log",
    "td_quote",
    "tdx_collateral",
    "intel_x509",
    "evidence_json",
    "golden_json",
    "workload_archive",
    "image_archive",
    "compose_yaml",
];

/// The seeds of one target.
pub fn seeds(target: &str, repo: &Path) -> Vec<Vec<u8>> {
    match target {
        "snp_report" => snp_reports(),
        "hcl_report" => hcl_reports(),
        "tpms_attest" => quotes(),
        "tpmt_public" => publics(),
        "tpmt_signature" => signatures(),
        "tcg2_event_log" => firmware_logs(),
        "cc_event_log" => firmware_logs().iter().filter_map(|l| as_ccel(l)).collect(),
        "td_quote" => td_quotes(),
        "tdx_collateral" => vec![vector!("tdx/tdx_quote_collateral.json").to_vec()],
        "intel_x509" => intel_x509(),
        "evidence_json" => evidence(),
        "golden_json" => golden(repo),
        "workload_archive" => archives(repo),
        "image_archive" => image_archives(),
        "compose_yaml" => compose(repo),
        other => panic!("no target {other:?}"),
    }
}

/// Writes each target's seeds to `out/<target>/seed-<n>`.
pub fn write(repo: &Path, out: &Path, targets: &[String]) -> std::io::Result<()> {
    for target in targets {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        let seeds = seeds(target, repo);
        for (n, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n:02}")), seed)?;
        }
        println!("seeds: {target}: {} inputs", seeds.len());
    }
    Ok(())
}

fn hcl_reports() -> Vec<Vec<u8>> {
    vec![
        vector!("azure-cvm-tooling/hcl-report-snp.bin").to_vec(),
        vector!("azure-cvm-tooling/hcl-report-tdx.bin").to_vec(),
        vector!("trustee/az-snp-hcl-report.bin").to_vec(),
        vector!("derived/v2-hcl-report.bin").to_vec(),
    ]
}

fn snp_reports() -> Vec<Vec<u8>> {
    let mut reports = vec![
        vector!("derived/report_milan.bin").to_vec(),
        vector!("trustee/snp-test-report.bin").to_vec(),
        vector!("trustee/snp-test-vlek-report.bin").to_vec(),
    ];
    for hcl in hcl_reports() {
        let parsed = HclReport::parse(&hcl).expect("real HCL report");
        if parsed.report_type == cvm_attestation::azure::HclReportType::Snp {
            reports.push(parsed.hardware_report.to_vec());
        }
    }
    reports
}

/// Real TPMS_ATTEST quotes.
fn quotes() -> Vec<Vec<u8>> {
    // azure-cvm-tooling's quote.bin: u64 len | signature, u64 len | message, PCRs (bincode).
    let bincode = vector!("azure-cvm-tooling/quote.bin");
    let len = |at: usize| u64::from_le_bytes(bincode[at..at + 8].try_into().unwrap()) as usize;
    let at = 8 + len(0);
    vec![
        bincode[at + 8..at + 8 + len(at)].to_vec(),
        azure_quote().0,
        vector!("derived/v2-tpm-quote.msg").to_vec(),
        vector!("trustee/az-snp-tpm-quote.msg").to_vec(),
    ]
}

fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// TPMT_PUBLIC of an AK as a TPM creates it (restricted signing key, SHA-256 name), for a fresh
/// P-256 key and for the real Azure vTPM AK; also as TPM2B_PUBLIC, PEM and DER.
fn publics() -> Vec<Vec<u8>> {
    const ATTRIBUTES: u32 = 0x0005_0072; // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign
    let ec = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap();
    let mut ecc = vec![0x00, 0x23, 0x00, 0x0b];
    ecc.extend_from_slice(&ATTRIBUTES.to_be_bytes());
    tpm2b(&mut ecc, &[]);
    // symmetric NULL, scheme ECDSA with SHA-256, curve P-256, kdf NULL.
    ecc.extend_from_slice(&[0x00, 0x10, 0x00, 0x18, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x10]);
    let point = ec
        .public_key()
        .to_bytes(
            ec.group(),
            openssl::ec::PointConversionForm::UNCOMPRESSED,
            &mut openssl::bn::BigNumContext::new().unwrap(),
        )
        .unwrap();
    tpm2b(&mut ecc, &point[1..33]);
    tpm2b(&mut ecc, &point[33..65]);

    let pem = vector!("azure-cvm-tooling/akpub.pem");
    let azure = openssl::pkey::PKey::public_key_from_pem(pem).unwrap();
    let mut rsa = vec![0x00, 0x01, 0x00, 0x0b];
    rsa.extend_from_slice(&ATTRIBUTES.to_be_bytes());
    tpm2b(&mut rsa, &[]);
    // symmetric NULL, scheme RSASSA with SHA-256, 2048 bits, default exponent.
    rsa.extend_from_slice(&[0x00, 0x10, 0x00, 0x14, 0x00, 0x0b, 0x08, 0x00, 0, 0, 0, 0]);
    tpm2b(&mut rsa, &azure.rsa().unwrap().n().to_vec());

    let mut wrapped = Vec::new();
    tpm2b(&mut wrapped, &ecc);
    let der = azure.public_key_to_der().unwrap();
    vec![ecc, rsa, wrapped, pem.to_vec(), der]
}

/// TPMT_SIGNATURE: the real Azure quote signatures as RSASSA, a fresh ECDSA one; and raw ones.
fn signatures() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let raw = [
        vector!("derived/v2-tpm-quote.sig").to_vec(),
        azure_quote().1,
        vector!("trustee/az-snp-tpm-quote.sig").to_vec(),
    ];
    for sig in &raw {
        let mut tpmt = vec![0x00, 0x14, 0x00, 0x0b];
        tpm2b(&mut tpmt, sig);
        out.push(tpmt);
    }
    let key = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap();
    let sig = openssl::ecdsa::EcdsaSig::sign(&[7u8; 32], &key).unwrap();
    let mut ecdsa = vec![0x00, 0x18, 0x00, 0x0b];
    tpm2b(&mut ecdsa, &sig.r().to_vec_padded(32).unwrap());
    tpm2b(&mut ecdsa, &sig.s().to_vec_padded(32).unwrap());
    out.push(ecdsa);
    out.extend(raw);
    out
}

fn firmware_logs() -> Vec<Vec<u8>> {
    vec![
        vector!("eventlogs/ubuntu-2404-amd-sevsnp.bin").to_vec(),
        vector!("eventlogs/cos-101-amd-sev.bin").to_vec(),
        vector!("eventlogs/rhel8-uefi.bin").to_vec(),
        vector!("eventlogs/debian-10.bin").to_vec(),
    ]
}

/// A real firmware log's events re-framed as a TDX CC event log: a SHA-384 bank only, and each
/// PCR's events in the CC MR index UEFI maps it to (0 -> 1, 1 and 7 -> 2, 2..=6 -> 3, 8.. -> 4).
fn as_ccel(firmware_log: &[u8]) -> Option<Vec<u8>> {
    let log = TcgLog::parse(firmware_log).ok()?;
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
    spec.extend_from_slice(&1u32.to_le_bytes());
    spec.extend_from_slice(&0x000cu16.to_le_bytes());
    spec.extend_from_slice(&48u16.to_le_bytes());
    spec.push(0);
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    out.extend_from_slice(&[0; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for event in &log.events {
        let register: u32 = match event.index {
            0 => 1,
            1 | 7 => 2,
            2..=6 => 3,
            _ => 4,
        };
        out.extend_from_slice(&register.to_le_bytes());
        out.extend_from_slice(&event.event_type.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0x000cu16.to_le_bytes());
        out.extend_from_slice(&HashAlg::Sha384.digest(&event.data));
        out.extend_from_slice(&(event.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&event.data);
    }
    Some(out)
}

/// Real v4 quotes, and the real one re-framed as v5 (TD 1.0 body, and TD 1.5 with 64 more bytes).
fn td_quotes() -> Vec<Vec<u8>> {
    let real = vector!("tdx/tdx_quote").to_vec();
    let tappd = cvm_attestation::tdx::decode_hex_quote(vector!("tdx/quote-from-tappd.hex"))
        .expect("real hex quote");
    let (header, rest) = real.split_at(48);
    let (body, signature) = rest.split_at(584);
    let v5 = |body_type: u16, body: &[u8]| {
        let mut q = header.to_vec();
        q[..2].copy_from_slice(&5u16.to_le_bytes());
        q.extend_from_slice(&body_type.to_le_bytes());
        q.extend_from_slice(&(body.len() as u32).to_le_bytes());
        q.extend_from_slice(body);
        q.extend_from_slice(signature);
        q
    };
    let body15 = [body, &[0x11; 16], &[0x22; 48]].concat();
    vec![real.clone(), tappd, v5(2, body), v5(3, &body15)]
}

/// The DER of every certificate in the real collateral's chains and of its two CRLs.
fn intel_x509() -> Vec<Vec<u8>> {
    let c = &context().tdx_collateral;
    let mut seeds: Vec<Vec<u8>> = [&c.pck_crl_issuer_chain, &c.tcb_info_issuer_chain]
        .into_iter()
        .flat_map(|pem| openssl::x509::X509::stack_from_pem(pem.as_bytes()).expect("real chain"))
        .map(|cert| cert.to_der().expect("DER"))
        .collect();
    for crl in [&c.root_ca_crl, &c.pck_crl].into_iter().flatten() {
        seeds.push(hex::decode(crl.trim()).expect("hex CRL"));
    }
    seeds
}

fn evidence() -> Vec<Vec<u8>> {
    let c = context();
    let mut tdx = c.tdx_evidence.clone();
    tdx.event_logs.ccel = as_ccel(&firmware_logs()[0]).map(Into::into);
    let ours = [&c.azure_evidence, &tdx].map(|e| serde_json::to_vec(e).unwrap());
    // The predecessor's shape, also wrapped in a JSON string as it served it.
    let wrapped = serde_json::to_vec(&String::from_utf8(ours[0].clone()).unwrap()).unwrap();
    let mut out = ours.to_vec();
    out.push(wrapped);
    out.push(vector!("trustee/az-snp-evidence-v2.json").to_vec());
    out
}

fn golden(repo: &Path) -> Vec<Vec<u8>> {
    let c = context();
    let folder = WorkloadFolder::read(&repo.join("workload")).expect("the example workload");
    let ids: BTreeMap<String, String> = folder
        .image_references()
        .into_iter()
        .map(|r| (r, format!("sha256:{}", "ab".repeat(32))))
        .collect();
    let events = folder.events(&ids, None).expect("workload events");
    let workload = GoldenMeasurement {
        workload: Some(GoldenWorkload::new(events)),
        ..c.azure_golden.clone()
    };
    let legacy = format!(
        r#"{{"golden_measurement": {{"pcrs": {{"hash": "sha256", "pcrs": {{"4": "{}", "9": {{"value": "{}"}}}}}}, "measurement": "{}"}}}}"#,
        cvm_attestation::encoding::encode_base64(&[0u8; 32]),
        "11".repeat(32),
        "22".repeat(48)
    );
    let mut out: Vec<Vec<u8>> = [&c.azure_golden, &c.tdx_golden, &workload]
        .iter()
        .map(|g| serde_json::to_vec_pretty(g).unwrap())
        .collect();
    out.push(serde_json::to_vec(&legacy).unwrap());
    out.push(legacy.into_bytes());
    out
}

/// The example workload as `cvm-cli` packs it (tar), and as zips with and without a wrapping
/// folder.
fn archives(repo: &Path) -> Vec<Vec<u8>> {
    let dir = repo.join("workload");
    let tar = cvm_attestation::workload::pack::pack_folder(&dir).expect("pack the workload");
    let mut files = Vec::new();
    for entry in tar::Archive::new(tar.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        files.push((name, bytes));
    }
    let zip = |prefix: &str| {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, bytes) in &files {
            let options = zip::write::SimpleFileOptions::default();
            writer
                .start_file(format!("{prefix}{name}"), options)
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    };
    vec![tar.clone(), zip(""), zip("workload/")]
}

fn compose(repo: &Path) -> Vec<Vec<u8>> {
    let example = std::fs::read(repo.join("workload/docker-compose.yml")).expect("example");
    let anchors = br#"
x-defaults: &defaults
  image: docker.io/library/busybox:1.36
  env_file: [common.env, {path: ./more/extra.env, required: false}]
services:
  web:
    <<: *defaults
    ports: ["8080:80"]
    volumes: ["./config:/config:ro", "/etc/hosts:/x", "data:/data", "${CVM_AGENT_SOCKET_DIR}:/run/cvm"]
  worker:
    image: localhost/worker:2
    env_file: worker.env
    profiles: [batch]
volumes:
  data: {driver_opts: {device: /srv/data}}
configs:
  app: {file: ../outside.conf}
"#;
    vec![example, anchors.to_vec()]
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A one-image `docker save` archive and the same image as an OCI layout.
fn image_archives() -> Vec<Vec<u8>> {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = hex::encode(openssl::sha::sha256(config));
    let docker_manifest = format!(
        r#"[{{"Config":"{config_digest}.json","RepoTags":["localhost/app:1"],"Layers":[]}}]"#
    );
    let docker = tar_of(&[
        ("manifest.json", docker_manifest.as_bytes()),
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
    let oci = tar_of(&[
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
