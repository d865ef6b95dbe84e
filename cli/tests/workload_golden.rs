//! `cvm-cli golden` and what a workload folder may bring in unmeasured: host paths mounted from
//! outside the folder are refused unless named with `--allow-host-mount`, and are then measured
//! as `host-mount` events; the token needs the agent's salt.

use std::path::Path;

mod common;
use common::cli;

const IMAGE: &str = "localhost/app:1";

/// Random hex, so every run measures data no earlier run saw.
fn fresh() -> String {
    let mut bytes = [0u8; 8];
    openssl::rand::rand_bytes(&mut bytes).unwrap();
    hex::encode(bytes)
}

fn image_arg() -> String {
    format!("{IMAGE}=sha256:{}", "c".repeat(64))
}

/// A folder whose service mounts the host's /etc and the engine socket, plus code of its own.
fn write_folder(dir: &Path, target: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            "services:\n  app:\n    image: {IMAGE}\n    volumes:\n      - ./app.py:/app/app.py:ro\n      - /etc:{target}:ro\n      - /var/run/docker.sock:/var/run/docker.sock\n      - cache:/cache\n      - ${{CVM_AGENT_SOCKET_DIR:-/run/cvm-agent/api}}:/run/cvm-agent/api:ro\nvolumes:\n  cache: {{}}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("app.py"), format!("print('{}')\n", fresh())).unwrap();
}

fn golden(dir: &Path, extra: &[&str]) -> std::process::Output {
    let image = image_arg();
    let mut args = vec![
        "golden",
        "--workload",
        dir.to_str().unwrap(),
        "--image",
        &image,
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

#[test]
fn host_mounts_must_be_allowed_by_name_and_are_then_measured() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("/host-etc-{}", fresh());
    write_folder(dir.path(), &target);

    // Refused, naming the mount and the flag; the first refused path (in byte order) is /etc.
    let output = golden(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("host path \"/etc\""), "{stderr}");
    assert!(
        stderr.contains(&format!("service app: {target} (ro)")),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-host-mount \"/etc\""), "{stderr}");
    // Allowing one is not allowing the other.
    let output = golden(dir.path(), &["--allow-host-mount", "/etc"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("/var/run/docker.sock"), "{stderr}");

    let output = golden(
        dir.path(),
        &[
            "--allow-host-mount",
            "/etc",
            "--allow-host-mount",
            "/var/run/docker.sock",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let events = document["workload"]["events"].as_array().unwrap();
    let mounts: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "host-mount")
        .map(|e| (e["name"].as_str().unwrap(), e["payload"].as_str().unwrap()))
        .collect();
    let etc_use = format!("service app: {target} (ro)");
    assert_eq!(
        mounts,
        [
            (
                "${CVM_AGENT_SOCKET_DIR:-/run/cvm-agent/api}",
                "service app: /run/cvm-agent/api (ro)"
            ),
            ("/etc", etc_use.as_str()),
            (
                "/var/run/docker.sock",
                "service app: /var/run/docker.sock (rw)"
            ),
        ]
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "file" && e["name"] == "app.py"),
        "{document:#}"
    );
}

#[test]
fn the_token_needs_the_agents_salt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        format!("services: {{a: {{image: {IMAGE}}}}}"),
    )
    .unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        format!("{}{}{}{}", fresh(), fresh(), fresh(), fresh()),
    )
    .unwrap();
    let output = golden(dir.path(), &["--token-file", token.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--token-salt"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Two salts, the same token: two digests, each with its salt beside it.
    let mut digests = Vec::new();
    for _ in 0..2 {
        let salt = format!("{}{}{}{}", fresh(), fresh(), fresh(), fresh());
        let output = golden(
            dir.path(),
            &[
                "--token-file",
                token.to_str().unwrap(),
                "--token-salt",
                &salt,
            ],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let event = document["workload"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "api-token")
            .cloned()
            .unwrap();
        assert_eq!(event["payload"], salt.as_str());
        digests.push(event["payload_digest"].clone());
    }
    assert_ne!(digests[0], digests[1]);
    let output = golden(
        dir.path(),
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--token-salt",
            "not-a-salt-or-file",
        ],
    );
    assert!(!output.status.success());
}
