//! When requests arrived at the sandbox: its request counter, sampled every
//! few milliseconds from a task beside the run (the sandbox counts a request
//! when it arrives, before its simulated latency, as its rate limiter does).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::sandbox::Sandbox;

use super::total_requests;

/// How often the counter is read.
const EVERY: Duration = Duration::from_millis(5);

/// `(time since start, requests arrived so far)`, one entry per change.
pub struct Timeline {
    points: Arc<Mutex<Vec<(Duration, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    /// Starts sampling `sandbox`; times are measured from `start`.
    pub fn start(sandbox: Arc<Sandbox>, start: Instant) -> Timeline {
        let points = Arc::new(Mutex::new(Vec::new()));
        let sink = points.clone();
        let task = tokio::spawn(async move {
            let mut last = 0;
            loop {
                let n = total_requests(&sandbox.stats());
                if n != last {
                    sink.lock().unwrap().push((start.elapsed(), n));
                    last = n;
                }
                tokio::time::sleep(EVERY).await;
            }
        });
        Timeline { points, task }
    }

    /// Stops sampling and returns the points.
    pub fn finish(self) -> Arc<Mutex<Vec<(Duration, u64)>>> {
        self.task.abort();
        self.points
    }
}

/// The first time at least `n` requests had arrived.
pub fn time_of(points: &[(Duration, u64)], n: u64) -> Option<Duration> {
    points
        .iter()
        .find(|(_, count)| *count >= n)
        .map(|(t, _)| *t)
}

/// The rate after the first window's `n` requests, as a fraction of `n` per
/// `window`: how close the run kept to the limit once the burst was spent.
/// `None` when the run had no second window.
pub fn sustained_fraction(
    points: &[(Duration, u64)],
    n: u64,
    total: u64,
    window: Duration,
) -> Option<f64> {
    match (time_of(points, n), time_of(points, total)) {
        (Some(first), Some(last)) if total > n && last > first => {
            let rate = (total - n) as f64 / last.saturating_sub(first).as_secs_f64();
            Some(rate / (n as f64 / window.as_secs_f64()))
        }
        _ => None,
    }
}

/// With `BENCH_TIMELINE=PATH`, writes the points to PATH + `suffix` as
/// "seconds requests-arrived" lines, for plotting. A diagnostic only.
pub fn write_if_asked(points: &[(Duration, u64)], suffix: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::fmt::Write as _;
    let Ok(path) = std::env::var("BENCH_TIMELINE") else {
        return Ok(());
    };
    let path = format!("{path}{suffix}");
    let text = points.iter().fold(String::new(), |mut text, (t, n)| {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{:.3} {n}", t.as_secs_f64());
        text
    });
    std::fs::write(&path, text).with_context(|| format!("writing {path}"))
}
