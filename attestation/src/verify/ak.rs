//! Pass 1 of quote verification: how the attestation key is trusted, decided once per platform
//! and printed in `tpm.ak`. Attribute bits in a TPMT_PUBLIC that the evidence itself supplies
//! never vouch for a key: anyone can write them over a software key.

use super::report::Checks;
use super::tpm::azure_var_data;
use super::VerifyOptions;
use crate::azure::ak_from_var_data;
use crate::evidence::{Cloud, Evidence, Tee};
use crate::golden::GoldenMeasurement;
use crate::tpm::AkPublic;

/// Why the verifier believes the AK lives in the VM's TPM.
#[derive(Debug, Clone)]
pub enum AkBinding {
    /// Azure: the paravisor's vTPM AK from `var_data`, which the hardware report binds (checked
    /// by the TEE pass as `snp.report_data` / `tdx.report_data`).
    AzureVarData,
    /// GCP: a certificate from Google's EK/AK CA for this key, naming the instance.
    GoogleAkCert {
        /// `zone/project/instance (id)` from the certificate, when it names one.
        instance: Option<String>,
        root: String,
    },
    /// AWS: an AWS-signed NitroTPM attestation document names the AK.
    NitroDocument { module_id: String, root: String },
    /// Local QEMU: the caller recorded the AK when it created the VM's software TPM.
    Pinned,
}

impl AkBinding {
    /// The trust basis as the report prints it.
    pub fn describe(&self) -> String {
        match self {
            AkBinding::AzureVarData => {
                "Azure vTPM AK from var_data (HCLAkPub), bound by the hardware report".into()
            }
            AkBinding::GoogleAkCert { instance, root } => format!(
                "Google AK certificate ({root}) for instance {}",
                instance.as_deref().unwrap_or("(not named)")
            ),
            AkBinding::NitroDocument { module_id, root } => {
                format!("AWS NitroTPM attestation document from {module_id} ({root}) names this AK")
            }
            AkBinding::Pinned => {
                "pinned by the caller (recorded when the VM's software TPM was created)".into()
            }
        }
    }
}

/// An AK and why it is trusted.
pub(crate) struct TrustedAk {
    pub key: AkPublic,
    pub binding: AkBinding,
}

/// Decides the AK's trust basis for the evidence's platform; `tpm.ak` passes naming it, or
/// fails with the reason. Returns the key either way when it can be read, so later checks still
/// report what else is wrong, but only a `TrustedAk` feeds verified facts.
pub(crate) fn decide(
    evidence: &Evidence,
    golden: &GoldenMeasurement,
    options: &VerifyOptions,
    checks: &mut Checks,
) -> (Option<AkPublic>, Option<TrustedAk>) {
    let platform = evidence.platform();
    let result = match (platform.cloud, platform.tee) {
        (Cloud::Azure, _) => azure(evidence),
        (Cloud::Qemu, _) => pinned(evidence, options),
        (Cloud::Gcp, Tee::SevSnp | Tee::Tdx) => super::gcp::ak(evidence, options),
        (Cloud::Aws, Tee::SevSnp) => super::aws::ak(evidence, golden, options, checks),
        (cloud, tee) => Err(Refused {
            key: read(evidence).ok(),
            reason: format!(
                "no trust basis for an AK on {}: the TPM's word is not enough",
                crate::evidence::Platform { cloud, tee }
            ),
        }),
    };
    match result {
        Ok(trusted) => {
            checks.pass("tpm.ak", trusted.binding.describe());
            (Some(trusted.key.clone()), Some(trusted))
        }
        Err(refused) => {
            checks.fail("tpm.ak", refused.reason);
            (refused.key, None)
        }
    }
}

/// An AK that is not trusted, with the key when it could be read.
pub(crate) struct Refused {
    pub key: Option<AkPublic>,
    pub reason: String,
}

pub(crate) fn read(evidence: &Evidence) -> Result<AkPublic, Refused> {
    AkPublic::from_bytes(evidence.tpm.ak_pub.as_slice()).map_err(|e| Refused {
        key: None,
        reason: e.to_string(),
    })
}

fn azure(evidence: &Evidence) -> Result<TrustedAk, Refused> {
    let Some(var_data) = azure_var_data(evidence) else {
        return Err(Refused {
            key: None,
            reason: "Azure evidence without var_data: the AK cannot be established".into(),
        });
    };
    let key = ak_from_var_data(&var_data).map_err(|e| Refused {
        key: None,
        reason: e.to_string(),
    })?;
    Ok(TrustedAk {
        key: AkPublic {
            key,
            object_attributes: None,
            tpmt_public: None,
            name_alg: None,
        },
        binding: AkBinding::AzureVarData,
    })
}

fn pinned(evidence: &Evidence, options: &VerifyOptions) -> Result<TrustedAk, Refused> {
    let key = read(evidence)?;
    match &options.trusted_ak {
        Some(pinned) if pinned.as_slice() == evidence.tpm.ak_pub.as_slice() => Ok(TrustedAk {
            key,
            binding: AkBinding::Pinned,
        }),
        Some(_) => Err(Refused {
            key: Some(key),
            reason: "the AK is not the one the caller pinned: another TPM answered".into(),
        }),
        None => Err(Refused {
            key: Some(key),
            reason: "local VM without a pinned AK (pass the AK recorded at deploy, as verify \
                     --host does from the deployment's state): nothing vouches for this TPM"
                .into(),
        }),
    }
}
