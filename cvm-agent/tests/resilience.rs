//! The agent under slow clients and floods, and its audit lines (docs/agent.md, "Failure
//! behaviour"). The real `cvm-agent` binary runs here, in a process of its own with a low
//! file-descriptor limit where a test needs one, so a flood exhausts the agent's descriptors and
//! not those of the tests.

mod common;
use common::{collect_lines, wait_for_line};
use cvm_attestation::workload::{replay, TokenCommitment, WorkloadEvent, WorkloadLog};
use futures_util::future::join_all;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::http::{request, HttpResponse};
use test_support::{busybox_image_archive, ContainerEngine, EngineKind, Swtpm};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

const TOKEN: &str = "test-token-0123456789abcdef0123456789abcdef";
const IMAGE: &str = "localhost/cvm-example/hello:1";
/// No engine: image IDs come from the archives, nothing is started.
const MEASURE_ONLY: &str = "measure_only = true\n";

/// The agent binary on its own swtpm, with its stderr collected.
struct Spawned {
    child: Child,
    log: Arc<Mutex<String>>,
    local: SocketAddr,
    external: SocketAddr,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    _swtpm: Swtpm,
}

impl Spawned {
    /// Starts the agent with an empty workload folder, `settings` (TOML lines) added to its
    /// configuration, and `nofile` as its RLIMIT_NOFILE when given.
    fn start(settings: &str, nofile: Option<u64>) -> Self {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("workload")).unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let socket = dir.path().join("run/api/api.sock");
        let config = format!(
            "workload_dir = {:?}\nstate_dir = {:?}\nlocal_socket = {socket:?}\n\
             local_listen = \"127.0.0.1:0\"\nexternal_listen = \"127.0.0.1:0\"\n\
             tcti = {:?}\napi_token_file = {:?}\ncloud = \"qemu\"\ntee = \"none\"\n{settings}",
            dir.path().join("workload"),
            dir.path().join("run"),
            swtpm.tcti(),
            dir.path().join("token"),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cvm-agent"));
        command
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(limit) = nofile {
                    let limit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        collect_lines(child.stdout.take().unwrap(), &log);
        collect_lines(child.stderr.take().unwrap(), &log);
        let serving = wait_for_line(&mut child, &log, "serving");
        Self {
            child,
            log,
            local: field(&serving, "local_addr").parse().unwrap(),
            external: field(&serving, "external_addr").parse().unwrap(),
            socket,
            _dir: dir,
            _swtpm: swtpm,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Lines of target `audit` that contain `text`.
    fn audit_lines(&self, text: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(" audit:") && line.contains(text))
            .map(str::to_owned)
            .collect()
    }

    fn assert_alive(&mut self) {
        let status = self.child.try_wait().unwrap();
        assert!(
            status.is_none(),
            "the agent exited ({status:?}):\n{}",
            self.log()
        );
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name=value` in a log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
    line[start..].split_whitespace().next().unwrap()
}

/// `count` TCP connections that send `prefix` and then nothing.
async fn slow_tcp_clients(addr: SocketAddr, count: usize, prefix: &[u8]) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if !prefix.is_empty() {
            stream.write_all(prefix).await.unwrap();
        }
        clients.push(stream);
    }
    clients
}

/// Whether the server closed `stream` (EOF or reset) before `deadline`.
async fn closed_before<S: AsyncRead + Unpin>(stream: &mut S, deadline: Instant) -> bool {
    let mut buffer = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout_at(deadline.into(), closed)
        .await
        .is_ok()
}

/// A slow client on `stream`, which just connected: sends `prefix`, then waits for the server
/// to close the connection. Resolves to how long that took, or `None` if it was still open at
/// `deadline`.
fn hold_open<S>(mut stream: S, prefix: &'static [u8], deadline: Instant) -> Lifetime
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connected = Instant::now();
    tokio::spawn(async move {
        if stream.write_all(prefix).await.is_err() {
            return Some(connected.elapsed());
        }
        closed_before(&mut stream, deadline)
            .await
            .then(|| connected.elapsed())
    })
}

type Lifetime = tokio::task::JoinHandle<Option<Duration>>;

/// `count` slow TCP clients (see [`hold_open`]).
async fn tcp_flood(addr: SocketAddr, count: usize, prefix: &'static [u8]) -> Vec<Lifetime> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut flood = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = TcpStream::connect(addr).await.unwrap();
        flood.push(hold_open(stream, prefix, deadline));
    }
    flood
}

/// The shortest and the longest time the server kept the flood's connections open; fails when
/// one is still open.
async fn lifetimes(flood: Vec<Lifetime>) -> (Duration, Duration) {
    let lifetimes: Vec<Option<Duration>> = join_all(flood)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let open = lifetimes.iter().filter(|l| l.is_none()).count();
    assert_eq!(open, 0, "connections the agent never closed");
    let lifetimes = lifetimes.into_iter().flatten();
    let shortest = lifetimes.clone().min().unwrap();
    (shortest, lifetimes.max().unwrap())
}

/// One GET over TLS (the certificate is not checked: evidence vouches for the key), with
/// `limit` on every socket read and write; the status line and body.
fn tls_get(addr: SocketAddr, path: &str, limit: Duration) -> anyhow::Result<(String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut connector = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())?;
    connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(limit))?;
    tcp.set_write_timeout(Some(limit))?;
    let mut stream = connector.build().configure()?.connect("cvm-agent", tcp)?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no response head"))?;
    let status = String::from_utf8_lossy(&response[..at])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((status, response[at + 4..].to_vec()))
}

fn nonce() -> String {
    let mut nonce = [0u8; 16];
    openssl::rand::rand_bytes(&mut nonce).unwrap();
    hex::encode(nonce)
}

/// A flood of silent connections, more than the agent has descriptors, does not stop the TLS
/// listener: it goes on accepting, drops every client that does not finish its handshake in
/// time, and serves evidence in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_take_the_external_tls_listener_down() {
    let mut agent = Spawned::start(
        &format!("{MEASURE_ONLY}handshake_timeout_secs = 2\nheader_read_timeout_secs = 2\n"),
        Some(256),
    );
    let flood = tcp_flood(agent.external, 400, b"").await;
    let addr = agent.external;
    let health = tokio::task::spawn_blocking(move || {
        let asked = Instant::now();
        (
            tls_get(addr, "/health", Duration::from_secs(15)),
            asked.elapsed(),
        )
    })
    .await
    .unwrap();
    let (answer, took) = health;
    let (status, _) = answer.unwrap_or_else(|e| {
        panic!(
            "/health during the flood: {e:#} after {took:?}\n{}",
            agent.log()
        )
    });
    assert!(status.contains(" 200"), "{status}");
    assert!(took < Duration::from_secs(8), "/health took {took:?}");
    let (shortest, longest) = lifetimes(flood).await;
    println!(
        "TLS: /health during the flood in {took:?}; flood closed after {shortest:?}..{longest:?}"
    );
    assert!(
        shortest >= Duration::from_millis(1900),
        "closed early: {shortest:?}"
    );
    let path = format!("/collaterals/{}", nonce());
    let (status, body) =
        tokio::task::spawn_blocking(move || tls_get(addr, &path, Duration::from_secs(15)))
            .await
            .unwrap()
            .unwrap();
    assert!(status.contains(" 200"), "{status}");
    cvm_attestation::Evidence::from_json(&body).unwrap();
    agent.assert_alive();
    let log = agent.log();
    assert!(
        log.contains("Too many open files"),
        "the flood did not exhaust the agent's descriptors:\n{log}"
    );
    assert!(!log.contains("listener stopped"), "{log}");
}

/// The local TCP listener and the local socket drop clients that never finish their request
/// head, and serve others meanwhile, also when descriptors run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_on_the_local_listeners_are_timed_out() {
    let mut agent = Spawned::start(
        &format!("{MEASURE_ONLY}header_read_timeout_secs = 2\n"),
        Some(256),
    );
    let flood = tcp_flood(agent.local, 400, b"GET /heal").await;
    let asked = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(8),
        request(agent.local, "GET", "/health", &[], b""),
    )
    .await;
    let response = match health {
        Ok(response) => response.unwrap(),
        Err(_) => panic!("/health not served in 8 s:\n{}", agent.log()),
    };
    assert_eq!(response.status, 200, "{}", response.text());
    let took = asked.elapsed();
    let (shortest, longest) = lifetimes(flood).await;
    println!(
        "TCP: /health during the flood in {took:?}; flood closed after {shortest:?}..{longest:?}"
    );
    assert!(
        shortest >= Duration::from_millis(1900),
        "closed early: {shortest:?}"
    );

    // The Unix socket: the same limits, the same loop.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut slow = Vec::new();
    for _ in 0..50 {
        let stream = UnixStream::connect(&agent.socket).await.unwrap();
        slow.push(hold_open(stream, b"GET /plat", deadline));
    }
    let answer = unix_get(&agent.socket, "/platform").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (shortest, _) = lifetimes(slow).await;
    assert!(
        shortest >= Duration::from_millis(1900),
        "closed early: {shortest:?}"
    );
    agent.assert_alive();
    let log = agent.log();
    assert!(
        log.contains("Too many open files"),
        "the flood did not exhaust the agent's descriptors:\n{log}"
    );
    assert!(!log.contains("listener stopped"), "{log}");
}

/// GET over the local Unix socket; the whole response.
async fn unix_get(socket: &Path, path: &str) -> String {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// Over `max_connections`, a listener closes the new connection at once; the other listeners
/// are not affected, and the listener serves again as soon as connections end.
#[tokio::test]
async fn the_connection_cap_closes_connections_over_it_at_once() {
    let agent = Spawned::start(
        &format!("{MEASURE_ONLY}external_tls = false\nmax_connections = 4\nheader_read_timeout_secs = 10\n"),
        None,
    );
    let held = slow_tcp_clients(agent.local, 4, b"").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = TcpStream::connect(agent.local).await.unwrap();
    let refused_by = Instant::now() + Duration::from_secs(1);
    assert!(
        closed_before(&mut over, refused_by).await,
        "a connection over the cap stayed open:\n{}",
        agent.log()
    );
    // The cap is per listener: the external one serves.
    let response = request(agent.external, "GET", "/health", &[], b"")
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match request(agent.local, "GET", "/health", &[], b"").await {
            Ok(response) if response.status == 200 => break,
            other => assert!(Instant::now() < deadline, "not served again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agent.log().contains("connection cap"), "{}", agent.log());
}

/// More concurrent evidence requests than the TPM queue holds: the excess is answered 503 with
/// Retry-After at once, nothing else fails, and the agent serves normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evidence_flood_gets_503_with_retry_after_and_nothing_else() {
    let agent = Spawned::start(
        // One client floods: its own rate limit (a_client_over_its_evidence_rate...) set aside.
        &format!(
            "{MEASURE_ONLY}external_tls = false\ntpm_queue_capacity = 4\n\
             client_evidence_burst = 1000\n"
        ),
        None,
    );
    let addr = agent.external;
    let requests = (0..128).map(|_| {
        tokio::spawn(async move {
            let path = format!("/collaterals/{}", nonce());
            request(addr, "GET", &path, &[], b"").await.unwrap()
        })
    });
    let responses: Vec<HttpResponse> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let busy: Vec<&HttpResponse> = responses.iter().filter(|r| r.status == 503).collect();
    let served = responses.iter().filter(|r| r.status == 200).count();
    for response in &responses {
        assert!(
            matches!(response.status, 200 | 503),
            "{} {}",
            response.status,
            response.text()
        );
    }
    assert!(!busy.is_empty(), "no 503 among {} answers", responses.len());
    assert!(served >= 4, "only {served} served");
    for response in busy {
        let retry = response.headers.iter().find(|(k, _)| k == "retry-after");
        assert!(retry.is_some(), "{:?}", response.headers);
        let error = response.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(error.contains("busy"), "{error}");
    }
    println!("{served} served, {} busy", responses.len() - served);
    let response = request(addr, "GET", "/health", &[], b"").await.unwrap();
    assert_eq!(response.status, 200);
    let path = format!("/collaterals/{}", nonce());
    let response = request(addr, "GET", &path, &[], b"").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}

/// One client over its evidence rate gets 429 with Retry-After and a JSON error, without
/// costing a quote; other clients (here the local socket) are served meanwhile, and the client
/// is served again once Retry-After has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_evidence_rate_gets_429_others_are_served() {
    let agent = Spawned::start(
        &format!(
            "{MEASURE_ONLY}external_tls = false
             client_evidence_per_sec = 1
client_evidence_burst = 3
"
        ),
        None,
    );
    let addr = agent.external;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let path = format!("/collaterals/{}", nonce());
        let response = request(addr, "GET", &path, &[], b"").await.unwrap();
        statuses.push(response.status);
        if response.status == 429 {
            limited = Some(response);
        }
    }
    // A bucket of 3, refilled once a second: the 4th request comes well within the second.
    assert_eq!(statuses[..4], [200, 200, 200, 429], "{statuses:?}");
    let limited = limited.unwrap();
    let retry = limited
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .map(|(_, value)| value.parse::<u64>().unwrap())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    let error = limited.json().unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("too many evidence requests"), "{error}");

    // The local socket is another client: served.
    let path = format!("/offchain/collaterals/{}", nonce());
    let answer = unix_get(&agent.socket, &path).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    tokio::time::sleep(Duration::from_secs(retry)).await;
    let path = format!("/collaterals/{}", nonce());
    let response = request(addr, "GET", &path, &[], b"").await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        agent.log().contains("over its evidence rate"),
        "{}",
        agent.log()
    );
}

/// A workload folder as a tar: a compose file with one service and its image archive.
fn workload_tar(message: &str) -> Vec<u8> {
    let compose = format!("services:\n  hello:\n    image: {IMAGE}\n    command: [\"true\"]\n");
    let image = busybox_image_archive(IMAGE, &["sh"], &[]).unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("docker-compose.yml", compose.as_bytes()),
        ("config/message.txt", message.as_bytes()),
        ("hello.tar", image.bytes.as_slice()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, bytes).unwrap();
    }
    archive.into_inner().unwrap()
}

async fn upload(addr: SocketAddr, token: &str, body: &[u8]) -> HttpResponse {
    let authorization = format!("Bearer {token}");
    let headers = [
        ("Authorization", authorization.as_str()),
        ("Content-Type", "application/x-tar"),
    ];
    request(addr, "POST", "/update-workload", &headers, body)
        .await
        .unwrap()
}

/// What the audit lines name: the first 16 hex digits of the token's salted commitment (this
/// boot's salt, from the log) and the generation's digest.
async fn token_prefix(addr: SocketAddr) -> String {
    let response = request(addr, "GET", "/eventlog", &[], b"").await.unwrap();
    let log: WorkloadLog = serde_json::from_slice(&response.body).unwrap();
    let salt = TokenCommitment::first_salt(&log.events).unwrap();
    TokenCommitment::new(salt, TOKEN).digest.to_hex()[..16].to_owned()
}

fn workload_digest(response: &HttpResponse) -> String {
    let events: Vec<WorkloadEvent> =
        serde_json::from_value(response.json().unwrap()["workload"].clone()).unwrap();
    replay(&events).to_hex()
}

/// One audit line per update and per rejected token (those rate-limited, so a flood cannot fill
/// the journal), with what an auditor needs.
#[tokio::test]
async fn updates_and_rejected_tokens_are_audited_rejections_rate_limited() {
    let agent = Spawned::start(&format!("{MEASURE_ONLY}external_tls = false\n"), None);
    for attempt in 0..60 {
        let authorization = format!("Bearer wrong-token-{attempt:040}");
        let headers: &[(&str, &str)] = if attempt % 2 == 0 {
            &[("Authorization", &authorization)]
        } else {
            &[]
        };
        let response = request(agent.external, "GET", "/container-logs", headers, b"")
            .await
            .unwrap();
        assert_eq!(response.status, 401, "{}", response.text());
    }
    let refused = upload(agent.external, TOKEN, b"not an archive").await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let response = upload(agent.external, TOKEN, &workload_tar("audited\n")).await;
    assert_eq!(response.status, 200, "{}", response.text());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rejected = agent.audit_lines("result=rejected");
    assert!(
        (1..=11).contains(&rejected.len()),
        "{} lines for 60 rejections:\n{}",
        rejected.len(),
        agent.log()
    );
    for line in &rejected {
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(line.contains("route=/container-logs"), "{line}");
    }
    let updates = agent.audit_lines("action=update");
    assert_eq!(updates.len(), 2, "{}", agent.log());
    let line = &updates[0];
    assert_eq!(field(line, "result"), "refused", "{line}");
    assert_eq!(field(line, "pcr23"), "untouched", "{line}");
    let line = &updates[1];
    assert_eq!(field(line, "result"), "applied", "{line}");
    assert_eq!(field(line, "pcr23"), "extended", "{line}");
    let token = token_prefix(agent.external).await;
    assert!(line.contains(&format!("token={token}")), "{line}");
    let digest = workload_digest(&response);
    assert!(line.contains(&format!("workload={digest}")), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}

/// A compose tool that records each `up` and fails as many of them as `fail-ups` says, naming
/// which `up` it was; anything else succeeds. The engine is real (images are loaded and
/// resolved through it), the containers are not started.
fn fake_compose(dir: &Path) -> PathBuf {
    let script = dir.join("fake-compose");
    let state = dir.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" up \"*)\n\
             n=$(( $(cat {state}/ups 2>/dev/null || echo 0) + 1 )); echo $n > {state}/ups\n\
             left=$(cat {state}/fail-ups 2>/dev/null || echo 0)\n\
             if [ \"$left\" -gt 0 ]; then echo $((left - 1)) > {state}/fail-ups; \
             echo \"fake compose: up #$n failed\" >&2; exit 1; fi ;;\nesac\nexit 0\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A new workload that does not start is rolled back; when the rollback fails too, the answer
/// keeps both errors. Each rollback is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollbacks_are_audited_and_a_failed_one_keeps_both_errors() {
    let engine = ContainerEngine::start(EngineKind::Docker).unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let compose = fake_compose(scripts.path());
    let agent = Spawned::start(
        &format!(
            "external_tls = false\nengine_socket = {:?}\ncompose_command = [{:?}]\n",
            engine.socket(),
            compose
        ),
        None,
    );
    let fail_ups = |n: u32| std::fs::write(scripts.path().join("fail-ups"), n.to_string()).unwrap();
    // up #1: the first workload starts.
    let response = upload(agent.external, TOKEN, &workload_tar("first\n")).await;
    assert_eq!(response.status, 200, "{}", response.text());
    // up #2 fails, the rollback's up #3 works.
    fail_ups(1);
    let response = upload(agent.external, TOKEN, &workload_tar("second\n")).await;
    assert_eq!(response.status, 422, "{}", response.text());
    let text = response.text();
    assert!(text.contains("up #2 failed"), "{text}");
    assert!(text.contains("previous one runs again"), "{text}");
    // up #4 fails, and so does the rollback's up #5: both errors are in the answer.
    fail_ups(2);
    let response = upload(agent.external, TOKEN, &workload_tar("third\n")).await;
    let text = response.text();
    assert_eq!(response.status, 500, "{text}");
    assert!(
        text.contains("up #4 failed"),
        "the original error is lost: {text}"
    );
    assert!(text.contains("up #5 failed"), "{text}");
    assert!(!text.contains("keeps running"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rollbacks = agent.audit_lines("action=rollback");
    assert_eq!(rollbacks.len(), 2, "{}", agent.log());
    assert!(rollbacks[0].contains("result=restored"), "{}", rollbacks[0]);
    assert!(rollbacks[1].contains("result=failed"), "{}", rollbacks[1]);
    let updates = agent.audit_lines("action=update");
    let results: Vec<&str> = updates.iter().map(|l| field(l, "result")).collect();
    assert_eq!(
        results,
        ["applied", "rolled-back", "rollback-failed"],
        "{updates:#?}"
    );
    // Every one of them reached PCR 23; each rollback line names the workload of its update.
    for (update, rollback) in updates[1..].iter().zip(&rollbacks) {
        assert_eq!(field(update, "pcr23"), "extended", "{update}");
        assert_eq!(field(update, "workload"), field(rollback, "workload"));
    }
    assert!(rollbacks[1].contains("up #5 failed"), "{}", rollbacks[1]);
}
