//! Audit lines: one structured tracing event of target `audit` per update, per rollback and per
//! rejected bearer token (docs/agent.md, "Audit lines"), and [`Throttle`], which bounds lines a
//! client can cause so a flood cannot fill the journal.
//!
//! The token is named by the first 16 hex digits of its salted commitment (the api-token event of
//! the running generation, public in the event log), never by the token or a bare hash of it.

use crate::serve::Peer;
use crate::workload::{MeasureFailed, Measured, Pcr23, RollbackFailed, RolledBack};
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
        result = %UpdateResult::Refused.as_str(),
        %peer,
        token = %token,
        workload = %"none",
        pcr23 = %Pcr23::Untouched.as_str(),
        error,
        "workload update"
    );
}

/// What became of an update, as its audit line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateResult {
    /// Measured and running.
    Applied,
    /// Refused before PCR 23 was touched: nothing measured or changed.
    Refused,
    /// Measuring it failed after PCR 23 may have been extended (the line's `pcr23` says how
    /// far); the previous workload still runs.
    Failed,
    /// Measured, did not start; the previous workload runs again, measured again.
    RolledBack,
    /// Measured, did not start, and bringing the previous one back failed too.
    RollbackFailed,
}

impl UpdateResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::RolledBack => "rolled-back",
            Self::RollbackFailed => "rollback-failed",
        }
    }
}

/// The audit fields of an update's outcome: result, the new generation's digest when known, and
/// what happened to PCR 23.
fn classify(outcome: &anyhow::Result<Measured>) -> (UpdateResult, Option<Sha256Digest>, Pcr23) {
    let e = match outcome {
        Ok(measured) => {
            let new = replay(&measured.current);
            return (UpdateResult::Applied, Some(new), Pcr23::Extended);
        }
        Err(e) => e,
    };
    if let Some(failed) = e.downcast_ref::<RollbackFailed>() {
        (
            UpdateResult::RollbackFailed,
            Some(failed.new),
            Pcr23::Extended,
        )
    } else if let Some(rolled_back) = e.downcast_ref::<RolledBack>() {
        (
            UpdateResult::RolledBack,
            Some(rolled_back.new),
            Pcr23::Extended,
        )
    } else if let Some(measure) = e.downcast_ref::<MeasureFailed>() {
        let result = match measure.pcr23 {
            Pcr23::Untouched => UpdateResult::Refused,
            Pcr23::PendingReconcile | Pcr23::Extended => UpdateResult::Failed,
        };
        (result, Some(measure.new), measure.pcr23)
    } else {
        (UpdateResult::Refused, None, Pcr23::Untouched)
    }
}

/// The outcome of `Workloads::update`, with `pcr23` saying whether PCR 23 was extended
/// (`extended`), was not (`untouched`), or may hold part of the update until the restart
/// reconciles the log (`pending-reconcile`).
pub fn update(peer: &Peer, token: &str, outcome: &anyhow::Result<Measured>) {
    let (result, workload, pcr23) = classify(outcome);
    let workload = workload
        .as_ref()
        .map_or("none".into(), Sha256Digest::to_hex);
    let Err(error) = outcome else {
        tracing::info!(
            target: "audit",
            action = %"update",
            result = %result.as_str(),
            %peer,
            token = %token,
            workload = %workload,
            pcr23 = %pcr23.as_str(),
            "workload update"
        );
        return;
    };
    tracing::warn!(
        target: "audit",
        action = %"update",
        result = %result.as_str(),
        %peer,
        token = %token,
        workload = %workload,
        pcr23 = %pcr23.as_str(),
        error = ?format!("{error:#}"),
        "workload update"
    );
}

/// What became of a rollback after a failed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackResult {
    /// The previous workload runs again, measured again into PCR 23.
    Restored,
    /// Bringing the previous workload back failed: no workload may be running.
    Failed,
}

impl RollbackResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restored => "restored",
            Self::Failed => "failed",
        }
    }
}

/// A rollback after the new workload `new` did not start (`cause`); `failure` is why the
/// rollback itself failed.
pub fn rollback(new: &Sha256Digest, cause: &anyhow::Error, failure: Option<&str>) {
    let result = match failure {
        None => RollbackResult::Restored,
        Some(_) => RollbackResult::Failed,
    };
    tracing::warn!(
        target: "audit",
        action = %"rollback",
        result = %result.as_str(),
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
