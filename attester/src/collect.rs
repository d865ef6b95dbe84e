//! Assembling one evidence document: TEE evidence, then the TPM quote over the nonce, then the
//! logs. The caller holds the TPM exclusively for the duration (it is one device).

use crate::tee::{TeeBackend, TeeError};
use crate::tpm::{AttestationKey, Tpm, TpmError};
use cvm_attestation::binding::{bound_nonce, nitro_user_data};
use cvm_attestation::encoding::Bytes;
use cvm_attestation::evidence::{
    check_nonce, tee_report_bound_by_quote, EventLogs, Evidence, EvidenceError, PcrBank, Platform,
    TpmEvidence, EVIDENCE_VERSION,
};
use cvm_attestation::tpm::{quote_qualifying_data, HashAlg, QuoteSignature};
use cvm_attestation::workload::WorkloadLog;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Nonce(#[from] EvidenceError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Tee(#[from] TeeError),
    #[error("NitroTPM attestation document: {0}")]
    Nitro(#[from] crate::nitro::NitroTpmError),

    #[error("the TPM returned a signature this code cannot read: {0}")]
    Signature(String),
}

/// Everything that goes into evidence besides the TPM and the TEE.
pub struct CollectRequest<'a> {
    pub platform: Platform,
    pub nonce: &'a [u8],
    /// SHA-256 of the agent's TLS key (SPKI DER): bound with the nonce when present.
    pub tls_spki_sha256: Option<[u8; 32]>,
    pub workload_log: Option<WorkloadLog>,
    pub firmware_log: Option<Vec<u8>>,
    /// TDX: the CC event log that explains RTMR0-3.
    pub ccel: Option<Vec<u8>>,
    /// GCP: Google's certificate for the AK (the verifier's trust basis there).
    pub ak_cert: Option<Vec<u8>>,
    /// AWS: also ask the NitroTPM for an AWS-signed attestation document naming the AK and
    /// binding this quote (the verifier's trust basis there).
    pub nitro_document: bool,
}

/// Produces evidence for `request.nonce`.
pub fn collect(
    tpm: &mut Tpm,
    ak: &AttestationKey,
    tee: &mut dyn TeeBackend,
    request: CollectRequest<'_>,
) -> Result<Evidence, CollectError> {
    check_nonce(request.nonce)?;
    let bound = bound_nonce(request.nonce, request.tls_spki_sha256.as_ref());
    let tee_evidence = tee.evidence(tpm, &ak.public, &bound)?;
    // The quote binds the TEE report just produced (see `quote_qualifying_data`).
    let report = tee_report_bound_by_quote(tee_evidence.snp.as_ref(), tee_evidence.tdx.as_ref());
    let qualifying = quote_qualifying_data(&bound, report);
    let quote = tpm.quote(ak, &qualifying)?;
    let nitro_document = if request.nitro_document {
        let user_data = nitro_user_data(&ak.public, &qualifying);
        Some(crate::nitro::nitro_tpm_document(tpm, &user_data, &bound)?)
    } else {
        None
    };
    let signature = QuoteSignature::from_tpmt(&quote.signature)
        .map_err(|e| CollectError::Signature(e.to_string()))?;
    Ok(Evidence {
        version: Some(EVIDENCE_VERSION),
        platform: Some(request.platform),
        nonce: Bytes::from(request.nonce),
        tls_spki_sha256: request.tls_spki_sha256.map(|key| Bytes(key.to_vec())),
        sev_snp: tee_evidence.snp,
        tdx: tee_evidence.tdx,
        tpm: TpmEvidence {
            quote: Bytes(quote.attest),
            raw_sig: Some(Bytes(raw_signature(&signature))),
            signature: Some(Bytes(quote.signature)),
            pcrs: PcrBank {
                hash: HashAlg::Sha256,
                pcrs: quote
                    .pcrs
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as u8, Bytes(v.to_vec())))
                    .collect(),
            },
            ak_pub: Bytes(ak.public.clone()),
            ak_cert: request.ak_cert.map(Bytes),
            nitro_document: nitro_document.map(Bytes),
            var_data: tee_evidence.var_data.map(Bytes),
        },
        event_logs: EventLogs {
            firmware: request.firmware_log.map(Bytes),
            workload: request.workload_log,
            ccel: request.ccel.map(Bytes),
        },
    })
}

/// The predecessor's `raw_sig`: RSA signature bytes, or ECDSA `r || s` padded to equal halves.
fn raw_signature(signature: &QuoteSignature) -> Vec<u8> {
    match signature {
        QuoteSignature::RsaSsa { signature, .. } | QuoteSignature::RsaPss { signature, .. } => {
            signature.clone()
        }
        QuoteSignature::Ecdsa { r, s, .. } => {
            let half = r.len().max(s.len());
            let mut out = vec![0u8; 2 * half];
            out[half - r.len()..half].copy_from_slice(r);
            out[2 * half - s.len()..].copy_from_slice(s);
            out
        }
    }
}
