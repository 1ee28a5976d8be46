//! Deciding each row's next state from its outcome: complete, retry later,
//! error, or handed back, with the counts and log lines that go with it.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Run;
use crate::history::Counts;
use crate::plan::{MappingPlan, SchedulePlan};
use crate::send::retry::{RetryDecision, next_row_retry};
use crate::send::{Failure, RowOutcome};
use crate::store::{ClaimedRow, OutcomeCounts, RowResult, RowUpdate};

/// Turns outcomes into database updates using the mapping's retry schedule.
/// Logs every row that did not sync at warn, each synced row at debug, and
/// one line per batch at info (a million rows make a million debug lines).
pub(crate) fn decide(
    run: &Run,
    mapping: &MappingPlan,
    rows: &[ClaimedRow],
    outcomes: Vec<RowOutcome>,
    mut fingerprints: Vec<Option<String>>,
    known_ids: &[bool],
) -> Vec<RowResult> {
    let now = run.clock.utc();
    let schedule = &mapping.schedule;
    let summary = &run.summary;
    let mut batch = Counts::default();
    let mut status_counts = OutcomeCounts::default();
    let mut first_error: Option<String> = None;
    let results = rows.iter()
        .zip(outcomes)
        .zip(fingerprints.iter_mut())
        .zip(known_ids)
        .map(|(((row, outcome), fingerprint), &known_id)| {
            let key = row.row.get(&mapping.table.key_column).and_then(Value::as_str).unwrap_or_default();
            let update = match outcome {
                RowOutcome::Synced { crm_id } => {
                    tracing::debug!(mapping = %mapping.name, row = %row.id, %key, crm_id = crm_id.as_deref().unwrap_or(""), "Synced row.");
                    batch.complete += 1;
                    if known_id { status_counts.updated += 1 } else { status_counts.created += 1 }
                    RowUpdate::Complete { crm_id, fingerprint: fingerprint.take() }
                }
                RowOutcome::Unchanged => {
                    tracing::debug!(mapping = %mapping.name, row = %row.id, %key, "Row unchanged since the CRM confirmed it; not sent.");
                    status_counts.unchanged += 1;
                    RowUpdate::Complete { crm_id: None, fingerprint: None }
                }
                RowOutcome::Skipped { reason, crm_id } => {
                    tracing::info!(mapping = %mapping.name, row = %row.id, %key, %reason, "Row skipped by the sync mode.");
                    status_counts.skipped += 1;
                    RowUpdate::Skipped { reason, crm_id }
                }
                RowOutcome::Failed(failure) => {
                    let permanent = matches!(failure, Failure::Permanent(_));
                    let reason = failure.reason().to_owned();
                    let update = after_failure(schedule, row.retry_count, failure, now);
                    match &update {
                        RowUpdate::Release { next_retry_at } => {
                            tracing::info!(mapping = %mapping.name, row = %row.id, %key, %reason, until = ?next_retry_at, "Row deferred by a rate limit.");
                            batch.deferred += 1;
                        }
                        RowUpdate::RetryLater { retry_count, next_retry_at, .. } => {
                            first_error.get_or_insert_with(|| reason.clone());
                            tracing::warn!(mapping = %mapping.name, row = %row.id, %key, error = %reason, retry_count, retry_at = %next_retry_at, "Row will be retried.");
                            batch.retrying += 1;
                        }
                        // `Failed`: the only other update a failure leads to.
                        _ => {
                            first_error.get_or_insert_with(|| reason.clone());
                            if permanent {
                                tracing::warn!(mapping = %mapping.name, row = %row.id, %key, error = %reason, "Row failed permanently.");
                            } else {
                                tracing::warn!(mapping = %mapping.name, row = %row.id, %key, error = %reason, "Row failed after its last retry.");
                            }
                            batch.failed += 1;
                        }
                    }
                    update
                }
            };
            RowResult::of(row, update)
        })
        .collect();
    tracing::info!(
        mapping = %mapping.name,
        rows = rows.len(),
        complete = batch.complete,
        error = batch.failed,
        retrying = batch.retrying,
        deferred = batch.deferred,
        unchanged = status_counts.unchanged,
        skipped = status_counts.skipped,
        "Synced a batch."
    );
    summary.add(&summary.complete, batch.complete);
    summary.add(&summary.failed, batch.failed);
    summary.add(&summary.retrying, batch.retrying);
    summary.add(&summary.deferred, batch.deferred);
    status_counts.failed = batch.failed;
    batch.unchanged = status_counts.unchanged;
    batch.skipped = status_counts.skipped;
    summary.add(&summary.unchanged, status_counts.unchanged);
    summary.add(&summary.skipped, status_counts.skipped);
    summary.add(&summary.created, status_counts.created);
    summary.count_for(&mapping.name, &status_counts);
    summary
        .by_mapping
        .add(&mapping.name, &batch, first_error.as_deref());
    let metrics = crate::metrics::global();
    metrics.rows(&mapping.name, &batch);
    metrics.more_rows(&mapping.name, "unchanged", status_counts.unchanged);
    metrics.more_rows(&mapping.name, "skipped", status_counts.skipped);
    results
}

/// A row's next state after `failure` under the mapping's retry schedule: an
/// error for good, a retry at the schedule's next time (an error once the
/// retries are spent), or back to the queue until the hand-back's time with
/// no retry spent. Upserts and deletes alike.
pub(crate) fn after_failure(
    schedule: &SchedulePlan,
    retry_count: i64,
    failure: Failure,
    now: DateTime<Utc>,
) -> RowUpdate {
    match failure {
        Failure::Permanent(error) => RowUpdate::Failed { error, retry_count },
        Failure::Transient(error) => match next_row_retry(
            retry_count,
            schedule.max_retries,
            schedule.retry_delay,
            schedule.retry_exponential,
            now,
        ) {
            RetryDecision::RetryAt { retry_count, at } => RowUpdate::RetryLater {
                error,
                retry_count,
                next_retry_at: at,
            },
            RetryDecision::GiveUp { retry_count } => RowUpdate::Failed {
                error: format!("{error} (gave up after {} retries)", retry_count - 1),
                retry_count,
            },
        },
        Failure::Deferred { until, .. } => RowUpdate::Release {
            next_retry_at: Some(until),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn schedule(max_retries: u32) -> SchedulePlan {
        SchedulePlan {
            interval: Duration::from_secs(60),
            batch_size: 100,
            max_instances: 1,
            max_retries,
            retry_delay: Duration::from_secs(30),
            retry_exponential: false,
            lease: Duration::from_secs(300),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn a_permanent_failure_ends_the_row_in_error_without_spending_a_retry() {
        let update = after_failure(
            &schedule(3),
            1,
            Failure::Permanent("bad email".into()),
            now(),
        );
        assert_eq!(
            update,
            RowUpdate::Failed {
                error: "bad email".into(),
                retry_count: 1
            }
        );
    }

    #[test]
    fn a_transient_failure_is_retried_after_the_schedules_delay() {
        let update = after_failure(
            &schedule(3),
            0,
            Failure::Transient("HTTP 503".into()),
            now(),
        );
        assert_eq!(
            update,
            RowUpdate::RetryLater {
                error: "HTTP 503".into(),
                retry_count: 1,
                next_retry_at: now() + chrono::Duration::seconds(30),
            }
        );
    }

    #[test]
    fn a_transient_failure_past_the_last_retry_ends_in_error_saying_so() {
        let update = after_failure(
            &schedule(2),
            2,
            Failure::Transient("HTTP 503".into()),
            now(),
        );
        assert_eq!(
            update,
            RowUpdate::Failed {
                error: "HTTP 503 (gave up after 2 retries)".into(),
                retry_count: 3
            }
        );
    }

    #[test]
    fn a_hand_back_returns_the_row_until_its_time_without_spending_a_retry() {
        let until = now() + chrono::Duration::hours(1);
        let failure = Failure::Deferred {
            until,
            reason: "rate limited".into(),
        };
        assert_eq!(
            after_failure(&schedule(3), 2, failure, now()),
            RowUpdate::Release {
                next_retry_at: Some(until)
            }
        );
    }
}
