//! The one strict DER reader for what is read without `x509-cert` (Intel's CRLs on the TDX cold
//! path, the SGX extension of a PCK certificate, a certificate's signed part, a certificate in
//! a vTPM's zero-padded NV index): single byte tags, definite minimal lengths, minimal
//! INTEGERs, UTCTime and GeneralizedTime in the one form RFC 5280 allows. Every read stays
//! inside its buffer or fails; nothing here panics (fuzzed: `intel_x509`).

/// What is wrong with the DER, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DerError(pub String);

pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const OID: u8 = 0x06;
pub const BOOLEAN: u8 = 0x01;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;
pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
/// `[0]` constructed (EXPLICIT).
pub const CONTEXT_0: u8 = 0xa0;

fn bad(what: &str) -> DerError {
    DerError(what.to_owned())
}

/// One element: its tag, its content, and the whole encoding.
#[derive(Clone, Copy)]
pub struct Element<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub encoded: &'a [u8],
    /// Where the encoding starts in the reader's buffer.
    pub start: usize,
}

/// Reads consecutive elements of one buffer.
pub struct Der<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Der<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// The tag of the next element, if any.
    pub fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// The next element, whatever its tag.
    pub fn any(&mut self) -> Result<Element<'a>, DerError> {
        let start = self.at;
        let tag = *self.bytes.get(start).ok_or_else(|| bad("truncated"))?;
        if tag & 0x1f == 0x1f {
            return Err(bad("multi-byte tag"));
        }
        let first = *self
            .bytes
            .get(start + 1)
            .ok_or_else(|| bad("truncated length"))?;
        let (len, header) = match first {
            0..=0x7f => (usize::from(first), 2),
            0x81..=0x83 => {
                let count = usize::from(first & 0x7f);
                let raw = self
                    .bytes
                    .get(start + 2..start + 2 + count)
                    .ok_or_else(|| bad("truncated length"))?;
                let len = raw
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                // Minimal: the long form only from 128, no leading zero byte.
                if len < 0x80 || raw[0] == 0 {
                    return Err(bad("length not minimal"));
                }
                (len, 2 + count)
            }
            _ => return Err(bad("indefinite or oversized length")),
        };
        let end = (start + header)
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| bad("element longer than its container"))?;
        self.at = end;
        Ok(Element {
            tag,
            content: &self.bytes[start + header..end],
            encoded: &self.bytes[start..end],
            start,
        })
    }

    /// The next element, which must have tag `tag`.
    pub fn expect(&mut self, tag: u8, what: &str) -> Result<Element<'a>, DerError> {
        match self.peek() {
            Some(t) if t == tag => self.any(),
            _ => Err(DerError(format!("{what}: unexpected tag"))),
        }
    }

    /// The next element when it has tag `tag`.
    pub fn optional(&mut self, tag: u8) -> Result<Option<Element<'a>>, DerError> {
        match self.peek() {
            Some(t) if t == tag => self.any().map(Some),
            _ => Ok(None),
        }
    }

    /// Fails unless everything was read.
    pub fn finish(&self, what: &str) -> Result<(), DerError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DerError(format!("{what}: trailing data")))
        }
    }
}

/// An INTEGER's content, checked to be minimal (no redundant leading 0x00 or 0xff byte).
pub fn integer<'a>(element: &Element<'a>, what: &str) -> Result<&'a [u8], DerError> {
    match element.content {
        [] => Err(DerError(format!("{what}: empty INTEGER"))),
        [0, next, ..] if next & 0x80 == 0 => Err(DerError(format!("{what}: not minimal"))),
        [0xff, next, ..] if next & 0x80 != 0 => Err(DerError(format!("{what}: not minimal"))),
        content => Ok(content),
    }
}

/// A UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in Unix
/// seconds.
pub fn time(element: &Element, what: &str) -> Result<i64, DerError> {
    let invalid = || DerError(format!("{what}: not a DER UTC time"));
    let (year, rest) = match (element.tag, element.content.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&element.content[..2]).ok_or_else(invalid)?;
            (
                if yy < 50 { 2000 + yy } else { 1900 + yy },
                &element.content[2..],
            )
        }
        (GENERALIZED_TIME, 15) => (
            digits(&element.content[..4]).ok_or_else(invalid)?,
            &element.content[4..],
        ),
        _ => return Err(invalid()),
    };
    if rest[10] != b'Z' {
        return Err(invalid());
    }
    let field = |at: usize| digits(&rest[at..at + 2]).ok_or_else(invalid);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(invalid());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn digits(bytes: &[u8]) -> Option<i64> {
    bytes.iter().try_fold(0i64, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Element<'_>, DerError> {
        let mut der = Der::new(bytes);
        let element = der.any()?;
        der.finish("test")?;
        Ok(element)
    }

    #[test]
    fn lengths_must_be_minimal_and_inside() {
        assert_eq!(one(&[0x04, 0x01, 0xaa]).unwrap().content, &[0xaa]);
        assert!(one(&[0x04, 0x81, 0x01, 0xaa]).is_err());
        assert!(one(&[0x04, 0x82, 0x00, 0x81]).is_err());
        assert!(one(&[0x04, 0x80, 0x00, 0x00]).is_err());
        assert!(one(&[0x04, 0x02, 0xaa]).is_err());
        assert!(one(&[0x04, 0x01, 0xaa, 0x00]).is_err());
        assert!(one(&[0x1f, 0x01, 0x01, 0x00]).is_err());
        let long = [&[0x04, 0x81, 0x80][..], &[0u8; 0x80]].concat();
        assert_eq!(one(&long).unwrap().content.len(), 0x80);
    }

    #[test]
    fn integers_must_be_minimal() {
        let int = |content: &[u8]| {
            let encoded = [&[INTEGER, content.len() as u8][..], content].concat();
            integer(&one(&encoded).unwrap(), "n").map(<[u8]>::to_vec)
        };
        assert_eq!(int(&[0x00, 0x80]).unwrap(), vec![0x00, 0x80]);
        assert_eq!(int(&[0x7f]).unwrap(), vec![0x7f]);
        assert!(int(&[]).is_err());
        assert!(int(&[0x00, 0x7f]).is_err());
        assert!(int(&[0xff, 0x80]).is_err());
    }

    #[test]
    fn times_as_rfc_5280_has_them() {
        let at = |tag: u8, text: &str| {
            let encoded = [&[tag, text.len() as u8][..], text.as_bytes()].concat();
            time(&one(&encoded).unwrap(), "t")
        };
        assert_eq!(at(UTC_TIME, "180521104510Z").unwrap(), 1_526_899_510);
        assert_eq!(at(UTC_TIME, "700101000000Z").unwrap(), 0);
        assert_eq!(
            at(GENERALIZED_TIME, "20491231235959Z").unwrap(),
            2_524_607_999
        );
        assert_eq!(at(UTC_TIME, "240229120000Z").unwrap(), 1_709_208_000);
        for bad in [
            "230229120000Z",
            "180521104510",
            "1805211045100",
            "18052110451Z",
            "181321104510Z",
            "180521244510Z",
            "180521104560Z",
            "18052110451+Z",
        ] {
            assert!(at(UTC_TIME, bad).is_err(), "{bad}");
        }
        assert!(at(GENERALIZED_TIME, "180521104510Z").is_err());
        assert!(at(OCTET_STRING, "180521104510Z").is_err());
    }
}
