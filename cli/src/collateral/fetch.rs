//! Getting one collateral document: from the cache when it is there and current, otherwise over
//! HTTP (unless offline) with bounded retries on 429/503 that honour `Retry-After`, then into
//! the cache. Concurrent gets of one key coalesce: one in-flight request per key in a process,
//! and a lock file per key across processes (the second waits, then finds it cached).

use super::cache::{Cache, CacheError, Entry, Key, Kind};
use super::validate::{crl_to_der, validate, Parsed, ValidateError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The largest response body read from a collateral service (Intel's PCK CRLs are the largest,
/// tens of KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One document to get.
#[derive(Debug, Clone)]
pub struct Item {
    pub key: Key,
    pub kind: Kind,
    pub url: String,
    /// What it is for, for messages ("VCEK of Milan chip 1a2b... at TCB ...").
    pub what: String,
}

/// Where a document came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Cache,
    Fetched,
    /// Carried by the evidence itself (a VCEK or VLEK from the host): nothing to get.
    Evidence,
}

/// A document, parsed, with its origin.
#[derive(Debug, Clone)]
pub struct Got {
    pub entry: Entry,
    pub parsed: Parsed,
    pub origin: Origin,
}

/// Whether the network may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Online,
    Offline,
}

/// Which cached entries will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Only one current at this time (Unix seconds); a stale one is fetched again.
    CurrentAt(i64),
    /// Any (verifying at a pinned past time: the services only serve today's documents).
    Any,
}

/// How long to keep trying a service that answers 429 or 503.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// The most time spent waiting in total; a `Retry-After` beyond it gives up at once.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_wait: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{what}: not in the cache{stale}, and --offline forbids fetching it")]
    Offline { what: String, stale: String },
    #[error("GET {url}: HTTP 404: the service does not know the {what}")]
    NotFound { url: String, what: String },
    #[error("GET {url}: HTTP {status}, gave up after {attempts} attempts and {waited} s of waiting{why}")]
    GaveUp {
        url: String,
        status: u16,
        attempts: u32,
        waited: u64,
        why: String,
    },
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{0:#}")]
    Transport(anyhow::Error),
    #[error("GET {url}: the {what} does not parse: {problem}")]
    Invalid {
        url: String,
        what: &'static str,
        problem: ValidateError,
    },
}

/// Gets documents for one run of the CLI.
pub struct Fetcher {
    pub cache: Cache,
    network: Network,
    freshness: Freshness,
    retry: RetryPolicy,
    inflight: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Fetcher {
    pub fn new(cache: Cache, network: Network, freshness: Freshness, retry: RetryPolicy) -> Self {
        Self {
            cache,
            network,
            freshness,
            retry,
            inflight: Mutex::default(),
        }
    }

    /// The cached entry, when there is one that will do.
    pub fn cached(&self, item: &Item) -> Result<Option<Got>, CacheError> {
        let Some((entry, parsed)) = self.cache.get(&item.key)? else {
            return Ok(None);
        };
        let usable = match self.freshness {
            Freshness::Any => true,
            Freshness::CurrentAt(at) => entry.current_at(at),
        };
        Ok(usable.then_some(Got {
            entry,
            parsed,
            origin: Origin::Cache,
        }))
    }

    /// `item` from the cache, or fetched and cached.
    pub async fn get(&self, item: &Item) -> Result<Got, FetchError> {
        match self.cached(item) {
            Ok(Some(got)) => return Ok(got),
            Ok(None) => {}
            Err(e) if self.network == Network::Online => {
                crate::output::warn(format_args!("{e}; fetching it again"));
            }
            Err(e) => return Err(e.into()),
        }
        if self.network == Network::Offline {
            let stale = match self.cache.get(&item.key) {
                Ok(Some((entry, _))) => format!(
                    " as current (it went stale at {})",
                    super::show::time(entry.stale_at())
                ),
                _ => String::new(),
            };
            return Err(FetchError::Offline {
                what: item.what.clone(),
                stale,
            });
        }
        let gate = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(item.key.clone()).or_default().clone()
        };
        let _in_process = gate.lock().await;
        let cache = self.cache.clone();
        let key = item.key.clone();
        let _across_processes = tokio::task::spawn_blocking(move || cache.lock(&key))
            .await
            .map_err(|e| FetchError::Transport(e.into()))??;
        // Whoever held the lock before may have fetched it meanwhile.
        if let Ok(Some(got)) = self.cached(item) {
            return Ok(got);
        }
        let (body, chain) = self.download(item).await?;
        let invalid = |problem| FetchError::Invalid {
            url: item.url.clone(),
            what: item.kind.describe(),
            problem,
        };
        let body = match item.kind {
            Kind::AmdCrl | Kind::AmdVlekCrl | Kind::IntelPckCrl | Kind::IntelRootCaCrl => {
                crl_to_der(&body).map_err(invalid)?
            }
            _ => body,
        };
        let parsed = validate(item.kind, &body, chain.as_deref()).map_err(invalid)?;
        let entry = Entry {
            kind: item.kind,
            source: item.url.clone(),
            fetched_at: now(),
            next_update: parsed.next_update,
            not_after: parsed.not_after,
            body: body.into(),
            issuer_chain: chain,
        };
        self.cache.put(&item.key, &entry)?;
        Ok(Got {
            entry,
            parsed,
            origin: Origin::Fetched,
        })
    }

    /// The body and (Intel) the URL-decoded issuer chain header, retrying on 429/503.
    async fn download(&self, item: &Item) -> Result<(Vec<u8>, Option<String>), FetchError> {
        let mut waited = Duration::ZERO;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let response = crate::http::request_with(
                "GET",
                &item.url,
                &[],
                Vec::new(),
                MAX_BODY_BYTES,
                REQUEST_TIMEOUT,
                crate::http::Tls::SystemCa,
            )
            .await
            .map_err(FetchError::Transport)?;
            match response.status {
                200 => return Ok((response.body.clone(), issuer_chain(&response))),
                404 => {
                    return Err(FetchError::NotFound {
                        url: item.url.clone(),
                        what: item.what.clone(),
                    })
                }
                429 | 503 => {}
                status => {
                    return Err(FetchError::Status {
                        url: item.url.clone(),
                        status,
                        body: excerpt(&response.body),
                    })
                }
            }
            let backoff = Duration::from_secs(1 << (attempt - 1).min(5));
            let delay = response
                .header("retry-after")
                .and_then(retry_after)
                .unwrap_or(backoff);
            let left = self.retry.max_wait.saturating_sub(waited);
            let why = if attempt >= self.retry.max_attempts {
                Some(String::new())
            } else if delay > left {
                Some(format!(
                    " (the next wait, {} s, is beyond the {} s left of --max-wait)",
                    delay.as_secs(),
                    left.as_secs()
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(FetchError::GaveUp {
                    url: item.url.clone(),
                    status: response.status,
                    attempts: attempt,
                    waited: waited.as_secs(),
                    why,
                });
            }
            // Said even with `-q`: the command is waiting, not stuck.
            crate::output::warn(format_args!(
                "{}: HTTP {}, retrying in {} s",
                item.url,
                response.status,
                delay.as_secs()
            ));
            tokio::time::sleep(delay).await;
            waited += delay;
        }
    }
}

/// The PEM chain of Intel's issuer-chain headers (URL-encoded).
fn issuer_chain(response: &crate::http::Response) -> Option<String> {
    [
        "tcb-info-issuer-chain",
        "sgx-tcb-info-issuer-chain",
        "sgx-enclave-identity-issuer-chain",
        "sgx-pck-crl-issuer-chain",
    ]
    .iter()
    .find_map(|name| response.header(name))
    .map(|value| {
        percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned()
    })
}

/// `Retry-After`: seconds or an HTTP date.
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
