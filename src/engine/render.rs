//! Rendering a claim's rows into jobs, one per distinct key, and handing them
//! to the send stage; outcomes come back in row order.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::Run;
use crate::change::ChangeCheck;
use crate::plan::MappingPlan;
use crate::send::{RowJob, RowOutcome};
use crate::store::ClaimedRow;
use crate::template::{NOW_KEY, Templates};

/// Renders every row and sends one request per distinct key; outcomes in row order,
/// with the fingerprint to store for each row the CRM confirms.
/// Each row's columns move into its job (only the key stays behind, for
/// `decide`'s log lines). A row whose fingerprint matches the stored one is
/// not sent.
pub(crate) async fn sync_rows(
    run: &Run,
    mapping: &MappingPlan,
    changes: Option<&ChangeCheck>,
    rows: &mut [ClaimedRow],
) -> (Vec<RowOutcome>, Vec<Option<String>>) {
    // One pinned clock for the whole claim, formatted once.
    let now = Value::String(run.clock.utc().to_rfc3339());
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
    let mut jobs: Vec<RowJob> = Vec::with_capacity(rows.len());
    let mut rows_of_job: Vec<Vec<usize>> = Vec::with_capacity(rows.len());
    let mut job_of_key: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    let mut fingerprints: Vec<Option<String>> = vec![None; rows.len()];
    for (index, row) in rows.iter_mut().enumerate() {
        if let Some(changes) = changes {
            let check = changes.check(&mut row.row);
            if check.unchanged {
                outcomes[index] = Some(RowOutcome::Unchanged);
                continue;
            }
            fingerprints[index] = Some(check.fingerprint);
        }
        match render_job(&run.plan.templates, mapping, row, &now) {
            Err(reason) => outcomes[index] = Some(RowOutcome::permanent(reason)),
            // Two rows with one key are one CRM record: send it once (the later
            // row's values win) and give both rows the outcome. CRMs reject a
            // batch holding a key twice, and two parallel writes would race.
            Ok(job) => match job_of_key.get(&job.key) {
                Some(&existing) => {
                    jobs[existing] = job;
                    // The CRM gets this row's values, not the earlier rows':
                    // their fingerprints must match nothing.
                    for &earlier in &rows_of_job[existing] {
                        if fingerprints[earlier].is_some() {
                            fingerprints[earlier] = Some(String::new());
                        }
                    }
                    rows_of_job[existing].push(index);
                }
                None => {
                    job_of_key.insert(job.key.clone(), jobs.len());
                    jobs.push(job);
                    rows_of_job.push(vec![index]);
                }
            },
        }
    }
    let results = crate::send::execute_in_mode(&run.client, &jobs, mapping.mode).await;
    for (outcome, indexes) in results.into_iter().zip(rows_of_job) {
        for index in indexes {
            outcomes[index] = Some(outcome.clone());
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every row has an outcome"))
        .collect();
    (outcomes, fingerprints)
}

/// Renders one row's fields and builds its job: the key, and the context the
/// connector's templates see (`key`, `fields`, `params`, `row`, `trace_id`).
/// The row's columns move into the job; only the key column stays in `row`.
/// `engine plan` renders its preview with it too, so it shows what a run sends.
pub(crate) fn render_job(
    templates: &Templates,
    mapping: &MappingPlan,
    row: &mut ClaimedRow,
    now: &Value,
) -> Result<RowJob, String> {
    let key_column = &mapping.table.key_column;
    let key = match row.row.get(key_column) {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_lowercase(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(format!("key column `{key_column}` is empty")),
    };
    // The fields see the row's columns, `params` and the pinned clock.
    let mut ctx = std::mem::take(&mut row.row);
    ctx.insert("params".into(), Value::Object(mapping.params.clone()));
    ctx.insert(NOW_KEY.into(), now.clone());
    let (fields, ctx) =
        templates.render_tree_owned(&mapping.fields, Value::Object(ctx), mapping.on_empty);
    let Value::Object(mut columns) = ctx else {
        unreachable!("the context stays an object")
    };
    let params = columns.remove("params").unwrap_or(Value::Null);
    columns.remove(NOW_KEY);
    if let Some(key_value) = columns.get(key_column) {
        row.row.insert(key_column.clone(), key_value.clone());
    }
    let fields = fields.map_err(|err| format!("render error: {err}"))?;
    let mut job_ctx = Map::with_capacity(6);
    job_ctx.insert("key".into(), Value::String(key.clone()));
    job_ctx.insert("fields".into(), fields);
    job_ctx.insert("params".into(), params);
    job_ctx.insert("row".into(), Value::Object(columns));
    job_ctx.insert("trace_id".into(), Value::String(row.id.clone()));
    job_ctx.insert(NOW_KEY.into(), now.clone());
    Ok(RowJob {
        key,
        trace_id: row.id.clone(),
        ctx: Value::Object(job_ctx),
    })
}
