//! Against a real swtpm provisioned like a GCE vTPM (AK template and AK certificate in NV, the
//! certificate from a TEST-ONLY Google-like CA): `gce_attestation_key` recreates the certified
//! key, quotes with it verify under the certificate's key, and the certificate verifies only when
//! the TEST-ONLY root is named.

use cvm_attestation::gcp::{
    ak_key_matches, google_ak_roots, verify_ak_certificate, GcpError, GCE_AK_CERT_NV_INDEX_ECC,
    GCE_AK_CERT_NV_INDEX_RSA, GCE_AK_TEMPLATE_NV_INDEX_ECC, GCE_AK_TEMPLATE_NV_INDEX_RSA,
};
use cvm_attestation::tpm::{qualifying_data, AkPublic, Quote, QuoteSignature};
use cvm_attester::gce::{gce_attestation_key, GceError};
use cvm_attester::Tpm;
use test_support::{GoogleTestCa, Swtpm};

mod common;
use common::{
    gce_instance as instance, provision_gce_vtpm, template, ECC_AK_TEMPLATE, RSA_AK_TEMPLATE,
};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[test]
fn rsa_gce_ak_is_the_certified_key_and_its_quotes_verify_under_the_certificate(
) -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let ca = GoogleTestCa::new()?;
    let indices = (GCE_AK_TEMPLATE_NV_INDEX_RSA, GCE_AK_CERT_NV_INDEX_RSA);
    let provisioned = provision_gce_vtpm(
        &mut tpm,
        &ca,
        &instance(),
        &template(RSA_AK_TEMPLATE),
        indices,
        0,
    )?;

    let (ak, certificate) = gce_attestation_key(&mut tpm)?;
    assert_eq!(certificate, provisioned);
    let public = AkPublic::from_tpmt_public(&ak.public)?;
    assert_eq!(public.is_restricted_signing_key(), Some(true));
    assert!(public.key.rsa().is_ok(), "an RSA key");

    // The certificate verifies only with the TEST-ONLY root named.
    let intermediate = ca.intermediate_der();
    let err = verify_ak_certificate(&certificate, &[&intermediate], &google_ak_roots(), now())
        .unwrap_err();
    assert!(
        matches!(err, GcpError::UntrustedIntermediate { .. }),
        "{err}"
    );
    let verified =
        verify_ak_certificate(&certificate, &[&intermediate], &[ca.trusted_root()], now())?;
    assert!(verified.root_is_test_only);
    assert_eq!(verified.instance, Some(instance()));
    assert!(ak_key_matches(&verified, &public));

    // A quote by the recreated key verifies with the certificate's key and binds the nonce.
    let nonce = b"verifier nonce for the GCE AK";
    let quoted = tpm.quote(&ak, &qualifying_data(nonce))?;
    let signature = QuoteSignature::from_tpmt(&quoted.signature)?;
    assert!(signature.verify(&verified.key, &quoted.attest)?);
    assert_eq!(
        Quote::parse(&quoted.attest)?.extra_data,
        qualifying_data(nonce)
    );
    let mut forged = quoted.attest.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(!signature.verify(&verified.key, &forged)?);
    Ok(())
}

#[test]
fn ecc_pair_is_used_when_no_rsa_pair_is_provisioned_and_nv_padding_is_dropped() -> anyhow::Result<()>
{
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let ca = GoogleTestCa::new()?;
    let indices = (GCE_AK_TEMPLATE_NV_INDEX_ECC, GCE_AK_CERT_NV_INDEX_ECC);
    let provisioned = provision_gce_vtpm(
        &mut tpm,
        &ca,
        &instance(),
        &template(ECC_AK_TEMPLATE),
        indices,
        300,
    )?;

    let (ak, certificate) = gce_attestation_key(&mut tpm)?;
    assert_eq!(
        certificate, provisioned,
        "zero padding after the DER is dropped"
    );
    let public = AkPublic::from_tpmt_public(&ak.public)?;
    assert!(public.key.ec_key().is_ok(), "an EC key");
    let verified = verify_ak_certificate(
        &certificate,
        &[&ca.intermediate_der()],
        &[ca.trusted_root()],
        now(),
    )?;
    assert!(ak_key_matches(&verified, &public));
    let quoted = tpm.quote(&ak, &qualifying_data(b"nonce"))?;
    let signature = QuoteSignature::from_tpmt(&quoted.signature)?;
    assert!(signature.verify(&verified.key, &quoted.attest)?);
    Ok(())
}

#[test]
fn vtpm_without_gce_provisioning_is_a_clear_error() -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let err = gce_attestation_key(&mut tpm).unwrap_err();
    assert!(matches!(err, GceError::NotProvisioned { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("0x1c10001") && message.contains("0x1c10003"),
        "{message}"
    );
    Ok(())
}

#[test]
fn certificate_for_another_key_in_nv_is_refused() -> anyhow::Result<()> {
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let ca = GoogleTestCa::new()?;
    // The RSA template next to a certificate for the ECC key: what a tampered or mixed-up
    // provisioning looks like.
    let other = tpm.create_primary_from_template(true, &template(ECC_AK_TEMPLATE))?;
    let other = AkPublic::from_tpmt_public(&other.public)?.key;
    let certificate = ca.issue_ak_certificate(&other, Some(&instance()))?;
    tpm.nv_provision(GCE_AK_TEMPLATE_NV_INDEX_RSA, &template(RSA_AK_TEMPLATE))?;
    tpm.nv_provision(GCE_AK_CERT_NV_INDEX_RSA, &certificate)?;
    let err = gce_attestation_key(&mut tpm).unwrap_err();
    assert!(
        matches!(err, GceError::KeyMismatch { kind: "RSA", .. }),
        "{err}"
    );

    // Non-zero bytes after the certificate are not padding.
    let swtpm = Swtpm::start()?;
    let mut tpm = Tpm::open(&swtpm.tcti())?;
    let indices = (GCE_AK_TEMPLATE_NV_INDEX_RSA, GCE_AK_CERT_NV_INDEX_RSA);
    tpm.nv_provision(indices.0, &template(RSA_AK_TEMPLATE))?;
    let mut trailing = certificate;
    trailing.extend_from_slice(b"junk");
    tpm.nv_provision(indices.1, &trailing)?;
    let err = gce_attestation_key(&mut tpm).unwrap_err();
    assert!(
        matches!(
            err,
            GceError::CertificateNotDer {
                index: GCE_AK_CERT_NV_INDEX_RSA,
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}
