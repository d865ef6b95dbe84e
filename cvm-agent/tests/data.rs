//! The data partition's key (docs/data-at-rest.md), on a measure-only agent with its own swtpm.
//! The open command stands in for the image's `cvm-data@.service` (LUKS2 + integrity, mount): a
//! shell script that accepts exactly one key and then "mounts" by seeding the workload folder, so
//! what the agent measures, refuses and records is real; the dm-crypt part is tested in the
//! production image's boot.

use cvm_agent::config::Config;
use cvm_agent::data::DataVolume;
use cvm_agent::Agent;
use cvm_attestation::encoding::encode_base64;
use cvm_attestation::evidence::{Cloud, Platform, Tee};
use cvm_attestation::workload::data::{key_commitment, SealRoot};
use cvm_attestation::workload::{replay, DataState, DataUnlock, TokenCommitment, WorkloadEvent};
use cvm_attester::seal::{
    field_select, sealer_for, DerivedKeyRequest, DerivedKeyRoot, DerivedKeySource, KeySealer,
    SealError, SnpDerivedKey, VtpmSealer,
};
use cvm_attester::NoTee;
use serde_json::json;
use std::path::{Path, PathBuf};
use test_support::http::{get_json, request};
use test_support::{busybox_image_archive, Swtpm};

const TOKEN: &str = "data-test-token-0123456789abcdef0123456789";

struct Vm {
    agent: Agent,
    dir: tempfile::TempDir,
    _swtpm: Swtpm,
}

/// A workload folder (compose file, config, image archive) at `dir`.
fn write_workload(dir: &Path, message: &str) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        "services:\n  hello:\n    image: localhost/cvm-example/hello:1\n",
    )
    .unwrap();
    std::fs::write(dir.join("config/message.txt"), message).unwrap();
    let archive = busybox_image_archive("localhost/cvm-example/hello:1", &["sh"], &[]).unwrap();
    std::fs::write(dir.join("hello.tar"), archive.bytes).unwrap();
}

fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    openssl::rand::rand_bytes(&mut key).unwrap();
    key
}

/// A measure-only agent's configuration in `dir` on `swtpm`, whose data open command is the shell
/// script `open` (`$KEY` is the key file, `$DIR` the VM's directory).
fn config(dir: &Path, swtpm: &Swtpm, mode: DataUnlock, open: &str) -> Config {
    let key_file = dir.join("run/data/key");
    let script = format!("KEY={} DIR={}; {open}", key_file.display(), dir.display());
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
        data_unlock: Some(mode),
        data_key_file: key_file,
        data_open_command: vec!["sh".into(), "-c".into(), script],
        ..Config::default()
    }
}

const QEMU: Platform = Platform {
    cloud: Cloud::Qemu,
    tee: Tee::None,
};

impl Vm {
    async fn start(mode: DataUnlock, open: &str, seed: bool) -> Self {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        if seed {
            write_workload(&dir.path().join("seed"), "on the data partition\n");
        }
        let config = config(dir.path(), &swtpm, mode, open);
        let agent = Agent::start_with(config, QEMU, Box::new(NoTee))
            .await
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

    async fn events(&self) -> Vec<WorkloadEvent> {
        self.agent.state.workloads.measured().await.log.events
    }

    async fn unlock(&self, token: &str, key: &[u8]) -> test_support::http::HttpResponse {
        let body = json!({ "key": encode_base64(key) }).to_string();
        request(
            self.agent.external_addr,
            "POST",
            "/unlock",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
        .unwrap()
    }
}

/// Copies the key to `$DIR/seen-key` (to check what the agent handed over) and "mounts".
const ACCEPT_ANY: &str = r#"cp "$KEY" "$DIR/seen-key" && mkdir -p "$DIR/workload""#;

#[tokio::test]
async fn ephemeral_keys_are_fresh_never_kept_and_recorded() {
    let vm = Vm::start(DataUnlock::Ephemeral, ACCEPT_ANY, false).await;
    let key = std::fs::read(vm.path("seen-key")).unwrap();
    assert_eq!(key.len(), 64, "a 512-bit key");
    assert!(key.iter().any(|&b| b != 0));
    assert!(
        !vm.path("run/data/key").exists(),
        "the key file outlived the open command"
    );
    let events = vm.events().await;
    assert_eq!(
        events.iter().find_map(DataState::of),
        Some(DataState::Ephemeral)
    );
    let pcr = vm.agent.state.tpm.read_pcr23().await.unwrap();
    assert_eq!(hex::encode(pcr), replay(&events).to_hex());

    // Another boot, another key.
    let other = Vm::start(DataUnlock::Ephemeral, ACCEPT_ANY, false).await;
    assert_ne!(std::fs::read(other.path("seen-key")).unwrap(), key);
}

#[tokio::test]
async fn an_ephemeral_volume_that_does_not_open_stops_the_start() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let config = config(dir.path(), &swtpm, DataUnlock::Ephemeral, "exit 3");
    let error = match Agent::start_with(config, QEMU, Box::new(NoTee)).await {
        Ok(_) => panic!("started with /data unopened"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("opening /data"), "{error}");
    assert!(error.contains("exit status: 3"), "{error}");
    // Nothing was measured: PCR 23 stays zero for the next attempt.
    assert_eq!(swtpm_pcr23(&swtpm).await, [0u8; 32]);
}

async fn swtpm_pcr23(swtpm: &Swtpm) -> [u8; 32] {
    let tpm = cvm_agent::tpm_actor::TpmActor::start(
        &swtpm.tcti(),
        QEMU,
        Box::new(NoTee),
        None,
        Path::new("/nonexistent"),
    )
    .unwrap();
    tpm.read_pcr23().await.unwrap()
}

#[tokio::test]
async fn pushed_keys_open_data_only_with_the_token_and_the_right_key() {
    let key = random_key();
    // The volume opens with exactly this key, then "mounts" (seeds the workload folder).
    let open = r#"cmp -s "$KEY" "$DIR/volume-key" && cp -r "$DIR/seed" "$DIR/workload""#;
    let vm = Vm::start(DataUnlock::Pushed, open, true).await;
    std::fs::write(vm.path("volume-key"), &key).unwrap();

    // Locked: an empty generation, nothing of /data read, updates refused.
    let events = vm.events().await;
    assert_eq!(
        events.iter().find_map(DataState::of),
        Some(DataState::Locked)
    );
    assert!(!vm.path("workload").exists());
    let (status, health) = get_json(vm.agent.external_addr, "/health").await.unwrap();
    assert_eq!(status, 200, "{health}");
    // The engine (its storage is on /data) is not asked while locked.
    assert!(
        health["workload"].as_str().unwrap().starts_with("locked"),
        "{health}"
    );

    // No token, a wrong token, a short key, a wrong key: /data stays locked.
    let response = request(
        vm.agent.external_addr,
        "POST",
        "/unlock",
        &[("Content-Type", "application/json")],
        json!({ "key": encode_base64(&key) }).to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 401, "{}", response.text());
    let wrong_token = vm.unlock("not-the-token-0123456789abcdef0123", &key).await;
    assert_eq!(wrong_token.status, 401, "{}", wrong_token.text());
    let short = vm.unlock(TOKEN, b"short").await;
    assert_eq!(short.status, 422, "{}", short.text());
    assert!(short.text().contains("32 or 64"), "{}", short.text());
    let wrong = vm.unlock(TOKEN, &random_key()).await;
    assert_eq!(wrong.status, 422, "{}", wrong.text());
    assert!(
        wrong.text().contains("did not open /data"),
        "{}",
        wrong.text()
    );
    assert!(!vm.path("run/data/key").exists(), "a refused key was kept");
    assert_eq!(vm.events().await, events, "a refused key changed the log");

    // The right key: the workload on /data is measured with the key's commitment.
    let response = vm.unlock(TOKEN, &key).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json().unwrap()["already_unlocked"], false);
    let log = vm.events().await;
    let salt = TokenCommitment::first_salt(&log).unwrap();
    let token = TokenCommitment::new(salt, TOKEN);
    let pushed = DataState::Pushed(key_commitment(&key).unwrap());
    let folder = cvm_attestation::workload::WorkloadFolder::read(&vm.path("workload")).unwrap();
    let ids = [(
        "localhost/cvm-example/hello:1".to_owned(),
        cvm_attestation::workload::archived_images(
            std::fs::File::open(vm.path("workload/hello.tar")).unwrap(),
        )
        .unwrap()[0]
            .image_id
            .clone(),
    )]
    .into();
    let second = folder
        .events_with_data(&ids, Some(&token), Some(pushed))
        .unwrap();
    let expected: Vec<WorkloadEvent> = events.iter().cloned().chain(second).collect();
    assert_eq!(log, expected);
    let pcr = vm.agent.state.tpm.read_pcr23().await.unwrap();
    assert_eq!(hex::encode(pcr), replay(&expected).to_hex());

    // Twice: a no-op, even with another key.
    let again = vm.unlock(TOKEN, &random_key()).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json().unwrap()["already_unlocked"], true);
    assert_eq!(vm.events().await, expected);
}

#[tokio::test]
async fn unlock_is_refused_where_the_key_is_not_pushed() {
    let vm = Vm::start(DataUnlock::Ephemeral, ACCEPT_ANY, false).await;
    let response = vm.unlock(TOKEN, &random_key()).await;
    assert_eq!(response.status, 409, "{}", response.text());
    assert!(response.text().contains("ephemeral"), "{}", response.text());
}

/// A LUKS-like volume: the first key formats it (`$DIR/volume-key`), later ones must be that key;
/// the key that opened it last is kept in `$DIR/seen-key` for the test to compare.
const FIRST_KEY_FORMATS: &str = r#"if [ -e "$DIR/volume-key" ]; then cmp -s "$KEY" "$DIR/volume-key"; else cp "$KEY" "$DIR/volume-key"; fi && cp "$KEY" "$DIR/seen-key""#;

/// A sealed-mode volume in `dir` with this root of trust: what the agent builds at each boot.
fn sealed_volume(dir: &Path, sealer: Box<dyn KeySealer>) -> DataVolume {
    let key_file = dir.join("run/data/key");
    let script = format!(
        "KEY={} DIR={}; {FIRST_KEY_FORMATS}",
        key_file.display(),
        dir.display()
    );
    DataVolume::new(
        DataUnlock::Sealed,
        key_file,
        vec!["sh".into(), "-c".into(), script],
    )
    .with_sealer(sealer)
}

/// Azure's vTPM, played by swtpm: the key made at the first boot is unsealed at the next ones
/// (a new TPM connection and volume each time, as after a reboot), and no longer once PCR 11 (the
/// UKI) differs; nothing is opened then, and no new key replaces the sealed one.
#[tokio::test]
async fn a_vtpm_sealed_key_survives_restarts_and_not_a_changed_pcr() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let boot = || {
        let sealer = VtpmSealer::open(&swtpm.tcti()).unwrap();
        sealed_volume(dir.path(), Box::new(sealer))
    };
    let state = boot().at_start().await.unwrap();
    assert_eq!(state, DataState::Sealed(SealRoot::AzureVtpm));
    let key = std::fs::read(dir.path().join("seen-key")).unwrap();
    assert_eq!(key.len(), 64);
    assert!(
        !dir.path().join("run/data/key").exists(),
        "the key file was kept"
    );

    for _ in 0..2 {
        std::fs::remove_file(dir.path().join("seen-key")).unwrap();
        assert_eq!(boot().at_start().await.unwrap(), state);
        assert_eq!(std::fs::read(dir.path().join("seen-key")).unwrap(), key);
    }

    // Another UKI: PCR 11 differs, the policy fails, /data stays shut.
    std::fs::remove_file(dir.path().join("seen-key")).unwrap();
    let mut tpm = cvm_attester::Tpm::open(&swtpm.tcti()).unwrap();
    tpm.extend_sha256(11, &[0x11; 32]).unwrap();
    let error = boot().at_start().await.unwrap_err().to_string();
    assert!(error.contains("did not unseal"), "{error}");
    assert!(error.contains("PCR [4, 9, 11]"), "{error}");
    assert!(
        !dir.path().join("seen-key").exists(),
        "opened with a changed PCR"
    );
    assert!(!dir.path().join("run/data/key").exists());
    assert_eq!(
        std::fs::read(dir.path().join("volume-key")).unwrap(),
        key,
        "the volume's key changed"
    );
}

/// TEST-ONLY stand-in for the SEV-SNP firmware's MSG_KEY_REQ (no SNP hardware here): SHA-256 of
/// a per-test "chip" secret and the launch fields the request selects. It has no security; it
/// lets the agent's sealed path run and shows which fields the request mixes in.
struct TestSnpFirmware {
    chip: [u8; 32],
    measurement: [u8; 48],
    policy: u64,
    asked: std::sync::Arc<std::sync::Mutex<Vec<DerivedKeyRequest>>>,
}

impl DerivedKeySource for TestSnpFirmware {
    fn derived_key(&mut self, request: &DerivedKeyRequest) -> Result<[u8; 32], SealError> {
        use sha2::{Digest, Sha256};
        self.asked.lock().unwrap().push(*request);
        let mut kdf = Sha256::new();
        kdf.update(b"TEST-ONLY snp derived key\0");
        kdf.update(self.chip);
        kdf.update(request.field_select.to_le_bytes());
        kdf.update(request.vmpl.to_le_bytes());
        if request.field_select & field_select::MEASUREMENT != 0 {
            kdf.update(self.measurement);
        }
        if request.field_select & field_select::GUEST_POLICY != 0 {
            kdf.update(self.policy.to_le_bytes());
        }
        Ok(kdf.finalize().into())
    }
}

/// SEV-SNP: the firmware-derived key opens `/data` again at the next launch of the same image
/// with the same policy, and another measurement or policy gets another key, which the volume
/// refuses. The request asks for the VCEK root with the measurement and the policy mixed in.
#[tokio::test]
async fn an_snp_derived_key_opens_data_only_for_the_same_launch() {
    let dir = tempfile::tempdir().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut chip = [0u8; 32];
    openssl::rand::rand_bytes(&mut chip).unwrap();
    let launch = |measurement: [u8; 48], policy: u64| {
        let firmware = TestSnpFirmware {
            chip,
            measurement,
            policy,
            asked: asked.clone(),
        };
        sealed_volume(dir.path(), Box::new(SnpDerivedKey::new(firmware)))
    };
    let (measurement, policy) = ([0x4d; 48], 0x30000);
    let state = launch(measurement, policy).at_start().await.unwrap();
    assert_eq!(state, DataState::Sealed(SealRoot::SnpDerivedKey));
    let key = std::fs::read(dir.path().join("seen-key")).unwrap();
    assert_eq!(launch(measurement, policy).at_start().await.unwrap(), state);
    assert_eq!(std::fs::read(dir.path().join("seen-key")).unwrap(), key);

    for (other_measurement, other_policy) in [([0x4e; 48], policy), (measurement, 0x30001)] {
        let error = launch(other_measurement, other_policy)
            .at_start()
            .await
            .unwrap_err();
        assert!(
            matches!(error, cvm_agent::data::DataError::Open { .. }),
            "{error}"
        );
    }
    let asked = asked.lock().unwrap();
    assert!(asked.iter().all(|r| *r
        == DerivedKeyRequest {
            root: DerivedKeyRoot::Vcek,
            field_select: field_select::MEASUREMENT | field_select::GUEST_POLICY,
            vmpl: 0,
        }));
    assert_eq!(asked.len(), 4);
}

/// Where the only TPM is the host's (GCP's and AWS's vTPMs, a local swtpm), `sealed` is refused,
/// saying why and what to use instead; TDX has no sealing root here yet.
#[test]
fn sealed_is_refused_where_the_only_tpm_is_the_hosts() {
    for cloud in [Cloud::Gcp, Cloud::Aws, Cloud::Qemu] {
        let platform = Platform {
            cloud,
            tee: Tee::None,
        };
        let error = match sealer_for(platform, "swtpm:port=1") {
            Ok(_) => panic!("{cloud:?} without a TEE offered a sealer"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("is the host's"), "{error}");
        assert!(error.contains("use \"pushed\""), "{error}");
    }
    let tdx = Platform {
        cloud: Cloud::Gcp,
        tee: Tee::Tdx,
    };
    assert!(matches!(
        sealer_for(tdx, "swtpm:port=1"),
        Err(SealError::Refused { .. })
    ));
    // SEV-SNP outside Azure: the firmware's derived key (no TPM involved).
    let snp = Platform {
        cloud: Cloud::Gcp,
        tee: Tee::SevSnp,
    };
    let sealer = sealer_for(snp, "swtpm:port=1").unwrap();
    assert_eq!(sealer.root(), SealRoot::SnpDerivedKey);
}

/// Through the whole agent: a `sealed` deployment where no TEE keeps the key (this QEMU test
/// machine) does not start, says why, and measures nothing.
#[tokio::test]
async fn an_agent_without_a_tee_refuses_sealed_and_measures_nothing() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let config = config(dir.path(), &swtpm, DataUnlock::Sealed, ACCEPT_ANY);
    let error = match Agent::start_with(config, QEMU, Box::new(NoTee)).await {
        Ok(_) => panic!("started sealed without a TEE"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("opening /data"), "{error}");
    assert!(error.contains("\"sealed\" is refused"), "{error}");
    assert!(error.contains("is the host's"), "{error}");
    assert!(!dir.path().join("seen-key").exists());
    assert_eq!(swtpm_pcr23(&swtpm).await, [0u8; 32]);
}
