//! The agent against real components: a swtpm, a container engine (dockerd with its registry, and
//! Podman), docker-compose, and its HTTP API over real sockets.

use cvm_agent::config::Config;
use cvm_agent::{Agent, StartKind};
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::golden::{GoldenMeasurement, GoldenWorkload};
use cvm_attestation::workload::{archived_images, WorkloadFolder, WorkloadLog};
use cvm_attestation::{encoding::encode_base64, Sha256Digest};
use cvm_attester::NoTee;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use test_support::http::{get_json, multipart_file, post_json, request};
use test_support::{busybox_image_archive, ContainerEngine, EngineKind, Swtpm};

const TOKEN: &str = "test-token-0123456789abcdef0123456789abcdef";
const IMAGE: &str = "localhost/cvm-example/hello:1";

/// A VM stand-in: its TPM, its engine, its data partition, and the agent.
struct TestVm {
    swtpm: Swtpm,
    engine: ContainerEngine,
    dir: tempfile::TempDir,
    agent: Option<Agent>,
}

/// The example workload plus its image archive, with an optional message.
fn write_workload(dir: &Path, message: &str) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workload");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    for file in ["docker-compose.yml", "app.env", "secrets/README.md"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("config/message.txt"), message).unwrap();
    let archive = busybox_image_archive(IMAGE, &["sh"], &[]).unwrap();
    std::fs::write(dir.join("hello.tar"), archive.bytes).unwrap();
}

/// What PCR 23 must hold, computed offline from the folder alone.
fn offline_events(dir: &Path) -> Vec<cvm_attestation::workload::WorkloadEvent> {
    let archive = std::fs::File::open(dir.join("hello.tar")).unwrap();
    let ids: BTreeMap<String, String> = archived_images(archive)
        .unwrap()
        .into_iter()
        .flat_map(|image| {
            image
                .tags
                .into_iter()
                .map(move |tag| (tag, image.image_id.clone()))
        })
        .collect();
    WorkloadFolder::read(dir)
        .unwrap()
        .events(&ids, Some(Sha256Digest::of(TOKEN.as_bytes())))
        .unwrap()
}

impl TestVm {
    async fn boot(kind: EngineKind, message: &str) -> TestVm {
        let swtpm = Swtpm::start().unwrap();
        let engine = ContainerEngine::start(kind).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_workload(&dir.path().join("workload"), message);
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let mut vm = TestVm {
            swtpm,
            engine,
            dir,
            agent: None,
        };
        vm.start_agent().await;
        vm
    }

    fn config(&self) -> Config {
        Config {
            workload_dir: self.dir.path().join("workload"),
            state_dir: self.dir.path().join("run"),
            local_listen: "127.0.0.1:0".parse().unwrap(),
            external_listen: "127.0.0.1:0".parse().unwrap(),
            // These tests speak plain HTTP; the TLS listener has its own test.
            external_tls: false,
            local_socket: Some(self.dir.path().join("run/api/api.sock")),
            tcti: self.swtpm.tcti(),
            engine_socket: self.engine.socket().to_owned(),
            api_token_file: Some(self.dir.path().join("token")),
            firmware_event_log: None,
            max_upload_bytes: 4 << 20,
            ..Config::default()
        }
    }

    async fn start_agent(&mut self) -> StartKind {
        let platform = Platform {
            cloud: Cloud::Qemu,
            tee: Tee::None,
        };
        let agent = Agent::start_with(self.config(), platform, Box::new(NoTee))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "agent start: {e:#}\nengine log:\n{}",
                    self.engine.log_tail()
                )
            });
        let kind = agent.start_kind;
        self.agent = Some(agent);
        kind
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    fn workload_dir(&self) -> PathBuf {
        self.dir.path().join("workload")
    }

    async fn pcr23(&self) -> [u8; 32] {
        self.agent().state.tpm.read_pcr23().await.unwrap()
    }

    /// Fetches evidence over a fresh nonce and verifies it through the agent's /offchain-verify.
    async fn verify_against(
        &self,
        events: Vec<cvm_attestation::workload::WorkloadEvent>,
    ) -> serde_json::Value {
        let nonce = hex::encode(rand_nonce());
        let (status, evidence) =
            get_json(self.agent().external_addr, &format!("/collaterals/{nonce}"))
                .await
                .unwrap();
        assert_eq!(status, 200, "{evidence}");
        let golden = GoldenMeasurement {
            version: 1,
            platform: None,
            pcrs: BTreeMap::new(),
            workload: Some(GoldenWorkload {
                events,
                allow_updates: true,
            }),
            snp: None,
            tdx: None,
        };
        let body = json!({
            // The predecessor sent JSON strings; objects work too.
            "collaterals": evidence.to_string(),
            "golden_measurement": golden,
            "nonce": nonce,
            "trusted_ak": encode_base64(self.agent().state.tpm.ak_public()),
        });
        let response = post_json(self.agent().local_addr, "/offchain-verify", &body)
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        response.json().unwrap()
    }

    async fn container_log(&self) -> String {
        let response = request(
            self.agent().external_addr,
            "GET",
            "/container-logs?name=hello",
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        response.json().unwrap()[0]["log"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn upload(&self, token: &str, archive: &[u8]) -> test_support::http::HttpResponse {
        let (content_type, body) = multipart_file("file", "workload.zip", archive);
        request(
            self.agent().external_addr,
            "POST",
            "/update-workload",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Content-Type", &content_type),
            ],
            &body,
        )
        .await
        .unwrap()
    }
}

fn rand_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    openssl::rand::rand_bytes(&mut nonce).unwrap();
    nonce
}

/// Waits until the service's log contains `text` (the container starts asynchronously).
async fn wait_for_log(vm: &TestVm, text: &str) -> String {
    let mut log = String::new();
    for _ in 0..100 {
        log = vm.container_log().await;
        if log.contains(text) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "container log never contained {text:?}: {log:?}\nengine:\n{}",
        vm.engine.log_tail()
    );
}

fn zip_folder(dir: &Path) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                stack.push(path);
            } else {
                writer
                    .start_file(name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                writer.write_all(&std::fs::read(&path).unwrap()).unwrap();
            }
        }
    }
    writer.finish().unwrap().into_inner()
}

async fn measures_runs_and_attests(kind: EngineKind) {
    let vm = TestVm::boot(kind, "first message\n").await;
    let expected = offline_events(&vm.workload_dir());
    assert_eq!(
        hex::encode(vm.pcr23().await),
        cvm_attestation::workload::replay(&expected).to_hex()
    );

    let answer = vm.verify_against(expected.clone()).await;
    assert_eq!(answer["success"], true, "{answer:#}");
    wait_for_log(&vm, "first message").await;
    // The container sees the agent's local API socket (mounted from CVM_AGENT_SOCKET_DIR).
    wait_for_log(&vm, "agent API socket: reachable").await;

    // A changed config file: another PCR 23, and the golden comparison fails by name.
    let other = tempfile::tempdir().unwrap();
    write_workload(other.path(), "another message\n");
    let changed = offline_events(other.path());
    assert_ne!(
        cvm_attestation::workload::replay(&changed),
        cvm_attestation::workload::replay(&expected)
    );
    let answer = vm.verify_against(changed).await;
    assert_eq!(answer["success"], false);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("workload.measurement"),
        "{answer:#}"
    );

    let (status, platform) = get_json(vm.agent().local_addr, "/platform").await.unwrap();
    assert_eq!((status, platform["tee_type"].as_str()), (200, Some("none")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_agent_measures_runs_and_attests() {
    measures_runs_and_attests(EngineKind::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_agent_measures_runs_and_attests() {
    measures_runs_and_attests(EngineKind::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_measured_and_bad_uploads_leave_the_workload_running() {
    let vm = TestVm::boot(EngineKind::Docker, "before update\n").await;
    wait_for_log(&vm, "before update").await;

    // Rejected: wrong token, traversal, corrupt zip, oversize. The old workload keeps running.
    let new_dir = tempfile::tempdir().unwrap();
    write_workload(new_dir.path(), "after update\n");
    let good = zip_folder(new_dir.path());
    let wrong = vm
        .upload("not-the-token-at-all-000000000000000", &good)
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());

    let traversal = {
        use std::io::Write;
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        writer
            .start_file("../../escape.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(b"x").unwrap();
        writer.finish().unwrap().into_inner()
    };
    let response = vm.upload(TOKEN, &traversal).await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("outside"),
        "{}",
        response.text()
    );
    let response = vm.upload(TOKEN, b"PK\x03\x04 this is not a zip").await;
    assert_eq!(response.status, 400, "{}", response.text());
    let oversize = vec![0u8; 5 << 20];
    let response = request(
        vm.agent().external_addr,
        "POST",
        "/update-workload",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Type", "application/zip"),
        ],
        &oversize,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 413, "{}", response.text());
    let no_compose = {
        use std::io::Write;
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        writer
            .start_file("config/a.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(b"x").unwrap();
        writer.finish().unwrap().into_inner()
    };
    let response = vm.upload(TOKEN, &no_compose).await;
    assert_eq!(response.status, 422, "{}", response.text());
    assert!(
        response.text().contains("docker-compose.yml"),
        "{}",
        response.text()
    );
    let pcr_before = vm.pcr23().await;
    wait_for_log(&vm, "before update").await;

    // Accepted: re-measured (a second generation), restarted with the new config.
    let response = vm.upload(TOKEN, &good).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_ne!(vm.pcr23().await, pcr_before);
    wait_for_log(&vm, "after update").await;
    let (_, log) = get_json(vm.agent().external_addr, "/eventlog")
        .await
        .unwrap();
    let log: WorkloadLog = serde_json::from_value(log).unwrap();
    assert_eq!(log.generations().unwrap().len(), 2);
    assert_eq!(log.replay().0, vm.pcr23().await);
    let answer = vm.verify_against(offline_events(new_dir.path())).await;
    assert_eq!(answer["success"], true, "{answer:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_agent_does_not_extend_again() {
    let mut vm = TestVm::boot(EngineKind::Docker, "restart\n").await;
    let before = vm.pcr23().await;
    drop(vm.agent.take());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(vm.start_agent().await, StartKind::Restored);
    assert_eq!(vm.pcr23().await, before);
    let (_, log) = get_json(vm.agent().local_addr, "/eventlog").await.unwrap();
    let log: WorkloadLog = serde_json::from_value(log).unwrap();
    assert_eq!(log.replay().0, before);
    let answer = vm.verify_against(offline_events(&vm.workload_dir())).await;
    assert_eq!(answer["success"], true, "{answer:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_served_without_errors() {
    let vm = TestVm::boot(EngineKind::Docker, "load\n").await;
    let addr = vm.agent().external_addr;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(tokio::spawn(async move {
            let mut served = 0u32;
            while tokio::time::Instant::now() < deadline {
                let nonce = hex::encode(rand_nonce());
                let response = request(addr, "GET", &format!("/collaterals/{nonce}"), &[], b"")
                    .await
                    .unwrap();
                assert_eq!(response.status, 200, "{}", response.text());
                served += 1;
            }
            served
        }));
    }
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    assert!(
        total >= 64,
        "every client was served at least once ({total} in all)"
    );
    println!("served {total} evidence requests in 30 s with 64 clients");
}

#[tokio::test]
async fn bad_nonces_and_unknown_routes_are_json_errors() {
    let vm = TestVm::boot(EngineKind::Docker, "errors\n").await;
    let addr = vm.agent().external_addr;
    for path in [
        "/collaterals/abc",
        &format!("/collaterals/{}", "a".repeat(300)),
        "/collaterals/!!!!",
    ] {
        let response = request(addr, "GET", path, &[], b"").await.unwrap();
        assert_eq!(response.status, 400, "{path}");
        assert!(response.json().unwrap()["error"].is_string());
    }
    let response = request(addr, "GET", "/no/such/route", &[], b"")
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    // The verify route is local only.
    let response = post_json(addr, "/offchain-verify", &json!({}))
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    let response = post_json(
        vm.agent().local_addr,
        "/offchain-verify",
        &json!({"collaterals": 1}),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 400, "{}", response.text());
}

#[test]
fn openapi_document_lists_exactly_the_routes() {
    let document: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json")).unwrap(),
    )
    .unwrap();
    let mut documented: Vec<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = cvm_agent::api::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
}

/// A measure-only agent (no engine) on ephemeral loopback ports, its files under `dir`.
fn measure_only_config(dir: &Path, swtpm: &Swtpm) -> Config {
    Config {
        workload_dir: dir.join("workload"),
        state_dir: dir.join("run"),
        local_listen: "127.0.0.1:0".parse().unwrap(),
        external_listen: "127.0.0.1:0".parse().unwrap(),
        external_tls: false,
        local_socket: None,
        tcti: swtpm.tcti(),
        api_token_file: Some(dir.join("token")),
        firmware_event_log: None,
        measure_only: true,
        ..Config::default()
    }
}

/// A measure-only agent without a TEE on its own swtpm (fields drop in order: the agent first).
struct MeasureOnly {
    agent: Agent,
    dir: tempfile::TempDir,
    _swtpm: Swtpm,
}

impl MeasureOnly {
    /// With `message` as the workload's config file; `adjust` changes the configuration.
    async fn start(message: &str, adjust: impl FnOnce(Config) -> Config) -> Self {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_workload(&dir.path().join("workload"), message);
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let config = adjust(measure_only_config(dir.path(), &swtpm));
        let platform = Platform {
            cloud: Cloud::Qemu,
            tee: Tee::None,
        };
        let agent = Agent::start_with(config, platform, Box::new(NoTee))
            .await
            .unwrap();
        Self {
            agent,
            dir,
            _swtpm: swtpm,
        }
    }
}

#[tokio::test]
async fn measure_only_agent_needs_no_engine() {
    let vm = MeasureOnly::start("measured only\n", |config| Config {
        engine_socket: "/nonexistent/engine.sock".into(),
        ..config
    })
    .await;
    let (agent, dir) = (&vm.agent, &vm.dir);
    let expected = offline_events(&dir.path().join("workload"));
    let pcr = agent.state.tpm.read_pcr23().await.unwrap();
    assert_eq!(
        hex::encode(pcr),
        cvm_attestation::workload::replay(&expected).to_hex()
    );
    let (status, health) = get_json(agent.external_addr, "/health").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        health["workload"]
            .as_str()
            .unwrap()
            .contains("measure-only"),
        "{health}"
    );
    let response = request(
        agent.external_addr,
        "GET",
        "/container-logs",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(response.status, 409, "{}", response.text());
}

/// GCP/AWS-style SEV-SNP through the agent: evidence verifies through /offchain-verify only
/// because the agent's configuration names the TEST-ONLY root, and the report says so.
#[tokio::test]
async fn snp_evidence_verifies_through_offchain_verify_with_a_named_test_root() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_workload(&dir.path().join("workload"), "snp\n");
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let signer = test_support::SnpTestSigner::new().unwrap();
    std::fs::write(dir.path().join("test-ark.pem"), signer.ark_pem()).unwrap();
    let measurement = [0x5a; 48];
    let config = Config {
        test_roots: vec![dir.path().join("test-ark.pem")],
        ..measure_only_config(dir.path(), &swtpm)
    };
    let platform = Platform {
        cloud: Cloud::Gcp,
        tee: Tee::SevSnp,
    };
    let backend = test_support::TestSnpBackend {
        signer,
        measurement,
        policy: 0x3_0000,
    };
    let agent = Agent::start_with(config, platform, Box::new(backend))
        .await
        .unwrap();

    let nonce = hex::encode(rand_nonce());
    let (status, evidence) = get_json(agent.external_addr, &format!("/collaterals/{nonce}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{evidence}");
    let golden = json!({
        "version": 1,
        "platform": {"cloud": "gcp", "tee": "sev-snp"},
        "workload": {"events": offline_events(&dir.path().join("workload"))},
        "snp": {"measurements": [hex::encode(measurement)]},
    });
    let body = json!({ "collaterals": evidence, "golden_measurement": golden, "nonce": nonce });
    let response = post_json(agent.local_addr, "/offchain/verify", &body)
        .await
        .unwrap();
    let answer = response.json().unwrap();
    assert_eq!(answer["success"], true, "{answer:#}");
    let checks = answer["report"]["checks"].as_array().unwrap();
    let chain = checks.iter().find(|c| c["name"] == "snp.chain").unwrap();
    assert!(
        chain["reason"].as_str().unwrap().contains("TEST-ONLY root"),
        "{chain}"
    );
}

/// The external listener speaks TLS 1.3 with a key made at start, and the evidence fetched over
/// that connection binds exactly that key (what `cvm-cli` pins before sending its token).
#[tokio::test]
async fn the_external_tls_key_is_bound_into_evidence() {
    let vm = MeasureOnly::start("over tls\n", |config| Config {
        external_tls: true,
        ..config
    })
    .await;
    let (agent, dir) = (&vm.agent, &vm.dir);
    let addr = agent.external_addr;
    let nonce = rand_nonce();
    let path = format!("/collaterals/{}", hex::encode(nonce));
    let (peer_key, body) = tokio::task::spawn_blocking(move || tls_get(addr, &path))
        .await
        .unwrap();
    let evidence = cvm_attestation::Evidence::from_json(&body).unwrap();
    assert_eq!(evidence.tls_key(), Some(peer_key));
    assert_eq!(agent.state.tls_key, Some(peer_key));

    let golden = GoldenMeasurement {
        workload: Some(GoldenWorkload {
            events: offline_events(&dir.path().join("workload")),
            allow_updates: false,
        }),
        ..serde_json::from_value(json!({"version": 1})).unwrap()
    };
    let mut options = cvm_attestation::VerifyOptions::now().with_nonce(nonce.to_vec());
    options.trusted_ak = Some(evidence.tpm.ak_pub.as_slice().to_vec());
    options.expected_tls_key = Some(peer_key);
    let report = cvm_attestation::verify(&evidence, &golden, &options);
    assert!(report.verified, "{report}");
    options.expected_tls_key = Some([0; 32]);
    let report = cvm_attestation::verify(&evidence, &golden, &options);
    assert!(!report.verified, "{report}");

    // Plain HTTP on the TLS port gets nothing.
    let response = request(addr, "GET", "/health", &[], b"").await;
    assert!(
        response.as_ref().map_or(true, |r| r.status != 200),
        "{response:?}"
    );
}

/// One HTTP/1.0 GET over TLS (certificate not checked: the evidence vouches for the key); the
/// SHA-256 of the server's SPKI and the response body.
fn tls_get(addr: std::net::SocketAddr, path: &str) -> ([u8; 32], Vec<u8>) {
    use sha2::Digest;
    use std::io::{Read, Write};
    let mut connector =
        openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut stream = connector
        .build()
        .configure()
        .unwrap()
        .connect("cvm-agent", tcp)
        .unwrap();
    assert_eq!(stream.ssl().version_str(), "TLSv1.3");
    let spki = stream
        .ssl()
        .peer_certificate()
        .unwrap()
        .public_key()
        .unwrap()
        .public_key_to_der()
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let at = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(response.starts_with(b"HTTP/1.0 200") || response.starts_with(b"HTTP/1.1 200"));
    (sha2::Sha256::digest(&spki).into(), response[at..].to_vec())
}
