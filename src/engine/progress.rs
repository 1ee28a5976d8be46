//! Progress of a connector's cycles: rows due at each cycle's start, and the
//! progress line every few seconds (counts, rate, percent, ETA).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{CycleStart, Feed, Run, RunSummary};
use crate::plan::MappingPlan;

/// Counts the rows due in each mapping starting a cycle, so that progress
/// lines can say how far the connector's cycles are and how long they have
/// left. A failed count only leaves those two out.
pub(super) async fn note_cycle_start(run: &Run, queues: &[(Arc<MappingPlan>, Feed)], at: Instant) {
    let now = run.clock.utc();
    for (mapping, feed) in queues {
        // A snapshot learns what is due only from its diff, which has not run yet.
        let Feed::Queue(queue) = feed else { continue };
        match queue.count_due(now).await {
            Ok(due) => {
                let total_before = run.summary.by_mapping.counts(&mapping.name).total();
                let start = CycleStart {
                    at,
                    total_before,
                    due,
                };
                let mut cycles = run.summary.cycle.lock().unwrap_or_else(|e| e.into_inner());
                cycles.insert(mapping.name.clone(), start);
            }
            Err(err) => {
                tracing::debug!(mapping = %mapping.name, error = format!("{err:#}"), "Could not count the due rows.");
            }
        }
    }
}

/// The connector's cycles under way, taken together: when the first
/// started, rows done since, and rows due at their starts.
pub(super) fn cycles_so_far(summary: &RunSummary) -> Option<(Instant, u64, u64)> {
    let cycles = summary.cycle.lock().unwrap_or_else(|e| e.into_inner());
    let totals: HashMap<String, u64> = summary
        .by_mapping
        .snapshot()
        .into_iter()
        .map(|(mapping, counts)| (mapping, counts.total()))
        .collect();
    let at = cycles.values().map(|c| c.at).min()?;
    let done = cycles
        .iter()
        .map(|(mapping, c)| {
            let now = totals.get(mapping).copied().unwrap_or(0);
            now.saturating_sub(c.total_before)
        })
        .sum();
    let due = cycles.values().map(|c| c.due).sum();
    Some((at, done, due))
}

/// Keeps a connector's bar on the current cycles: rows done of those due, the
/// rate, the time left. The bar goes when the task is aborted.
pub(super) async fn draw_progress(summary: Arc<RunSummary>, bar: crate::progress::Bar) {
    loop {
        if let Some((at, done, due)) = cycles_so_far(&summary) {
            bar.show(done, due, at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(super) async fn report_progress(summary: Arc<RunSummary>, connector: String, every: Duration) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let total = summary.total();
        let rate = total as f64 / started.elapsed().as_secs_f64().max(0.001);
        let (done, due, percent, eta_secs) = match cycles_so_far(&summary) {
            Some((at, done, due)) => {
                let (percent, eta) = cycle_progress(due, done, at.elapsed());
                (Some(done), Some(due), percent, eta)
            }
            None => (None, None, None, None),
        };
        tracing::info!(
            %connector,
            complete = summary.complete.load(Ordering::Relaxed),
            error = summary.failed.load(Ordering::Relaxed),
            retrying = summary.retrying.load(Ordering::Relaxed),
            unchanged = summary.unchanged.load(Ordering::Relaxed),
            skipped = summary.skipped.load(Ordering::Relaxed),
            deleted = summary.deleted.load(Ordering::Relaxed),
            rows_per_sec = rate.round() as u64,
            cycle_done = done,
            cycle_due = due,
            percent,
            eta_secs,
            "Progress."
        );
    }
}

/// How far a cycle that had `due` rows is after `done` of them in
/// `elapsed`: percent done, and seconds left at the rate so far. Rows
/// queued after the cycle started can take `done` past `due`: 100 %, 0 s.
pub(super) fn cycle_progress(due: u64, done: u64, elapsed: Duration) -> (Option<u64>, Option<u64>) {
    if due == 0 {
        return (None, None);
    }
    let percent = (done.min(due) * 100 / due).min(100);
    let secs = elapsed.as_secs_f64();
    let eta = (done > 0 && secs > 0.0).then(|| {
        let rate = done as f64 / secs;
        (due.saturating_sub(done) as f64 / rate).ceil() as u64
    });
    (Some(percent), eta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Counts;

    #[test]
    fn progress_adds_up_the_cycles_of_every_mapping_of_the_connector() {
        let summary = RunSummary::default();
        let one = |n| Counts {
            complete: n,
            ..Counts::default()
        };
        summary.by_mapping.add("a", &one(5), None);
        let at = Instant::now();
        for (mapping, due) in [("a", 10), ("b", 20)] {
            let total_before = summary.by_mapping.counts(mapping).total();
            let start = CycleStart {
                at,
                total_before,
                due,
            };
            summary.cycle.lock().unwrap().insert(mapping.into(), start);
        }
        summary.by_mapping.add("a", &one(4), None);
        summary.by_mapping.add("b", &one(6), None);
        // 4 of a's 10 and 6 of b's 20: the 5 before a's cycle do not count.
        assert_eq!(cycles_so_far(&summary), Some((at, 10, 30)));
    }

    #[test]
    fn a_cycle_reports_its_share_done_and_the_seconds_left_at_its_rate() {
        let ten_secs = Duration::from_secs(10);
        // 2,500 of 10,000 in 10 s: 250/s, so 7,500 left take 30 s.
        assert_eq!(
            cycle_progress(10_000, 2_500, ten_secs),
            (Some(25), Some(30))
        );
        // Nothing done yet: no rate, no estimate.
        assert_eq!(cycle_progress(10_000, 0, ten_secs), (Some(0), None));
        // Rows queued after the start: done passes due.
        assert_eq!(cycle_progress(100, 150, ten_secs), (Some(100), Some(0)));
        // Nothing was due (a watching run between batches).
        assert_eq!(cycle_progress(0, 0, ten_secs), (None, None));
    }
}
