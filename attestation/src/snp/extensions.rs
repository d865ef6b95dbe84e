//! AMD's X.509 extensions on VCEK/VLEK certificates: the TCB the key was derived for and, for a
//! VCEK, the chip it belongs to. Neither the `sev` crate nor `az-snp-vtpm` compares these with the
//! report, so a VCEK of another chip or TCB would otherwise pass.

use x509_cert::der::asn1::{Ia5String, OctetString};
use x509_cert::der::Decode;
use x509_cert::Certificate;

const OID_PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
const OID_CSP_ID: &str = "1.3.6.1.4.1.3704.1.5";

/// What AMD's extensions state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmdExtensions {
    pub product_name: Option<String>,
    pub bootloader: Option<u8>,
    pub tee: Option<u8>,
    pub snp: Option<u8>,
    pub microcode: Option<u8>,
    pub fmc: Option<u8>,
    /// VCEK only: the chip ID the key belongs to.
    pub hw_id: Option<Vec<u8>>,
    /// VLEK only: the cloud provider it was issued to.
    pub csp_id: Option<String>,
}

/// Why the extensions could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    #[error("certificate DER: {0}")]
    Der(String),
    #[error("extension {oid}: {problem}")]
    Value { oid: &'static str, problem: String },
}

/// Reads AMD's extensions from a DER certificate.
pub fn amd_extensions(der: &[u8]) -> Result<AmdExtensions, ExtensionError> {
    let cert = Certificate::from_der(der).map_err(|e| ExtensionError::Der(e.to_string()))?;
    let mut out = AmdExtensions::default();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        let oid = ext.extn_id.to_string();
        let value = ext.extn_value.as_bytes();
        match oid.as_str() {
            OID_PRODUCT_NAME => out.product_name = Some(ia5(OID_PRODUCT_NAME, value)?),
            OID_BL_SPL => out.bootloader = Some(spl(OID_BL_SPL, value)?),
            OID_TEE_SPL => out.tee = Some(spl(OID_TEE_SPL, value)?),
            OID_SNP_SPL => out.snp = Some(spl(OID_SNP_SPL, value)?),
            OID_UCODE_SPL => out.microcode = Some(spl(OID_UCODE_SPL, value)?),
            OID_FMC_SPL => out.fmc = Some(spl(OID_FMC_SPL, value)?),
            OID_HW_ID => {
                // Encoded as an OCTET STRING, or as the raw bytes in some older certificates.
                let id = OctetString::from_der(value)
                    .map(|o| o.as_bytes().to_vec())
                    .unwrap_or_else(|_| value.to_vec());
                out.hw_id = Some(id);
            }
            OID_CSP_ID => out.csp_id = Some(ia5(OID_CSP_ID, value)?),
            _ => {}
        }
    }
    Ok(out)
}

fn ia5(oid: &'static str, value: &[u8]) -> Result<String, ExtensionError> {
    Ia5String::from_der(value)
        .map(|s| s.to_string())
        .map_err(|e| ExtensionError::Value {
            oid,
            problem: e.to_string(),
        })
}

/// A security patch level: a DER INTEGER from 0 to 255.
fn spl(oid: &'static str, value: &[u8]) -> Result<u8, ExtensionError> {
    let integer =
        x509_cert::der::asn1::Int::from_der(value).map_err(|e| ExtensionError::Value {
            oid,
            problem: e.to_string(),
        })?;
    // DER two's complement: 0..=127 is one byte, 128..=255 has a leading zero byte.
    match integer.as_bytes() {
        [value] if value & 0x80 == 0 => Ok(*value),
        [0, value] if value & 0x80 != 0 => Ok(*value),
        other => Err(ExtensionError::Value {
            oid,
            problem: format!("not an integer from 0 to 255: {}", hex::encode(other)),
        }),
    }
}

/// Re-encodes a certificate as DER (for certificates held as openssl objects).
pub fn to_der(cert: &openssl::x509::X509) -> Result<Vec<u8>, ExtensionError> {
    cert.to_der()
        .map_err(|e| ExtensionError::Der(e.to_string()))
}
