//! The COSE payload: the CBOR `AttestationDocument` map, checked field by field against the
//! specification in aws-nitro-enclaves-nsm-api (docs/attestation_process.md, "Syntactical
//! validation") and the NitroTPM variant in the EC2 user guide ("nitrotpm-attestation-document-
//! validate"): the two differ only in the PCR map's key, `pcrs` (Enclaves) or `nitrotpm_pcrs`.

use super::{NitroDigest, NitroError};
use ciborium::Value;
use std::collections::BTreeMap;

/// Most PCRs a document may carry (indices 0..32).
pub const MAX_PCRS: usize = 32;
/// Largest `user_data`, `nonce` and `public_key` the document format allows.
pub const MAX_USER_FIELD: usize = 1024;
/// A certificate in the document is 1..=1024 bytes of DER.
pub const MAX_CERTIFICATE: usize = 1024;
/// Most certificates accepted in `cabundle` (root first; AWS's chains carry 4 today).
pub const MAX_CABUNDLE: usize = 4;
/// CBOR nesting the payload may use: the document is a map of maps and arrays, three deep.
const MAX_NESTING: usize = 8;

/// The payload's fields, syntactically valid; nothing here is trusted yet.
#[derive(Debug)]
pub(super) struct Payload {
    pub module_id: String,
    pub digest: NitroDigest,
    pub timestamp_ms: u64,
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    pub certificate: Vec<u8>,
    pub cabundle: Vec<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

const FIELDS: [&str; 10] = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "nitrotpm_pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
];

/// Decodes and checks the payload: every mandatory field present and non-null, no unknown or
/// repeated field, every value of the right type and size.
pub(super) fn parse(bytes: &[u8]) -> Result<Payload, NitroError> {
    let mut fields = fields(bytes)?;
    let module_id = text(take(&mut fields, "module_id")?, "module_id")?;
    if module_id.is_empty() {
        return Err(NitroError::EmptyModuleId);
    }
    let digest = digest(take(&mut fields, "digest")?)?;
    let timestamp_ms = timestamp(take(&mut fields, "timestamp")?)?;
    let pcrs = match (fields.remove("pcrs"), fields.remove("nitrotpm_pcrs")) {
        (Some(_), Some(_)) => return Err(NitroError::AmbiguousPcrs),
        (None, None) => return Err(NitroError::MissingField("nitrotpm_pcrs (or pcrs)")),
        (Some(map), None) | (None, Some(map)) => pcrs(map, digest)?,
    };
    let certificate = bytes_field(take(&mut fields, "certificate")?, "certificate")?;
    check_length("certificate", certificate.len(), 1, MAX_CERTIFICATE)?;
    let cabundle = cabundle(take(&mut fields, "cabundle")?)?;
    let public_key = optional(&mut fields, "public_key")?;
    if let Some(key) = &public_key {
        check_length("public_key", key.len(), 1, MAX_USER_FIELD)?;
    }
    let user_data = optional(&mut fields, "user_data")?;
    let nonce = optional(&mut fields, "nonce")?;
    Ok(Payload {
        module_id,
        digest,
        timestamp_ms,
        pcrs,
        certificate,
        cabundle,
        public_key,
        user_data,
        nonce,
    })
}

/// The top-level map by field name, refusing non-text keys, unknown names and repeats.
fn fields(bytes: &[u8]) -> Result<BTreeMap<&'static str, Value>, NitroError> {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_NESTING)
        .map_err(|e| NitroError::Payload(e.to_string()))?;
    if !reader.is_empty() {
        return Err(NitroError::Payload(format!(
            "{} bytes follow the document map",
            reader.len()
        )));
    }
    let Value::Map(entries) = value else {
        return Err(NitroError::Payload("the document is not a CBOR map".into()));
    };
    let mut fields = BTreeMap::new();
    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(NitroError::Payload("a document key is not text".into()));
        };
        let Some(&name) = FIELDS.iter().find(|&&name| name == key) else {
            return Err(NitroError::UnknownField(key));
        };
        if fields.insert(name, value).is_some() {
            return Err(NitroError::DuplicateField(name));
        }
    }
    Ok(fields)
}

fn take(
    fields: &mut BTreeMap<&'static str, Value>,
    name: &'static str,
) -> Result<Value, NitroError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Err(NitroError::MissingField(name)),
        Some(value) => Ok(value),
    }
}

fn wrong_type(field: &'static str, expected: &'static str) -> NitroError {
    NitroError::FieldType { field, expected }
}

fn text(value: Value, field: &'static str) -> Result<String, NitroError> {
    match value {
        Value::Text(text) => Ok(text),
        _ => Err(wrong_type(field, "a text string")),
    }
}

fn bytes_field(value: Value, field: &'static str) -> Result<Vec<u8>, NitroError> {
    match value {
        Value::Bytes(bytes) => Ok(bytes),
        _ => Err(wrong_type(field, "a byte string")),
    }
}

fn check_length(field: &str, len: usize, min: usize, max: usize) -> Result<(), NitroError> {
    if len < min || len > max {
        return Err(NitroError::FieldLength {
            field: field.to_owned(),
            len,
            min,
            max,
        });
    }
    Ok(())
}

fn digest(value: Value) -> Result<NitroDigest, NitroError> {
    match text(value, "digest")?.as_str() {
        "SHA256" => Ok(NitroDigest::Sha256),
        "SHA384" => Ok(NitroDigest::Sha384),
        "SHA512" => Ok(NitroDigest::Sha512),
        other => Err(NitroError::UnsupportedDigest(other.to_owned())),
    }
}

fn timestamp(value: Value) -> Result<u64, NitroError> {
    let Value::Integer(integer) = value else {
        return Err(wrong_type("timestamp", "an unsigned integer"));
    };
    match u64::try_from(integer) {
        Ok(0) => Err(NitroError::ZeroTimestamp),
        Ok(ms) => Ok(ms),
        Err(_) => Err(wrong_type("timestamp", "an unsigned 64-bit integer")),
    }
}

/// 1..=32 PCRs, indices 0..32, each exactly as long as the digest.
fn pcrs(value: Value, digest: NitroDigest) -> Result<BTreeMap<u8, Vec<u8>>, NitroError> {
    let Value::Map(entries) = value else {
        return Err(wrong_type("pcrs", "a map of index to bytes"));
    };
    if entries.is_empty() || entries.len() > MAX_PCRS {
        return Err(NitroError::PcrCount(entries.len()));
    }
    let mut pcrs = BTreeMap::new();
    for (index, value) in entries {
        let index = match index {
            Value::Integer(i) => u8::try_from(i)
                .ok()
                .filter(|&i| usize::from(i) < MAX_PCRS)
                .ok_or_else(|| NitroError::PcrIndex(i128::from(i).to_string()))?,
            _ => return Err(wrong_type("pcrs", "integer PCR indices")),
        };
        let Value::Bytes(value) = value else {
            return Err(wrong_type("pcrs", "byte-string PCR values"));
        };
        if value.len() != digest.pcr_len() {
            return Err(NitroError::PcrLength {
                index,
                len: value.len(),
                digest,
            });
        }
        if pcrs.insert(index, value).is_some() {
            return Err(NitroError::PcrIndex(format!("{index} (repeated)")));
        }
    }
    Ok(pcrs)
}

fn cabundle(value: Value) -> Result<Vec<Vec<u8>>, NitroError> {
    let Value::Array(items) = value else {
        return Err(wrong_type("cabundle", "an array of DER certificates"));
    };
    if items.is_empty() || items.len() > MAX_CABUNDLE {
        return Err(NitroError::CabundleSize(items.len()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let der = bytes_field(item, "cabundle")?;
            check_length(&format!("cabundle[{i}]"), der.len(), 1, MAX_CERTIFICATE)?;
            Ok(der)
        })
        .collect()
}

/// An optional byte string: absent or null is `None` (the NSM writes null for a parameter the
/// request left out).
fn optional(
    fields: &mut BTreeMap<&'static str, Value>,
    field: &'static str,
) -> Result<Option<Vec<u8>>, NitroError> {
    match fields.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            let bytes = bytes_field(value, field)?;
            check_length(field, bytes.len(), 0, MAX_USER_FIELD)?;
            Ok(Some(bytes))
        }
    }
}
