//! `cvm-cli deploy-azure` and `cleanup --azure` end to end, with the real binary:
//! - the disk's page blob lives in Azurite (npm `azurite`, installed by
//!   scripts/install-test-deps.sh under /opt/cvm-test-npm);
//! - Azure Resource Manager is a test server here (axum) that checks every request against the
//!   documented REST shapes (api-version, method, path, body fields) and answers like ARM:
//!   201 + `Azure-AsyncOperation` (InProgress, then Succeeded or Failed), 202 + `Location` for
//!   actions and deletes. `beginGetAccess` hands out a SAS URL of the page blob on a small proxy
//!   in front of Azurite that enforces Azure's 4 MiB page-write limit (Azurite does not) and
//!   records every write.
//!
//! The VM's `userData` must carry the agent's provisioning document with the token the deploy
//! kept in its 0600 token file, and Secure Boot must be off unless `--secure-boot` is given.

mod common;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cvm_attestation::provision::UserData;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AZURITE: &str = "/opt/cvm-test-npm/node_modules/.bin/azurite-blob";
const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key.
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const SUB: &str = "00000000-1111-2222-3333-444444444444";
const TAG: &str = "cvm-cli-deployment";
const MIB: u64 = 1 << 20;
const ADDRESS: &str = "20.1.2.3";
/// Who may connect in these tests: documentation ranges (RFC 5737).
const ALLOW: &str = "198.51.100.0/24";
const ALLOW_TOO: &str = "203.0.113.0/24";

// ---------------------------------------------------------------------------------------------
// Azurite

/// Azurite's blob service on a free loopback port; killed on drop (also when a test panics).
struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Azurite {
    fn start(in_memory: bool) -> Azurite {
        assert!(
            Path::new(AZURITE).exists(),
            "{AZURITE} missing: run scripts/install-test-deps.sh"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = Command::new(AZURITE);
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--skipApiVersionCheck", "--loose", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if in_memory {
            command.arg("--inMemoryPersistence");
        } else {
            command.arg("--location").arg(dir.path());
        }
        let child = command.spawn().expect("azurite-blob starts");
        let azurite = Azurite {
            child,
            port,
            _dir: dir,
        };
        let mut azurite = azurite;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = azurite.child.try_wait() {
                panic!("azurite-blob exited: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "azurite did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        azurite
    }

    fn blob_url(&self, container: &str, blob: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{ACCOUNT}/{container}/{blob}",
            self.port
        )
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<_>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// An account SAS (blob service, all resource types, read/write/create/delete) signed with the
/// development account key.
fn account_sas() -> String {
    let (version, permissions, services, types, expiry, protocol) = (
        "2019-12-12",
        "rwdlacup",
        "b",
        "sco",
        "2099-01-01T00:00:00Z",
        "https,http",
    );
    let to_sign = format!(
        "{ACCOUNT}\n{permissions}\n{services}\n{types}\n\n{expiry}\n\n{protocol}\n{version}\n"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(ACCOUNT_KEY)
        .unwrap();
    let signature =
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
    let signature = signature
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    format!(
        "sv={version}&ss={services}&srt={types}&sp={permissions}&se={expiry}&spr=https,http&sig={signature}"
    )
}

/// Creates container `vhds` (if needed) and an empty page blob `name` of `size` bytes; returns
/// the blob's SAS URL.
async fn page_blob(azurite: &Azurite, name: &str, size: u64) -> String {
    let http = reqwest::Client::new();
    let sas = account_sas();
    let container = format!(
        "http://127.0.0.1:{}/{ACCOUNT}/vhds?restype=container&{sas}",
        azurite.port
    );
    let response = http
        .put(&container)
        .header("x-ms-version", "2021-12-02")
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert!(
        response.status() == 201 || response.status() == 409,
        "create container: {}",
        response.text().await.unwrap()
    );
    let blob = format!("{}?{sas}", azurite.blob_url("vhds", name));
    let response = http
        .put(&blob)
        .header("x-ms-version", "2021-12-02")
        .header("x-ms-blob-type", "PageBlob")
        .header("x-ms-blob-content-length", size.to_string())
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "create page blob: {}",
        response.text().await.unwrap()
    );
    blob
}

async fn download(blob_sas_url: &str) -> Vec<u8> {
    let response = reqwest::Client::new()
        .get(blob_sas_url)
        .header("x-ms-version", "2021-12-02")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().to_vec()
}

// ---------------------------------------------------------------------------------------------
// The ARM test server

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    body: Value,
}

enum Operation {
    /// Azure-AsyncOperation: InProgress on the first poll, then the outcome.
    Async { polls: u32, error: Option<Value> },
    /// Location: 202 on the first poll, then 200 with the result.
    Location { polls: u32, result: Value },
}

#[derive(Default)]
struct Arm {
    base: String,
    /// Where Azurite's page blob is (SAS URL); the proxy forwards writes there.
    azurite_blob: String,
    /// The SAS URL handed out by beginGetAccess (the proxy, or Azurite itself).
    access_sas: String,
    fail_vm: bool,
    /// The blob service answers every page write with 503 ServerBusy.
    fail_page_writes: bool,
    expected_upload_bytes: u64,
    expected_ports: Vec<u16>,
    /// `sourceAddressPrefixes` every inbound rule must carry.
    expected_sources: Vec<String>,
    expected_vm_size: String,
    /// `securityProfile.uefiSettings.secureBootEnabled` the VM must ask for.
    expected_secure_boot: bool,
    /// The API tokens the VMs' userData carried, in order.
    user_data_tokens: Vec<String>,
    deployment: String,
    log: Vec<Recorded>,
    tokens: Vec<String>,
    problems: Vec<String>,
    /// Lower-case resource id -> resource JSON.
    resources: BTreeMap<String, Value>,
    disk_state: BTreeMap<String, &'static str>,
    operations: BTreeMap<u64, Operation>,
    next_operation: u64,
    page_writes: Vec<(u64, String)>,
    /// The Compute usages of eastus2 (`value` entries), served two to a page.
    usages: Vec<Value>,
    /// The usages read is refused (a role without `Microsoft.Compute/locations/usages/read`).
    forbid_usages: bool,
}

type Shared = Arc<Mutex<Arm>>;

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn api_version_for(path: &str) -> &'static str {
    let lower = path.to_ascii_lowercase();
    if lower.contains("/providers/microsoft.compute/disks/") {
        "2024-03-02"
    } else if lower.contains("/providers/microsoft.compute/virtualmachines/")
        // Usage - List belongs to the same resource provider version.
        || lower.contains("/providers/microsoft.compute/locations/")
    {
        "2024-07-01"
    } else if lower.contains("/providers/microsoft.network/") {
        "2024-05-01"
    } else {
        "2024-03-01"
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url_pairs(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    if path.starts_with("/blob/") {
        return proxy_page_write(shared, method, query, headers, body).await;
    }
    let mut arm = shared.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Some(token) = auth.strip_prefix("Bearer ").filter(|t| !t.is_empty()) else {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer authorization_uri=\"test\"")],
            axum::Json(json!({"error": {"code": "AuthenticationFailed", "message": "no token"}})),
        )
            .into_response();
    };
    arm.tokens.push(token.to_owned());
    if let Some(id) = path.strip_prefix("/operations/") {
        return poll(&mut arm, id);
    }
    let body_json: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(error) => {
                arm.problems
                    .push(format!("{method} {path}: body not JSON: {error}"));
                return arm_error(StatusCode::BAD_REQUEST, "InvalidRequestContent", "not JSON");
            }
        }
    };
    arm.log.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: body_json.clone(),
    });
    let expected_api = api_version_for(&path);
    if query_param(&query, "api-version").as_deref() != Some(expected_api) {
        let problem = format!("{method} {path}: api-version must be {expected_api}, got {query}");
        arm.problems.push(problem.clone());
        return arm_error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            &problem,
        );
    }
    let locations = format!("/subscriptions/{SUB}/providers/Microsoft.Compute/locations/");
    if let Some(rest) = path.strip_prefix(&locations) {
        return usages(&mut arm, method.as_str(), rest, &query);
    }
    let prefix = format!("/subscriptions/{SUB}/resourceGroups/");
    let Some(rest) = path.strip_prefix(&prefix) else {
        arm.problems
            .push(format!("{method} {path}: not in the subscription"));
        return arm_error(StatusCode::NOT_FOUND, "SubscriptionNotFound", &path);
    };
    let group = rest.split('/').next().unwrap_or_default().to_owned();
    let group_id = format!("{prefix}{group}").to_ascii_lowercase();
    let key = path.to_ascii_lowercase();
    let parts: Vec<&str> = rest.split('/').collect();
    match (method.as_str(), parts.len()) {
        // Resource group.
        ("GET", 1) => match arm.resources.get(&key) {
            Some(resource) => axum::Json(resource.clone()).into_response(),
            None => arm_error(StatusCode::NOT_FOUND, "ResourceGroupNotFound", &group),
        },
        ("PUT", 1) => {
            check_common(&mut arm, &path, &body_json);
            let resource = json!({
                "id": path, "name": group, "location": body_json["location"],
                "tags": body_json["tags"], "properties": {"provisioningState": "Succeeded"}
            });
            arm.resources.insert(key, resource.clone());
            (StatusCode::CREATED, axum::Json(resource)).into_response()
        }
        ("DELETE", 1) => {
            let children: Vec<String> = arm
                .resources
                .keys()
                .filter(|k| k.starts_with(&format!("{group_id}/")))
                .cloned()
                .collect();
            for child in children {
                arm.resources.remove(&child);
            }
            arm.resources.remove(&key);
            location_operation(&mut arm, Value::Null)
        }
        // Resource list.
        ("GET", 2) if parts[1] == "resources" => {
            let filter = query_param(&query, "$filter").unwrap_or_default();
            let wanted = filter
                .split("tagValue eq '")
                .nth(1)
                .and_then(|v| v.split('\'').next())
                .map(str::to_owned);
            let value: Vec<Value> = arm
                .resources
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{group_id}/providers/")))
                .filter(|(_, r)| match &wanted {
                    Some(w) => r["tags"][TAG].as_str() == Some(w),
                    None => true,
                })
                .map(|(_, r)| r.clone())
                .collect();
            axum::Json(json!({ "value": value })).into_response()
        }
        // A resource: providers/NS/TYPE/NAME (+ action).
        (_, 5) | (_, 6) if parts[1] == "providers" => {
            if !arm.resources.contains_key(&group_id) {
                return arm_error(StatusCode::NOT_FOUND, "ResourceGroupNotFound", &group);
            }
            let kind = format!("{}/{}", parts[2], parts[3]);
            let id = format!("{prefix}{}", parts[..5].join("/"));
            let id_key = id.to_ascii_lowercase();
            let action = parts.get(5).copied();
            resource_request(
                &mut arm,
                method.as_str(),
                &kind,
                &id,
                &id_key,
                action,
                &body_json,
            )
        }
        _ => {
            arm.problems
                .push(format!("{method} {path}: unexpected request"));
            arm_error(StatusCode::BAD_REQUEST, "UnexpectedRequest", &path)
        }
    }
}

/// Usage - List of Microsoft.Compute: `{"value": [...], "nextLink"}`, two entries a page.
fn usages(arm: &mut Arm, method: &str, rest: &str, query: &str) -> Response {
    if method != "GET" || rest != "eastus2/usages" {
        arm.problems
            .push(format!("{method} locations/{rest}: unexpected request"));
        return arm_error(
            StatusCode::NOT_FOUND,
            "LocationNotAvailableForResourceType",
            rest,
        );
    }
    if arm.forbid_usages {
        let message = format!(
            "The client 'cvm-cli-test' with object id '0000' does not have authorization to \
             perform action 'Microsoft.Compute/locations/usages/read' over scope \
             '/subscriptions/{SUB}' or the scope is invalid."
        );
        return arm_error(StatusCode::FORBIDDEN, "AuthorizationFailed", &message);
    }
    let skip: usize = query_param(query, "$skiptoken")
        .and_then(|token| token.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = arm.usages.iter().skip(skip).take(2).cloned().collect();
    let mut body = json!({ "value": page });
    if skip + 2 < arm.usages.len() {
        body["nextLink"] = json!(format!(
            "{}/subscriptions/{SUB}/providers/Microsoft.Compute/locations/{rest}\
             ?api-version=2024-07-01&$skiptoken={}",
            arm.base,
            skip + 2
        ));
    }
    axum::Json(body).into_response()
}

/// One entry of Usage - List.
fn usage(name: &str, localized: &str, used: i64, limit: i64) -> Value {
    json!({
        "unit": "Count",
        "currentValue": used,
        "limit": limit,
        "name": { "value": name, "localizedValue": localized },
    })
}

/// A subscription with room for a few small confidential VMs in eastus2.
fn roomy_usages() -> Vec<Value> {
    vec![
        usage("availabilitySets", "Availability Sets", 0, 2500),
        usage("cores", "Total Regional vCPUs", 4, 100),
        usage("virtualMachines", "Virtual Machines", 2, 25000),
        usage(
            "standardDCASv5Family",
            "Standard DCASv5 Family vCPUs",
            0,
            16,
        ),
        usage("standardDCEV5Family", "Standard DCESv5 Family vCPUs", 2, 16),
    ]
}

fn check_common(arm: &mut Arm, path: &str, body: &Value) {
    if body["location"] != "eastus2" {
        arm.problems.push(format!(
            "PUT {path}: location {} is not eastus2",
            body["location"]
        ));
    }
    if body["tags"][TAG].as_str() != Some(arm.deployment.as_str()) {
        arm.problems
            .push(format!("PUT {path}: tags {} lack {TAG}", body["tags"]));
    }
}

fn require(arm: &mut Arm, path: &str, what: &str, ok: bool) {
    if !ok {
        arm.problems.push(format!("{path}: {what}"));
    }
}

fn resource_request(
    arm: &mut Arm,
    method: &str,
    kind: &str,
    id: &str,
    key: &str,
    action: Option<&str>,
    body: &Value,
) -> Response {
    let exists = arm.resources.contains_key(key);
    match (method, action) {
        ("GET", None) => match arm.resources.get(key) {
            Some(resource) => axum::Json(resource.clone()).into_response(),
            None => arm_error(StatusCode::NOT_FOUND, "ResourceNotFound", id),
        },
        ("DELETE", None) => {
            if arm.disk_state.get(key) == Some(&"ActiveUpload") {
                arm.problems
                    .push(format!("DELETE {id} while its upload SAS is active"));
                return arm_error(StatusCode::CONFLICT, "OperationNotAllowed", "active SAS");
            }
            arm.resources.remove(key);
            location_operation(arm, Value::Null)
        }
        ("POST", Some("beginGetAccess")) => {
            require(arm, id, "beginGetAccess on a missing disk", exists);
            require(arm, id, "access must be Write", body["access"] == "Write");
            require(
                arm,
                id,
                "disk not ReadyToUpload",
                arm.disk_state.get(key) == Some(&"ReadyToUpload"),
            );
            arm.disk_state.insert(key.to_owned(), "ActiveUpload");
            let sas = arm.access_sas.clone();
            location_operation(arm, json!({ "accessSAS": sas }))
        }
        ("POST", Some("endGetAccess")) => {
            require(
                arm,
                id,
                "endGetAccess without an active upload",
                arm.disk_state.get(key) == Some(&"ActiveUpload"),
            );
            arm.disk_state.insert(key.to_owned(), "Unattached");
            location_operation(arm, Value::Null)
        }
        ("PUT", None) => {
            check_common(arm, id, body);
            let mut properties = body["properties"].clone();
            let p = &body["properties"];
            let mut fail = None;
            match kind {
                "Microsoft.Compute/disks" => {
                    let c = &p["creationData"];
                    require(
                        arm,
                        id,
                        "createOption Upload",
                        c["createOption"] == "Upload",
                    );
                    let size = c["uploadSizeBytes"].as_u64().unwrap_or_default();
                    require(
                        arm,
                        id,
                        "uploadSizeBytes = VHD size (MiB + 512)",
                        size == arm.expected_upload_bytes && size % MIB == 512,
                    );
                    require(
                        arm,
                        id,
                        "hyperVGeneration V2",
                        p["hyperVGeneration"] == "V2",
                    );
                    require(arm, id, "osType Linux", p["osType"] == "Linux");
                    require(
                        arm,
                        id,
                        "securityProfile.securityType",
                        p["securityProfile"]["securityType"]
                            == "ConfidentialVM_VMGuestStateOnlyEncryptedWithPlatformKey",
                    );
                    arm.disk_state.insert(key.to_owned(), "ReadyToUpload");
                }
                "Microsoft.Network/networkSecurityGroups" => {
                    let ports: Vec<u16> = p["securityRules"]
                        .as_array()
                        .map(|rules| {
                            rules
                                .iter()
                                .filter(|r| {
                                    r["properties"]["direction"] == "Inbound"
                                        && r["properties"]["access"] == "Allow"
                                        && r["properties"]["protocol"] == "Tcp"
                                })
                                .filter_map(|r| {
                                    r["properties"]["destinationPortRange"]
                                        .as_str()?
                                        .parse()
                                        .ok()
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let expected = arm.expected_ports.clone();
                    require(arm, id, "inbound rules for the ports", ports == expected);
                    // Each rule admits exactly the --allow-from ranges, never "*".
                    let sources_ok = p["securityRules"].as_array().is_some_and(|rules| {
                        rules.iter().all(|r| {
                            r["properties"].get("sourceAddressPrefix").is_none()
                                && r["properties"]["sourceAddressPrefixes"]
                                    == json!(arm.expected_sources)
                        })
                    });
                    require(arm, id, "sourceAddressPrefixes", sources_ok);
                }
                "Microsoft.Network/publicIPAddresses" => {
                    require(arm, id, "Standard SKU", body["sku"]["name"] == "Standard");
                    require(arm, id, "Static", p["publicIPAllocationMethod"] == "Static");
                    properties["ipAddress"] = json!(ADDRESS);
                }
                "Microsoft.Network/virtualNetworks" => {
                    require(
                        arm,
                        id,
                        "address space",
                        p["addressSpace"]["addressPrefixes"][0].is_string(),
                    );
                    require(arm, id, "a subnet", p["subnets"][0]["name"].is_string());
                }
                "Microsoft.Network/networkInterfaces" => {
                    let config = &p["ipConfigurations"][0]["properties"];
                    let subnet = config["subnet"]["id"].as_str().unwrap_or_default();
                    let vnet = subnet.split("/subnets/").next().unwrap_or_default();
                    let ip = config["publicIPAddress"]["id"].as_str().unwrap_or_default();
                    let nsg = p["networkSecurityGroup"]["id"].as_str().unwrap_or_default();
                    for (what, reference) in
                        [("subnet's VNet", vnet), ("public IP", ip), ("NSG", nsg)]
                    {
                        let ok = arm.resources.contains_key(&reference.to_ascii_lowercase());
                        require(arm, id, &format!("NIC refers to an existing {what}"), ok);
                    }
                }
                "Microsoft.Compute/virtualMachines" => {
                    let expected = arm.expected_vm_size.clone();
                    require(
                        arm,
                        id,
                        "vmSize",
                        p["hardwareProfile"]["vmSize"] == expected.as_str(),
                    );
                    let security = &p["securityProfile"];
                    require(
                        arm,
                        id,
                        "ConfidentialVM",
                        security["securityType"] == "ConfidentialVM",
                    );
                    let secure_boot = arm.expected_secure_boot;
                    require(
                        arm,
                        id,
                        "vTPM on, Secure Boot as expected",
                        security["uefiSettings"]["secureBootEnabled"] == secure_boot
                            && security["uefiSettings"]["vTpmEnabled"] == true,
                    );
                    // userData: base64 of the agent's provisioning document.
                    let user_data = p["userData"]
                        .as_str()
                        .and_then(|text| {
                            base64::engine::general_purpose::STANDARD.decode(text).ok()
                        })
                        .and_then(|document| UserData::parse(&document).ok());
                    require(
                        arm,
                        id,
                        "userData with the agent's document",
                        user_data.is_some(),
                    );
                    if let Some(user_data) = user_data {
                        arm.user_data_tokens.push(user_data.cvm_api_token);
                    }
                    let os = &p["storageProfile"]["osDisk"];
                    require(arm, id, "osDisk Attach", os["createOption"] == "Attach");
                    require(
                        arm,
                        id,
                        "VMGuestStateOnly",
                        os["managedDisk"]["securityProfile"]["securityEncryptionType"]
                            == "VMGuestStateOnly",
                    );
                    let disk = os["managedDisk"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    let disk_ready = arm.disk_state.get(&disk) == Some(&"Unattached");
                    require(
                        arm,
                        id,
                        "the attached disk is uploaded and revoked",
                        disk_ready,
                    );
                    let nic = p["networkProfile"]["networkInterfaces"][0]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    let nic_exists = arm.resources.contains_key(&nic);
                    require(arm, id, "an existing NIC", nic_exists);
                    if arm.fail_vm {
                        fail = Some(json!({
                            "code": "OSProvisioningInternalError",
                            "message": "test failure in the middle"
                        }));
                    }
                }
                other => arm
                    .problems
                    .push(format!("PUT {id}: unexpected type {other}")),
            }
            properties["provisioningState"] = json!(if fail.is_some() {
                "Failed"
            } else {
                "Succeeded"
            });
            let resource = json!({
                "id": id,
                "name": id.rsplit('/').next(),
                "type": kind,
                "location": body["location"],
                "tags": body["tags"],
                "properties": properties,
            });
            arm.resources.insert(key.to_owned(), resource.clone());
            let operation = arm.next_operation;
            arm.next_operation += 1;
            arm.operations.insert(
                operation,
                Operation::Async {
                    polls: 0,
                    error: fail,
                },
            );
            let url = format!("{}/operations/{operation}?api-version=2024-07-01", arm.base);
            (
                StatusCode::CREATED,
                [("azure-asyncoperation", url.as_str()), ("retry-after", "0")],
                axum::Json(resource),
            )
                .into_response()
        }
        _ => {
            arm.problems
                .push(format!("{method} {id} {action:?}: unexpected"));
            arm_error(StatusCode::BAD_REQUEST, "UnexpectedRequest", id)
        }
    }
}

fn location_operation(arm: &mut Arm, result: Value) -> Response {
    let operation = arm.next_operation;
    arm.next_operation += 1;
    arm.operations
        .insert(operation, Operation::Location { polls: 0, result });
    let url = format!("{}/operations/{operation}", arm.base);
    (
        StatusCode::ACCEPTED,
        [("location", url.as_str()), ("retry-after", "0")],
    )
        .into_response()
}

fn poll(arm: &mut Arm, id: &str) -> Response {
    let Some(operation) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| arm.operations.get_mut(&id))
    else {
        return arm_error(StatusCode::NOT_FOUND, "NotFound", id);
    };
    match operation {
        Operation::Async { polls, error } => {
            *polls += 1;
            let body = match (*polls, error) {
                (1, _) => json!({ "status": "InProgress" }),
                (_, Some(error)) => json!({ "status": "Failed", "error": error }),
                (_, None) => json!({ "status": "Succeeded" }),
            };
            ([("retry-after", "0")], axum::Json(body)).into_response()
        }
        Operation::Location { polls, result } => {
            *polls += 1;
            if *polls == 1 {
                return (StatusCode::ACCEPTED, [("retry-after", "0")]).into_response();
            }
            if result.is_null() {
                StatusCode::OK.into_response()
            } else {
                axum::Json(result.clone()).into_response()
            }
        }
    }
}

/// The SAS URL's host: records each page write and enforces Azure's 4 MiB limit, then forwards
/// the write to Azurite.
async fn proxy_page_write(
    shared: Shared,
    method: Method,
    query: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let length: u64 = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(u64::MAX);
    let range = headers
        .get("x-ms-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let target = {
        let mut arm = shared.lock().unwrap();
        arm.page_writes.push((length, range.clone()));
        if method != Method::PUT || query_param(&query, "comp").as_deref() != Some("page") {
            arm.problems
                .push(format!("blob request {method} ?{query}: not a page write"));
        }
        if arm.fail_page_writes {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "<Error><Code>ServerBusy</Code><Message>test: busy</Message></Error>",
            )
                .into_response();
        }
        let base = arm
            .azurite_blob
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        format!("{base}?{query}")
    };
    if length > 4 * MIB || body.len() as u64 != length {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "<Error><Code>RequestBodyTooLarge</Code></Error>",
        )
            .into_response();
    }
    let mut request = reqwest::Client::new().put(target).body(body.to_vec());
    for name in [
        "x-ms-page-write",
        "x-ms-range",
        "x-ms-version",
        "content-length",
    ] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let text = response.text().await.unwrap_or_default();
            (status, text).into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

struct ArmServer {
    state: Shared,
    url: String,
    /// The CLI's XDG_STATE_HOME (the deployments' token files).
    home: tempfile::TempDir,
    /// The CLI's XDG_CACHE_HOME (the VHDs it makes).
    cache: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl ArmServer {
    /// Where deploy-azure keeps the token of deployment `name`.
    fn token_file(&self, name: &str) -> PathBuf {
        self.home
            .path()
            .join(format!("cvm-cli/azure/{name}/api-token"))
    }

    /// The VHDs the CLI made in its cache.
    fn cached_vhds(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.cache.path().join("cvm-cli"))
            .map(|entries| entries.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    /// The requests that were not reads (preflight and --dry-run only read).
    fn writes(&self) -> Vec<String> {
        requests(self)
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// The tokens the VMs' userData carried.
    fn user_data_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().user_data_tokens.clone()
    }
}

/// The token file's content, checking it is private to its owner.
fn private_token(path: &Path) -> String {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    let token = std::fs::read_to_string(path).unwrap();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    token
}

impl Drop for ArmServer {
    fn drop(&mut self) {
        self._task.abort();
    }
}

async fn arm_server(configure: impl FnOnce(&mut Arm)) -> ArmServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state: Shared = Arc::new(Mutex::new(Arm {
        base: url.clone(),
        deployment: "cvm-test".into(),
        expected_ports: vec![8000],
        expected_sources: vec![ALLOW.into()],
        expected_vm_size: "Standard_DC2es_v5".into(),
        usages: roomy_usages(),
        ..Arm::default()
    }));
    {
        let mut arm = state.lock().unwrap();
        arm.access_sas = format!("{url}/blob/{ACCOUNT}/vhds/disk.vhd?{}", account_sas());
        configure(&mut arm);
    }
    let app = axum::Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(Arc::clone(&state));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    ArmServer {
        state,
        url,
        home: tempfile::tempdir().unwrap(),
        cache: tempfile::tempdir().unwrap(),
        _task: task,
    }
}

// ---------------------------------------------------------------------------------------------
// Images and the CLI

/// A sparse raw disk of `mib` MiB: data in a few places (one range spanning a 4 MiB boundary,
/// one at the very end), a written zero range, holes elsewhere.
fn sample_image(dir: &Path, mib: u64) -> PathBuf {
    let path = dir.join("disk.raw");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(mib * MIB).unwrap();
    let pattern = |seed: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    };
    file.write_all_at(&pattern(1, 64 * 1024), 0).unwrap();
    file.write_all_at(&pattern(2, 3 * MIB as usize), 3 * MIB)
        .unwrap();
    file.write_all_at(&vec![0u8; 2 * MIB as usize], 8 * MIB)
        .unwrap();
    file.write_all_at(&pattern(3, 4096), mib * MIB - 4096)
        .unwrap();
    file.write_all_at(&common::gpt_head(mib * MIB), 0).unwrap();
    path
}

/// The build's record that its UKI is signed, beside `image` (`--secure-boot` needs it).
fn signed_build(image: &Path) {
    std::fs::write(
        image.with_file_name("measurements.json"),
        r#"{"secure_boot": true}"#,
    )
    .unwrap();
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `cvm-cli deploy-azure --allow-from ALLOW --image IMAGE ARGS...`.
async fn deploy(arm: &ArmServer, token: bool, image: &Path, args: &[&str]) -> Run {
    let mut all = vec!["deploy-azure", "--allow-from", ALLOW, "--image"];
    all.push(image.to_str().unwrap());
    all.extend_from_slice(args);
    cvm_cli(arm, token, &all).await
}

async fn cvm_cli(arm: &ArmServer, token: bool, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cvm-cli"));
    command
        .args(args)
        .env("CVM_AZURE_ARM_ENDPOINT", &arm.url)
        .env("XDG_STATE_HOME", arm.home.path())
        .env("XDG_CACHE_HOME", arm.cache.path())
        .env("AZURE_SUBSCRIPTION_ID", SUB)
        .env_remove("AZURE_ACCESS_TOKEN")
        // No Azure CLI and no managed identity here.
        .env("PATH", "/usr/bin:/bin")
        .kill_on_drop(true);
    if token {
        command.env("AZURE_ACCESS_TOKEN", "token-from-env");
    }
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("cvm-cli finishes")
        .expect("cvm-cli runs");
    let run = Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("--- cvm-cli {args:?}\n{}\n{}", run.stdout, run.stderr);
    run
}

fn requests(arm: &ArmServer) -> Vec<Recorded> {
    arm.state.lock().unwrap().log.clone()
}

fn problems(arm: &ArmServer) -> Vec<String> {
    arm.state.lock().unwrap().problems.clone()
}

fn group_path(group: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{group}")
}

fn resource_path(group: &str, kind: &str, name: &str) -> String {
    format!("{}/providers/{kind}/{name}", group_path(group))
}

/// The deletes, in the order the CLI sent them, as their last path segments.
fn deletes(arm: &ArmServer) -> Vec<String> {
    requests(arm)
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_uploads_the_vhd_and_creates_a_confidential_vm_then_cleanup_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_image(dir.path(), 21);
    let vhd_bytes = 21 * MIB + 512;
    let azurite = Azurite::start(true);
    let blob = page_blob(&azurite, "disk.vhd", vhd_bytes).await;
    let arm = arm_server(|arm| {
        arm.azurite_blob = blob.clone();
        arm.expected_upload_bytes = vhd_bytes;
        arm.expected_ports = vec![8000, 80, 443];
        arm.expected_sources = vec![ALLOW.into(), ALLOW_TOO.into()];
        arm.expected_vm_size = "Standard_DC2as_v5".into();
    })
    .await;

    // The predecessor's snake_case flags, and its region spelling.
    let run = deploy(
        &arm,
        false,
        &raw,
        &[
            "--vm_name",
            "cvm-test",
            "--resource_group",
            "cvm-testRg",
            "--region",
            "East US 2",
            "--vm_type",
            "Standard_DC2as_v5",
            "--additional_ports",
            "80,443",
            "--allow-from",
            ALLOW_TOO,
            "--parallel",
            "4",
            "--json",
        ],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(problems(&arm), Vec::<String>::new());

    // The output: plan first, then the deployed VM with its address and commands.
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["plan"]["tee"], "sev-snp");
    assert_eq!(lines[0]["plan"]["cloud"], "azure");
    assert_eq!(lines[0]["plan"]["region"], "eastus2");
    assert_eq!(lines[0]["plan"]["secure_boot"]["enabled"], false);
    assert_eq!(lines[0]["plan"]["allow_from"], json!([ALLOW, ALLOW_TOO]));
    // The NSG ARM received: one rule per port, each from exactly the given ranges.
    let nsg = requests(&arm)
        .into_iter()
        .find(|r| r.method == "PUT" && r.path.contains("/networkSecurityGroups/"))
        .expect("the NSG was created");
    let rules = nsg.body["properties"]["securityRules"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "{rules:?}");
    for rule in rules {
        assert_eq!(
            rule["properties"]["sourceAddressPrefixes"],
            json!([ALLOW, ALLOW_TOO])
        );
    }
    let token_file = arm.token_file("cvm-test");
    assert_eq!(
        lines[0]["plan"]["api_token"]["file"],
        token_file.to_str().unwrap()
    );
    assert!(lines[0]["plan"]["api_token"]["passed_via"]
        .as_str()
        .unwrap()
        .contains("userData"));
    let deployed = &lines[1]["deployed"];
    assert_eq!(deployed["address"], ADDRESS);
    assert_eq!(
        deployed["verify_command"],
        format!("cvm-cli verify --host {ADDRESS}:8000 --golden golden.json")
    );
    assert!(deployed["cleanup_command"]
        .as_str()
        .unwrap()
        .contains("--azure cvm-test --resource-group cvm-testRg"));
    // The VM's userData carried the token kept in the 0600 file; Secure Boot is off.
    assert_eq!(deployed["api_token_file"], token_file.to_str().unwrap());
    let token = private_token(&token_file);
    assert_eq!(arm.user_data_tokens(), vec![token.clone()]);

    // The VHD in the cache (never in the build folder), and the page blob holds exactly its
    // bytes (holes included).
    assert!(!dir.path().join("disk.vhd").exists());
    let vhds = arm.cached_vhds();
    assert_eq!(vhds.len(), 1, "{vhds:?}");
    let vhd = vhds[0].clone();
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), vhd_bytes);
    let content = download(&blob).await;
    assert_eq!(content.len() as u64, vhd_bytes);
    assert_eq!(hex::encode(Sha256::digest(&content)), sha256_file(&vhd));
    assert_eq!(&content[content.len() - 512..][..8], b"conectix");

    // Page writes: at most 4 MiB, 512-aligned, only the non-zero 4 MiB ranges.
    let writes = arm.state.lock().unwrap().page_writes.clone();
    let mut ranges: Vec<String> = writes.iter().map(|(_, r)| r.clone()).collect();
    ranges.sort();
    assert_eq!(
        ranges,
        vec![
            "bytes=0-4194303".to_owned(),
            // The last 4 MiB range ends with the footer: the blob's end, not padded.
            format!("bytes=20971520-{}", vhd_bytes - 1),
            "bytes=4194304-8388607".to_owned(),
        ],
        "zero ranges (8..20 MiB) must not travel"
    );
    for (length, range) in &writes {
        assert!(*length <= 4 * MIB && length % 512 == 0, "{length} {range}");
    }
    assert_eq!(deployed["upload"]["blocks_uploaded"], 3);
    assert_eq!(deployed["upload"]["blocks_total"], 6);

    // What ARM saw: the resources in order, tagged, and the token it asked for.
    let log = requests(&arm);
    let puts: Vec<String> = log
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| {
            format!(
                "{} {}",
                r.method,
                r.path.trim_start_matches(&group_path("cvm-testRg"))
            )
        })
        .collect();
    assert_eq!(
        puts,
        vec![
            "PUT ",
            "PUT /providers/Microsoft.Compute/disks/cvm-test-osdisk",
            "POST /providers/Microsoft.Compute/disks/cvm-test-osdisk/beginGetAccess",
            "POST /providers/Microsoft.Compute/disks/cvm-test-osdisk/endGetAccess",
            "PUT /providers/Microsoft.Network/networkSecurityGroups/cvm-test-nsg",
            "PUT /providers/Microsoft.Network/publicIPAddresses/cvm-test-ip",
            "PUT /providers/Microsoft.Network/virtualNetworks/cvm-test-vnet",
            "PUT /providers/Microsoft.Network/networkInterfaces/cvm-test-nic",
            "PUT /providers/Microsoft.Compute/virtualMachines/cvm-test",
        ]
    );
    for put in log.iter().filter(|r| r.method == "PUT") {
        assert_eq!(put.body["tags"][TAG], "cvm-test", "{}", put.path);
    }
    let disk = log
        .iter()
        .find(|r| r.method == "PUT" && r.path.ends_with("/disks/cvm-test-osdisk"))
        .unwrap();
    assert_eq!(
        disk.body["properties"]["creationData"],
        json!({ "createOption": "Upload", "uploadSizeBytes": vhd_bytes })
    );
    let vm = log
        .iter()
        .find(|r| r.method == "PUT" && r.path.ends_with("/virtualMachines/cvm-test"))
        .unwrap();
    let vm = &vm.body["properties"];
    assert_eq!(
        vm["securityProfile"]["uefiSettings"],
        json!({ "secureBootEnabled": false, "vTpmEnabled": true })
    );
    let document = base64::engine::general_purpose::STANDARD
        .decode(vm["userData"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        UserData::parse(&document).unwrap().cvm_api_token,
        token,
        "userData is the agent's document with the kept token"
    );
    assert!(log.iter().all(|r| r.query.contains("api-version=")));
    let tokens = arm.state.lock().unwrap().tokens.clone();
    assert!(
        tokens.iter().all(|t| t == "cvm-cli-test-token"),
        "{tokens:?}"
    );

    // A resource of the user's in the same group: cleanup must leave it, and so the group.
    let users = resource_path("cvm-testRg", "Microsoft.Storage/storageAccounts", "users");
    arm.state.lock().unwrap().resources.insert(
        users.to_ascii_lowercase(),
        json!({ "id": users, "type": "Microsoft.Storage/storageAccounts", "tags": { "owner": "me" } }),
    );
    let run = cvm_cli(
        &arm,
        true,
        &[
            "cleanup",
            "--azure",
            "cvm-test",
            "--resource_group",
            "cvm-testRg",
            "--subscription",
            SUB,
        ],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    // Newest first, the reverse of the order the deploy created them in.
    assert_eq!(
        deletes(&arm),
        vec![
            "cvm-test",
            "cvm-test-nic",
            "cvm-test-vnet",
            "cvm-test-ip",
            "cvm-test-nsg",
            "cvm-test-osdisk"
        ]
    );
    assert!(
        run.stdout.contains("kept resource group cvm-testRg"),
        "{}",
        run.stdout
    );
    // The deployment is gone, and with it its token file.
    assert!(
        run.stdout
            .contains(&format!("removed the API token {}", token_file.display())),
        "{}",
        run.stdout
    );
    assert!(!token_file.exists());
    let left: Vec<String> = arm
        .state
        .lock()
        .unwrap()
        .resources
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        left,
        vec![
            group_path("cvm-testRg").to_ascii_lowercase(),
            users.to_ascii_lowercase()
        ]
    );
    assert_eq!(problems(&arm), Vec::<String>::new());

    // Once the user's resource is gone, the group cvm-cli created (tagged) goes too.
    arm.state
        .lock()
        .unwrap()
        .resources
        .remove(&users.to_ascii_lowercase());
    let run = cvm_cli(
        &arm,
        true,
        &[
            "cleanup",
            "--azure",
            "cvm-test",
            "--resource-group",
            "cvm-testRg",
        ],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains("deleted resource group cvm-testRg"),
        "{}",
        run.stdout
    );
    assert_eq!(deletes(&arm).last().map(String::as_str), Some("cvm-testRg"));
    assert!(arm.state.lock().unwrap().resources.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_in_the_middle_deletes_what_this_run_created_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_image(dir.path(), 12);
    let vhd_bytes = 12 * MIB + 512;
    let azurite = Azurite::start(true);

    // 1. A resource group of the user's: used, never deleted.
    let blob = page_blob(&azurite, "disk.vhd", vhd_bytes).await;
    let arm = arm_server(|arm| {
        arm.azurite_blob = blob.clone();
        arm.expected_upload_bytes = vhd_bytes;
        arm.fail_vm = true;
        arm.expected_secure_boot = true;
        let rg = group_path("cvm-testRg");
        arm.resources.insert(
            rg.to_ascii_lowercase(),
            json!({ "id": rg, "name": "cvm-testRg", "location": "eastus2", "tags": {} }),
        );
    })
    .await;
    signed_build(&raw);
    let run = deploy(&arm, true, &raw, &["--secure-boot"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("OSProvisioningInternalError: test failure in the middle"),
        "{}",
        run.stderr
    );
    // --secure-boot asked for Secure Boot (checked by the server), and the plan said so.
    assert!(
        run.stderr.contains("Secure Boot: on (--secure-boot"),
        "{}",
        run.stderr
    );
    // The VM was asked to carry a token; rolled back, the token file is gone too.
    assert_eq!(arm.user_data_tokens().len(), 1);
    let token_file = arm.token_file("cvm-test");
    assert!(
        run.stderr
            .contains(&format!("removed the API token {}", token_file.display())),
        "{}",
        run.stderr
    );
    assert!(!token_file.exists());
    assert!(run
        .stderr
        .contains("using the existing resource group cvm-testRg"));
    // The failed VM is deleted too, then everything else newest first; never the group.
    assert_eq!(
        deletes(&arm),
        vec![
            "cvm-test",
            "cvm-test-nic",
            "cvm-test-vnet",
            "cvm-test-ip",
            "cvm-test-nsg",
            "cvm-test-osdisk"
        ]
    );
    for kind in [
        "VM",
        "NIC",
        "VNet",
        "public IP",
        "network security group",
        "disk",
    ] {
        assert!(
            run.stderr
                .contains(&format!("  deleted {kind} /subscriptions/")),
            "{kind}: {}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("deleted resource group"));
    let left: Vec<String> = arm
        .state
        .lock()
        .unwrap()
        .resources
        .keys()
        .cloned()
        .collect();
    assert_eq!(left, vec![group_path("cvm-testRg").to_ascii_lowercase()]);
    assert_eq!(problems(&arm), Vec::<String>::new());
    let tokens = arm.state.lock().unwrap().tokens.clone();
    assert!(tokens.iter().all(|t| t == "token-from-env"));
    drop(arm);

    // 2. A group this run created is deleted last; --keep-on-failure keeps everything.
    for keep in [false, true] {
        let arm = arm_server(|arm| {
            arm.azurite_blob = blob.clone();
            arm.expected_upload_bytes = vhd_bytes;
            arm.fail_vm = true;
        })
        .await;
        let mut args = vec![
            "deploy-azure",
            "--allow-from",
            ALLOW,
            "--image",
            raw.to_str().unwrap(),
        ];
        if keep {
            args.push("--keep_on_failure");
        }
        let run = cvm_cli(&arm, true, &args).await;
        assert!(!run.ok);
        let remaining = arm.state.lock().unwrap().resources.len();
        let token_file = arm.token_file("cvm-test");
        if keep {
            // The kept VM carries the token: the file stays.
            assert!(
                run.stderr
                    .contains(&format!("kept the API token {}", token_file.display())),
                "{}",
                run.stderr
            );
            assert_eq!(arm.user_data_tokens(), vec![private_token(&token_file)]);
        } else {
            assert!(!token_file.exists());
        }
        if keep {
            assert_eq!(deletes(&arm), Vec::<String>::new());
            assert!(
                run.stderr.contains("kept what it created"),
                "{}",
                run.stderr
            );
            assert!(
                run.stderr.contains("  kept resource group"),
                "{}",
                run.stderr
            );
            assert_eq!(remaining, 7);
        } else {
            assert_eq!(deletes(&arm).last().map(String::as_str), Some("cvm-testRg"));
            assert!(
                run.stderr.contains("  deleted resource group"),
                "{}",
                run.stderr
            );
            assert_eq!(remaining, 0);
        }
        assert_eq!(problems(&arm), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_upload_revokes_access_and_deletes_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_image(dir.path(), 12);
    let arm = arm_server(|arm| {
        arm.expected_upload_bytes = 12 * MIB + 512;
        arm.fail_page_writes = true;
    })
    .await;
    let run = deploy(&arm, true, &raw, &[]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("failed 5 times, giving up"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("HTTP 503"), "{}", run.stderr);
    assert!(run.stderr.contains("ServerBusy"), "{}", run.stderr);
    let calls: Vec<String> = requests(&arm)
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path.rsplit('/').next().unwrap()))
        .collect();
    assert_eq!(
        calls,
        vec![
            "PUT cvm-testRg",
            "PUT cvm-test-osdisk",
            "POST beginGetAccess",
            "POST endGetAccess",
            "DELETE cvm-test-osdisk",
            "DELETE cvm-testRg",
        ]
    );
    assert!(run.stderr.contains("  deleted disk "), "{}", run.stderr);
    assert!(
        run.stderr.contains("  deleted resource group "),
        "{}",
        run.stderr
    );
    // No write is left unrevoked and nothing remains, not even the token file.
    assert_eq!(problems(&arm), Vec::<String>::new());
    assert!(arm.state.lock().unwrap().resources.is_empty());
    assert!(
        run.stderr.contains("removed the API token"),
        "{}",
        run.stderr
    );
    assert!(!arm.token_file("cvm-test").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_and_bad_flags_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_image(dir.path(), 4);
    let arm = arm_server(|_| {}).await;
    let image = raw.to_str().unwrap();

    let run = cvm_cli(
        &arm,
        true,
        &[
            "deploy-azure",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--dry_run",
            "--vm_name",
            "demo_vm",
        ],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("Plan: deploy"), "{}", run.stderr);
    assert!(run.stderr.contains("Intel TDX"), "{}", run.stderr);
    assert!(
        run.stderr.contains("resource group demo_vmRg"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Azure names take no '_'"),
        "{}",
        run.stderr
    );
    assert!(
        !dir.path().join("disk.vhd").exists() && arm.cached_vhds().is_empty(),
        "a dry run writes nothing"
    );
    for said in [
        "Secure Boot: off (image unsigned; PCR 7 records it; the golden's PCR set decides)",
        "passed to the agent via the VM's userData",
        "Secure Boot off, the API token in userData",
    ] {
        assert!(run.stderr.contains(said), "{said:?}: {}", run.stderr);
    }
    signed_build(&raw);
    let run = cvm_cli(
        &arm,
        true,
        &[
            "deploy-azure",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--dry-run",
            "--secure-boot",
        ],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("Secure Boot: on (--secure-boot: the UKI must be signed"),
        "{}",
        run.stderr
    );

    let run = cvm_cli(
        &arm,
        true,
        &[
            "deploy-azure",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--vm-type",
            "Standard_D2s_v5",
        ],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("\"Standard_D2s_v5\" is not a confidential VM size"),
        "{}",
        run.stderr
    );

    let run = cvm_cli(
        &arm,
        true,
        &[
            "deploy-azure",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--region",
            "east-us",
        ],
    )
    .await;
    assert!(!run.ok);
    assert!(run.stderr.contains("region"), "{}", run.stderr);

    // A region that does not exist, or has no confidential sizes: refused before anything.
    let run = cvm_cli(
        &arm,
        true,
        &[
            "deploy-azure",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--region",
            "narnia",
        ],
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("region \"narnia\" has no Intel TDX"),
        "{}",
        run.stderr
    );

    // Not a whole number of MiB: Azure could not take it.
    let odd = dir.path().join("odd.raw");
    let mut content = vec![1u8; MIB as usize + 4096];
    common::stamp_gpt(&mut content);
    std::fs::write(&odd, content).unwrap();
    let run = deploy(&arm, true, &odd, &[]).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("whole number of MiB"), "{}", run.stderr);

    assert_eq!(arm.writes(), Vec::<String>::new(), "only reads reached ARM");
    assert_eq!(
        std::fs::read_dir(arm.home.path()).unwrap().count(),
        0,
        "no token file was made"
    );
}

/// Upload throughput of a 1 GiB half-empty sparse image into Azurite: the CLI's parallel,
/// zero-skipping page upload vs a naive sequential upload of every 4 MiB range.
/// `cargo test -p cvm-cli --test deploy_azure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn bench_upload_1gib_half_empty() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let file = std::fs::File::create(&raw).unwrap();
    file.set_len(1 << 30).unwrap();
    // Data in every other 4 MiB range: half the image.
    let chunk: Vec<u8> = (0..4 * MIB as usize).map(|i| (i % 251) as u8 | 1).collect();
    for n in (0..256).step_by(2) {
        file.write_all_at(&chunk, n * 4 * MIB).unwrap();
    }
    let vhd_bytes = (1 << 30) + 512;
    let azurite = Azurite::start(false);

    // The CLI (SAS straight to Azurite: no proxy in the way), default and one at a time.
    let mut ours = Vec::new();
    for parallel in ["16", "1"] {
        let blob = page_blob(&azurite, &format!("cli-{parallel}.vhd"), vhd_bytes).await;
        let arm = arm_server(|arm| {
            arm.azurite_blob = blob.clone();
            arm.access_sas = blob.clone();
            arm.expected_upload_bytes = vhd_bytes;
        })
        .await;
        let image = raw.to_str().unwrap();
        let args = [
            "deploy-azure",
            "--allow-from",
            ALLOW,
            "--image",
            image,
            "--json",
            "--parallel",
            parallel,
        ];
        let started = Instant::now();
        let run = cvm_cli(&arm, true, &args).await;
        let cli_seconds = started.elapsed().as_secs_f64();
        assert!(run.ok, "{}", run.stderr);
        let deployed: Value = serde_json::from_str(run.stdout.lines().nth(1).unwrap()).unwrap();
        let upload_seconds = deployed["deployed"]["upload"]["seconds"].as_f64().unwrap();
        ours.push((parallel, upload_seconds, cli_seconds, blob));
    }

    // Naive: every 4 MiB range in order, one at a time.
    let naive_blob = {
        let http = reqwest::Client::new();
        let url = format!(
            "{}?{}",
            azurite.blob_url("vhds", "naive.vhd"),
            account_sas()
        );
        let response = http
            .put(&url)
            .header("x-ms-version", "2021-12-02")
            .header("x-ms-blob-type", "PageBlob")
            .header("x-ms-blob-content-length", vhd_bytes.to_string())
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        url
    };
    let vhd = dir.path().join("disk.vhd");
    let started = Instant::now();
    let http = reqwest::Client::new();
    let file = std::fs::File::open(&vhd).unwrap();
    let mut offset = 0;
    while offset < vhd_bytes {
        let len = (4 * MIB).min(vhd_bytes - offset);
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, offset).unwrap();
        let response = http
            .put(format!("{naive_blob}&comp=page"))
            .header("x-ms-page-write", "update")
            .header("x-ms-range", format!("bytes={offset}-{}", offset + len - 1))
            .header("x-ms-version", "2021-12-02")
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        offset += len;
    }
    let naive_seconds = started.elapsed().as_secs_f64();
    let mib = vhd_bytes as f64 / MIB as f64;
    for (parallel, upload_seconds, cli_seconds, _) in &ours {
        eprintln!(
            "BENCH deploy-azure 1 GiB half-empty into Azurite: cvm-cli --parallel {parallel}: \
             upload {upload_seconds:.2} s ({:.0} MiB/s of image; whole deploy {cli_seconds:.2} s), \
             {:.1}x faster than naive",
            mib / upload_seconds,
            naive_seconds / upload_seconds
        );
    }
    eprintln!(
        "BENCH naive sequential upload of every 4 MiB range: {naive_seconds:.2} s ({:.0} MiB/s)",
        mib / naive_seconds
    );
    let naive = hex::encode(Sha256::digest(download(&naive_blob).await));
    for (_, _, _, blob) in &ours {
        assert_eq!(hex::encode(Sha256::digest(download(blob).await)), naive);
    }
}

/// Port 8000 serves /update-workload: a deploy must say who may reach it, and the ports and
/// ranges are checked before anything reaches ARM (also with --dry-run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_must_be_given_and_is_checked_before_anything() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_image(dir.path(), 4);
    let arm = arm_server(|_| {}).await;
    let image = raw.to_str().unwrap();

    for dry in [true, false] {
        let mut args = vec!["deploy-azure", "--image", image];
        if dry {
            args.push("--dry-run");
        }
        let run = cvm_cli(&arm, true, &args).await;
        assert!(!run.ok);
        assert!(
            run.stderr.contains("--allow-from <your public IP>/32")
                && run.stderr.contains("--allow-from 0.0.0.0/0")
                && !run.stderr.contains("Plan:"),
            "{}",
            run.stderr
        );
    }
    for (args, expected) in [
        (&["--allow-from", "198.51.100.0/33"][..], "prefix length"),
        (&["--allow-from", "2001:db8::1/32"], "2001:db8::/32"),
        (&["--allow-from", "example.com/24"], "not an IPv4 or IPv6"),
        (
            &["--allow-from", ALLOW, "--additional-ports", "0"],
            "1-65535",
        ),
        (
            &["--allow-from", ALLOW, "--additional-ports", "80,80"],
            "twice",
        ),
        (
            &["--allow-from", ALLOW, "--additional-ports", "8000"],
            "agent's own",
        ),
    ] {
        let run = cvm_cli(
            &arm,
            true,
            &[&["deploy-azure", "--image", image][..], args].concat(),
        )
        .await;
        assert!(!run.ok, "{args:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }

    // The whole internet only when asked for, and then the plan warns.
    let run = cvm_cli(
        &arm,
        true,
        &[
            "deploy-azure",
            "--image",
            image,
            "--allow-from",
            "0.0.0.0/0",
            "--dry-run",
        ],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("from 0.0.0.0/0") && run.stderr.contains("WARNING: port 8000"),
        "{}",
        run.stderr
    );

    assert_eq!(arm.writes(), Vec::<String>::new(), "only reads reached ARM");
    assert_eq!(
        std::fs::read_dir(arm.home.path()).unwrap().count(),
        0,
        "no token file was made"
    );
}

/// A failure right after each step (the runner's test hook) deletes exactly what exists by
/// then, newest first (the group too, which this run created); ARM holds nothing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_after_each_step_rolls_back_exactly_what_was_created() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_image(dir.path(), 12);
    let vhd_bytes = 12 * MIB + 512;
    let azurite = Azurite::start(true);
    let blob = page_blob(&azurite, "disk.vhd", vhd_bytes).await;
    let arm = arm_server(|arm| {
        arm.azurite_blob = blob.clone();
        arm.expected_upload_bytes = vhd_bytes;
    })
    .await;
    for step in 1..=7usize {
        let name = format!("fail-{step}");
        {
            let mut state = arm.state.lock().unwrap();
            state.deployment = name.clone();
            state.log.clear();
        }
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cvm-cli"));
        command
            .args([
                "deploy-azure",
                "--allow-from",
                ALLOW,
                "--name",
                &name,
                "--image",
            ])
            .arg(&raw)
            .env("CVM_AZURE_ARM_ENDPOINT", &arm.url)
            .env("XDG_STATE_HOME", arm.home.path())
            .env("XDG_CACHE_HOME", arm.cache.path())
            .env("AZURE_SUBSCRIPTION_ID", SUB)
            .env("AZURE_ACCESS_TOKEN", "token-from-env")
            .env("PATH", "/usr/bin:/bin")
            .env("CVM_CLI_TEST_FAIL_AFTER_STEP", step.to_string())
            .kill_on_drop(true);
        let output = command.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("failure injected after step {step}")),
            "{stderr}"
        );
        let made = [
            format!("{name}Rg"),
            format!("{name}-osdisk"),
            format!("{name}-nsg"),
            format!("{name}-ip"),
            format!("{name}-vnet"),
            format!("{name}-nic"),
            name.clone(),
        ];
        let mut expected: Vec<String> = made[..step].to_vec();
        expected.reverse();
        assert_eq!(deletes(&arm), expected, "{stderr}");
        let state = arm.state.lock().unwrap();
        assert!(
            state.resources.is_empty(),
            "step {step}: {:?}",
            state.resources.keys()
        );
        assert!(state.problems.is_empty(), "{:?}", state.problems);
        drop(state);
        assert!(!arm.token_file(&name).exists());
    }
}

/// Preflight reads the Compute usages of the location: a VM that its family's or the region's
/// vCPU quota has no room for is refused before anything is made (also with --dry-run); a size
/// whose family cvm-cli cannot name, or a refused usages read, is a warning and the deploy goes
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_vcpu_quota_is_checked_in_preflight() {
    let dir = tempfile::tempdir().unwrap();
    let raw = sample_image(dir.path(), 12);
    let vhd_bytes = 12 * MIB + 512;
    let azurite = Azurite::start(true);
    let blob = page_blob(&azurite, "disk.vhd", vhd_bytes).await;
    let arm = arm_server(|arm| {
        arm.azurite_blob = blob.clone();
        arm.expected_upload_bytes = vhd_bytes;
    })
    .await;

    let run = deploy(&arm, true, &raw, &["--dry-run"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "vCPU quota in eastus2: Standard_DC2es_v5 needs 2; cores (Total Regional vCPUs): 96 \
             free, standardDCEV5Family (Standard DCESv5 Family vCPUs): 14 free"
        ),
        "{}",
        run.stderr
    );

    // The family is short: refused, with and without --dry-run.
    for extra in [&[][..], &["--dry-run"]] {
        let args = [&["--vm-type", "Standard_DC16es_v5"][..], extra].concat();
        let run = deploy(&arm, true, &raw, &args).await;
        assert!(!run.ok, "{}", run.stderr);
        assert!(
            run.stderr.contains(
                "not enough vCPU quota in eastus2: Standard_DC16es_v5 needs 16 vCPUs, but \
                 standardDCEV5Family (Standard DCESv5 Family vCPUs) has 2 of 16 vCPUs in use"
            ),
            "{}",
            run.stderr
        );
    }
    // The region's cores are short.
    arm.state.lock().unwrap().usages[1] = usage("cores", "Total Regional vCPUs", 99, 100);
    let run = deploy(&arm, true, &raw, &[]).await;
    assert!(!run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "Standard_DC2es_v5 needs 2 vCPUs, but cores (Total Regional vCPUs) has 99 of 100 \
             vCPUs in use"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(arm.writes(), Vec::<String>::new(), "nothing was created");
    assert!(arm.cached_vhds().is_empty(), "no VHD was made");
    assert!(!arm.token_file("cvm-test").exists());

    // A family cvm-cli cannot name: a warning, not a refusal.
    arm.state.lock().unwrap().usages = roomy_usages();
    let run = deploy(
        &arm,
        true,
        &raw,
        &["--vm-type", "Standard_DC2eds_v6", "--dry-run"],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "warning: vCPU quota not fully checked: the quota family of Standard_DC2eds_v6 is \
             not known to cvm-cli"
        ),
        "{}",
        run.stderr
    );

    // The usages read refused: a warning, and the deploy goes on to the end.
    arm.state.lock().unwrap().forbid_usages = true;
    let run = deploy(&arm, true, &raw, &[]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "warning: vCPU quota not checked: reading the Compute usages of eastus2 failed (GET \
             /subscriptions/00000000-1111-2222-3333-444444444444/providers/Microsoft.Compute/\
             locations/eastus2/usages: HTTP 403 Forbidden: AuthorizationFailed"
        ),
        "{}",
        run.stderr
    );
    assert!(
        arm.writes()
            .iter()
            .any(|w| w.ends_with("/virtualMachines/cvm-test")),
        "{:?}",
        arm.writes()
    );
    assert_eq!(problems(&arm), Vec::<String>::new());
}
