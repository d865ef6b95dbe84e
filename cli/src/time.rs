//! `--at` values: RFC 3339 in UTC (`2025-06-01T00:00:00Z`) or Unix seconds.

use anyhow::{bail, Context, Result};
use openssl::asn1::Asn1Time;

/// Seconds since the Unix epoch for an RFC 3339 UTC time or a plain integer.
pub fn parse_time(text: &str) -> Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    let Some(body) = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))
    else {
        bail!("time {text:?}: give UTC as YYYY-MM-DDTHH:MM:SSZ or Unix seconds");
    };
    let digits: String = body
        .split('.')
        .next()
        .unwrap_or(body)
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    if digits.len() != 14 {
        bail!("time {text:?}: expected YYYY-MM-DDTHH:MM:SSZ");
    }
    let asn1 = Asn1Time::from_str(&format!("{digits}Z"))
        .with_context(|| format!("time {text:?} is not a valid date"))?;
    let diff = Asn1Time::from_unix(0)?.diff(&asn1)?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_and_unix_seconds() {
        assert_eq!(parse_time("2025-06-01T00:00:00Z").unwrap(), 1_748_736_000);
        assert_eq!(parse_time("1970-01-01T00:00:10.5Z").unwrap(), 10);
        assert_eq!(parse_time("1748736000").unwrap(), 1_748_736_000);
        assert!(parse_time("2025-06-01T00:00:00+02:00").is_err());
        assert!(parse_time("2025-13-01T00:00:00Z").is_err());
    }
}
