//! Per-call timing for the benchmarks (attestation/benches, compare/examples): one way to warm
//! up, size batches and take the median, so figures from different benchmarks compare.

use std::time::{Duration, Instant};

/// Microseconds per call: the median, the fastest and the slowest batch, and the batch size.
pub struct Timing {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub batch: u32,
}

/// Calls `f` for `warm_up` (at least 3 times), sizes a batch to take about `batch_target`, then
/// times `samples` batches.
pub fn time_per_call(
    samples: usize,
    batch_target: Duration,
    warm_up: Duration,
    mut f: impl FnMut(),
) -> Timing {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < warm_up || calls < 3 {
        f();
        calls += 1;
    }
    let per_call = start.elapsed() / calls;
    let batch = (batch_target.as_nanos() / per_call.as_nanos().max(1)).clamp(1, 1_000_000) as u32;
    let mut times: Vec<f64> = (0..samples.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(batch)
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Timing {
        median: times[times.len() / 2],
        min: times[0],
        max: times[times.len() - 1],
        batch,
    }
}
