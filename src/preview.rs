//! `engine plan`: the requests the next run would send for the next due rows,
//! rendered exactly as a run renders them, and sent nowhere. It reads the
//! database with a plain SELECT (no claim, no lease, no history) and shows
//! authentication as `[REDACTED]`: secrets are neither needed nor printed.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::engine::render_job;
use crate::plan::{AuthPlan, Env, Flow, MappingPlan, Plan, secret_env_names};
use crate::send::{CrmClient, PreviewRequest, RowJob};
use crate::store::{ClaimedRow, Store};
use crate::template::{OnEmpty, Templates};

/// What stands for every secret.
pub const REDACTED: &str = "[REDACTED]";

/// The environment, with every secret of the connector replaced: the client
/// can be built without them, and nothing it renders can hold one.
struct RedactedEnv<'a> {
    inner: &'a dyn Env,
    secrets: Vec<String>,
}

impl Env for RedactedEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        if self.secrets.iter().any(|secret| secret == name) {
            Some(REDACTED.into())
        } else {
            self.inner.var(name)
        }
    }
}

/// The preview of `connector`'s mappings (or of `only` among them): the
/// requests for up to `limit` due rows of each, as text.
pub async fn preview(
    plan: &Plan,
    connector: &str,
    only: Option<&str>,
    limit: u32,
    store: &Store,
    env: &dyn Env,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<String> {
    let connector_plan = plan
        .connectors
        .get(connector)
        .cloned()
        .with_context(|| format!("no connector `{connector}` in connectors/"))?;
    let env = RedactedEnv {
        inner: env,
        secrets: secret_env_names(&connector_plan.auth),
    };
    let auth = auth_lines(&connector_plan.auth);
    let client = CrmClient::new(connector_plan, plan.templates.clone(), &env, clock.clone())?;
    let mappings: Vec<_> = plan
        .mappings_of(connector)
        .into_iter()
        .filter(|m| only.is_none_or(|name| m.name == name))
        .collect();
    anyhow::ensure!(
        !mappings.is_empty(),
        "no mapping {}syncs to connector `{connector}`",
        only.map(|m| format!("`{m}` ")).unwrap_or_default()
    );
    let mut out = String::new();
    for mapping in mappings {
        // A snapshot's due rows are found by diffing its source against its
        // state, which writes: a preview, writing nothing, cannot know them.
        if mapping.snapshot.is_some() {
            let _ = writeln!(
                out,
                "# mapping {} -> connector {connector}: a snapshot mapping; its rows are found only by a run's diff, so none are previewed\n",
                mapping.name
            );
            continue;
        }
        crate::engine::require_table(store, &mapping).await?;
        let rows = store.peek_due(&mapping.table, clock.utc(), limit).await?;
        let _ = writeln!(
            out,
            "# mapping {} -> connector {connector}: the next {} due rows (of at most {limit}); nothing is sent or written",
            mapping.name,
            rows.len()
        );
        let jobs = render_rows(&plan.templates, &mapping, rows, clock.as_ref(), &mut out);
        for (title, request) in requests(&client, &jobs)? {
            out.push('\n');
            out.push_str(&show(&title, &request, &auth));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Renders each row's job as a run does; a row that cannot be rendered is
/// named with the error it would end in.
fn render_rows(
    templates: &Templates,
    mapping: &MappingPlan,
    rows: Vec<Map<String, Value>>,
    clock: &dyn Clock,
    out: &mut String,
) -> Vec<RowJob> {
    let now = Value::String(clock.utc().to_rfc3339());
    let mut jobs = Vec::new();
    for row in rows {
        let id = match row.get(&mapping.table.id_column) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let retry_count = row
            .get(&mapping.table.retry_count)
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut claimed = ClaimedRow {
            id: id.clone(),
            row,
            retry_count,
            lease: clock.utc(),
            handle: None,
            shares_lease: true,
        };
        match render_job(templates, mapping, &mut claimed, &now) {
            Ok(job) => jobs.push(job),
            Err(reason) => {
                let _ = writeln!(out, "# row {id} would end in Error: {reason}");
            }
        }
    }
    jobs
}

/// The first request of each row's flow (one per chunk in batch mode), titled.
fn requests(client: &CrmClient, jobs: &[RowJob]) -> anyhow::Result<Vec<(String, PreviewRequest)>> {
    let mut requests = Vec::new();
    // As many rows as a bulk job needs: the run submits them as one (see
    // `crm::execute`); the poll and the confirm depend on the CRM's answer.
    if let Some(bulk) = client
        .plan
        .bulk
        .as_ref()
        .filter(|b| jobs.len() >= b.min_rows)
    {
        for chunk in jobs.chunks(bulk.max_rows.max(1)) {
            let mut items = Vec::with_capacity(chunk.len());
            for job in chunk {
                items.push(
                    client
                        .templates()
                        .render_tree(&bulk.item, &job.ctx, OnEmpty::Omit)?,
                );
            }
            let mapping_params = chunk[0]
                .ctx
                .get("params")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let params = bulk.params(&mapping_params);
            let ctx = serde_json::json!({ "items": items, "params": params });
            let title = format!(
                "{} ({} rows as one bulk job; then polled and confirmed)",
                bulk.submit.label,
                chunk.len()
            );
            requests.push((title, client.preview(&bulk.submit, &ctx)?));
        }
        return Ok(requests);
    }
    match &client.plan.flow {
        Flow::Batch { batch } => {
            for chunk in jobs.chunks(batch.max_items.max(1)) {
                let mut items = Vec::with_capacity(chunk.len());
                for job in chunk {
                    items.push(client.templates().render_tree(
                        &batch.item,
                        &job.ctx,
                        OnEmpty::Omit,
                    )?);
                }
                let params = chunk[0].ctx.get("params").cloned().unwrap_or(Value::Null);
                let ctx = serde_json::json!({ "items": items, "params": params });
                let keys: Vec<&str> = chunk.iter().map(|j| j.key.as_str()).collect();
                let title = format!(
                    "{} ({} rows: {})",
                    batch.op.label,
                    chunk.len(),
                    keys.join(", ")
                );
                requests.push((title, client.preview(&batch.op, &ctx)?));
            }
        }
        Flow::Single { upsert, .. } => {
            for job in jobs {
                let title = format!("{} (row {}, key {})", upsert.label, job.trace_id, job.key);
                requests.push((title, client.preview(upsert, &job.ctx)?));
            }
        }
        Flow::LookupThenWrite { lookup, create, .. } => {
            for job in jobs {
                let row = format!("row {}, key {}", job.trace_id, job.key);
                requests.push((
                    format!("{} ({row})", lookup.label),
                    client.preview(lookup, &job.ctx)?,
                ));
                requests.push((
                    format!(
                        "{} ({row}), if the lookup finds nothing; else an update of the found id",
                        create.label
                    ),
                    client.preview(create, &job.ctx)?,
                ));
            }
        }
    }
    Ok(requests)
}

/// How the connector authenticates, as the header or query parameter a
/// request would carry, the secret replaced.
struct AuthLines {
    header: Option<(String, String)>,
    query: Option<String>,
}

fn auth_lines(auth: &AuthPlan) -> AuthLines {
    let header = |name: &str, value: String| AuthLines {
        header: Some((name.to_string(), value)),
        query: None,
    };
    match auth {
        AuthPlan::None => AuthLines {
            header: None,
            query: None,
        },
        AuthPlan::Bearer { scheme, .. } => header("authorization", format!("{scheme} {REDACTED}")),
        AuthPlan::Header { name, prefix, .. } => {
            header(&name.to_lowercase(), format!("{prefix}{REDACTED}"))
        }
        AuthPlan::Query { param, .. } => AuthLines {
            header: None,
            query: Some(param.clone()),
        },
        AuthPlan::Basic { .. } => header("authorization", format!("Basic {REDACTED}")),
        AuthPlan::OAuth(oauth) => header("authorization", format!("{} {REDACTED}", oauth.scheme)),
    }
}

fn show(title: &str, request: &PreviewRequest, auth: &AuthLines) -> String {
    let mut url = request.url.clone();
    if let Some(param) = &auth.query {
        url.query_pairs_mut().append_pair(param, REDACTED);
    }
    let mut text = format!("# {title}\n{} {url}\n", request.method);
    if let Some((name, value)) = &auth.header {
        let _ = writeln!(text, "{name}: {value}");
    }
    for (name, value) in &request.headers {
        let _ = writeln!(text, "{}: {value}", name.to_lowercase());
    }
    if let Some(body) = &request.body {
        // As a run does: a connector's own Content-Type wins.
        let typed = request
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if !typed {
            let _ = writeln!(text, "content-type: application/json");
        }
        text.push('\n');
        let _ = writeln!(
            text,
            "{}",
            serde_json::to_string_pretty(body).unwrap_or_default()
        );
    }
    text
}
