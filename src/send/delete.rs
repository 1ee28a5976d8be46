//! Deleting CRM records through the connector's `[delete]` operation: for
//! snapshot rows that left their source, and for queue rows whose processing
//! status asks for it (`Delete`, see `engine::deletes`). A 404 counts as done, so a
//! delete repeated after a crash, or of a record someone else removed, is
//! harmless.

use futures::future::join_all;
use serde_json::{Map, Value};

use crate::plan::{DeletePlan, MappingPlan};
use crate::send::{CrmClient, Failure, ReplyAction};
use crate::template::OnEmpty;

/// How one delete ended: the record is gone (deleted now, or already), or
/// why it is not.
pub(crate) type DeleteOutcome = Result<(), Failure>;

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

/// Deletes every target; outcomes in target order.
pub(crate) async fn send(
    client: &CrmClient,
    mapping: &MappingPlan,
    targets: &[DeleteTarget],
) -> Vec<DeleteOutcome> {
    match &client.plan.delete {
        Some(plan) => delete_records(client, plan, mapping, targets).await,
        None => {
            let reason = format!(
                "connectors/{}.toml has no [delete] operation",
                mapping.connector
            );
            vec![Err(Failure::Permanent(reason)); targets.len()]
        }
    }
}

/// Sends the deletes: one request per record, or batches of `max_items`.
async fn delete_records(
    client: &CrmClient,
    plan: &DeletePlan,
    mapping: &MappingPlan,
    targets: &[DeleteTarget],
) -> Vec<DeleteOutcome> {
    let contexts: Vec<Result<Value, String>> = targets
        .iter()
        .map(|target| context(target, mapping))
        .collect();
    let Some((item, max_items)) = &plan.batch else {
        return join_all(contexts.iter().map(|ctx| async move {
            match ctx {
                Ok(ctx) => outcome_of(client.send(&plan.op, ctx).await.action),
                Err(reason) => Err(Failure::Permanent(reason.clone())),
            }
        }))
        .await;
    };
    let mut outcomes: Vec<Option<DeleteOutcome>> = vec![None; targets.len()];
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
            Err(reason) => outcomes[index] = Some(Err(Failure::Permanent(reason))),
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
fn outcome_of(action: ReplyAction) -> DeleteOutcome {
    match action {
        ReplyAction::Success | ReplyAction::Lookup | ReplyAction::NotFound => Ok(()),
        ReplyAction::Failed(failure) => Err(failure),
        ReplyAction::Update(_) | ReplyAction::DropFields(..) => Err(Failure::Permanent(
            "the CRM's answer to a delete matched an upsert rule".into(),
        )),
    }
}
