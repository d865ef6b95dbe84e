//! The agent on Azure SEV-SNP gets the VCEK chain it serves from Azure's host certificate service
//! (THIM, docs/collateral.md). The real service exists only inside Azure, so a local HTTP server
//! stands in for it (TEST-ONLY, thin): it answers only at THIM's path and only with the
//! `Metadata: true` header, as IMDS does. The real `cvm-agent` binary runs on a swtpm whose NV
//! holds an HCL report from the TEST-ONLY SNP signer (fresh keys each run; a real Azure HCL report
//! does not fit swtpm's 2048-byte NV indices).

mod common;
use common::{collect_lines, wait_for_line};
use cvm_attestation::azure::HCL_NV_INDEX;
use cvm_attestation::evidence::SnpEvidence;
use cvm_attestation::snp::certs::{parse_certificate, parse_pem_chain};
use cvm_attestation::snp::SnpReport;
use cvm_attestation::tpm::AkPublic;
use cvm_attester::tee::{fetch_vcek_chain, HostServiceError, VcekChain};
use cvm_attester::tpm::AZURE_AK_HANDLE;
use openssl::x509::X509;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use test_support::{SnpTestSigner, Swtpm};

const THIM_PATH: &str = "/metadata/THIM/amd/certification";
const WARNING: &str = "no VCEK from Azure's host certificate service";

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors")
}

/// What the stand-in answers at THIM's path.
#[derive(Clone)]
enum Answer {
    Json(String),
    ServerError,
    Garbage,
    Oversized,
}

/// A local stand-in for THIM; counts the requests that reached the certificate path.
struct Thim {
    url: String,
    served: Arc<AtomicUsize>,
}

impl Thim {
    fn start(answer: Answer) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{THIM_PATH}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&served);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = answer_one(stream, &answer, &count);
            }
        });
        Self { url, served }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn answer_one(
    mut stream: std::net::TcpStream,
    answer: &Answer,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let path_ok = head.starts_with(&format!("get {} ", THIM_PATH.to_ascii_lowercase()));
    let metadata = head.lines().any(|l| l.trim() == "metadata: true");
    let (status, body) = if !path_ok {
        ("404 Not Found", "{\"error\":\"Not found\"}".to_owned())
    } else if !metadata {
        (
            "400 Bad Request",
            "{\"error\":\"Bad request. Required metadata header not specified\"}".to_owned(),
        )
    } else {
        count.fetch_add(1, Ordering::SeqCst);
        match answer {
            Answer::Json(json) => ("200 OK", json.clone()),
            Answer::ServerError => (
                "500 Internal Server Error",
                "{\"error\":\"Internal error\"}".to_owned(),
            ),
            Answer::Garbage => ("200 OK", "<html>upstream busy</html>".to_owned()),
            Answer::Oversized => (
                "200 OK",
                format!("{{\"vcekCert\":\"{}\"}}", "A".repeat(200 * 1024)),
            ),
        }
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    // The peer may hang up once it has read enough (the oversized answer).
    let _ = stream.write_all(body.as_bytes());
    Ok(())
}

/// THIM's answer shape: the VCEK as PEM, the ASK then the ARK as one PEM string.
fn thim_json(vcek: &X509, chain: &[X509], tcbm: &str) -> String {
    let pem = |cert: &X509| String::from_utf8(cert.to_pem().unwrap()).unwrap();
    serde_json::json!({
        "vcekCert": pem(vcek),
        "tcbm": tcbm,
        "certificateChain": chain.iter().map(pem).collect::<String>(),
        "cacheControl": "86400",
    })
    .to_string()
}

/// The REAL VCEK that signed the real Azure v2 HCL report, with AMD's real Milan ASK and ARK.
fn real_chain() -> (X509, Vec<X509>) {
    let vcek = std::fs::read(vectors().join("derived/v2-vcek.der")).unwrap();
    let chain = std::fs::read(vectors().join("virtee-sev/cert_chain_milan.pem")).unwrap();
    (
        X509::from_der(&vcek).unwrap(),
        parse_pem_chain(&chain).unwrap(),
    )
}

fn der(certs: &[X509]) -> Vec<Vec<u8>> {
    certs.iter().map(|c| c.to_der().unwrap()).collect()
}

#[test]
fn the_real_chain_comes_back_as_exact_der() {
    let (vcek, chain) = real_chain();
    // The vectors fit together: this VCEK signed the real HCL report's SNP report.
    let hcl = std::fs::read(vectors().join("derived/v2-hcl-report.bin")).unwrap();
    let hcl = cvm_attestation::azure::HclReport::parse(&hcl).unwrap();
    let report = SnpReport::parse(hcl.hardware_report).unwrap();
    assert!(report.signature_valid(&vcek.public_key().unwrap()).unwrap());
    // THIM's `tcbm`: the reported TCB (8 bytes at 0x180) as hex.
    let tcbm = hex::encode_upper(&report.raw()[0x180..0x188]);

    let thim = Thim::start(Answer::Json(thim_json(&vcek, &chain, &tcbm)));
    let fetched = fetch_vcek_chain(&thim.url).unwrap();
    assert_eq!(
        fetched,
        VcekChain {
            vcek_der: std::fs::read(vectors().join("derived/v2-vcek.der")).unwrap(),
            chain_der: der(&chain),
        }
    );
    assert_eq!(thim.served(), 1);

    // Without `Metadata: true` IMDS answers 400; the client names it and does not retry.
    let elsewhere = thim.url.replace("/THIM/", "/thim-typo/");
    let error = fetch_vcek_chain(&elsewhere).unwrap_err();
    assert!(
        matches!(error, HostServiceError::Status { status, .. } if status == 404),
        "{error}"
    );
}

#[test]
fn failing_services_give_clear_errors() {
    let server_error = Thim::start(Answer::ServerError);
    let error = fetch_vcek_chain(&server_error.url).unwrap_err();
    assert!(error.to_string().contains("HTTP 500"), "{error}");
    assert_eq!(server_error.served(), 3, "5xx is retried: 3 attempts");

    let garbage = Thim::start(Answer::Garbage);
    let error = fetch_vcek_chain(&garbage.url).unwrap_err();
    assert!(error.to_string().contains("not JSON"), "{error}");
    assert_eq!(garbage.served(), 1, "a bad answer is not retried");

    let oversized = Thim::start(Answer::Oversized);
    let error = fetch_vcek_chain(&oversized.url).unwrap_err();
    assert!(
        matches!(error, HostServiceError::Body { limit: 65536, .. }),
        "{error}"
    );

    let (vcek, _) = real_chain();
    let mut json: serde_json::Value = serde_json::from_str(&thim_json(&vcek, &[], "00")).unwrap();
    json["certificateChain"] =
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
    let bad_pem = Thim::start(Answer::Json(json.to_string()));
    let error = fetch_vcek_chain(&bad_pem.url).unwrap_err();
    assert!(error.to_string().contains("certificateChain"), "{error}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{THIM_PATH}", closed.local_addr().unwrap());
    drop(closed);
    let error = fetch_vcek_chain(&url).unwrap_err();
    assert!(matches!(error, HostServiceError::Connect { .. }), "{error}");
    assert!(error.to_string().contains("Connection refused"), "{error}");
}

/// An Azure-like VM: a swtpm whose persistent AK at Azure's handle is named in the var_data of an
/// HCL report (NV 0x01400001) signed by a fresh TEST-ONLY signer.
struct AzureVm {
    swtpm: Swtpm,
    signer: SnpTestSigner,
}

impl AzureVm {
    fn new() -> Self {
        let swtpm = Swtpm::start().unwrap();
        let signer = SnpTestSigner::new().unwrap();
        let mut tpm = cvm_attester::Tpm::open(&swtpm.tcti()).unwrap();
        // What the paravisor leaves there: an RSA AK, loaded by the agent.
        let ak = tpm.provision_persistent_rsa_ak(AZURE_AK_HANDLE).unwrap();
        let ak = AkPublic::from_bytes(&ak).unwrap();
        let rsa = ak.key.rsa().unwrap();
        let var_data = serde_json::to_vec(&serde_json::json!({
            "keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA",
                      "e": base64url(&rsa.e().to_vec()),
                      "n": base64url(&rsa.n().to_vec())}],
            "vm-configuration": {"secure-boot": true, "tpm-enabled": true}
        }))
        .unwrap();
        let hcl = signer.hcl_report(&var_data, &[7; 48], 0x3_0000).unwrap();
        tpm.nv_provision(HCL_NV_INDEX, &hcl).unwrap();
        drop(tpm);
        Self { swtpm, signer }
    }

    /// The signer's VCEK, ASK and ARK as THIM would serve them for this VM.
    fn thim_json(&self) -> String {
        let vcek = X509::from_der(&self.signer.vcek_der()).unwrap();
        thim_json(
            &vcek,
            &[self.signer.ask().clone(), self.signer.ark().clone()],
            "00",
        )
    }
}

/// The real agent binary, its output collected.
struct Spawned {
    child: Child,
    log: Arc<Mutex<String>>,
    external: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Spawned {
    fn start(vm: &AzureVm, settings: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("workload")).unwrap();
        let config = format!(
            "workload_dir = {:?}\nstate_dir = {:?}\nlocal_socket = {:?}\n\
             local_listen = \"127.0.0.1:0\"\nexternal_listen = \"127.0.0.1:0\"\n\
             external_tls = false\nmeasure_only = true\ntcti = {:?}\n\
             cloud = \"azure\"\ntee = \"sev-snp\"\n{settings}",
            dir.path().join("workload"),
            dir.path().join("run"),
            dir.path().join("run/api/api.sock"),
            vm.swtpm.tcti(),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cvm-agent"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        collect_lines(child.stdout.take().unwrap(), &log);
        collect_lines(child.stderr.take().unwrap(), &log);
        let serving = wait_for_line(&mut child, &log, "serving");
        let start = serving.find("external_addr=").unwrap() + "external_addr=".len();
        let external = serving[start..].split_whitespace().next().unwrap();
        Self {
            child,
            log,
            external: external.parse().unwrap(),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The SEV-SNP part of evidence over a fresh nonce.
    fn snp_evidence(&self) -> SnpEvidence {
        let nonce = hex::encode(openssl::sha::sha256(&rand_bytes()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (status, evidence) = runtime
            .block_on(test_support::http::get_json(
                self.external,
                &format!("/collaterals/{nonce}"),
            ))
            .unwrap();
        assert_eq!(status, 200, "{evidence}\n{}", self.log());
        let evidence =
            cvm_attestation::Evidence::from_json(evidence.to_string().as_bytes()).unwrap();
        evidence.sev_snp.expect("SEV-SNP evidence")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JWK's unpadded base64url.
fn base64url(bytes: &[u8]) -> String {
    cvm_attestation::encoding::encode_base64(bytes)
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_owned()
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).unwrap();
    bytes
}

fn url_setting(thim: &Thim) -> String {
    format!("azure_certs_url = {:?}\n", thim.url)
}

#[test]
fn the_agent_serves_the_chain_from_the_host_service() {
    let vm = AzureVm::new();
    let thim = Thim::start(Answer::Json(vm.thim_json()));
    let agent = Spawned::start(&vm, &url_setting(&thim));
    assert_eq!(thim.served(), 0, "fetched on first evidence, not at start");

    let snp = agent.snp_evidence();
    assert_eq!(snp.vek_cert.0, vm.signer.vcek_der());
    assert_eq!(
        snp.cert_chain
            .iter()
            .map(|c| c.0.clone())
            .collect::<Vec<_>>(),
        vec![vm.signer.ask_der(), vm.signer.ark_der()]
    );
    let report = SnpReport::parse(&snp.attestation_report.0).unwrap();
    let vcek = parse_certificate(&snp.vek_cert.0).unwrap();
    assert!(report.signature_valid(&vcek.public_key().unwrap()).unwrap());
    assert!(snp.hcl_report.is_some());

    // Kept in memory: the second request is served without asking again.
    assert_eq!(agent.snp_evidence().vek_cert.0, vm.signer.vcek_der());
    assert_eq!(thim.served(), 1);
    assert!(!agent.log().contains(WARNING), "{}", agent.log());
}

/// The agent still serves evidence, without a VCEK, warns once naming the cause, and does not
/// ask again for every request.
fn served_without_vcek(answer: Answer, cause: &str, fetches: usize) {
    let vm = AzureVm::new();
    let thim = Thim::start(answer);
    let agent = Spawned::start(&vm, &url_setting(&thim));
    for _ in 0..2 {
        let snp = agent.snp_evidence();
        assert!(snp.vek_cert.0.is_empty());
        assert!(snp.cert_chain.is_empty());
        assert!(snp.hcl_report.is_some());
    }
    assert_eq!(thim.served(), fetches);
    let log = agent.log();
    let warnings: Vec<_> = log.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains(cause),
        "{log}"
    );
}

#[test]
fn a_host_service_answering_500_leaves_the_vcek_out() {
    served_without_vcek(Answer::ServerError, "HTTP 500", 3);
}

#[test]
fn a_host_service_answering_garbage_leaves_the_vcek_out() {
    served_without_vcek(Answer::Garbage, "not JSON", 1);
}

#[test]
fn an_oversized_answer_leaves_the_vcek_out() {
    served_without_vcek(Answer::Oversized, "at most 65536 bytes", 1);
}

/// A confused service: real AMD certificates, but for another chip than this VM's.
#[test]
fn a_vcek_that_did_not_sign_the_report_is_not_served() {
    let (vcek, chain) = real_chain();
    served_without_vcek(
        Answer::Json(thim_json(&vcek, &chain, "00")),
        "did not sign",
        1,
    );
}

#[test]
fn configured_files_win_over_the_host_service() {
    let vm = AzureVm::new();
    let thim = Thim::start(Answer::Json(vm.thim_json()));
    let (vcek, ask) = (
        vectors().join("derived/v2-vcek.der"),
        vectors().join("virtee-sev/milan_ask.pem"),
    );
    let settings = format!(
        "{}vcek_path = {vcek:?}\nvcek_chain_paths = [{ask:?}]\n",
        url_setting(&thim)
    );
    let agent = Spawned::start(&vm, &settings);
    let snp = agent.snp_evidence();
    assert_eq!(snp.vek_cert.0, std::fs::read(&vcek).unwrap());
    let ask_der = parse_certificate(&std::fs::read(&ask).unwrap())
        .unwrap()
        .to_der()
        .unwrap();
    assert_eq!(snp.cert_chain.len(), 1);
    assert_eq!(snp.cert_chain[0].0, ask_der);
    assert_eq!(
        thim.served(),
        0,
        "files configured: the service is not asked"
    );
}
