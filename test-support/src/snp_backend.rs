//! The TEST-ONLY SNP signer behind the agent's real TEE interface: a GCP/AWS-style backend whose
//! reports bind the AK and nonce exactly as `/dev/sev-guest` reports requested by the agent do.

use crate::SnpTestSigner;
use cvm_attestation::evidence::{SnpEvidence, Tee};
use cvm_attester::{TeeBackend, TeeError, TeeEvidence, Tpm};

/// Produces signed SNP reports where hardware would.
pub struct TestSnpBackend {
    pub signer: SnpTestSigner,
    pub measurement: [u8; 48],
    pub policy: u64,
}

impl TeeBackend for TestSnpBackend {
    fn tee(&self) -> Tee {
        Tee::SevSnp
    }

    fn evidence(&mut self, _: &mut Tpm, ak: &[u8], nonce: &[u8]) -> Result<TeeEvidence, TeeError> {
        let data = cvm_attestation::binding::report_data(ak, nonce);
        let report = self
            .signer
            .report(&data, &self.measurement, self.policy)
            .map_err(|e| TeeError::Other(e.to_string()))?;
        Ok(TeeEvidence {
            snp: Some(SnpEvidence {
                attestation_report: report.into(),
                vek_cert: self.signer.vcek_der().into(),
                cert_chain: vec![self.signer.ask_der().into()],
                hcl_report: None,
            }),
            ..TeeEvidence::default()
        })
    }
}
