//! `cvm-cli unlock` against bad input (issue 12, docs/data-at-rest.md): a real agent in `pushed`
//! mode on its own swtpm, its golden computed by the real `cvm-cli golden`, every step through the
//! real binary. The data open command stands in for the image's `cvm-data@.service` (LUKS2 with
//! integrity, tested in the production image's boot): a shell script that records every key it is
//! handed and opens only with the volume's key, then "mounts" by seeding the workload folder.

use cvm_agent::config::Config;
use cvm_agent::Agent;
use cvm_attestation::encoding::encode_base64;
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::workload::DataUnlock;
use std::path::{Path, PathBuf};
use std::process::Output;
use test_support::http::get_json;
use test_support::{busybox_image_archive, Swtpm};

mod common;
use common::{agent_config, cli};

const TOKEN: &str = "unlock-test-token-0123456789abcdef0123456789";

/// Appends the key it is handed to `$DIR/keys-seen` (every attempt that reached the volume), then
/// opens only with `$DIR/volume-key` and "mounts": the seed becomes the workload folder.
const OPEN: &str = r#"cat "$KEY" >> "$DIR/keys-seen" && cmp -s "$KEY" "$DIR/volume-key" && cp -r "$DIR/seed" "$DIR/workload""#;

const QEMU: Platform = Platform {
    cloud: Cloud::Qemu,
    tee: Tee::None,
};

fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    openssl::rand::rand_bytes(&mut key).unwrap();
    key
}

fn write_workload(dir: &Path) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        "services:\n  hello:\n    image: localhost/cvm-example/hello:1\n",
    )
    .unwrap();
    std::fs::write(dir.join("config/message.txt"), "on the data partition\n").unwrap();
    let archive = busybox_image_archive("localhost/cvm-example/hello:1", &["sh"], &[]).unwrap();
    std::fs::write(dir.join("hello.tar"), archive.bytes).unwrap();
}

/// A locked VM: a measure-only agent in `pushed` mode, its volume key and seed workload in `dir`.
struct LockedVm {
    agent: Agent,
    dir: tempfile::TempDir,
    _swtpm: Swtpm,
}

impl LockedVm {
    async fn start(volume_key: &[u8]) -> Self {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        std::fs::write(path.join("token"), TOKEN).unwrap();
        std::fs::write(path.join("volume-key"), volume_key).unwrap();
        write_workload(&path.join("seed"));
        let key_file = path.join("run/data/key");
        let script = format!("KEY={} DIR={}; {OPEN}", key_file.display(), path.display());
        let config = Config {
            data_unlock: Some(DataUnlock::Pushed),
            data_key_file: key_file,
            data_open_command: vec!["sh".into(), "-c".into(), script],
            ..agent_config(path, path.join("workload"), swtpm.tcti())
        };
        let agent = Agent::start_with(config, QEMU, Box::new(cvm_attester::NoTee))
            .await
            .unwrap();
        std::fs::write(
            path.join("ak.pub"),
            encode_base64(agent.state.tpm.ak_public()),
        )
        .unwrap();
        Self {
            agent,
            dir,
            _swtpm: swtpm,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Every key the open command was handed, in order.
    fn keys_seen(&self) -> Vec<u8> {
        std::fs::read(self.path("keys-seen")).unwrap_or_default()
    }

    /// What `/health` says about the workload (`locked: ...` while `/data` waits).
    async fn health(&self) -> String {
        let (status, health) = get_json(self.agent.local_addr, "/health").await.unwrap();
        assert_eq!(status, 200, "{health}");
        health["workload"].as_str().unwrap_or_default().to_owned()
    }

    /// The golden of this VM once unlocked with `key`, made by `cvm-cli golden` from the seed, the
    /// token and the salt in the VM's `/eventlog`, with the swtpm's boot PCRs pinned.
    async fn golden(&self, key: &[u8], name: &str) -> PathBuf {
        let (status, log) = get_json(self.agent.local_addr, "/eventlog").await.unwrap();
        assert_eq!(status, 200, "{log}");
        let eventlog = self.path("eventlog.json");
        std::fs::write(&eventlog, log.to_string()).unwrap();
        let key_file = self.path(&format!("{name}.key"));
        std::fs::write(&key_file, key).unwrap();
        let golden = self.path(&format!("{name}.json"));
        let output = cli(&[
            "golden",
            "--workload",
            self.path("seed").to_str().unwrap(),
            "--token-file",
            self.path("token").to_str().unwrap(),
            "--token-salt",
            eventlog.to_str().unwrap(),
            "--cloud",
            "qemu",
            "--tee",
            "none",
            "--data-unlock",
            "pushed",
            "--data-key-file",
            key_file.to_str().unwrap(),
            "--out",
            golden.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", text(&output));
        let mut document: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
        document["pcrs"] = self.boot_chain().await;
        std::fs::write(&golden, document.to_string()).unwrap();
        golden
    }

    /// PCR 4 and 11 as the swtpm quotes them (nothing boots on it): verification needs a boot
    /// chain; the workload part is what this test is about.
    async fn boot_chain(&self) -> serde_json::Value {
        let path = format!("/collaterals/{}", "ab".repeat(16));
        let (status, evidence) = get_json(self.agent.local_addr, &path).await.unwrap();
        assert_eq!(status, 200, "{evidence}");
        let evidence =
            cvm_attestation::Evidence::from_json(evidence.to_string().as_bytes()).unwrap();
        let pcr = |index: u8| {
            let value = hex::encode(evidence.tpm.pcrs.pcrs[&index].as_slice());
            serde_json::json!({"sha256": value, "source": "observed"})
        };
        serde_json::json!({"4": pcr(4), "11": pcr(11)})
    }

    /// `cvm-cli unlock` against this VM, off the runtime the agent serves on.
    async fn unlock(&self, host: &str, golden: &Path, key: &Path, ak: &Path) -> Output {
        let args: Vec<String> = [
            "unlock",
            "--host",
            host,
            "--golden",
            golden.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
            "--token-file",
            self.path("token").to_str().unwrap(),
            "--trusted-ak",
            ak.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        tokio::task::spawn_blocking(move || {
            cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap()
    }

    fn host(&self) -> String {
        self.agent.external_addr.to_string()
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The AK of a TPM made for this run only: not the VM's.
fn fresh_ak(dir: &Path) -> PathBuf {
    let swtpm = Swtpm::start().unwrap();
    let tpm = cvm_agent::tpm_actor::TpmActor::start(
        &swtpm.tcti(),
        QEMU,
        Box::new(cvm_attester::NoTee),
        None,
        Path::new("/nonexistent"),
    )
    .unwrap();
    let path = dir.join("other-ak.pub");
    std::fs::write(&path, encode_base64(tpm.ak_public())).unwrap();
    path
}

/// A golden that fails any check sends nothing (exit 1, the failed check named); a key that does
/// not open the volume gets the agent's 422 and leaves `/data` locked; the right key unlocks; a
/// second unlock is a no-op; a plain-HTTP host is refused before any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_sends_the_key_only_to_a_verified_locked_vm_and_only_once() {
    let key = random_key();
    let vm = LockedVm::start(&key).await;
    assert!(vm.health().await.starts_with("locked"));
    let golden = vm.golden(&key, "right").await;
    let key_file = vm.path("right.key");
    let ak = vm.path("ak.pub");
    let host = vm.host();

    // 1. Evidence that fails one check: nothing is sent, exit 1, the check named.
    let mut changed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    changed["pcrs"]["11"]["sha256"] = hex::encode(random_key()).into();
    let pcr_golden = vm.path("pcr11-changed.json");
    std::fs::write(&pcr_golden, changed.to_string()).unwrap();
    let other_ak = fresh_ak(vm.dir.path());
    let other_token = vm.path("other-token");
    std::fs::write(&other_token, "another-token-0123456789abcdef0123456789").unwrap();
    for (golden, ak, check) in [
        (&pcr_golden, &ak, "FAIL  pcr[11]"),
        (&golden, &other_ak, "FAIL  tpm.ak"),
    ] {
        let output = vm.unlock(&host, golden, &key_file, ak).await;
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(text(&output).contains(check), "{check}:\n{}", text(&output));
        assert!(
            text(&output).contains("the key was not sent"),
            "{}",
            text(&output)
        );
    }
    // The right golden with someone else's token: the locked generation differs.
    let args = [
        "unlock",
        "--host",
        &host,
        "--golden",
        golden.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
        "--token-file",
        other_token.to_str().unwrap(),
        "--trusted-ak",
        ak.to_str().unwrap(),
    ]
    .map(str::to_owned);
    let output = tokio::task::spawn_blocking(move || cli(&args.each_ref().map(String::as_str)))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("FAIL  workload.measurement"),
        "{}",
        text(&output)
    );
    assert!(vm.keys_seen().is_empty(), "a key reached the volume");
    assert!(vm.health().await.starts_with("locked"));

    // 2. A key file the golden was not made for: refused before anything is sent.
    let wrong = random_key();
    let wrong_file = vm.path("wrong.key");
    std::fs::write(&wrong_file, &wrong).unwrap();
    let output = vm.unlock(&host, &golden, &wrong_file, &ak).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("commits to another data key"),
        "{}",
        text(&output)
    );
    assert!(vm.keys_seen().is_empty(), "a key reached the volume");
    // A golden made for that wrong key: the VM verifies, the key is sent, the volume refuses it.
    let wrong_golden = vm.golden(&wrong, "wrong").await;
    let output = vm.unlock(&host, &wrong_golden, &wrong_file, &ak).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("HTTP 422"), "{}", text(&output));
    assert!(
        text(&output).contains("did not open /data"),
        "{}",
        text(&output)
    );
    assert_eq!(
        vm.keys_seen(),
        wrong,
        "the attempt did not reach the volume"
    );
    assert!(vm.health().await.starts_with("locked"));
    assert!(!vm.path("workload").exists());
    assert!(!vm.path("run/data/key").exists(), "a refused key was kept");

    // 3. The right golden and key: verified, sent, opened, measured.
    let output = vm.unlock(&host, &golden, &key_file, &ak).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("/data unlocked"),
        "{}",
        text(&output)
    );
    assert_eq!(vm.keys_seen(), [wrong.as_slice(), &key].concat());
    assert!(!vm.health().await.starts_with("locked"));
    // The unlocked VM meets the whole golden.
    let output = tokio::task::spawn_blocking({
        let (host, golden, ak) = (host.clone(), golden.clone(), ak.clone());
        move || {
            cli(&[
                "verify",
                "--host",
                &host,
                "--golden",
                golden.to_str().unwrap(),
                "--trusted-ak",
                ak.to_str().unwrap(),
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("PASS  data.encryption"),
        "{}",
        text(&output)
    );

    // 4. Again: verified against the whole golden, nothing sent, nothing changed.
    let log = get_json(vm.agent.local_addr, "/eventlog").await.unwrap();
    let output = vm.unlock(&host, &golden, &key_file, &ak).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("unlocked already with this key: nothing sent"),
        "{}",
        text(&output)
    );
    assert_eq!(vm.keys_seen(), [wrong.as_slice(), &key].concat());
    assert_eq!(
        get_json(vm.agent.local_addr, "/eventlog").await.unwrap(),
        log
    );

    // Plain HTTP: refused before any connection is made.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let plain = format!("http://{}", listener.local_addr().unwrap());
    let output = vm.unlock(&plain, &golden, &key_file, &ak).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("only over TLS"), "{}", text(&output));
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "cvm-cli connected to the plain-HTTP host"
    );
}
