//! `cvm-cli golden` computes the golden values offline from the workload folder; `cvm-cli verify
//! --host` fetches evidence from a real agent (on a real swtpm) over a fresh nonce and passes
//! every check; a changed config file fails with a readable difference.

use cvm_agent::config::Config;
use cvm_agent::Agent;
use cvm_attestation::encoding::encode_base64;
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use std::path::Path;
use std::process::Command;
use test_support::{busybox_image_archive, Swtpm};

mod common;
use common::cli;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_offline_then_verify_a_running_agent() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("workload");
    write_workload(&workload, "hello\n");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = Config {
        workload_dir: workload.clone(),
        state_dir: dir.path().join("run"),
        local_listen: "127.0.0.1:0".parse().unwrap(),
        external_listen: "127.0.0.1:0".parse().unwrap(),
        local_socket: None,
        tcti: swtpm.tcti(),
        api_token_file: Some(token.clone()),
        firmware_event_log: None,
        measure_only: true,
        ..Config::default()
    };
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

    let golden = dir.path().join("golden.json");
    let output = cli(&[
        "golden",
        "--workload",
        workload.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
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
        "PASS  tee.none",
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
        "--out",
        golden2.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let output = verify_host(host.clone(), golden2, ak).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  workload.measurement"), "{stdout}");
    assert!(stdout.contains("config/message.txt\" changed"), "{stdout}");

    // update-workload packs the changed folder, verifies the VM first, uploads with the token.
    let old_golden = dir.path().join("golden.json");
    let output = tokio::task::spawn_blocking({
        let (host, token, changed, golden, ak) = (
            host.clone(),
            token.clone(),
            changed.clone(),
            old_golden.clone(),
            dir.path().join("ak.pub"),
        );
        move || {
            cli(&[
                "update-workload",
                "--host",
                &host,
                "--token-file",
                token.to_str().unwrap(),
                "--workload",
                changed.to_str().unwrap(),
                "--golden",
                golden.to_str().unwrap(),
                "--trusted-ak",
                ak.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Now the running workload is the changed one: its golden (with updates allowed) passes.
    let golden3 = dir.path().join("golden3.json");
    let output = cli(&[
        "golden",
        "--workload",
        changed.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--allow-updates",
        "--out",
        golden3.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let output = verify_host(host.clone(), golden3, dir.path().join("ak.pub")).await;
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
    drop(agent);
}
