//! Sync modes that forbid some writes, built from the connector's
//! one-record operations (`upsert.lookup`, `upsert.create`, `upsert.update`):
//!
//! - `update_only` looks each key up; a key with no record is skipped. A
//!   found record is updated by id with `upsert.update` (a 404 then means it
//!   was deleted meanwhile: skipped too), or, without one, through the
//!   connector's own flow (batched where it is).
//! - `create_only` sends `upsert.create`, whose conflict rule (`then =
//!   "update"` or `"lookup"`) means the record exists: skipped, untouched.
//!   Without a create operation it looks each key up and runs the flow for
//!   the keys not found.
//!
//! The lookup-then-flow paths are two requests: a record created or deleted
//! by someone else between them can still be updated (`create_only`) or
//! created (`update_only`). Within the engine, rows sharing a key are one
//! job, so it never races itself.

use futures::future::join_all;
use serde_json::Value;

use super::client::CrmClient;
use super::flow::{execute, without_fields};
use super::row::{ReplyAction, RowJob, RowOutcome, failure};
use crate::plan::OpPlan;
use crate::plan::SyncMode;

/// Runs `jobs` as `mode` allows; outcomes are in job order.
pub async fn execute_in_mode(
    client: &CrmClient,
    jobs: &[RowJob],
    mode: SyncMode,
) -> Vec<RowOutcome> {
    let keyed = &client.plan.keyed;
    match (mode, &keyed.lookup, &keyed.create) {
        (SyncMode::Upsert, _, _) => execute(client, jobs).await,
        (SyncMode::CreateOnly, _, Some(create)) => {
            join_all(jobs.iter().map(|job| create_only(client, create, job))).await
        }
        (_, Some(lookup), _) => after_lookup(client, lookup, jobs, mode).await,
        // `engine check` refuses this; stay safe if a plan was built by hand.
        (_, None, _) => {
            let reason = format!(
                "mode `{}` needs the connector's [upsert.lookup]",
                mode.as_str()
            );
            vec![RowOutcome::permanent(reason); jobs.len()]
        }
    }
}

/// Looks every key up, skips those the mode forbids, and writes the others.
async fn after_lookup(
    client: &CrmClient,
    lookup: &OpPlan,
    jobs: &[RowJob],
    mode: SyncMode,
) -> Vec<RowOutcome> {
    let found = join_all(jobs.iter().map(|job| look_up(client, lookup, job))).await;
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; jobs.len()];
    let mut by_id = Vec::new();
    let mut through_flow = Vec::new();
    for (index, (job, found)) in jobs.iter().zip(found).enumerate() {
        match (mode, found) {
            (_, Err(outcome)) => outcomes[index] = Some(outcome),
            (SyncMode::UpdateOnly, Ok(None)) => outcomes[index] = Some(no_record(job)),
            (SyncMode::UpdateOnly, Ok(Some(Some(id)))) if client.plan.keyed.update.is_some() => {
                by_id.push((index, id));
            }
            (SyncMode::CreateOnly, Ok(Some(crm_id))) => outcomes[index] = Some(exists(job, crm_id)),
            _ => through_flow.push(index),
        }
    }
    if let Some(update) = &client.plan.keyed.update {
        let updates = by_id
            .iter()
            .map(|(index, id)| update_by_id(client, update, &jobs[*index], id.clone()));
        for ((index, _), outcome) in by_id.iter().zip(join_all(updates).await) {
            outcomes[*index] = Some(outcome);
        }
    }
    let flow_jobs: Vec<RowJob> = through_flow.iter().map(|&i| jobs[i].clone()).collect();
    for (index, outcome) in through_flow
        .into_iter()
        .zip(execute(client, &flow_jobs).await)
    {
        outcomes[index] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every job has an outcome"))
        .collect()
}

fn no_record(job: &RowJob) -> RowOutcome {
    RowOutcome::Skipped {
        reason: format!(
            "no CRM record has the key {}, and mode `update_only` does not create one",
            job.key
        ),
        crm_id: None,
    }
}

fn exists(job: &RowJob, crm_id: Option<String>) -> RowOutcome {
    RowOutcome::Skipped {
        reason: format!(
            "a CRM record with the key {} exists, and mode `create_only` leaves it untouched",
            job.key
        ),
        crm_id,
    }
}

/// `Ok(None)`: no record; `Ok(Some(id))`: one, with its id when the answer
/// carried it.
async fn look_up(
    client: &CrmClient,
    lookup: &OpPlan,
    job: &RowJob,
) -> Result<Option<Option<String>>, RowOutcome> {
    let reply = client.send(lookup, &job.ctx).await;
    match reply.action {
        ReplyAction::Success => Ok(Some(id_in(lookup, reply.response.as_ref()))),
        ReplyAction::NotFound => Ok(None),
        other => Err(failure(other, &lookup.label)),
    }
}

fn id_in(op: &OpPlan, response: Option<&super::response::Response>) -> Option<String> {
    op.id_pointer
        .as_deref()
        .and_then(|p| response.and_then(|r| r.id_at(p)))
}

async fn update_by_id(client: &CrmClient, update: &OpPlan, job: &RowJob, id: String) -> RowOutcome {
    let mut ctx = job.ctx.clone();
    ctx["id"] = Value::String(id.clone());
    let reply = client.send(update, &ctx).await;
    match reply.action {
        ReplyAction::Success => RowOutcome::Synced {
            crm_id: Some(id_in(update, reply.response.as_ref()).unwrap_or(id)),
        },
        // Deleted since the lookup: still nothing to update.
        ReplyAction::NotFound => no_record(job),
        ReplyAction::DropFields(names, reason) => match without_fields(job, &names) {
            Some(lighter) => Box::pin(update_by_id(client, update, &lighter, id)).await,
            None => RowOutcome::permanent(reason),
        },
        other => failure(other, &update.label),
    }
}

/// Creates the record; a conflict (a rule saying `update` or `lookup`)
/// means it exists, and it is left as it is.
async fn create_only(client: &CrmClient, create: &OpPlan, job: &RowJob) -> RowOutcome {
    let reply = client.send(create, &job.ctx).await;
    match reply.action {
        ReplyAction::Success => RowOutcome::Synced {
            crm_id: id_in(create, reply.response.as_ref()),
        },
        ReplyAction::Update(id) => exists(job, Some(id)),
        ReplyAction::Lookup => {
            let id = match &client.plan.keyed.lookup {
                Some(lookup) => look_up(client, lookup, job).await.ok().flatten().flatten(),
                None => None,
            };
            exists(job, id)
        }
        ReplyAction::DropFields(names, reason) => match without_fields(job, &names) {
            Some(lighter) => Box::pin(create_only(client, create, &lighter)).await,
            None => RowOutcome::permanent(reason),
        },
        other => failure(other, &create.label),
    }
}
