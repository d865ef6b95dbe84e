//! The Nitro Security Module's request and response messages, as a NitroTPM exchanges them through
//! its vendor command (and an enclave through /dev/nsm): CBOR encodings of
//! aws-nitro-enclaves-nsm-api's `Request::Attestation` and `Response`, serde's externally tagged
//! enums:
//!
//! ```text
//! request:  {"Attestation": {"user_data": bstr / null, "nonce": bstr / null, "public_key": bstr / null}}
//! response: {"Attestation": {"document": bstr}}   or   {"Error": "InvalidArgument" / ...}
//! ```
//!
//! Encoding lives here, beside the verifier's decoding of the document itself, so the attester and
//! the verifier agree on one definition.

use super::MAX_DOCUMENT;
use ciborium::Value;

/// Why an NSM response carries no attestation document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NsmResponseError {
    #[error("the NSM response is not CBOR: {0}")]
    Cbor(String),
    #[error("the NSM refused the request with error {0}")]
    Refused(String),
    #[error("the NSM response is not an attestation response: {0}")]
    Unexpected(String),
    #[error("the NSM's attestation document is {0} bytes, more than the {MAX_DOCUMENT} accepted")]
    TooLarge(usize),
}

/// The CBOR of `Request::Attestation` with these optional fields (absent ones are null), byte for
/// byte what the nsm-api's ciborium serialization writes: definite-length maps, fields in order.
pub fn attestation_request(
    user_data: Option<&[u8]>,
    nonce: Option<&[u8]>,
    public_key: Option<&[u8]>,
) -> Vec<u8> {
    let field = |name: &str, value: Option<&[u8]>| {
        (
            Value::Text(name.into()),
            value.map_or(Value::Null, |v| Value::Bytes(v.to_vec())),
        )
    };
    let request = Value::Map(vec![(
        Value::Text("Attestation".into()),
        Value::Map(vec![
            field("user_data", user_data),
            field("nonce", nonce),
            field("public_key", public_key),
        ]),
    )]);
    let mut out = Vec::new();
    // Writing a Value into a Vec cannot fail.
    let _ = ciborium::into_writer(&request, &mut out);
    out
}

/// The attestation document in an NSM response. `bytes` may run on past the response (a NitroTPM
/// returns it at the start of an NV index); only the first CBOR item is read.
pub fn attestation_response(bytes: &[u8]) -> Result<Vec<u8>, NsmResponseError> {
    let value: Value = ciborium::de::from_reader_with_recursion_limit(bytes, 8)
        .map_err(|e| NsmResponseError::Cbor(e.to_string()))?;
    let unexpected = |what: &str| NsmResponseError::Unexpected(what.to_owned());
    let Value::Map(mut entries) = value else {
        return Err(unexpected("not a map"));
    };
    if entries.len() != 1 {
        return Err(unexpected("not a single variant"));
    }
    let (variant, body) = entries.remove(0);
    match (variant.as_text(), body) {
        (Some("Attestation"), Value::Map(fields)) => {
            let mut documents = fields
                .into_iter()
                .filter(|(name, _)| name.as_text() == Some("document"));
            match (documents.next(), documents.next()) {
                (Some((_, Value::Bytes(document))), None) if document.len() > MAX_DOCUMENT => {
                    Err(NsmResponseError::TooLarge(document.len()))
                }
                (Some((_, Value::Bytes(document))), None) => Ok(document),
                _ => Err(unexpected(
                    "the Attestation response has no single document",
                )),
            }
        }
        (Some("Error"), Value::Text(code)) => Err(NsmResponseError::Refused(code)),
        (Some(other), _) => Err(NsmResponseError::Unexpected(format!(
            "the {other:?} response"
        ))),
        (None, _) => Err(unexpected("the variant name is not text")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_nsm_api_cbor() {
        let request = attestation_request(Some(b"ud"), Some(&[0xff]), None);
        let mut expected = vec![0xa1, 0x6b];
        expected.extend_from_slice(b"Attestation");
        expected.push(0xa3);
        expected.extend_from_slice(&[0x69]);
        expected.extend_from_slice(b"user_data");
        expected.extend_from_slice(&[0x42, b'u', b'd', 0x65]);
        expected.extend_from_slice(b"nonce");
        expected.extend_from_slice(&[0x41, 0xff, 0x6a]);
        expected.extend_from_slice(b"public_key");
        expected.push(0xf6);
        assert_eq!(request, expected);
    }

    #[test]
    fn responses_yield_the_document_or_a_named_error() {
        let mut ok = vec![0xa1, 0x6b];
        ok.extend_from_slice(b"Attestation");
        ok.extend_from_slice(&[0xa1, 0x68]);
        ok.extend_from_slice(b"document");
        ok.extend_from_slice(&[0x43, 0x84, 0x01, 0x02]);
        let mut padded = ok.clone();
        padded.extend_from_slice(&[0u8; 100]); // the rest of the NV index
        assert_eq!(attestation_response(&padded).unwrap(), vec![0x84, 1, 2]);

        let mut refused = vec![0xa1, 0x65];
        refused.extend_from_slice(b"Error");
        refused.push(0x6f);
        refused.extend_from_slice(b"InvalidArgument");
        assert_eq!(
            attestation_response(&refused),
            Err(NsmResponseError::Refused("InvalidArgument".into()))
        );
        assert!(matches!(
            attestation_response(&ok[..ok.len() - 1]),
            Err(NsmResponseError::Cbor(_))
        ));
        assert!(matches!(
            attestation_response(&[0x80]),
            Err(NsmResponseError::Unexpected(_))
        ));
    }
}
