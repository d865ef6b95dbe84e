//! Intel's SGX extensions on PCK certificates (OID 1.2.840.113741.1.13.1, "SGX PCK Certificate
//! and CRL Profile"): the platform's FMSPC, PCE ID, and the TCB (16 SGX component SVNs, PCESVN,
//! CPUSVN) the key was issued for. TCB info is looked up and matched with these.
//!
//! The extension is a SEQUENCE of SEQUENCE { OID, value }; the TCB entry nests one more such
//! SEQUENCE. A small bounded DER walker reads it.

use crate::der::{Der, Element as Tlv};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// DER of 1.2.840.113741.1.13.1 (without tag and length).
const SGX_EXTENSIONS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];
const SGX_EXTENSIONS_OID: &str = "1.2.840.113741.1.13.1";
/// The same OID, to find the extension among a certificate's.
pub(crate) const SGX_EXTENSIONS_ID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap(SGX_EXTENSIONS_OID);

/// What the PCK certificate says about its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgxExtensions {
    pub ppid: Vec<u8>,
    /// SGX TCB component SVNs 1..=16.
    pub tcb_components: [u8; 16],
    pub pcesvn: u16,
    pub cpusvn: [u8; 16],
    pub pce_id: [u8; 2],
    pub fmspc: [u8; 6],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PckError {
    #[error("PCK certificate DER: {0}")]
    Der(String),
    #[error("PCK certificate has no SGX extensions ({SGX_EXTENSIONS_OID})")]
    Missing,
    #[error("PCK SGX extensions: {0}")]
    Malformed(String),
}

/// Splits `bytes` into its DER elements (strict DER, at most 65).
fn elements(bytes: &[u8]) -> Result<Vec<Tlv<'_>>, PckError> {
    let mut der = Der::new(bytes);
    let mut out = Vec::new();
    while !der.is_empty() {
        if out.len() > 64 {
            return Err(PckError::Malformed("more than 64 elements".into()));
        }
        out.push(der.any().map_err(|e| PckError::Malformed(e.to_string()))?);
    }
    Ok(out)
}

/// The entries of a SEQUENCE { SEQUENCE { OID, value } ... } as (last OID arc, value element).
fn entries<'a>(seq_content: &'a [u8], prefix: &[u8]) -> Result<Vec<(u8, Tlv<'a>)>, PckError> {
    let mut out = Vec::new();
    for entry in elements(seq_content)? {
        if entry.tag != 0x30 {
            return Err(PckError::Malformed("entry is not a SEQUENCE".into()));
        }
        let parts = elements(entry.content)?;
        let [oid, value] = <[Tlv; 2]>::try_from(parts)
            .map_err(|_| PckError::Malformed("entry is not { OID, value }".into()))?;
        if oid.tag != 0x06
            || oid.content.len() != prefix.len() + 1
            || !oid.content.starts_with(prefix)
        {
            continue; // another OID (PlatformInstanceID, configuration, future additions)
        }
        out.push((oid.content[prefix.len()], value));
    }
    Ok(out)
}

fn integer(tlv: &Tlv, what: &str) -> Result<u16, PckError> {
    let bad = || PckError::Malformed(format!("{what} is not an integer from 0 to 65535"));
    if tlv.tag != 0x02 && tlv.tag != 0x0a {
        return Err(bad());
    }
    match tlv.content {
        [] => Err(bad()),
        [first, ..] if first & 0x80 != 0 => Err(bad()),
        value => {
            let trimmed = value.strip_prefix(&[0]).unwrap_or(value);
            if trimmed.len() > 2 {
                return Err(bad());
            }
            Ok(trimmed
                .iter()
                .fold(0u16, |acc, b| (acc << 8) | u16::from(*b)))
        }
    }
}

fn octets<const N: usize>(tlv: &Tlv, what: &str) -> Result<[u8; N], PckError> {
    if tlv.tag != 0x04 {
        return Err(PckError::Malformed(format!(
            "{what} is not an OCTET STRING"
        )));
    }
    tlv.content.try_into().map_err(|_| {
        PckError::Malformed(format!(
            "{what} is {} bytes, expected {N}",
            tlv.content.len()
        ))
    })
}

/// Reads the SGX extensions of a DER PCK certificate.
pub fn sgx_extensions(der: &[u8]) -> Result<SgxExtensions, PckError> {
    let cert = Certificate::from_der(der).map_err(|e| PckError::Der(e.to_string()))?;
    let ext = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == SGX_EXTENSIONS_ID)
        .ok_or(PckError::Missing)?;
    sgx_extensions_value(ext.extn_value.as_bytes())
}

/// Reads the SGX extensions from the extension's value (the OCTET STRING's content), for a
/// certificate already decoded.
pub(crate) fn sgx_extensions_value(value: &[u8]) -> Result<SgxExtensions, PckError> {
    let outer = elements(value)?;
    let [seq] =
        <[Tlv; 1]>::try_from(outer).map_err(|_| PckError::Malformed("not one SEQUENCE".into()))?;
    let mut ppid = None;
    let mut tcb = None;
    let mut pce_id = None;
    let mut fmspc = None;
    for (arc, value) in entries(seq.content, SGX_EXTENSIONS)? {
        match arc {
            1 if value.tag == 0x04 => ppid = Some(value.content.to_vec()),
            2 => tcb = Some(tcb_entry(&value)?),
            3 => pce_id = Some(octets::<2>(&value, "PCE-ID")?),
            4 => fmspc = Some(octets::<6>(&value, "FMSPC")?),
            _ => {}
        }
    }
    let (tcb_components, pcesvn, cpusvn) =
        tcb.ok_or_else(|| PckError::Malformed("no TCB entry".into()))?;
    Ok(SgxExtensions {
        ppid: ppid.unwrap_or_default(),
        tcb_components,
        pcesvn,
        cpusvn,
        pce_id: pce_id.ok_or_else(|| PckError::Malformed("no PCE-ID".into()))?,
        fmspc: fmspc.ok_or_else(|| PckError::Malformed("no FMSPC".into()))?,
    })
}

fn tcb_entry(value: &Tlv) -> Result<([u8; 16], u16, [u8; 16]), PckError> {
    if value.tag != 0x30 {
        return Err(PckError::Malformed("TCB is not a SEQUENCE".into()));
    }
    let prefix = [SGX_EXTENSIONS, &[0x02]].concat();
    let mut components = [None::<u8>; 16];
    let mut pcesvn = None;
    let mut cpusvn = None;
    for (arc, item) in entries(value.content, &prefix)? {
        match arc {
            1..=16 => {
                let svn = integer(&item, "TCB component SVN")?;
                let svn = u8::try_from(svn).map_err(|_| {
                    PckError::Malformed(format!("TCB component {arc} SVN {svn} is above 255"))
                })?;
                components[usize::from(arc - 1)] = Some(svn);
            }
            17 => pcesvn = Some(integer(&item, "PCESVN")?),
            18 => cpusvn = Some(octets::<16>(&item, "CPUSVN")?),
            _ => {}
        }
    }
    let mut out = [0u8; 16];
    for (i, svn) in components.iter().enumerate() {
        out[i] =
            svn.ok_or_else(|| PckError::Malformed(format!("TCB component {} missing", i + 1)))?;
    }
    Ok((
        out,
        pcesvn.ok_or_else(|| PckError::Malformed("no PCESVN".into()))?,
        cpusvn.ok_or_else(|| PckError::Malformed("no CPUSVN".into()))?,
    ))
}
