//! Google Compute Engine's certified vTPM attestation key.
//!
//! GCE provisions every Shielded/Confidential VM's vTPM with an AK template and a certificate for
//! the key that template yields as a primary in the endorsement hierarchy (go-tpm-tools
//! `client.GceAttestationKeyRSA/ECC`). The certificate, issued under Google's EK/AK CA, is what
//! lets a verifier tell this VM's AK from a key an attacker made up; `cvm_attestation::gcp`
//! verifies it.

use crate::tpm::{AttestationKey, Tpm, TpmError};
use cvm_attestation::gcp::{
    public_keys_equal, GCE_AK_CERT_NV_INDEX_ECC, GCE_AK_CERT_NV_INDEX_RSA,
    GCE_AK_TEMPLATE_NV_INDEX_ECC, GCE_AK_TEMPLATE_NV_INDEX_RSA,
};
use cvm_attestation::snp::certs::parse_certificate;
use cvm_attestation::tpm::AkPublic;

/// Where one kind of GCE AK lives in NV.
struct Provisioned {
    kind: &'static str,
    template: u32,
    certificate: u32,
}

const RSA: Provisioned = Provisioned {
    kind: "RSA",
    template: GCE_AK_TEMPLATE_NV_INDEX_RSA,
    certificate: GCE_AK_CERT_NV_INDEX_RSA,
};

const ECC: Provisioned = Provisioned {
    kind: "ECC",
    template: GCE_AK_TEMPLATE_NV_INDEX_ECC,
    certificate: GCE_AK_CERT_NV_INDEX_ECC,
};

/// Why no certified GCE AK could be produced.
#[derive(Debug, thiserror::Error)]
pub enum GceError {
    #[error("no GCE AK is provisioned in this vTPM: RSA (template {GCE_AK_TEMPLATE_NV_INDEX_RSA:#x}, certificate {GCE_AK_CERT_NV_INDEX_RSA:#x}): {rsa}; ECC (template {GCE_AK_TEMPLATE_NV_INDEX_ECC:#x}, certificate {GCE_AK_CERT_NV_INDEX_ECC:#x}): {ecc}")]
    NotProvisioned { rsa: TpmError, ecc: TpmError },
    #[error("creating the {kind} AK from the template in NV {template:#x}: {source}")]
    CreateKey {
        kind: &'static str,
        template: u32,
        source: TpmError,
    },
    #[error("NV {index:#x} does not hold a DER certificate: {reason}")]
    CertificateNotDer { index: u32, reason: String },
    #[error("the {kind} AK from template NV {template:#x} is not the key the certificate in NV {certificate:#x} certifies")]
    KeyMismatch {
        kind: &'static str,
        template: u32,
        certificate: u32,
    },
    #[error("the {kind} AK's public area cannot be read: {reason}")]
    AkPublic { kind: &'static str, reason: String },
}

/// The vTPM's Google-certified AK and its certificate (DER): from the RSA template and
/// certificate in NV when both are there, else the ECC ones. The key is checked against the
/// certificate here so a mismatched provisioning fails at the source, not at a verifier.
pub fn gce_attestation_key(tpm: &mut Tpm) -> Result<(AttestationKey, Vec<u8>), GceError> {
    // RSA first; ECC when the RSA template or certificate is not there.
    let rsa = match read_nv(tpm, &RSA) {
        Ok((template, certificate)) => return certified_key(tpm, &RSA, &template, &certificate),
        Err(e) => e,
    };
    let ecc = match read_nv(tpm, &ECC) {
        Ok((template, certificate)) => return certified_key(tpm, &ECC, &template, &certificate),
        Err(e) => e,
    };
    Err(GceError::NotProvisioned { rsa, ecc })
}

fn read_nv(tpm: &mut Tpm, kind: &Provisioned) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    let template = tpm.nv_read(kind.template)?;
    let certificate = tpm.nv_read(kind.certificate)?;
    Ok((template, certificate))
}

fn certified_key(
    tpm: &mut Tpm,
    kind: &Provisioned,
    template: &[u8],
    nv_certificate: &[u8],
) -> Result<(AttestationKey, Vec<u8>), GceError> {
    let der = der_certificate(kind.certificate, nv_certificate)?;
    let unreadable = |reason: String| GceError::CertificateNotDer {
        index: kind.certificate,
        reason,
    };
    let certified = parse_certificate(&der)
        .map_err(|e| unreadable(e.to_string()))?
        .public_key()
        .map_err(|e| unreadable(e.to_string()))?;
    let ak = tpm
        .create_primary_from_template(true, template)
        .map_err(|source| GceError::CreateKey {
            kind: kind.kind,
            template: kind.template,
            source,
        })?;
    let public = AkPublic::from_tpmt_public(&ak.public).map_err(|e| GceError::AkPublic {
        kind: kind.kind,
        reason: e.to_string(),
    })?;
    if !public_keys_equal(&public.key, &certified) {
        return Err(GceError::KeyMismatch {
            kind: kind.kind,
            template: kind.template,
            certificate: kind.certificate,
        });
    }
    Ok((ak, der))
}

/// The certificate without the zero padding some vTPMs leave after it in NV: exactly the outer
/// DER SEQUENCE. Anything but zeros after it is refused.
fn der_certificate(index: u32, nv: &[u8]) -> Result<Vec<u8>, GceError> {
    let bad = |reason: &str| GceError::CertificateNotDer {
        index,
        reason: reason.to_owned(),
    };
    if nv.first() != Some(&0x30) {
        return Err(bad("it does not start with a DER SEQUENCE"));
    }
    let mut der = cvm_attestation::der::Der::new(nv);
    let certificate = der.any().map_err(|e| bad(&e.0))?.encoded;
    match nv[certificate.len()..].iter().all(|b| *b == 0) {
        true => Ok(certificate.to_vec()),
        false => Err(bad("non-zero bytes follow the certificate")),
    }
}
