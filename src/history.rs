//! Run history: one row per sync cycle of a mapping, in an engine-owned table
//! (`engine_cycles`) of the same database, created on first use. Rows are
//! keyed by mapping and source table, so two syncs of one name over two
//! tables keep separate histories, and each keeps only its latest `keep`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::Store;

/// The engine-owned table.
pub const TABLE: &str = "engine_cycles";

/// Cycles kept per mapping and table when `--keep-history` is not given.
pub const DEFAULT_KEEP: u32 = 1000;

/// What became of rows: counts by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Now `Complete`.
    pub complete: u64,
    /// Ended in `Error`.
    pub failed: u64,
    /// Put back for a later retry.
    pub retrying: u64,
    /// Handed back because of a long rate limit.
    pub deferred: u64,
    /// Recorded `Complete` without a request: the values the CRM last
    /// confirmed (the fingerprint) had not changed.
    pub unchanged: u64,
    /// Not let through by the mapping's sync mode (`update_only`,
    /// `create_only`).
    pub skipped: u64,
    /// CRM records deleted (`on_removed = "archive"`).
    pub deleted: u64,
}

/// The outcomes added after the table first shipped: `ensure_table` adds them
/// to an older table, and `recent` reads 0 where an older table lacks them.
const LATER_OUTCOMES: [&str; 3] = ["unchanged", "skipped", "deleted"];

impl Counts {
    /// The counts in field order (as the INSERT binds them).
    fn values(&self) -> [u64; 7] {
        [
            self.complete,
            self.failed,
            self.retrying,
            self.deferred,
            self.unchanged,
            self.skipped,
            self.deleted,
        ]
    }

    fn from_values(
        [
            complete,
            failed,
            retrying,
            deferred,
            unchanged,
            skipped,
            deleted,
        ]: [u64; 7],
    ) -> Counts {
        Counts {
            complete,
            failed,
            retrying,
            deferred,
            unchanged,
            skipped,
            deleted,
        }
    }

    fn add(&mut self, other: &Counts) {
        let (mine, theirs) = (self.values(), other.values());
        *self = Counts::from_values(std::array::from_fn(|i| mine[i] + theirs[i]));
    }

    fn since(&self, earlier: &Counts) -> Counts {
        let (now, then) = (self.values(), earlier.values());
        Counts::from_values(std::array::from_fn(|i| now[i].saturating_sub(then[i])))
    }

    /// Rows in all outcomes.
    pub fn total(&self) -> u64 {
        self.values().iter().sum()
    }
}

#[derive(Debug, Default)]
struct Tally {
    counts: Counts,
    /// The first row error since the cycle started.
    first_error: Option<String>,
}

/// Row counts per mapping for the whole run, and each mapping's first row
/// error of its current cycle.
#[derive(Debug, Default)]
pub struct Tallies {
    by_mapping: Mutex<HashMap<String, Tally>>,
}

impl Tallies {
    fn with<T>(&self, mapping: &str, f: impl FnOnce(&mut Tally) -> T) -> T {
        let mut map = self.by_mapping.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(mapping.to_string()).or_default())
    }

    /// Adds one batch's counts, and its first row error if the cycle has none yet.
    pub fn add(&self, mapping: &str, counts: &Counts, first_error: Option<&str>) {
        self.with(mapping, |tally| {
            tally.counts.add(counts);
            if tally.first_error.is_none() {
                tally.first_error = first_error.map(str::to_string);
            }
        });
    }

    /// A mapping's cycle starts: its counts so far, and its first error forgotten.
    pub fn start_cycle(&self, mapping: &str) -> Counts {
        self.with(mapping, |tally| {
            tally.first_error = None;
            tally.counts
        })
    }

    /// The counts of the cycle that started at `start`, and its first row error.
    pub fn cycle_since(&self, mapping: &str, start: &Counts) -> (Counts, Option<String>) {
        self.with(mapping, |tally| {
            (tally.counts.since(start), tally.first_error.clone())
        })
    }

    /// One mapping's counts for the run so far.
    pub fn counts(&self, mapping: &str) -> Counts {
        self.with(mapping, |tally| tally.counts)
    }

    /// Every mapping's counts for the run so far.
    pub fn snapshot(&self) -> Vec<(String, Counts)> {
        let map = self.by_mapping.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map.iter().map(|(m, t)| (m.clone(), t.counts)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// One recorded cycle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cycle {
    /// The mapping's name.
    pub mapping: String,
    /// Its source table.
    pub table: String,
    /// When the cycle started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// `ok`, `failed` (the database, say) or `paused` (a broken connector config).
    pub outcome: String,
    /// Rows by outcome.
    #[serde(flatten)]
    pub counts: Counts,
    /// The first row error of the cycle, or why the cycle failed.
    pub first_error: Option<String>,
}

const SQLITE_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS engine_cycles (\
     id INTEGER PRIMARY KEY AUTOINCREMENT, mapping TEXT NOT NULL, source_table TEXT NOT NULL, \
     started_at TEXT NOT NULL, finished_at TEXT NOT NULL, outcome TEXT NOT NULL, \
     complete INTEGER NOT NULL, failed INTEGER NOT NULL, retrying INTEGER NOT NULL, \
     deferred INTEGER NOT NULL, first_error TEXT, unchanged INTEGER NOT NULL DEFAULT 0, \
     skipped INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS engine_cycles_by_mapping ON engine_cycles (mapping, source_table, id)",
];

const POSTGRES_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS engine_cycles (\
     id BIGSERIAL PRIMARY KEY, mapping TEXT NOT NULL, source_table TEXT NOT NULL, \
     started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ NOT NULL, outcome TEXT NOT NULL, \
     complete BIGINT NOT NULL, failed BIGINT NOT NULL, retrying BIGINT NOT NULL, \
     deferred BIGINT NOT NULL, first_error TEXT, unchanged BIGINT NOT NULL DEFAULT 0, \
     skipped BIGINT NOT NULL DEFAULT 0, deleted BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS engine_cycles_by_mapping ON engine_cycles (mapping, source_table, id)",
];

/// Creates the table if it does not exist. Two processes creating it at once
/// on PostgreSQL can collide on the catalog; the loser tries again.
async fn ensure_table(store: &Store) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        let result = create(store).await;
        match result {
            Ok(()) => return Ok(()),
            Err(_) if attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(err) => return Err(err).context("cannot create the run-history table"),
        }
    }
}

async fn create(store: &Store) -> anyhow::Result<()> {
    match store {
        Store::Sqlite(pool) => {
            for statement in SQLITE_DDL {
                sqlx::query(statement).execute(pool).await?;
            }
        }
        Store::Postgres(pool) => {
            for statement in POSTGRES_DDL {
                sqlx::query(statement).execute(pool).await?;
            }
        }
    }
    // A table an older engine created lacks the later outcomes. (Two
    // processes adding one at once: the loser fails, and `ensure_table`'s
    // next try finds it there.)
    let missing = missing_outcomes(store).await?;
    let int_type = match store {
        Store::Sqlite(_) => "INTEGER",
        Store::Postgres(_) => "BIGINT",
    };
    for column in missing {
        let sql = format!("ALTER TABLE {TABLE} ADD COLUMN {column} {int_type} NOT NULL DEFAULT 0");
        store.run_statements(&[sql]).await?;
    }
    Ok(())
}

/// The later outcomes the table lacks (all of them when it does not exist).
async fn missing_outcomes(store: &Store) -> anyhow::Result<Vec<&'static str>> {
    let columns = store.columns(TABLE).await?.unwrap_or_default();
    Ok(LATER_OUTCOMES
        .into_iter()
        .filter(|name| !columns.iter().any(|c| c.name == *name))
        .collect())
}

/// Records `cycle` and drops the mapping's cycles beyond the latest `keep`.
pub async fn record(store: &Store, cycle: &Cycle, keep: u32) -> anyhow::Result<()> {
    ensure_table(store).await?;
    let counts = cycle
        .counts
        .values()
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    // `$n` parameters read the same in both dialects (SQLite takes `$NNN`).
    const INSERT: &str = "INSERT INTO engine_cycles (mapping, source_table, started_at, finished_at, outcome, complete, failed, retrying, deferred, first_error, unchanged, skipped, deleted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
    const PRUNE: &str = "DELETE FROM engine_cycles WHERE mapping = $1 AND source_table = $2 AND id NOT IN (SELECT id FROM engine_cycles WHERE mapping = $1 AND source_table = $2 ORDER BY id DESC LIMIT $3)";
    // The same statements and values on either pool (sqlx's query types differ).
    macro_rules! record_on {
        ($pool:expr) => {{
            sqlx::query(INSERT)
                .bind(&cycle.mapping)
                .bind(&cycle.table)
                .bind(cycle.started_at)
                .bind(cycle.finished_at)
                .bind(&cycle.outcome)
                .bind(counts[0])
                .bind(counts[1])
                .bind(counts[2])
                .bind(counts[3])
                .bind(&cycle.first_error)
                .bind(counts[4])
                .bind(counts[5])
                .bind(counts[6])
                .execute($pool)
                .await?;
            sqlx::query(PRUNE)
                .bind(&cycle.mapping)
                .bind(&cycle.table)
                .bind(i64::from(keep))
                .execute($pool)
                .await?;
        }};
    }
    match store {
        Store::Sqlite(pool) => record_on!(pool),
        Store::Postgres(pool) => record_on!(pool),
    }
    Ok(())
}

type CycleRow = (
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
    i64,
);

/// The latest `limit` cycles, newest first: of one mapping (and, when given,
/// one source table), or of all. Empty when nothing was ever recorded; never
/// creates the table.
pub async fn recent(
    store: &Store,
    mapping: Option<&str>,
    table: Option<&str>,
    limit: u32,
) -> anyhow::Result<Vec<Cycle>> {
    if store.columns(TABLE).await?.is_none() {
        return Ok(Vec::new());
    }
    // Read-only: a table an older engine wrote (not yet migrated by a run)
    // reads 0 for the outcomes it lacks.
    let missing = missing_outcomes(store).await?;
    let later: Vec<String> = LATER_OUTCOMES
        .iter()
        .map(|name| {
            if missing.contains(name) {
                format!("CAST(0 AS BIGINT) AS {name}")
            } else {
                format!("CAST({name} AS BIGINT)")
            }
        })
        .collect();
    let columns = format!(
        "mapping, source_table, started_at, finished_at, outcome, complete, failed, retrying, deferred, first_error, {}",
        later.join(", ")
    );
    let columns = columns.as_str();
    let rows: Vec<CycleRow> = match store {
        Store::Sqlite(pool) => {
            let sql = format!(
                "SELECT {columns} FROM engine_cycles WHERE (?1 IS NULL OR mapping = ?1) \
                 AND (?2 IS NULL OR source_table = ?2) ORDER BY id DESC LIMIT ?3"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(mapping)
                .bind(table)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        }
        Store::Postgres(pool) => {
            let sql = format!(
                "SELECT {columns} FROM engine_cycles WHERE ($1::text IS NULL OR mapping = $1) \
                 AND ($2::text IS NULL OR source_table = $2) ORDER BY id DESC LIMIT $3"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(mapping)
                .bind(table)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(
            |(
                mapping,
                table,
                started_at,
                finished_at,
                outcome,
                c,
                f,
                r,
                d,
                first_error,
                u,
                s,
                x,
            )| {
                let counts = [c, f, r, d, u, s, x].map(|n| u64::try_from(n).unwrap_or(0));
                Cycle {
                    mapping,
                    table,
                    started_at,
                    finished_at,
                    outcome,
                    counts: Counts::from_values(counts),
                    first_error,
                }
            },
        )
        .collect())
}

/// The cycles as a text table, newest first, for `engine history`.
pub fn render(cycles: &[Cycle]) -> String {
    if cycles.is_empty() {
        return "no cycles recorded yet\n".into();
    }
    let mut out = format!(
        "{:<20} {:<16} {:>7} {:<7} {:>8} {:>6} {:>8} {:>8} {:>9} {:>7} {:>7}  first error\n",
        "started (UTC)",
        "mapping",
        "secs",
        "outcome",
        "complete",
        "error",
        "retrying",
        "deferred",
        "unchanged",
        "skipped",
        "deleted"
    );
    for cycle in cycles {
        let secs = (cycle.finished_at - cycle.started_at).num_milliseconds() as f64 / 1000.0;
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:>7.1} {:<7} {:>8} {:>6} {:>8} {:>8} {:>9} {:>7} {:>7}  {}",
            cycle.started_at.format("%Y-%m-%d %H:%M:%S"),
            cycle.mapping,
            secs,
            cycle.outcome,
            cycle.counts.complete,
            cycle.counts.failed,
            cycle.counts.retrying,
            cycle.counts.deferred,
            cycle.counts.unchanged,
            cycle.counts.skipped,
            cycle.counts.deleted,
            cycle.first_error.as_deref().unwrap_or("-"),
        );
    }
    out
}
