//! X.509 certificates (PEM, one or several, or DER) with what this toolkit's roots and leaves
//! carry: AMD's TCB and chip extensions on a VCEK/VLEK, Intel's SGX extensions on a PCK, Google's
//! instance identity on an AK certificate. Public keys: SPKI (PEM or DER) and TPMT_PUBLIC /
//! TPM2B_PUBLIC (raw or base64, as `deploy-local` records the AK).

use super::Found;
use anyhow::{Context, Result};
use cvm_attestation::encoding::decode_base64;
use cvm_attestation::snp::amd_extensions;
use cvm_attestation::tdx::sgx_extensions;
use cvm_attestation::tpm::AkPublic;
use openssl::asn1::Asn1Time;
use openssl::pkey::{Id, PKeyRef, Public};
use openssl::x509::{X509NameRef, X509};
use serde_json::{json, Map, Value};

/// Google's instance identity extension on GCE AK certificates.
const GCE_INSTANCE_OID: &str = "1.3.6.1.4.1.11129.2.1.21";
/// A PEM bundle with more certificates than this is not a chain anyone hands us.
const MAX_CERTIFICATES: usize = 16;

/// Certificates; `None` when the file is neither PEM with a CERTIFICATE block nor DER X.509.
pub fn certificates(bytes: &[u8]) -> Option<Result<Found>> {
    let json = bytes.trim_ascii_start().starts_with(b"{");
    let pem = !json
        && bytes
            .windows(27)
            .any(|w| w == b"-----BEGIN CERTIFICATE-----");
    let certificates = if pem {
        match X509::stack_from_pem(bytes) {
            Ok(list) if list.is_empty() => return None,
            Ok(list) => list,
            Err(e) => return Some(Err(anyhow::Error::new(e).context("a PEM certificate file"))),
        }
    } else if bytes.first() == Some(&0x30) {
        vec![X509::from_der(bytes).ok()?]
    } else {
        return None;
    };
    if certificates.len() > MAX_CERTIFICATES {
        return Some(Err(anyhow::anyhow!(
            "a PEM file with {} certificates, more than the {MAX_CERTIFICATES} inspect reads",
            certificates.len()
        )));
    }
    Some(render_certificates(&certificates))
}

fn render_certificates(certificates: &[X509]) -> Result<Found> {
    let values = certificates
        .iter()
        .map(certificate)
        .collect::<Result<Vec<_>>>()?;
    Ok(match values.as_slice() {
        [one] => Found::new(
            format!("X.509 certificate: {}", one["role"].as_str().unwrap_or("-")),
            one.clone(),
        ),
        _ => Found::new(
            format!("X.509 certificates ({})", values.len()),
            Value::Array(values),
        ),
    })
}

fn certificate(cert: &X509) -> Result<Value> {
    let der = cert.to_der()?;
    let now = Asn1Time::days_from_now(0)?;
    let valid_now = cert.not_before() <= now && cert.not_after() >= now;
    let mut out = json!({
        "role": role(cert, &der),
        "subject": name(cert.subject_name()),
        "issuer": name(cert.issuer_name()),
        "serial": cert.serial_number().to_bn()?.to_hex_str()?.to_string(),
        "not_before": cert.not_before().to_string(),
        "not_after": cert.not_after().to_string(),
        "valid_now": valid_now,
        "signature_algorithm": cert.signature_algorithm().object().to_string(),
        "key": key(cert.public_key()?.as_ref())?,
        "sha256": hex::encode(openssl::sha::sha256(&der)),
    });
    let fields = out.as_object_mut().context("certificate JSON")?;
    if let Some(amd) = amd(&der) {
        fields.insert("amd".into(), amd);
    }
    if let Ok(sgx) = sgx_extensions(&der) {
        fields.insert(
            "intel_sgx".into(),
            json!({
                "fmspc": hex::encode_upper(sgx.fmspc),
                "pce_id": hex::encode_upper(sgx.pce_id),
                "sgx_tcb_components": sgx.tcb_components.to_vec(),
                "pcesvn": sgx.pcesvn,
                "cpusvn": hex::encode(sgx.cpusvn),
                "ppid": hex::encode(&sgx.ppid),
            }),
        );
    }
    if let Some(instance) = gce_instance(&der) {
        fields.insert("gce_instance".into(), instance);
    }
    Ok(out)
}

/// What the certificate is, from its names and extensions.
fn role(cert: &X509, der: &[u8]) -> String {
    let subject = cn(cert.subject_name());
    let issuer = cn(cert.issuer_name());
    let product = |cn: &str| cn.rsplit('-').next().unwrap_or_default().to_owned();
    match subject.as_str() {
        "SEV-VCEK" => return format!("AMD VCEK ({})", product(&issuer)),
        "SEV-VLEK" => return format!("AMD VLEK ({})", product(&issuer)),
        s if s.starts_with("ARK-") => return format!("AMD root key ARK ({})", product(s)),
        s if s.starts_with("SEV-VLEK-") => return format!("AMD ASVK ({})", product(s)),
        s if s.starts_with("SEV-") => return format!("AMD ASK ({})", product(s)),
        "Intel SGX Root CA" => return "Intel SGX root CA".into(),
        "EK/AK CA Root" => return "Google EK/AK CA root".into(),
        "EK/AK CA Intermediate" => return "Google EK/AK CA intermediate".into(),
        "aws.nitro-enclaves" => return "AWS Nitro root".into(),
        _ => {}
    }
    if sgx_extensions(der).is_ok() {
        return "Intel SGX PCK certificate".into();
    }
    if subject.starts_with("Intel SGX") {
        return format!("Intel {subject}");
    }
    if issuer.starts_with("EK/AK CA") {
        return "Google vTPM AK/EK certificate".into();
    }
    "certificate".into()
}

/// AMD's extensions, when the certificate has any.
fn amd(der: &[u8]) -> Option<Value> {
    let ext = amd_extensions(der).ok()?;
    if ext == Default::default() {
        return None;
    }
    Some(json!({
        "product_name": ext.product_name,
        "blSPL": ext.bootloader,
        "teeSPL": ext.tee,
        "snpSPL": ext.snp,
        "ucodeSPL": ext.microcode,
        "fmcSPL": ext.fmc,
        "hwID": ext.hw_id.map(hex::encode),
        "csp_id": ext.csp_id,
    }))
}

/// Google's instance identity extension, when present.
fn gce_instance(der: &[u8]) -> Option<Value> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let extension = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id.to_string() == GCE_INSTANCE_OID)?;
    let value = extension.extn_value.as_bytes();
    Some(
        match cvm_attestation::gcp::instance::instance_identity(value) {
            Ok(i) => json!({
                "zone": i.zone,
                "project_id": i.project_id,
                "project_number": i.project_number,
                "instance_id": i.instance_id,
                "instance_name": i.instance_name,
                "security_version": i.security.as_ref().and_then(|s| s.security_version),
                "is_production": i.is_production(),
            }),
            Err(e) => json!(format!("malformed: {e}")),
        },
    )
}

fn name(name: &X509NameRef) -> String {
    name.entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = asn1_text(entry.data());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A name entry's text; its bytes in hex when it is not text.
fn asn1_text(data: &openssl::asn1::Asn1StringRef) -> String {
    data.to_string()
        .unwrap_or_else(|_| hex::encode(data.as_slice()))
}

fn cn(name: &X509NameRef) -> String {
    name.entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .map(|entry| asn1_text(entry.data()))
        .unwrap_or_default()
}

/// Algorithm, size or curve, and the SHA-256 of the SubjectPublicKeyInfo (to compare keys).
fn key(key: &PKeyRef<Public>) -> Result<Value> {
    let algorithm = match key.id() {
        Id::RSA => format!("RSA {} bits", key.bits()),
        Id::EC => {
            let curve = key
                .ec_key()?
                .group()
                .curve_name()
                .and_then(|nid| nid.short_name().ok())
                .unwrap_or("unknown curve");
            format!("EC {curve}")
        }
        Id::ED25519 => "Ed25519".into(),
        other => format!("key type {}", other.as_raw()),
    };
    let spki = key.public_key_to_der()?;
    Ok(json!({
        "algorithm": algorithm,
        "spki_sha256": hex::encode(openssl::sha::sha256(&spki)),
    }))
}

/// A public key: PEM or DER SPKI, TPMT_PUBLIC or TPM2B_PUBLIC, raw or base64.
pub fn public_key(bytes: &[u8]) -> Option<Found> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    let (ak, encoding) = match AkPublic::from_bytes(bytes) {
        Ok(ak) => (ak, ""),
        Err(_) => {
            let decoded = decode_base64(text.filter(|t| !t.is_empty())?)?;
            (AkPublic::from_bytes(&decoded).ok()?, ", base64")
        }
    };
    let mut value = key(ak.key.as_ref()).ok()?;
    let fields = value.as_object_mut()?;
    let kind = match ak.object_attributes {
        Some(attributes) => {
            fields.insert("object_attributes".into(), tpm_attributes(attributes));
            fields.insert(
                "restricted_signing_key".into(),
                json!(ak.is_restricted_signing_key()),
            );
            fields.insert("name_alg".into(), json!(ak.name_alg));
            format!("TPM public key (TPMT_PUBLIC{encoding})")
        }
        None => format!("public key (SubjectPublicKeyInfo{encoding})"),
    };
    Some(Found::new(kind, value))
}

/// TPMA_OBJECT as names (TPM 2.0 Part 2, 8.3).
fn tpm_attributes(bits: u32) -> Value {
    const NAMES: &[(u32, &str)] = &[
        (1, "fixedTPM"),
        (2, "stClear"),
        (4, "fixedParent"),
        (5, "sensitiveDataOrigin"),
        (6, "userWithAuth"),
        (7, "adminWithPolicy"),
        (10, "noDA"),
        (11, "encryptedDuplication"),
        (16, "restricted"),
        (17, "decrypt"),
        (18, "sign"),
    ];
    let mut out = Map::new();
    out.insert("raw".into(), json!(format!("{bits:#010x}")));
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| bits & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    out.insert("set".into(), json!(set));
    Value::Object(out)
}
