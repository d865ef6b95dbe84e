//! The evidence ("collaterals") an agent returns for one nonce: TEE report and certificates, TPM
//! quote, PCR values and event logs (docs/evidence.md).
//!
//! Field names are the predecessor's where it had the field (`sev_snp.attestation_report`,
//! `sev_snp.vek_cert`, `tpm.quote`, `tpm.raw_sig`, `tpm.pcrs`, `tpm.ak_pub`, `tpm.var_data`,
//! `nonce`), so its users' documents read unchanged; what it lacked is added beside them.

use crate::encoding::Bytes;
use crate::tpm::HashAlg;
use crate::workload::WorkloadLog;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format version this code writes.
pub const EVIDENCE_VERSION: u32 = 1;
/// Largest evidence document accepted, in bytes of JSON.
pub const MAX_EVIDENCE_BYTES: usize = 8 << 20;
/// Largest nonce accepted.
pub const MAX_NONCE_BYTES: usize = 64;
/// Smallest nonce accepted: shorter ones can be guessed and pre-computed.
pub const MIN_NONCE_BYTES: usize = 8;

/// Where the VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    Azure,
    Gcp,
    Aws,
    Qemu,
}

/// Which confidential-computing technology protects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tee {
    SevSnp,
    Tdx,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub cloud: Cloud,
    pub tee: Tee,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cloud = serde_json::to_value(self.cloud).unwrap_or_default();
        let tee = serde_json::to_value(self.tee).unwrap_or_default();
        write!(
            f,
            "{}/{}",
            cloud.as_str().unwrap_or("?"),
            tee.as_str().unwrap_or("?")
        )
    }
}

/// SEV-SNP evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpEvidence {
    /// The 1184-byte report (on Azure: the one inside `hcl_report`).
    pub attestation_report: Bytes,
    /// The VCEK or VLEK certificate, DER.
    pub vek_cert: Bytes,
    /// Intermediates (ASK or ASVK) and optionally the ARK, DER. The ARK is ignored: roots are
    /// pinned by the verifier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_chain: Vec<Bytes>,
    /// Azure only: the whole HCL report from vTPM NV index 0x01400001.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hcl_report: Option<Bytes>,
}

/// Intel TDX evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxEvidence {
    /// The TD quote (v4). The predecessor called it `attestation_report`.
    #[serde(alias = "attestation_report")]
    pub quote: Bytes,
    /// Intel's collateral for the quote (TCB info, QE identity, CRLs and their chains), absent
    /// when the verifier supplies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collateral: Option<crate::tdx::TdxCollateral>,
    /// Azure only: the whole HCL report from vTPM NV index 0x01400001 (a TD report inside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hcl_report: Option<Bytes>,
}

/// PCR values as the predecessor carried them: `{hash, pcrs: {index: base64}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrBank {
    pub hash: HashAlg,
    pub pcrs: BTreeMap<u8, Bytes>,
}

/// TPM evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmEvidence {
    /// TPMS_ATTEST bytes.
    pub quote: Bytes,
    /// The signature alone (RSASSA for RSA AKs, ECDSA `r || s` or DER for EC AKs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_sig: Option<Bytes>,
    /// TPMT_SIGNATURE, which names its scheme; preferred over `raw_sig` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Bytes>,
    pub pcrs: PcrBank,
    /// TPMT_PUBLIC (or TPM2B_PUBLIC, or a PEM/DER SubjectPublicKeyInfo).
    pub ak_pub: Bytes,
    /// The AK's certificate (DER): on GCP, Google's vTPM AK certificate from NV 0x01c10000
    /// (RSA) or 0x01c10002 (ECC), which is how the verifier trusts the AK there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_cert: Option<Bytes>,
    /// AWS: the NitroTPM attestation document (COSE_Sign1, signed by AWS's Nitro PKI) whose
    /// `user_data` names the AK and binds the quote's qualifying data, and whose `nonce` is the
    /// bound nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nitro_document: Option<Bytes>,
    /// Azure only: the HCL `var_data` JSON that the SNP/TDX report binds and that holds the AK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var_data: Option<Bytes>,
}

/// Event logs that explain the PCR values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLogs {
    /// The firmware's TCG2 event log (binary_bios_measurements), when the platform exposes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Bytes>,
    /// The workload log that explains PCR 23.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadLog>,
    /// TDX: the CC event log (ACPI CCEL table data), which explains RTMR0-3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ccel: Option<Bytes>,
}

/// One response to `GET /collaterals/{nonce}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Absent in the predecessor's documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The verifier's nonce this evidence answers.
    pub nonce: Bytes,
    /// SHA-256 of the agent's TLS key (SubjectPublicKeyInfo DER) when it serves TLS: TPM and TEE
    /// then bind it with the nonce (`binding::bound_nonce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_spki_sha256: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sev_snp: Option<SnpEvidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxEvidence>,
    pub tpm: TpmEvidence,
    #[serde(default, skip_serializing_if = "is_default_logs")]
    pub event_logs: EventLogs,
}

fn is_default_logs(logs: &EventLogs) -> bool {
    logs == &EventLogs::default()
}

/// Why an evidence document cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence is {0} bytes, more than the limit of {MAX_EVIDENCE_BYTES}")]
    TooLarge(usize),
    #[error("evidence JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tls_spki_sha256 is {0} bytes, not a SHA-256")]
    TlsKeyLength(usize),
    #[error(
        "evidence version {0} is not supported (this verifier reads version {EVIDENCE_VERSION})"
    )]
    Version(u32),
    #[error("nonce is {0} bytes; it must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES}")]
    NonceLength(usize),
}

impl Evidence {
    /// Reads evidence JSON: ours, or the predecessor's (also when wrapped in a JSON string).
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(EvidenceError::TooLarge(bytes.len()));
        }
        let evidence: Evidence = match serde_json::from_slice::<String>(bytes) {
            Ok(inner) => serde_json::from_str(&inner)?,
            Err(_) => serde_json::from_slice(bytes)?,
        };
        if let Some(version) = evidence.version {
            if version != EVIDENCE_VERSION {
                return Err(EvidenceError::Version(version));
            }
        }
        check_nonce(evidence.nonce.as_slice())?;
        if let Some(key) = &evidence.tls_spki_sha256 {
            if key.as_slice().len() != 32 {
                return Err(EvidenceError::TlsKeyLength(key.as_slice().len()));
            }
        }
        Ok(evidence)
    }

    /// The agent's TLS key hash, when the evidence binds one.
    pub fn tls_key(&self) -> Option<[u8; 32]> {
        self.tls_spki_sha256
            .as_ref()
            .and_then(|key| key.as_slice().try_into().ok())
    }

    /// What TPM quote and TEE report must bind: the nonce, with the TLS key when there is one.
    pub fn bound_nonce(&self) -> Vec<u8> {
        crate::binding::bound_nonce(self.nonce.as_slice(), self.tls_key().as_ref())
    }

    /// The TEE report the TPM quote must bind: see [`tee_report_bound_by_quote`].
    pub fn tee_report_bound_by_quote(&self) -> Option<&[u8]> {
        tee_report_bound_by_quote(self.sev_snp.as_ref(), self.tdx.as_ref())
    }

    /// The qualifying data the TPM quote must carry for this evidence.
    pub fn quote_qualifying_data(&self) -> [u8; 32] {
        crate::tpm::quote_qualifying_data(&self.bound_nonce(), self.tee_report_bound_by_quote())
    }

    /// The platform as stated, or as implied by what the evidence carries (predecessor format).
    pub fn platform(&self) -> Platform {
        if let Some(platform) = self.platform {
            return platform;
        }
        let azure = self.tpm.var_data.is_some()
            || self
                .sev_snp
                .as_ref()
                .is_some_and(|s| s.hcl_report.is_some())
            || self.tdx.as_ref().is_some_and(|t| t.hcl_report.is_some());
        Platform {
            cloud: if azure { Cloud::Azure } else { Cloud::Qemu },
            tee: if self.sev_snp.is_some() {
                Tee::SevSnp
            } else if self.tdx.is_some() {
                Tee::Tdx
            } else {
                Tee::None
            },
        }
    }
}

/// The TEE report the TPM quote must bind (`tpm::quote_qualifying_data`): the SEV-SNP report or
/// TD quote the agent asked its own firmware for. Not on Azure, where the paravisor's vTPM sits
/// inside the TEE and the HCL report binds its AK instead.
pub fn tee_report_bound_by_quote<'a>(
    snp: Option<&'a SnpEvidence>,
    tdx: Option<&'a TdxEvidence>,
) -> Option<&'a [u8]> {
    match (snp, tdx) {
        (Some(snp), _) => snp
            .hcl_report
            .is_none()
            .then_some(snp.attestation_report.as_slice()),
        (None, Some(tdx)) => tdx.hcl_report.is_none().then_some(tdx.quote.as_slice()),
        (None, None) => None,
    }
}

/// Nonces must be long enough not to be guessed and short enough to bound the work they cause.
pub fn check_nonce(nonce: &[u8]) -> Result<(), EvidenceError> {
    if !(MIN_NONCE_BYTES..=MAX_NONCE_BYTES).contains(&nonce.len()) {
        return Err(EvidenceError::NonceLength(nonce.len()));
    }
    Ok(())
}
