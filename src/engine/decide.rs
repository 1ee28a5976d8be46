//! Deciding each row's next state from its outcome: complete, retry later,
//! error, or handed back, with the counts and log lines that go with it.

use serde_json::Value;

use super::Run;
use crate::history::Counts;
use crate::plan::MappingPlan;
use crate::send::RowOutcome;
use crate::send::retry::{RetryDecision, next_row_retry};
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
    let delay = schedule.retry_delay;
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
                RowOutcome::Permanent(error) => {
                    first_error.get_or_insert_with(|| error.clone());
                    tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, "Row failed permanently.");
                    batch.failed += 1;
                    RowUpdate::Failed { error, retry_count: row.retry_count }
                }
                RowOutcome::Transient(error) => match next_row_retry(row.retry_count, schedule.max_retries, delay, schedule.retry_exponential, now) {
                    RetryDecision::RetryAt { retry_count, at } => {
                        first_error.get_or_insert_with(|| error.clone());
                        tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, retry_count, retry_at = %at, "Row will be retried.");
                        batch.retrying += 1;
                        RowUpdate::RetryLater { error, retry_count, next_retry_at: at }
                    }
                    RetryDecision::GiveUp { retry_count } => {
                        first_error.get_or_insert_with(|| error.clone());
                        tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, retry_count, "Row failed after its last retry.");
                        batch.failed += 1;
                        RowUpdate::Failed { error: format!("{error} (gave up after {} retries)", retry_count - 1), retry_count }
                    }
                },
                RowOutcome::Deferred { until, reason } => {
                    tracing::info!(mapping = %mapping.name, row = %row.id, %key, %reason, until = %until, "Row deferred by a rate limit.");
                    batch.deferred += 1;
                    RowUpdate::Release { next_retry_at: Some(until) }
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
