//! The agent's HTTP API (openapi.json): a local listener for the workload and an external one for
//! verifiers and operators, with the predecessor's paths and ours. Every route has a body limit
//! and a timeout; every error is JSON `{"error": "..."}`.

use crate::archive::{unpack, ArchiveError, Limits};
use crate::audit::{self, Throttle};
use crate::platform::PlatformInfo;
use crate::serve::{ClientLimiter, Peer};
use crate::tpm_actor::{TpmActor, TpmBusy};
use crate::workload::{RollbackFailed, TpmFailed, Workloads, PROJECT};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cvm_attestation::encoding::decode_base64;
use cvm_attestation::evidence::{check_nonce, Platform};
use cvm_attestation::golden::{GoldenMeasurement, GoldenPcr, GOLDEN_VERSION};
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::{verify, Evidence, Sha256Digest, VerifyOptions};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Which listener serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Local,
    External,
    Both,
}

/// Every route: method, path, listener. The OpenAPI document is tested against this list.
pub const ROUTES: &[(&str, &str, Listener)] = &[
    ("get", "/collaterals/{nonce}", Listener::Both),
    ("get", "/offchain/collaterals/{nonce}", Listener::Both),
    ("get", "/golden-measurement", Listener::Both),
    ("get", "/offchain/golden-measurement", Listener::Both),
    ("post", "/offchain-verify", Listener::Local),
    ("post", "/offchain/verify", Listener::Local),
    ("get", "/platform", Listener::Both),
    ("get", "/eventlog", Listener::Both),
    ("get", "/health", Listener::Both),
    ("post", "/update-workload", Listener::External),
    ("get", "/container-logs", Listener::External),
    ("post", "/unlock", Listener::External),
    ("get", "/openapi.json", Listener::Both),
];

/// The API's own description, served at `/openapi.json` (the contract test runs against it).
pub const OPENAPI: &str = include_str!("../openapi.json");
/// Longest non-JSON error body turned into a JSON error (axum's rejections are one line).
const MAX_ERROR_TEXT: usize = 4096;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const UPDATE_TIMEOUT: Duration = Duration::from_secs(900);
const SMALL_BODY: usize = 64 * 1024;
/// Audit lines for rejected bearer tokens: at most this many per window (then counted).
const REJECTED_TOKEN_LINES: u32 = 10;
const REJECTED_TOKEN_WINDOW: Duration = Duration::from_secs(60);
const VERIFY_BODY: usize = 24 << 20;
/// Longest nonce path segment accepted (base64 of 64 bytes is 88 characters).
const MAX_NONCE_TEXT: usize = 256;

/// Shared by all handlers.
pub struct AppState {
    pub platform: Platform,
    pub tpm: TpmActor,
    pub workloads: Arc<Workloads>,
    /// SHA-256 of the bearer token; `None` disables the bearer routes.
    pub token_hash: Option<Sha256Digest>,
    /// Predicted PCRs of the image build.
    pub image_pcrs: BTreeMap<u8, GoldenPcr>,
    pub test_roots: Vec<TrustedRoot>,
    pub workload_dir: std::path::PathBuf,
    pub max_upload_bytes: usize,
    /// SHA-256 of the external listener's TLS key, bound into every evidence document.
    pub tls_key: Option<[u8; 32]>,
}

type Shared = State<Arc<AppState>>;

/// An error answer.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    fn internal(error: anyhow::Error) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
    }
}

/// A JSON body that could not be read: 413 when too large, otherwise 400 naming the shape.
fn body_error(rejection: JsonRejection, expected: &str) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, rejection.body_text())
        }
        _ => ApiError::bad_request(format!("body must be {expected}: {rejection}")),
    }
}

/// The container engine did not answer (stopped, restarting): 503, come back shortly.
fn engine_unavailable(error: anyhow::Error) -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the container engine did not answer: {error:#}"),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        // 503 here always means "busy now": a client should come back shortly.
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            let retry = HeaderValue::from_static("1");
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}

/// Builds the router for one listener.
pub fn router(state: Arc<AppState>, listener: Listener) -> Router {
    let serves = |l: Listener| l == Listener::Both || l == listener;
    let mut routes = Router::new();
    for &(method, path, on) in ROUTES {
        if !serves(on) {
            continue;
        }
        routes = match (method, path) {
            ("get", "/collaterals/{nonce}" | "/offchain/collaterals/{nonce}") => {
                routes.route(path, get(collaterals))
            }
            ("get", "/golden-measurement" | "/offchain/golden-measurement") => {
                routes.route(path, get(golden))
            }
            ("post", "/offchain-verify" | "/offchain/verify") => routes.route(
                path,
                post(offchain_verify).layer(DefaultBodyLimit::max(VERIFY_BODY)),
            ),
            ("get", "/platform") => routes.route(path, get(platform)),
            ("get", "/eventlog") => routes.route(path, get(eventlog)),
            ("get", "/health") => routes.route(path, get(health)),
            ("get", "/container-logs") => routes.route(path, get(container_logs)),
            ("post", "/unlock") => routes.route(path, post(unlock)),
            ("get", "/openapi.json") => routes.route(path, get(openapi)),
            ("post", "/update-workload") => routes.route(
                path,
                post(update_workload)
                    .layer(DefaultBodyLimit::max(state.max_upload_bytes + 64 * 1024)),
            ),
            _ => unreachable!("every route in ROUTES has a handler: {method} {path}"),
        };
    }
    let rejected = Arc::new(Throttle::new(REJECTED_TOKEN_LINES, REJECTED_TOKEN_WINDOW));
    routes
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .layer(middleware::from_fn(|req: Request, next: Next| {
            // One timeout layer for every route (an inner, longer one would be cut by an outer
            // one): updates and unlocks load images and start containers.
            let limit = match req.uri().path() {
                "/update-workload" | "/unlock" => UPDATE_TIMEOUT,
                _ => REQUEST_TIMEOUT,
            };
            timeout(req, next, limit)
        }))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            audit_rejections(req, next, Arc::clone(&rejected))
        }))
        .layer(middleware::from_fn(json_errors))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such route; see openapi.json".into(),
            )
        })
        .with_state(state)
}

/// Makes every error JSON, also those axum answers itself (405 with an empty body, extractor
/// rejections in plain text): status and headers (`Allow`, `Retry-After`) stay.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            "method not allowed on this route; see openapi.json".into()
        }
        (_, true) => status.canonical_reason().unwrap_or("error").to_lowercase(),
        (_, false) => text,
    };
    let mut json = ApiError(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn timeout(request: Request, next: Next, limit: Duration) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!("request took longer than {limit:?}"),
        )
        .into_response(),
    }
}

/// An audit line per request refused for its bearer token (401 and 403 come from `authorize`
/// alone), rate-limited.
async fn audit_rejections(request: Request, next: Next, throttle: Arc<Throttle>) -> Response {
    let peer = request.extensions().get::<Peer>().cloned();
    let route = request.uri().path().to_owned();
    let presented = request.headers().contains_key(header::AUTHORIZATION);
    let response = next.run(request).await;
    let reason = match response.status() {
        StatusCode::UNAUTHORIZED if presented => "wrong or malformed token",
        StatusCode::UNAUTHORIZED => "no Authorization header",
        StatusCode::FORBIDDEN => "no API token is configured here",
        _ => return response,
    };
    let peer = peer.unwrap_or_else(|| Peer("unknown".into()));
    audit::rejected_token(&throttle, &peer, &route, reason);
    response
}

/// A nonce in the path: hex, or base64 (standard or URL-safe).
fn parse_nonce(text: &str) -> Result<Vec<u8>, ApiError> {
    if text.len() > MAX_NONCE_TEXT {
        return Err(ApiError::bad_request("nonce is too long"));
    }
    let bytes = if text.len() % 2 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|e| ApiError::bad_request(e.to_string()))?
    } else {
        decode_base64(text)
            .ok_or_else(|| ApiError::bad_request("nonce is neither hex nor base64"))?
    };
    check_nonce(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(bytes)
}

/// 429: the client asked for more evidence than its rate allows; `Retry-After` says when the
/// next request is allowed (whole seconds, at least 1).
fn rate_limited(retry: Duration) -> Response {
    let seconds = retry.as_secs_f64().ceil().max(1.0) as u64;
    let message = format!(
        "too many evidence requests from this client: retry in {seconds} s (client_evidence_per_sec)"
    );
    let mut response = ApiError(StatusCode::TOO_MANY_REQUESTS, message).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Evidence over the nonce. Each request costs a TPM quote: per client it is rate-limited (429),
/// overall the TPM queue is bounded (503).
async fn collaterals(
    state: Shared,
    peer: Option<axum::Extension<Peer>>,
    limiter: Option<axum::Extension<Arc<ClientLimiter>>>,
    Path(nonce): Path<String>,
) -> Result<Json<Evidence>, Response> {
    let nonce = parse_nonce(&nonce).map_err(IntoResponse::into_response)?;
    if state.workloads.has_failed() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "an extend failed (the TPM, or saving the log after it): the agent restarts to \
             reconcile its log with PCR 23"
                .into(),
        )
        .into_response());
    }
    if let (Some(axum::Extension(peer)), Some(axum::Extension(limiter))) = (peer, limiter) {
        limiter.check(&peer).map_err(rate_limited)?;
    }
    let log = state.workloads.measured().await.log;
    let evidence = state
        .tpm
        .evidence(state.platform, nonce, state.tls_key, log)
        .await
        .map_err(|e| match e.downcast_ref::<TpmBusy>() {
            Some(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
            None => ApiError::internal(e),
        })
        .map_err(IntoResponse::into_response)?;
    Ok(Json(evidence))
}

/// What this VM should match: the image build's predicted PCRs and the measured workload. Never
/// the current PCR values presented as golden.
async fn golden(state: Shared) -> Json<Value> {
    let measured = state.workloads.measured().await;
    let golden = GoldenMeasurement {
        version: GOLDEN_VERSION,
        platform: Some(state.platform),
        pcrs: state.image_pcrs.clone(),
        workload: Some(measured.golden_workload()),
        snp: None,
        tdx: None,
        boot_events: Vec::new(),
    };
    Json(json!({ "golden_measurement": golden }))
}

#[derive(Deserialize)]
struct VerifyRequest {
    collaterals: Value,
    golden_measurement: Value,
    /// The nonce the caller used, to check freshness (hex or base64).
    #[serde(default)]
    nonce: Option<String>,
    /// For VMs without a TEE: the AK public key the caller pinned (base64).
    #[serde(default)]
    trusted_ak: Option<String>,
}

/// JSON given as an object or as a string holding JSON (the predecessor's form).
fn json_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.as_bytes().to_vec(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    }
}

async fn offchain_verify(
    state: Shared,
    body: Result<Json<VerifyRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body.map_err(|e| body_error(e, "{collaterals, golden_measurement}"))?;
    let evidence = Evidence::from_json(&json_bytes(&request.collaterals))
        .map_err(|e| ApiError::bad_request(format!("collaterals: {e}")))?;
    let golden = GoldenMeasurement::from_json(&json_bytes(&request.golden_measurement))
        .map_err(|e| ApiError::bad_request(format!("golden_measurement: {e}")))?;
    let mut options = VerifyOptions::now().with_test_roots(state.test_roots.clone());
    if let Some(nonce) = &request.nonce {
        options = options.with_nonce(parse_nonce(nonce)?);
    }
    if let Some(ak) = &request.trusted_ak {
        options = options.with_trusted_ak(
            decode_base64(ak).ok_or_else(|| ApiError::bad_request("trusted_ak is not base64"))?,
        );
    }
    let report = tokio::task::spawn_blocking(move || verify(&evidence, &golden, &options))
        .await
        .map_err(|e| ApiError::internal(e.into()))?;
    let error = (!report.verified).then(|| {
        report
            .failures()
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect::<Vec<_>>()
            .join("; ")
    });
    Ok(Json(
        json!({ "success": report.verified, "error": error, "report": report }),
    ))
}

async fn platform(state: Shared) -> Json<PlatformInfo> {
    Json(PlatformInfo::from(state.platform))
}

async fn eventlog(state: Shared) -> Json<Value> {
    Json(json!(state.workloads.measured().await.log))
}

fn engine(state: &AppState) -> Result<&crate::engine::Engine, ApiError> {
    state.workloads.engine().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "measure-only agent: no container engine on this VM".into(),
        )
    })
}

/// While `/data` waits for its pushed key, the engine (whose storage is there) must not be asked:
/// its socket-activated service cannot start, and asking again and again would exhaust
/// systemd's start limit before the unlock.
async fn locked(state: &AppState) -> bool {
    state.workloads.data_state().await == Some(cvm_attestation::workload::DataState::Locked)
}

async fn health(state: Shared) -> Result<Json<Value>, ApiError> {
    if locked(&state).await {
        return Ok(Json(json!({
            "status": "ok",
            "workload": "locked: /data waits for its key (cvm-cli unlock)",
        })));
    }
    let Some(engine) = state.workloads.engine() else {
        return Ok(Json(
            json!({ "status": "ok", "workload": "measured, not started (measure-only)" }),
        ));
    };
    let containers = engine
        .project_containers(PROJECT)
        .await
        .map_err(engine_unavailable)?;
    let services: Vec<Value> = containers
        .into_iter()
        .map(|(service, _, state)| json!({ "service": service, "state": state }))
        .collect();
    Ok(Json(json!({ "status": "ok", "workload": services })))
}

/// Constant-time check of `Authorization: Bearer <token>`.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.token_hash else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "no API token is configured on this VM: this route is disabled".into(),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer token".into(),
            )
        })?;
    // Hashing first gives equal lengths, so the comparison time reveals nothing about the token.
    let presented = Sha256Digest::of(presented.trim().as_bytes());
    if !openssl::memcmp::eq(&presented.0, &expected.0) {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "wrong API token".into()));
    }
    Ok(())
}

/// `POST /unlock` body: the pushed data key, base64.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockRequest {
    key: String,
}

/// Opens a locked `/data` with the pushed key (bearer token required: whoever holds the key of a
/// first boot decides it). Sent by `cvm-cli unlock` only after verifying this VM over the TLS key
/// bound into its evidence.
async fn unlock(
    state: Shared,
    headers: HeaderMap,
    body: Result<Json<UnlockRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let Json(request) = body.map_err(|e| body_error(e, "{\"key\": base64}"))?;
    let key =
        decode_base64(&request.key).ok_or_else(|| ApiError::bad_request("key: not base64"))?;
    // In a task of its own, like an update: a client that leaves cannot stop it halfway.
    let outcome = {
        let state = Arc::clone(&state.0);
        tokio::spawn(async move { state.workloads.unlock(&key).await })
            .await
            .map_err(|e| ApiError::internal(e.into()))?
    };
    match outcome {
        Ok(outcome) => {
            let already = outcome == crate::workload::Unlocked::Already;
            tracing::info!(already, "/data unlocked");
            Ok(Json(json!({
                "success": true,
                "already_unlocked": already,
                "pcr23": state.workloads.measured().await.log.replay().to_hex(),
            })))
        }
        Err(e) => {
            tracing::warn!("unlock refused: {e:#}");
            let status = if e.downcast_ref::<crate::workload::NoDataKey>().is_some()
                || matches!(
                    e.downcast_ref::<crate::data::DataError>(),
                    Some(crate::data::DataError::NotPushed(_))
                ) {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            Err(ApiError(
                status,
                format!("unlock refused, /data stays as it was: {e:#}"),
            ))
        }
    }
}

#[derive(Deserialize)]
struct LogsQuery {
    name: Option<String>,
}

async fn container_logs(
    state: Shared,
    headers: HeaderMap,
    Query(query): Query<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    if locked(&state).await {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "/data is locked: unlock it first (cvm-cli unlock)".into(),
        ));
    }
    let engine = engine(&state)?;
    let mut out = Vec::new();
    for (service, id, _) in engine
        .project_containers(PROJECT)
        .await
        .map_err(engine_unavailable)?
    {
        if query.name.as_deref().is_some_and(|name| name != service) {
            continue;
        }
        let log = engine.logs(&id).await.map_err(engine_unavailable)?;
        out.push(json!({ "name": service, "log": log }));
    }
    if out.is_empty() && query.name.is_some() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "no container of that service name".into(),
        ));
    }
    Ok(Json(Value::Array(out)))
}

/// Accepts the predecessor's multipart upload (field `file`) or a raw zip/tar body. Every
/// authorized attempt gets one audit line.
async fn update_workload(
    state: Shared,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let peer = peer.map_or_else(|| Peer("unknown".into()), |axum::Extension(peer)| peer);
    let token = audit::token_prefix(&state.workloads.measured().await);
    let staging = match receive_upload(&state, &headers, request).await {
        Ok(staging) => staging,
        Err(refused) => {
            audit::update_refused(&peer, &token, &refused.1);
            return Err(refused);
        }
    };
    // In a task of its own, so neither a client that leaves nor the route's timeout can stop an
    // update halfway (PCR 23 extended but the log not written, a rollback cut short).
    let outcome = {
        let (state, staging) = (Arc::clone(&state.0), staging.clone());
        tokio::spawn(async move {
            let outcome = state.workloads.update(&staging).await;
            if outcome.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            outcome
        })
        .await
        .map_err(|e| ApiError::internal(e.into()))?
    };
    audit::update(&peer, &token, &outcome);
    match outcome {
        Ok(measured) => Ok(Json(json!({
            "success": true,
            "pcr23": measured.log.replay().to_hex(),
            "workload": measured.current,
        }))),
        Err(e) if e.is::<RollbackFailed>() => Err(ApiError::internal(e)),
        // The TPM failed, or the log could not be saved after the extend: the agent stops.
        Err(e) if e.is::<TpmFailed>() || state.workloads.has_failed() => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("update refused, the previous workload keeps running: {e:#}"),
        )),
        Err(e) => Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("update refused, the previous workload keeps running: {e:#}"),
        )),
    }
}

/// Reads the upload (multipart field `file`, or the raw body) and unpacks it into a fresh
/// staging folder beside the workload folder; returns that folder.
async fn receive_upload(
    state: &Shared,
    headers: &HeaderMap,
    request: Request,
) -> Result<std::path::PathBuf, ApiError> {
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is larger than {} bytes", state.max_upload_bytes),
        )
    };
    let bytes = if is_multipart {
        let mut multipart = Multipart::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut file = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?
        {
            if field.name() == Some("file") {
                file = Some(
                    field
                        .bytes()
                        .await
                        .map_err(|e| ApiError::bad_request(e.to_string()))?,
                );
            }
        }
        file.ok_or_else(|| ApiError::bad_request("multipart upload without a `file` field"))?
    } else {
        axum::body::to_bytes(request.into_body(), state.max_upload_bytes)
            .await
            .map_err(|_| too_large())?
    };
    if bytes.len() > state.max_upload_bytes {
        return Err(too_large());
    }

    let staging = state.workload_dir.with_extension(format!(
        "staging-{}",
        hex::encode(Sha256Digest::of(&bytes).0)[..12].to_owned()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let limits = Limits {
        max_entries: 10_000,
        max_total_bytes: (state.max_upload_bytes as u64).saturating_mul(4),
    };
    let unpacked = {
        let (bytes, staging) = (bytes.clone(), staging.clone());
        tokio::task::spawn_blocking(move || {
            let unpacked = unpack(&bytes, &staging, limits);
            crate::fault::point(crate::fault::Step::Unpack);
            unpacked
        })
        .await
        .map_err(|e| ApiError::internal(e.into()))?
    };
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&staging);
        // A full data partition is the VM's problem, not the upload's: 507, nothing changed.
        let full = matches!(&e, ArchiveError::Io { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC));
        let status = match full {
            true => StatusCode::INSUFFICIENT_STORAGE,
            false => StatusCode::BAD_REQUEST,
        };
        return Err(ApiError(status, format!("rejected upload: {e}")));
    }
    Ok(staging)
}
