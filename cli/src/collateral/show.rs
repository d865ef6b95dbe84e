//! `collateral show` and `prune`: what the cache holds, whether each entry is current, corrupt
//! or stale, and dropping the ones that can no longer serve.

use super::cache::{Cache, Key};
use anyhow::Result;
use serde::Serialize;

/// One line of `show`.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub key: Key,
    pub kind: Option<&'static str>,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Current,
    Stale,
    Corrupt,
}

/// Every entry of `cache`, judged at `at`.
pub fn list(cache: &Cache, at: i64) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for key in cache.keys()? {
        let listed = match cache.get(&key) {
            Ok(Some((entry, _))) => Listed {
                kind: Some(entry.kind.describe()),
                state: if entry.current_at(at) {
                    State::Current
                } else {
                    State::Stale
                },
                fetched_at: Some(time(Some(entry.fetched_at))),
                stale_at: entry.stale_at().map(|t| time(Some(t))),
                source: Some(entry.source),
                problem: None,
                key,
            },
            Ok(None) => continue,
            Err(e) => Listed {
                key,
                kind: None,
                state: State::Corrupt,
                fetched_at: None,
                stale_at: None,
                source: None,
                problem: Some(e.to_string()),
            },
        };
        out.push(listed);
    }
    Ok(out)
}

pub fn print(listed: &[Listed], root: &std::path::Path, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(listed)?);
        return Ok(());
    }
    println!("cache: {}", root.display());
    if listed.is_empty() {
        println!("(empty)");
    }
    for entry in listed {
        let state = match entry.state {
            State::Current => "current",
            State::Stale => "STALE",
            State::Corrupt => "CORRUPT",
        };
        println!(
            "{state:8} {}  {}  fetched {}  stale from {}",
            entry.key,
            entry.kind.unwrap_or("?"),
            entry.fetched_at.as_deref().unwrap_or("-"),
            entry.stale_at.as_deref().unwrap_or("never"),
        );
        if let Some(problem) = &entry.problem {
            println!("         {problem}");
        }
    }
    Ok(())
}

/// Counts of what `prune` did.
#[derive(Debug, Default, Serialize)]
pub struct Pruned {
    pub kept: usize,
    pub stale: usize,
    pub corrupt: usize,
}

/// Removes stale and corrupt entries (judged at `at`).
pub fn prune(cache: &Cache, at: i64) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    for entry in list(cache, at)? {
        match entry.state {
            State::Current => pruned.kept += 1,
            State::Stale => pruned.stale += 1,
            State::Corrupt => pruned.corrupt += 1,
        }
        if entry.state != State::Current {
            cache.remove(&entry.key)?;
        }
    }
    Ok(pruned)
}

/// RFC 3339 UTC of Unix seconds ("never" for none).
pub fn time(unix: Option<i64>) -> String {
    let Some(unix) = unix else {
        return "never".into();
    };
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(Some(1_709_208_000)), "2024-02-29T12:00:00Z");
        assert_eq!(super::time(None), "never");
    }
}
