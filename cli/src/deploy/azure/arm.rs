//! A thin Azure Resource Manager REST client: bearer token, api-version per resource provider,
//! long-running operations (`Azure-AsyncOperation` / `Location` polling), typed error bodies.
//!
//! Every response body is read with a size bound and parsed into typed structs; nothing from the
//! network is unwrapped.

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Public Azure's Resource Manager.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com";
/// Points the client at another ARM (tests).
pub const ENDPOINT_ENV: &str = "CVM_AZURE_ARM_ENDPOINT";
/// A bearer token for ARM, used as is.
pub const TOKEN_ENV: &str = "AZURE_ACCESS_TOKEN";
/// Sent to an overridden endpoint that asks for a token when no credentials exist.
const TEST_TOKEN: &str = "cvm-cli-test-token";

/// api-versions (documented, current) per resource provider.
pub const API_RESOURCES: &str = "2024-03-01";
pub const API_DISKS: &str = "2024-03-02";
pub const API_VMS: &str = "2024-07-01";
pub const API_NETWORK: &str = "2024-05-01";

/// Largest ARM response body we read.
const MAX_BODY: usize = 4 << 20;

/// An ARM error body: `{"error": {"code", "message"}}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl std::fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The status document an `Azure-AsyncOperation` URL returns.
#[derive(Debug, Deserialize)]
struct AsyncOperation {
    status: String,
    error: Option<ErrorDetail>,
}

/// Any ARM resource: id and tags (properties are read by the callers' own structs).
#[derive(Debug, Clone, Deserialize)]
pub struct ArmResource {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

impl ArmResource {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.as_ref()?.get(key).map(String::as_str)
    }
}

/// A page of a list call.
#[derive(Debug, Deserialize)]
pub struct ArmList<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    #[serde(rename = "nextLink")]
    pub next_link: Option<String>,
}

/// What a [`Arm::read`] got.
#[derive(Debug)]
pub enum Read<T> {
    Found(T),
    NotFound,
    /// 401/403: ARM's code and message.
    Refused(String),
}

/// Where a token came from (the Azure CLI's and a managed identity's are fetched again when
/// they expire during a long deploy).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    Env,
    AzCli,
    ManagedIdentity,
}

/// How the client authenticates.
#[derive(Debug, Clone)]
enum Auth {
    Token(String, Source),
    /// Overridden endpoint without AZURE_ACCESS_TOKEN: no token unless the server asks (401).
    TestEndpoint,
}

pub struct Arm {
    http: reqwest::Client,
    endpoint: String,
    auth: std::sync::Mutex<Auth>,
    pub subscription: String,
}

/// A bearer token and, when the Azure CLI gave one, its default subscription.
struct Credentials {
    token: String,
    source: Source,
    subscription: Option<String>,
}

impl Credentials {
    fn auth(self) -> Auth {
        Auth::Token(self.token, self.source)
    }
}

/// `az account get-access-token -o json`.
#[derive(Deserialize)]
struct AzCliToken {
    #[serde(rename = "accessToken")]
    access_token: String,
    subscription: Option<String>,
}

/// The managed identity endpoint's answer.
#[derive(Deserialize)]
struct ImdsToken {
    access_token: String,
}

impl Arm {
    /// Finds credentials (AZURE_ACCESS_TOKEN, the Azure CLI login, a managed identity) and the
    /// subscription (flag or AZURE_SUBSCRIPTION_ID, else the Azure CLI's default). With an
    /// overridden endpoint only AZURE_ACCESS_TOKEN is used (public Azure's tokens are not sent
    /// elsewhere, and no metadata service is probed); without it a fixed test token is sent when
    /// the server asks for one.
    pub async fn connect(subscription: Option<&str>) -> Result<Arm> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(300))
            .build()?;
        let overridden = std::env::var(ENDPOINT_ENV).ok().filter(|e| !e.is_empty());
        let endpoint = overridden
            .clone()
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let env_token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        let (auth, from_cli) = match (env_token, &overridden) {
            (Some(token), _) => (Auth::Token(token, Source::Env), None),
            (None, Some(_)) => (Auth::TestEndpoint, None),
            (None, None) => {
                let credentials = credentials(&http).await?;
                (
                    Auth::Token(credentials.token, credentials.source),
                    credentials.subscription,
                )
            }
        };
        let subscription = subscription
            .map(str::to_owned)
            .or(from_cli)
            .filter(|s| !s.is_empty())
            .context(
                "no Azure subscription: pass --subscription, set AZURE_SUBSCRIPTION_ID, or \
                 `az account set --subscription ...`",
            )?;
        if !subscription
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("subscription {subscription:?} is not a subscription id");
        }
        Ok(Arm {
            http,
            endpoint,
            auth: std::sync::Mutex::new(auth),
            subscription,
        })
    }

    /// Whether this talks to an overridden (test) endpoint, which may hand out http URLs.
    pub fn is_overridden(&self) -> bool {
        self.endpoint != DEFAULT_ENDPOINT
    }

    /// `/subscriptions/S/resourceGroups/RG`.
    pub fn group_path(&self, group: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{group}",
            self.subscription
        )
    }

    fn url(&self, path_or_url: &str, api_version: Option<&str>) -> Result<reqwest::Url> {
        let mut url =
            if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
                reqwest::Url::parse(path_or_url)
            } else {
                reqwest::Url::parse(&format!("{}{path_or_url}", self.endpoint))
            }
            .with_context(|| format!("bad ARM URL {path_or_url:?}"))?;
        if let Some(version) = api_version {
            url.query_pairs_mut().append_pair("api-version", version);
        }
        Ok(url)
    }

    /// One request. On a 401, a test endpoint gets the fixed test token, and an Azure CLI or
    /// managed identity token is fetched again (it may have expired); then the request is
    /// repeated once.
    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        for attempt in 0..2 {
            let auth = self
                .auth
                .lock()
                .map_err(|_| anyhow!("auth lock poisoned"))?
                .clone();
            let mut request = self.http.request(method.clone(), url.clone());
            if let Auth::Token(token, _) = &auth {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("{method} {}", url.path()))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                let renewed = match auth {
                    Auth::TestEndpoint => Some(Auth::Token(TEST_TOKEN.to_owned(), Source::Env)),
                    Auth::Token(_, Source::AzCli) => Some(az_cli_token().await?.auth()),
                    Auth::Token(_, Source::ManagedIdentity) => {
                        Some(imds_token(&self.http).await?.auth())
                    }
                    Auth::Token(_, Source::Env) => None,
                };
                if let Some(renewed) = renewed {
                    *self
                        .auth
                        .lock()
                        .map_err(|_| anyhow!("auth lock poisoned"))? = renewed;
                    continue;
                }
            }
            let headers = response.headers().clone();
            let body = crate::deploy::net::read_bounded(response, MAX_BODY).await?;
            return Ok((status, headers, body));
        }
        bail!(
            "{method} {}: the server refused the credentials",
            url.path()
        )
    }

    /// GET: `None` on 404.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, api: &str) -> Result<Option<T>> {
        let url = self.url(path, Some(api))?;
        let (status, _, body) = self.send(Method::GET, url, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(status, &body, &format!("GET {path}"))?;
        parse(&body, path).map(Some)
    }

    /// GET of something the caller's role may not allow (a quota): a refusal (401/403) or a
    /// 404 is an answer, not an error. `api` is `None` for a `nextLink`, which carries its own.
    pub async fn read<T: DeserializeOwned>(
        &self,
        path_or_url: &str,
        api: Option<&str>,
    ) -> Result<Read<T>> {
        let url = self.url(path_or_url, api)?;
        let what = format!("GET {}", url.path());
        let (status, _, body) = self.send(Method::GET, url, None).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(Read::NotFound),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
                let detail = check(status, &body, &what)
                    .err()
                    .map(|error| format!("{error:#}"))
                    .unwrap_or_default();
                Ok(Read::Refused(detail))
            }
            _ => {
                check(status, &body, &what)?;
                parse(&body, &what).map(Read::Found)
            }
        }
    }

    /// PUT a resource and wait until ARM says it is provisioned.
    pub async fn put<B: Serialize>(
        &self,
        path: &str,
        api: &str,
        body: &B,
        limit: Duration,
    ) -> Result<()> {
        let body = serde_json::to_value(body)?;
        self.long_running(Method::PUT, path, api, Some(&body), limit)
            .await
            .map(|_| ())
    }

    /// POST an action and wait for its result body (if any).
    pub async fn post<B: Serialize>(
        &self,
        path: &str,
        api: &str,
        body: &B,
        limit: Duration,
    ) -> Result<Vec<u8>> {
        let body = serde_json::to_value(body)?;
        self.long_running(Method::POST, path, api, Some(&body), limit)
            .await
    }

    /// DELETE and wait until it is gone (a 404 counts as deleted).
    pub async fn delete(&self, path: &str, api: &str, limit: Duration) -> Result<()> {
        self.long_running(Method::DELETE, path, api, None, limit)
            .await
            .map(|_| ())
    }

    /// The ARM long-running operation protocol: 200/201/202/204, then poll
    /// `Azure-AsyncOperation` (status document) or `Location` (202 until done, then the result).
    async fn long_running(
        &self,
        method: Method,
        path: &str,
        api: &str,
        body: Option<&serde_json::Value>,
        limit: Duration,
    ) -> Result<Vec<u8>> {
        let what = format!("{method} {path}");
        let url = self.url(path, Some(api))?;
        let (status, headers, response) = self.send(method.clone(), url, body).await?;
        if method == Method::DELETE && status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        check(status, &response, &what)?;
        let async_operation = header(&headers, "azure-asyncoperation");
        let location = header(&headers, "location");
        let started = Instant::now();
        let mut delay = retry_after(&headers);
        if let Some(operation) = async_operation {
            loop {
                wait(&what, started, limit, delay).await?;
                let (status, headers, body) = self
                    .send(Method::GET, self.url(&operation, None)?, None)
                    .await?;
                check(status, &body, &format!("{what}: polling its operation"))?;
                let state: AsyncOperation = parse(&body, "operation status")?;
                match state.status.as_str() {
                    "Succeeded" => break,
                    "Failed" | "Canceled" => {
                        let detail = state
                            .error
                            .map(|e| e.to_string())
                            .unwrap_or_else(|| "no error detail".to_owned());
                        bail!("{what}: operation {}: {detail}", state.status);
                    }
                    _ => delay = retry_after(&headers),
                }
            }
            // The action's result (beginGetAccess) is at Location when ARM gives one.
            if let Some(location) = location {
                let (status, _, body) = self
                    .send(Method::GET, self.url(&location, None)?, None)
                    .await?;
                check(status, &body, &format!("{what}: reading its result"))?;
                return Ok(body);
            }
            return Ok(Vec::new());
        }
        if let Some(location) = location {
            loop {
                wait(&what, started, limit, delay).await?;
                let (status, headers, body) = self
                    .send(Method::GET, self.url(&location, None)?, None)
                    .await?;
                if status == StatusCode::ACCEPTED {
                    delay = retry_after(&headers);
                    continue;
                }
                if method == Method::DELETE && status == StatusCode::NOT_FOUND {
                    return Ok(Vec::new());
                }
                check(status, &body, &format!("{what}: polling its result"))?;
                return Ok(body);
            }
        }
        Ok(response)
    }

    /// Resources in a group carrying `tag=value` (checked here too, not only by ARM's filter).
    pub async fn tagged_in_group(
        &self,
        group: &str,
        tag: &str,
        value: &str,
    ) -> Result<Vec<ArmResource>> {
        let filter = format!("tagName eq '{tag}' and tagValue eq '{value}'");
        let found = self.list(group, Some(&filter)).await?;
        Ok(found
            .into_iter()
            .filter(|r| r.tag(tag) == Some(value))
            .collect())
    }

    /// Every resource in a group.
    pub async fn list_group(&self, group: &str) -> Result<Vec<ArmResource>> {
        self.list(group, None).await
    }

    async fn list(&self, group: &str, filter: Option<&str>) -> Result<Vec<ArmResource>> {
        let mut url = self.url(&format!("{}/resources", self.group_path(group)), None)?;
        if let Some(filter) = filter {
            url.query_pairs_mut().append_pair("$filter", filter);
        }
        url.query_pairs_mut()
            .append_pair("api-version", API_RESOURCES);
        let mut found = Vec::new();
        let mut next = Some(url);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 100 {
                bail!("listing resources: too many pages");
            }
            let (status, _, body) = self.send(Method::GET, url, None).await?;
            if status == StatusCode::NOT_FOUND {
                break;
            }
            check(status, &body, "listing the resource group")?;
            let page: ArmList<ArmResource> = parse(&body, "resource list")?;
            found.extend(page.value);
            next = match page.next_link {
                Some(link) => Some(self.url(&link, None)?),
                None => None,
            };
        }
        Ok(found)
    }
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Retry-After in seconds, bounded to 0.1..=30 s (default 5 s).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let seconds = header(headers, "retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(5)
        .min(30);
    Duration::from_secs(seconds).max(Duration::from_millis(100))
}

async fn wait(what: &str, started: Instant, limit: Duration, delay: Duration) -> Result<()> {
    if started.elapsed() > limit {
        bail!("{what}: not finished after {} s", limit.as_secs());
    }
    tokio::time::sleep(delay).await;
    Ok(())
}

/// Fails with ARM's error code and message on a non-success status.
fn check(status: StatusCode, body: &[u8], what: &str) -> Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error)
        .map(|e| e.to_string())
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned());
    bail!("{what}: HTTP {status}: {detail}")
}

pub fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).with_context(|| format!("unexpected JSON in {what}"))
}

/// The rest of the credential chain (after AZURE_ACCESS_TOKEN): the Azure CLI's login, a
/// managed identity.
async fn credentials(http: &reqwest::Client) -> Result<Credentials> {
    let cli = az_cli_token().await;
    if let Ok(credentials) = cli {
        return Ok(credentials);
    }
    let imds = imds_token(http).await;
    if let Ok(credentials) = imds {
        return Ok(credentials);
    }
    let cli = cli.err().map(|e| format!("{e:#}")).unwrap_or_default();
    let imds = imds.err().map(|e| format!("{e:#}")).unwrap_or_default();
    bail!(
        "no Azure credentials: set {TOKEN_ENV}, or log in with `az login` ({cli}), or run \
         where a managed identity is available ({imds})"
    )
}

async fn az_cli_token() -> Result<Credentials> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("az")
            .args([
                "account",
                "get-access-token",
                "--resource",
                "https://management.azure.com/",
                "-o",
                "json",
            ])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .context("az account get-access-token timed out")?
    .context("Azure CLI `az` not found")?;
    if !output.status.success() {
        bail!(
            "az account get-access-token failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let token: AzCliToken = parse(&output.stdout, "az account get-access-token")?;
    Ok(Credentials {
        token: token.access_token,
        source: Source::AzCli,
        subscription: token.subscription,
    })
}

async fn imds_token(http: &reqwest::Client) -> Result<Credentials> {
    let response = http
        .get("http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/")
        .header("Metadata", "true")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .context("no managed identity endpoint")?;
    let status = response.status();
    let body = crate::deploy::net::read_bounded(response, MAX_BODY).await?;
    check(status, &body, "managed identity token")?;
    let token: ImdsToken = parse(&body, "managed identity token")?;
    Ok(Credentials {
        token: token.access_token,
        source: Source::ManagedIdentity,
        subscription: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_arm_code_and_message() {
        let body = br#"{"error":{"code":"QuotaExceeded","message":"no DCesv5 cores"}}"#;
        let text = format!(
            "{:#}",
            check(StatusCode::CONFLICT, body, "PUT x").unwrap_err()
        );
        assert!(text.contains("QuotaExceeded: no DCesv5 cores"), "{text}");
        let text = format!(
            "{:#}",
            check(StatusCode::BAD_GATEWAY, b"<html>", "GET y").unwrap_err()
        );
        assert!(text.contains("502") && text.contains("<html>"), "{text}");
    }

    #[test]
    fn retry_after_is_bounded() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), Duration::from_secs(5));
        headers.insert("retry-after", "0".parse().unwrap());
        assert_eq!(retry_after(&headers), Duration::from_millis(100));
        headers.insert("retry-after", "99999".parse().unwrap());
        assert_eq!(retry_after(&headers), Duration::from_secs(30));
    }
}
