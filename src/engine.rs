//! The orchestrator: claim → render → send → record, per mapping, until nothing
//! is claimable (or, with `--watch`, every `interval_secs` until a signal).
//!
//! Each cycle is one claim statement, the HTTP work with no transaction open, and
//! one record statement. A crash leaves rows `Processing` with a lease deadline;
//! the next claim after it expires takes them again, and since every flow is an
//! upsert keyed on the record's key, sending a row twice cannot create a duplicate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::crm::{CrmClient, RowJob, RowOutcome};
use crate::plan::{Env, MappingPlan, Plan};
use crate::retry::{RetryDecision, next_row_retry};
use crate::store::{ClaimedRow, RowResult, RowUpdate, Store};

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Keep cycling every `interval_secs` until shutdown.
    pub watch: bool,
    /// Claim-and-send loops per mapping running at once. Two or more keep the
    /// CRM busy while another loop waits on the database.
    pub workers: usize,
    /// Print a progress line this often (None: never).
    pub progress_every: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            watch: false,
            workers: 4,
            progress_every: Some(Duration::from_secs(5)),
        }
    }
}

/// Row counts of a run.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Rows now `Complete`.
    pub complete: AtomicU64,
    /// Rows that ended in `Error`.
    pub failed: AtomicU64,
    /// Rows put back for a later retry.
    pub retrying: AtomicU64,
    /// Rows handed back because of a long rate limit.
    pub deferred: AtomicU64,
}

impl RunSummary {
    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Total rows processed.
    pub fn total(&self) -> u64 {
        [&self.complete, &self.failed, &self.retrying, &self.deferred]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Everything a run of one connector shares.
struct Run {
    plan: Arc<Plan>,
    store: Store,
    client: Arc<CrmClient>,
    clock: Arc<dyn Clock>,
    summary: Arc<RunSummary>,
    shutdown: watch::Receiver<bool>,
}

/// Runs every mapping of `connector` (see the module docs). Returns the counts.
pub async fn run_connector(
    plan: Arc<Plan>,
    connector: &str,
    store: Store,
    env: &dyn Env,
    clock: Arc<dyn Clock>,
    options: RunOptions,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Arc<RunSummary>> {
    let connector_plan = plan.connectors.get(connector).cloned().with_context(|| {
        let known: Vec<_> = plan.connectors.keys().map(String::as_str).collect();
        format!("no connector `{connector}` (known: {})", known.join(", "))
    })?;
    let mappings = plan.mappings_of(connector);
    if mappings.is_empty() {
        bail!(
            "no mapping syncs to connector `{connector}`: add mappings/<name>.toml with connector = \"{connector}\""
        );
    }
    for mapping in &mappings {
        require_table(&store, mapping).await?;
    }
    let client = Arc::new(CrmClient::new(
        connector_plan,
        plan.templates.clone(),
        env,
        clock.clone(),
    )?);
    let mut guards = Vec::new();
    for mapping in &mappings {
        // Named by mapping and table: the same mapping name over another table is another queue.
        let lock_name = format!("mapping:{}:{}", mapping.name, mapping.table.table);
        let slot = store
            .acquire_instance_slot(&lock_name, mapping.schedule.max_instances)
            .await?;
        match slot {
            Some(guard) => guards.push(guard),
            None => bail!(
                "mapping `{}` is already running in {} process(es), its schedule.max_instances; wait for it to finish or raise max_instances",
                mapping.name,
                mapping.schedule.max_instances
            ),
        }
    }
    let summary = Arc::new(RunSummary::default());
    let run = Arc::new(Run {
        plan,
        store,
        client,
        clock,
        summary: summary.clone(),
        shutdown,
    });
    let progress = options.progress_every.map(|every| {
        tokio::spawn(report_progress(
            run.summary.clone(),
            connector.to_string(),
            every,
        ))
    });
    let result = cycle_until_done(&run, &mappings, &options).await;
    if let Some(progress) = progress {
        progress.abort();
    }
    for guard in guards {
        guard.release().await?;
    }
    result?;
    Ok(summary)
}

/// Fails naming the fix when a mapping's table does not exist yet (a fresh
/// database), instead of with the database's own error at the first query.
pub async fn require_table(store: &Store, mapping: &MappingPlan) -> anyhow::Result<()> {
    if store.columns(&mapping.table.table).await?.is_none() {
        bail!(
            "table `{}` does not exist in the database; create it with `engine migrate --mapping {}`",
            mapping.table.table,
            mapping.name
        );
    }
    Ok(())
}

async fn cycle_until_done(
    run: &Arc<Run>,
    mappings: &[Arc<MappingPlan>],
    options: &RunOptions,
) -> anyhow::Result<()> {
    loop {
        let started = Instant::now();
        let drains = mappings
            .iter()
            .map(|mapping| drain(run.clone(), mapping.clone(), options.workers));
        for result in futures::future::join_all(drains).await {
            result?;
        }
        tracing::info!(
            complete = run.summary.complete.load(Ordering::Relaxed),
            error = run.summary.failed.load(Ordering::Relaxed),
            retrying = run.summary.retrying.load(Ordering::Relaxed),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Finished sync cycle."
        );
        if !options.watch || *run.shutdown.borrow() {
            return Ok(());
        }
        let interval = mappings
            .iter()
            .map(|m| m.schedule.interval_secs)
            .min()
            .unwrap_or(300);
        let mut shutdown = run.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Claims and processes batches of one mapping with `workers` loops until no row
/// is claimable now.
async fn drain(run: Arc<Run>, mapping: Arc<MappingPlan>, workers: usize) -> anyhow::Result<()> {
    let loops = (0..workers.max(1)).map(|_| {
        let run = run.clone();
        let mapping = mapping.clone();
        tokio::spawn(async move {
            while !*run.shutdown.borrow() {
                if process_one_batch(&run, &mapping).await? == 0 {
                    break;
                }
            }
            anyhow::Ok(())
        })
    });
    for handle in futures::future::join_all(loops).await {
        handle.context("a sync worker panicked")??;
    }
    Ok(())
}

/// One cycle: claim, render, send, record. Returns how many rows it claimed.
async fn process_one_batch(run: &Run, mapping: &MappingPlan) -> anyhow::Result<usize> {
    let now = run.clock.utc();
    let lease = now + chrono::Duration::seconds(mapping.schedule.lease_secs as i64);
    let rows = run
        .store
        .claim(
            &mapping.table,
            mapping.schedule.batch_size as usize,
            now,
            lease,
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    tracing::debug!(mapping = %mapping.name, rows = rows.len(), "Claimed rows.");
    let outcomes = sync_rows(run, mapping, &rows).await;
    let results = decide(run, mapping, &rows, outcomes);
    run.store
        .record(&mapping.table, &results)
        .await
        .context("failed to record results")?;
    Ok(rows.len())
}

/// Renders every row and sends one request per distinct key; outcomes in row order.
async fn sync_rows(run: &Run, mapping: &MappingPlan, rows: &[ClaimedRow]) -> Vec<RowOutcome> {
    let now = run.clock.utc();
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
    let mut jobs: Vec<RowJob> = Vec::new();
    let mut rows_of_job: Vec<Vec<usize>> = Vec::new();
    let mut job_of_key: HashMap<String, usize> = HashMap::new();
    for (index, row) in rows.iter().enumerate() {
        match render_job(run, mapping, row, now) {
            Err(reason) => outcomes[index] = Some(RowOutcome::Permanent(reason)),
            // Two rows with one key are one CRM record: send it once (the later
            // row's values win) and give both rows the outcome. CRMs reject a
            // batch holding a key twice, and two parallel writes would race.
            Ok(job) => match job_of_key.get(&job.key) {
                Some(&existing) => {
                    jobs[existing] = job;
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
    let results = crate::crm::execute(&run.client, &jobs).await;
    for (outcome, indexes) in results.into_iter().zip(rows_of_job) {
        for index in indexes {
            outcomes[index] = Some(outcome.clone());
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every row has an outcome"))
        .collect()
}

/// The template context of a mapping's fields: the row's columns, `params`, and the pinned clock.
fn render_job(
    run: &Run,
    mapping: &MappingPlan,
    row: &ClaimedRow,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<RowJob, String> {
    let key = match row.row.get(&mapping.table.key_column) {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_lowercase(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(format!(
                "key column `{}` is empty",
                mapping.table.key_column
            ));
        }
    };
    let mut ctx: Map<String, Value> = row.row.clone();
    ctx.insert("params".into(), Value::Object(mapping.params.clone()));
    ctx.insert("__now".into(), Value::String(now.to_rfc3339()));
    let ctx = Value::Object(ctx);
    let fields = run
        .plan
        .templates
        .render_tree(&mapping.fields, &ctx, mapping.on_empty)
        .map_err(|err| format!("render error: {err}"))?;
    let job_ctx = serde_json::json!({
        "key": key,
        "fields": fields,
        "params": mapping.params,
        "row": row.row,
        "trace_id": row.id,
        "__now": now.to_rfc3339(),
    });
    Ok(RowJob {
        key,
        trace_id: row.id.clone(),
        ctx: job_ctx,
    })
}

/// Turns outcomes into database updates using the mapping's retry schedule, and logs each row.
fn decide(
    run: &Run,
    mapping: &MappingPlan,
    rows: &[ClaimedRow],
    outcomes: Vec<RowOutcome>,
) -> Vec<RowResult> {
    let now = run.clock.utc();
    let schedule = &mapping.schedule;
    let delay = Duration::from_secs(schedule.retry_delay_secs);
    let summary = &run.summary;
    rows.iter()
        .zip(outcomes)
        .map(|(row, outcome)| {
            let key = row.row.get(&mapping.table.key_column).and_then(Value::as_str).unwrap_or_default();
            let update = match outcome {
                RowOutcome::Synced { crm_id } => {
                    tracing::info!(mapping = %mapping.name, row = %row.id, %key, crm_id = crm_id.as_deref().unwrap_or(""), "Synced row.");
                    summary.add(&summary.complete, 1);
                    RowUpdate::Complete { crm_id }
                }
                RowOutcome::Permanent(error) => {
                    tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, "Row failed permanently.");
                    summary.add(&summary.failed, 1);
                    RowUpdate::Failed { error, retry_count: row.retry_count }
                }
                RowOutcome::Transient(error) => match next_row_retry(row.retry_count, schedule.max_retries, delay, schedule.retry_exponential, now) {
                    RetryDecision::RetryAt { retry_count, at } => {
                        tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, retry_count, retry_at = %at, "Row will be retried.");
                        summary.add(&summary.retrying, 1);
                        RowUpdate::RetryLater { error, retry_count, next_retry_at: at }
                    }
                    RetryDecision::GiveUp { retry_count } => {
                        tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, retry_count, "Row failed after its last retry.");
                        summary.add(&summary.failed, 1);
                        RowUpdate::Failed { error: format!("{error} (gave up after {} retries)", retry_count - 1), retry_count }
                    }
                },
                RowOutcome::Deferred { until, reason } => {
                    tracing::info!(mapping = %mapping.name, row = %row.id, %key, %reason, until = %until, "Row deferred by a rate limit.");
                    summary.add(&summary.deferred, 1);
                    RowUpdate::Release { next_retry_at: Some(until) }
                }
            };
            RowResult { id: row.id.clone(), lease: row.lease, update }
        })
        .collect()
}

async fn report_progress(summary: Arc<RunSummary>, connector: String, every: Duration) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let total = summary.total();
        let rate = total as f64 / started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            %connector,
            complete = summary.complete.load(Ordering::Relaxed),
            error = summary.failed.load(Ordering::Relaxed),
            retrying = summary.retrying.load(Ordering::Relaxed),
            rows_per_sec = rate.round() as u64,
            "Progress."
        );
    }
}
