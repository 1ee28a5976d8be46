//! The orchestrator: claim → render → send → record, per mapping, until nothing
//! is claimable (or, with `--watch`, every `interval_secs` until a signal).
//!
//! Each cycle is one claim statement, the HTTP work with no transaction open, and
//! one record statement. A crash leaves rows `Processing` with a lease deadline;
//! the next claim after it expires takes them again, and since every flow is an
//! upsert keyed on the record's key, sending a row twice cannot create a duplicate.

mod decide;
mod deletes;
mod progress;
mod render;
mod snapshot;

pub(crate) use decide::decide;
use progress::{draw_progress, note_cycle_start, report_progress};
pub(crate) use render::{render_job, sync_rows};

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
use crate::history::{Counts, Cycle, Tallies};
use crate::plan::{Env, MappingPlan, Plan};
use crate::plan::{OnRemoved, SyncMode};
use crate::send::budget::SharedBudget;
use crate::send::probe::ConnectorPaused;
use crate::send::wait::{self, WaitBound};
use crate::send::{CrmClient, Failure, RowOutcome};
use crate::snapshot::SnapshotFeed;
use crate::store::{ClaimedRow, OutcomeCounts, Queue, RowResult, RowUpdate, Store};

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
    /// Draw a progress bar instead of the lines, when bars are on (see
    /// [`crate::progress`]): the CLI on an interactive terminal.
    pub progress_bar: bool,
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
            progress_bar: false,
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
        let deleted = Counts {
            deleted: n,
            ..Counts::default()
        };
        self.by_mapping.add(mapping, &deleted, None);
        crate::metrics::global().more_rows(mapping, "deleted", n);
    }

    /// Counts a delete that did not end done, as `decide` counts upserts,
    /// so the exit code tells of it too.
    pub(crate) fn add_unfinished_delete(&self, mapping: &str, update: &RowUpdate) {
        let mut counts = Counts::default();
        let (counter, slot) = match update {
            RowUpdate::Failed { .. } => (&self.failed, &mut counts.failed),
            RowUpdate::RetryLater { .. } => (&self.retrying, &mut counts.retrying),
            RowUpdate::Release { .. } => (&self.deferred, &mut counts.deferred),
            RowUpdate::Complete { .. } | RowUpdate::Skipped { .. } => return,
        };
        self.add(counter, 1);
        *slot = 1;
        // The cycle's history (and its first error) tells of it too.
        let error = match update {
            RowUpdate::Failed { error, .. } | RowUpdate::RetryLater { error, .. } => {
                Some(error.as_str())
            }
            _ => None,
        };
        self.by_mapping.add(mapping, &counts, error);
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
    let client = CrmClient::new(connector_plan, plan.templates.clone(), env, clock.clone())?;
    // The budget lives where this process writes anyway: the queue's
    // database, or a snapshot's state store (its source may be read-only).
    let budget_store = match queues.first().map(|(_, feed)| feed) {
        Some(Feed::Snapshot(snapshot)) => snapshot.state_store(),
        _ => &store,
    };
    let client = Arc::new(share_budget(client, budget_store, env, clock.clone()).await?);
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
    let bar = options
        .progress_bar
        .then(|| crate::progress::Bar::new(connector))
        .flatten();
    let progress = match bar {
        Some(bar) => Some(tokio::spawn(draw_progress(run.summary.clone(), bar))),
        None => options.progress_every.map(|every| {
            tokio::spawn(report_progress(
                run.summary.clone(),
                connector.to_string(),
                every,
            ))
        }),
    };
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
    if let Some(budget) = run.client.shared_budget() {
        budget.release().await;
    }
    for guard in guards {
        guard.release().await?;
    }
    result?;
    Ok(summary)
}

/// On PostgreSQL, `client` takes its requests from the rate budget every
/// process syncing through the same connector and credentials shares (see
/// [`crate::send::budget`]), unless the connector sets `share_rate_budget = false`.
/// SQLite has one host: nothing to share.
async fn share_budget(
    client: CrmClient,
    store: &Store,
    env: &dyn Env,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<CrmClient> {
    let Store::Postgres(pool) = store else {
        return Ok(client);
    };
    let budget = SharedBudget::open(pool, &client.plan, client.base_url(), env, clock, Duration::ZERO)
        .await
        .with_context(|| {
            format!(
                "connector `{}` shares its rate budget in the table engine_rate_budget, which cannot be created \
                 in this database; grant CREATE, or set `share_rate_budget = false` in connectors/{}.toml \
                 (then each process paces to the whole limit alone)",
                client.plan.name, client.plan.name
            )
        })?;
    Ok(match budget {
        Some(budget) => {
            tracing::debug!(connector = %client.plan.name, budget = %budget.key(), "Sharing the rate budget across processes.");
            client.with_shared_budget(budget)
        }
        None => client,
    })
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
    let interval = queues
        .iter()
        .map(|(m, _)| m.schedule.interval)
        .min()
        .unwrap_or(Duration::from_secs(300));
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
            () = tokio::time::sleep(pause) => {}
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
    // The other loops start once the first loop's claim comes back full: a
    // backlog smaller than one claim is then one claim, not several claims
    // racing for the same rows (on PostgreSQL `SKIP LOCKED` splits them, and
    // a bulk job or a batch would go as several smaller ones). They give up
    // when the first loop ends without one.
    let (open_others, others_opened) = watch::channel(false);
    let mut open_others = Some(open_others);
    let loops = (0..loops).map(|index| {
        let run = run.clone();
        let mapping = mapping.clone();
        let queue = queue.clone();
        let gate = LoopGate(if index == 0 { open_others.take() } else { None });
        let mut opened = others_opened.clone();
        tokio::spawn(async move {
            if !gate.opens() && opened.wait_for(|open| *open).await.is_err() {
                return anyhow::Ok(());
            }
            // A connector whose config failed claims nothing more.
            let changes = ChangeCheck::new(&run.plan, &mapping);
            let mut empty_claims = 0;
            while !*run.shutdown.borrow() && run.client.config_fault().is_none() {
                let claimed =
                    process_one_batch(&run, &mapping, changes.as_ref(), &queue, due_by, &gate)
                        .await?;
                if claimed > 0 {
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

/// Lets a mapping's other claim loops start once the first loop's claim
/// comes back full (see [`drain`]). Only the first loop's gate opens; the
/// others' claims leave it as it is.
pub(crate) struct LoopGate(Option<watch::Sender<bool>>);

impl LoopGate {
    /// Whether this loop's claims open the gate (it is the first loop).
    fn opens(&self) -> bool {
        self.0.is_some()
    }

    /// After a claim that took `rows` of the `limit` asked for: a full claim
    /// means more rows may be due, so the other loops start.
    pub(crate) fn claimed(&self, rows: usize, limit: usize) {
        if let Some(open) = self.0.as_ref().filter(|_| rows >= limit) {
            open.send_replace(true);
        }
    }
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

/// `now + lease`, saturating: `check` bounds `lease_secs`, and a lease
/// past what a timestamp can hold would still be a lease.
pub(crate) fn lease_deadline(
    now: chrono::DateTime<chrono::Utc>,
    lease: Duration,
) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(lease)
        .ok()
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
    gate: &LoopGate,
) -> anyhow::Result<usize> {
    match feed {
        Feed::Queue(queue) => {
            let mut claimed =
                process_queue_batch(run, mapping, changes, queue, due_by, gate).await?;
            if mapping.on_removed == OnRemoved::Archive {
                claimed +=
                    deletes::process_batch(run, mapping, queue.store(), due_by, gate).await?;
            }
            Ok(claimed)
        }
        Feed::Snapshot(snapshot) => {
            snapshot::process_batch(run, mapping, snapshot, due_by, gate).await
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
    gate: &LoopGate,
) -> anyhow::Result<usize> {
    let now = run.clock.utc();
    let lease = lease_deadline(now, mapping.schedule.lease);
    let limit = claim_size(run, mapping);
    let mut rows = queue.claim(limit, now.min(due_by), lease).await?;
    gate.claimed(rows.len(), limit);
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
    let (outcomes, fingerprints) = synced.unwrap_or_else(|| {
        let outcome = RowOutcome::Failed(handed_back(run));
        (vec![outcome; count], vec![None; count])
    });
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

/// Rows per claim: the mapping's `batch_size`, or, for an upsert through a
/// connector with a bulk flow, up to a whole bulk job (the flow is chosen
/// by how many rows the claim holds, see [`crate::send::execute`]).
fn claim_size(run: &Run, mapping: &MappingPlan) -> usize {
    let batch = mapping.schedule.batch_size as usize;
    match &run.client.plan.bulk {
        Some(bulk) if mapping.mode == SyncMode::Upsert && bulk.usable_with(&mapping.params) => {
            batch.max(bulk.max_rows)
        }
        _ => batch,
    }
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

/// Why the rows of a batch whose sends outlived the shutdown grace go back:
/// nothing of the batch is known to be written, so every row goes back as a
/// crash would leave it, due at once and with no retry spent (every flow is
/// an upsert, a delete of a gone record succeeds).
pub(crate) fn handed_back(run: &Run) -> Failure {
    Failure::Deferred {
        until: run.clock.utc(),
        reason: "handed back: the run was shutting down".to_string(),
    }
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
    fn a_delete_that_did_not_finish_fails_the_exit_code_and_counts_in_its_cycle() {
        let summary = RunSummary::default();
        let mark = summary.by_mapping.start_cycle("m");
        summary.add_deleted("m", 2);
        assert!(summary.all_complete(), "deleted records are done");
        let update = RowUpdate::Failed {
            error: "HTTP 400: no such list".into(),
            retry_count: 1,
        };
        summary.add_unfinished_delete("m", &update);
        assert!(!summary.all_complete(), "exit code 1, not 0");
        let (counts, first_error) = summary.by_mapping.cycle_since("m", &mark);
        assert_eq!((counts.deleted, counts.failed), (2, 1));
        assert_eq!(first_error.as_deref(), Some("HTTP 400: no such list"));
    }

    #[test]
    fn a_lease_past_what_a_timestamp_holds_saturates_instead_of_panicking() {
        let now = crate::clock::ManualClock::default_start_utc();
        assert_eq!(
            lease_deadline(now, Duration::from_secs(600)),
            now + chrono::Duration::seconds(600)
        );
        let far = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        assert_eq!(
            lease_deadline(now, Duration::from_secs(1_000_000_000_000_000)),
            far
        );
        assert_eq!(lease_deadline(now, Duration::from_secs(u64::MAX)), far);
    }
}
