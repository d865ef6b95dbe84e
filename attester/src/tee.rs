//! TEE backends: each produces the TEE part of the evidence for one AK and nonce. The agent picks
//! one at start-up from the detected platform; tests plug in a test-only signer through the same
//! trait, so everything around it is the real code path.

use crate::tpm::Tpm;
use cvm_attestation::azure::{HclReport, HCL_NV_INDEX};
use cvm_attestation::binding::report_data;
use cvm_attestation::encoding::Bytes;
use cvm_attestation::evidence::{SnpEvidence, TdxEvidence, Tee};

/// Why TEE evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    #[error("SEV-SNP guest device: {0}")]
    SevGuest(String),
    #[error("reading the HCL report from the vTPM: {0}")]
    Hcl(String),
    #[error("VCEK certificate: {0}")]
    Vcek(String),
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
/// `var_data` (and so the vTPM AK). The VCEK comes from Azure's host service at provisioning time.
pub struct AzureSnp {
    pub vcek_der: Vec<u8>,
    pub chain_der: Vec<Vec<u8>>,
}

impl TeeBackend for AzureSnp {
    fn tee(&self) -> Tee {
        Tee::SevSnp
    }

    fn evidence(&mut self, tpm: &mut Tpm, _: &[u8], _: &[u8]) -> Result<TeeEvidence, TeeError> {
        let hcl = tpm
            .nv_read(HCL_NV_INDEX)
            .map_err(|e| TeeError::Hcl(e.to_string()))?;
        let parsed = HclReport::parse(&hcl).map_err(|e| TeeError::Hcl(e.to_string()))?;
        let report = parsed.hardware_report.to_vec();
        let var_data = parsed.var_data.to_vec();
        Ok(TeeEvidence {
            snp: Some(SnpEvidence {
                attestation_report: Bytes(report),
                vek_cert: Bytes(self.vcek_der.clone()),
                cert_chain: self.chain_der.iter().cloned().map(Bytes).collect(),
                hcl_report: Some(Bytes(hcl)),
            }),
            var_data: Some(var_data),
            ..TeeEvidence::default()
        })
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
        use http_body_util::{BodyExt, Full, Limited};
        let fail =
            |e: String| TeeError::Other(format!("TD quote service {}: {e}", self.quote_service));
        let body =
            serde_json::to_vec(&serde_json::json!({ "report": URL_SAFE_NO_PAD.encode(td_report) }))
                .map_err(|e| fail(e.to_string()))?;
        let request = hyper::Request::post(&self.quote_service)
            .header("Content-Type", "application/json")
            .body(Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        // The TPM thread is synchronous: one small runtime per request keeps it so.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let (status, answer) = runtime.block_on(async {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Full<hyper::body::Bytes>>();
            let response =
                tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
                    .await
                    .map_err(|_| fail("no answer within 30 s".into()))?
                    .map_err(|e| fail(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_QUOTE_RESPONSE)
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            Ok::<_, TeeError>((status, body))
        })?;
        if !status.is_success() {
            return Err(fail(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&answer)
            )));
        }
        let parsed: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| fail(e.to_string()))?;
        parsed["quote"]
            .as_str()
            .and_then(cvm_attestation::encoding::decode_base64)
            .ok_or_else(|| fail("the answer has no base64 `quote`".into()))
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
