//! The upsert flows: how the requests of a connector combine to create or update
//! one record and learn its id. Every flow ends each row in a [`RowOutcome`].
//! The batch flow lives in `batch.rs`; both share the row types of `row.rs`.

use futures::future::join_all;
use serde_json::Value;

use super::client::CrmClient;
use super::response::Response;
use super::row::{ReplyAction, RowJob, RowOutcome, failure};
use super::{batch, bulk};
use crate::plan::{Flow, OpPlan};

/// Runs the connector's flow for every job; outcomes are in job order.
///
/// With a `[bulk]` flow and at least its `min_rows` jobs, they go as bulk
/// jobs first; the rows those do not confirm take the per-row flow.
pub async fn execute(client: &CrmClient, jobs: &[RowJob]) -> Vec<RowOutcome> {
    let Some(plan) = client
        .plan
        .bulk
        .as_ref()
        .filter(|bulk| jobs.len() >= bulk.min_rows)
        .filter(|bulk| bulk.usable_with(&bulk::mapping_params(jobs)))
    else {
        return per_row(client, jobs).await;
    };
    let confirmed = bulk::run(client, plan, jobs).await;
    let left: Vec<usize> = (0..jobs.len())
        .filter(|&i| confirmed[i].is_none())
        .collect();
    if !left.is_empty() {
        tracing::info!(
            rows = left.len(),
            "Rows the bulk job did not confirm go one by one."
        );
    }
    let left_jobs: Vec<RowJob> = left.iter().map(|&i| jobs[i].clone()).collect();
    let mut rest = per_row(client, &left_jobs).await.into_iter();
    confirmed
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or_else(|| {
                rest.next()
                    .unwrap_or_else(|| RowOutcome::transient("no outcome"))
            })
        })
        .collect()
}

/// The connector's `[upsert]` flow for every job; outcomes in job order.
async fn per_row(client: &CrmClient, jobs: &[RowJob]) -> Vec<RowOutcome> {
    match &client.plan.flow {
        Flow::Batch { batch } => batch::run(client, batch, jobs).await,
        Flow::Single {
            upsert,
            lookup,
            update,
        } => {
            join_all(
                jobs.iter()
                    .map(|job| single(client, upsert, lookup.as_ref(), update.as_ref(), job)),
            )
            .await
        }
        Flow::LookupThenWrite {
            lookup,
            create,
            update,
        } => {
            join_all(
                jobs.iter()
                    .map(|job| lookup_then_write(client, lookup, create, update, job)),
            )
            .await
        }
    }
}

async fn single(
    client: &CrmClient,
    upsert: &OpPlan,
    lookup: Option<&OpPlan>,
    update: Option<&OpPlan>,
    job: &RowJob,
) -> RowOutcome {
    let reply = client.send(upsert, &job.ctx).await;
    resolve(
        client,
        reply.action,
        reply.response.as_ref(),
        upsert,
        lookup,
        update,
        job,
    )
    .await
}

/// Turns a write's reply into an outcome, following `lookup` / `update` redirections.
async fn resolve(
    client: &CrmClient,
    action: ReplyAction,
    response: Option<&Response>,
    op: &OpPlan,
    lookup: Option<&OpPlan>,
    update: Option<&OpPlan>,
    job: &RowJob,
) -> RowOutcome {
    match action {
        ReplyAction::Success => {
            let id = op
                .id_pointer
                .as_deref()
                .and_then(|p| response.and_then(|r| r.id_at(p)));
            match (id, lookup, op.id_pointer.as_deref()) {
                (Some(id), _, _) => RowOutcome::Synced { crm_id: Some(id) },
                (None, Some(lookup), Some(_)) => find_id(client, lookup, job).await,
                (None, None, Some(pointer)) => missing_id(&op.label, pointer, response),
                (None, _, None) => RowOutcome::Synced { crm_id: None },
            }
        }
        ReplyAction::Lookup => match lookup {
            Some(lookup) => find_id(client, lookup, job).await,
            None => RowOutcome::Synced { crm_id: None },
        },
        ReplyAction::DropFields(names, reason) => match without_fields(job, &names) {
            Some(lighter) => {
                tracing::warn!(key = %job.key, fields = ?names, %reason, "Sending once more without the rejected fields.");
                let reply = client.send(op, &lighter.ctx).await;
                Box::pin(resolve(
                    client,
                    reply.action,
                    reply.response.as_ref(),
                    op,
                    lookup,
                    update,
                    &lighter,
                ))
                .await
            }
            None => RowOutcome::permanent(reason),
        },
        ReplyAction::Update(id) => match update {
            Some(update) => update_existing(client, update, job, id).await,
            None => RowOutcome::permanent(format!(
                "record exists with id {id} but the connector has no update operation"
            )),
        },
        other => failure(other, &op.label),
    }
}

/// The job without `names` in its fields; `None` when it has none of them (so a
/// rule that fires again cannot loop).
pub(super) fn without_fields(job: &RowJob, names: &[String]) -> Option<RowJob> {
    let fields = job.ctx.get("fields")?.as_object()?;
    if !names.iter().any(|name| fields.contains_key(name)) {
        return None;
    }
    let mut lighter = job.clone();
    if let Some(Value::Object(fields)) = lighter.ctx.get_mut("fields") {
        for name in names {
            fields.remove(name);
        }
    }
    Some(lighter)
}

/// Looks the record up by key after a write that returned no id.
async fn find_id(client: &CrmClient, lookup: &OpPlan, job: &RowJob) -> RowOutcome {
    let reply = client.send(lookup, &job.ctx).await;
    match reply.action {
        ReplyAction::Success => match lookup
            .id_pointer
            .as_deref()
            .and_then(|p| reply.response.as_ref()?.id_at(p))
        {
            Some(id) => RowOutcome::Synced { crm_id: Some(id) },
            None => RowOutcome::transient("written, but the lookup returned no id yet"),
        },
        ReplyAction::NotFound => {
            RowOutcome::transient("written, but the lookup did not find the record yet")
        }
        other => failure(other, &lookup.label),
    }
}

async fn update_existing(
    client: &CrmClient,
    update: &OpPlan,
    job: &RowJob,
    id: String,
) -> RowOutcome {
    let mut ctx = job.ctx.clone();
    ctx["id"] = Value::String(id.clone());
    let reply = client.send(update, &ctx).await;
    match reply.action {
        ReplyAction::Success => {
            let returned = update
                .id_pointer
                .as_deref()
                .and_then(|p| reply.response.as_ref()?.id_at(p));
            RowOutcome::Synced {
                crm_id: Some(returned.unwrap_or(id)),
            }
        }
        other => failure(other, &update.label),
    }
}

async fn lookup_then_write(
    client: &CrmClient,
    lookup: &OpPlan,
    create: &OpPlan,
    update: &OpPlan,
    job: &RowJob,
) -> RowOutcome {
    let reply = client.send(lookup, &job.ctx).await;
    let found = match reply.action {
        ReplyAction::Success => lookup
            .id_pointer
            .as_deref()
            .and_then(|p| reply.response.as_ref()?.id_at(p)),
        ReplyAction::NotFound => None,
        other => return failure(other, &lookup.label),
    };
    if let Some(id) = found {
        return update_existing(client, update, job, id).await;
    }
    // Not found: create. A search index may lag behind a record created moments
    // ago, so a conflict on create names the existing id and becomes an update.
    let reply = client.send(create, &job.ctx).await;
    resolve(
        client,
        reply.action,
        reply.response.as_ref(),
        create,
        None,
        Some(update),
        job,
    )
    .await
}

/// A success that lacks the id the connector says it carries: the row is not
/// `Complete` without its record id. The write may have been applied, so the
/// message says so; the row's retry upserts again (no duplicate: an upsert).
fn missing_id(label: &str, pointer: &str, response: Option<&Response>) -> RowOutcome {
    let status = response.map_or_else(String::new, |r| format!("HTTP {} ", r.status));
    RowOutcome::transient(format!(
        "{label}: {status}success, but the response has no record id at `{pointer}` \
         (the write may have been applied)"
    ))
}
