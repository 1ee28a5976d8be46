//! Sync modes that forbid some writes: `update_only` never creates a record,
//! `create_only` never touches one that exists. Both look each key up first
//! with the connector's `upsert.lookup`, then run the connector's own flow
//! (batched where it is) for the rows the mode allows.
//!
//! The lookup and the write are two requests: a record created or deleted by
//! someone else between them can still be updated (`create_only`) or created
//! (`update_only`). Within the engine, rows sharing a key are one job, so it
//! never races itself.

use futures::future::join_all;

use super::client::{CrmClient, ReplyAction};
use super::flow::{RowJob, RowOutcome, execute, failure};
use crate::config::mapping::SyncMode;
use crate::plan::OpPlan;

/// Runs `jobs` as `mode` allows; outcomes are in job order.
pub async fn execute_in_mode(
    client: &CrmClient,
    jobs: &[RowJob],
    mode: SyncMode,
) -> Vec<RowOutcome> {
    if mode == SyncMode::Upsert {
        return execute(client, jobs).await;
    }
    let Some(find) = &client.plan.find else {
        // `engine check` refuses this; stay safe if a plan was built by hand.
        let reason = format!(
            "mode `{}` needs the connector's [upsert.lookup]",
            mode.as_str()
        );
        return vec![RowOutcome::Permanent(reason); jobs.len()];
    };
    let found = join_all(jobs.iter().map(|job| look_up(client, find, job))).await;
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; jobs.len()];
    let mut allowed = Vec::new();
    for (index, (job, found)) in jobs.iter().zip(found).enumerate() {
        match (mode, found) {
            (_, Err(outcome)) => outcomes[index] = Some(outcome),
            (SyncMode::UpdateOnly, Ok(Found::Yes(_)))
            | (SyncMode::CreateOnly, Ok(Found::No))
            | (SyncMode::Upsert, _) => allowed.push(index),
            (SyncMode::UpdateOnly, Ok(Found::No)) => {
                outcomes[index] = Some(RowOutcome::Skipped {
                    reason: format!(
                        "no CRM record has the key {}, and mode `update_only` does not create one",
                        job.key
                    ),
                    crm_id: None,
                });
            }
            (SyncMode::CreateOnly, Ok(Found::Yes(crm_id))) => {
                outcomes[index] = Some(RowOutcome::Skipped {
                    reason: format!(
                        "a CRM record with the key {} exists, and mode `create_only` leaves it untouched",
                        job.key
                    ),
                    crm_id,
                });
            }
        }
    }
    let allowed_jobs: Vec<RowJob> = allowed.iter().map(|&i| jobs[i].clone()).collect();
    let written = execute(client, &allowed_jobs).await;
    for (index, outcome) in allowed.into_iter().zip(written) {
        outcomes[index] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every job has an outcome"))
        .collect()
}

/// Whether the CRM holds a record with the job's key.
enum Found {
    /// Yes, with this id when the answer carried one.
    Yes(Option<String>),
    No,
}

async fn look_up(client: &CrmClient, find: &OpPlan, job: &RowJob) -> Result<Found, RowOutcome> {
    let reply = client.send(find, &job.ctx).await;
    match reply.action {
        ReplyAction::Success => Ok(Found::Yes(
            find.id_pointer
                .as_deref()
                .and_then(|p| reply.response.as_ref()?.id_at(p)),
        )),
        ReplyAction::NotFound => Ok(Found::No),
        other => Err(failure(other, &find.label)),
    }
}
