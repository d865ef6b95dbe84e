//! `cvm-cli golden` computes the golden values offline from the workload folder; `cvm-cli verify
//! --host` fetches evidence from a real agent (on a real swtpm) over a fresh nonce and passes
//! every check; a changed config file fails with a readable difference.

use cvm_agent::Agent;
use cvm_attestation::encoding::encode_base64;
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::workload::TokenCommitment;
use std::path::Path;
use std::process::Command;
use test_support::{busybox_image_archive, Swtpm};

mod common;
use common::{agent_config, cli};

const TOKEN: &str = "cli-test-token-0123456789abcdef0123456789";

fn write_workload(dir: &Path, message: &str) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workload");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    for file in ["docker-compose.yml", "app.env"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("config/message.txt"), message).unwrap();
    let archive = busybox_image_archive("localhost/cvm-example/hello:1", &["sh"], &[]).unwrap();
    std::fs::write(dir.join("hello.tar"), archive.bytes).unwrap();
}

/// PCR 4 and 11 as the agent's swtpm quotes them (nothing boots on it), to pin a boot chain in
/// the goldens as verification requires; the workload is what this test is about.
async fn boot_chain(agent: &Agent) -> serde_json::Value {
    let path = format!("/collaterals/{}", "ab".repeat(16));
    let (status, evidence) = test_support::http::get_json(agent.local_addr, &path)
        .await
        .unwrap();
    assert_eq!(status, 200, "{evidence}");
    let evidence = cvm_attestation::Evidence::from_json(evidence.to_string().as_bytes()).unwrap();
    let pcr = |index: u8| {
        let value = hex::encode(evidence.tpm.pcrs.pcrs[&index].as_slice());
        serde_json::json!({"sha256": value, "source": "observed"})
    };
    serde_json::json!({"4": pcr(4), "11": pcr(11)})
}

/// Adds the boot chain's PCRs to a golden file `cvm-cli golden` wrote.
fn pin_boot_chain(golden: &Path, pcrs: &serde_json::Value) {
    let mut document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden).unwrap()).unwrap();
    document["pcrs"] = pcrs.clone();
    std::fs::write(golden, document.to_string()).unwrap();
}

/// Runs `cvm-cli verify --host` off the runtime the agent serves on.
async fn verify_host(
    host: String,
    golden: std::path::PathBuf,
    ak: std::path::PathBuf,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        cli(&[
            "verify",
            "--host",
            &host,
            "--golden",
            golden.to_str().unwrap(),
            "--trusted-ak",
            ak.to_str().unwrap(),
        ])
    })
    .await
    .unwrap()
}

/// Runs `cvm-cli update-workload --golden` (verify first, then upload) off the agent's runtime.
async fn update_workload(
    host: String,
    token: &Path,
    workload: &Path,
    golden: &Path,
    ak: &Path,
) -> std::process::Output {
    let args: Vec<String> = [
        "update-workload",
        "--host",
        &host,
        "--token-file",
        token.to_str().unwrap(),
        "--workload",
        workload.to_str().unwrap(),
        "--golden",
        golden.to_str().unwrap(),
        "--trusted-ak",
        ak.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    tokio::task::spawn_blocking(move || cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_offline_then_verify_a_running_agent() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("workload");
    write_workload(&workload, "hello\n");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = agent_config(dir.path(), workload.clone(), swtpm.tcti());
    let platform = Platform {
        cloud: Cloud::Qemu,
        tee: Tee::None,
    };
    let agent = Agent::start_with(config, platform, Box::new(cvm_attester::NoTee))
        .await
        .unwrap();
    let ak = dir.path().join("ak.pub");
    std::fs::write(&ak, encode_base64(agent.state.tpm.ak_public())).unwrap();
    let host = agent.external_addr.to_string();
    // The agent's api-token event carries its salt (random per boot): the golden needs it.
    let agent_log = agent.state.workloads.measured().await.log;
    let salt = hex::encode(TokenCommitment::first_salt(&agent_log.events).unwrap());
    let boot_pcrs = boot_chain(&agent).await;

    let golden = dir.path().join("golden.json");
    let output = cli(&[
        "golden",
        "--workload",
        workload.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--token-salt",
        &salt,
        "--cloud",
        "qemu",
        "--tee",
        "none",
        "--out",
        golden.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // cvm-cli golden with the token reproduces the agent's api-token event exactly.
    let computed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    let token_event = |events: &serde_json::Value| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "api-token")
            .cloned()
            .unwrap()
    };
    assert_eq!(
        token_event(&computed["workload"]["events"]),
        token_event(&serde_json::to_value(&agent_log.events).unwrap())
    );

    pin_boot_chain(&golden, &boot_pcrs);
    let output = verify_host(host.clone(), golden, ak.clone()).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for check in [
        "PASS  nonce",
        "PASS  tls.key",
        // Without a TEE the AK is trusted only because the caller pinned it.
        "PASS  tpm.ak                pinned by the caller",
        "PASS  workload.replay",
        "PASS  workload.measurement",
        "PASS  platform",
    ] {
        assert!(stdout.contains(check), "{check} missing:\n{stdout}");
    }

    // The same workload with another config file: PCR 23 differs, the report names the file.
    let changed = dir.path().join("changed");
    write_workload(&changed, "tampered\n");
    let golden2 = dir.path().join("golden2.json");
    let output = cli(&[
        "golden",
        "--workload",
        changed.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--token-salt",
        &salt,
        "--out",
        golden2.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    pin_boot_chain(&golden2, &boot_pcrs);
    let output = verify_host(host.clone(), golden2, ak).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  workload.measurement"), "{stdout}");
    assert!(stdout.contains("config/message.txt\" changed"), "{stdout}");

    // update-workload packs the changed folder, verifies the VM first, uploads with the token.
    let old_golden = dir.path().join("golden.json");
    let output = update_workload(
        host.clone(),
        &token,
        &changed,
        &old_golden,
        &dir.path().join("ak.pub"),
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Now the running workload is the changed one. `--allow-updates` alone accepts only this
    // workload measured again, so the first generation fails by index; naming the earlier
    // golden as an allowed measurement passes.
    let golden3 = dir.path().join("golden3.json");
    let golden_of_changed = |extra: &[&str]| {
        let mut args = vec![
            "golden",
            "--workload",
            changed.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "--token-salt",
            &salt,
            "--out",
            golden3.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let output = cli(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        pin_boot_chain(&golden3, &boot_pcrs);
    };
    golden_of_changed(&["--allow-updates"]);
    let output = verify_host(host.clone(), golden3.clone(), dir.path().join("ak.pub")).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  workload.updates"), "{stdout}");
    assert!(stdout.contains("generation 1 of 2"), "{stdout}");
    golden_of_changed(&["--allow-measurement", old_golden.to_str().unwrap()]);
    let output = verify_host(host.clone(), golden3.clone(), dir.path().join("ak.pub")).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("replaced 1 time(s) after boot"), "{stdout}");

    // The predecessor's form, with a wrong token: refused, nothing changes.
    let output = tokio::task::spawn_blocking({
        let host = host.clone();
        let workload = workload.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_cvm-cli"))
                .current_dir(workload.parent().unwrap())
                .args([host.as_str(), "wrong-token-0000000000000000000000000"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("HTTP 401"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A man in the middle with its own TLS key, relaying to the real agent: the evidence it
    // relays is genuine but binds the agent's key, so verification fails by name and
    // update-workload never sends the token.
    let mitm = Mitm::start(agent.external_addr).await;
    let output = verify_host(
        mitm.addr.to_string(),
        golden3.clone(),
        dir.path().join("ak.pub"),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  tls.key"), "{stdout}");
    let relayed_before = mitm.relayed_bytes();
    let output = update_workload(
        mitm.addr.to_string(),
        &token,
        &workload,
        &golden3,
        &dir.path().join("ak.pub"),
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing was uploaded"));
    // Only the verification's evidence request went through the relay, never the token.
    assert_eq!(mitm.connections(), 2);
    assert!(mitm.relayed_bytes() > relayed_before);
    drop(agent);
}

/// A TLS-terminating relay with its own key in front of the agent: what an attacker on the path
/// can do without the agent's key.
struct Mitm {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    relayed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Mitm {
    async fn start(agent: std::net::SocketAddr) -> Self {
        use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslMethod, SslVerifyMode};
        use std::sync::atomic::Ordering;
        let key = openssl::pkey::PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut cert = openssl::x509::X509::builder().unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        cert.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let mut acceptor = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).unwrap();
        acceptor.set_private_key(&key).unwrap();
        acceptor.set_certificate(&cert.build()).unwrap();
        let acceptor = std::sync::Arc::new(acceptor.build());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let relayed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (count, bytes) = (connections.clone(), relayed.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, bytes) = (acceptor.clone(), bytes.clone());
                tokio::spawn(async move {
                    let mut client = tokio_openssl::SslStream::new(
                        Ssl::new(acceptor.context()).unwrap(),
                        client,
                    )
                    .unwrap();
                    if std::pin::Pin::new(&mut client).accept().await.is_err() {
                        return;
                    }
                    let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
                    connector.set_verify(SslVerifyMode::NONE);
                    let ssl = connector
                        .build()
                        .configure()
                        .unwrap()
                        .into_ssl("agent")
                        .unwrap();
                    let tcp = tokio::net::TcpStream::connect(agent).await.unwrap();
                    let mut upstream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    std::pin::Pin::new(&mut upstream).connect().await.unwrap();
                    if let Ok((up, down)) =
                        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        bytes.fetch_add((up + down) as usize, Ordering::SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            relayed,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn relayed_bytes(&self) -> usize {
        self.relayed.load(std::sync::atomic::Ordering::SeqCst)
    }
}
