//! The engine-owned state table of snapshot mappings, `engine_snapshot_state`:
//! one row per (mapping scope, source key), on SQLite or PostgreSQL.
//!
//! Columns: `status` (`Queued` → `Processing` → `Complete` | `Error`, or
//! `Deleted` after a delete), `action` (what the pending work is: `upsert` or
//! `delete`), `fingerprint` (of the values the CRM confirmed), and, for work not
//! yet confirmed, `pending_fingerprint` and `pending_row` (the row as the diff
//! read it, JSON). `crm_id`/`crm_key` name the record this mapping synced;
//! `error`, `retry_count` and `next_retry_at` (the retry time while `Queued`,
//! the lease deadline while `Processing`) work as in a queue table.
//!
//! Source keys are compared as bytes everywhere: SQLite's default `BINARY`
//! collation, PostgreSQL's `COLLATE "C"` on the column, and Rust's `str` order,
//! so the diff can merge the source and the state in one ordered pass.

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use sqlx::AssertSqlSafe;

use crate::store::text::stored_text;
use crate::store::{Backend, Store};

pub(crate) const TABLE: &str = "engine_snapshot_state";

pub(crate) const QUEUED: &str = "Queued";
pub(crate) const PROCESSING: &str = "Processing";
pub(crate) const COMPLETE: &str = "Complete";
pub(crate) const ERROR: &str = "Error";
pub(crate) const DELETED: &str = "Deleted";
pub(crate) const UPSERT: &str = "upsert";
pub(crate) const DELETE: &str = "delete";

/// The statements that create the state table and its claim index (idempotent).
pub fn create_sql(backend: Backend) -> Vec<String> {
    let (key_type, time_type, int_type) = match backend {
        Backend::Sqlite => ("TEXT", "TEXT", "INTEGER"),
        Backend::Postgres => ("TEXT COLLATE \"C\"", "TIMESTAMPTZ", "BIGINT"),
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (\
             mapping TEXT NOT NULL, \
             source_key {key_type} NOT NULL, \
             status TEXT NOT NULL, \
             action TEXT NOT NULL, \
             fingerprint TEXT, \
             pending_fingerprint TEXT, \
             pending_row TEXT, \
             crm_id TEXT, \
             crm_key TEXT, \
             error TEXT, \
             retry_count {int_type} NOT NULL DEFAULT 0, \
             next_retry_at {time_type}, \
             PRIMARY KEY (mapping, source_key))"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {TABLE}_claim ON {TABLE} (mapping, status, next_retry_at)"
        ),
    ]
}

/// Creates the state table unless it exists. Two processes (or tests) creating
/// it at once on PostgreSQL can collide in the catalog; the loser finds it there.
pub async fn ensure_table(store: &Store) -> anyhow::Result<()> {
    for statement in create_sql(store.backend()) {
        if let Err(err) = execute(store, &statement).await
            && !table_exists(store).await?
        {
            return Err(err).context("creating the snapshot state table");
        }
    }
    Ok(())
}

async fn table_exists(store: &Store) -> anyhow::Result<bool> {
    Ok(store.columns(TABLE).await?.is_some())
}

async fn execute(store: &Store, sql: &str) -> anyhow::Result<u64> {
    let done = match store {
        Store::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(pool)
            .await?
            .rows_affected(),
        Store::Postgres(pool) => sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(pool)
            .await?
            .rows_affected(),
    };
    Ok(done)
}

/// One state row as the diff reads it.
#[derive(Debug, Clone)]
pub(crate) struct StateRow {
    pub source_key: String,
    pub status: String,
    pub action: String,
    pub fingerprint: Option<String>,
    pub pending_fingerprint: Option<String>,
    pub crm_id: Option<String>,
}

/// Up to `limit` state rows of `scope` after `after` (all from the start when
/// `None`), in key order: one range of the primary key.
pub(crate) async fn page(
    store: &Store,
    scope: &str,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<StateRow>> {
    let columns = "source_key, status, action, fingerprint, pending_fingerprint, crm_id";
    let sql = match after {
        Some(_) => format!(
            "SELECT {columns} FROM {TABLE} WHERE mapping = $1 AND source_key > $2 \
             ORDER BY source_key LIMIT $3"
        ),
        None => {
            format!("SELECT {columns} FROM {TABLE} WHERE mapping = $1 ORDER BY source_key LIMIT $2")
        }
    };
    type Tuple = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Result<Vec<Tuple>, sqlx::Error> = match (store, after) {
        (Store::Sqlite(pool), Some(after)) => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        (Store::Sqlite(pool), None) => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        (Store::Postgres(pool), Some(after)) => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        (Store::Postgres(pool), None) => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    };
    let rows = rows.context("reading the snapshot state")?;
    Ok(rows
        .into_iter()
        .map(
            |(source_key, status, action, fingerprint, pending_fingerprint, crm_id)| StateRow {
                source_key,
                status,
                action,
                fingerprint,
                pending_fingerprint,
                crm_id,
            },
        )
        .collect())
}

/// How many records of `scope` this mapping synced and has not deleted: what
/// an empty source would delete.
pub(crate) async fn count_synced(store: &Store, scope: &str) -> anyhow::Result<i64> {
    let sql = format!(
        "SELECT count(*) FROM {TABLE} WHERE mapping = $1 AND status <> '{DELETED}' \
         AND (crm_id IS NOT NULL OR fingerprint IS NOT NULL)"
    );
    let count = match store {
        Store::Sqlite(pool) => {
            sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(scope)
                .fetch_one(pool)
                .await
        }
        Store::Postgres(pool) => {
            sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(scope)
                .fetch_one(pool)
                .await
        }
    };
    count.context("counting the synced records")
}

/// A row to (re)send: its key, the fingerprint of its values, and its columns.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PendingUpsert {
    pub k: String,
    pub f: String,
    pub r: String,
}

/// Queues `rows` for an upsert, in one statement: new keys are inserted,
/// known ones re-queued with their new values, except rows a worker holds
/// and rows that already have these values (confirmed, waiting or failed):
/// the diff read the state a moment ago, and another run may have synced the
/// row since, so the statement checks again rather than send it twice.
pub(crate) async fn queue_upserts(
    store: &Store,
    scope: &str,
    rows: &[PendingUpsert],
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(rows)?;
    let conflict = format!(
        "ON CONFLICT (mapping, source_key) DO UPDATE SET status = '{QUEUED}', action = '{UPSERT}', \
         pending_fingerprint = excluded.pending_fingerprint, pending_row = excluded.pending_row, \
         retry_count = 0, next_retry_at = NULL, error = NULL \
         WHERE {TABLE}.status <> '{PROCESSING}' \
         AND NOT ({TABLE}.status = '{COMPLETE}' \
                  AND COALESCE({TABLE}.fingerprint = excluded.pending_fingerprint, false)) \
         AND NOT ({TABLE}.status IN ('{QUEUED}', '{ERROR}') AND {TABLE}.action = '{UPSERT}' \
                  AND COALESCE({TABLE}.pending_fingerprint = excluded.pending_fingerprint, false))"
    );
    let insert = format!(
        "INSERT INTO {TABLE} (mapping, source_key, status, action, pending_fingerprint, pending_row, retry_count)"
    );
    let done = match store {
        Store::Sqlite(pool) => {
            let sql = format!(
                "{insert} SELECT $1, json_extract(value, '$.k'), '{QUEUED}', '{UPSERT}', \
                 json_extract(value, '$.f'), json_extract(value, '$.r'), 0 \
                 FROM json_each($2) WHERE true {conflict}"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(scope)
                .bind(json)
                .execute(pool)
                .await
                .map(|_| ())
        }
        Store::Postgres(pool) => {
            let sql = format!(
                "{insert} SELECT $1, r.k, '{QUEUED}', '{UPSERT}', r.f, r.r, 0 \
                 FROM json_to_recordset($2::json) AS r(k text, f text, r text) {conflict}"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(scope)
                .bind(json)
                .execute(pool)
                .await
                .map(|_| ())
        }
    };
    done.context("queueing new and changed rows in the snapshot state")
}

/// Queues a delete of each key's record, except rows a worker holds.
pub(crate) async fn queue_deletes(
    store: &Store,
    scope: &str,
    keys: &[String],
) -> anyhow::Result<()> {
    // A record another run deleted meanwhile stays `Deleted`.
    let set = format!(
        "UPDATE {TABLE} SET status = '{QUEUED}', action = '{DELETE}', pending_row = NULL, \
         pending_fingerprint = NULL, retry_count = 0, next_retry_at = NULL, error = NULL \
         WHERE status <> '{DELETED}' AND"
    );
    for_keys(store, scope, keys, &set)
        .await
        .context("queueing deletes in the snapshot state")
}

/// Forgets the state of each key (a removed row whose record stays, or that
/// was never synced), except rows a worker holds.
pub(crate) async fn forget(store: &Store, scope: &str, keys: &[String]) -> anyhow::Result<()> {
    for_keys(store, scope, keys, &format!("DELETE FROM {TABLE} WHERE"))
        .await
        .context("forgetting removed rows in the snapshot state")
}

/// Runs `head` (an UPDATE ... SET ... WHERE or a DELETE FROM ... WHERE, to
/// which the key filter is appended) on the rows of `keys` no worker holds.
async fn for_keys(store: &Store, scope: &str, keys: &[String], head: &str) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(keys)?;
    let filter = format!("mapping = $1 AND status <> '{PROCESSING}' AND source_key IN");
    match store {
        Store::Sqlite(pool) => {
            let sql = format!("{head} {filter} (SELECT value FROM json_each($2))");
            sqlx::query(AssertSqlSafe(sql))
                .bind(scope)
                .bind(json)
                .execute(pool)
                .await?;
        }
        Store::Postgres(pool) => {
            let sql = format!("{head} {filter} (SELECT json_array_elements_text($2::json))");
            sqlx::query(AssertSqlSafe(sql))
                .bind(scope)
                .bind(json)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// A claimed state row.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub source_key: String,
    pub action: String,
    /// The row as the diff read it (empty for a delete).
    pub row: Map<String, Value>,
    pub crm_id: Option<String>,
    pub crm_key: Option<String>,
    pub retry_count: i64,
    pub lease: DateTime<Utc>,
}

type ClaimedTuple = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

/// Takes up to `limit` due rows of `scope` and marks them `Processing` until
/// `lease`: `Queued` rows due now, and `Processing` rows whose lease expired
/// (their run crashed). In no particular order: the claim index is walked and
/// left after `limit` rows, where an order would sort every due row of a
/// first load (a million) at each claim. PostgreSQL skips rows another claimer has locked;
/// SQLite's one writer makes the statement exclusive.
pub(crate) async fn claim(
    store: &Store,
    scope: &str,
    limit: i64,
    now: DateTime<Utc>,
    lease: DateTime<Utc>,
) -> anyhow::Result<Vec<Claimed>> {
    let (now, lease) = (now.trunc_subsecs(3), lease.trunc_subsecs(3));
    let due = format!(
        "mapping = $1 AND status IN ('{QUEUED}', '{PROCESSING}') \
         AND (next_retry_at IS NULL OR next_retry_at <= $2)"
    );
    let returning = "source_key, action, pending_row, crm_id, crm_key, retry_count";
    let rows: Vec<ClaimedTuple> = match store {
        Store::Sqlite(pool) => {
            let sql = format!(
                "UPDATE {TABLE} SET status = '{PROCESSING}', next_retry_at = $3 \
                 WHERE rowid IN (SELECT rowid FROM {TABLE} WHERE {due} LIMIT $4) \
                 RETURNING {returning}"
            );
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .bind(sqlite_time(now))
                .bind(sqlite_time(lease))
                .bind(limit)
                .fetch_all(pool)
                .await?
        }
        Store::Postgres(pool) => {
            let sql = format!(
                "WITH picked AS (SELECT source_key FROM {TABLE} WHERE {due} \
                 LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 UPDATE {TABLE} AS s SET status = '{PROCESSING}', next_retry_at = $3 \
                 FROM picked WHERE s.mapping = $1 AND s.source_key = picked.source_key \
                 RETURNING s.source_key, s.action, s.pending_row, s.crm_id, s.crm_key, s.retry_count"
            );
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .bind(now)
                .bind(lease)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }
    };
    rows.into_iter()
        .map(|(source_key, action, row, crm_id, crm_key, retry_count)| {
            let row = match row {
                Some(text) => serde_json::from_str(&text)
                    .with_context(|| format!("the pending row of key {source_key} is not JSON"))?,
                None => Map::new(),
            };
            Ok(Claimed {
                source_key,
                action,
                row,
                crm_id,
                crm_key,
                retry_count,
                lease,
            })
        })
        .collect()
}

/// What to write back for one claimed row.
impl WriteBack {
    /// A copy whose CRM text (error, id, key) is cleaned and capped as the
    /// engine stores all such text (see [`stored_text`]): one hostile answer
    /// must not fail the whole batch's write-back.
    fn safe_to_store(&self) -> WriteBack {
        let clean = |text: &Option<String>| text.as_deref().map(|t| stored_text(t).into_owned());
        WriteBack {
            crm_id: clean(&self.crm_id),
            crm_key: clean(&self.crm_key),
            error: clean(&self.error),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct WriteBack {
    /// The source key.
    #[serde(rename = "w_k")]
    pub k: String,
    /// The lease it was claimed with (backend text).
    #[serde(rename = "w_lease")]
    pub lease: String,
    #[serde(rename = "w_status")]
    pub status: &'static str,
    /// Set `fingerprint` from `pending_fingerprint` and clear the pending row.
    #[serde(rename = "w_confirm")]
    pub confirm: bool,
    /// Clear `fingerprint` (the record is gone).
    #[serde(rename = "w_forget_fingerprint")]
    pub forget_fingerprint: bool,
    #[serde(rename = "w_crm_id")]
    pub crm_id: Option<String>,
    #[serde(rename = "w_crm_key")]
    pub crm_key: Option<String>,
    /// Replace `error` (with `error`, NULL when `None`).
    #[serde(rename = "w_set_error")]
    pub set_error: bool,
    #[serde(rename = "w_error")]
    pub error: Option<String>,
    #[serde(rename = "w_retry_count")]
    pub retry_count: Option<i64>,
    #[serde(rename = "w_next_retry_at")]
    pub next_retry_at: Option<String>,
}

/// The JSON fields of [`WriteBack`] (each serialised as `w_<name>`, the
/// name the statement gives its column), with the types PostgreSQL reads them as.
const WRITE_BACK_FIELDS: [(&str, &str); 11] = [
    ("k", "text"),
    ("lease", "timestamptz"),
    ("status", "text"),
    ("confirm", "boolean"),
    ("forget_fingerprint", "boolean"),
    ("crm_id", "text"),
    ("crm_key", "text"),
    ("set_error", "boolean"),
    ("error", "text"),
    ("retry_count", "bigint"),
    ("next_retry_at", "timestamptz"),
];

/// Writes every result (PostgreSQL: in one statement, the results bound as
/// one JSON array; SQLite: one statement per row in one transaction), each
/// row fenced on its lease: a row reclaimed after its lease
/// expired keeps its new owner's state.
pub(crate) async fn record(store: &Store, scope: &str, rows: &[WriteBack]) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let stored: Vec<WriteBack> = rows.iter().map(WriteBack::safe_to_store).collect();
    let rows = stored.as_slice();
    // The write-back's columns are `w_<field>`, so no name is shared with the table.
    let set = format!(
        "status = w_status, \
         fingerprint = CASE WHEN w_confirm THEN {TABLE}.pending_fingerprint \
                            WHEN w_forget_fingerprint THEN NULL ELSE {TABLE}.fingerprint END, \
         pending_row = CASE WHEN w_confirm OR w_forget_fingerprint THEN NULL ELSE {TABLE}.pending_row END, \
         crm_id = COALESCE(w_crm_id, {TABLE}.crm_id), crm_key = COALESCE(w_crm_key, {TABLE}.crm_key), \
         error = CASE WHEN w_set_error THEN w_error ELSE {TABLE}.error END, \
         retry_count = COALESCE(w_retry_count, {TABLE}.retry_count), next_retry_at = w_next_retry_at"
    );
    let fence = format!(
        "{TABLE}.mapping = $1 AND {TABLE}.source_key = w_k \
         AND {TABLE}.status = '{PROCESSING}' AND {TABLE}.next_retry_at = w_lease"
    );
    let written = match store {
        // One UPDATE by primary key per row, in one transaction: SQLite
        // plans an UPDATE ... FROM json_each as a scan of the whole table.
        Store::Sqlite(pool) => {
            let sql = format!(
                "UPDATE {TABLE} SET {set} FROM (SELECT $2 AS w_k, $3 AS w_lease, $4 AS w_status, \
                 $5 AS w_confirm, $6 AS w_forget_fingerprint, $7 AS w_crm_id, $8 AS w_crm_key, \
                 $9 AS w_set_error, $10 AS w_error, $11 AS w_retry_count, $12 AS w_next_retry_at) \
                 WHERE {fence}"
            );
            let mut tx = pool.begin().await?;
            let mut written = 0;
            for row in rows {
                written += sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(scope)
                    .bind(&row.k)
                    .bind(&row.lease)
                    .bind(row.status)
                    .bind(row.confirm)
                    .bind(row.forget_fingerprint)
                    .bind(&row.crm_id)
                    .bind(&row.crm_key)
                    .bind(row.set_error)
                    .bind(&row.error)
                    .bind(row.retry_count)
                    .bind(&row.next_retry_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            written
        }
        Store::Postgres(pool) => {
            let fields: Vec<String> = WRITE_BACK_FIELDS
                .iter()
                .map(|(name, kind)| format!("w_{name} {kind}"))
                .collect();
            let json = serde_json::to_string(rows)?;
            let sql = format!(
                "UPDATE {TABLE} SET {set} FROM json_to_recordset($2::json) AS v({}) WHERE {fence}",
                fields.join(", ")
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(scope)
                .bind(json)
                .execute(pool)
                .await?
                .rows_affected()
        }
    };
    Ok(written)
}

/// An instant as the backend's text (SQLite's `datetime()` shape with
/// milliseconds; RFC 3339 for PostgreSQL, cast in the statement).
pub(crate) fn time_text(backend: Backend, t: DateTime<Utc>) -> String {
    match backend {
        Backend::Sqlite => sqlite_time(t),
        Backend::Postgres => t
            .trunc_subsecs(3)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

fn sqlite_time(t: DateTime<Utc>) -> String {
    t.trunc_subsecs(3)
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

/// Rows per (status, action) of `scope`, for `engine status`.
pub async fn counts(store: &Store, scope: &str) -> anyhow::Result<Vec<(String, String, i64)>> {
    let sql = format!(
        "SELECT status, action, count(*) FROM {TABLE} WHERE mapping = $1 \
         GROUP BY status, action ORDER BY status, action"
    );
    let counts = match store {
        Store::Sqlite(pool) => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .fetch_all(pool)
                .await
        }
        Store::Postgres(pool) => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .fetch_all(pool)
                .await
        }
    };
    counts.context("counting the snapshot state")
}

/// Up to `limit` failed rows of `scope`: `(source key, error, retry count)`.
pub async fn latest_errors(
    store: &Store,
    scope: &str,
    limit: i64,
) -> anyhow::Result<Vec<(String, String, i64)>> {
    let sql = format!(
        "SELECT source_key, error, retry_count FROM {TABLE} WHERE mapping = $1 \
         AND error IS NOT NULL ORDER BY source_key LIMIT $2"
    );
    let errors = match store {
        Store::Sqlite(pool) => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        Store::Postgres(pool) => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(scope)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    };
    errors.context("reading the snapshot errors")
}

/// Queues every `Error` row of `scope` again with a fresh retry budget.
pub async fn requeue_errors(store: &Store, scope: &str) -> anyhow::Result<u64> {
    let sql = format!(
        "UPDATE {TABLE} SET status = '{QUEUED}', retry_count = 0, next_retry_at = NULL \
         WHERE mapping = $1 AND status = '{ERROR}'"
    );
    let done = match store {
        Store::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql))
            .bind(scope)
            .execute(pool)
            .await?
            .rows_affected(),
        Store::Postgres(pool) => sqlx::query(AssertSqlSafe(sql))
            .bind(scope)
            .execute(pool)
            .await?
            .rows_affected(),
    };
    Ok(done)
}
