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
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::change::ChangeCheck;
use crate::clock::Clock;
use crate::config::mapping::OnRemoved;
use crate::crm::probe::ConnectorPaused;
use crate::crm::wait::{self, WaitBound};
use crate::crm::{CrmClient, RowJob, RowOutcome};
use crate::history::{Counts, Cycle, Tallies};
use crate::plan::{Env, MappingPlan, Plan};
use crate::retry::{RetryDecision, next_row_retry};
use crate::snapshot::SnapshotFeed;
use crate::store::{ClaimedRow, OutcomeCounts, Queue, RowResult, RowUpdate, Store};
use crate::template::{NOW_KEY, Templates};

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
    /// Cycles of run history kept per mapping (0: record none).
    pub history_keep: u32,
    /// Where snapshot mappings keep their state; `None`: the source database.
    pub state_store: Option<Store>,
    /// Let a snapshot whose source returned no rows delete the records it
    /// synced (the empty-source guard stops that otherwise).
    pub allow_empty_source: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            watch: false,
            workers: 4,
            progress_every: Some(Duration::from_secs(5)),
            history_keep: crate::history::DEFAULT_KEEP,
            state_store: None,
            allow_empty_source: false,
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
    /// The cycle under way of each mapping, for progress lines.
    cycle: std::sync::Mutex<HashMap<String, CycleStart>>,
    /// Counts per mapping, for run history and metrics.
    pub by_mapping: Tallies,
    /// Rows recorded `Complete` without a request: their fingerprint
    /// matched the one the CRM last confirmed.
    pub unchanged: AtomicU64,
    /// Rows the mapping's sync mode did not let through (`update_only` and
    /// a new key, `create_only` and an existing record).
    pub skipped: AtomicU64,
    /// Of the `complete` rows, those that had no CRM id before (first sync).
    pub created: AtomicU64,
    /// CRM records deleted because their rows left a snapshot's source.
    pub deleted: AtomicU64,
    /// Per mapping, the counts not yet added to `engine_sync_counts`.
    unsaved: std::sync::Mutex<HashMap<String, OutcomeCounts>>,
}

/// When a mapping's cycle started, the mapping's total then, and the rows due then.
#[derive(Debug, Clone, Copy)]
struct CycleStart {
    at: Instant,
    total_before: u64,
    due: u64,
}

impl RunSummary {
    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn count_for(&self, mapping: &str, counts: &OutcomeCounts) {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
        unsaved.entry(mapping.to_string()).or_default().add(counts);
    }

    fn take_unsaved(&self, mapping: &str) -> OutcomeCounts {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
        unsaved.remove(mapping).unwrap_or_default()
    }

    pub(crate) fn add_deleted(&self, mapping: &str, n: u64) {
        self.add(&self.deleted, n);
        crate::metrics::global().more_rows(mapping, "deleted", n);
    }

    /// Counts a delete that did not end done, as `decide` counts upserts,
    /// so the exit code tells of it too.
    pub(crate) fn add_unfinished_delete(&self, update: &RowUpdate) {
        match update {
            RowUpdate::Failed { .. } => self.add(&self.failed, 1),
            RowUpdate::RetryLater { .. } => self.add(&self.retrying, 1),
            RowUpdate::Release { .. } => self.add(&self.deferred, 1),
            RowUpdate::Complete { .. } | RowUpdate::Skipped { .. } => {}
        }
    }

    /// Whether every row the run claimed ended `Complete`: none failed, and
    /// none was handed back for later (a retry, a rate limit, a shutdown).
    /// The meaning of exit code 0.
    pub fn all_complete(&self) -> bool {
        [&self.failed, &self.retrying, &self.deferred]
            .iter()
            .all(|c| c.load(Ordering::Relaxed) == 0)
    }

    /// Total rows processed.
    pub fn total(&self) -> u64 {
        [
            &self.complete,
            &self.failed,
            &self.retrying,
            &self.deferred,
            &self.unchanged,
            &self.skipped,
            &self.deleted,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Everything a run of one connector shares.
pub(crate) struct Run {
    pub(crate) plan: Arc<Plan>,
    pub(crate) client: Arc<CrmClient>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) summary: Arc<RunSummary>,
    shutdown: watch::Receiver<bool>,
    /// Where run history goes.
    store: Store,
}

/// Where a mapping's rows come from: a queue table, or a snapshot source
/// diffed against the engine's state table at the start of each cycle.
#[derive(Debug, Clone)]
enum Feed {
    Queue(Box<Queue>),
    Snapshot(SnapshotFeed),
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
    let mut queues = Vec::new();
    for mapping in mappings {
        let feed = match mapping.snapshot {
            None => Feed::Queue(Box::new(open_queue(&store, &plan, &mapping).await?)),
            Some(_) => {
                let default = options.state_store.clone().unwrap_or_else(|| store.clone());
                let state = crate::snapshot::state_store(&mapping, &default, env).await?;
                let columns = plan.row_columns(&mapping);
                let feed = SnapshotFeed::open(
                    store.clone(),
                    state,
                    &mapping,
                    &columns,
                    options.allow_empty_source,
                );
                Feed::Snapshot(feed.await?)
            }
        };
        queues.push((mapping, feed));
    }
    let client = Arc::new(CrmClient::new(
        connector_plan,
        plan.templates.clone(),
        env,
        clock.clone(),
    )?);
    let mut guards = Vec::new();
    for (mapping, feed) in &queues {
        // Named by mapping and table: the same mapping name over another table is another queue.
        let lock_name = format!("mapping:{}:{}", mapping.name, mapping.table.table);
        // A snapshot's source may be read-only: its slots live with its state.
        let lock_store = match feed {
            Feed::Queue(_) => &store,
            Feed::Snapshot(snapshot) => snapshot.state_store(),
        };
        let slot = lock_store
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
        client,
        clock,
        summary: summary.clone(),
        shutdown,
        store: store.clone(),
    });
    let progress = options.progress_every.map(|every| {
        tokio::spawn(report_progress(
            run.summary.clone(),
            connector.to_string(),
            every,
        ))
    });
    // Each mapping cycles on its own interval_secs; all share the client,
    // so one rate limiter and one in-flight cap pace every mapping of the CRM.
    let cycles = queues
        .iter()
        .map(|queue| cycle_until_done(&run, std::slice::from_ref(queue), &options));
    let result = futures::future::join_all(cycles)
        .await
        .into_iter()
        .find(Result::is_err)
        .unwrap_or(Ok(()));
    if let Some(progress) = progress {
        progress.abort();
    }
    for guard in guards {
        guard.release().await?;
    }
    result?;
    Ok(summary)
}

/// Opens the queue of `mapping`'s table, claiming only the columns its
/// templates read. Fails naming the fix when the table does not exist yet;
/// warns when it lacks the claim index (every claim would scan the table).
async fn open_queue(store: &Store, plan: &Plan, mapping: &MappingPlan) -> anyhow::Result<Queue> {
    let Some(queue) = store
        .open_queue(&mapping.table, &plan.row_columns(mapping))
        .await?
    else {
        return Err(missing_table(mapping));
    };
    if !store.has_claim_index(&mapping.table).await? {
        tracing::warn!(
            mapping = %mapping.name,
            table = %mapping.table.table,
            "The table has no claim index, so every claim scans it; `engine migrate --mapping {}` adds it.",
            mapping.name
        );
    }
    Ok(queue)
}

/// Fails naming the fix when a mapping's table does not exist yet (a fresh
/// database), instead of with the database's own error at the first query.
pub async fn require_table(store: &Store, mapping: &MappingPlan) -> anyhow::Result<()> {
    match store.columns(&mapping.table.table).await? {
        Some(_) => Ok(()),
        None => Err(missing_table(mapping)),
    }
}

fn missing_table(mapping: &MappingPlan) -> anyhow::Error {
    anyhow::anyhow!(
        "table `{}` does not exist in the database; create it with `engine migrate --mapping {}`",
        mapping.table.table,
        mapping.name
    )
}

async fn cycle_until_done(
    run: &Arc<Run>,
    queues: &[(Arc<MappingPlan>, Feed)],
    options: &RunOptions,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs(
        queues
            .iter()
            .map(|(m, _)| m.schedule.interval_secs)
            .min()
            .unwrap_or(300),
    );
    let mut pauses = 0;
    loop {
        let started = Instant::now();
        let started_at = run.clock.utc();
        let marks: Vec<Counts> = queues
            .iter()
            .map(|(mapping, _)| run.summary.by_mapping.start_cycle(&mapping.name))
            .collect();
        if options.progress_every.is_some() {
            note_cycle_start(run, queues, started).await;
        }
        // A cycle claims only rows due when it began: a row it hands back (a
        // rate limit, a retry) is due later than that, so a one-shot run ends
        // even when every row keeps being handed back.
        let due_by = run.clock.utc();
        let drains = queues.iter().map(|(mapping, queue)| {
            drain(
                run.clone(),
                mapping.clone(),
                queue.clone(),
                options.workers,
                due_by,
            )
        });
        let failed = futures::future::join_all(drains)
            .await
            .into_iter()
            .find_map(Result::err);
        for ((mapping, _), mark) in queues.iter().zip(&marks) {
            record_cycle(run, mapping, mark, started_at, failed.as_ref(), options).await;
        }
        let pause = match failed {
            // Once, a failure is the run's result (exit code 2). A service
            // outlives a database restart: the rows of the failed batch keep
            // their lease and are claimed again when it expires, so a later
            // cycle loses and duplicates nothing.
            Some(err) if !options.watch => return Err(err),
            // A broken config stays broken until someone fixes it: the
            // connector sleeps longer each time, then probes it again.
            Some(err) if err.downcast_ref::<ConnectorPaused>().is_some() => {
                let retry_in = paused_backoff(pauses);
                pauses += 1;
                tracing::error!(
                    error = format!("{err:#}"),
                    retry_in_secs = retry_in.as_secs(),
                    "The connector is paused; it is tried again after a pause."
                );
                run.client.reset_config_probe();
                crate::metrics::global().paused(&run.client.plan.name, true);
                retry_in
            }
            Some(err) => {
                let retry_in = interval.min(FAILED_CYCLE_PAUSE);
                tracing::error!(
                    error = format!("{err:#}"),
                    retry_in_secs = retry_in.as_secs(),
                    "The sync cycle failed; the next one starts after a pause."
                );
                retry_in
            }
            None => {
                pauses = 0;
                crate::metrics::global().paused(&run.client.plan.name, false);
                tracing::info!(
                    complete = run.summary.complete.load(Ordering::Relaxed),
                    error = run.summary.failed.load(Ordering::Relaxed),
                    retrying = run.summary.retrying.load(Ordering::Relaxed),
                    unchanged = run.summary.unchanged.load(Ordering::Relaxed),
                    skipped = run.summary.skipped.load(Ordering::Relaxed),
                    deleted = run.summary.deleted.load(Ordering::Relaxed),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Finished sync cycle."
                );
                interval
            }
        };
        if !options.watch || *run.shutdown.borrow() {
            return Ok(());
        }
        let mut shutdown = run.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Writes one mapping's cycle to the run history. Quiet cycles of a watching
/// run (nothing claimed, nothing failed) are left out: they would push the
/// cycles that did something out of the kept window. A history that cannot
/// be written is a warning, never the run's failure.
async fn record_cycle(
    run: &Run,
    mapping: &MappingPlan,
    mark: &Counts,
    started_at: chrono::DateTime<chrono::Utc>,
    failed: Option<&anyhow::Error>,
    options: &RunOptions,
) {
    let (counts, first_error) = run.summary.by_mapping.cycle_since(&mapping.name, mark);
    let finished_at = run.clock.utc();
    let took = (finished_at - started_at).to_std().unwrap_or_default();
    crate::metrics::global().cycle(&mapping.name, took, failed.is_none());
    if counts.failed + counts.retrying > 0 {
        let (name, table) = (&mapping.name, &mapping.table.table);
        if let Err(err) =
            crate::attempts::trim(&run.store, name, table, crate::attempts::KEEP).await
        {
            tracing::warn!(mapping = %name, error = format!("{err:#}"), "Could not trim the row attempts.");
        }
    }
    if options.history_keep == 0 || (options.watch && failed.is_none() && counts.total() == 0) {
        return;
    }
    let outcome = match failed {
        None => "ok",
        Some(err) if err.downcast_ref::<ConnectorPaused>().is_some() => "paused",
        Some(_) => "failed",
    };
    let cycle = Cycle {
        mapping: mapping.name.clone(),
        table: mapping.table.table.clone(),
        started_at,
        finished_at,
        outcome: outcome.into(),
        counts,
        first_error: failed.map(|err| format!("{err:#}")).or(first_error),
    };
    if let Err(err) = crate::history::record(&run.store, &cycle, options.history_keep).await {
        tracing::warn!(mapping = %mapping.name, error = format!("{err:#}"), "Could not write the run history.");
    }
}

/// How long a paused connector waits before its `n`th (0-based) new try:
/// 10 s, doubling up to 5 min.
fn paused_backoff(n: u32) -> Duration {
    FAILED_CYCLE_PAUSE
        .saturating_mul(2u32.saturating_pow(n.min(16)))
        .min(Duration::from_secs(300))
}

/// How long `--watch` waits after a failed cycle (a database restart, say)
/// before the next, when `interval_secs` is longer.
const FAILED_CYCLE_PAUSE: Duration = Duration::from_secs(10);

/// Claims and processes batches of one mapping with `workers` loops until no row
/// is claimable now. A snapshot first finds what changed in its source.
async fn drain(
    run: Arc<Run>,
    mapping: Arc<MappingPlan>,
    queue: Feed,
    workers: usize,
    due_by: DateTime<Utc>,
) -> anyhow::Result<()> {
    if let Feed::Snapshot(snapshot) = &queue {
        snapshot.find_changes().await?;
    }
    let burst_rows = run.client.plan.burst_rows(mapping.mode);
    let loops = claim_loops(burst_rows, mapping.schedule.batch_size as usize, workers);
    tracing::debug!(mapping = %mapping.name, loops, "Claim loops.");
    let loops = (0..loops).map(|_| {
        let run = run.clone();
        let mapping = mapping.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            // A connector whose config failed claims nothing more.
            let changes = ChangeCheck::new(&run.plan, &mapping);
            let mut empty_claims = 0;
            while !*run.shutdown.borrow() && run.client.config_fault().is_none() {
                if process_one_batch(&run, &mapping, changes.as_ref(), &queue, due_by).await? > 0 {
                    empty_claims = 0;
                } else if !due_rows_were_locked(&run, &queue, empty_claims, due_by).await {
                    break;
                } else {
                    empty_claims += 1;
                }
            }
            anyhow::Ok(())
        })
    });
    let finished = futures::future::join_all(loops).await;
    save_counts(&run, &mapping, &queue).await;
    for handle in finished {
        handle.context("a sync worker panicked")??;
    }
    Ok(())
}

/// Claim loops never exceed this, however large a burst: each holds a
/// claimed batch in memory and takes turns on the database pool.
const MAX_CLAIM_LOOPS: usize = 64;

/// How many claim loops a mapping runs: `workers`, or more when the
/// connector's rate-limit window lets a larger burst out at once than
/// `workers` batches of `batch_size` carry (`burst_rows`, see
/// [`ConnectorPlan::burst_rows`]). Each loop
/// claims, renders, and then waits in the rate limiter with its batch ready,
/// so when a window opens its whole budget leaves at once instead of the
/// rows being claimed a batch at a time while the window ticks (HubSpot's
/// 100 requests of 100 contacts are 10,000 rows: 20 claims of 500).
///
/// [`ConnectorPlan::burst_rows`]: crate::plan::ConnectorPlan::burst_rows
fn claim_loops(burst_rows: Option<usize>, batch_size: usize, workers: usize) -> usize {
    let burst_loops = burst_rows.map_or(0, |rows| rows.div_ceil(batch_size.max(1)));
    workers
        .max(burst_loops)
        .clamp(1, MAX_CLAIM_LOOPS.max(workers))
}

/// After a claim that took nothing: whether rows are due all the same, so
/// were skipped because another mapping over the same table held their lock
/// for its own claim (`SKIP LOCKED`, for an instant); then waits a moment to
/// claim again. Bounded (and over at once on shutdown), so a cycle always ends.
async fn due_rows_were_locked(
    run: &Run,
    feed: &Feed,
    empty_claims: u32,
    due_by: DateTime<Utc>,
) -> bool {
    const TRIES: u32 = 20;
    const PAUSE: Duration = Duration::from_millis(50);
    // A snapshot's rows are its own: no other mapping claims them.
    let Feed::Queue(queue) = feed else {
        return false;
    };
    let due_now = run.clock.utc().min(due_by);
    if empty_claims >= TRIES || !matches!(queue.count_due(due_now).await, Ok(n) if n > 0) {
        return false;
    }
    let mut shutdown = run.shutdown.clone();
    tokio::select! {
        () = tokio::time::sleep(PAUSE) => true,
        _ = shutdown.wait_for(|stop| *stop) => false,
    }
}

/// Adds the cycle's outcome counts to the engine's table for `engine
/// status`. A failure only costs the counts: it is logged, not fatal.
async fn save_counts(run: &Run, mapping: &MappingPlan, feed: &Feed) {
    let counts = run.summary.take_unsaved(&mapping.name);
    // A snapshot's `engine status` reads its state table instead.
    let Feed::Queue(queue) = feed else {
        return;
    };
    let saved = queue
        .store()
        .add_sync_counts(
            &mapping.name,
            &mapping.table.table,
            &counts,
            run.clock.utc(),
        )
        .await;
    if let Err(err) = saved {
        tracing::warn!(mapping = %mapping.name, error = format!("{err:#}"), "Could not save the outcome counts for `engine status`.");
    }
}

/// `now + lease_secs`, saturating: `check` bounds `lease_secs`, and a lease
/// past what a timestamp can hold would still be a lease.
pub(crate) fn lease_deadline(
    now: chrono::DateTime<chrono::Utc>,
    lease_secs: u64,
) -> chrono::DateTime<chrono::Utc> {
    i64::try_from(lease_secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|lease| now.checked_add_signed(lease))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// One batch of either feed. Returns how many rows it claimed.
/// Claims rows due by `due_by` (the cycle's start; see `cycle_until_done`).
async fn process_one_batch(
    run: &Run,
    mapping: &MappingPlan,
    changes: Option<&ChangeCheck>,
    feed: &Feed,
    due_by: DateTime<Utc>,
) -> anyhow::Result<usize> {
    match feed {
        Feed::Queue(queue) => {
            let mut claimed = process_queue_batch(run, mapping, changes, queue, due_by).await?;
            if mapping.on_removed == OnRemoved::Archive {
                claimed += crate::delete::queue::process_batch(run, mapping, queue.store(), due_by)
                    .await?;
            }
            Ok(claimed)
        }
        Feed::Snapshot(snapshot) => {
            crate::snapshot::process_batch(run, mapping, snapshot, due_by).await
        }
    }
}

/// One cycle: claim, render, send, record. Returns how many rows it claimed.
async fn process_queue_batch(
    run: &Run,
    mapping: &MappingPlan,
    changes: Option<&ChangeCheck>,
    queue: &Queue,
    due_by: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let now = run.clock.utc();
    let lease = lease_deadline(now, mapping.schedule.lease_secs);
    let mut rows = queue
        .claim(mapping.schedule.batch_size as usize, now.min(due_by), lease)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    tracing::debug!(mapping = %mapping.name, rows = rows.len(), "Claimed rows.");
    let known_ids: Vec<bool> = rows
        .iter()
        .map(|row| has_crm_id(&row.row, &mapping.table.crm_id))
        .collect();
    // A row may hold a lease shared with another mapping (the seed's shared
    // retry columns), shorter than ours: waits end by the earliest.
    let earliest = rows.iter().map(|row| row.lease).min().unwrap_or(lease);
    let count = rows.len();
    let synced = send_bounded(
        run,
        now,
        earliest,
        sync_rows(run, mapping, changes, &mut rows),
    )
    .await;
    let (outcomes, fingerprints) =
        synced.unwrap_or_else(|| (handed_back(run, count), vec![None; count]));
    // A broken config: the batch goes back untouched (see `hand_back`); rows a
    // shutdown handed back are deferred due at once, equally untouched.
    if let Some(paused) = run.client.config_fault() {
        hand_back(queue, &rows).await?;
        return Err(paused.into());
    }
    let results = decide(run, mapping, &rows, outcomes, fingerprints, &known_ids);
    queue
        .record(&results)
        .await
        .context("failed to record results")?;
    note_failures(run, mapping, &results).await;
    Ok(rows.len())
}

/// Notes when the rows that did not sync were tried, for `engine status`
/// (see [`crate::attempts`]); a failure to note it is a warning only.
async fn note_failures(run: &Run, mapping: &MappingPlan, results: &[RowResult]) {
    let noted = crate::attempts::note_failures(
        &run.store,
        &mapping.name,
        &mapping.table.table,
        results,
        run.clock.utc(),
    )
    .await;
    if let Err(err) = noted {
        tracing::warn!(mapping = %mapping.name, error = format!("{err:#}"), "Could not note when the failed rows were tried.");
    }
}

/// Returns claimed rows to `Queued` as they were before the claim, with no
/// retry spent and no error written: the connector's config failed, not they.
async fn hand_back(queue: &Queue, rows: &[ClaimedRow]) -> anyhow::Result<()> {
    let results: Vec<RowResult> = rows
        .iter()
        .map(|row| {
            RowResult::of(
                row,
                RowUpdate::Release {
                    next_retry_at: None,
                },
            )
        })
        .collect();
    queue
        .record(&results)
        .await
        .context("failed to hand the claimed rows back")?;
    Ok(())
}

fn has_crm_id(row: &Map<String, Value>, column: &str) -> bool {
    match row.get(column) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// The latest a batch claimed at `now` with a lease of `lease` may still wait
/// for the CRM: the lease less the time its write-back needs (a tenth of the
/// lease, at most 30 s), so rows are recorded while they are still ours.
fn wait_deadline(now: Instant, lease: Duration) -> Instant {
    let record_time = (lease / 10).min(Duration::from_secs(30));
    let usable = lease.saturating_sub(record_time).min(MAX_WAIT_HORIZON);
    now.checked_add(usable).unwrap_or(now)
}

/// Waits are never planned further ahead than this (keeps `Instant`
/// arithmetic from overflowing on an absurd `lease_secs`).
const MAX_WAIT_HORIZON: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Runs a batch's sends claimed at `now`, their waits bounded by the
/// earliest lease the batch holds and by shutdown (see [`send_within`]).
pub(crate) async fn send_bounded<F: std::future::Future>(
    run: &Run,
    now: DateTime<Utc>,
    earliest_lease: DateTime<Utc>,
    sends: F,
) -> Option<F::Output> {
    let lease_left = (earliest_lease - now).to_std().unwrap_or(Duration::ZERO);
    let bound = WaitBound {
        deadline: wait_deadline(run.clock.now(), lease_left),
        shutdown: run.shutdown.clone(),
    };
    send_within(run, bound, sends).await
}

/// The outcomes of `count` rows whose sends outlived the shutdown grace:
/// nothing of the batch is known to be written, so every row goes back as a
/// crash would leave it, due at once and with no retry spent (every flow is
/// an upsert, a delete of a gone record succeeds).
pub(crate) fn handed_back(run: &Run, count: usize) -> Vec<RowOutcome> {
    let until = run.clock.utc();
    let reason = "handed back: the run was shutting down".to_string();
    vec![RowOutcome::Deferred { until, reason }; count]
}

/// Runs a batch's sends with `bound` on their waits. Every wait inside ends
/// on shutdown by itself; this is the backstop for anything that does not
/// (a slow authentication request): `None` when the sends are still going
/// twice the grace after the signal.
async fn send_within<F: std::future::Future>(
    run: &Run,
    bound: WaitBound,
    sends: F,
) -> Option<F::Output> {
    let mut shutdown = run.shutdown.clone();
    let backstop = async move {
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(2 * wait::SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        biased;
        outcomes = wait::within(bound, sends) => Some(outcomes),
        () = backstop => None,
    }
}

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
            Err(reason) => outcomes[index] = Some(RowOutcome::Permanent(reason)),
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
    let results = crate::crm::execute_in_mode(&run.client, &jobs, mapping.mode).await;
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

/// Turns outcomes into database updates using the mapping's retry schedule.
/// Logs every row that did not sync at warn, each synced row at debug, and
/// one line per batch at info (a million rows make a million debug lines).
pub(crate) fn decide(
    run: &Run,
    mapping: &MappingPlan,
    rows: &[ClaimedRow],
    outcomes: Vec<RowOutcome>,
    mut fingerprints: Vec<Option<String>>,
    known_ids: &[bool],
) -> Vec<RowResult> {
    let now = run.clock.utc();
    let schedule = &mapping.schedule;
    let delay = Duration::from_secs(schedule.retry_delay_secs);
    let summary = &run.summary;
    let mut batch = Counts::default();
    let mut status_counts = OutcomeCounts::default();
    let mut first_error: Option<String> = None;
    let results = rows.iter()
        .zip(outcomes)
        .zip(fingerprints.iter_mut())
        .zip(known_ids)
        .map(|(((row, outcome), fingerprint), &known_id)| {
            let key = row.row.get(&mapping.table.key_column).and_then(Value::as_str).unwrap_or_default();
            let update = match outcome {
                RowOutcome::Synced { crm_id } => {
                    tracing::debug!(mapping = %mapping.name, row = %row.id, %key, crm_id = crm_id.as_deref().unwrap_or(""), "Synced row.");
                    batch.complete += 1;
                    if known_id { status_counts.updated += 1 } else { status_counts.created += 1 }
                    RowUpdate::Complete { crm_id, fingerprint: fingerprint.take() }
                }
                RowOutcome::Unchanged => {
                    tracing::debug!(mapping = %mapping.name, row = %row.id, %key, "Row unchanged since the CRM confirmed it; not sent.");
                    status_counts.unchanged += 1;
                    RowUpdate::Complete { crm_id: None, fingerprint: None }
                }
                RowOutcome::Skipped { reason, crm_id } => {
                    tracing::info!(mapping = %mapping.name, row = %row.id, %key, %reason, "Row skipped by the sync mode.");
                    status_counts.skipped += 1;
                    RowUpdate::Skipped { reason, crm_id }
                }
                RowOutcome::Permanent(error) => {
                    first_error.get_or_insert_with(|| error.clone());
                    tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, "Row failed permanently.");
                    batch.failed += 1;
                    RowUpdate::Failed { error, retry_count: row.retry_count }
                }
                RowOutcome::Transient(error) => match next_row_retry(row.retry_count, schedule.max_retries, delay, schedule.retry_exponential, now) {
                    RetryDecision::RetryAt { retry_count, at } => {
                        first_error.get_or_insert_with(|| error.clone());
                        tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, retry_count, retry_at = %at, "Row will be retried.");
                        batch.retrying += 1;
                        RowUpdate::RetryLater { error, retry_count, next_retry_at: at }
                    }
                    RetryDecision::GiveUp { retry_count } => {
                        first_error.get_or_insert_with(|| error.clone());
                        tracing::warn!(mapping = %mapping.name, row = %row.id, %key, %error, retry_count, "Row failed after its last retry.");
                        batch.failed += 1;
                        RowUpdate::Failed { error: format!("{error} (gave up after {} retries)", retry_count - 1), retry_count }
                    }
                },
                RowOutcome::Deferred { until, reason } => {
                    tracing::info!(mapping = %mapping.name, row = %row.id, %key, %reason, until = %until, "Row deferred by a rate limit.");
                    batch.deferred += 1;
                    RowUpdate::Release { next_retry_at: Some(until) }
                }
            };
            RowResult::of(row, update)
        })
        .collect();
    tracing::info!(
        mapping = %mapping.name,
        rows = rows.len(),
        complete = batch.complete,
        error = batch.failed,
        retrying = batch.retrying,
        deferred = batch.deferred,
        unchanged = status_counts.unchanged,
        skipped = status_counts.skipped,
        "Synced a batch."
    );
    summary.add(&summary.complete, batch.complete);
    summary.add(&summary.failed, batch.failed);
    summary.add(&summary.retrying, batch.retrying);
    summary.add(&summary.deferred, batch.deferred);
    status_counts.failed = batch.failed;
    summary.add(&summary.unchanged, status_counts.unchanged);
    summary.add(&summary.skipped, status_counts.skipped);
    summary.add(&summary.created, status_counts.created);
    summary.count_for(&mapping.name, &status_counts);
    summary
        .by_mapping
        .add(&mapping.name, &batch, first_error.as_deref());
    let metrics = crate::metrics::global();
    metrics.rows(&mapping.name, &batch);
    metrics.more_rows(&mapping.name, "unchanged", status_counts.unchanged);
    metrics.more_rows(&mapping.name, "skipped", status_counts.skipped);
    results
}

/// Counts the rows due in each mapping starting a cycle, so that progress
/// lines can say how far the connector's cycles are and how long they have
/// left. A failed count only leaves those two out.
async fn note_cycle_start(run: &Run, queues: &[(Arc<MappingPlan>, Feed)], at: Instant) {
    let now = run.clock.utc();
    for (mapping, feed) in queues {
        // A snapshot learns what is due only from its diff, which has not run yet.
        let Feed::Queue(queue) = feed else { continue };
        match queue.count_due(now).await {
            Ok(due) => {
                let total_before = run.summary.by_mapping.counts(&mapping.name).total();
                let start = CycleStart {
                    at,
                    total_before,
                    due,
                };
                let mut cycles = run.summary.cycle.lock().unwrap_or_else(|e| e.into_inner());
                cycles.insert(mapping.name.clone(), start);
            }
            Err(err) => {
                tracing::debug!(mapping = %mapping.name, error = format!("{err:#}"), "Could not count the due rows.");
            }
        }
    }
}

/// The connector's cycles under way, taken together: when the first
/// started, rows done since, and rows due at their starts.
fn cycles_so_far(summary: &RunSummary) -> Option<(Instant, u64, u64)> {
    let cycles = summary.cycle.lock().unwrap_or_else(|e| e.into_inner());
    let totals: HashMap<String, u64> = summary
        .by_mapping
        .snapshot()
        .into_iter()
        .map(|(mapping, counts)| (mapping, counts.total()))
        .collect();
    let at = cycles.values().map(|c| c.at).min()?;
    let done = cycles
        .iter()
        .map(|(mapping, c)| {
            let now = totals.get(mapping).copied().unwrap_or(0);
            now.saturating_sub(c.total_before)
        })
        .sum();
    let due = cycles.values().map(|c| c.due).sum();
    Some((at, done, due))
}

async fn report_progress(summary: Arc<RunSummary>, connector: String, every: Duration) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let total = summary.total();
        let rate = total as f64 / started.elapsed().as_secs_f64().max(0.001);
        let (done, due, percent, eta_secs) = match cycles_so_far(&summary) {
            Some((at, done, due)) => {
                let (percent, eta) = cycle_progress(due, done, at.elapsed());
                (Some(done), Some(due), percent, eta)
            }
            None => (None, None, None, None),
        };
        tracing::info!(
            %connector,
            complete = summary.complete.load(Ordering::Relaxed),
            error = summary.failed.load(Ordering::Relaxed),
            retrying = summary.retrying.load(Ordering::Relaxed),
            unchanged = summary.unchanged.load(Ordering::Relaxed),
            skipped = summary.skipped.load(Ordering::Relaxed),
            deleted = summary.deleted.load(Ordering::Relaxed),
            rows_per_sec = rate.round() as u64,
            cycle_done = done,
            cycle_due = due,
            percent,
            eta_secs,
            "Progress."
        );
    }
}

/// How far a cycle that had `due` rows is after `done` of them in
/// `elapsed`: percent done, and seconds left at the rate so far. Rows
/// queued after the cycle started can take `done` past `due`: 100 %, 0 s.
fn cycle_progress(due: u64, done: u64, elapsed: Duration) -> (Option<u64>, Option<u64>) {
    if due == 0 {
        return (None, None);
    }
    let percent = (done.min(due) * 100 / due).min(100);
    let secs = elapsed.as_secs_f64();
    let eta = (done > 0 && secs > 0.0).then(|| {
        let rate = done as f64 / secs;
        (due.saturating_sub(done) as f64 / rate).ceil() as u64
    });
    (Some(percent), eta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_claim_loops_run_to_hold_a_whole_burst_and_never_fewer_than_the_workers() {
        // HubSpot: 10,000 rows a burst in claims of 500.
        assert_eq!(claim_loops(Some(10_000), 500, 4), 20);
        assert_eq!(claim_loops(Some(10_001), 500, 4), 21);
        // A burst that `workers` batches already carry, or none: the workers.
        assert_eq!(claim_loops(Some(100), 500, 4), 4);
        assert_eq!(claim_loops(None, 500, 4), 4);
        // Bounded, however large the burst or small the batch…
        assert_eq!(claim_loops(Some(1_000_000), 1, 4), MAX_CLAIM_LOOPS);
        assert_eq!(claim_loops(Some(10), 0, 0), 10);
        // …unless more workers are asked for.
        assert_eq!(claim_loops(Some(1_000_000), 1, 100), 100);
        assert_eq!(claim_loops(None, 500, 0), 1);
    }

    #[test]
    fn progress_adds_up_the_cycles_of_every_mapping_of_the_connector() {
        let summary = RunSummary::default();
        let one = |n| Counts {
            complete: n,
            ..Counts::default()
        };
        summary.by_mapping.add("a", &one(5), None);
        let at = Instant::now();
        for (mapping, due) in [("a", 10), ("b", 20)] {
            let total_before = summary.by_mapping.counts(mapping).total();
            let start = CycleStart {
                at,
                total_before,
                due,
            };
            summary.cycle.lock().unwrap().insert(mapping.into(), start);
        }
        summary.by_mapping.add("a", &one(4), None);
        summary.by_mapping.add("b", &one(6), None);
        // 4 of a's 10 and 6 of b's 20: the 5 before a's cycle do not count.
        assert_eq!(cycles_so_far(&summary), Some((at, 10, 30)));
    }

    #[test]
    fn a_cycle_reports_its_share_done_and_the_seconds_left_at_its_rate() {
        let ten_secs = Duration::from_secs(10);
        // 2,500 of 10,000 in 10 s: 250/s, so 7,500 left take 30 s.
        assert_eq!(
            cycle_progress(10_000, 2_500, ten_secs),
            (Some(25), Some(30))
        );
        // Nothing done yet: no rate, no estimate.
        assert_eq!(cycle_progress(10_000, 0, ten_secs), (Some(0), None));
        // Rows queued after the start: done passes due.
        assert_eq!(cycle_progress(100, 150, ten_secs), (Some(100), Some(0)));
        // Nothing was due (a watching run between batches).
        assert_eq!(cycle_progress(0, 0, ten_secs), (None, None));
    }

    #[test]
    fn a_lease_past_what_a_timestamp_holds_saturates_instead_of_panicking() {
        let now = crate::clock::ManualClock::default_start_utc();
        assert_eq!(
            lease_deadline(now, 600),
            now + chrono::Duration::seconds(600)
        );
        let far = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        assert_eq!(lease_deadline(now, 1_000_000_000_000_000), far);
        assert_eq!(lease_deadline(now, u64::MAX), far);
    }
}
