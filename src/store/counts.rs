//! Outcome counts per mapping, kept by the engine in its own table
//! `engine_sync_counts` (one row per mapping and source table), so that
//! `engine status` can say how many rows were created, updated, left
//! unchanged or skipped: totals, and the last cycle's.

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::Store;

/// How many rows of one mapping ended each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeCounts {
    /// Synced rows that had no CRM id before: the first sync of the row.
    pub created: u64,
    /// Synced rows that already had a CRM id.
    pub updated: u64,
    /// Not sent: the fingerprint matched.
    pub unchanged: u64,
    /// Not written: the sync mode forbade it.
    pub skipped: u64,
    /// Ended in `Error`.
    pub failed: u64,
}

impl OutcomeCounts {
    pub fn is_empty(&self) -> bool {
        *self == OutcomeCounts::default()
    }

    pub fn add(&mut self, other: &OutcomeCounts) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.skipped += other.skipped;
        self.failed += other.failed;
    }

    fn as_i64(&self) -> [i64; 5] {
        [
            self.created,
            self.updated,
            self.unchanged,
            self.skipped,
            self.failed,
        ]
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
    }

    fn from_i64(values: [i64; 5]) -> Self {
        let [created, updated, unchanged, skipped, failed] =
            values.map(|n| u64::try_from(n).unwrap_or(0));
        OutcomeCounts {
            created,
            updated,
            unchanged,
            skipped,
            failed,
        }
    }
}

impl std::fmt::Display for OutcomeCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "created {}, updated {}, unchanged {}, skipped {}, failed {}",
            self.created, self.updated, self.unchanged, self.skipped, self.failed
        )
    }
}

/// What `engine status` shows for one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCounts {
    pub total: OutcomeCounts,
    pub last_cycle: OutcomeCounts,
    /// When the last cycle that did something ended (RFC 3339).
    pub last_cycle_at: String,
}

const TABLE: &str = "engine_sync_counts";
const COUNTS: [&str; 5] = ["created", "updated", "unchanged", "skipped", "failed"];

fn create_sql() -> String {
    let columns: Vec<String> = COUNTS
        .iter()
        .flat_map(|c| {
            [
                format!("{c} BIGINT NOT NULL DEFAULT 0"),
                format!("last_{c} BIGINT NOT NULL DEFAULT 0"),
            ]
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (mapping TEXT NOT NULL, source TEXT NOT NULL, \
         last_cycle_at TEXT NOT NULL, {}, PRIMARY KEY (mapping, source))",
        columns.join(", ")
    )
}

/// Adds one cycle's counts: $1 mapping, $2 source, $3 time, then the counts.
fn add_sql() -> String {
    let placeholders: Vec<String> = (4..4 + COUNTS.len()).map(|n| format!("${n}")).collect();
    let totals: Vec<String> = COUNTS
        .iter()
        .map(|c| format!("{c} = {TABLE}.{c} + excluded.{c}"))
        .collect();
    let lasts: Vec<String> = COUNTS
        .iter()
        .map(|c| format!("last_{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {TABLE} (mapping, source, last_cycle_at, {names}) \
         VALUES ($1, $2, $3, {placeholders}) \
         ON CONFLICT (mapping, source) DO UPDATE SET last_cycle_at = excluded.last_cycle_at, \
         {totals}, {lasts}",
        names = COUNTS.join(", "),
        placeholders = placeholders.join(", "),
        totals = totals.join(", "),
        lasts = lasts.join(", "),
    )
}

fn read_sql() -> String {
    let totals = COUNTS.join(", ");
    let lasts: Vec<String> = COUNTS.iter().map(|c| format!("last_{c}")).collect();
    format!(
        "SELECT last_cycle_at, {totals}, {lasts} FROM {TABLE} WHERE mapping = $1 AND source = $2",
        lasts = lasts.join(", ")
    )
}

type CountsRow = (String, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64);

impl Store {
    /// Adds one cycle's counts for `mapping` over `source` (its table).
    /// Creates the engine's table on first use; nothing is written for a
    /// cycle that did nothing.
    pub async fn add_sync_counts(
        &self,
        mapping: &str,
        source: &str,
        counts: &OutcomeCounts,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        self.ensure_counts_table().await?;
        let sql = add_sql();
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let [a, b, c, d, e] = counts.as_i64();
        let done = match self {
            Store::Sqlite(pool) => {
                let q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(mapping)
                    .bind(source);
                q.bind(at)
                    .bind(a)
                    .bind(b)
                    .bind(c)
                    .bind(d)
                    .bind(e)
                    .execute(pool)
                    .await
                    .map(|_| ())
            }
            Store::Postgres(pool) => {
                let q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(mapping)
                    .bind(source);
                q.bind(at)
                    .bind(a)
                    .bind(b)
                    .bind(c)
                    .bind(d)
                    .bind(e)
                    .execute(pool)
                    .await
                    .map(|_| ())
            }
        };
        done.with_context(|| format!("adding the outcome counts of mapping {mapping}"))
    }

    /// The counts of `mapping` over `source`; `None` before its first cycle.
    pub async fn sync_counts(
        &self,
        mapping: &str,
        source: &str,
    ) -> anyhow::Result<Option<SyncCounts>> {
        if !self.has_counts_table().await? {
            return Ok(None);
        }
        let sql = read_sql();
        let row: Option<CountsRow> = match self {
            Store::Sqlite(pool) => {
                let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(mapping)
                    .bind(source);
                q.fetch_optional(pool).await
            }
            Store::Postgres(pool) => {
                let q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(mapping)
                    .bind(source);
                q.fetch_optional(pool).await
            }
        }?;
        Ok(
            row.map(|(at, t1, t2, t3, t4, t5, l1, l2, l3, l4, l5)| SyncCounts {
                total: OutcomeCounts::from_i64([t1, t2, t3, t4, t5]),
                last_cycle: OutcomeCounts::from_i64([l1, l2, l3, l4, l5]),
                last_cycle_at: at,
            }),
        )
    }

    async fn has_counts_table(&self) -> anyhow::Result<bool> {
        Ok(self.columns(TABLE).await?.is_some())
    }

    /// `CREATE TABLE IF NOT EXISTS` can still fail on PostgreSQL when two
    /// sessions create the table at once (a unique violation in its
    /// catalog): the table then exists, which is all that is needed.
    async fn ensure_counts_table(&self) -> anyhow::Result<()> {
        if self.has_counts_table().await? {
            return Ok(());
        }
        let created = match self {
            Store::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(create_sql()))
                .execute(pool)
                .await
                .map(|_| ()),
            Store::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(create_sql()))
                .execute(pool)
                .await
                .map(|_| ()),
        };
        match created {
            Ok(()) => Ok(()),
            Err(_) if self.has_counts_table().await? => Ok(()),
            Err(err) => Err(err).context("creating the table engine_sync_counts"),
        }
    }
}
