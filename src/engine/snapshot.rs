//! One batch of a snapshot mapping: claim due state rows, send the upserts
//! through the connector's flow and the deletes through its `[delete]`
//! operation, and record every outcome fenced on the claim's lease.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::decide::{after_failure, decide};
use super::{LoopGate, Run, handed_back, lease_deadline, send_bounded, sync_rows};
use crate::plan::MappingPlan;
use crate::send::RowOutcome;
use crate::send::delete::DeleteTarget;
use crate::snapshot::SnapshotFeed;
use crate::snapshot::state::{
    COMPLETE, Claimed, DELETE, DELETED, ERROR, QUEUED, WriteBack, time_text,
};
use crate::store::{ClaimedRow, RowUpdate};

/// Claims, sends and records one batch; returns how many rows it claimed.
pub(crate) async fn process_batch(
    run: &Run,
    mapping: &MappingPlan,
    feed: &SnapshotFeed,
    due_by: DateTime<Utc>,
    gate: &LoopGate,
) -> anyhow::Result<usize> {
    let now = run.clock.utc();
    let lease = lease_deadline(now, mapping.schedule.lease);
    let limit = mapping.schedule.batch_size as usize;
    let claimed = feed.claim(limit, now.min(due_by), lease).await?;
    gate.claimed(claimed.len(), limit);
    if claimed.is_empty() {
        return Ok(0);
    }
    let count = claimed.len();
    let (deletes, upserts): (Vec<Claimed>, Vec<Claimed>) =
        claimed.into_iter().partition(|c| c.action == DELETE);
    let backend = feed.state_store().backend();
    let mut writes = send_upserts(run, mapping, upserts, backend).await;
    writes.extend(send_deletes(run, mapping, deletes, backend).await);
    feed.record(&writes).await?;
    Ok(count)
}

/// Sends the upserts as a queue's batch is sent (same rendering, flow and
/// retry schedule) and turns their updates into state writes.
async fn send_upserts(
    run: &Run,
    mapping: &MappingPlan,
    mut claimed: Vec<Claimed>,
    backend: crate::store::Backend,
) -> Vec<WriteBack> {
    if claimed.is_empty() {
        return Vec::new();
    }
    let keys: Vec<Option<String>> = claimed
        .iter()
        .map(|c| crm_key(c.row.get(&mapping.table.key_column)))
        .collect();
    let known_ids: Vec<bool> = claimed
        .iter()
        .map(|c| c.crm_id.as_deref().is_some_and(|id| !id.is_empty()))
        .collect();
    let mut rows: Vec<ClaimedRow> = claimed.iter_mut().map(as_claimed_row).collect();
    // A snapshot finds changes by diffing its source, not by fingerprint.
    let now = run.clock.utc();
    let earliest = rows.iter().map(|row| row.lease).min().unwrap_or(now);
    let count = rows.len();
    let synced = send_bounded(run, now, earliest, sync_rows(run, mapping, None, &mut rows)).await;
    let (outcomes, fingerprints) = synced.unwrap_or_else(|| {
        let outcome = RowOutcome::Failed(handed_back(run));
        (vec![outcome; count], vec![None; count])
    });
    let results = decide(run, mapping, &rows, outcomes, fingerprints, &known_ids);
    claimed
        .into_iter()
        .zip(results)
        .zip(keys)
        .map(|((claim, result), key)| {
            let base = write_back(&claim, backend);
            match result.update {
                RowUpdate::Complete { crm_id, .. } => WriteBack {
                    status: COMPLETE,
                    confirm: true,
                    crm_id,
                    crm_key: key,
                    set_error: true,
                    retry_count: Some(0),
                    ..base
                },
                // The sync mode forbade the write: done until the row changes again.
                RowUpdate::Skipped { reason, crm_id } => WriteBack {
                    status: COMPLETE,
                    confirm: true,
                    crm_id,
                    crm_key: key,
                    set_error: true,
                    error: Some(reason),
                    retry_count: Some(0),
                    ..base
                },
                update => unsuccessful(base, update, backend),
            }
        })
        .collect()
}

/// The claimed state row as the engine's flow takes it: its id is the
/// source key, its columns (moved out) the row the diff read.
fn as_claimed_row(claim: &mut Claimed) -> ClaimedRow {
    ClaimedRow {
        id: claim.source_key.clone(),
        row: std::mem::take(&mut claim.row),
        retry_count: claim.retry_count,
        lease: claim.lease,
        handle: None,
        // A snapshot's state rows are its own: no other mapping shares them.
        shares_lease: false,
    }
}

/// The record's key as the flows normalise it (trimmed, lower-cased).
fn crm_key(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_lowercase()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn write_back(claim: &Claimed, backend: crate::store::Backend) -> WriteBack {
    WriteBack {
        k: claim.source_key.clone(),
        lease: time_text(backend, claim.lease),
        status: QUEUED,
        ..WriteBack::default()
    }
}

/// A retry, a release or a failure, as a state write.
fn unsuccessful(base: WriteBack, update: RowUpdate, backend: crate::store::Backend) -> WriteBack {
    match update {
        RowUpdate::Complete { .. } | RowUpdate::Skipped { .. } => base,
        RowUpdate::RetryLater {
            error,
            retry_count,
            next_retry_at,
        } => WriteBack {
            set_error: true,
            error: Some(error),
            retry_count: Some(retry_count),
            next_retry_at: Some(time_text(backend, next_retry_at)),
            ..base
        },
        RowUpdate::Release { next_retry_at } => WriteBack {
            next_retry_at: next_retry_at.map(|t| time_text(backend, t)),
            ..base
        },
        RowUpdate::Failed { error, retry_count } => WriteBack {
            status: ERROR,
            set_error: true,
            error: Some(error),
            retry_count: Some(retry_count),
            ..base
        },
    }
}

/// Deletes the records of removed rows and turns the outcomes into state
/// writes: `Deleted` when the CRM confirmed (or answered 404).
async fn send_deletes(
    run: &Run,
    mapping: &MappingPlan,
    claimed: Vec<Claimed>,
    backend: crate::store::Backend,
) -> Vec<WriteBack> {
    if claimed.is_empty() {
        return Vec::new();
    }
    let targets: Vec<DeleteTarget> = claimed
        .iter()
        .map(|c| DeleteTarget {
            crm_id: c.crm_id.clone(),
            key: c.crm_key.clone(),
            trace_id: c.source_key.clone(),
        })
        .collect();
    let now = run.clock.utc();
    let earliest = claimed.iter().map(|c| c.lease).min().unwrap_or(now);
    let sends = crate::send::delete::send(&run.client, mapping, &targets);
    let outcomes = send_bounded(run, now, earliest, sends)
        .await
        .unwrap_or_else(|| vec![Err(handed_back(run)); targets.len()]);
    let mut deleted = 0;
    let writes = claimed
        .into_iter()
        .zip(outcomes)
        .map(|(claim, outcome)| {
            let base = write_back(&claim, backend);
            let key = claim.crm_key.as_deref().unwrap_or("");
            match outcome {
                Ok(()) => {
                    tracing::debug!(mapping = %mapping.name, row = %claim.source_key, %key, "Deleted the record of a removed row.");
                    deleted += 1;
                    WriteBack {
                        status: DELETED,
                        forget_fingerprint: true,
                        set_error: true,
                        retry_count: Some(0),
                        ..base
                    }
                }
                Err(failure) => {
                    let update = after_failure(&mapping.schedule, claim.retry_count, failure, now);
                    tracing::warn!(mapping = %mapping.name, row = %claim.source_key, %key, update = ?update, "The record of a removed row was not deleted.");
                    run.summary.add_unfinished_delete(&mapping.name, &update);
                    unsuccessful(base, update, backend)
                }
            }
        })
        .collect();
    run.summary.add_deleted(&mapping.name, deleted);
    writes
}
