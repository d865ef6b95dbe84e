//! A TEST-ONLY stand-in for Google's EK/AK CA: a root and an intermediate made with fresh keys at
//! run time, issuing vTPM AK certificates shaped like Google's (keyUsage digitalSignature,
//! CA:FALSE, the instance identity extension 1.3.6.1.4.1.11129.2.1.21 encoded byte for byte as
//! Google encodes it). Verifiers trust its root only when a test names it explicitly.

use anyhow::{bail, Result};
use cvm_attestation::gcp::{GceInstance, INSTANCE_IDENTITY_OID};
use cvm_attestation::snp::TrustedRoot;
use openssl::asn1::{Asn1Object, Asn1OctetString};
use openssl::bn::BigNum;
use openssl::ec::EcKey;
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::{Rsa, RsaPrivateKeyBuilder};
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509Extension, X509};

/// Validity of every certificate unless a test asks otherwise: 2020-01-01 to 2100-01-01.
pub const VALIDITY: (i64, i64) = (1_577_836_800, 4_102_444_800);

/// Which names the CA's certificates carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    TestOnly,
    /// Google's CNs and organization, as an impostor would copy them.
    Google,
}

/// Generated keys and certificates.
pub struct GoogleTestCa {
    root: X509,
    intermediate: X509,
    intermediate_key: PKey<Private>,
    names: Names,
}

fn rsa_key() -> Result<PKey<Private>> {
    Ok(PKey::from_rsa(Rsa::generate(2048)?)?)
}

impl GoogleTestCa {
    /// A fresh TEST-ONLY root and intermediate (CA:TRUE, keyCertSign).
    pub fn new() -> Result<Self> {
        Self::generate(Names::TestOnly, true)
    }

    /// An attacker's self-made CA with Google's names ("EK/AK CA Root", "EK/AK CA Intermediate",
    /// O=Google LLC) and its own keys.
    pub fn impersonating_google() -> Result<Self> {
        Self::generate(Names::Google, true)
    }

    /// A TEST-ONLY CA whose "intermediate" lacks basicConstraints CA:TRUE (it has keyCertSign):
    /// an end-entity certificate used to issue others.
    pub fn with_intermediate_not_ca() -> Result<Self> {
        Self::generate(Names::TestOnly, false)
    }

    fn generate(names: Names, intermediate_is_ca: bool) -> Result<Self> {
        let (root_cn, intermediate_cn) = match names {
            Names::TestOnly => ("TEST-ONLY EK/AK CA Root", "TEST-ONLY EK/AK CA Intermediate"),
            Names::Google => ("EK/AK CA Root", "EK/AK CA Intermediate"),
        };
        let root_key = rsa_key()?;
        let root = ca_certificate(names, root_cn, &root_key, None, true)?;
        let intermediate_key = rsa_key()?;
        let intermediate = ca_certificate(
            names,
            intermediate_cn,
            &intermediate_key,
            Some((&root, &root_key)),
            intermediate_is_ca,
        )?;
        Ok(Self {
            root,
            intermediate,
            intermediate_key,
            names,
        })
    }

    pub fn root(&self) -> &X509 {
        &self.root
    }

    pub fn root_der(&self) -> Vec<u8> {
        self.root.to_der().unwrap_or_default()
    }

    /// The root as a trust anchor a test names, marked TEST-ONLY.
    pub fn trusted_root(&self) -> TrustedRoot {
        TrustedRoot {
            name: "TEST-ONLY EK/AK CA Root".into(),
            certificate: self.root.clone(),
            test_only: true,
        }
    }

    pub fn intermediate_der(&self) -> Vec<u8> {
        self.intermediate.to_der().unwrap_or_default()
    }

    /// An AK certificate (DER) for `ak`, valid for [`VALIDITY`], naming `instance` when given.
    pub fn issue_ak_certificate(
        &self,
        ak: &PKey<Public>,
        instance: Option<&GceInstance>,
    ) -> Result<Vec<u8>> {
        self.issue_ak_certificate_valid(ak, instance, VALIDITY)
    }

    /// As [`Self::issue_ak_certificate`], valid from `valid.0` to `valid.1` (Unix seconds).
    pub fn issue_ak_certificate_valid(
        &self,
        ak: &PKey<Public>,
        instance: Option<&GceInstance>,
        valid: (i64, i64),
    ) -> Result<Vec<u8>> {
        let mut extensions = vec![
            KeyUsage::new().critical().digital_signature().build()?,
            BasicConstraints::new().critical().build()?,
        ];
        if let Some(instance) = instance {
            let oid = Asn1Object::from_str(INSTANCE_IDENTITY_OID)?;
            let value = Asn1OctetString::new_from_bytes(&Self::instance_identity_der(instance))?;
            extensions.push(X509Extension::new_from_der(&oid, false, &value)?);
        }
        let common_name = instance
            .map(|i| i.instance_id.to_string())
            .unwrap_or_else(|| "TEST-ONLY vTPM AK".into());
        let organization = match self.names {
            Names::TestOnly => "TEST ONLY - not Google Compute Engine",
            Names::Google => "Google Compute Engine",
        };
        let subject_key = public_key_carrier(ak)?;
        let cert = crate::certs::certificate(crate::certs::CertSpec {
            common_name: &common_name,
            organization,
            key: &subject_key,
            issuer: Some((&self.intermediate, &self.intermediate_key)),
            ca: false,
            extensions,
            digest: MessageDigest::sha256(),
            valid,
        })?;
        Ok(cert.to_der()?)
    }

    /// The instance identity extension's value, DER, as Google's CA writes it (see
    /// `cvm_attestation::gcp::instance` for the ASN.1): a SEQUENCE of zone, project number,
    /// project ID, instance ID, instance name and, when present, `[0]` securityProperties with
    /// `[0]` securityVersion, `[1]` isProduction and the uninterpreted elements after them.
    pub fn instance_identity_der(instance: &GceInstance) -> Vec<u8> {
        let mut content = Vec::new();
        content.extend(tlv(0x0c, instance.zone.as_bytes()));
        content.extend(integer(instance.project_number));
        content.extend(tlv(0x0c, instance.project_id.as_bytes()));
        content.extend(integer(instance.instance_id));
        content.extend(tlv(0x0c, instance.instance_name.as_bytes()));
        if let Some(security) = &instance.security {
            let mut properties = Vec::new();
            if let Some(version) = security.security_version {
                properties.extend(tlv(0xa0, &integer(version)));
            }
            if let Some(production) = security.is_production {
                properties.extend(tlv(0xa1, &tlv(0x01, &[if production { 0xff } else { 0 }])));
            }
            for (number, inner) in &security.other {
                properties.extend(tlv(0xa0 | (number & 0x1f), inner));
            }
            content.extend(tlv(0xa0, &tlv(0x30, &properties)));
        }
        tlv(0x30, &content)
    }
}

/// The shared certificate builder takes the subject key as a `PKey<Private>`, though it reads
/// only the public half for a certificate another key signs. An AK's private half never leaves
/// the TPM, so this carries the AK's public numbers with a placeholder private half that nothing
/// ever uses.
fn public_key_carrier(ak: &PKey<Public>) -> Result<PKey<Private>> {
    match ak.id() {
        Id::RSA => {
            let rsa = ak.rsa()?;
            let placeholder = BigNum::from_u32(1)?;
            let carrier =
                RsaPrivateKeyBuilder::new(rsa.n().to_owned()?, rsa.e().to_owned()?, placeholder)?
                    .build();
            Ok(PKey::from_rsa(carrier)?)
        }
        Id::EC => {
            let ec = ak.ec_key()?;
            let placeholder = BigNum::from_u32(1)?;
            let carrier =
                EcKey::from_private_components(ec.group(), &placeholder, ec.public_key())?;
            Ok(PKey::from_ec_key(carrier)?)
        }
        other => bail!("AK key type {other:?} is neither RSA nor EC"),
    }
}

/// Google's EK/AK CAs: RSA, SHA-256, keyCertSign + cRLSign.
fn ca_certificate(
    names: Names,
    common_name: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
) -> Result<X509> {
    crate::certs::certificate(crate::certs::CertSpec {
        common_name,
        organization: match names {
            Names::TestOnly => "TEST ONLY - not Google",
            Names::Google => "Google LLC",
        },
        key,
        issuer,
        ca,
        extensions: vec![KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?],
        digest: MessageDigest::sha256(),
        valid: VALIDITY,
    })
}

/// DER: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A non-negative DER INTEGER: minimal big-endian bytes, a leading zero when the top bit is set.
fn integer(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let mut content: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if content.first().is_none_or(|b| b & 0x80 != 0) {
        content.insert(0, 0);
    }
    tlv(0x02, &content)
}
