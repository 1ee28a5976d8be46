//! Deleting CRM records through the connector's `[delete]` operation: for
//! snapshot rows that left their source, and for queue rows whose processing
//! status asks for it (`Delete`, see `engine::deletes`). A 404 counts as done, so a
//! delete repeated after a crash, or of a record someone else removed, is
//! harmless.

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{Map, Value};

use crate::plan::{DeletePlan, MappingPlan};
use crate::send::retry::{RetryDecision, next_row_retry};
use crate::send::{CrmClient, ReplyAction, RowOutcome};
use crate::store::RowUpdate;
use crate::template::OnEmpty;

/// One record to delete.
#[derive(Debug, Clone)]
pub(crate) struct DeleteTarget {
    /// The CRM id this mapping recorded for it.
    pub crm_id: Option<String>,
    /// Its key as it was synced.
    pub key: Option<String>,
    /// The row it belongs to (its id, or its source key).
    pub trace_id: String,
}

/// Deletes every target; outcomes in target order. `Synced` means the record
/// is gone (deleted now, or already).
pub(crate) async fn send(
    client: &CrmClient,
    mapping: &MappingPlan,
    targets: &[DeleteTarget],
) -> Vec<RowOutcome> {
    match &client.plan.delete {
        Some(plan) => delete_records(client, plan, mapping, targets).await,
        None => {
            let reason = format!(
                "connectors/{}.toml has no [delete] operation",
                mapping.connector
            );
            vec![RowOutcome::Permanent(reason); targets.len()]
        }
    }
}

/// A failed delete under the mapping's retry schedule.
pub(crate) fn failure(
    mapping: &MappingPlan,
    retry_count: i64,
    outcome: RowOutcome,
    now: DateTime<Utc>,
) -> RowUpdate {
    let schedule = &mapping.schedule;
    let delay = schedule.retry_delay;
    match outcome {
        RowOutcome::Synced { .. } => RowUpdate::Complete {
            crm_id: None,
            fingerprint: None,
        },
        // Nothing left to delete.
        RowOutcome::Unchanged => RowUpdate::Complete {
            crm_id: None,
            fingerprint: None,
        },
        // Deletes pass no sync mode; should one refuse, the record is not gone.
        RowOutcome::Skipped { reason, .. } => RowUpdate::Failed {
            error: reason,
            retry_count,
        },
        RowOutcome::Permanent(error) => RowUpdate::Failed { error, retry_count },
        RowOutcome::Transient(error) => match next_row_retry(
            retry_count,
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
async fn delete_records(
    client: &CrmClient,
    plan: &DeletePlan,
    mapping: &MappingPlan,
    targets: &[DeleteTarget],
) -> Vec<RowOutcome> {
    let contexts: Vec<Result<Value, String>> = targets
        .iter()
        .map(|target| context(target, mapping))
        .collect();
    let Some((item, max_items)) = &plan.batch else {
        return join_all(contexts.iter().map(|ctx| async move {
            match ctx {
                Ok(ctx) => outcome_of(client.send(&plan.op, ctx).await.action),
                Err(reason) => RowOutcome::Permanent(reason.clone()),
            }
        }))
        .await;
    };
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; targets.len()];
    let mut sendable = Vec::new();
    for (index, ctx) in contexts.iter().enumerate() {
        let rendered = ctx.clone().and_then(|ctx| {
            client
                .templates()
                .render_tree(item, &ctx, OnEmpty::Omit)
                .map_err(|err| format!("render error: {err}"))
        });
        match rendered {
            Ok(rendered) => sendable.push((index, rendered)),
            Err(reason) => outcomes[index] = Some(RowOutcome::Permanent(reason)),
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
        for (index, _) in *chunk {
            outcomes[*index] = Some(outcome.clone());
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every delete has an outcome"))
        .collect()
}

/// What a delete's templates see: `id`, `key`, `params`, `trace_id`.
fn context(target: &DeleteTarget, mapping: &MappingPlan) -> Result<Value, String> {
    let Some(id) = target.crm_id.clone() else {
        return Err("no CRM id was recorded for this record, so it cannot be deleted by id".into());
    };
    let mut ctx = Map::with_capacity(4);
    ctx.insert("id".into(), Value::String(id));
    ctx.insert(
        "key".into(),
        target.key.clone().map_or(Value::Null, Value::String),
    );
    ctx.insert("params".into(), Value::Object(mapping.params.clone()));
    ctx.insert("trace_id".into(), Value::String(target.trace_id.clone()));
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
