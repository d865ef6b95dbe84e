//! What every cloud client shares: bounded reads of untrusted answers, and one retry policy for
//! transient failures.

use anyhow::{bail, Result};
use std::time::Duration;

/// Reads at most `limit` bytes of an answer: a larger one is an error, never an allocation the
/// server chose.
pub async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            bail!("answer larger than {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How often a transient failure is retried, and how long to back off in between (doubling
/// from `first_delay` up to `max_delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first one included.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Retry {
    /// Upload blocks and chunks: a few attempts, backing off to 8 s.
    pub const fn uploads(attempts: u32) -> Self {
        Self {
            attempts,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }

    /// Whether to give up after `failures` failed attempts.
    pub fn exhausted(&self, failures: u32) -> bool {
        failures >= self.attempts.max(1)
    }

    /// The pause after the `failures`-th failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        (self.first_delay * 2u32.pow(doublings)).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_attempts_are_counted() {
        let retry = Retry::uploads(4);
        let delays: Vec<u64> = (1..=7).map(|n| retry.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 8000]);
        assert!(!retry.exhausted(3));
        assert!(retry.exhausted(4));
        assert!(Retry::uploads(0).exhausted(1));
    }
}
