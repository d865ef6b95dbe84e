//! Where the COSE_Sign1 starts: either the input is one (as the NSM and the NitroTPM vendor command
//! return it, untagged `0x84` or tagged `0xD2` = tag 18), or it is dstack's attestation envelope
//! around one.
//!
//! dstack (Phala's confidential-VM stack, whose published Nitro Enclave capture is our real
//! vector) ships an NSM document inside its SCALE-encoded `VersionedAttestation`:
//!
//! ```text
//! 0x00                      VersionedAttestation::V0
//! 0x02                      AttestationQuote::DstackNitroEnclave
//! compact(n) + n bytes      DstackNitroQuote.nsm_quote: the COSE_Sign1
//! compact(0)                runtime_events: dstack logs these for TDX only, so none here
//! 64 bytes                  report_data
//! compact(m) + m bytes      config: UTF-8 (dstack's VM config JSON)
//! ```
//!
//! `compact` is SCALE's compact integer: the low two bits of the first byte select 1, 2 or 4
//! little-endian bytes holding `value << 2`. Only that exact shape is accepted, to the last byte;
//! nothing outside the COSE_Sign1 is signed, so nothing outside it is returned.

use super::NitroError;

const TAG_COSE_SIGN1: u8 = 0xd2;
const ARRAY_OF_FOUR: u8 = 0x84;
const DSTACK_V0: u8 = 0x00;
const DSTACK_NITRO_ENCLAVE: u8 = 0x02;
const DSTACK_REPORT_DATA: usize = 64;

/// The COSE_Sign1 bytes inside `input`.
pub(super) fn cose_sign1(input: &[u8]) -> Result<&[u8], NitroError> {
    match input.first() {
        None => Err(NitroError::Empty),
        Some(&TAG_COSE_SIGN1) | Some(&ARRAY_OF_FOUR) => Ok(input),
        Some(&DSTACK_V0) => dstack_envelope(input),
        Some(&other) => Err(NitroError::UnknownFraming(other)),
    }
}

fn envelope(reason: &'static str) -> NitroError {
    NitroError::DstackEnvelope(reason)
}

fn dstack_envelope(input: &[u8]) -> Result<&[u8], NitroError> {
    let mut reader = Reader(input);
    reader.byte()?; // V0, matched by the caller
    if reader.byte()? != DSTACK_NITRO_ENCLAVE {
        return Err(envelope(
            "the quote is not a Nitro Enclave NSM document (variant 2)",
        ));
    }
    let length = reader.compact()?;
    let document = reader.take(length)?;
    if reader.compact()? != 0 {
        return Err(envelope(
            "it carries runtime events, which dstack records for TDX only",
        ));
    }
    reader.take(DSTACK_REPORT_DATA)?;
    let config_length = reader.compact()?;
    let config = reader.take(config_length)?;
    if std::str::from_utf8(config).is_err() {
        return Err(envelope("its config is not UTF-8"));
    }
    if !reader.0.is_empty() {
        return Err(envelope("bytes follow the config"));
    }
    match document.first() {
        Some(&TAG_COSE_SIGN1) | Some(&ARRAY_OF_FOUR) => Ok(document),
        _ => Err(envelope("its NSM document does not start a COSE_Sign1")),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], NitroError> {
        if n > self.0.len() {
            return Err(envelope("it ends before a field it announces"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, NitroError> {
        Ok(self.take(1)?[0])
    }

    /// A SCALE compact integer in its shortest form (parity-scale-codec rejects longer ones too).
    /// Lengths here stay far below 2^30, so the big-integer mode is refused.
    fn compact(&mut self) -> Result<usize, NitroError> {
        let first = self.byte()?;
        let (value, minimum) = match first & 0b11 {
            0 => (u32::from(first >> 2), 0),
            1 => {
                let raw = u16::from_le_bytes([first, self.byte()?]);
                (u32::from(raw >> 2), 1 << 6)
            }
            2 => {
                let rest = self.take(3)?;
                let raw = u32::from_le_bytes([first, rest[0], rest[1], rest[2]]);
                (raw >> 2, 1 << 14)
            }
            _ => return Err(envelope("a length does not fit in 30 bits")),
        };
        if value < minimum {
            return Err(envelope("a length is not in SCALE's shortest form"));
        }
        usize::try_from(value).map_err(|_| envelope("a length does not fit in memory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope around `document`, as dstack's SCALE encoder writes it.
    fn wrap(document: &[u8], config: &str) -> Vec<u8> {
        let mut out = vec![DSTACK_V0, DSTACK_NITRO_ENCLAVE];
        compact(&mut out, document.len());
        out.extend_from_slice(document);
        compact(&mut out, 0);
        out.extend_from_slice(&[0u8; 64]);
        compact(&mut out, config.len());
        out.extend_from_slice(config.as_bytes());
        out
    }

    fn compact(out: &mut Vec<u8>, n: usize) {
        let n = n as u32;
        match n {
            0..=63 => out.push((n << 2) as u8),
            64..=16383 => out.extend_from_slice(&((n << 2 | 1) as u16).to_le_bytes()),
            _ => out.extend_from_slice(&(n << 2 | 2).to_le_bytes()),
        }
    }

    #[test]
    fn bare_documents_pass_through() {
        assert_eq!(cose_sign1(&[0x84, 1]).unwrap(), &[0x84, 1]);
        assert_eq!(cose_sign1(&[0xd2, 0x84]).unwrap(), &[0xd2, 0x84]);
        assert!(matches!(cose_sign1(&[]), Err(NitroError::Empty)));
        assert!(matches!(
            cose_sign1(&[0xa1]),
            Err(NitroError::UnknownFraming(0xa1))
        ));
    }

    #[test]
    fn envelope_yields_exactly_the_document() {
        for size in [1usize, 63, 64, 300, 16383, 16384] {
            let mut document = vec![0x5a; size];
            document[0] = 0x84;
            let wrapped = wrap(&document, "{\"os_image_hash\":\"00\"}");
            assert_eq!(cose_sign1(&wrapped).unwrap(), document.as_slice(), "{size}");
        }
    }

    #[test]
    fn envelope_is_exact() {
        let good = wrap(&[0x84, 0, 1, 2], "{}");
        let mut trailing = good.clone();
        trailing.push(0);
        let mut other_variant = good.clone();
        other_variant[1] = 0x04;
        let mut non_minimal = vec![DSTACK_V0, DSTACK_NITRO_ENCLAVE, 0x11, 0x00]; // 4 in two bytes
        non_minimal.extend_from_slice(&good[3..]);
        let mut events = good.clone();
        events[7] = 1 << 2;
        let mut not_cose = good.clone();
        not_cose[3] = 0xa0;
        for (name, bad) in [
            ("trailing", trailing),
            ("variant", other_variant),
            ("non-minimal", non_minimal),
            ("events", events),
            ("not cose", not_cose),
            ("truncated", good[..good.len() - 1].to_vec()),
        ] {
            assert!(
                matches!(cose_sign1(&bad), Err(NitroError::DstackEnvelope(_))),
                "{name}: {:?}",
                cose_sign1(&bad)
            );
        }
    }
}
