//! Fault injection (docs/agent.md, "Failure behaviour"): the real `cvm-agent` binary on swtpm
//! and a real Docker engine, killed with SIGKILL at every step of an update (through its debug
//! build's fail-points, `CVM_AGENT_FAULT`), its engine gone under it, its data folder full, its
//! TPM cut off mid-update, its persisted log corrupt. After each: the agent comes back (or
//! refuses, saying why), its log replays to the PCR 23 its evidence quotes, and what runs is the
//! log's last generation with nothing of the previous workload lost.

use cvm_agent::fault::Step;
use cvm_attestation::workload::{
    archived_images, replay, TokenCommitment, WorkloadEvent, WorkloadFolder, WorkloadLog,
};
use cvm_attestation::Evidence;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::http::{request, HttpResponse};
use test_support::{busybox_image_archive, ContainerEngine, EngineKind, Swtpm};

const TOKEN: &str = "test-token-0123456789abcdef0123456789abcdef";
const IMAGE: &str = "localhost/cvm-example/hello:1";
/// Never measured (docs/measurement.md), so only its presence shows nothing was lost.
const SECRET: &str = "secrets/db-password";

/// A VM stand-in: swtpm (or the address the agent reaches it at), the data folder, and the
/// agent's configuration.
struct Vm {
    dir: tempfile::TempDir,
    workload_dir: PathBuf,
    tcti: String,
    settings: String,
    image: Vec<u8>,
}

/// One run of the agent binary, with its stdout and stderr collected.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    external: SocketAddr,
}

impl Vm {
    /// A VM whose workload folder holds a workload printing `message`; `settings` are added to
    /// the agent's configuration.
    fn new(tcti: String, settings: &str, message: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Self::with_data_in(dir, tcti, settings, message, &data)
    }

    /// The same with the workload folder in `data` (a small disk).
    fn with_data(tcti: String, settings: &str, message: &str, data: &Path) -> Self {
        Self::with_data_in(tempfile::tempdir().unwrap(), tcti, settings, message, data)
    }

    fn with_data_in(
        dir: tempfile::TempDir,
        tcti: String,
        settings: &str,
        message: &str,
        data: &Path,
    ) -> Self {
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let image = busybox_image_archive(IMAGE, &["sh"], &[]).unwrap().bytes;
        let vm = Vm {
            dir,
            workload_dir: data.join("workload"),
            tcti,
            settings: settings.to_owned(),
            image,
        };
        write_workload(&vm.workload_dir(), message, &vm.image, false);
        vm
    }

    fn workload_dir(&self) -> PathBuf {
        self.workload_dir.clone()
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("run/workload-state.json")
    }

    /// Starts the agent with `fault` as its `CVM_AGENT_FAULT`; returns its process once it
    /// serves, or its exit status and output when it exits first.
    fn start(&self, fault: Option<Step>) -> Result<Running, (ExitStatus, String)> {
        let config = format!(
            "workload_dir = {:?}\nstate_dir = {:?}\nlocal_socket = {:?}\n\
             local_listen = \"127.0.0.1:0\"\nexternal_listen = \"127.0.0.1:0\"\n\
             external_tls = false\ntcti = {:?}\napi_token_file = {:?}\ncloud = \"qemu\"\n\
             tee = \"none\"\nmax_upload_bytes = 8388608\n{}",
            self.workload_dir(),
            self.dir.path().join("run"),
            self.dir.path().join("run/api/api.sock"),
            self.tcti,
            self.dir.path().join("token"),
            self.settings,
        );
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cvm-agent"));
        command
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("CVM_AGENT_FAULT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(step) = fault {
            command.env("CVM_AGENT_FAULT", step.name());
        }
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        collect_lines(child.stdout.take().unwrap(), &log);
        collect_lines(child.stderr.take().unwrap(), &log);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let serving = log
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(" serving"))
                .map(str::to_owned);
            if let Some(line) = serving {
                let external = field(&line, "external_addr").parse().unwrap();
                return Ok(Running {
                    child,
                    log,
                    external,
                });
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                let output = log.lock().unwrap().clone();
                return Err((status, output));
            }
            assert!(Instant::now() < deadline, "{}", log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the agent must have measured for `dir`: the events offline, with the salt it
    /// published in its first api-token event.
    fn offline_events(&self, dir: &Path, log: &WorkloadLog) -> Vec<WorkloadEvent> {
        let ids: BTreeMap<String, String> = archived_images(self.image.as_slice())
            .unwrap()
            .into_iter()
            .flat_map(|image| {
                image
                    .tags
                    .into_iter()
                    .map(move |t| (t, image.image_id.clone()))
            })
            .collect();
        let salt = TokenCommitment::first_salt(&log.events).expect("a salted api-token event");
        WorkloadFolder::read(dir)
            .unwrap()
            .events(&ids, Some(&TokenCommitment::new(salt, TOKEN)))
            .unwrap()
    }
}

impl Running {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the process to end (within 60 s).
    fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn get(&self, path: &str) -> HttpResponse {
        let authorization = format!("Bearer {TOKEN}");
        let headers = [("Authorization", authorization.as_str())];
        request(self.external, "GET", path, &headers, b"")
            .await
            .unwrap()
    }

    async fn upload(&self, body: &[u8]) -> anyhow::Result<HttpResponse> {
        let authorization = format!("Bearer {TOKEN}");
        let headers = [
            ("Authorization", authorization.as_str()),
            ("Content-Type", "application/x-tar"),
        ];
        request(self.external, "POST", "/update-workload", &headers, body).await
    }

    /// Fresh evidence, and the log the agent serves: the log must replay to the PCR 23 that
    /// the evidence quotes and be the very log the evidence carries.
    async fn consistent_log(&self) -> WorkloadLog {
        let mut nonce = [0u8; 16];
        openssl::rand::rand_bytes(&mut nonce).unwrap();
        let response = self
            .get(&format!("/collaterals/{}", hex::encode(nonce)))
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
        let evidence = Evidence::from_json(&response.body).unwrap();
        let quoted = evidence.tpm.pcrs.pcrs.get(&23).expect("PCR 23 quoted");
        let response = self.get("/eventlog").await;
        assert_eq!(response.status, 200, "{}", response.text());
        let log: WorkloadLog = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(
            log.replay().0.as_slice(),
            quoted.as_slice(),
            "the log does not replay to PCR 23:\n{}",
            self.log()
        );
        assert_eq!(evidence.event_logs.workload.as_ref(), Some(&log));
        log
    }

    /// Waits until the workload's container has printed `message` (containers start
    /// asynchronously) and is running.
    async fn wait_for_container(&self, message: &str) {
        let mut last = String::new();
        for _ in 0..150 {
            let response = self.get("/container-logs?name=hello").await;
            last = response.text();
            let health = self.get("/health").await.text();
            if response.status == 200 && last.contains(message) && health.contains("running") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "the container never printed {message:?}: {last}\n{}",
            self.log()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(output: impl std::io::Read + Send + 'static, log: &Arc<Mutex<String>>) {
    let sink = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// `name=value` in a log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
    line[start..].split_whitespace().next().unwrap()
}

/// The compose file: prints the measured message, then stays up (and stops at once when
/// asked: `$$` is compose's escape for `$`). `broken` names a user the
/// image does not have, so the container cannot start (an update that must roll back).
fn compose(broken: bool) -> String {
    let user = if broken {
        "    user: no-such-user\n"
    } else {
        ""
    };
    format!(
        "services:\n  hello:\n    image: {IMAGE}\n{user}    command: [\"sh\", \"-c\", \
         \"trap 'exit 0' TERM; cat /config/message.txt; while true; do sleep 3600 & wait $$!; \
         done\"]\n    volumes:\n      - ./config:/config:ro\n"
    )
}

fn workload_files<'a>(
    message: &'a str,
    image: &'a [u8],
    compose: &'a str,
) -> [(&'static str, &'a [u8]); 4] {
    [
        ("docker-compose.yml", compose.as_bytes()),
        ("config/message.txt", message.as_bytes()),
        (SECRET, b"kept across every fault"),
        ("hello.tar", image),
    ]
}

fn write_workload(dir: &Path, message: &str, image: &[u8], broken: bool) {
    let compose = compose(broken);
    for (name, bytes) in workload_files(message, image, &compose) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// The workload as an upload (tar), with `extra` files added.
fn workload_tar(message: &str, image: &[u8], broken: bool, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let compose = compose(broken);
    let mut archive = tar::Builder::new(Vec::new());
    for (name, bytes) in workload_files(message, image, &compose)
        .into_iter()
        .chain(extra.iter().copied())
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, bytes).unwrap();
    }
    archive.into_inner().unwrap()
}

/// The folder holds exactly the workload printing `message`, the unmeasured secret included;
/// no staging folder is left beside it.
fn assert_folder(vm: &Vm, message: &str) {
    let dir = vm.workload_dir();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert_eq!(read("config/message.txt"), message);
    assert_eq!(read(SECRET), "kept across every fault");
    let staging: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".staging-"))
        .collect();
    assert!(staging.is_empty(), "left behind: {staging:?}");
}

/// The log's last generation is the folder's workload.
fn assert_last_generation_is_folder(vm: &Vm, log: &WorkloadLog) {
    let generations = log.generations().unwrap();
    let last = generations.last().unwrap();
    let expected = vm.offline_events(&vm.workload_dir(), log);
    assert_eq!(
        replay(*last),
        replay(&expected),
        "last generation: {last:#?}"
    );
}

/// Which workload must run after the agent was killed at `step`: the new one only once it had
/// started; before that the previous one, measured again when the new one reached PCR 23.
fn survivor(step: Step) -> bool {
    step == Step::Start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_step_of_an_update_and_restart() {
    if !cfg!(debug_assertions) {
        panic!("the agent's fail-points exist in debug builds only: run this without --release");
    }
    let swtpm = Swtpm::start().unwrap();
    let engine = ContainerEngine::start(EngineKind::Docker).unwrap();
    let settings = format!("engine_socket = {:?}\n", engine.socket());
    let vm = Vm::new(swtpm.tcti(), &settings, "generation 0\n");
    let first = vm
        .start(None)
        .unwrap_or_else(|(s, log)| panic!("{s}:\n{log}"));
    first.wait_for_container("generation 0").await;
    let mut generations = first.consistent_log().await.generations().unwrap().len();
    drop(first);
    let mut running = "generation 0\n".to_owned();

    for step in Step::ALL {
        let started = Instant::now();
        let message = format!("update killed at {}\n", step.name());
        let broken = step == Step::Rollback;
        let mut agent = vm
            .start(Some(step))
            .unwrap_or_else(|(s, log)| panic!("{step:?}: {s}:\n{log}"));
        let upload = workload_tar(&message, &vm.image, broken, &[]);
        let answer = agent.upload(&upload).await;
        assert!(
            answer.is_err(),
            "{step:?}: answered {:?}",
            answer.map(|a| a.text())
        );
        let status = agent.exit();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{step:?}: {status}");
        assert!(agent.log().contains("fault injection: SIGKILL"));

        let agent = vm
            .start(None)
            .unwrap_or_else(|(s, log)| panic!("{step:?}: restart: {s}:\n{log}"));
        let log = agent.consistent_log().await;
        if survivor(step) {
            running = message;
        }
        agent.wait_for_container(running.trim_end()).await;
        assert_folder(&vm, &running);
        assert_last_generation_is_folder(&vm, &log);
        // A generation for each update that reached PCR 23, and one for each measured again.
        let added = log.generations().unwrap().len() - generations;
        let expected = match step {
            Step::Unpack | Step::Validate => 0,
            Step::Start => 1,
            Step::Extend | Step::Measure | Step::Swap | Step::Rollback => 2,
            Step::SaveLog => unreachable!("not in Step::ALL: an I/O error, not a kill"),
        };
        assert_eq!(added, expected, "{step:?}:\n{}", agent.log());
        generations += added;
        if expected == 2 {
            assert!(
                agent.log().contains("action=rollback result=restored"),
                "{step:?}: no audit line:\n{}",
                agent.log()
            );
        }
        eprintln!("{step:?}: killed and recovered in {:?}", started.elapsed());
    }
}

/// TEST-ONLY: what sits between the agent and swtpm, so the TPM can fail under the agent while
/// keeping its state (killing swtpm would reset its PCRs, which only a reboot does). Forwards
/// the command port command by command and the control port byte by byte; `armed`, it passes
/// the next PCR_Extend to the TPM and then drops the connection before the answer, and refuses
/// every connection until restored: a TPM that failed in the middle of a command.
struct TpmLink {
    port: u16,
    state: Arc<Mutex<LinkState>>,
}

#[derive(Default)]
struct LinkState {
    armed: bool,
    cut: bool,
}

const TPM_CC_PCR_EXTEND: u32 = 0x182;

impl TpmLink {
    fn start(swtpm: &Swtpm) -> Self {
        let (data, control) = (0..200)
            .find_map(|_| {
                let port = 20_000 + (rand_u16() % 12_000);
                let data = std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
                let control = std::net::TcpListener::bind(("127.0.0.1", port + 1)).ok()?;
                Some((data, control))
            })
            .expect("two free ports");
        let port = data.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(LinkState::default()));
        let targets = [
            (data, swtpm.port(), true),
            (control, swtpm.ctrl_port(), false),
        ];
        for (listener, target, commands) in targets {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    if state.lock().unwrap().cut {
                        continue; // dropped: the TPM is gone
                    }
                    let server = std::net::TcpStream::connect(("127.0.0.1", target)).unwrap();
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || match commands {
                        true => forward_commands(client, server, &state),
                        false => forward_bytes(client, server),
                    });
                }
            });
        }
        TpmLink { port, state }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn arm(&self) {
        self.state.lock().unwrap().armed = true;
    }

    fn restore(&self) {
        *self.state.lock().unwrap() = LinkState::default();
    }
}

fn rand_u16() -> u16 {
    let mut bytes = [0u8; 2];
    openssl::rand::rand_bytes(&mut bytes).unwrap();
    u16::from_le_bytes(bytes)
}

/// One TPM command (10-byte header with its size, then the rest) from `from`.
fn read_message(from: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut message = vec![0u8; 10];
    from.read_exact(&mut message).ok()?;
    let size = u32::from_be_bytes(message[2..6].try_into().unwrap()) as usize;
    if !(10..=64 * 1024).contains(&size) {
        return None;
    }
    message.resize(size, 0);
    from.read_exact(&mut message[10..]).ok()?;
    Some(message)
}

fn forward_commands(
    mut client: std::net::TcpStream,
    mut server: std::net::TcpStream,
    state: &Mutex<LinkState>,
) {
    use std::io::Write;
    while let Some(command) = read_message(&mut client) {
        let code = u32::from_be_bytes(command[6..10].try_into().unwrap());
        if state.lock().unwrap().cut || server.write_all(&command).is_err() {
            return;
        }
        let Some(response) = read_message(&mut server) else {
            return;
        };
        let mut state = state.lock().unwrap();
        if state.armed && code == TPM_CC_PCR_EXTEND {
            state.cut = true; // the TPM extended; the agent never hears of it
            return;
        }
        if client.write_all(&response).is_err() {
            return;
        }
    }
}

fn forward_bytes(client: std::net::TcpStream, server: std::net::TcpStream) {
    let pairs = [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ];
    for (mut from, mut to) in pairs {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// The TPM fails in the middle of an update's extend (it extended, the agent never heard): the
/// update is refused with a JSON 503, the agent exits non-zero for systemd to restart it, a
/// restart without a TPM fails saying so, and once the TPM is back the restart logs what PCR 23
/// got, measures the previous workload again, and its log replays to PCR 23.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_failing_mid_extend_stops_the_agent_and_the_restart_reconciles() {
    let swtpm = Swtpm::start().unwrap();
    let link = TpmLink::start(&swtpm);
    let vm = Vm::new(link.tcti(), "measure_only = true\n", "before\n");
    let mut agent = vm
        .start(None)
        .unwrap_or_else(|(s, log)| panic!("{s}:\n{log}"));
    let before = agent.consistent_log().await.generations().unwrap().len();

    link.arm();
    let upload = workload_tar("after\n", &vm.image, false, &[]);
    let answer = agent.upload(&upload).await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.text());
    let error = answer.json().unwrap()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("the TPM failed while extending PCR 23"),
        "{error}"
    );
    assert!(error.contains("previous workload keeps running"), "{error}");
    assert!(answer
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("retry-after")));
    let status = agent.exit();
    assert_eq!(status.code(), Some(1), "{status}:\n{}", agent.log());
    assert!(agent
        .log()
        .contains("the TPM failed while extending PCR 23"));
    // The audit line does not claim that nothing was measured: PCR 23 may hold part of it.
    let log = agent.log();
    let audit = log
        .lines()
        .find(|line| line.contains(" audit:") && line.contains("action=update"))
        .unwrap_or_else(|| panic!("no audit line:\n{log}"));
    assert_eq!(field(audit, "result"), "failed", "{audit}");
    assert_eq!(field(audit, "pcr23"), "pending-reconcile", "{audit}");
    assert_ne!(field(audit, "workload"), "none", "{audit}");

    let (status, output) = match vm.start(None) {
        Ok(running) => panic!("served without a TPM:\n{}", running.log()),
        Err(exited) => exited,
    };
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("TPM"), "{output}");

    link.restore();
    let agent = vm
        .start(None)
        .unwrap_or_else(|(s, log)| panic!("{s}:\n{log}"));
    let log = agent.consistent_log().await;
    assert!(
        agent
            .log()
            .contains("an extend was cut short: PCR 23 shows part of it"),
        "{}",
        agent.log()
    );
    // The new generation, completed and logged; then the previous workload measured again.
    assert_eq!(log.generations().unwrap().len(), before + 2);
    assert_folder(&vm, "before\n");
    assert_last_generation_is_folder(&vm, &log);
}

/// PCR 23 extended for an update whose log then cannot be saved (a disk that refuses the write):
/// the agent stops serving evidence and exits non-zero rather than serve a log that names a
/// workload that does not run; its restart logs the extend and measures the running (previous)
/// folder again, so the log's last generation is what runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_not_saved_after_the_extend_stops_the_agent_and_the_restart_reconciles() {
    let swtpm = Swtpm::start().unwrap();
    let vm = Vm::new(swtpm.tcti(), "measure_only = true\n", "before\n");
    let mut agent = vm
        .start(Some(Step::SaveLog))
        .unwrap_or_else(|(s, log)| panic!("{s}:\n{log}"));
    let before = agent.consistent_log().await.generations().unwrap().len();

    let upload = workload_tar("after\n", &vm.image, false, &[]);
    let answer = agent.upload(&upload).await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.text());
    let error = answer.json().unwrap()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("saving the workload log"), "{error}");
    let status = agent.exit();
    assert_eq!(status.code(), Some(1), "{status}:\n{}", agent.log());
    let log = agent.log();
    let audit = log
        .lines()
        .find(|line| line.contains(" audit:") && line.contains("action=update"))
        .unwrap_or_else(|| panic!("no audit line:\n{log}"));
    assert_eq!(field(audit, "result"), "failed", "{audit}");
    assert_eq!(field(audit, "pcr23"), "extended", "{audit}");

    let agent = vm
        .start(None)
        .unwrap_or_else(|(s, log)| panic!("{s}:\n{log}"));
    let log = agent.consistent_log().await;
    // The new generation, logged as PCR 23 holds it; then the running folder measured again.
    assert_eq!(log.generations().unwrap().len(), before + 2);
    assert_folder(&vm, "before\n");
    assert_last_generation_is_folder(&vm, &log);
}

/// A persisted log that is truncated, or that does not replay to PCR 23, is never served: the
/// agent exits non-zero naming the problem. The intact log is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_log_is_refused_not_served() {
    let swtpm = Swtpm::start().unwrap();
    let vm = Vm::new(swtpm.tcti(), "measure_only = true\n", "measured\n");
    let agent = vm
        .start(None)
        .unwrap_or_else(|(s, log)| panic!("{s}:\n{log}"));
    let served = agent.consistent_log().await;
    drop(agent);
    let intact = std::fs::read(vm.state_file()).unwrap();

    let mut forged: serde_json::Value = serde_json::from_slice(&intact).unwrap();
    forged["log"]["events"][1]["payload_digest"] = serde_json::json!(hex::encode([7u8; 32]));
    let cases = [
        (
            "truncated",
            intact[..intact.len() / 2].to_vec(),
            "is corrupt",
        ),
        (
            "forged",
            serde_json::to_vec(&forged).unwrap(),
            "refusing to serve evidence",
        ),
    ];
    for (case, bytes, expected) in cases {
        std::fs::write(vm.state_file(), bytes).unwrap();
        let (status, output) = match vm.start(None) {
            Ok(running) => panic!("{case}: served:\n{}", running.log()),
            Err(exited) => exited,
        };
        assert_eq!(status.code(), Some(1), "{case}: {output}");
        assert!(output.contains(expected), "{case}: {output}");
        assert!(!output.contains(" serving"), "{case}: {output}");
    }
    std::fs::write(vm.state_file(), &intact).unwrap();
    let agent = vm
        .start(None)
        .unwrap_or_else(|(s, log)| panic!("{s}:\n{log}"));
    assert_eq!(agent.consistent_log().await, served);
}

/// A tmpfs of `size` on `dir`, unmounted when dropped: a small data partition that fills up.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs (the tests run as root)");
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

/// A zip (deflated, so small to send) of the workload plus `big` zero bytes in another file.
fn workload_zip_with_ballast(message: &str, image: &[u8], big: usize) -> Vec<u8> {
    use std::io::Write;
    let compose = compose(false);
    let ballast = vec![0u8; big];
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in workload_files(message, image, &compose)
        .into_iter()
        .chain([("config/ballast.bin", ballast.as_slice())])
    {
        writer.start_file(name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// The data partition full, then the engine gone under the agent: both refused with clear JSON
/// errors, nothing measured, the running workload untouched; once the engine is back, health
/// and updates work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_partition_and_a_vanished_engine_refuse_cleanly_and_recover() {
    let swtpm = Swtpm::start().unwrap();
    let engine = ContainerEngine::start(EngineKind::Docker).unwrap();
    let settings = format!("engine_socket = {:?}\n", engine.socket());
    let scratch = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&scratch.path().join("data"), "8m");
    let vm = Vm::with_data(swtpm.tcti(), &settings, "running\n", &disk.0);
    let agent = vm
        .start(None)
        .unwrap_or_else(|(s, log)| panic!("{s}:\n{log}"));
    agent.wait_for_container("running").await;
    let before = agent.consistent_log().await;

    // 16 MiB unpacked onto 8 MiB: 507, the staging folder gone, nothing measured.
    let upload = workload_zip_with_ballast("too big\n", &vm.image, 16 << 20);
    let answer = agent.upload(&upload).await.unwrap();
    assert_eq!(answer.status, 507, "{}", answer.text());
    let error = answer.json().unwrap()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(agent.consistent_log().await, before);
    agent.wait_for_container("running").await;
    assert_folder(&vm, "running\n");

    // The engine's socket gone, as a stopped engine leaves it.
    let away = engine.socket().with_extension("away");
    std::fs::rename(engine.socket(), &away).unwrap();
    let health = agent.get("/health").await;
    assert_eq!(health.status, 503, "{}", health.text());
    let error = health.json().unwrap()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("the container engine did not answer"),
        "{error}"
    );
    let upload = workload_tar("while the engine is gone\n", &vm.image, false, &[]);
    let answer = agent.upload(&upload).await.unwrap();
    assert_eq!(answer.status, 422, "{}", answer.text());
    assert!(answer.json().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("update refused"));
    assert_eq!(agent.consistent_log().await, before);

    std::fs::rename(&away, engine.socket()).unwrap();
    assert_eq!(agent.get("/health").await.status, 200);
    let answer = agent.upload(&upload).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    agent.wait_for_container("while the engine is gone").await;
    let log = agent.consistent_log().await;
    assert_eq!(
        log.generations().unwrap().len(),
        before.generations().unwrap().len() + 1
    );
    assert_last_generation_is_folder(&vm, &log);
    drop(agent);
    drop(vm);
}
