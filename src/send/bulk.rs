//! The asynchronous bulk flow (`[bulk]`): submit many rows as one job, poll
//! the job until it is done, then confirm each row by reading back what the
//! job wrote (a results document, or the records changed since the job
//! started) and matching it on the key.
//!
//! A row the job does not confirm is left to the per-row flow, whose answer
//! is the row's own (an invalid email the job skipped silently gets its
//! error message there). Every wait here is bounded by the rows' lease and
//! ends on shutdown (see [`super::wait`]): a job that outlives them hands the
//! rows back, and their next claim submits them again. A job is an upsert by
//! key, so submitting it twice (after a crash too) never makes a duplicate.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::join_all;
use serde_json::{Map, Value};

use super::client::CrmClient;
use super::response::id_text;
use super::row::{Failure, ReplyAction, RowJob, RowOutcome, failure};
use super::wait::{self, Stop};
use crate::plan::BulkPlan;
use crate::template::OnEmpty;

/// Room left in a request under `max_request_bytes` for the body's envelope.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// Runs `jobs` through bulk jobs of at most `max_rows` rows (and, when the
/// connector caps request size, of at most that many bytes). Outcomes are in
/// job order; `None` is a row the job did not confirm, for the per-row flow.
pub async fn run(client: &CrmClient, plan: &BulkPlan, jobs: &[RowJob]) -> Vec<Option<RowOutcome>> {
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; jobs.len()];
    let mut items: Vec<(usize, Value, usize)> = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        match client
            .templates()
            .render_tree(&plan.item, &job.ctx, OnEmpty::Omit)
        {
            Ok(item) => {
                let size = serde_json::to_vec(&item).map_or(0, |bytes| bytes.len());
                items.push((index, item, size));
            }
            Err(err) => {
                outcomes[index] = Some(RowOutcome::permanent(format!("render error: {err}")));
            }
        }
    }
    let byte_cap = client
        .plan
        .max_request_bytes
        .map(|limit| limit.saturating_sub(ENVELOPE_BYTES));
    let chunks = chunk(items, plan.max_rows.max(1), byte_cap);
    let params = params_of(plan, jobs);
    let results = join_all(
        chunks
            .into_iter()
            .map(|chunk| run_job(client, plan, jobs, chunk, &params)),
    )
    .await;
    for (index, outcome) in results.into_iter().flatten() {
        outcomes[index] = outcome;
    }
    outcomes
}

/// Splits rendered items into jobs of at most `max_rows` items and, with a
/// byte cap, at most that many bytes. An item alone over the cap goes in no
/// job: the per-row flow reports it as too large.
fn chunk(
    items: Vec<(usize, Value, usize)>,
    max_rows: usize,
    byte_cap: Option<usize>,
) -> Vec<Vec<(usize, Value)>> {
    let mut chunks = Vec::new();
    let mut current: Vec<(usize, Value)> = Vec::new();
    let mut bytes = 0usize;
    for (index, item, size) in items {
        if byte_cap.is_some_and(|cap| size > cap) {
            continue;
        }
        let full = current.len() >= max_rows
            || byte_cap.is_some_and(|cap| bytes.saturating_add(size + 1) > cap);
        if full && !current.is_empty() {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(size + 1);
        current.push((index, item));
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The params bulk requests see: the mapping's, then those environment
/// variables set (`bulk.params_env`).
fn params_of(plan: &BulkPlan, jobs: &[RowJob]) -> Value {
    Value::Object(plan.params(&mapping_params(jobs)))
}

/// The mapping's params, as every job of a claim carries them.
pub(super) fn mapping_params(jobs: &[RowJob]) -> Map<String, Value> {
    jobs.first()
        .and_then(|job| job.ctx.get("params"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

type Outcomes = Vec<(usize, Option<RowOutcome>)>;

/// One job: submit, poll, confirm.
async fn run_job(
    client: &CrmClient,
    plan: &BulkPlan,
    jobs: &[RowJob],
    chunk: Vec<(usize, Value)>,
    params: &Value,
) -> Outcomes {
    let indexes: Vec<usize> = chunk.iter().map(|(index, _)| *index).collect();
    let all = |outcome: Option<RowOutcome>| -> Outcomes {
        indexes.iter().map(|&i| (i, outcome.clone())).collect()
    };
    let items: Vec<Value> = chunk.into_iter().map(|(_, item)| item).collect();
    let rows = items.len();
    let started = client.clock().utc();
    let ctx = Value::Object(Map::from_iter([
        ("items".to_string(), Value::Array(items)),
        ("params".to_string(), params.clone()),
    ]));
    let reply = client.send_owned(&plan.submit, ctx).await;
    let job_id = match reply.action {
        ReplyAction::Success => reply
            .response
            .as_ref()
            .and_then(|r| r.id_at(&plan.job_id_pointer)),
        ReplyAction::Failed(Failure::Permanent(reason)) => {
            // The job as a whole was refused (no list, a body over the CRM's
            // limit): each row's own request tells what is wrong, if anything.
            tracing::warn!(rows, %reason, "Bulk job refused; sending its rows one by one.");
            return all(None);
        }
        other => return all(Some(failure(other, &plan.submit.label))),
    };
    let Some(job_id) = job_id else {
        tracing::warn!(
            rows,
            pointer = %plan.job_id_pointer,
            "Bulk job accepted without a job id; sending its rows one by one."
        );
        return all(None);
    };
    tracing::info!(rows, job = %job_id, "Bulk job submitted.");
    let job = Value::String(job_id.clone());
    match poll(client, plan, &job, params).await {
        Polled::Done => {}
        Polled::Failed(status) => {
            tracing::warn!(job = %job_id, %status, "Bulk job failed; sending its rows one by one.");
            return all(None);
        }
        Polled::Outcome(outcome) => return all(Some(outcome)),
    }
    let since = started - chrono::Duration::from_std(plan.since_margin).unwrap_or_default();
    let wanted: HashMap<&str, usize> = indexes.iter().map(|&i| (jobs[i].key.as_str(), i)).collect();
    let found = confirm(client, plan, &job, params, since, &wanted).await;
    tracing::info!(rows, confirmed = found.len(), job = %job_id, "Bulk job confirmed.");
    indexes
        .iter()
        .map(|&i| {
            let outcome = found.get(&i).map(|id| RowOutcome::Synced {
                crm_id: Some(id.clone()),
            });
            (i, outcome)
        })
        .collect()
}

/// How polling a job ended.
enum Polled {
    /// The job is done: read its results.
    Done,
    /// The job failed, with this status.
    Failed(String),
    /// Polling stopped: every row of the job ends so (handed back or retried).
    Outcome(RowOutcome),
}

/// Reads the job's status on the plan's schedule until it is done or
/// failed, within the rows' lease and until shutdown.
async fn poll(client: &CrmClient, plan: &BulkPlan, job: &Value, params: &Value) -> Polled {
    let ctx = Value::Object(Map::from_iter([
        ("job".to_string(), job.clone()),
        ("params".to_string(), params.clone()),
    ]));
    let mut poll = 0;
    while let Some(delay) = plan.schedule.delay(poll) {
        poll += 1;
        let lease_left = wait::lease_left(client.clock().now());
        if wait::plan_wait(delay, Duration::ZERO, delay, lease_left).is_err() {
            return Polled::Outcome(handed_back(
                client,
                "the rows' lease ends before the bulk job's next status read",
            ));
        }
        if let Err(Stop::ShutDown) = wait::sleep(delay).await {
            return Polled::Outcome(handed_back(client, "the run was shutting down"));
        }
        let reply = client.send(&plan.poll, &ctx).await;
        match reply.action {
            ReplyAction::Success => {
                let status = reply
                    .response
                    .as_ref()
                    .and_then(|r| r.body.pointer(&plan.status_pointer))
                    .map(|v| id_text(v).unwrap_or_default())
                    .unwrap_or_default();
                if plan.done_values.contains(&status) {
                    return Polled::Done;
                }
                if plan.failed_values.contains(&status) {
                    return Polled::Failed(status);
                }
                tracing::debug!(%status, poll, "Bulk job still running.");
            }
            // Unknown to the CRM (gone, never there): the rows' own requests
            // tell what became of them.
            ReplyAction::Failed(Failure::Permanent(reason)) => return Polled::Failed(reason),
            other => return Polled::Outcome(failure(other, &plan.poll.label)),
        }
    }
    Polled::Outcome(RowOutcome::transient(format!(
        "bulk job {} not done after {} status reads",
        id_text(job).unwrap_or_default(),
        plan.schedule.max_polls
    )))
}

/// Rows handed back untouched, due at once: the job may have run, and their
/// next claim submits them again (an upsert).
fn handed_back(client: &CrmClient, why: &str) -> RowOutcome {
    RowOutcome::Failed(Failure::Deferred {
        until: client.clock().utc(),
        reason: format!("handed back: {why}"),
    })
}

/// Reads what the job wrote, page by page, and returns the record id of
/// each row found (by row index). Stops at a short page, when every row is
/// found, after `max_pages`, or at the first failed read (the rows not
/// found yet take the per-row flow).
async fn confirm(
    client: &CrmClient,
    plan: &BulkPlan,
    job: &Value,
    params: &Value,
    since: DateTime<Utc>,
    wanted: &HashMap<&str, usize>,
) -> HashMap<usize, String> {
    let mut found = HashMap::with_capacity(wanted.len());
    let limit = plan.page_size.unwrap_or(0);
    let since = Value::String(since.to_rfc3339_opts(SecondsFormat::Millis, true));
    for page in 0..plan.max_pages.max(1) {
        let ctx = Value::Object(Map::from_iter([
            ("job".to_string(), job.clone()),
            ("since".to_string(), since.clone()),
            ("offset".to_string(), Value::from(page * limit)),
            ("limit".to_string(), Value::from(limit)),
            ("params".to_string(), params.clone()),
        ]));
        let reply = client.send_owned(&plan.confirm, ctx).await;
        if reply.action != ReplyAction::Success {
            tracing::warn!(action = ?reply.action, "Reading a bulk job's results failed; the rows not confirmed yet are sent one by one.");
            break;
        }
        let records = reply
            .response
            .as_ref()
            .and_then(|r| r.body.pointer(&plan.records_pointer))
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for record in records {
            let key = record
                .pointer(&plan.key_pointer)
                .and_then(id_text)
                .map(|key| key.trim().to_lowercase());
            let id = record.pointer(&plan.id_pointer).and_then(id_text);
            if let (Some(key), Some(id)) = (key, id)
                && let Some(&index) = wanted.get(key.as_str())
            {
                found.insert(index, id);
            }
        }
        let last_page = limit == 0 || records.len() < limit;
        if last_page || found.len() == wanted.len() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(index: usize, size: usize) -> (usize, Value, usize) {
        (index, Value::from(index), size)
    }

    fn indexes(chunks: &[Vec<(usize, Value)>]) -> Vec<Vec<usize>> {
        chunks
            .iter()
            .map(|c| c.iter().map(|(i, _)| *i).collect())
            .collect()
    }

    #[test]
    fn jobs_hold_at_most_max_rows_rows() {
        let items = (0..5).map(|i| item(i, 10)).collect();
        assert_eq!(
            indexes(&chunk(items, 2, None)),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
    }

    #[test]
    fn jobs_stay_under_the_byte_cap_and_an_item_alone_over_it_is_left_out() {
        let items = vec![item(0, 40), item(1, 40), item(2, 500), item(3, 40)];
        assert_eq!(
            indexes(&chunk(items, 100, Some(100))),
            vec![vec![0, 1], vec![3]]
        );
    }
}
