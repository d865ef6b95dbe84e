//! `cvm-cli deploy-gcp` and `cleanup --gcp` against `gcp-storage-emulator` (resumable upload of
//! the disk tarball) and a Compute Engine test server in this file that checks every request
//! against the documented REST shapes and answers like GCE (operations PENDING, RUNNING, DONE;
//! an instance that gets its external IP after a while; an insert that fails when asked to).
//! The instance's metadata attribute `cvm-agent` must carry the agent's provisioning document
//! with the token the deploy kept in its 0600 token file, and Secure Boot must be off unless
//! `--secure-boot` is given.

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cvm_attestation::provision::{UserData, GCP_METADATA_KEY};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use test_support::GcsEmulator;

const PROJECT: &str = "test-project";
const ZONE: &str = "asia-southeast1-b";
const REGION: &str = "asia-southeast1";
const BUCKET: &str = "test-bucket";
const NAT_IP: &str = "203.0.113.7";
/// Who may connect in these tests: a documentation range (RFC 5737).
const ALLOW: &str = "198.51.100.0/24";
const GIB: u64 = 1 << 30;

/// One request the Compute server received.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Value,
}

struct PendingOperation {
    polls_left: u32,
    zone: Option<String>,
    error: Option<Value>,
}

#[derive(Default)]
struct GceState {
    requests: Vec<Recorded>,
    /// Requests that do not match the documented shapes.
    violations: Vec<String>,
    images: BTreeMap<String, Value>,
    firewalls: BTreeMap<String, Value>,
    instances: BTreeMap<String, Value>,
    /// GETs of each instance so far (the external IP comes with the second).
    instance_reads: BTreeMap<String, u32>,
    operations: BTreeMap<String, PendingOperation>,
    next_operation: u64,
    fail_instance_insert: bool,
    /// `shieldedInstanceConfig.enableSecureBoot` the instances must ask for.
    expected_secure_boot: bool,
    /// The API tokens the instance inserts carried in their metadata, in order.
    metadata_tokens: Vec<String>,
    /// `quotas` of the region (`{metric, limit, usage}`).
    quotas: Vec<Value>,
    /// regions.get is refused (a role without `compute.regions.get`).
    forbid_regions: bool,
}

fn quota(metric: &str, usage: f64, limit: f64) -> Value {
    json!({ "metric": metric, "limit": limit, "usage": usage })
}

/// A project with room for a few small confidential VMs in the region.
fn roomy_quotas() -> Vec<Value> {
    vec![
        quota("CPUS", 4.0, 24.0),
        quota("DISKS_TOTAL_GB", 100.0, 4096.0),
        quota("IN_USE_ADDRESSES", 1.0, 8.0),
        quota("N2D_CPUS", 0.0, 24.0),
        quota("C3_CPUS", 4.0, 24.0),
        quota("INSTANCES", 2.0, 960.0),
    ]
}

/// The Compute Engine test server: a tokio runtime of its own, stopped on drop.
struct Gce {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<GceState>>,
    _runtime: tokio::runtime::Runtime,
}

impl Gce {
    fn start() -> Self {
        let state = Arc::new(Mutex::new(GceState {
            quotas: roomy_quotas(),
            ..GceState::default()
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::clone(&state);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = Arc::clone(&shared);
                async move { handle(&state, method, uri, headers, body) }
            },
        );
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            state,
            _runtime: runtime,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/compute/v1", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GceState> {
        self.state.lock().unwrap()
    }

    /// The bodies of the POSTs to a collection path ending in `suffix`.
    fn inserts(&self, suffix: &str) -> Vec<Value> {
        self.state()
            .requests
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(suffix))
            .map(|r| r.body.clone())
            .collect()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": status.as_u16(), "message": message } })),
    )
        .into_response()
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

fn is_name(value: &Value) -> bool {
    value.as_str().is_some_and(|name| {
        !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

fn labelled(value: &Value) -> bool {
    value["labels"]["cvm-cli-deployment"]
        .as_str()
        .is_some_and(|label| !label.is_empty())
}

/// What is wrong with an images.insert body (empty: nothing).
fn check_image(body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_name(&body["name"]) {
        problems.push(format!("image name {}", body["name"]));
    }
    let source = body["rawDisk"]["source"].as_str().unwrap_or_default();
    if !source.starts_with(&format!("https://storage.googleapis.com/{BUCKET}/"))
        || !source.ends_with(".tar.gz")
    {
        problems.push(format!("rawDisk.source {source:?}"));
    }
    let features: Vec<&str> = body["guestOsFeatures"]
        .as_array()
        .map(|list| list.iter().filter_map(|f| f["type"].as_str()).collect())
        .unwrap_or_default();
    for needed in ["UEFI_COMPATIBLE", "GVNIC", "SEV_SNP_CAPABLE", "TDX_CAPABLE"] {
        if !features.contains(&needed) {
            problems.push(format!("guestOsFeatures lacks {needed}"));
        }
    }
    if !labelled(body) {
        problems.push("image without the deployment label".into());
    }
    problems
}

fn check_firewall(body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_name(&body["name"]) {
        problems.push(format!("firewall name {}", body["name"]));
    }
    if body["direction"] != "INGRESS" || body["network"].as_str().is_none() {
        problems.push("firewall direction/network".into());
    }
    let allowed = &body["allowed"][0];
    let ports: Vec<&str> = allowed["ports"]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if allowed["IPProtocol"] != "tcp" || !ports.contains(&"8000") {
        problems.push(format!("firewall allowed {allowed}"));
    }
    if body["sourceRanges"].as_array().is_none_or(Vec::is_empty) {
        problems.push("firewall without sourceRanges".into());
    }
    if !body["description"]
        .as_str()
        .is_some_and(|text| text.contains("cvm-cli-deployment="))
    {
        problems.push("firewall description without the deployment tag".into());
    }
    if body.get("labels").is_some() {
        problems.push("firewalls have no labels".into());
    }
    problems
}

fn check_instance(state: &mut GceState, zone: &str, body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_name(&body["name"]) {
        problems.push(format!("instance name {}", body["name"]));
    }
    let machine = body["machineType"].as_str().unwrap_or_default();
    let prefix = format!("zones/{zone}/machineTypes/");
    let Some(machine) = machine.strip_prefix(&prefix) else {
        problems.push(format!("machineType {machine:?}"));
        return problems;
    };
    let tee = body["confidentialInstanceConfig"]["confidentialInstanceType"]
        .as_str()
        .unwrap_or_default();
    match (machine.split('-').next(), tee) {
        (Some("c3"), "TDX") => {}
        (Some("n2d"), "SEV_SNP") if body["minCpuPlatform"] == "AMD Milan" => {}
        _ => problems.push(format!(
            "machine {machine} with confidentialInstanceType {tee:?} and minCpuPlatform {}",
            body["minCpuPlatform"]
        )),
    }
    if body["scheduling"]["onHostMaintenance"] != "TERMINATE" {
        problems.push("scheduling.onHostMaintenance must be TERMINATE".into());
    }
    let shielded = &body["shieldedInstanceConfig"];
    for (key, expected) in [
        ("enableVtpm", true),
        ("enableSecureBoot", state.expected_secure_boot),
        ("enableIntegrityMonitoring", true),
    ] {
        if shielded[key] != expected {
            problems.push(format!("shieldedInstanceConfig.{key} must be {expected}"));
        }
    }
    // The agent's document in the metadata attribute cvm-agent, and nothing else there.
    let items = body["metadata"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let document = match &items[..] {
        [item] if item["key"] == GCP_METADATA_KEY => item["value"]
            .as_str()
            .and_then(|value| UserData::parse(value.as_bytes()).ok()),
        _ => None,
    };
    match document {
        Some(document) => state.metadata_tokens.push(document.cvm_api_token),
        None => problems.push(format!("metadata {}", body["metadata"])),
    }
    let disk = &body["disks"][0];
    let image = disk["initializeParams"]["sourceImage"]
        .as_str()
        .unwrap_or_default();
    let image_name = image
        .strip_prefix(&format!("projects/{PROJECT}/global/images/"))
        .unwrap_or_default();
    if disk["boot"] != true || !state.images.contains_key(image_name) {
        problems.push(format!("boot disk from unknown image {image:?}"));
    }
    let nic = &body["networkInterfaces"][0];
    if nic["nicType"] != "GVNIC" || nic["accessConfigs"][0]["type"] != "ONE_TO_ONE_NAT" {
        problems.push(format!("network interface {nic}"));
    }
    if !labelled(body) {
        problems.push("instance without the deployment label".into());
    }
    problems
}

fn operation(state: &mut GceState, zone: Option<&str>, error: Option<Value>) -> Value {
    state.next_operation += 1;
    let name = format!("operation-{}", state.next_operation);
    state.operations.insert(
        name.clone(),
        PendingOperation {
            polls_left: 2,
            zone: zone.map(str::to_owned),
            error,
        },
    );
    operation_json(&name, zone, "PENDING", None)
}

fn operation_json(name: &str, zone: Option<&str>, status: &str, error: Option<&Value>) -> Value {
    let mut value = json!({
        "kind": "compute#operation",
        "id": "1234567890",
        "name": name,
        "status": status,
        "progress": if status == "DONE" { 100 } else { 0 },
    });
    if let Some(zone) = zone {
        value["zone"] = json!(format!(
            "https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{zone}"
        ));
    }
    if let Some(error) = error {
        value["error"] = error.clone();
        value["httpErrorStatusCode"] = json!(400);
        value["httpErrorMessage"] = json!("BAD REQUEST");
    }
    value
}

fn handle(
    state: &Mutex<GceState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(_) => {
                state
                    .violations
                    .push(format!("{method} {uri}: body is not JSON"));
                return error(StatusCode::BAD_REQUEST, "invalid JSON");
            }
        }
    };
    state.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%3d", "=")))
        .collect();
    let prefix = format!("/compute/v1/projects/{PROJECT}/");
    let Some(path) = uri.path().strip_prefix(&prefix) else {
        state
            .violations
            .push(format!("{method} {uri}: wrong project or root"));
        return error(StatusCode::NOT_FOUND, "unknown project");
    };
    let parts: Vec<&str> = path.split('/').collect();
    // Only the ones a list filter on the deployment label selects.
    let filtered = |items: &BTreeMap<String, Value>| -> Value {
        let wanted = query
            .get("filter")
            .and_then(|f| f.strip_prefix("labels.cvm-cli-deployment="))
            .map(str::to_owned);
        let items: Vec<Value> = items
            .values()
            .filter(|item| {
                wanted
                    .as_deref()
                    .is_none_or(|w| item["labels"]["cvm-cli-deployment"] == w)
            })
            .cloned()
            .collect();
        if items.is_empty() {
            json!({ "kind": "compute#list" })
        } else {
            json!({ "kind": "compute#list", "items": items })
        }
    };
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["global", "images"]) => {
            let problems = check_image(&body);
            if !problems.is_empty() {
                state.violations.extend(problems.clone());
                return error(StatusCode::BAD_REQUEST, &problems.join("; "));
            }
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            if state.images.contains_key(&name) {
                return error(StatusCode::CONFLICT, "already exists");
            }
            state.images.insert(name, body);
            ok(operation(&mut state, None, None))
        }
        ("POST", ["global", "firewalls"]) => {
            let problems = check_firewall(&body);
            if !problems.is_empty() {
                state.violations.extend(problems.clone());
                return error(StatusCode::BAD_REQUEST, &problems.join("; "));
            }
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            if state.firewalls.contains_key(&name) {
                return error(StatusCode::CONFLICT, "already exists");
            }
            state.firewalls.insert(name, body);
            ok(operation(&mut state, None, None))
        }
        ("POST", ["zones", zone, "instances"]) => {
            let zone = zone.to_string();
            let problems = check_instance(&mut state, &zone, &body);
            if !problems.is_empty() {
                state.violations.extend(problems.clone());
                return error(StatusCode::BAD_REQUEST, &problems.join("; "));
            }
            if state.fail_instance_insert {
                let failure = json!({ "errors": [{
                    "code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                    "message": "The zone does not have enough resources available to fulfill the request."
                }]});
                return ok(operation(&mut state, Some(&zone), Some(failure)));
            }
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            let mut instance = body.clone();
            instance["status"] = json!("PROVISIONING");
            state.instances.insert(name, instance);
            ok(operation(&mut state, Some(&zone), None))
        }
        ("GET", ["global", "operations", name]) | ("GET", ["zones", _, "operations", name]) => {
            let name = name.to_string();
            let Some(pending) = state.operations.get_mut(&name) else {
                return error(StatusCode::NOT_FOUND, "no such operation");
            };
            pending.polls_left = pending.polls_left.saturating_sub(1);
            let status = match pending.polls_left {
                0 => "DONE",
                1 => "RUNNING",
                _ => "PENDING",
            };
            let error = pending.error.clone().filter(|_| status == "DONE");
            ok(operation_json(
                &name,
                pending.zone.clone().as_deref(),
                status,
                error.as_ref(),
            ))
        }
        // Compute Engine answers 404 for a machine type the zone does not offer.
        ("GET", ["zones", zone, "machineTypes", name]) => {
            let cpus: Option<u32> = name.rsplit('-').next().and_then(|n| n.parse().ok());
            match cpus {
                Some(cpus)
                    if *zone == ZONE && (name.starts_with("c3-") || name.starts_with("n2d-")) =>
                {
                    ok(json!({
                        "kind": "compute#machineType",
                        "name": name,
                        "zone": zone,
                        "guestCpus": cpus,
                        "memoryMb": cpus * 4096,
                        "isSharedCpu": false,
                    }))
                }
                _ => error(StatusCode::NOT_FOUND, "The resource was not found"),
            }
        }
        ("GET", ["regions", region]) => {
            if *region != REGION {
                return error(StatusCode::NOT_FOUND, "The resource was not found");
            }
            if state.forbid_regions {
                return error(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "Required 'compute.regions.get' permission for \
                         'projects/{PROJECT}/regions/{REGION}'"
                    ),
                );
            }
            ok(json!({
                "kind": "compute#region",
                "name": REGION,
                "status": "UP",
                "zones": [format!(
                    "https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{ZONE}"
                )],
                "quotas": state.quotas,
            }))
        }
        ("GET", ["global", "images"]) => ok(filtered(&state.images)),
        ("GET", ["zones", _, "instances"]) => ok(filtered(&state.instances)),
        ("GET", ["global", kind @ ("images" | "firewalls"), name]) => {
            let items = if *kind == "images" {
                &state.images
            } else {
                &state.firewalls
            };
            match items.get(*name) {
                Some(item) => ok(item.clone()),
                None => error(StatusCode::NOT_FOUND, "not found"),
            }
        }
        ("GET", ["zones", _, "instances", name]) => {
            let name = name.to_string();
            let reads = state.instance_reads.entry(name.clone()).or_default();
            *reads += 1;
            let running = *reads >= 2;
            match state.instances.get_mut(&name) {
                Some(instance) => {
                    if running {
                        instance["status"] = json!("RUNNING");
                        instance["networkInterfaces"][0]["accessConfigs"][0]["natIP"] =
                            json!(NAT_IP);
                    }
                    ok(instance.clone())
                }
                None => error(StatusCode::NOT_FOUND, "not found"),
            }
        }
        ("DELETE", ["global", kind @ ("images" | "firewalls"), name]) => {
            let items = if *kind == "images" {
                &mut state.images
            } else {
                &mut state.firewalls
            };
            match items.remove(*name) {
                Some(_) => ok(operation(&mut state, None, None)),
                None => error(StatusCode::NOT_FOUND, "not found"),
            }
        }
        ("DELETE", ["zones", zone, "instances", name]) => {
            let zone = zone.to_string();
            match state.instances.remove(*name) {
                Some(_) => ok(operation(&mut state, Some(&zone), None)),
                None => error(StatusCode::NOT_FOUND, "not found"),
            }
        }
        _ => {
            state.violations.push(format!("unexpected {method} {uri}"));
            error(StatusCode::NOT_FOUND, "unknown API")
        }
    }
}

/// The emulator, the Compute server, and a bucket.
struct Clouds {
    gcs: GcsEmulator,
    gce: Gce,
}

impl Clouds {
    fn start() -> Self {
        let gcs = GcsEmulator::start().expect("gcp-storage-emulator starts");
        gcs.create_bucket(BUCKET).expect("bucket");
        Self {
            gcs,
            gce: Gce::start(),
        }
    }

    /// `cvm-cli` pointed at the emulators, with nothing from the user's Google configuration.
    fn command(&self, home: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cvm-cli"));
        command
            .env("STORAGE_EMULATOR_HOST", self.gcs.endpoint())
            .env("CVM_GCP_COMPUTE_ENDPOINT", self.gce.endpoint())
            .env("HOME", home)
            .env("XDG_STATE_HOME", home.join("state"))
            .env_remove("GOOGLE_OAUTH_ACCESS_TOKEN")
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
        command
    }

    fn run(&self, home: &Path, args: &[&str]) -> Output {
        self.command(home)
            .args(args)
            .output()
            .expect("cvm-cli runs")
    }

    fn storage(&self, path: &str) -> (u16, Vec<u8>) {
        http_get(&format!("{}{path}", self.gcs.endpoint()))
    }

    /// Names of the objects in the bucket.
    fn objects(&self) -> Vec<String> {
        let (status, body) = self.storage(&format!("/storage/v1/b/{BUCKET}/o"));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let list: Value = serde_json::from_slice(&body).unwrap();
        list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn download(&self, object: &str) -> Vec<u8> {
        let (status, body) = self.storage(&format!("/storage/v1/b/{BUCKET}/o/{object}?alt=media"));
        assert_eq!(status, 200, "downloading {object}");
        body
    }
}

fn http_get(url: &str) -> (u16, Vec<u8>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let response = reqwest::get(url).await.expect("GET");
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap().to_vec())
        })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A sparse disk of `size` bytes with `data` at offset 1 MiB and a marker in the last byte.
fn sparse_disk(path: &Path, size: u64, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    file.write_all_at(&common::gpt_head(size), 0).unwrap();
    file.write_all_at(data, 1 << 20).unwrap();
    file.write_all_at(&[0x55], size - 1).unwrap();
}

/// The requests to the Compute server that are not reads (preflight and --dry-run only read).
fn writes(clouds: &Clouds) -> Vec<String> {
    clouds
        .gce
        .state()
        .requests
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// The `disk.raw` of a GCP tarball, checking it is the only member.
fn unpack(tarball: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("down.tar.gz"), tarball).unwrap();
    std::fs::create_dir(dir.path().join("unpacked")).unwrap();
    let status = Command::new("tar")
        .args(["-xzf", "down.tar.gz", "-C", "unpacked"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let members: Vec<_> = std::fs::read_dir(dir.path().join("unpacked"))
        .unwrap()
        .collect();
    assert_eq!(members.len(), 1, "only disk.raw in the tarball");
    std::fs::read(dir.path().join("unpacked/disk.raw")).unwrap()
}

/// Where deploy-gcp keeps the token of deployment `name` (with `Clouds::command`'s HOME).
fn token_file(home: &Path, name: &str) -> PathBuf {
    home.join(format!("state/cvm-cli/gcp/{name}/api-token"))
}

/// The token file's content, checking it is private to its owner.
fn private_token(path: &Path) -> String {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    let token = std::fs::read_to_string(path).unwrap();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    token
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The JSON lines of stdout: (plan, deployed).
fn json_lines(output: &Output) -> (Value, Value) {
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(output));
    (lines[0]["plan"].clone(), lines[1]["deployed"].clone())
}

/// TDX on c3 with the predecessor's snake_case flags; an unaligned disk that is not called
/// disk.raw, so the CLI packs it itself, padded to a whole GiB; then cleanup removes exactly the
/// deployment's resources.
#[test]
fn deploy_tdx_with_snake_case_flags_then_cleanup() {
    let clouds = Clouds::start();
    let dir = tempfile::tempdir().unwrap();
    let data = noise(20 << 20, 7);
    let disk = dir.path().join("custom.img");
    let size = 40 << 20;
    sparse_disk(&disk, size, &data);
    // Another deployment's image must survive the cleanup.
    clouds.gce.state().images.insert(
        "other-image".into(),
        json!({ "name": "other-image", "labels": { "cvm-cli-deployment": "other" } }),
    );

    let output = clouds
        .command(dir.path())
        .env("GOOGLE_OAUTH_ACCESS_TOKEN", "test-token")
        .env("CVM_GCP_UPLOAD_CHUNK_KIB", "1024")
        .args([
            "deploy-gcp",
            "--allow-from",
            ALLOW,
            "--vm_name",
            "gcp-tdx",
            "--project_id",
            PROJECT,
            "--bucket",
            BUCKET,
            "--region",
            ZONE,
            "--vm_type",
            "c3-standard-4",
            "--additional_ports",
            "443,80",
            "--allow-from",
            "2001:db8::/32",
            "--image",
            disk.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        clouds.gcs.log_tail()
    );
    let (plan, deployed) = json_lines(&output);
    assert_eq!(plan["tee"], "tdx");
    assert_eq!(plan["cloud"], "gcp");
    assert_eq!(plan["secure_boot"]["enabled"], false);
    let token_file = token_file(dir.path(), "gcp-tdx");
    assert_eq!(plan["api_token"]["file"], token_file.to_str().unwrap());
    assert!(plan["api_token"]["passed_via"]
        .as_str()
        .unwrap()
        .contains("metadata attribute \"cvm-agent\""));
    assert_eq!(deployed["address"], NAT_IP);
    // The instance's metadata carried the token kept in the 0600 file.
    assert_eq!(deployed["api_token_file"], token_file.to_str().unwrap());
    let token = private_token(&token_file);
    assert_eq!(clouds.gce.state().metadata_tokens, vec![token.clone()]);
    assert!(deployed["verify_command"]
        .as_str()
        .unwrap()
        .contains(&format!("{NAT_IP}:8000")));
    let state = clouds.gce.state();
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert!(state
        .requests
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer test-token")));
    drop(state);

    // The object holds the disk padded with zeros to 1 GiB, as a sparse tar member.
    let objects = clouds.objects();
    assert_eq!(objects.len(), 1, "{objects:?}");
    let object = &objects[0];
    assert!(object.starts_with("gcp-tdx-") && object.ends_with(".tar.gz"));
    let tarball = clouds.download(object);
    assert!(tarball.len() > 16 << 20, "many 1 MiB chunks were sent");
    let raw = unpack(&tarball);
    assert_eq!(raw.len() as u64, GIB);
    let original = std::fs::read(&disk).unwrap();
    assert!(raw[..size as usize] == original[..], "the disk's bytes");
    assert!(raw[size as usize..].iter().all(|b| *b == 0), "zero padding");

    let image = &clouds.gce.inserts("/global/images")[0];
    assert_eq!(
        image["rawDisk"]["source"],
        format!("https://storage.googleapis.com/{BUCKET}/{object}")
    );
    assert_eq!(image["labels"]["cvm-cli-deployment"], "gcp-tdx");
    let firewall = &clouds.gce.inserts("/global/firewalls")[0];
    assert_eq!(firewall["name"], "gcp-tdx-cvm-cli");
    assert_eq!(
        firewall["allowed"][0]["ports"],
        json!(["8000", "443", "80"])
    );
    assert_eq!(firewall["targetTags"], json!(["gcp-tdx"]));
    // Exactly the --allow-from ranges; a GCP rule takes one address family, so IPv6 gets its own.
    assert_eq!(firewall["sourceRanges"], json!([ALLOW]));
    assert_eq!(plan["allow_from"], json!([ALLOW, "2001:db8::/32"]));
    let firewalls = clouds.gce.inserts("/global/firewalls");
    assert_eq!(firewalls.len(), 2, "{firewalls:?}");
    assert_eq!(firewalls[1]["name"], "gcp-tdx-cvm-cli-v6");
    assert_eq!(firewalls[1]["sourceRanges"], json!(["2001:db8::/32"]));
    assert_eq!(firewalls[1]["allowed"], firewall["allowed"]);
    let instance = &clouds.gce.inserts(&format!("/zones/{ZONE}/instances"))[0];
    assert_eq!(
        instance["confidentialInstanceConfig"]["confidentialInstanceType"],
        "TDX"
    );
    assert!(instance.get("minCpuPlatform").is_none());
    assert_eq!(
        instance["machineType"],
        format!("zones/{ZONE}/machineTypes/c3-standard-4")
    );
    assert_eq!(
        instance["shieldedInstanceConfig"]["enableSecureBoot"],
        false
    );
    assert_eq!(instance["shieldedInstanceConfig"]["enableVtpm"], true);
    let items = &instance["metadata"]["items"];
    assert_eq!(items[0]["key"], "cvm-agent");
    let document = UserData::parse(items[0]["value"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(document.cvm_api_token, token);
    assert_eq!(instance["tags"]["items"], json!(["gcp-tdx"]));

    // Cleanup: everything of gcp-tdx, nothing else, never the bucket.
    let output = clouds.run(
        dir.path(),
        &[
            "cleanup",
            "--gcp",
            "gcp-tdx",
            "--project_id",
            PROJECT,
            "--region",
            ZONE,
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let said = text(&output);
    for line in [
        "deleted instance gcp-tdx",
        "deleted firewall gcp-tdx-cvm-cli\n",
        "deleted firewall gcp-tdx-cvm-cli-v6",
        "deleted image gcp-tdx-",
        "deleted object gs://test-bucket/gcp-tdx-",
        &format!("removed the API token {}", token_file.display()),
    ] {
        assert!(said.contains(line), "{line:?} in {said}");
    }
    assert!(!token_file.exists());
    let state = clouds.gce.state();
    assert!(state.instances.is_empty() && state.firewalls.is_empty());
    assert_eq!(state.images.keys().collect::<Vec<_>>(), vec!["other-image"]);
    drop(state);
    assert!(clouds.objects().is_empty());
    assert_eq!(clouds.storage(&format!("/storage/v1/b/{BUCKET}")).0, 200);
}

/// SEV-SNP on n2d (AMD Milan) with kebab-case flags: the builder's current disk.tar.gz beside a
/// whole-GiB disk.raw is uploaded byte for byte; no credentials, so no token is sent. With
/// --secure-boot the instance asks for Secure Boot.
#[test]
fn deploy_snp_uploads_the_builders_tarball_exactly() {
    let clouds = Clouds::start();
    clouds.gce.state().expected_secure_boot = true;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    sparse_disk(&disk, GIB, &noise(12 << 20, 11));
    let tarball = dir.path().join("disk.tar.gz");
    image_builder::formats::write_gcp_tar(&disk, &tarball, 0).unwrap();
    // The build's record that its UKI is signed: --secure-boot needs it.
    std::fs::write(
        dir.path().join("measurements.json"),
        r#"{"secure_boot": true}"#,
    )
    .unwrap();
    let expected = sha256(&std::fs::read(&tarball).unwrap());
    let disk_sha = sha256(&std::fs::read(&disk).unwrap());

    let started = std::time::Instant::now();
    let output = clouds.run(
        dir.path(),
        &[
            "deploy-gcp",
            "--allow-from",
            ALLOW,
            "--vm-name",
            "gcp-snp",
            "--project-id",
            PROJECT,
            "--bucket",
            BUCKET,
            "--vm-type",
            "n2d-standard-2",
            "--image",
            disk.to_str().unwrap(),
            "--secure-boot",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    eprintln!("deploy-gcp took {:.1} s", started.elapsed().as_secs_f64());
    let said = text(&output);
    assert!(
        said.contains("using ") && said.contains("disk.tar.gz"),
        "{said}"
    );
    assert!(
        said.contains(&format!("Deployed gcp-snp on gcp {ZONE}: {NAT_IP}")),
        "{said}"
    );

    let objects = clouds.objects();
    assert_eq!(objects.len(), 1);
    assert_eq!(
        objects[0],
        format!("gcp-snp-{}.tar.gz", &disk_sha[..12]),
        "named by the disk's content"
    );
    assert_eq!(sha256(&clouds.download(&objects[0])), expected);

    let state = clouds.gce.state();
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert!(state.requests.iter().all(|r| r.authorization.is_none()));
    drop(state);
    let instance = &clouds.gce.inserts(&format!("/zones/{ZONE}/instances"))[0];
    assert_eq!(
        instance["confidentialInstanceConfig"]["confidentialInstanceType"],
        "SEV_SNP"
    );
    assert_eq!(instance["minCpuPlatform"], "AMD Milan");
    assert_eq!(instance["scheduling"]["onHostMaintenance"], "TERMINATE");
    assert_eq!(instance["shieldedInstanceConfig"]["enableVtpm"], true);
    assert_eq!(instance["shieldedInstanceConfig"]["enableSecureBoot"], true);
    assert!(
        said.contains("Secure Boot: on (--secure-boot") && said.contains("Secure Boot on,"),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "API token:  {}",
            token_file(dir.path(), "gcp-snp").display()
        )),
        "{said}"
    );
    assert_eq!(
        clouds.gce.state().metadata_tokens,
        vec![private_token(&token_file(dir.path(), "gcp-snp"))]
    );
    assert_eq!(instance["networkInterfaces"][0]["nicType"], "GVNIC");
}

/// The instance insert operation ends in an error: the image, firewall rule and object this run
/// created are deleted and the output says so; with --keep-on-failure they are kept and listed.
#[test]
fn failed_instance_deletes_what_was_created_unless_kept() {
    let clouds = Clouds::start();
    clouds.gce.state().fail_instance_insert = true;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    sparse_disk(&disk, GIB, &noise(1 << 20, 3));
    let args = |extra: &'static [&'static str]| {
        let mut args = vec![
            "deploy-gcp",
            "--allow-from",
            ALLOW,
            "--project-id",
            PROJECT,
            "--bucket",
            BUCKET,
            "--image",
            disk.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args
    };

    let output = clouds.run(dir.path(), &args(&[]));
    assert!(!output.status.success());
    let said = text(&output);
    assert!(said.contains("ZONE_RESOURCE_POOL_EXHAUSTED"), "{said}");
    let token_file = token_file(dir.path(), "cvm-test");
    for line in [
        "deleted firewall cvm-test-cvm-cli",
        "deleted image cvm-test-",
        "deleted object gs://test-bucket/cvm-test-",
        &format!("removed the API token {}", token_file.display()),
    ] {
        assert!(said.contains(line), "{line:?} in {said}");
    }
    // The failed insert left no instance: none is deleted.
    assert!(
        !said.contains("deleted instance") && !said.contains("did not exist"),
        "{said}"
    );
    assert!(!token_file.exists());
    let state = clouds.gce.state();
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert!(state.images.is_empty() && state.firewalls.is_empty() && state.instances.is_empty());
    drop(state);
    assert!(clouds.objects().is_empty());

    let output = clouds.run(dir.path(), &args(&["--keep-on-failure"]));
    assert!(!output.status.success());
    let said = text(&output);
    assert!(said.contains("kept image cvm-test-"), "{said}");
    assert!(said.contains("kept firewall cvm-test-cvm-cli"), "{said}");
    assert!(said.contains("cvm-cli cleanup --gcp cvm-test"), "{said}");
    // No instance exists to carry the token, so it goes even with --keep-on-failure.
    assert!(!said.contains("kept instance"), "{said}");
    assert!(said.contains("removed the API token"), "{said}");
    assert!(!token_file.exists());
    let state = clouds.gce.state();
    assert_eq!(state.images.len(), 1);
    assert_eq!(state.firewalls.len(), 1);
    drop(state);
    assert_eq!(clouds.objects().len(), 1);

    // Once the zone has room again, the same deploy goes on with what was kept: no upload, the
    // image and firewall rule are reused.
    clouds.gce.state().fail_instance_insert = false;
    let output = clouds.run(dir.path(), &args(&[]));
    assert!(output.status.success(), "{}", text(&output));
    let said = text(&output);
    for line in [
        "already there (same disk): not uploading again",
        "exists already (this deployment's, same disk): reusing it",
        "exists already (this deployment's, same ports and ranges): reusing it",
        &format!("Deployed cvm-test on gcp {ZONE}: {NAT_IP}"),
    ] {
        assert!(said.contains(line), "{line:?} in {said}");
    }
    let state = clouds.gce.state();
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert_eq!(state.instances.len(), 1);
    // Three inserts, three fresh tokens; the last one is kept.
    let tokens = state.metadata_tokens.clone();
    drop(state);
    assert_eq!(tokens.len(), 3);
    assert!(tokens[0] != tokens[1] && tokens[1] != tokens[2] && tokens[0] != tokens[2]);
    assert_eq!(private_token(&token_file), tokens[2]);

    // Other ports than the kept rule's: refused, nothing new left behind.
    clouds.gce.state().instances.clear();
    std::fs::remove_file(&token_file).unwrap();
    let output = clouds.run(dir.path(), &args(&["--additional_ports", "443"]));
    assert!(!output.status.success());
    assert!(
        text(&output).contains("exists with other ports"),
        "{}",
        text(&output)
    );
    assert!(clouds.gce.state().instances.is_empty());
}

/// --dry-run prints the plan and touches nothing; a machine type without TDX/SEV-SNP, a name GCP
/// refuses, and missing credentials fail with clear messages before anything is created.
#[test]
fn dry_run_and_refusals_create_nothing() {
    let clouds = Clouds::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    sparse_disk(&disk, GIB, b"data");
    let image = disk.to_str().unwrap();
    let base = [
        "deploy-gcp",
        "--allow-from",
        ALLOW,
        "--project_id",
        PROJECT,
        "--bucket",
        BUCKET,
        "--image",
        image,
    ];

    let output = clouds.run(dir.path(), &[&base[..], &["--dry_run", "--json"]].concat());
    assert!(output.status.success(), "{}", text(&output));
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["plan"]["vm_type"], "c3-standard-4");
    assert_eq!(plan["plan"]["region"], ZONE);
    assert_eq!(plan["plan"]["deployment"], "cvm-test");
    assert_eq!(plan["plan"]["secure_boot"]["enabled"], false);
    assert_eq!(
        plan["plan"]["secure_boot"]["note"],
        "off (image unsigned; PCR 7 records it; the golden's PCR set decides)"
    );
    assert_eq!(
        plan["plan"]["api_token"]["passed_via"],
        "the instance metadata attribute \"cvm-agent\" (metadata.items[])"
    );

    let output = clouds.run(
        dir.path(),
        &[&base[..], &["--vm_type", "e2-standard-4"]].concat(),
    );
    assert_eq!(output.status.code(), Some(2));
    let said = text(&output);
    assert!(
        said.contains("\"e2-standard-4\"") && said.contains("c3-*") && said.contains("n2d-*"),
        "{said}"
    );

    let output = clouds.run(
        dir.path(),
        &[&base[..], &["--vm_name", "cvm_test"]].concat(),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("lowercase letters, digits and '-'"));

    // Real Google endpoints, no token, no ADC file, no gcloud: told how to log in.
    let output = Command::new(env!("CARGO_BIN_EXE_cvm-cli"))
        .args(base)
        .env("HOME", dir.path())
        .env("PATH", dir.path())
        .env_remove("STORAGE_EMULATOR_HOST")
        .env_remove("CVM_GCP_COMPUTE_ENDPOINT")
        .env_remove("GOOGLE_OAUTH_ACCESS_TOKEN")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("gcloud auth login"),
        "{}",
        text(&output)
    );

    assert_eq!(
        writes(&clouds),
        Vec::<String>::new(),
        "only reads were sent"
    );
    assert!(clouds.objects().is_empty());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(leftovers, vec![disk.clone()], "no tarball was made");
}

/// A TCP proxy to the storage emulator that cuts one connection once `cut_after` bytes went
/// from the client to the emulator (all connections counted), in the middle of an upload chunk.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    fn start(target: std::net::SocketAddr, cut_after: u64) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut2, stop2) = (Arc::clone(&cut), Arc::clone(&stop));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let (sent, cut) = (Arc::clone(&sent), Arc::clone(&cut2));
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                // Emulator -> client.
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                });
                // Client -> emulator, counted; cut once past the mark.
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_client.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let total = sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        if total > cut_after && !cut.swap(true, Ordering::Relaxed) {
                            let _ = from_client.shutdown(std::net::Shutdown::Both);
                            let _ = to_server.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        if to_server.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { addr, cut, stop }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// The connection breaks in the middle of the third chunk while the disk is packed on the fly:
/// the upload asks the service how far it got, resumes from there, and the object still holds
/// exactly the disk.
#[test]
fn interrupted_upload_resumes_from_the_persisted_offset() {
    let clouds = Clouds::start();
    let proxy = CuttingProxy::start(clouds.gcs.addr(), (2 << 20) + 300_000);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    sparse_disk(&disk, GIB, &noise(5 << 20, 5));
    let expected = sha256(&std::fs::read(&disk).unwrap());

    let output = clouds
        .command(dir.path())
        .env("STORAGE_EMULATOR_HOST", format!("http://{}", proxy.addr))
        .env("CVM_GCP_UPLOAD_CHUNK_KIB", "1024")
        .args([
            "deploy-gcp",
            "--allow-from",
            ALLOW,
            "--project-id",
            PROJECT,
            "--bucket",
            BUCKET,
            "--image",
            disk.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(proxy.cut.load(std::sync::atomic::Ordering::Relaxed));
    let said = text(&output);
    assert!(said.contains("upload interrupted"), "{said}");
    assert!(said.contains("packing"), "{said}");
    let objects = clouds.objects();
    assert_eq!(objects.len(), 1);
    assert_eq!(sha256(&unpack(&clouds.download(&objects[0]))), expected);
}

/// The attestation gate: with --golden a deploy is done only when the VM's agent answers and
/// verifies. An agent that never answers fails the deploy; the VM is kept for inspection and the
/// output says how to remove it.
#[test]
fn the_attestation_gate_fails_a_deploy_whose_agent_never_answers() {
    let clouds = Clouds::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    sparse_disk(&disk, GIB, &noise(1 << 20, 3));
    let golden = dir.path().join("golden.json");
    std::fs::write(&golden, r#"{"version": 1}"#).unwrap();
    let output = clouds.run(
        dir.path(),
        &[
            "deploy-gcp",
            "--allow-from",
            ALLOW,
            "--vm-name",
            "gated",
            "--project-id",
            PROJECT,
            "--bucket",
            BUCKET,
            "--image",
            disk.to_str().unwrap(),
            "--golden",
            golden.to_str().unwrap(),
            "--gate-seconds",
            "1",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains(&format!("Deployed gated on gcp {ZONE}: {NAT_IP}")),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "attestation gate: the agent at {NAT_IP}:8000 did not answer"
        )),
        "{said}"
    );
    assert!(said.contains("cvm-cli cleanup --gcp gated"), "{said}");
    assert!(clouds.gce.state().instances.contains_key("gated"));
    // The VM is kept, and so is its token.
    let token = private_token(&token_file(dir.path(), "gated"));
    assert_eq!(clouds.gce.state().metadata_tokens, vec![token]);
}

/// Port 8000 serves /update-workload: a deploy must say who may reach it, and the ports and
/// ranges are checked before anything is created (also with --dry-run).
#[test]
fn ingress_must_be_given_and_is_checked_before_anything() {
    let clouds = Clouds::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    sparse_disk(&disk, GIB, b"data");
    let image = disk.to_str().unwrap();
    let base = [
        "deploy-gcp",
        "--project_id",
        PROJECT,
        "--bucket",
        BUCKET,
        "--image",
        image,
    ];

    for extra in [&[][..], &["--dry-run"]] {
        let output = clouds.run(dir.path(), &[&base[..], extra].concat());
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let said = text(&output);
        assert!(
            said.contains("--allow-from <your public IP>/32")
                && said.contains("--allow-from 0.0.0.0/0")
                && !said.contains("Plan:"),
            "{said}"
        );
    }
    for (args, expected) in [
        (&["--allow-from", "198.51.100.0/-1"][..], "prefix length"),
        (&["--allow-from", "::/"], "prefix length"),
        (&["--allow-from", "198.51.100/24"], "not an IPv4 or IPv6"),
        (
            &["--allow-from", ALLOW, "--additional-ports", "0"],
            "1-65535",
        ),
        (
            &["--allow-from", ALLOW, "--additional-ports", "22,23,22"],
            "twice",
        ),
        (
            &["--allow-from", ALLOW, "--additional-ports", "8000"],
            "agent's own",
        ),
    ] {
        let output = clouds.run(dir.path(), &[&base[..], args].concat());
        assert_ne!(output.status.code(), Some(0), "{args:?}");
        assert!(
            text(&output).contains(expected),
            "{args:?}: {}",
            text(&output)
        );
    }

    // The whole internet only when asked for, and then the plan warns.
    let output = clouds.run(
        dir.path(),
        &[
            &base[..],
            &["--allow-from", "0.0.0.0/0", "--dry-run", "--json"],
        ]
        .concat(),
    );
    assert!(output.status.success(), "{}", text(&output));
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["plan"]["allow_from"], json!(["0.0.0.0/0"]));
    assert!(
        plan["plan"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("open to the whole internet"),
        "{plan}"
    );

    assert_eq!(
        writes(&clouds),
        Vec::<String>::new(),
        "only reads were sent"
    );
    assert!(clouds.objects().is_empty());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(leftovers, vec![disk.clone()], "no tarball was made");
}

/// A failure right after each step (the runner's test hook) deletes exactly what exists by
/// then, newest first; the emulator and the Compute server hold nothing of it afterwards.
#[test]
fn a_failure_after_each_step_rolls_back_exactly_what_was_created() {
    let clouds = Clouds::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    sparse_disk(&disk, GIB, &noise(1 << 20, 9));
    let kinds = ["object", "image", "firewall", "instance"];
    for step in 1..=kinds.len() {
        let name = format!("fail-{step}");
        let output = clouds
            .command(dir.path())
            .env("CVM_CLI_TEST_FAIL_AFTER_STEP", step.to_string())
            .args([
                "deploy-gcp",
                "--allow-from",
                ALLOW,
                "--name",
                &name,
                "--project-id",
                PROJECT,
                "--bucket",
                BUCKET,
                "--zone",
                ZONE,
                "--image",
                disk.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let said = text(&output);
        assert!(
            said.contains(&format!("failure injected after step {step}")),
            "{said}"
        );
        let deleted: Vec<&str> = said
            .lines()
            .filter_map(|line| line.strip_prefix("  deleted "))
            .map(|rest| rest.split(' ').next().unwrap())
            .collect();
        let mut expected: Vec<&str> = kinds[..step].to_vec();
        expected.reverse();
        assert_eq!(deleted, expected, "{said}");
        let state = clouds.gce.state();
        assert!(state.violations.is_empty(), "{:?}", state.violations);
        assert!(
            state.images.is_empty() && state.firewalls.is_empty() && state.instances.is_empty(),
            "step {step}: {:?} {:?} {:?}",
            state.images.keys(),
            state.firewalls.keys(),
            state.instances.keys()
        );
        drop(state);
        assert_eq!(clouds.objects(), Vec::<String>::new(), "step {step}");
        assert!(!token_file(dir.path(), &name).exists());
    }
}

/// Preflight reads the region's quotas: an instance that its family's metric has no room for
/// (`CPUS` counts only E2 and N1) is refused before anything is made (also with --dry-run); a metric the region does
/// not list, or a refused regions.get, is a warning and the deploy goes on.
#[test]
fn the_vcpu_quota_is_checked_in_preflight() {
    let clouds = Clouds::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    sparse_disk(&disk, GIB, &noise(1 << 20, 11));
    let base = [
        "deploy-gcp",
        "--allow-from",
        ALLOW,
        "--project-id",
        PROJECT,
        "--bucket",
        BUCKET,
        "--image",
        disk.to_str().unwrap(),
    ];

    let output = clouds.run(dir.path(), &[&base[..], &["--dry-run"]].concat());
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains(&format!(
            "vCPU quota in {REGION}: c3-standard-4 needs 4; C3_CPUS: 20 free"
        )),
        "{}",
        text(&output)
    );

    // The family's metric is short: refused, with and without --dry-run.
    clouds.gce.state().quotas = vec![quota("CPUS", 4.0, 24.0), quota("C3_CPUS", 22.0, 24.0)];
    for extra in [&[][..], &["--dry-run"]] {
        let output = clouds.run(dir.path(), &[&base[..], extra].concat());
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(
            text(&output).contains(&format!(
                "not enough vCPU quota in {REGION} (project {PROJECT}): c3-standard-4 needs 4 \
                 vCPUs, but C3_CPUS has 22 of 24 in use"
            )),
            "{}",
            text(&output)
        );
    }
    // An n2d draws on N2D_CPUS: short there is refused; a full CPUS (E2, N1) is no matter.
    clouds.gce.state().quotas = vec![quota("CPUS", 24.0, 24.0), quota("N2D_CPUS", 23.0, 24.0)];
    let n2d = [&base[..], &["--vm-type", "n2d-standard-2"]].concat();
    let output = clouds.run(dir.path(), &n2d);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("n2d-standard-2 needs 2 vCPUs, but N2D_CPUS has 23 of 24 in use"),
        "{}",
        text(&output)
    );
    clouds.gce.state().quotas = vec![quota("CPUS", 24.0, 24.0), quota("N2D_CPUS", 0.0, 24.0)];
    let output = clouds.run(dir.path(), &[&n2d[..], &["--dry-run"]].concat());
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(writes(&clouds), Vec::<String>::new(), "nothing was created");
    assert!(clouds.objects().is_empty());
    assert!(!token_file(dir.path(), "cvm-test").exists());

    // A family metric the region does not list: a warning, not a refusal.
    clouds.gce.state().quotas = vec![quota("CPUS", 0.0, 24.0)];
    let output = clouds.run(dir.path(), &[&base[..], &["--dry-run"]].concat());
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains(&format!(
            "warning: vCPU quota not checked: region {REGION} lists no C3_CPUS quota"
        )),
        "{}",
        text(&output)
    );

    // regions.get refused: a warning, and the deploy goes on to the end.
    {
        let mut state = clouds.gce.state();
        state.quotas = roomy_quotas();
        state.forbid_regions = true;
    }
    let output = clouds.run(dir.path(), &base);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains(&format!(
            "warning: vCPU quota not checked: reading region {REGION} was refused (HTTP 403 \
             Forbidden: Required 'compute.regions.get' permission"
        )),
        "{}",
        text(&output)
    );
    let state = clouds.gce.state();
    assert!(state.instances.contains_key("cvm-test"));
    assert!(state.violations.is_empty(), "{:?}", state.violations);
}
