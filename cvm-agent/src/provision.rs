//! `cvm-agent provision`: hands the agent what the platform provisions for this VM, before the
//! agent starts (systemd `cvm-provision.service`). Today that is the API token of the update routes,
//! read from the source of the platform the machine shows (DMI `sys_vendor`, never configuration):
//!
//! - QEMU: fw_cfg `opt/cvm/api-token` (`cvm-cli deploy-local`), the raw token;
//! - Azure: IMDS `userData` (base64 of the [`UserData`] JSON document);
//! - GCP: the instance metadata attribute [`GCP_METADATA_KEY`] (the JSON document);
//! - AWS: IMDSv2 `user-data` (the JSON document), after a session token.
//!
//! The metadata service is an adversary: answers are bounded, every request has connect and
//! overall timeouts, only connection errors and 5xx answers are retried (a few times, with
//! backoff: IMDS may not answer yet at boot), and every error names its source. The outcome is
//! `<out>/api-token` (0600) plus `<out>/agent.env` (`CVM_AGENT_API_TOKEN_FILE=...`), or an empty
//! `agent.env` when no token is provided or the source fails: `agent.env` is emptied and any old
//! token removed before anything is fetched, so the agent never starts with a stale token.

use cvm_attestation::evidence::Cloud;
use cvm_attestation::provision::{
    UserData, UserDataError, GCP_METADATA_KEY, MAX_USER_DATA_BYTES, TOKEN_LEN,
};
use cvm_attestation::workload::DataUnlock;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The link-local address every supported cloud serves its metadata on.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
/// Where the outcome goes by default (`cvm-agent.service` reads `agent.env` from here).
pub const DEFAULT_OUT_DIR: &str = "/run/cvm-provision";
/// The fw_cfg entry `cvm-cli deploy-local` puts the token in, below the sysfs root.
pub const FW_CFG_TOKEN: &str = "firmware/qemu_fw_cfg/by_name/opt/cvm/api-token/raw";
/// The data key mode's fw_cfg entry, under the sysfs root.
pub const FW_CFG_DATA_UNLOCK: &str = "firmware/qemu_fw_cfg/by_name/opt/cvm/data-unlock/raw";
/// The DMI directory below the sysfs root.
const DMI_SUBDIR: &str = "class/dmi/id";
/// Azure's userData is base64: 4 characters per 3 bytes, and a little slack for a line end.
const MAX_AZURE_BODY: usize = MAX_USER_DATA_BYTES.div_ceil(3) * 4 + 16;
/// An IMDSv2 session token is about 60 characters.
const MAX_AWS_SESSION_TOKEN: usize = 1024;

/// Where a token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    FwCfg,
    AzureImds,
    GcpMetadata,
    AwsImds,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::FwCfg => "fw_cfg opt/cvm/api-token",
            Source::AzureImds => "Azure IMDS userData",
            Source::GcpMetadata => "GCP metadata attribute cvm-agent",
            Source::AwsImds => "AWS IMDSv2 user-data",
        })
    }
}

impl Source {
    /// The source of a cloud.
    pub fn of(cloud: Cloud) -> Self {
        match cloud {
            Cloud::Qemu => Source::FwCfg,
            Cloud::Azure => Source::AzureImds,
            Cloud::Gcp => Source::GcpMetadata,
            Cloud::Aws => Source::AwsImds,
        }
    }
}

/// What went wrong reading one source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unreachable after {attempts} attempts: {last}")]
    Unreachable { attempts: u32, last: String },
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("{0} answered HTTP {1}")]
    Status(&'static str, StatusCode),
    #[error("{0}: {1}")]
    Http(&'static str, String),
    #[error("the answer lacks the `Metadata-Flavor: Google` header: not the GCP metadata server")]
    NotGoogle,
    #[error("{what} is more than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    #[error("userData is not base64")]
    Base64,
    #[error("the IMDSv2 session token is not a usable header value")]
    BadSessionToken,
    #[error("the token is not {min}..={max} printable ASCII characters without whitespace", min = TOKEN_LEN.start(), max = TOKEN_LEN.end())]
    BadRawToken,
    #[error("{0}")]
    Document(#[from] UserDataError),
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}: {1}")]
    Source(Source, SourceError),
    #[error("writing {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("{0}: not a directory of our own")]
    OutDir(PathBuf),
    #[error("the output path {0:?} is not plain UTF-8 without line breaks")]
    OutPath(PathBuf),
    #[error("the metadata URL {0:?} is not http://HOST[:PORT]")]
    MetadataUrl(String),
}

/// The outcome of a successful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The token was written to `token_file` and `agent.env` points the agent at it.
    Provisioned { source: Source, token_file: PathBuf },
    /// The platform provides no token: `agent.env` is empty, the update routes stay off.
    Absent { source: Source },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Provisioned { source, token_file } => {
                write!(f, "API token from {source} in {}", token_file.display())
            }
            Outcome::Absent { source } => {
                write!(f, "no API token in {source}: update routes stay off")
            }
        }
    }
}

/// Timeouts and retries for the metadata service.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts per request (connection errors and 5xx answers only).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    /// The whole exchange: request, answer head and body.
    pub request_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            // About 30 s of waits in all: the network may still be coming up at boot.
            attempts: 10,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What to read and where to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// Output directory (0700): `api-token` and `agent.env`.
    pub out: PathBuf,
    /// The metadata service's base URL (tests point it at a local stand-in).
    pub metadata_url: String,
    /// The sysfs root: DMI `class/dmi/id` and fw_cfg below it (tests use a temporary folder).
    pub sysfs_root: PathBuf,
    pub retry: Retry,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            out: DEFAULT_OUT_DIR.into(),
            metadata_url: DEFAULT_METADATA_URL.into(),
            sysfs_root: "/sys".into(),
            retry: Retry::default(),
        }
    }
}

/// Detects the cloud, reads its token source and writes the outcome to `options.out`.
pub async fn provision(options: &Options) -> Result<Outcome, ProvisionError> {
    let env_line = prepare_out_dir(&options.out)?;
    check_metadata_url(&options.metadata_url)?;
    let cloud = crate::platform::cloud_from_dmi(&options.sysfs_root.join(DMI_SUBDIR));
    let source = Source::of(cloud);
    let (token, data_unlock) = fetch(source, options)
        .await
        .map_err(|e| ProvisionError::Source(source, e))?;
    // The data key's mode (docs/data-at-rest.md), when the deployment chose one: the agent
    // records it in PCR 23, so a host that changes it is seen.
    let mode_line = data_unlock
        .map(|mode| {
            tracing::info!("/data key mode {} from {source}", mode.as_str());
            format!("CVM_AGENT_DATA_UNLOCK={}\n", mode.as_str())
        })
        .unwrap_or_default();
    let Some(token) = token else {
        write_file(&options.out, "agent.env", mode_line.as_bytes())?;
        return Ok(Outcome::Absent { source });
    };
    let token_file = options.out.join("api-token");
    write_file(&options.out, "api-token", token.as_bytes())?;
    write_file(
        &options.out,
        "agent.env",
        format!("{env_line}{mode_line}").as_bytes(),
    )?;
    Ok(Outcome::Provisioned { source, token_file })
}

/// The token of `source` and the data key mode, each `None` when the platform provides none.
async fn fetch(
    source: Source,
    options: &Options,
) -> Result<(Option<String>, Option<DataUnlock>), SourceError> {
    let imds = || Imds::new(&options.metadata_url, &options.retry);
    let document = match source {
        Source::FwCfg => {
            let token = read_fw_cfg(&options.sysfs_root.join(FW_CFG_TOKEN))?;
            let mode = read_fw_cfg_mode(&options.sysfs_root.join(FW_CFG_DATA_UNLOCK))?;
            return Ok((token, mode));
        }
        Source::AzureImds => imds().azure().await?,
        Source::GcpMetadata => imds().gcp().await?,
        Source::AwsImds => imds().aws().await?,
    };
    Ok(match document {
        Some(d) => (Some(d.cvm_api_token), d.data_unlock),
        None => (None, None),
    })
}

/// The data key mode in fw_cfg (`cvm-cli deploy-local --data-unlock`); `None` without the entry.
fn read_fw_cfg_mode(path: &Path) -> Result<Option<DataUnlock>, SourceError> {
    let bytes = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(SourceError::Read {
                path: path.to_owned(),
                err,
            })
        }
        Ok(bytes) => bytes,
    };
    let text = std::str::from_utf8(&bytes).unwrap_or("").trim();
    text.parse()
        .map(Some)
        .map_err(|e: String| SourceError::Read {
            path: path.to_owned(),
            err: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

/// Creates `out` (0700), empties `agent.env` and removes any old token; returns the line
/// `agent.env` gets once there is a token.
fn prepare_out_dir(out: &Path) -> Result<String, ProvisionError> {
    let token_path = out.join("api-token");
    let env_line = match token_path.to_str() {
        Some(p) if !p.contains(['\n', '\r', '"', '\'', '\\']) => {
            format!("CVM_AGENT_API_TOKEN_FILE={p}\n")
        }
        _ => return Err(ProvisionError::OutPath(out.to_owned())),
    };
    let write_err = |err| ProvisionError::Write {
        path: out.to_owned(),
        err,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(write_err)?;
    let meta = std::fs::symlink_metadata(out).map_err(write_err)?;
    if !meta.is_dir() {
        return Err(ProvisionError::OutDir(out.to_owned()));
    }
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o700)).map_err(write_err)?;
    write_file(out, "agent.env", b"")?;
    match std::fs::remove_file(&token_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ProvisionError::Write {
            path: token_path,
            err: e,
        }),
        _ => Ok(env_line),
    }
}

/// Writes `dir/name` (0600) whole or not at all: a temporary file renamed into place.
fn write_file(dir: &Path, name: &str, content: &[u8]) -> Result<(), ProvisionError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    result.map_err(|err| {
        let _ = std::fs::remove_file(&tmp);
        ProvisionError::Write { path, err }
    })
}

/// The raw token in fw_cfg; `None` when the entry does not exist.
fn read_fw_cfg(path: &Path) -> Result<Option<String>, SourceError> {
    let read_err = |err| SourceError::Read {
        path: path.to_owned(),
        err,
    };
    let file = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other.map_err(read_err)?,
    };
    let mut bytes = Vec::new();
    let limit = MAX_USER_DATA_BYTES as u64 + 1;
    file.take(limit).read_to_end(&mut bytes).map_err(read_err)?;
    parse_fw_cfg(&bytes).map(Some)
}

/// The fw_cfg entry's content: the raw token (one trailing line end tolerated).
pub fn parse_fw_cfg(bytes: &[u8]) -> Result<String, SourceError> {
    if bytes.len() > MAX_USER_DATA_BYTES {
        return Err(SourceError::TooLarge {
            what: "the fw_cfg entry",
            limit: MAX_USER_DATA_BYTES,
        });
    }
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let token = std::str::from_utf8(bytes).map_err(|_| SourceError::BadRawToken)?;
    UserData::new(token)
        .map(|d| d.cvm_api_token)
        .map_err(|_| SourceError::BadRawToken)
}

/// Azure's userData answer: base64 of the document; empty when none was given.
pub fn parse_azure_user_data(body: &[u8]) -> Result<Option<UserData>, SourceError> {
    let text = std::str::from_utf8(body).map_err(|_| SourceError::Base64)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let bytes = cvm_attestation::encoding::decode_base64(text).ok_or(SourceError::Base64)?;
    parse_document(&bytes)
}

/// A cloud's user data: the JSON document; empty when none was given.
pub fn parse_document(bytes: &[u8]) -> Result<Option<UserData>, SourceError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    Ok(Some(UserData::parse(bytes)?))
}

/// An answer of the metadata service.
struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

/// A client of the cloud's metadata service.
struct Imds<'a> {
    base: String,
    retry: &'a Retry,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// The metadata service's base URL must be `http://HOST[:PORT]`.
fn check_metadata_url(url: &str) -> Result<(), ProvisionError> {
    let bad = || ProvisionError::MetadataUrl(url.to_owned());
    let uri: hyper::Uri = url.trim_end_matches('/').parse().map_err(|_| bad())?;
    let plain = uri.scheme_str() == Some("http")
        && uri.host().is_some()
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    plain.then_some(()).ok_or_else(bad)
}

impl<'a> Imds<'a> {
    /// A client for `base`, checked by [`check_metadata_url`].
    fn new(base: &str, retry: &'a Retry) -> Self {
        let base = base.trim_end_matches('/');
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(retry.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Self {
            base: base.to_owned(),
            retry,
            client,
        }
    }

    async fn azure(&self) -> Result<Option<UserData>, SourceError> {
        let path = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";
        let answer = self
            .request(Method::GET, path, &[("Metadata", "true")], MAX_AZURE_BODY)
            .await?;
        match answer.status {
            StatusCode::OK => parse_azure_user_data(&answer.body),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(SourceError::Status("the request", status)),
        }
    }

    async fn gcp(&self) -> Result<Option<UserData>, SourceError> {
        let path = format!("/computeMetadata/v1/instance/attributes/{GCP_METADATA_KEY}");
        let answer = self
            .request(
                Method::GET,
                &path,
                &[("Metadata-Flavor", "Google")],
                MAX_USER_DATA_BYTES,
            )
            .await?;
        if answer.headers.get("metadata-flavor").map(|v| v.as_bytes()) != Some(b"Google") {
            return Err(SourceError::NotGoogle);
        }
        match answer.status {
            StatusCode::OK => parse_document(&answer.body),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(SourceError::Status("the request", status)),
        }
    }

    async fn aws(&self) -> Result<Option<UserData>, SourceError> {
        let ttl = [("X-aws-ec2-metadata-token-ttl-seconds", "60")];
        let answer = self
            .request(
                Method::PUT,
                "/latest/api/token",
                &ttl,
                MAX_AWS_SESSION_TOKEN,
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(SourceError::Status(
                "the session token request",
                answer.status,
            ));
        }
        let session = std::str::from_utf8(&answer.body)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(SourceError::BadSessionToken)?;
        let header = [("X-aws-ec2-metadata-token", session)];
        let answer = self
            .request(
                Method::GET,
                "/latest/user-data",
                &header,
                MAX_USER_DATA_BYTES,
            )
            .await?;
        match answer.status {
            StatusCode::OK => parse_document(&answer.body),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(SourceError::Status("the user-data request", status)),
        }
    }

    /// One request, retried on connection errors and 5xx answers with growing waits.
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        limit: usize,
    ) -> Result<Answer, SourceError> {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            let last = match self.attempt(&method, path, headers, limit).await? {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Retry(why) => why,
            };
            if attempt >= self.retry.attempts.max(1) {
                return Err(SourceError::Unreachable {
                    attempts: attempt,
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }

    /// One attempt, bounded in time and size.
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        headers: &[(&str, &str)],
        limit: usize,
    ) -> Result<Attempt, SourceError> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| SourceError::Http("building the request", e.to_string()))?;
        let exchange = async {
            let response = match self.client.request(request).await {
                Ok(response) => response,
                Err(e) if e.is_connect() => return Ok(Attempt::Retry(error_chain(&e))),
                Err(e) => return Err(SourceError::Http("request", error_chain(&e))),
            };
            if response.status().is_server_error() {
                return Ok(Attempt::Retry(format!("HTTP {}", response.status())));
            }
            let (head, body) = response.into_parts();
            let body = read_bounded(body, limit).await?;
            Ok(Attempt::Done(Answer {
                status: head.status,
                headers: head.headers,
                body,
            }))
        };
        let timeout = self.retry.request_timeout;
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| SourceError::Timeout(timeout))?
    }
}

/// Whether an attempt answered or may be retried (and why).
enum Attempt {
    Done(Answer),
    Retry(String),
}

/// The body, refused once it exceeds `limit` bytes.
async fn read_bounded(mut body: Incoming, limit: usize) -> Result<Bytes, SourceError> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SourceError::Http("reading the answer", error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(SourceError::TooLarge {
                    what: "the answer",
                    limit,
                });
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.into())
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
