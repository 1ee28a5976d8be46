//! One batch of a snapshot mapping: claim due state rows, send the upserts
//! through the connector's flow and the deletes through its `[delete]`
//! operation, and record every outcome fenced on the claim's lease.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{Map, Value};

use super::SnapshotFeed;
use super::state::{COMPLETE, Claimed, DELETE, DELETED, ERROR, QUEUED, WriteBack, time_text};
use crate::crm::{CrmClient, ReplyAction, RowOutcome};
use crate::engine::{Run, decide, sync_rows};
use crate::plan::{DeletePlan, MappingPlan};
use crate::retry::{RetryDecision, next_row_retry};
use crate::store::{ClaimedRow, RowUpdate};
use crate::template::OnEmpty;

/// Claims, sends and records one batch; returns how many rows it claimed.
pub(crate) async fn process_batch(
    run: &Run,
    mapping: &MappingPlan,
    feed: &SnapshotFeed,
) -> anyhow::Result<usize> {
    let now = run.clock.utc();
    let lease = now + chrono::Duration::seconds(mapping.schedule.lease_secs as i64);
    let claimed = feed
        .claim(mapping.schedule.batch_size as usize, now, lease)
        .await?;
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
    claimed: Vec<Claimed>,
    backend: crate::store::Backend,
) -> Vec<WriteBack> {
    if claimed.is_empty() {
        return Vec::new();
    }
    let keys: Vec<Option<String>> = claimed
        .iter()
        .map(|c| crm_key(c.row.get(&mapping.table.key_column)))
        .collect();
    let mut rows: Vec<ClaimedRow> = claimed.iter().map(as_claimed_row).collect();
    let outcomes = sync_rows(run, mapping, &mut rows).await;
    let results = decide(run, mapping, &rows, outcomes);
    claimed
        .into_iter()
        .zip(results)
        .zip(keys)
        .map(|((claim, result), key)| {
            let base = write_back(&claim, backend);
            match result.update {
                RowUpdate::Complete { crm_id } => WriteBack {
                    status: COMPLETE,
                    confirm: true,
                    crm_id,
                    crm_key: key,
                    set_error: true,
                    retry_count: Some(0),
                    ..base
                },
                update => unsuccessful(base, update, backend),
            }
        })
        .collect()
}

/// The claimed state row as the engine's flow takes it: its id is the
/// source key, its columns the row the diff read.
fn as_claimed_row(claim: &Claimed) -> ClaimedRow {
    ClaimedRow {
        id: claim.source_key.clone(),
        row: claim.row.clone(),
        retry_count: claim.retry_count,
        lease: claim.lease,
        handle: None,
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
        RowUpdate::Complete { .. } => base,
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
    let outcomes = match &run.client.plan.delete {
        Some(plan) => delete_records(&run.client, plan, mapping, &claimed).await,
        None => {
            let reason = format!(
                "connectors/{}.toml has no [delete] operation",
                mapping.connector
            );
            vec![RowOutcome::Permanent(reason); claimed.len()]
        }
    };
    let now = run.clock.utc();
    let mut deleted = 0;
    let writes = claimed
        .into_iter()
        .zip(outcomes)
        .map(|(claim, outcome)| {
            let base = write_back(&claim, backend);
            let key = claim.crm_key.as_deref().unwrap_or("");
            match outcome {
                RowOutcome::Synced { .. } => {
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
                outcome => {
                    let update = delete_failure(mapping, &claim, outcome, now);
                    tracing::warn!(mapping = %mapping.name, row = %claim.source_key, %key, update = ?update, "The record of a removed row was not deleted.");
                    unsuccessful(base, update, backend)
                }
            }
        })
        .collect();
    run.summary.add_deleted(deleted);
    writes
}

/// A failed delete under the mapping's retry schedule.
fn delete_failure(
    mapping: &MappingPlan,
    claim: &Claimed,
    outcome: RowOutcome,
    now: DateTime<Utc>,
) -> RowUpdate {
    let schedule = &mapping.schedule;
    let delay = Duration::from_secs(schedule.retry_delay_secs);
    match outcome {
        RowOutcome::Synced { .. } => RowUpdate::Complete { crm_id: None },
        RowOutcome::Permanent(error) => RowUpdate::Failed {
            error,
            retry_count: claim.retry_count,
        },
        RowOutcome::Transient(error) => match next_row_retry(
            claim.retry_count,
            schedule.max_retries,
            delay,
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
        RowOutcome::Deferred { until, .. } => RowUpdate::Release {
            next_retry_at: Some(until),
        },
    }
}

/// Sends the deletes: one request per record, or batches of `max_items`.
/// Outcomes are in `claimed` order.
async fn delete_records(
    client: &CrmClient,
    plan: &DeletePlan,
    mapping: &MappingPlan,
    claimed: &[Claimed],
) -> Vec<RowOutcome> {
    let contexts: Vec<Result<Value, String>> = claimed
        .iter()
        .map(|claim| delete_context(claim, mapping))
        .collect();
    match &plan.batch {
        None => {
            join_all(contexts.iter().map(|ctx| async move {
                match ctx {
                    Ok(ctx) => outcome_of(client.send(&plan.op, ctx).await.action),
                    Err(reason) => RowOutcome::Permanent(reason.clone()),
                }
            }))
            .await
        }
        Some((item, max_items)) => {
            let mut outcomes: Vec<Option<RowOutcome>> = vec![None; claimed.len()];
            let mut sendable = Vec::new();
            for (index, ctx) in contexts.iter().enumerate() {
                match ctx {
                    Ok(ctx) => match client.templates().render_tree(item, ctx, OnEmpty::Omit) {
                        Ok(rendered) => sendable.push((index, rendered)),
                        Err(err) => {
                            outcomes[index] =
                                Some(RowOutcome::Permanent(format!("render error: {err}")))
                        }
                    },
                    Err(reason) => outcomes[index] = Some(RowOutcome::Permanent(reason.clone())),
                }
            }
            let chunks: Vec<&[(usize, Value)]> = sendable.chunks((*max_items).max(1)).collect();
            let replies = join_all(chunks.iter().map(|chunk| {
                let mut ctx = Map::with_capacity(2);
                let items = chunk.iter().map(|(_, item)| item.clone()).collect();
                ctx.insert("items".into(), Value::Array(items));
                ctx.insert("params".into(), Value::Object(mapping.params.clone()));
                client.send_owned(&plan.op, Value::Object(ctx))
            }))
            .await;
            for (chunk, reply) in chunks.iter().zip(replies) {
                let outcome = outcome_of(reply.action);
                for (index, _) in chunk.iter() {
                    outcomes[*index] = Some(outcome.clone());
                }
            }
            outcomes
                .into_iter()
                .map(|o| o.expect("every delete has an outcome"))
                .collect()
        }
    }
}

/// What a delete's templates see: `id`, `key`, `params`.
fn delete_context(claim: &Claimed, mapping: &MappingPlan) -> Result<Value, String> {
    let id = claim
        .crm_id
        .clone()
        .context("no CRM id was recorded for this record, so it cannot be deleted by id");
    let id = id.map_err(|e| e.to_string())?;
    let mut ctx = Map::with_capacity(4);
    ctx.insert("id".into(), Value::String(id));
    ctx.insert(
        "key".into(),
        claim.crm_key.clone().map_or(Value::Null, Value::String),
    );
    ctx.insert("params".into(), Value::Object(mapping.params.clone()));
    ctx.insert("trace_id".into(), Value::String(claim.source_key.clone()));
    Ok(Value::Object(ctx))
}

/// A delete's reply as a row outcome: any success (a 404 included, see
/// `plan::connector::build_delete`) means the record is gone.
fn outcome_of(action: ReplyAction) -> RowOutcome {
    match action {
        ReplyAction::Success | ReplyAction::Lookup | ReplyAction::NotFound => {
            RowOutcome::Synced { crm_id: None }
        }
        ReplyAction::Permanent(reason) => RowOutcome::Permanent(reason),
        ReplyAction::Transient(reason) => RowOutcome::Transient(reason),
        ReplyAction::Deferred { until, reason } => RowOutcome::Deferred { until, reason },
        ReplyAction::Update(_) | ReplyAction::DropFields(..) => {
            RowOutcome::Permanent("the CRM's answer to a delete matched an upsert rule".into())
        }
    }
}
