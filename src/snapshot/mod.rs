//! Snapshot mode: a mapping whose source is a table, a view or a query the
//! engine only reads. Each cycle finds the rows that are new, changed or gone
//! since the CRM last confirmed them, and sends only those.
//!
//! # State
//! The sync state lives in the engine's own table, `engine_snapshot_state`
//! (see [`state`]), keyed by the mapping's scope (its name and source) and the
//! row's source key (the `source.id` column as text). It may be in the source
//! database or in another one (`source.state_database_env`, `--state-database`),
//! so a read-only replica or a reporting view works: nothing is ever written to
//! the source.
//!
//! # The diff streams
//! One statement reads the source ordered by source key (compared as bytes on
//! both backends), and the state is read in pages of [`CHUNK`] rows along the
//! same order, by primary-key range. The two ordered streams are merge-joined
//! in one pass, like a sorted-merge join:
//! - a source key with no state row is **new**;
//! - a key on both sides whose fingerprint (see [`crate::fingerprint`]) differs
//!   from the one the CRM confirmed is **changed**; an equal one is skipped;
//! - a state key the source passed without returning it is **removed**.
//!
//! New and changed rows are written to the state as `Queued` upserts carrying
//! the row as read (`pending_row`), removed ones as `Queued` deletes (with
//! `on_removed = "archive"`, and only for records this mapping synced), in
//! batched statements of [`CHUNK`] rows. Memory holds one state page, one
//! source row and one chunk of writes, whatever the size of the table. The
//! source must yield keys in ascending byte order; a row out of order stops the
//! diff (a wrong order would make rows look removed).
//!
//! # Sending
//! The queued state rows are then drained like a queue table: a claim marks up
//! to `batch_size` rows `Processing` under a lease (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), the HTTP work runs with no transaction open, and the record is
//! fenced on the lease. The fingerprint of what was sent becomes the confirmed
//! one only when the CRM answered success, so a crash between send and record
//! re-sends the row (an upsert: still one record). A row edited while its
//! previous version is in flight is left alone by the diff and found changed
//! by the next one: no lost update.
//!
//! # Deletes
//! A removed row's record is deleted through the connector's `[delete]`
//! operation, by the CRM id the state recorded; a 404 counts as done, and the
//! row ends `Deleted`, so later cycles do not delete it again. A cycle whose
//! source returns no row at all while the state holds synced records stops
//! before deleting anything, unless `--allow-empty-source` says the source is
//! empty on purpose; a source query that fails fails the cycle before any send.

mod source;
pub mod state;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt};
use serde_json::{Map, Value};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

use crate::fingerprint::{mapping_fingerprint, row_fingerprint};
use crate::plan::{MappingPlan, OnRemoved, SnapshotSource};
use crate::store::{RowColumns, Store};

use state::{
    COMPLETE, DELETE, DELETED, ERROR, PROCESSING, PendingUpsert, QUEUED, StateRow, UPSERT,
};

/// Rows per state page, and per batched write of the diff.
const CHUNK: usize = 1000;

/// The scope a mapping's state rows are keyed by: its name and its source, so
/// one mapping name over another table is another state.
pub fn scope(mapping: &MappingPlan) -> String {
    match mapping.snapshot.as_ref().map(|s| &s.source) {
        Some(SnapshotSource::Table(table)) => format!("{}:{table}", mapping.name),
        _ => format!("{}:query", mapping.name),
    }
}

/// One snapshot mapping's source and state, opened for a run. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SnapshotFeed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: Store,
    state: Store,
    scope: String,
    mapping: String,
    on_removed: OnRemoved,
    allow_empty_source: bool,
    /// Streams the source ordered by key.
    select: String,
    /// The columns a fingerprint covers.
    columns: Vec<String>,
    mapping_fingerprint: String,
}

/// What one diff found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffCounts {
    /// Source rows read.
    pub rows: u64,
    /// Rows with no state yet (or deleted before and back).
    pub new: u64,
    /// Rows whose values differ from what the CRM confirmed.
    pub changed: u64,
    /// Rows as the CRM has them (or already waiting with these values).
    pub unchanged: u64,
    /// Rows a worker holds right now; the next diff looks at them again.
    pub in_flight: u64,
    /// State rows whose source row is gone, queued for a delete.
    pub removed: u64,
    /// State rows whose source row is gone, forgotten (no delete wanted or needed).
    pub forgotten: u64,
    /// Source rows skipped: a NULL key, or a key seen just before.
    pub skipped: u64,
}

impl SnapshotFeed {
    /// Opens `mapping`'s snapshot: creates the state table in `state` if
    /// missing, and checks that the source has the id and key columns.
    pub async fn open(
        source: Store,
        state: Store,
        mapping: &MappingPlan,
        wanted: &RowColumns,
        allow_empty_source: bool,
    ) -> anyhow::Result<SnapshotFeed> {
        let plan = mapping
            .snapshot
            .as_ref()
            .with_context(|| format!("mapping `{}` is not in snapshot mode", mapping.name))?;
        state::ensure_table(&state).await?;
        let available = source::columns(&source, &plan.source).await?;
        let columns = source::selected_columns(
            &available,
            wanted,
            &mapping.table.id_column,
            &mapping.table.key_column,
        )?;
        let native_order =
            source::id_sorts_as_text(&source, &plan.source, &mapping.table.id_column).await?;
        let select = source::select_sql(
            source.backend(),
            &plan.source,
            &mapping.table.id_column,
            &columns,
            native_order,
        );
        Ok(SnapshotFeed {
            inner: Arc::new(Inner {
                source,
                state,
                scope: scope(mapping),
                mapping: mapping.name.clone(),
                on_removed: mapping.on_removed,
                allow_empty_source,
                select,
                columns,
                mapping_fingerprint: mapping_fingerprint(mapping),
            }),
        })
    }

    /// The database holding the state (and the run's instance slots).
    pub fn state_store(&self) -> &Store {
        &self.inner.state
    }

    /// Compares the whole source with the state and queues what changed (see
    /// the module docs).
    pub async fn find_changes(&self) -> anyhow::Result<DiffCounts> {
        let started = Instant::now();
        let sql = AssertSqlSafe(self.inner.select.clone());
        let counts = match &self.inner.source {
            Store::Sqlite(pool) => self.merge(sqlx::query_as(sql).fetch(pool)).await,
            Store::Postgres(pool) => self.merge(sqlx::query_as(sql).fetch(pool)).await,
        }?;
        tracing::info!(
            mapping = %self.inner.mapping,
            rows = counts.rows,
            new = counts.new,
            changed = counts.changed,
            unchanged = counts.unchanged,
            removed = counts.removed,
            in_flight = counts.in_flight,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Compared the snapshot source with its state."
        );
        if counts.skipped > 0 {
            tracing::warn!(
                mapping = %self.inner.mapping,
                skipped = counts.skipped,
                "Source rows with a NULL or repeated id were skipped; source.id must identify one row."
            );
        }
        Ok(counts)
    }

    async fn merge<S>(&self, mut source: S) -> anyhow::Result<DiffCounts>
    where
        S: Stream<Item = Result<(Option<String>, Json<Map<String, Value>>), sqlx::Error>> + Unpin,
    {
        let inner = &self.inner;
        let mut counts = DiffCounts::default();
        let mut pages = StatePages::new(&inner.state, &inner.scope);
        let mut writes = Writes::default();
        let mut last_key = None;
        let mut next = next_source_row(&mut source, &mut last_key, &mut counts).await?;
        if next.is_none() {
            self.guard_empty_source().await?;
        }
        loop {
            let order = {
                let head = pages.head().await?;
                match (&next, head) {
                    (None, None) => break,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some((key, _)), Some(state)) => key.as_str().cmp(state.source_key.as_str()),
                }
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (key, row) = next.take().expect("a source row");
                    let fingerprint = self.fingerprint(&row);
                    writes.upsert(key, fingerprint, &row)?;
                    counts.new += 1;
                    next = next_source_row(&mut source, &mut last_key, &mut counts).await?;
                }
                std::cmp::Ordering::Equal => {
                    let state = pages.pop().expect("a state row");
                    let (key, row) = next.take().expect("a source row");
                    self.on_both(state, key, row, &mut writes, &mut counts)?;
                    next = next_source_row(&mut source, &mut last_key, &mut counts).await?;
                }
                std::cmp::Ordering::Greater => {
                    let state = pages.pop().expect("a state row");
                    self.on_removed(state, &mut writes, &mut counts);
                }
            }
            if writes.len() >= CHUNK {
                writes.flush(&inner.state, &inner.scope).await?;
            }
        }
        writes.flush(&inner.state, &inner.scope).await?;
        Ok(counts)
    }

    fn fingerprint(&self, row: &Map<String, Value>) -> String {
        row_fingerprint(&self.inner.mapping_fingerprint, row, &self.inner.columns)
    }

    /// A key on both sides: queued again when its values differ from those
    /// the CRM confirmed (or from those already waiting, or that failed).
    fn on_both(
        &self,
        state: StateRow,
        key: String,
        row: Map<String, Value>,
        writes: &mut Writes,
        counts: &mut DiffCounts,
    ) -> anyhow::Result<()> {
        if state.status == PROCESSING {
            counts.in_flight += 1;
            return Ok(());
        }
        let fingerprint = self.fingerprint(&row);
        let known = match state.status.as_str() {
            COMPLETE => state.fingerprint.as_deref(),
            QUEUED | ERROR if state.action == UPSERT => state.pending_fingerprint.as_deref(),
            _ => None,
        };
        if known == Some(fingerprint.as_str()) {
            counts.unchanged += 1;
            return Ok(());
        }
        if state.status == DELETED || state.action == DELETE {
            counts.new += 1;
        } else {
            counts.changed += 1;
        }
        writes.upsert(key, fingerprint, &row)
    }

    /// A state key the source no longer has.
    fn on_removed(&self, state: StateRow, writes: &mut Writes, counts: &mut DiffCounts) {
        if state.status == PROCESSING || state.status == DELETED {
            return;
        }
        let synced = state.fingerprint.is_some() || state.crm_id.is_some();
        if self.inner.on_removed == OnRemoved::Ignore || !synced {
            counts.forgotten += 1;
            writes.forget.push(state.source_key);
        } else if state.action != DELETE {
            counts.removed += 1;
            writes.delete.push(state.source_key);
        }
    }

    /// An empty source deletes nothing while the state holds synced records,
    /// unless the run says the source is empty on purpose.
    async fn guard_empty_source(&self) -> anyhow::Result<()> {
        let inner = &self.inner;
        if inner.on_removed != OnRemoved::Archive || inner.allow_empty_source {
            return Ok(());
        }
        let synced = state::count_synced(&inner.state, &inner.scope).await?;
        if synced > 0 {
            bail!(
                "the snapshot source of mapping `{}` returned no rows while its state holds {synced} synced records: \
                 nothing was deleted. A broken view or a wrong query must not wipe the CRM; if the source \
                 is empty on purpose, run once with --allow-empty-source",
                inner.mapping
            );
        }
        Ok(())
    }

    /// Claims up to `limit` due state rows under `lease`.
    pub(crate) async fn claim(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        lease: DateTime<Utc>,
    ) -> anyhow::Result<Vec<state::Claimed>> {
        let limit = i64::try_from(limit).context("claim limit too large")?;
        state::claim(&self.inner.state, &self.inner.scope, limit, now, lease)
            .await
            .context("claiming snapshot rows")
    }

    pub(crate) async fn record(&self, rows: &[state::WriteBack]) -> anyhow::Result<u64> {
        state::record(&self.inner.state, &self.inner.scope, rows)
            .await
            .context("recording snapshot results")
    }
}

/// The next source row with a key, checking the order the merge relies on.
async fn next_source_row<S>(
    source: &mut S,
    last_key: &mut Option<String>,
    counts: &mut DiffCounts,
) -> anyhow::Result<Option<(String, Map<String, Value>)>>
where
    S: Stream<Item = Result<(Option<String>, Json<Map<String, Value>>), sqlx::Error>> + Unpin,
{
    loop {
        let Some((key, Json(row))) = source
            .try_next()
            .await
            .context("reading the snapshot source")?
        else {
            return Ok(None);
        };
        counts.rows += 1;
        let Some(key) = key else {
            counts.skipped += 1;
            continue;
        };
        if let Some(previous) = last_key.as_deref() {
            match key.as_str().cmp(previous) {
                std::cmp::Ordering::Equal => {
                    counts.skipped += 1;
                    continue;
                }
                std::cmp::Ordering::Less => bail!(
                    "the snapshot source returned id `{key}` after `{previous}`: rows must come in \
                     byte order of the id as text; nothing past this point was compared"
                ),
                std::cmp::Ordering::Greater => {}
            }
        }
        *last_key = Some(key.clone());
        return Ok(Some((key, row)));
    }
}

/// The state, read one page at a time along the key order.
struct StatePages<'a> {
    store: &'a Store,
    scope: &'a str,
    page: std::collections::VecDeque<StateRow>,
    /// The last key read; the next page starts after it.
    after: Option<String>,
    done: bool,
}

impl<'a> StatePages<'a> {
    fn new(store: &'a Store, scope: &'a str) -> Self {
        Self {
            store,
            scope,
            page: std::collections::VecDeque::new(),
            after: None,
            done: false,
        }
    }

    /// The next state row, reading a page when the last one is used up. The
    /// next page always starts after the last key read, so rows the diff
    /// inserts meanwhile (all before the current head) are not read back.
    async fn head(&mut self) -> anyhow::Result<Option<&StateRow>> {
        if self.page.is_empty() && !self.done {
            let rows =
                state::page(self.store, self.scope, self.after.as_deref(), CHUNK as i64).await?;
            self.done = rows.len() < CHUNK;
            if let Some(last) = rows.last() {
                self.after = Some(last.source_key.clone());
            }
            self.page.extend(rows);
        }
        Ok(self.page.front())
    }

    fn pop(&mut self) -> Option<StateRow> {
        self.page.pop_front()
    }
}

/// The diff's pending writes, flushed every [`CHUNK`] rows.
#[derive(Default)]
struct Writes {
    upserts: Vec<PendingUpsert>,
    delete: Vec<String>,
    forget: Vec<String>,
}

impl Writes {
    fn len(&self) -> usize {
        self.upserts.len() + self.delete.len() + self.forget.len()
    }

    fn upsert(
        &mut self,
        key: String,
        fingerprint: String,
        row: &Map<String, Value>,
    ) -> anyhow::Result<()> {
        self.upserts.push(PendingUpsert {
            k: key,
            f: fingerprint,
            r: serde_json::to_string(row)?,
        });
        Ok(())
    }

    async fn flush(&mut self, store: &Store, scope: &str) -> anyhow::Result<()> {
        state::queue_upserts(store, scope, &self.upserts).await?;
        state::queue_deletes(store, scope, &self.delete).await?;
        state::forget(store, scope, &self.forget).await?;
        self.upserts.clear();
        self.delete.clear();
        self.forget.clear();
        Ok(())
    }
}

/// `engine check --database` for a snapshot mapping: the source exists (the
/// query runs) and has the id, the key and every column the fields read.
pub async fn check_source(
    store: &Store,
    mapping: &MappingPlan,
) -> anyhow::Result<Vec<crate::diagnostic::Diagnostic>> {
    use crate::diagnostic::Severity;
    let Some(plan) = &mapping.snapshot else {
        return Ok(Vec::new());
    };
    let at = match plan.source {
        SnapshotSource::Table(_) => "source.table",
        SnapshotSource::Query(_) => "source.query",
    };
    let file = &mapping.source;
    let columns = match source::columns(store, &plan.source).await {
        Ok(columns) => columns,
        Err(err) => {
            let diagnostic = file
                .diagnostic_at_value(Severity::Error, at, format!("{err:#}"))
                .hint("a snapshot reads a table, a view, or one SELECT the database can run");
            return Ok(vec![diagnostic]);
        }
    };
    let mut wanted: Vec<(&str, &str)> = vec![
        ("source.id", mapping.table.id_column.as_str()),
        ("source.key", mapping.table.key_column.as_str()),
    ];
    for used in &mapping.variables {
        let name = used.name.as_str();
        if !crate::plan::MAPPING_EXTRA_VARIABLES.contains(&name)
            && name != crate::plan::WHOLE_CONTEXT
        {
            wanted.push((used.at.as_str(), name));
        }
    }
    Ok(wanted
        .into_iter()
        .filter(|(_, name)| !columns.iter().any(|c| c == name))
        .map(|(path, name)| {
            file.diagnostic_at_value(
                Severity::Error,
                path,
                format!("`{name}` is not a column of the snapshot source"),
            )
            .hint(format!("its columns: {}", columns.join(", ")))
        })
        .collect())
}

/// The database holding `mapping`'s state: the one its
/// `source.state_database_env` names, else `default` (`--state-database`, or
/// the source database).
pub async fn state_store(
    mapping: &MappingPlan,
    default: &Store,
    env: &dyn crate::plan::Env,
) -> anyhow::Result<Store> {
    let Some(name) = mapping
        .snapshot
        .as_ref()
        .and_then(|s| s.state_database_env.as_deref())
    else {
        return Ok(default.clone());
    };
    let url = env.var(name).with_context(|| {
        format!(
            "mapping `{}` keeps its state in the database named by {name}, which is not set",
            mapping.name
        )
    })?;
    Store::connect(&url)
        .await
        .with_context(|| format!("opening the state database named by {name}"))
}
