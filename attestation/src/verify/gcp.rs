//! GCP's trust basis: the AK certificate Google provisions in every Shielded and Confidential
//! VM's vTPM, chained to Google's EK/AK CA root pinned in the code (`crate::gcp`).

use super::ak::{read, Refused, TrustedAk};
use super::{AkBinding, VerifyOptions};
use crate::evidence::Evidence;
use crate::gcp::{ak_key_matches, verify_ak_certificate};

pub(crate) fn ak(evidence: &Evidence, options: &VerifyOptions) -> Result<TrustedAk, Refused> {
    let key = read(evidence)?;
    let Some(cert) = &evidence.tpm.ak_cert else {
        return Err(Refused {
            key: Some(key),
            reason: "GCP evidence without the vTPM's AK certificate (NV 0x01c10000/0x01c10002): \
                     a key the evidence supplies vouches for nothing"
                .into(),
        });
    };
    let intermediates: Vec<&[u8]> = options
        .gcp_intermediates
        .iter()
        .map(Vec::as_slice)
        .collect();
    let certificate = verify_ak_certificate(
        cert.as_slice(),
        &intermediates,
        &options.gcp_roots,
        options.at_unix,
    )
    .map_err(|e| Refused {
        key: Some(key.clone()),
        reason: format!("AK certificate: {e}"),
    })?;
    if !ak_key_matches(&certificate, &key) {
        return Err(Refused {
            key: Some(key),
            reason: format!(
                "the quote's AK is not the key Google's certificate ({}) certifies",
                certificate.subject
            ),
        });
    }
    let root = if certificate.root_is_test_only {
        format!("TEST-ONLY root {} named by the caller", certificate.root)
    } else {
        format!("{}, pinned", certificate.root)
    };
    // Like go-tpm-tools: an identity that does not say it is a production instance names
    // nothing a verifier may rely on (Google's test and pre-release fleets).
    if let Some(instance) = certificate.instance.as_ref().filter(|i| !i.is_production()) {
        return Err(Refused {
            key: Some(key),
            reason: format!(
                "the AK certificate names instance {} but not as a production instance",
                instance.instance_name
            ),
        });
    }
    let instance = certificate.instance.as_ref().map(|i| {
        format!(
            "{} in project {} ({}), zone {}, id {}",
            i.instance_name, i.project_id, i.project_number, i.zone, i.instance_id
        )
    });
    Ok(TrustedAk {
        key,
        binding: AkBinding::GoogleAkCert { instance, root },
    })
}
