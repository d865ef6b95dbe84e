//! The agent's API against its contract: `schemathesis` (installed by
//! scripts/install-test-deps.sh) reads `/openapi.json` from a running agent on swtpm and fuzzes
//! every route of each listener, with the bearer token, checking that nothing answers 5xx, that
//! every status is documented, and that every answer (errors too) is JSON matching its schema.
//!
//! The agent is measure-only with an empty workload, so the engine routes answer their documented
//! 409 and `/update-workload` meets no workload worth unpacking: generated bodies are never valid
//! archives, so they are refused (400) before anything is measured. Nothing is excluded.

use cvm_agent::config::Config;
use cvm_agent::Agent;
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attester::NoTee;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use test_support::http::request;
use test_support::{Swtpm, EMULATOR_VENV};

const TOKEN: &str = "test-token-0123456789abcdef0123456789abcdef";
/// Examples per operation and the time budget of each listener's run.
const MAX_EXAMPLES: &str = "40";
const MAX_SECONDS: &str = "35";

async fn measure_only_agent(dir: &Path, swtpm: &Swtpm) -> Agent {
    std::fs::create_dir_all(dir.join("workload")).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let config = Config {
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
    };
    let platform = Platform {
        cloud: Cloud::Qemu,
        tee: Tee::None,
    };
    Agent::start_with(config, platform, Box::new(NoTee))
        .await
        .unwrap()
}

/// Runs schemathesis against one listener's own copy of the document; `excluded_tag` names the
/// routes the listener does not serve. Fails with its report unless every check passed.
async fn schemathesis(addr: SocketAddr, excluded_tag: &str, work: &Path) {
    let binary = Path::new(EMULATOR_VENV).join("bin/schemathesis");
    assert!(
        binary.exists(),
        "{} missing: run scripts/install-test-deps.sh first",
        binary.display()
    );
    let started = Instant::now();
    let output = tokio::process::Command::new(&binary)
        .current_dir(work)
        .env("NO_COLOR", "1")
        .args(["run", &format!("http://{addr}/openapi.json")])
        .args(["--url", &format!("http://{addr}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,unsupported_method"])
        .args(["--exclude-tag", excluded_tag])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", MAX_EXAMPLES, "--max-time", MAX_SECONDS])
        .args(["--workers", "2", "--request-timeout", "30", "--seed", "1"])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "schemathesis on {addr} (without tag {excluded_tag}) took {:?}:\n{report}",
        started.elapsed()
    );
    assert!(output.status.success(), "schemathesis failed:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_keeps_its_contract_under_schemathesis() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = measure_only_agent(dir.path(), &swtpm).await;

    // Served on both listeners, without a token: exactly the checked-in document.
    for addr in [agent.local_addr, agent.external_addr] {
        let response = request(addr, "GET", "/openapi.json", &[], b"")
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.text(), cvm_agent::api::OPENAPI);
    }
    // A method a route does not serve: 405 as JSON, with the methods it does serve.
    let response = request(agent.local_addr, "DELETE", "/health", &[], b"")
        .await
        .unwrap();
    assert_eq!(response.status, 405, "{}", response.text());
    assert!(
        response.json().unwrap()["error"].is_string(),
        "{}",
        response.text()
    );

    // A clean state for each run: schemathesis keeps its reports in its working directory.
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    schemathesis(agent.local_addr, "external", work.path()).await;
    schemathesis(agent.external_addr, "local", work.path()).await;
    assert!(started.elapsed() < Duration::from_secs(150));
    // The agent is still well and its measurement unchanged: fuzzed updates measured nothing.
    let log = agent.state.workloads.measured().await.log;
    assert_eq!(log.generations().unwrap().len(), 1);
    assert_eq!(agent.state.tpm.read_pcr23().await.unwrap(), log.replay().0);
}
