//! Batch upserts: chunk, send, map per-item results back to rows, and bisect a
//! batch that fails as a whole so one bad row cannot fail the other 99.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use futures::future::join_all;
use serde_json::{Map, Value};

use super::client::CrmClient;
use super::response::{Response, id_text};
use super::row::{Failure, ReplyAction, RowJob, RowOutcome, failure};
use crate::plan::BatchPlan;
use crate::template::OnEmpty;

/// Sends `jobs` in chunks of `max_items`, concurrently (the client caps requests in flight).
pub async fn run(client: &CrmClient, plan: &BatchPlan, jobs: &[RowJob]) -> Vec<RowOutcome> {
    let refs: Vec<&RowJob> = jobs.iter().collect();
    let chunks = refs.chunks(plan.max_items.max(1));
    join_all(chunks.map(|chunk| send_chunk(client, plan, chunk.to_vec())))
        .await
        .into_iter()
        .flatten()
        .collect()
}

type Outcomes<'a> = Pin<Box<dyn Future<Output = Vec<RowOutcome>> + Send + 'a>>;

/// One request for `jobs`; outcomes in job order.
fn send_chunk<'a>(
    client: &'a CrmClient,
    plan: &'a BatchPlan,
    jobs: Vec<&'a RowJob>,
) -> Outcomes<'a> {
    Box::pin(async move {
        let mut outcomes: Vec<Option<RowOutcome>> = vec![None; jobs.len()];
        let mut items = Vec::with_capacity(jobs.len());
        let mut sent = Vec::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            match client
                .templates()
                .render_tree(&plan.item, &job.ctx, OnEmpty::Omit)
            {
                Ok(item) => match oversized(client, &item) {
                    // Alone over the limit: it fails by itself, the others go.
                    Some(reason) => outcomes[index] = Some(RowOutcome::permanent(reason)),
                    None => {
                        items.push(item);
                        sent.push(index);
                    }
                },
                Err(err) => {
                    outcomes[index] = Some(RowOutcome::permanent(format!("render error: {err}")));
                }
            }
        }
        if !sent.is_empty() {
            let sent_jobs: Vec<&RowJob> = sent.iter().map(|&i| jobs[i]).collect();
            let params = jobs[0].ctx.get("params").cloned().unwrap_or(Value::Null);
            // Built by hand: `json!` would copy every item through serde.
            let ctx = Value::Object(Map::from_iter([
                ("items".to_string(), Value::Array(items)),
                ("params".to_string(), params),
            ]));
            let reply = client.send_owned(&plan.op, ctx).await;
            let results = match reply.action {
                ReplyAction::Success => map_results(plan, reply.response.as_ref(), &sent_jobs),
                ReplyAction::Failed(Failure::Permanent(reason)) if sent_jobs.len() > 1 => {
                    tracing::info!(rows = sent_jobs.len(), %reason, "Batch rejected as a whole; splitting it to isolate the bad rows.");
                    bisect(client, plan, sent_jobs).await
                }
                other => vec![failure(other, &plan.op.label); sent_jobs.len()],
            };
            for (index, outcome) in sent.into_iter().zip(results) {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every row has an outcome"))
            .collect()
    })
}

/// Why `item` cannot be sent even alone, when the connector caps request
/// size. A request of several items that fit one by one but not together is
/// refused by the client and split by [`bisect`] like any rejected batch.
fn oversized(client: &CrmClient, item: &Value) -> Option<String> {
    client.plan.max_request_bytes?;
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, item).ok()?;
    client.too_large(counter.0)
}

/// Counts what is written, so an item is measured without being copied.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn bisect<'a>(
    client: &'a CrmClient,
    plan: &'a BatchPlan,
    jobs: Vec<&'a RowJob>,
) -> Vec<RowOutcome> {
    let (left, right) = jobs.split_at(jobs.len() / 2);
    let (left, right) = futures::join!(
        send_chunk(client, plan, left.to_vec()),
        send_chunk(client, plan, right.to_vec())
    );
    left.into_iter().chain(right).collect()
}

/// Maps per-item results and errors back to rows: by trace id or key, or by
/// position when the connector names no `match_pointer`.
fn map_results(plan: &BatchPlan, response: Option<&Response>, jobs: &[&RowJob]) -> Vec<RowOutcome> {
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; jobs.len()];
    let body = response.map_or(&Value::Null, |r| &r.body);
    let spec = &plan.results;
    let by_trace: HashMap<&str, usize> = (0..)
        .zip(jobs)
        .map(|(i, j)| (j.trace_id.as_str(), i))
        .collect();
    let by_key: HashMap<&str, usize> = (0..).zip(jobs).map(|(i, j)| (j.key.as_str(), i)).collect();
    let find = |value: &str| {
        by_trace
            .get(value)
            .or_else(|| by_key.get(value.trim().to_lowercase().as_str()))
            .copied()
    };
    let results = body
        .pointer(&spec.results_pointer)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut unmatched = "the batch response has no result for this row".to_string();
    match &spec.match_pointer {
        Some(matcher) => {
            for result in results {
                let index = result
                    .pointer(matcher)
                    .and_then(id_text)
                    .and_then(|v| find(&v));
                if let Some(index) = index {
                    outcomes[index] = Some(result_outcome(plan, result));
                }
            }
        }
        // One result per input, in input order: with another count, no
        // position can be trusted.
        None if results.len() == jobs.len() => {
            for (outcome, result) in outcomes.iter_mut().zip(results) {
                *outcome = Some(result_outcome(plan, result));
            }
        }
        None => {
            unmatched = format!(
                "the batch response has {} results for {} inputs, and results are matched by position",
                results.len(),
                jobs.len()
            );
        }
    }
    if let (Some(errors), Some(matcher)) = (&spec.errors_pointer, &spec.error_match_pointer) {
        for error in body
            .pointer(errors)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for value in values_at(error, matcher) {
                if let Some(index) = find(&value) {
                    outcomes[index] = Some(item_failure(plan, error));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| RowOutcome::transient(unmatched.clone())))
        .collect()
}

/// One result: synced with its id, or failed when `success_pointer` does
/// not hold `success_value`.
fn result_outcome(plan: &BatchPlan, result: &Value) -> RowOutcome {
    let spec = &plan.results;
    let succeeded = spec
        .success_pointer
        .as_ref()
        .is_none_or(|pointer| result.pointer(pointer) == Some(&spec.success_value));
    if succeeded {
        match result.pointer(&spec.id_pointer).and_then(id_text) {
            Some(id) => RowOutcome::Synced { crm_id: Some(id) },
            None => RowOutcome::transient(format!(
                "{}: the batch result for this row has no record id at `{}`",
                plan.op.label, spec.id_pointer
            )),
        }
    } else {
        item_failure(plan, result)
    }
}

/// A failed item: retried later when `transient_item_regex` matches it,
/// else final; with the item's message either way.
fn item_failure(plan: &BatchPlan, item: &Value) -> RowOutcome {
    let message = item
        .pointer(&plan.results.error_message_pointer)
        .and_then(Value::as_str)
        .unwrap_or("item rejected")
        .to_string();
    let transient = plan
        .results
        .transient_items
        .as_ref()
        .is_some_and(|regex| regex.is_match(&item.to_string()));
    if transient {
        RowOutcome::transient(message)
    } else {
        RowOutcome::permanent(message)
    }
}

/// A string, number, or array of them at `pointer`.
fn values_at(value: &Value, pointer: &str) -> Vec<String> {
    match value.pointer(pointer) {
        Some(Value::Array(items)) => items.iter().filter_map(id_text).collect(),
        Some(other) => id_text(other).into_iter().collect(),
        None => Vec::new(),
    }
}
