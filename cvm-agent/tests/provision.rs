//! `cvm-agent provision` against local stand-ins of each cloud's metadata service (hyper servers on
//! loopback that insist on the headers the real services insist on) and a temporary sysfs root
//! (DMI vendor, QEMU fw_cfg). Every run uses fresh random tokens.

use cvm_agent::provision::{
    parse_azure_user_data, parse_document, parse_fw_cfg, provision, Options, Outcome, Retry,
    Source, FW_CFG_TOKEN,
};
use cvm_attestation::encoding::encode_base64;
use cvm_attestation::provision::{UserData, MAX_USER_DATA_BYTES, TOKEN_LEN};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fresh random token as `cvm-cli` makes them (64 hex digits).
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).unwrap();
    hex::encode(bytes)
}

fn document(token: &str) -> Vec<u8> {
    format!(r#"{{"cvm_api_token":"{token}"}}"#).into_bytes()
}

/// What a stand-in answers to its n-th valid request for the user data.
type Reply = Box<dyn Fn(usize) -> (StatusCode, Vec<u8>) + Send + Sync>;

fn reply(status: StatusCode, body: impl Into<Vec<u8>>) -> Reply {
    let body = body.into();
    Box::new(move |_| (status, body.clone()))
}

type Handler = Box<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

fn respond(status: StatusCode, body: Vec<u8>, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(Full::new(Bytes::from(body))).unwrap()
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Azure IMDS: `GET .../compute/userData?api-version=..&format=text` with `Metadata: true`, else
/// 400; the reply body is sent as is (the tests base64 it or not).
fn azure(reply: Reply) -> Handler {
    let served = AtomicUsize::new(0);
    Box::new(move |req| {
        let query = req.uri().query().unwrap_or_default();
        let ok = req.method() == Method::GET
            && req.uri().path() == "/metadata/instance/compute/userData"
            && query.split('&').any(|p| p == "api-version=2021-01-01")
            && query.split('&').any(|p| p == "format=text")
            && header(req, "metadata") == Some("true");
        if !ok {
            return respond(StatusCode::BAD_REQUEST, b"bad request".to_vec(), &[]);
        }
        let (status, body) = reply(served.fetch_add(1, Ordering::SeqCst));
        respond(status, body, &[])
    })
}

/// GCP metadata: `GET .../instance/attributes/cvm-agent` with `Metadata-Flavor: Google`, else 403;
/// every answer carries `Metadata-Flavor: Google` unless `flavor` is false.
fn gcp(reply: Reply, flavor: bool) -> Handler {
    let served = AtomicUsize::new(0);
    Box::new(move |req| {
        let headers: &[(&str, &str)] = if flavor {
            &[("Metadata-Flavor", "Google")]
        } else {
            &[]
        };
        let ok = req.method() == Method::GET
            && req.uri().path() == "/computeMetadata/v1/instance/attributes/cvm-agent"
            && header(req, "metadata-flavor") == Some("Google");
        if !ok {
            return respond(StatusCode::FORBIDDEN, b"missing header".to_vec(), headers);
        }
        let (status, body) = reply(served.fetch_add(1, Ordering::SeqCst));
        respond(status, body, headers)
    })
}

/// AWS IMDSv2: `PUT /latest/api/token` with a TTL header gives a session token (else 400);
/// `GET /latest/user-data` needs it in `X-aws-ec2-metadata-token` (else 401).
fn aws(reply: Reply) -> Handler {
    let session = new_token();
    let served = AtomicUsize::new(0);
    Box::new(move |req| {
        let path = req.uri().path();
        if req.method() == Method::PUT && path == "/latest/api/token" {
            let ttl = header(req, "x-aws-ec2-metadata-token-ttl-seconds");
            return match ttl.and_then(|t| t.parse::<u32>().ok()) {
                Some(1..=21600) => respond(StatusCode::OK, session.clone().into_bytes(), &[]),
                _ => respond(StatusCode::BAD_REQUEST, b"no ttl".to_vec(), &[]),
            };
        }
        if req.method() != Method::GET || path != "/latest/user-data" {
            return respond(StatusCode::BAD_REQUEST, b"bad request".to_vec(), &[]);
        }
        if header(req, "x-aws-ec2-metadata-token") != Some(session.as_str()) {
            return respond(StatusCode::UNAUTHORIZED, Vec::new(), &[]);
        }
        let (status, body) = reply(served.fetch_add(1, Ordering::SeqCst));
        respond(status, body, &[])
    })
}

/// A stand-in serving on a loopback port until dropped.
struct Stand {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stand {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(handler: Handler) -> Stand {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (handler, counter) = (handler.clone(), counter.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = handler(&req);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Stand { url, hits, task }
}

/// A VM stand-in: a sysfs root whose DMI names `vendor`, and an output folder holding a stale
/// token from an earlier run (which must never survive).
struct Vm {
    dir: tempfile::TempDir,
}

impl Vm {
    fn new(vendor: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::write(dmi.join("sys_vendor"), format!("{vendor}\n")).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(
            out.join("api-token"),
            "stale-token-0123456789abcdef0123456789",
        )
        .unwrap();
        std::fs::write(out.join("agent.env"), "CVM_AGENT_API_TOKEN_FILE=/stale\n").unwrap();
        Self { dir }
    }

    fn sysfs(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn fw_cfg(&self, content: &[u8]) {
        let path = self.sysfs().join(FW_CFG_TOKEN);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn options(&self, url: &str) -> Options {
        Options {
            out: self.out(),
            metadata_url: url.to_owned(),
            sysfs_root: self.sysfs(),
            retry: fast_retry(),
        }
    }

    async fn run(&self, url: &str) -> Result<Outcome, String> {
        provision(&self.options(url))
            .await
            .map_err(|e| e.to_string())
    }

    /// The token file holds exactly `token` (0600, in a 0700 folder) and agent.env names it.
    fn assert_provisioned(&self, token: &str) {
        let file = self.out().join("api-token");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), token);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&self.out()), 0o700);
        assert_eq!(
            std::fs::read_to_string(self.out().join("agent.env")).unwrap(),
            format!("CVM_AGENT_API_TOKEN_FILE={}\n", file.display())
        );
    }

    /// No token file, an empty agent.env: the agent starts with its update routes off.
    fn assert_no_token(&self) {
        assert!(
            !self.out().join("api-token").exists(),
            "a token file is left"
        );
        assert_eq!(
            std::fs::read_to_string(self.out().join("agent.env")).unwrap(),
            ""
        );
        let names: Vec<_> = std::fs::read_dir(self.out())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["agent.env"], "only agent.env is left");
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn fast_retry() -> Retry {
    Retry {
        attempts: 3,
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    }
}

const AZURE: &str = "Microsoft Corporation";
const GCP: &str = "Google";
const AWS: &str = "Amazon EC2";

fn provisioned(source: Source, vm: &Vm) -> Outcome {
    Outcome::Provisioned {
        source,
        token_file: vm.out().join("api-token"),
    }
}

#[tokio::test]
async fn each_cloud_delivers_the_token() {
    let token = new_token();
    let stand = serve(azure(reply(
        StatusCode::OK,
        encode_base64(&document(&token)),
    )))
    .await;
    let vm = Vm::new(AZURE);
    assert_eq!(
        vm.run(&stand.url).await.unwrap(),
        provisioned(Source::AzureImds, &vm)
    );
    vm.assert_provisioned(&token);

    let token = new_token();
    let stand = serve(gcp(reply(StatusCode::OK, document(&token)), true)).await;
    let vm = Vm::new(GCP);
    assert_eq!(
        vm.run(&stand.url).await.unwrap(),
        provisioned(Source::GcpMetadata, &vm)
    );
    vm.assert_provisioned(&token);

    let token = new_token();
    let stand = serve(aws(reply(StatusCode::OK, document(&token)))).await;
    let vm = Vm::new(AWS);
    assert_eq!(
        vm.run(&format!("{}/", stand.url)).await.unwrap(),
        provisioned(Source::AwsImds, &vm)
    );
    vm.assert_provisioned(&token);
    assert_eq!(
        stand.hits.load(Ordering::SeqCst),
        2,
        "PUT token, GET user-data"
    );
}

#[tokio::test]
async fn qemu_fw_cfg_delivers_the_raw_token() {
    for line_end in ["", "\n"] {
        let token = new_token();
        let vm = Vm::new("QEMU");
        vm.fw_cfg(format!("{token}{line_end}").as_bytes());
        // No metadata service is asked on QEMU: the URL leads nowhere.
        let outcome = vm.run("http://127.0.0.1:9").await.unwrap();
        assert_eq!(outcome, provisioned(Source::FwCfg, &vm));
        vm.assert_provisioned(&token);
        assert!(outcome.to_string().contains("API token from fw_cfg"));
    }
}

#[tokio::test]
async fn no_token_provided_leaves_an_empty_env() {
    let cases = [
        (
            AZURE,
            serve(azure(reply(StatusCode::OK, ""))).await,
            Source::AzureImds,
        ),
        (
            AZURE,
            serve(azure(reply(StatusCode::NOT_FOUND, ""))).await,
            Source::AzureImds,
        ),
        (
            GCP,
            serve(gcp(reply(StatusCode::NOT_FOUND, "not found"), true)).await,
            Source::GcpMetadata,
        ),
        (
            AWS,
            serve(aws(reply(StatusCode::NOT_FOUND, "not found"))).await,
            Source::AwsImds,
        ),
    ];
    for (vendor, stand, source) in cases {
        let vm = Vm::new(vendor);
        let outcome = vm.run(&stand.url).await.unwrap();
        assert_eq!(outcome, Outcome::Absent { source }, "{vendor}");
        assert!(outcome.to_string().contains("update routes stay off"));
        vm.assert_no_token();
    }
    // QEMU without the fw_cfg entry, and an unknown vendor (treated as QEMU).
    for vendor in ["QEMU", "Some Other Vendor"] {
        let vm = Vm::new(vendor);
        let outcome = vm.run("http://127.0.0.1:9").await.unwrap();
        assert_eq!(
            outcome,
            Outcome::Absent {
                source: Source::FwCfg
            }
        );
        vm.assert_no_token();
    }
}

/// Runs `vm` against `stand`, expects an error naming `source` and `problem`, and no token.
async fn assert_refused(vm: &Vm, url: &str, source: &str, problem: &str) -> String {
    let error = vm.run(url).await.unwrap_err();
    eprintln!("refused as expected: {error}");
    assert!(
        error.starts_with(source),
        "{error:?} does not name {source}"
    );
    assert!(
        error.contains(problem),
        "{error:?} does not say {problem:?}"
    );
    vm.assert_no_token();
    error
}

#[tokio::test]
async fn bad_documents_are_refused_and_leave_no_token() {
    let oversized = vec![b'{'; MAX_USER_DATA_BYTES + 1];
    let spaced = format!("{} {}", &new_token()[..32], &new_token()[..32]);
    let cases: Vec<(&str, Handler, &str, &str)> = vec![
        (
            AWS,
            aws(reply(StatusCode::OK, oversized.clone())),
            "AWS IMDSv2 user-data",
            "more than 16384 bytes",
        ),
        (
            GCP,
            gcp(reply(StatusCode::OK, oversized.clone()), true),
            "GCP metadata attribute cvm-agent",
            "more than 16384 bytes",
        ),
        (
            AZURE,
            azure(reply(StatusCode::OK, encode_base64(&oversized))),
            "Azure IMDS userData",
            "16385 bytes, more than",
        ),
        (
            AZURE,
            azure(reply(StatusCode::OK, vec![b'A'; 64 * 1024])),
            "Azure IMDS userData",
            "the answer is more than",
        ),
        (
            GCP,
            gcp(reply(StatusCode::OK, "#cloud-config\nusers: []\n"), true),
            "GCP metadata attribute cvm-agent",
            "not a cvm-agent document",
        ),
        (
            AWS,
            aws(reply(StatusCode::OK, r#"{"cvm_api_token": 7}"#)),
            "AWS IMDSv2 user-data",
            "not a cvm-agent document",
        ),
        (
            AZURE,
            azure(reply(StatusCode::OK, "this is not base64!")),
            "Azure IMDS userData",
            "not base64",
        ),
        (
            AZURE,
            azure(reply(StatusCode::OK, encode_base64(b"{\"cvm_api_token\""))),
            "Azure IMDS userData",
            "not a cvm-agent document",
        ),
        (
            AWS,
            aws(reply(StatusCode::OK, document(&spaced))),
            "AWS IMDSv2 user-data",
            "without whitespace",
        ),
        (
            GCP,
            gcp(reply(StatusCode::OK, document(&new_token()[..20])), true),
            "GCP metadata attribute cvm-agent",
            "32..=128",
        ),
        (
            GCP,
            gcp(reply(StatusCode::OK, document(&new_token())), false),
            "GCP metadata attribute cvm-agent",
            "Metadata-Flavor",
        ),
        (
            AZURE,
            azure(reply(StatusCode::FORBIDDEN, "")),
            "Azure IMDS userData",
            "HTTP 403",
        ),
    ];
    for (vendor, handler, source, problem) in cases {
        let stand = serve(handler).await;
        assert_refused(&Vm::new(vendor), &stand.url, source, problem).await;
    }
}

#[tokio::test]
async fn bad_fw_cfg_tokens_are_refused_and_leave_no_token() {
    let spaced = format!("{} {}", &new_token()[..32], &new_token()[..32]);
    // Whitespace inside, oversized, not UTF-8, too short.
    let cases = [
        (spaced.into_bytes(), "without whitespace"),
        (vec![b'a'; MAX_USER_DATA_BYTES + 1], "more than 16384 bytes"),
        (vec![0xff; 40], "printable ASCII"),
        (b"short\n".to_vec(), "32..=128"),
    ];
    for (content, problem) in cases {
        let vm = Vm::new("QEMU");
        vm.fw_cfg(&content);
        let source = "fw_cfg opt/cvm/api-token";
        assert_refused(&vm, "http://127.0.0.1:9", source, problem).await;
    }
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_retried_then_given_up() {
    // 500 twice, then the document: the third attempt succeeds.
    let token = new_token();
    let doc = document(&token);
    let flaky: Reply = Box::new(move |n| match n {
        0 | 1 => (StatusCode::INTERNAL_SERVER_ERROR, b"busy".to_vec()),
        _ => (StatusCode::OK, doc.clone()),
    });
    let stand = serve(gcp(flaky, true)).await;
    let vm = Vm::new(GCP);
    vm.run(&stand.url).await.unwrap();
    vm.assert_provisioned(&token);
    assert_eq!(stand.hits.load(Ordering::SeqCst), 3);

    // Always 503: given up after the attempts, naming the last answer.
    let stand = serve(azure(reply(StatusCode::SERVICE_UNAVAILABLE, ""))).await;
    let error = assert_refused(
        &Vm::new(AZURE),
        &stand.url,
        "Azure IMDS userData",
        "HTTP 503",
    )
    .await;
    assert!(error.contains("unreachable after 3 attempts"), "{error}");
    assert_eq!(stand.hits.load(Ordering::SeqCst), 3);

    // A 4xx is an answer, not a hiccup: not retried.
    let stand = serve(aws(reply(StatusCode::FORBIDDEN, ""))).await;
    assert_refused(
        &Vm::new(AWS),
        &stand.url,
        "AWS IMDSv2 user-data",
        "HTTP 403",
    )
    .await;
    assert_eq!(stand.hits.load(Ordering::SeqCst), 2, "PUT, then one GET");

    // Nobody listening.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let error = assert_refused(&Vm::new(AWS), &url, "AWS IMDSv2 user-data", "unreachable").await;
    assert!(error.contains("after 3 attempts"), "{error}");
}

#[tokio::test]
async fn a_silent_service_times_out() {
    // Accepts connections, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            streams.push(stream);
        }
    });
    let vm = Vm::new(GCP);
    let mut options = vm.options(&url);
    options.retry.request_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let error = provision(&options).await.unwrap_err().to_string();
    assert!(error.contains("no complete answer within"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
    vm.assert_no_token();
    held.abort();
}

/// The stand-ins are strict: a client that forgot a header fails.
#[tokio::test]
async fn stand_ins_refuse_requests_without_their_headers() {
    async fn status(url: &str, request: &str) -> u16 {
        let addr = url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer[9..12].parse().unwrap()
    }
    let get = |path: &str, header: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n")
    };
    let token = new_token();
    let azure_path = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";
    let stand = serve(azure(reply(
        StatusCode::OK,
        encode_base64(&document(&token)),
    )))
    .await;
    assert_eq!(status(&stand.url, &get(azure_path, "")).await, 400);
    assert_eq!(
        status(&stand.url, &get(azure_path, "Metadata: true\r\n")).await,
        200
    );
    let gcp_path = "/computeMetadata/v1/instance/attributes/cvm-agent";
    let stand = serve(gcp(reply(StatusCode::OK, document(&token)), true)).await;
    assert_eq!(status(&stand.url, &get(gcp_path, "")).await, 403);
    assert_eq!(
        status(&stand.url, &get(gcp_path, "Metadata-Flavor: Google\r\n")).await,
        200
    );
    let stand = serve(aws(reply(StatusCode::OK, document(&token)))).await;
    assert_eq!(status(&stand.url, &get("/latest/user-data", "")).await, 401);
    let put = "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&stand.url, put).await, 400);
}

#[tokio::test]
async fn the_binary_provisions_and_reports_one_line() {
    let binary = env!("CARGO_BIN_EXE_cvm-agent");
    async fn run(vm: &Vm, url: &str) -> std::io::Result<std::process::Output> {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cvm-agent"))
            .arg("provision")
            .arg("--out")
            .arg(vm.out())
            .arg("--metadata-url")
            .arg(url)
            .arg("--sysfs-root")
            .arg(vm.sysfs())
            .output()
            .await
    }
    let token = new_token();
    let stand = serve(aws(reply(StatusCode::OK, document(&token)))).await;
    let vm = Vm::new(AWS);
    let out = run(&vm, &stand.url).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("cvm-agent provision: API token from AWS IMDSv2 user-data"));
    assert!(!stdout.contains(&token), "the token is printed");
    vm.assert_provisioned(&token);

    // The line the image's boot test looks for on the serial console.
    let token = new_token();
    let vm = Vm::new("QEMU");
    vm.fw_cfg(token.as_bytes());
    let out = run(&vm, "http://127.0.0.1:9").await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("API token from fw_cfg"));
    vm.assert_provisioned(&token);

    let stand = serve(gcp(reply(StatusCode::OK, "#!/bin/sh\necho hi\n"), true)).await;
    let vm = Vm::new(GCP);
    let out = run(&vm, &stand.url).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("GCP metadata attribute cvm-agent: user data is not a cvm-agent document"),
        "{stderr}"
    );
    assert!(stderr.contains("update routes stay off"), "{stderr}");
    vm.assert_no_token();

    // The agent's own command line is unchanged, and provision takes none of its options.
    let config = vm.dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let out = std::process::Command::new(binary)
        .arg("--check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("workload_dir"));
    let out = std::process::Command::new(binary)
        .args(["--config", "/x.toml", "provision"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn bad_output_and_metadata_paths_are_refused() {
    let vm = Vm::new(GCP);
    let error = vm.run("https://169.254.169.254").await.unwrap_err();
    assert!(error.contains("metadata URL"), "{error}");
    let error = vm.run("http://127.0.0.1:9/path").await.unwrap_err();
    assert!(error.contains("metadata URL"), "{error}");
    // The output folder must be a folder of its own, not a link to one.
    let vm = Vm::new("QEMU");
    let link = vm.dir.path().join("link");
    std::os::unix::fs::symlink(vm.out(), &link).unwrap();
    let mut options = vm.options("http://127.0.0.1:9");
    options.out = link;
    let error = provision(&options).await.unwrap_err().to_string();
    assert!(error.contains("not a directory of our own"), "{error}");
}

/// A small xorshift generator seeded from the system's randomness: fast, different every run.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        openssl::rand::rand_bytes(&mut seed).unwrap();
        Self(u64::from_le_bytes(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Whatever the platform delivers, the parsers answer without panicking, and any token they
/// accept is one the agent accepts.
#[test]
fn parsers_survive_random_and_mutated_input() {
    let mut rng = Rng::new();
    let valid = document(&new_token());
    let check = |token: &str| {
        assert!(TOKEN_LEN.contains(&token.len()));
        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
    };
    for round in 0..20_000 {
        let input = match round % 4 {
            // Now and then a document around the size limit.
            0 if round % 100 == 0 => {
                let len = MAX_USER_DATA_BYTES - 50 + rng.below(100);
                rng.bytes(len)
            }
            0 | 3 => {
                let len = rng.below(200);
                rng.bytes(len)
            }
            1 => {
                let mut doc = valid.clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(doc.len());
                    doc[at] = rng.next() as u8;
                }
                doc
            }
            2 => {
                let mut doc = valid.clone();
                doc.truncate(rng.below(doc.len()));
                doc
            }
            _ => {
                let mut doc = valid.clone();
                let at = rng.below(doc.len());
                let len = rng.below(8);
                let junk = rng.bytes(len);
                doc.splice(at..at, junk);
                doc
            }
        };
        if let Ok(token) = parse_fw_cfg(&input) {
            check(&token);
        }
        for parsed in [
            parse_document(&input),
            parse_azure_user_data(&input),
            parse_azure_user_data(encode_base64(&input).as_bytes()),
        ] {
            if let Ok(Some(UserData { cvm_api_token, .. })) = parsed {
                check(&cvm_api_token);
            }
        }
    }
}

/// The data key mode travels with the token (fw_cfg entry on QEMU, the document's `data_unlock`
/// on clouds) into agent.env; a bad mode is refused like a bad token.
#[tokio::test]
async fn the_data_key_mode_reaches_the_agent() {
    let token = new_token();
    let vm = Vm::new("QEMU");
    vm.fw_cfg(token.as_bytes());
    let mode = vm.sysfs().join(cvm_agent::provision::FW_CFG_DATA_UNLOCK);
    std::fs::create_dir_all(mode.parent().unwrap()).unwrap();
    std::fs::write(&mode, "pushed").unwrap();
    assert_eq!(
        vm.run("http://127.0.0.1:9").await.unwrap(),
        provisioned(Source::FwCfg, &vm)
    );
    let env = std::fs::read_to_string(vm.out().join("agent.env")).unwrap();
    assert!(env.ends_with("CVM_AGENT_DATA_UNLOCK=pushed\n"), "{env}");
    std::fs::write(&mode, "frozen").unwrap();
    let error = vm.run("http://127.0.0.1:9").await.unwrap_err();
    assert!(
        error.contains("expected ephemeral, pushed or sealed"),
        "{error}"
    );
    vm.assert_no_token();

    let token = new_token();
    let body = format!(r#"{{"cvm_api_token":"{token}","data_unlock":"pushed"}}"#);
    let stand = serve(aws(reply(StatusCode::OK, body))).await;
    let vm = Vm::new(AWS);
    vm.run(&stand.url).await.unwrap();
    let env = std::fs::read_to_string(vm.out().join("agent.env")).unwrap();
    assert!(env.ends_with("CVM_AGENT_DATA_UNLOCK=pushed\n"), "{env}");
}
