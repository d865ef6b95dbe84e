//! Audit lines: one structured tracing event of target `audit` per update, per rollback and per
//! rejected bearer token (docs/agent.md, "Audit lines"), and [`Throttle`], which bounds lines a
//! client can cause so a flood cannot fill the journal.
//!
//! The token is named by the first 16 hex digits of its salted commitment (the api-token event of
//! the running generation, public in the event log), never by the token or a bare hash of it.

use crate::serve::Peer;
use crate::workload::{Measured, RollbackFailed, RolledBack};
use cvm_attestation::workload::{replay, EventKind};
use cvm_attestation::Sha256Digest;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most `burst` lines per `window`; the others are counted, and the count goes with the next
/// line let through.
#[derive(Debug)]
pub struct Throttle {
    burst: u32,
    window: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    window_start: Option<Instant>,
    let_through: u32,
    suppressed: u64,
}

impl Throttle {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::default(),
        }
    }

    /// `Some(lines suppressed since the last one let through)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let window_over = state
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if window_over {
            state.window_start = Some(now);
            state.let_through = 0;
        }
        if state.let_through < self.burst {
            state.let_through += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

/// The first 16 hex digits of the token's salted commitment in the running generation; `none`
/// without a token.
pub fn token_prefix(measured: &Measured) -> String {
    measured
        .current
        .iter()
        .find(|event| event.kind == EventKind::ApiToken)
        .map(|event| event.payload_digest.to_hex()[..16].to_owned())
        .unwrap_or_else(|| "none".into())
}

/// A request refused for its bearer token (missing, wrong, or no token configured here).
pub fn rejected_token(throttle: &Throttle, peer: &Peer, route: &str, reason: &str) {
    if let Some(suppressed) = throttle.allow() {
        tracing::warn!(
            target: "audit",
            action = %"token",
            result = %"rejected",
            %peer,
            route = %route.escape_debug(),
            reason,
            suppressed,
            "bearer token rejected"
        );
    }
}

/// An update refused before anything changed (the upload, or its validation).
pub fn update_refused(peer: &Peer, token: &str, error: &str) {
    tracing::warn!(
        target: "audit",
        action = %"update",
        result = %"refused",
        %peer,
        token = %token,
        workload = %"none",
        error,
        "workload update"
    );
}

/// The outcome of `Workloads::update`: `applied`, `rolled-back`, `rollback-failed`, or
/// `refused` (nothing was measured or changed).
pub fn update(peer: &Peer, token: &str, outcome: &anyhow::Result<Measured>) {
    let (result, workload, error) = match outcome {
        Ok(measured) => ("applied", Some(replay(&measured.current)), None),
        Err(e) => match (
            e.downcast_ref::<RollbackFailed>(),
            e.downcast_ref::<RolledBack>(),
        ) {
            (Some(failed), _) => ("rollback-failed", Some(failed.new), Some(e)),
            (None, Some(rolled_back)) => ("rolled-back", Some(rolled_back.new), Some(e)),
            (None, None) => ("refused", None, Some(e)),
        },
    };
    let workload = workload
        .as_ref()
        .map_or("none".into(), Sha256Digest::to_hex);
    let error = error.map(|e| format!("{e:#}")).unwrap_or_default();
    if outcome.is_ok() {
        tracing::info!(
            target: "audit",
            action = %"update",
            result = %result,
            %peer,
            token = %token,
            workload = %workload,
            "workload update"
        );
    } else {
        tracing::warn!(
            target: "audit",
            action = %"update",
            result = %result,
            %peer,
            token = %token,
            workload = %workload,
            error = ?error,
            "workload update"
        );
    }
}

/// A rollback after the new workload `new` did not start: `restored` or `failed`.
pub fn rollback(new: &Sha256Digest, result: &str, cause: &anyhow::Error, failure: Option<&str>) {
    tracing::warn!(
        target: "audit",
        action = %"rollback",
        result = %result,
        workload = %new.to_hex(),
        cause = ?format!("{cause:#}"),
        error = ?failure.unwrap_or_default(),
        "rollback after a failed update"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_a_burst_through_per_window_and_counts_the_rest() {
        let throttle = Throttle::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let first: Vec<_> = (0..10).map(|_| throttle.allow_at(at(0))).collect();
        assert_eq!(first[..3], [Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        assert_eq!(throttle.allow_at(at(59)), None);
        // The next window: the first line carries the 8 suppressed ones.
        assert_eq!(throttle.allow_at(at(61)), Some(8));
        assert_eq!(throttle.allow_at(at(61)), Some(0));
    }
}
