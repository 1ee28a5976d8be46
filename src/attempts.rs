//! When each row that did not sync was last tried, for `engine status`.
//!
//! The state columns say what a row's last error was, not when it happened
//! (an `Error` row's `next_retry_at` is NULL). Rather than add a column to the
//! user's table, the engine keeps its own small table, `engine_row_attempts`,
//! in the same database: one row per (mapping, source table, row id), written
//! only for rows that failed or will be retried, and trimmed to the latest
//! [`KEEP`] per mapping and table when a cycle is recorded.

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::store::{RowResult, RowUpdate, Store};

/// Rows remembered per mapping and table.
pub const KEEP: u32 = 10_000;

const SQLITE_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS engine_row_attempts (\
     mapping TEXT NOT NULL, source_table TEXT NOT NULL, row_id TEXT NOT NULL, \
     attempted_at TEXT NOT NULL, PRIMARY KEY (mapping, source_table, row_id))",
    "CREATE INDEX IF NOT EXISTS engine_row_attempts_by_time \
     ON engine_row_attempts (mapping, source_table, attempted_at)",
];

const POSTGRES_DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS engine_row_attempts (\
     mapping TEXT NOT NULL, source_table TEXT NOT NULL, row_id TEXT NOT NULL, \
     attempted_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (mapping, source_table, row_id))",
    "CREATE INDEX IF NOT EXISTS engine_row_attempts_by_time \
     ON engine_row_attempts (mapping, source_table, attempted_at)",
];

/// Creates the table if missing; two processes racing on PostgreSQL's
/// catalog try again.
async fn ensure_table(store: &Store) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        let result: Result<(), sqlx::Error> = async {
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
            Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(_) if attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(err) => return Err(err).context("cannot create the row-attempts table"),
        }
    }
}

/// Notes `at` as the last try of every row of `results` that failed or will
/// be retried. One statement for the batch; nothing when all synced.
pub async fn note_failures(
    store: &Store,
    mapping: &str,
    table: &str,
    results: &[RowResult],
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    let ids: Vec<&str> = results
        .iter()
        .filter(|r| {
            matches!(
                r.update,
                RowUpdate::Failed { .. } | RowUpdate::RetryLater { .. }
            )
        })
        .map(|r| r.id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ensure_table(store).await?;
    let ids = serde_json::to_string(&ids)?;
    match store {
        Store::Sqlite(pool) => {
            // `WHERE true`: SQLite's parser needs it before an upsert's ON CONFLICT.
            sqlx::query(
                "INSERT INTO engine_row_attempts (mapping, source_table, row_id, attempted_at) \
                 SELECT ?1, ?2, value, ?4 FROM json_each(?3) WHERE true \
                 ON CONFLICT (mapping, source_table, row_id) DO UPDATE SET attempted_at = excluded.attempted_at",
            )
            .bind(mapping)
            .bind(table)
            .bind(ids)
            .bind(sortable(at))
            .execute(pool)
            .await?;
        }
        Store::Postgres(pool) => {
            sqlx::query(
                "INSERT INTO engine_row_attempts (mapping, source_table, row_id, attempted_at) \
                 SELECT $1, $2, id, $4 FROM jsonb_array_elements_text($3::jsonb) AS ids(id) \
                 ON CONFLICT (mapping, source_table, row_id) DO UPDATE SET attempted_at = excluded.attempted_at",
            )
            .bind(mapping)
            .bind(table)
            .bind(ids)
            .bind(at)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// SQLite keeps the time as text: one fixed width, so that text order is
/// time order.
fn sortable(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Drops all but the latest `keep` rows of one mapping and table.
pub async fn trim(store: &Store, mapping: &str, table: &str, keep: u32) -> anyhow::Result<()> {
    if store.columns("engine_row_attempts").await?.is_none() {
        return Ok(());
    }
    const SQLITE: &str = "DELETE FROM engine_row_attempts WHERE mapping = ?1 AND source_table = ?2 \
         AND row_id NOT IN (SELECT row_id FROM engine_row_attempts WHERE mapping = ?1 AND source_table = ?2 \
         ORDER BY attempted_at DESC LIMIT ?3)";
    const POSTGRES: &str = "DELETE FROM engine_row_attempts WHERE mapping = $1 AND source_table = $2 \
         AND row_id NOT IN (SELECT row_id FROM engine_row_attempts WHERE mapping = $1 AND source_table = $2 \
         ORDER BY attempted_at DESC LIMIT $3)";
    match store {
        Store::Sqlite(pool) => {
            sqlx::query(SQLITE)
                .bind(mapping)
                .bind(table)
                .bind(i64::from(keep))
                .execute(pool)
                .await?;
        }
        Store::Postgres(pool) => {
            sqlx::query(POSTGRES)
                .bind(mapping)
                .bind(table)
                .bind(i64::from(keep))
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// The rows of one mapping and table tried last, newest first: (row id, when).
/// Empty when nothing was ever noted; never creates the table.
pub async fn latest(
    store: &Store,
    mapping: &str,
    table: &str,
    limit: u32,
) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    if store.columns("engine_row_attempts").await?.is_none() {
        return Ok(Vec::new());
    }
    let rows = match store {
        Store::Sqlite(pool) => {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT row_id, attempted_at FROM engine_row_attempts WHERE mapping = ?1 \
                 AND source_table = ?2 ORDER BY attempted_at DESC LIMIT ?3",
            )
            .bind(mapping)
            .bind(table)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .filter_map(|(id, at)| Some((id, DateTime::parse_from_rfc3339(&at).ok()?.to_utc())))
                .collect()
        }
        Store::Postgres(pool) => {
            sqlx::query_as(
                "SELECT row_id, attempted_at FROM engine_row_attempts WHERE mapping = $1 \
                 AND source_table = $2 ORDER BY attempted_at DESC LIMIT $3",
            )
            .bind(mapping)
            .bind(table)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows)
}

/// A row that did not sync, as `engine status` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedRow {
    /// The row's key.
    pub key: String,
    /// Its last error.
    pub error: String,
    /// Its failed attempts so far.
    pub retry_count: i64,
    /// When it was last tried; `None` when the engine did not note it (a
    /// failure from before this was kept, or from another program).
    pub last_tried: Option<DateTime<Utc>>,
}

/// Up to `limit` rows of `mapping` in `Error` (or queued again with an error),
/// the most recently tried first, then those with no noted try.
pub async fn latest_failed_rows(
    store: &Store,
    mapping: &crate::plan::MappingPlan,
    limit: usize,
) -> anyhow::Result<Vec<FailedRow>> {
    let spec = &mapping.table;
    let mut rows = Vec::new();
    // A row tried later may have synced since: read each back and keep it
    // only while it still carries an error. Bounded: a few times `limit`.
    for (id, at) in latest(store, &mapping.name, &spec.table, (limit * 5) as u32).await? {
        if rows.len() >= limit {
            break;
        }
        let Some(row) = store.fetch_row(spec, &id).await? else {
            continue;
        };
        let text = |column: &str| row.get(column).and_then(|v| v.as_str()).map(str::to_string);
        let status = text(&spec.processing_status).unwrap_or_default();
        let Some(error) = text(&spec.error) else {
            continue;
        };
        if status != "Error" && status != "Queued" {
            continue;
        }
        rows.push(FailedRow {
            key: row
                .get(&spec.key_column)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .unwrap_or_default(),
            error,
            retry_count: row
                .get(&spec.retry_count)
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
            last_tried: Some(at),
        });
    }
    if rows.len() < limit {
        for (key, error, retry_count) in store.latest_errors(spec, limit as i64).await? {
            if rows.len() >= limit {
                break;
            }
            if !rows.iter().any(|r| r.key == key) {
                rows.push(FailedRow {
                    key,
                    error,
                    retry_count,
                    last_tried: None,
                });
            }
        }
    }
    Ok(rows)
}
