//! A small Google Cloud REST client for `deploy-gcp`: Bearer authentication, bounded and typed
//! JSON answers, Compute Engine long-running operations, Cloud Storage objects.
//!
//! Every answer from the cloud is untrusted: bodies are read up to a limit, parsed into typed
//! structs, and names taken from them are checked before they go into a URL.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The largest JSON answer accepted.
const MAX_JSON_BYTES: usize = 8 << 20;
/// Timeout of one API call (not of an upload chunk).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the APIs are, and with which token to call them.
pub struct Gcp {
    pub http: reqwest::Client,
    token: Option<String>,
    /// Cloud Storage root, e.g. `https://storage.googleapis.com`.
    pub storage: String,
    /// Compute Engine root, e.g. `https://compute.googleapis.com/compute/v1`.
    pub compute: String,
}

/// The endpoints from the environment: `STORAGE_EMULATOR_HOST` (the variable Google's clients
/// honour) and `CVM_GCP_COMPUTE_ENDPOINT`; `emulated` when either points away from Google.
pub struct Endpoints {
    pub storage: String,
    pub compute: String,
    pub emulated: bool,
}

impl Endpoints {
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|value| value.trim().trim_end_matches('/').to_owned())
                .filter(|value| !value.is_empty())
        };
        let storage = var("STORAGE_EMULATOR_HOST").map(|host| {
            if host.contains("://") {
                host
            } else {
                format!("http://{host}")
            }
        });
        let compute = var("CVM_GCP_COMPUTE_ENDPOINT");
        Self {
            emulated: storage.is_some() || compute.is_some(),
            storage: storage.unwrap_or_else(|| "https://storage.googleapis.com".into()),
            compute: compute.unwrap_or_else(|| "https://compute.googleapis.com/compute/v1".into()),
        }
    }
}

impl Gcp {
    pub fn new(endpoints: Endpoints, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("cvm-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            token,
            storage: endpoints.storage,
            compute: endpoints.compute,
        })
    }

    /// A request with the Bearer token (none against an emulator without credentials).
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// Google's error body: `{"error": {"code": 404, "message": "..."}}`.
#[derive(Debug, Deserialize)]
struct ApiErrorBody {
    error: ApiError,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    message: String,
}

/// Reads at most `limit` bytes of a body.
pub use crate::deploy::net::read_bounded as read_limited;

/// Fails with Google's message for a non-2xx status, else parses the body as `T`.
pub async fn json<T: DeserializeOwned>(response: reqwest::Response, what: &str) -> Result<T> {
    let status = response.status();
    let body = read_limited(response, MAX_JSON_BYTES)
        .await
        .with_context(|| format!("{what}: reading the answer"))?;
    if !status.is_success() {
        bail!("{what}: HTTP {status}: {}", error_message(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{what}: unexpected answer"))
}

/// The message of an error body, or its first bytes.
pub fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ApiErrorBody>(body) {
        Ok(parsed) if !parsed.error.message.is_empty() => parsed.error.message,
        _ => String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}

/// A name from an answer that goes into a URL path: letters, digits, '-', '_', '.'.
pub fn check_path_segment(value: &str, what: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 200
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("unexpected {what} {value:?} in the answer");
    }
    Ok(())
}

/// A Compute Engine long-running operation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub name: String,
    #[serde(default)]
    pub status: String,
    /// The zone's URL for zonal operations.
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub error: Option<OperationErrors>,
    #[serde(default)]
    pub http_error_message: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct OperationErrors {
    #[serde(default)]
    pub errors: Vec<OperationError>,
}

#[derive(Debug, Deserialize)]
pub struct OperationError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// A list answer (`items` is absent when empty).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub raw_disk: Option<RawDisk>,
}

#[derive(Debug, Deserialize)]
pub struct RawDisk {
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub status_message: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    #[serde(default)]
    pub access_configs: Vec<AccessConfig>,
}

#[derive(Debug, Deserialize)]
pub struct AccessConfig {
    #[serde(default, rename = "natIP")]
    pub nat_ip: Option<String>,
}

impl Instance {
    /// The first external address.
    pub fn nat_ip(&self) -> Option<String> {
        self.network_interfaces
            .iter()
            .flat_map(|nic| &nic.access_configs)
            .find_map(|config| config.nat_ip.clone())
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
    }
}

#[derive(Debug, Deserialize)]
pub struct Firewall {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed: Vec<Allowed>,
    #[serde(rename = "sourceRanges", default)]
    pub source_ranges: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Allowed {
    #[serde(rename = "IPProtocol", default)]
    pub ip_protocol: String,
    #[serde(default)]
    pub ports: Vec<String>,
}

/// What a [`Compute::read`] got.
#[derive(Debug)]
pub enum Read<T> {
    Found(T),
    NotFound,
    /// 401/403: the status and Google's message.
    Forbidden(String),
}

/// A machine type (`zones/Z/machineTypes/T`): what preflight needs of it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineType {
    #[serde(default)]
    pub guest_cpus: Option<u32>,
}

/// A region (`regions/R`) and its quotas.
#[derive(Debug, Deserialize)]
pub struct Region {
    #[serde(default)]
    pub quotas: Vec<Quota>,
}

/// One entry of a region's `quotas`: the API gives numbers as doubles.
#[derive(Debug, Clone, Deserialize)]
pub struct Quota {
    pub metric: String,
    #[serde(default)]
    pub limit: f64,
    #[serde(default)]
    pub usage: f64,
}

/// Compute Engine in one project and zone.
pub struct Compute<'a> {
    pub gcp: &'a Gcp,
    pub project: String,
    pub zone: String,
}

impl Compute<'_> {
    /// `{compute}/projects/{project}/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/projects/{}/{path}", self.gcp.compute, self.project)
    }

    /// `zones/{zone}/{path}`.
    pub fn zonal(&self, path: &str) -> String {
        format!("zones/{}/{path}", self.zone)
    }

    /// POSTs `body` to a collection: the operation to wait for, or `None` when a resource of
    /// that name exists already (HTTP 409).
    pub async fn start_insert(
        &self,
        collection: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> Result<Option<Operation>> {
        let response = self
            .gcp
            .request(reqwest::Method::POST, &self.url(collection))
            .timeout(CALL_TIMEOUT)
            .json(body)
            .send()
            .await
            .with_context(|| format!("{what}: request failed"))?;
        if response.status() == reqwest::StatusCode::CONFLICT {
            return Ok(None);
        }
        json(response, what).await.map(Some)
    }

    /// DELETEs a resource and waits; `false` when it did not exist.
    pub async fn delete(&self, path: &str, what: &str, limit: Duration) -> Result<bool> {
        let response = self
            .gcp
            .request(reqwest::Method::DELETE, &self.url(path))
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("{what}: request failed"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let operation: Operation = json(response, what).await?;
        self.wait(operation, what, limit).await?;
        Ok(true)
    }

    /// GETs a resource; `None` when it does not exist.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<Option<T>> {
        match self.read(path, what).await? {
            Read::Found(value) => Ok(Some(value)),
            Read::NotFound => Ok(None),
            Read::Forbidden(why) => bail!("{what}: {why}"),
        }
    }

    /// GETs something the caller's role may not allow (a quota): a 401/403 or a 404 is an
    /// answer, not an error.
    pub async fn read<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<Read<T>> {
        let response = self
            .gcp
            .request(reqwest::Method::GET, &self.url(path))
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("{what}: request failed"))?;
        let status = response.status();
        match status {
            reqwest::StatusCode::NOT_FOUND => Ok(Read::NotFound),
            reqwest::StatusCode::FORBIDDEN | reqwest::StatusCode::UNAUTHORIZED => {
                let body = read_limited(response, MAX_JSON_BYTES)
                    .await
                    .unwrap_or_default();
                Ok(Read::Forbidden(format!(
                    "HTTP {status}: {}",
                    error_message(&body)
                )))
            }
            _ => json(response, what).await.map(Read::Found),
        }
    }

    /// Every item of a collection whose label `key` is `value` (all pages).
    pub async fn list_labelled<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<T>> {
        let filter = format!("labels.{key}={value}");
        let mut items = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..100 {
            let mut query = vec![("filter", filter.clone())];
            if let Some(token) = &page {
                query.push(("pageToken", token.clone()));
            }
            let url = reqwest::Url::parse_with_params(&self.url(collection), &query)
                .context("building a list URL")?;
            let response = self
                .gcp
                .request(reqwest::Method::GET, url.as_str())
                .timeout(CALL_TIMEOUT)
                .send()
                .await
                .with_context(|| format!("listing {collection}: request failed"))?;
            let list: List<T> = json(response, &format!("listing {collection}")).await?;
            items.extend(list.items);
            match list.next_page_token.filter(|token| !token.is_empty()) {
                Some(token) => page = Some(token),
                None => return Ok(items),
            }
        }
        bail!("listing {collection}: too many pages")
    }

    /// Polls an operation until DONE (backing off from 200 ms to 2 s); fails with its errors.
    pub async fn wait(&self, mut operation: Operation, what: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(200);
        loop {
            if operation.status == "DONE" {
                return match &operation.error {
                    Some(errors) if !errors.errors.is_empty() => {
                        let text = errors
                            .errors
                            .iter()
                            .map(|error| format!("{}: {}", error.code, error.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        bail!("{what} failed: {text}")
                    }
                    Some(_) => bail!(
                        "{what} failed: {}",
                        operation
                            .http_error_message
                            .as_deref()
                            .unwrap_or("unknown error")
                    ),
                    None => Ok(()),
                };
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what}: operation {} not done after {} s",
                    operation.name,
                    limit.as_secs()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            check_path_segment(&operation.name, "operation name")?;
            let path = match &operation.zone {
                Some(zone) => {
                    let zone = zone.rsplit('/').next().unwrap_or_default();
                    check_path_segment(zone, "zone")?;
                    format!("zones/{zone}/operations/{}", operation.name)
                }
                None => format!("global/operations/{}", operation.name),
            };
            operation = self
                .get(&path, what)
                .await?
                .with_context(|| format!("{what}: operation {} vanished", operation.name))?;
        }
    }
}
