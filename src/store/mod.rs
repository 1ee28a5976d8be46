//! All database access: claim queued rows, record what happened to them,
//! report on the table, migrate it, and hold `max_instances` slots.
//!
//! One [`Store`] serves SQLite (the embedded default) and PostgreSQL
//! (production). It is an enum, not a trait: each backend gets its own SQL
//! text where the dialects differ (`sqlite.rs`, `postgres.rs`) and shares it
//! where they agree (`sql.rs`), so both behave the same and one test suite
//! covers both.
//!
//! # The row lifecycle
//! A row's processing status goes `Queued` → `Processing` → `Complete` or
//! `Error`, or back to `Queued` to be retried. While a row is `Processing`
//! its `next_retry_at` column holds the claimer's *lease deadline*: a row
//! whose lease has passed belongs to a run that crashed, and is claimed
//! again. Writes are fenced by the lease, so a worker that outlived its
//! lease cannot overwrite the row's new owner.
//!
//! # Timestamps
//! PostgreSQL stores them as `timestamptz`. SQLite stores UTC text shaped
//! like its own `datetime()` plus milliseconds (`YYYY-MM-DD HH:MM:SS.fff`),
//! so comparing the text orders the instants. Both backends keep them to the
//! millisecond, so a lease read back compares equal to the one written.

pub mod budget;
mod counts;
mod lock;
mod peek;
mod postgres;
mod schema;
mod sql;
mod sqlite;
pub mod text;
mod triggers;

use std::fmt;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use sqlx::{PgPool, SqlitePool};

pub use counts::{OutcomeCounts, SyncCounts};
pub use lock::InstanceGuard;
pub use triggers::{ChangeTriggers, TriggerState};

/// A database the engine reads rows from and writes their status to.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

/// Which table and columns one mapping works on.
///
/// All names are already validated as SQL identifiers by the caller; the
/// store still quotes them with double quotes.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub table: String,
    pub id_column: String,
    pub key_column: String,
    /// The engine's status: `Queued` → `Processing` → `Complete` | `Error`.
    pub processing_status: String,
    /// The user's status: set to `Complete` on success, `Error` on final error.
    pub sync_status: String,
    /// The CRM's id for the row.
    pub crm_id: String,
    /// The last error message; NULL after a success.
    pub error: String,
    /// Attempts that failed so far (the seed shares one between CRMs; a
    /// mapping may name its own).
    pub retry_count: String,
    /// When a `Queued` row may be tried again; the lease deadline while
    /// `Processing`.
    pub next_retry_at: String,
    /// A hash of the values last confirmed by the CRM (see
    /// [`crate::fingerprint`]); `None` when the mapping keeps none.
    pub fingerprint: Option<String>,
    /// The other mappings of the same table (their own `table_mates`
    /// empty): a table `engine migrate` creates gets their state columns
    /// too, and those that write the same `next_retry_at` (the seed's shared
    /// retry columns) change how claims stamp it (see `sql::claim_arms`).
    pub table_mates: Vec<TableSpec>,
}

impl TableSpec {
    /// The processing-status columns of the table mates that use the same
    /// `next_retry_at`; empty when the column is this mapping's own.
    pub fn shares_due_with(&self) -> Vec<&str> {
        let mut statuses: Vec<&str> = self
            .table_mates
            .iter()
            .filter(|mate| {
                mate.next_retry_at == self.next_retry_at
                    && mate.processing_status != self.processing_status
            })
            .map(|mate| mate.processing_status.as_str())
            .collect();
        statuses.sort_unstable();
        statuses.dedup();
        statuses
    }
}

/// One column of a table, as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The declared type (PostgreSQL: `format_type`, e.g. `uuid`,
    /// `timestamp with time zone`; SQLite: the declared type text).
    pub sql_type: String,
    pub nullable: bool,
}

/// Which columns a claim returns in [`ClaimedRow::row`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RowColumns {
    /// Every column of the table.
    #[default]
    All,
    /// Only these (the columns a mapping's templates read), the key
    /// column, the CRM id and the fingerprint column, when the spec has one. Names the table lacks are left out, so a template reading one
    /// fails for that row with "not a column of the row". Fewer columns make
    /// the claim, its JSON and the memory of a batch smaller.
    Only(Vec<String>),
}

/// A row taken for processing.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    /// The id column as text.
    pub id: String,
    /// The row's columns (after the claim): all of them, or those the
    /// [`Queue`] was opened with.
    pub row: Map<String, Value>,
    pub retry_count: i64,
    /// The lease this claim holds; hand it back in [`RowResult::lease`].
    pub lease: DateTime<Utc>,
    /// The database's own address of the row (SQLite's rowid), when the
    /// table has one: the record finds the row by it, not through the id's
    /// index.
    pub handle: Option<i64>,
    /// Whether the lease is, or may become, shared with another mapping
    /// that uses the same `next_retry_at` (see `sql::written_due`): false
    /// only when the claim found another mapping's dead claim on the row.
    pub shares_lease: bool,
}

/// A claim's RETURNING row: the id as text, the columns as JSON, the retry
/// count, the handle.
type Returned = (
    String,
    sqlx::types::Json<Map<String, Value>>,
    i64,
    Option<i64>,
);

/// [`Returned`] plus the `next_retry_at` the claim left on the row, and
/// whether another mapping sharing it has the row `Processing`.
type ReturnedWithLease = (
    String,
    sqlx::types::Json<Map<String, Value>>,
    i64,
    Option<i64>,
    Option<DateTime<Utc>>,
    bool,
);

impl ClaimedRow {
    /// `lease`: the lease the row now holds. It is the claim's own, or, when
    /// another mapping sharing `next_retry_at` holds the row, that mapping's
    /// (see `sql::claim_arms`).
    fn from_returned((id, row, retry_count, handle): Returned, lease: DateTime<Utc>) -> Self {
        ClaimedRow {
            id,
            row: row.0,
            retry_count,
            lease,
            handle,
            shares_lease: true,
        }
    }

    /// As [`ClaimedRow::from_returned`], from what a claim returns with the
    /// lease the row now holds (`held`, `None` when it could not be read)
    /// and whether another mapping sharing `next_retry_at` has the row
    /// `Processing` (`other_processing`). The claim keeps a live lease of
    /// that mapping (and shares it) and overwrites a dead one: a row that
    /// got the claim's own `lease` while another mapping has it
    /// `Processing` is that mapping's dead claim, which must not keep this
    /// lease on the row once this mapping is done. This is exact because the
    /// claim never adopts a live lease equal to its own to the millisecond
    /// (it skips that row until its next claim, see `sql::claim_arms`): a
    /// row holding our lease was taken through one of the arms for due rows,
    /// so the other mapping's lease on it had expired.
    fn from_claim(
        (id, row, retry_count, handle, held, other_processing): ReturnedWithLease,
        lease: DateTime<Utc>,
    ) -> Self {
        let held = held.unwrap_or(lease);
        let dead_claim_of_another = other_processing && held == lease;
        ClaimedRow {
            shares_lease: !dead_claim_of_another,
            ..Self::from_returned((id, row, retry_count, handle), held)
        }
    }
}

/// What to write back for one claimed row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowUpdate {
    /// Processing and sync status `Complete`, the CRM id (kept as it was
    /// when `None`), error NULL, retry count 0, next_retry_at NULL, and the
    /// fingerprint of what the CRM confirmed (kept as it was when `None`; an
    /// empty string clears it so that it matches nothing).
    Complete {
        crm_id: Option<String>,
        fingerprint: Option<String>,
    },
    /// Processing status `Complete` and sync status `Skipped`: the sync mode
    /// forbade the write. The reason goes in the error column; the fingerprint
    /// is cleared, so queueing the row again checks the CRM again.
    Skipped {
        reason: String,
        crm_id: Option<String>,
    },
    /// Back to `Queued` with the error text, to be tried at `next_retry_at`.
    RetryLater {
        error: String,
        retry_count: i64,
        next_retry_at: DateTime<Utc>,
    },
    /// Back to `Queued` without counting an attempt (rate limited, shutting
    /// down); retry count and error stay as they were.
    Release {
        next_retry_at: Option<DateTime<Utc>>,
    },
    /// Processing and sync status `Error` for good; next_retry_at NULL.
    Failed { error: String, retry_count: i64 },
}

/// The outcome for one claimed row, fenced by the lease it was claimed with.
#[derive(Debug, Clone)]
pub struct RowResult {
    pub id: String,
    /// [`ClaimedRow::handle`]; `None` finds the row by its id.
    pub handle: Option<i64>,
    pub lease: DateTime<Utc>,
    /// [`ClaimedRow::shares_lease`].
    pub shares_lease: bool,
    pub update: RowUpdate,
}

impl RowResult {
    /// What to write back for `row`.
    pub fn of(row: &ClaimedRow, update: RowUpdate) -> Self {
        RowResult {
            id: row.id.clone(),
            handle: row.handle,
            lease: row.lease,
            shares_lease: row.shares_lease,
            update,
        }
    }
}

/// One mapping's table, looked up once: the claim and record statements a
/// run repeats, built for the table's columns and shape. Open it with
/// [`Store::open_queue`]; it is cheap to clone and share between workers.
///
/// Built once per run, so a column added while the engine runs is seen at
/// the next run.
#[derive(Debug, Clone)]
pub struct Queue {
    store: Store,
    spec: TableSpec,
    statements: Arc<Statements>,
}

/// The SQL text of a [`Queue`].
#[derive(Debug)]
struct Statements {
    claim: String,
    record: String,
    release_requeued: String,
    count_due: String,
}

impl Queue {
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes up to `limit` due rows in one statement and marks them
    /// `Processing` until `lease`.
    ///
    /// Due means `Queued` with `next_retry_at` NULL or `<= now`, or
    /// `Processing` with a lease `<= now` (its run crashed) or with no lease
    /// (see `sql::claim_arms`). Rows are taken in `next_retry_at` order,
    /// NULLs first; rows due at the same time are taken in the order the
    /// claim index keeps them (SQLite: insertion order; PostgreSQL: id). The
    /// returned rows are in no particular order. Concurrent claimers, in this
    /// process or others, never get the same row.
    pub async fn claim(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        lease: DateTime<Utc>,
    ) -> anyhow::Result<Vec<ClaimedRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (now, lease) = (stored_time(now), stored_time(lease));
        let limit = i64::try_from(limit).context("claim limit too large")?;
        let sql = &self.statements.claim;
        let claimed = match &self.store {
            Store::Sqlite(pool) => sqlite::claim(pool, sql, limit, now, lease).await,
            Store::Postgres(pool) => postgres::claim(pool, sql, limit, now, lease).await,
        };
        claimed.with_context(|| format!("claiming rows of {}", self.spec.table))
    }

    /// How many rows a claim at `now` could take: what is left to sync in
    /// this cycle, for progress lines. One count per claim arm, each a range
    /// of the claim index.
    pub async fn count_due(&self, now: DateTime<Utc>) -> anyhow::Result<u64> {
        let now = stored_time(now);
        let sql = sqlx::AssertSqlSafe(self.statements.count_due.as_str());
        let count: i64 = match &self.store {
            Store::Sqlite(pool) => {
                sqlx::query_scalar(sql)
                    .bind(sql::sqlite_time(now))
                    .fetch_one(pool)
                    .await
            }
            Store::Postgres(pool) => sqlx::query_scalar(sql).bind(now).fetch_one(pool).await,
        }
        .with_context(|| format!("counting the due rows of {}", self.spec.table))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Writes all `results` in one statement and returns how many rows were
    /// written.
    ///
    /// Fenced: a row is only written while it is still `Processing` under
    /// the result's lease, so a row that was reclaimed after its lease
    /// expired keeps its new owner's state.
    ///
    /// A row queued again while it was in flight (its values changed) is
    /// not written either: it stays `Queued` and is made due now, so its
    /// newer version is sent after this one (no lost update). That takes a
    /// second statement only when some row was not written.
    pub async fn record(&self, results: &[RowResult]) -> anyhow::Result<u64> {
        if results.is_empty() {
            return Ok(0);
        }
        let (sql, release) = (&self.statements.record, &self.statements.release_requeued);
        let written = match &self.store {
            Store::Sqlite(pool) => sqlite::record(pool, sql, release, results).await,
            Store::Postgres(pool) => postgres::record(pool, sql, release, results).await,
        };
        written.with_context(|| format!("recording results in {}", self.spec.table))
    }
}

impl Store {
    /// Connects to `sqlite://path` (the file is created if missing),
    /// `sqlite::memory:`, or `postgres://…`.
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        let store = if url.starts_with("sqlite:") {
            Store::Sqlite(sqlite::connect(url).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::Postgres(postgres::connect(url).await?)
        } else {
            bail!("unsupported database URL: expected `sqlite://…` or `postgres://…`");
        };
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// The table's columns in order, or `None` when the table does not exist.
    pub async fn columns(&self, table: &str) -> anyhow::Result<Option<Vec<Column>>> {
        let columns = match self {
            Store::Sqlite(pool) => sqlite::columns(pool, table).await?,
            Store::Postgres(pool) => postgres::columns(pool, table).await?,
        };
        Ok((!columns.is_empty()).then_some(columns))
    }

    /// Looks the table up once and builds its claim and record statements;
    /// `None` when the table does not exist.
    pub async fn open_queue(
        &self,
        spec: &TableSpec,
        columns: &RowColumns,
    ) -> anyhow::Result<Option<Queue>> {
        let Some(table_columns) = self.columns(&spec.table).await? else {
            return Ok(None);
        };
        let selected = select_columns(spec, &table_columns, columns);
        let (claim, record, release_requeued) = match self {
            Store::Sqlite(pool) => sqlite::statements(pool, spec, &table_columns, &selected).await,
            Store::Postgres(_) => postgres::statements(spec, &table_columns, &selected),
        }
        .with_context(|| format!("preparing the statements for {}", spec.table))?;
        Ok(Some(Queue {
            store: self.clone(),
            spec: spec.clone(),
            statements: Arc::new(Statements {
                claim,
                record,
                release_requeued,
                count_due: sql::count_due_sql(spec),
            }),
        }))
    }

    /// [`Queue::claim`] on a queue of all columns opened for this one call
    /// (tests and tools; a run opens its queue once).
    pub async fn claim(
        &self,
        spec: &TableSpec,
        limit: usize,
        now: DateTime<Utc>,
        lease: DateTime<Utc>,
    ) -> anyhow::Result<Vec<ClaimedRow>> {
        self.required_queue(spec)
            .await?
            .claim(limit, now, lease)
            .await
    }

    /// [`Queue::count_due`] on a queue opened for this one call.
    pub async fn count_due(&self, spec: &TableSpec, now: DateTime<Utc>) -> anyhow::Result<u64> {
        self.required_queue(spec).await?.count_due(now).await
    }

    /// [`Queue::record`] on a queue opened for this one call.
    pub async fn record(&self, spec: &TableSpec, results: &[RowResult]) -> anyhow::Result<u64> {
        self.required_queue(spec).await?.record(results).await
    }

    async fn required_queue(&self, spec: &TableSpec) -> anyhow::Result<Queue> {
        self.open_queue(spec, &RowColumns::All)
            .await?
            .with_context(|| format!("table {} does not exist", spec.table))
    }

    /// Whether the table has the index claims walk (see `engine migrate`).
    pub async fn has_claim_index(&self, spec: &TableSpec) -> anyhow::Result<bool> {
        let index = schema::claim_index_columns(self.backend(), spec);
        let index: Vec<&str> = index.iter().map(String::as_str).collect();
        match self {
            Store::Sqlite(pool) => sqlite::has_index(pool, &spec.table, &index).await,
            Store::Postgres(pool) => postgres::has_index(pool, &spec.table, &index).await,
        }
    }

    /// How many rows have each processing status (NULL included), NULL
    /// first, then alphabetical.
    pub async fn status_counts(
        &self,
        spec: &TableSpec,
    ) -> anyhow::Result<Vec<(Option<String>, i64)>> {
        let sql = sql::status_counts(spec);
        let counts = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
            }
            Store::Postgres(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
            }
        };
        Ok(counts?)
    }

    /// Up to `limit` rows that failed for good, or wait for a retry with an
    /// error: `(key, error, retry count)`, by id descending.
    pub async fn latest_errors(
        &self,
        spec: &TableSpec,
        limit: i64,
    ) -> anyhow::Result<Vec<(String, String, i64)>> {
        let sql = sql::latest_errors(spec);
        let errors = match self {
            Store::Sqlite(pool) => {
                let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(limit);
                query.fetch_all(pool).await
            }
            Store::Postgres(pool) => {
                let query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(limit);
                query.fetch_all(pool).await
            }
        };
        Ok(errors?)
    }

    /// Puts every `Error` row back in the queue with a fresh retry budget.
    /// The error text stays until the next outcome replaces it.
    pub async fn requeue_errors(&self, spec: &TableSpec) -> anyhow::Result<u64> {
        self.execute(sql::requeue_errors(spec)).await
    }

    /// Queues every row that is not `Processing`, due now with a fresh retry
    /// budget (demo and benchmarks start from here).
    pub async fn queue_all(&self, spec: &TableSpec) -> anyhow::Result<u64> {
        self.execute(sql::queue_all(spec)).await
    }

    /// The statements `engine migrate` would run: create the seed's contacts
    /// table when it is missing, else add the state columns `spec` names
    /// that it lacks; and add the claim index when the table has none.
    pub async fn migration_sql(&self, spec: &TableSpec) -> anyhow::Result<Vec<String>> {
        let columns = self.columns(&spec.table).await?;
        let has_claim_index = match &columns {
            None => false,
            Some(_) => self.has_claim_index(spec).await?,
        };
        schema::migration_sql(self.backend(), spec, columns.as_deref(), has_claim_index)
    }

    /// Runs [`Store::migration_sql`] in one transaction and returns what it ran.
    pub async fn migrate(&self, spec: &TableSpec) -> anyhow::Result<Vec<String>> {
        let statements = self.migration_sql(spec).await?;
        match self {
            Store::Sqlite(pool) => run_in_transaction(pool, &statements).await?,
            Store::Postgres(pool) => run_in_transaction(pool, &statements).await?,
        }
        Ok(statements)
    }

    /// The names of the triggers on `table` (none when it does not exist).
    pub async fn trigger_names(&self, table: &str) -> anyhow::Result<Vec<String>> {
        let names = match self {
            Store::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = $1 ORDER BY name",
                )
                .bind(table)
                .fetch_all(pool)
                .await
            }
            Store::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT tgname::text FROM pg_trigger \
                     WHERE tgrelid = to_regclass(quote_ident($1)) AND NOT tgisinternal ORDER BY 1",
                )
                .bind(table)
                .fetch_all(pool)
                .await
            }
        };
        names.with_context(|| format!("listing the triggers of {table}"))
    }

    /// Runs `statements` in one transaction (`engine migrate`).
    pub async fn run_statements(&self, statements: &[String]) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(pool) => run_in_transaction(pool, statements).await,
            Store::Postgres(pool) => run_in_transaction(pool, statements).await,
        }
    }

    /// Takes one of `max_instances` slots named `lock_name` (e.g.
    /// `mapping:hubspot`), shared by every process using this database.
    /// `None` when all slots are taken; the slot is freed when the guard
    /// drops (or sooner with [`InstanceGuard::release`]).
    pub async fn acquire_instance_slot(
        &self,
        lock_name: &str,
        max_instances: u32,
    ) -> anyhow::Result<Option<InstanceGuard>> {
        match self {
            Store::Sqlite(pool) => lock::acquire_file_slot(pool, lock_name, max_instances).await,
            Store::Postgres(pool) => {
                lock::acquire_advisory_slot(pool, lock_name, max_instances).await
            }
        }
    }

    /// Inserts rows given as JSON objects (column → value) in one
    /// transaction, many rows per statement; for loading the seed's contacts
    /// and benchmark data. Consecutive rows with the same keys share a
    /// statement; columns a row leaves out take their defaults.
    pub async fn insert_rows(
        &self,
        table: &str,
        rows: &[Map<String, Value>],
    ) -> anyhow::Result<u64> {
        let inserted = match self {
            Store::Sqlite(pool) => sqlite::insert_rows(pool, table, rows).await,
            Store::Postgres(pool) => postgres::insert_rows(pool, table, rows).await,
        };
        inserted.with_context(|| format!("inserting rows into {table}"))
    }

    /// Reads one row as a JSON object of all its columns, as [`Store::claim`]
    /// returns it; `None` if no row has that id.
    pub async fn fetch_row(
        &self,
        spec: &TableSpec,
        id: &str,
    ) -> anyhow::Result<Option<Map<String, Value>>> {
        match self {
            Store::Sqlite(pool) => sqlite::fetch_row(pool, spec, id).await,
            Store::Postgres(pool) => postgres::fetch_row(pool, spec, id).await,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }

    async fn execute(&self, sql: String) -> anyhow::Result<u64> {
        let done = match self {
            Store::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await?
                .rows_affected(),
            Store::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(done)
    }
}

/// Runs `statements` all or nothing (both backends have transactional DDL).
async fn run_in_transaction<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statements: &[String],
) -> anyhow::Result<()>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let mut tx = pool.begin().await?;
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement.as_str()))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("running {statement}"))?;
    }
    tx.commit().await?;
    Ok(())
}

/// The columns a claim returns, in table order: `wanted`'s and the key.
fn select_columns<'c>(
    spec: &TableSpec,
    table: &'c [Column],
    wanted: &RowColumns,
) -> Vec<&'c Column> {
    match wanted {
        RowColumns::All => table.iter().collect(),
        RowColumns::Only(names) => table
            .iter()
            .filter(|c| {
                // The CRM id tells a first sync (created) from an update.
                c.name == spec.key_column
                    || c.name == spec.crm_id
                    || names.contains(&c.name)
                    || spec.fingerprint.as_ref() == Some(&c.name)
            })
            .collect(),
    }
}

/// Times are kept to the millisecond (SQLite's text shape holds no more),
/// so a lease compares equal after a round trip through either backend.
fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(3)
}
