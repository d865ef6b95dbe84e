//! TEE backends: each produces the TEE part of the evidence for one AK and nonce. The agent picks
//! one at start-up from the detected platform; tests plug in a test-only signer through the same
//! trait, so everything around it is the real code path.

use crate::tpm::Tpm;
use cvm_attestation::azure::{HclReport, HCL_NV_INDEX};
use cvm_attestation::binding::report_data;
use cvm_attestation::encoding::Bytes;
use cvm_attestation::evidence::{SnpEvidence, TdxEvidence, Tee};
use cvm_attestation::snp::certs::{parse_certificate, parse_pem_chain};
use cvm_attestation::snp::extensions::to_der;
use cvm_attestation::snp::report::SnpReport;
use std::time::{Duration, Instant};

/// Why TEE evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    #[error("SEV-SNP guest device: {0}")]
    SevGuest(String),
    #[error("reading the HCL report from the vTPM: {0}")]
    Hcl(String),
    #[error("VCEK certificate: {0}")]
    Vcek(String),
    #[error("TD quote service {0}")]
    QuoteService(HostServiceError),
    #[error("{0}")]
    Other(String),
}

/// The TEE evidence for one request.
#[derive(Debug, Clone, Default)]
pub struct TeeEvidence {
    pub snp: Option<SnpEvidence>,
    pub tdx: Option<TdxEvidence>,
    /// Azure's var_data, carried beside the TPM quote as the predecessor did.
    pub var_data: Option<Vec<u8>>,
}

/// One kind of TEE.
pub trait TeeBackend: Send {
    fn tee(&self) -> Tee;

    /// Evidence binding `ak_public` (TPMT_PUBLIC bytes) and `nonce`, where the TEE lets us.
    fn evidence(
        &mut self,
        tpm: &mut Tpm,
        ak_public: &[u8],
        nonce: &[u8],
    ) -> Result<TeeEvidence, TeeError>;
}

/// No TEE (local QEMU without SEV-SNP): only the TPM speaks.
pub struct NoTee;

impl TeeBackend for NoTee {
    fn tee(&self) -> Tee {
        Tee::None
    }

    fn evidence(&mut self, _: &mut Tpm, _: &[u8], _: &[u8]) -> Result<TeeEvidence, TeeError> {
        Ok(TeeEvidence::default())
    }
}

/// SEV-SNP through `/dev/sev-guest` (GCP, AWS, self-hosted): a fresh report per request whose
/// `report_data` binds the AK and the nonce. The VCEK comes from the extended report's certificate
/// table when the host provides one, otherwise from `vcek_der` (fetched from AMD KDS at
/// provisioning time).
pub struct SevGuest {
    pub vcek_der: Option<Vec<u8>>,
    pub vmpl: u32,
}

impl TeeBackend for SevGuest {
    fn tee(&self) -> Tee {
        Tee::SevSnp
    }

    fn evidence(
        &mut self,
        _: &mut Tpm,
        ak_public: &[u8],
        nonce: &[u8],
    ) -> Result<TeeEvidence, TeeError> {
        let mut firmware = sev::firmware::guest::Firmware::open()
            .map_err(|e| TeeError::SevGuest(format!("opening /dev/sev-guest: {e}")))?;
        let (report, certs) = firmware
            .get_ext_report(None, Some(report_data(ak_public, nonce)), Some(self.vmpl))
            .map_err(|e| TeeError::SevGuest(e.to_string()))?;
        let from_host = certs.unwrap_or_default().into_iter().find_map(|entry| {
            matches!(
                entry.cert_type,
                sev::firmware::host::CertType::VCEK | sev::firmware::host::CertType::VLEK
            )
            .then_some(entry.data)
        });
        let vcek = from_host.or_else(|| self.vcek_der.clone()).ok_or_else(|| {
            TeeError::Vcek("the host provided none and no vcek_path is configured".into())
        })?;
        Ok(TeeEvidence {
            snp: Some(SnpEvidence {
                attestation_report: Bytes(report),
                vek_cert: Bytes(vcek),
                cert_chain: Vec::new(),
                hcl_report: None,
            }),
            ..TeeEvidence::default()
        })
    }
}

/// Azure confidential VMs: the paravisor's HCL report in vTPM NV, whose SNP report binds
/// `var_data` (and so the vTPM AK), with the VCEK chain from configured files (offline or
/// air-gapped deployments). Without files the agent uses [`AzureSnpHostCerts`] instead.
pub struct AzureSnp {
    pub vcek_der: Vec<u8>,
    pub chain_der: Vec<Vec<u8>>,
}

impl TeeBackend for AzureSnp {
    fn tee(&self) -> Tee {
        Tee::SevSnp
    }

    fn evidence(&mut self, tpm: &mut Tpm, _: &[u8], _: &[u8]) -> Result<TeeEvidence, TeeError> {
        let hcl = read_snp_hcl(tpm)?;
        Ok(hcl.evidence(self.vcek_der.clone(), self.chain_der.clone()))
    }
}

/// The HCL report as read from vTPM NV, with its SNP report and var_data cut out.
struct SnpHcl {
    hcl: Vec<u8>,
    report: Vec<u8>,
    var_data: Vec<u8>,
}

fn read_snp_hcl(tpm: &mut Tpm) -> Result<SnpHcl, TeeError> {
    let hcl = tpm
        .nv_read(HCL_NV_INDEX)
        .map_err(|e| TeeError::Hcl(e.to_string()))?;
    let parsed = HclReport::parse(&hcl).map_err(|e| TeeError::Hcl(e.to_string()))?;
    let (report, var_data) = (parsed.hardware_report.to_vec(), parsed.var_data.to_vec());
    Ok(SnpHcl {
        hcl,
        report,
        var_data,
    })
}

impl SnpHcl {
    /// Evidence with `vcek_der` (empty: none; the verifier then fetches it from AMD KDS).
    fn evidence(self, vcek_der: Vec<u8>, chain_der: Vec<Vec<u8>>) -> TeeEvidence {
        TeeEvidence {
            snp: Some(SnpEvidence {
                attestation_report: Bytes(self.report),
                vek_cert: Bytes(vcek_der),
                cert_chain: chain_der.into_iter().map(Bytes).collect(),
                hcl_report: Some(Bytes(self.hcl)),
            }),
            var_data: Some(self.var_data),
            ..TeeEvidence::default()
        }
    }
}

/// Azure's host certificate service (THIM), reachable from inside the guest.
pub const AZURE_THIM_URL: &str = "http://169.254.169.254/metadata/THIM/amd/certification";
/// Largest THIM answer read: a VCEK and two CA certificates in PEM are under 8 KiB.
const MAX_THIM_RESPONSE: usize = 64 * 1024;
/// After a failed fetch, the next is not tried sooner: a dead service then costs one wait
/// every ten minutes, not one per evidence request.
const THIM_RETRY_INTERVAL: Duration = Duration::from_secs(600);

/// A VCEK with the CA certificates above it (ASK, ARK), DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcekChain {
    pub vcek_der: Vec<u8>,
    pub chain_der: Vec<Vec<u8>>,
}

impl VcekChain {
    /// Whether the VCEK's key made the signature of `report` (an SNP report): a certificate for
    /// another chip or TCB, from a confused service, is caught here and not served.
    fn signs(&self, report: &[u8]) -> Result<(), String> {
        let report = SnpReport::parse(report).map_err(|e| e.to_string())?;
        let key = parse_certificate(&self.vcek_der)
            .map_err(|e| e.to_string())?
            .public_key()
            .map_err(|e| format!("VCEK public key: {e}"))?;
        match report.signature_valid(&key) {
            Ok(true) => Ok(()),
            Ok(false) => Err("the VCEK did not sign this VM's SNP report".into()),
            Err(e) => Err(format!("checking the report signature: {e}")),
        }
    }
}

/// GETs `url` (Azure's THIM answer shape: `vcekCert` PEM and `certificateChain` PEM, ASK then
/// ARK) with `Metadata: true`, and returns the certificates as DER. Blocking: call it outside an
/// async runtime (the agent calls it from its TPM thread).
pub fn fetch_vcek_chain(url: &str) -> Result<VcekChain, HostServiceError> {
    let answer = HostRequest {
        url,
        method: hyper::Method::GET,
        headers: &[("Metadata", "true")],
        body: Vec::new(),
        max_answer: MAX_THIM_RESPONSE,
        timeout: Duration::from_secs(10),
    }
    .send()?;
    let bad = |reason: String| HostServiceError::Answer {
        url: url.to_owned(),
        reason,
    };
    let parsed: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|e| bad(format!("not JSON: {e}")))?;
    let field = |name: &str| {
        parsed[name]
            .as_str()
            .ok_or_else(|| bad(format!("the answer has no `{name}` string")))
    };
    let vcek = parse_certificate(field("vcekCert")?.as_bytes())
        .map_err(|e| bad(format!("vcekCert: {e}")))?;
    let vcek_der = to_der(&vcek).map_err(|e| bad(format!("vcekCert: {e}")))?;
    let chain_der = parse_pem_chain(field("certificateChain")?.as_bytes())
        .map_err(|e| bad(format!("certificateChain: {e}")))?
        .iter()
        .map(to_der)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("certificateChain: {e}")))?;
    if chain_der.is_empty() {
        return Err(bad("certificateChain holds no certificate".into()));
    }
    Ok(VcekChain {
        vcek_der,
        chain_der,
    })
}

/// Azure SEV-SNP without configured VCEK files: the VCEK chain comes from Azure's host
/// certificate service, fetched on the first evidence request (the TPM thread is synchronous, so
/// agent start-up never waits on it) and kept in memory while it signs the VM's report. When the
/// service fails or answers a certificate that did not sign the report, evidence is served without
/// a VCEK (the verifier fetches it from AMD KDS: `cvm-cli collateral`), a warning is logged once,
/// and the service is tried again after `THIM_RETRY_INTERVAL` (ten minutes).
pub struct AzureSnpHostCerts {
    url: String,
    cached: Option<VcekChain>,
    failed_at: Option<Instant>,
    warned: bool,
}

impl AzureSnpHostCerts {
    /// `url`: [`AZURE_THIM_URL`], or a local stand-in in tests.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cached: None,
            failed_at: None,
            warned: false,
        }
    }

    /// The chain for `report`: the cached one while it signs the report, else a fresh fetch
    /// (at most once per retry interval).
    fn chain_for(&mut self, report: &[u8]) -> Option<VcekChain> {
        if let Some(chain) = &self.cached {
            if chain.signs(report).is_ok() {
                return Some(chain.clone());
            }
            // A new TCB or host: the cached VCEK no longer fits.
            self.cached = None;
        }
        if self
            .failed_at
            .is_some_and(|at| at.elapsed() < THIM_RETRY_INTERVAL)
        {
            return None;
        }
        let fetched = fetch_vcek_chain(&self.url)
            .map_err(|e| e.to_string())
            .and_then(|chain| match chain.signs(report) {
                Ok(()) => Ok(chain),
                Err(e) => Err(format!("{}: {e}", self.url)),
            });
        match fetched {
            Ok(chain) => {
                tracing::info!(url = %self.url, "VCEK chain from Azure's host certificate service");
                self.failed_at = None;
                self.cached = Some(chain.clone());
                Some(chain)
            }
            Err(error) => {
                self.failed_at = Some(Instant::now());
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(
                        %error,
                        "no VCEK from Azure's host certificate service: evidence is served \
                         without one (verifiers fetch it from AMD KDS); retried every {} s",
                        THIM_RETRY_INTERVAL.as_secs()
                    );
                } else {
                    tracing::debug!(%error, "VCEK fetch failed again");
                }
                None
            }
        }
    }
}

impl TeeBackend for AzureSnpHostCerts {
    fn tee(&self) -> Tee {
        Tee::SevSnp
    }

    fn evidence(&mut self, tpm: &mut Tpm, _: &[u8], _: &[u8]) -> Result<TeeEvidence, TeeError> {
        let hcl = read_snp_hcl(tpm)?;
        Ok(match self.chain_for(&hcl.report) {
            Some(chain) => hcl.evidence(chain.vcek_der, chain.chain_der),
            None => hcl.evidence(Vec::new(), Vec::new()),
        })
    }
}

/// Why a call to one of Azure's in-guest host services failed.
#[derive(Debug, thiserror::Error)]
pub enum HostServiceError {
    #[error("{url}: not a usable URL: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: no answer within {} s", timeout.as_secs())]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: hyper::StatusCode,
        body: String,
    },
    #[error("{url}: reading the answer (at most {limit} bytes): {reason}")]
    Body {
        url: String,
        limit: usize,
        reason: String,
    },
    #[error("{url}: {reason}")]
    Answer { url: String, reason: String },
    #[error("starting the HTTP client: {0}")]
    Runtime(std::io::Error),
}

impl HostServiceError {
    /// Connect errors, timeouts and 5xx: what a busy or restarting host service gives.
    fn transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Connect { .. } => true,
            Self::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// An error and its sources in one line: hyper's own message ("client error (Connect)") says
/// little without the cause underneath ("Connection refused").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Attempts per host-service call, and the wait before the second (doubled each time).
const HOST_ATTEMPTS: u32 = 3;
const HOST_BACKOFF: Duration = Duration::from_millis(250);

/// One call to a host service the guest reaches over plain HTTP (Azure's 169.254.169.254): a
/// bounded answer, a timeout per attempt, retries with backoff on transient failures.
struct HostRequest<'a> {
    url: &'a str,
    method: hyper::Method,
    headers: &'a [(&'a str, &'a str)],
    body: Vec<u8>,
    max_answer: usize,
    timeout: Duration,
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<hyper::body::Bytes>,
>;

impl HostRequest<'_> {
    /// The body of a 2xx answer. The TPM thread is synchronous: one small runtime per call
    /// keeps it so.
    fn send(&self) -> Result<hyper::body::Bytes, HostServiceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HostServiceError::Runtime)?;
        runtime.block_on(async {
            let client: Client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let mut wait = HOST_BACKOFF;
            for _ in 1..HOST_ATTEMPTS {
                match self.once(&client).await {
                    Err(error) if error.transient() => {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    done => return done,
                }
            }
            self.once(&client).await
        })
    }

    async fn once(&self, client: &Client) -> Result<hyper::body::Bytes, HostServiceError> {
        use http_body_util::{BodyExt, Full, Limited};
        let url = self.url.to_owned();
        let mut request = hyper::Request::builder()
            .method(self.method.clone())
            .uri(self.url);
        for (name, value) in self.headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(hyper::body::Bytes::from(self.body.clone())))
            .map_err(|e| HostServiceError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response =
                client
                    .request(request)
                    .await
                    .map_err(|e| HostServiceError::Connect {
                        url: url.clone(),
                        reason: causes(&e),
                    })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.max_answer)
                .collect()
                .await
                .map_err(|e| HostServiceError::Body {
                    url: url.clone(),
                    limit: self.max_answer,
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HostServiceError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })??;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(HostServiceError::Status {
                url,
                status,
                body: text.chars().take(200).collect(),
            });
        }
        Ok(body)
    }
}

/// Azure's in-guest TD quote service.
pub const AZURE_TD_QUOTE_URL: &str = "http://169.254.169.254/acc/tdquote";
/// A TD report is the first 1024 bytes of the HCL report's hardware report area.
const TD_REPORT_LEN: usize = 1024;
/// Largest quote-service answer read.
const MAX_QUOTE_RESPONSE: usize = 64 * 1024;

/// Azure TDX confidential VMs: the paravisor's HCL report (vTPM NV 0x01400001) holds a TD report
/// that binds `var_data` (and so the vTPM AK); Azure's quote service turns it into a TD quote.
pub struct AzureTdx {
    /// `AZURE_TD_QUOTE_URL`, or a local stand-in in tests.
    pub quote_service: String,
}

impl AzureTdx {
    /// POSTs `{"report": base64url(td_report)}` and reads `{"quote": base64url}`.
    fn quote(&self, td_report: &[u8]) -> Result<Vec<u8>, TeeError> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let body = serde_json::json!({ "report": URL_SAFE_NO_PAD.encode(td_report) }).to_string();
        let answer = HostRequest {
            url: &self.quote_service,
            method: hyper::Method::POST,
            headers: &[("Content-Type", "application/json")],
            body: body.into_bytes(),
            max_answer: MAX_QUOTE_RESPONSE,
            timeout: Duration::from_secs(30),
        }
        .send()
        .map_err(TeeError::QuoteService)?;
        let bad = |reason: &str| {
            TeeError::QuoteService(HostServiceError::Answer {
                url: self.quote_service.clone(),
                reason: reason.into(),
            })
        };
        let parsed: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| bad(&format!("not JSON: {e}")))?;
        parsed["quote"]
            .as_str()
            .and_then(cvm_attestation::encoding::decode_base64)
            .ok_or_else(|| bad("the answer has no base64 `quote`"))
    }
}

impl TeeBackend for AzureTdx {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn evidence(&mut self, tpm: &mut Tpm, _: &[u8], _: &[u8]) -> Result<TeeEvidence, TeeError> {
        let hcl = tpm
            .nv_read(HCL_NV_INDEX)
            .map_err(|e| TeeError::Hcl(e.to_string()))?;
        let parsed = HclReport::parse(&hcl).map_err(|e| TeeError::Hcl(e.to_string()))?;
        if parsed.report_type != cvm_attestation::azure::HclReportType::Tdx {
            return Err(TeeError::Hcl("the HCL report holds no TD report".into()));
        }
        let quote = self.quote(&parsed.hardware_report[..TD_REPORT_LEN])?;
        let var_data = parsed.var_data.to_vec();
        Ok(TeeEvidence {
            tdx: Some(TdxEvidence {
                quote: Bytes(quote),
                // Intel's collateral is fetched by the verifier (PCS), not by the guest.
                collateral: None,
                hcl_report: Some(Bytes(hcl)),
            }),
            var_data: Some(var_data),
            ..TeeEvidence::default()
        })
    }
}
