//! SQLite's SQL. SQLite has one writer at a time and a write statement takes
//! the write lock before it reads, so a single `UPDATE … RETURNING` claim is
//! exclusive without row locks.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, ConnectOptions, SqlitePool};

use super::sql::{self, WriteBack, quote, sqlite_time};
use super::{ClaimedRow, Column, RowResult, TableSpec};

/// Writers wait this long for the write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows per INSERT statement in `insert_rows`.
const INSERT_CHUNK: usize = 1000;

pub(super) async fn connect(url: &str) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)
        .context("invalid SQLite URL")?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        // Writers take turns on SQLite's one write lock, so under load a claim
        // or record that waited a second behind the others is expected: warn
        // (sqlx logs the whole statement) only when it nears the busy timeout.
        .log_slow_statements(log::LevelFilter::Warn, BUSY_TIMEOUT / 2);
    let pool = if is_in_memory(url) {
        // An in-memory database lives as long as one of its connections:
        // keep exactly one, forever. (Shared-cache locks also ignore
        // busy_timeout, so a single connection avoids SQLITE_LOCKED.)
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
    } else {
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
    };
    pool.context("cannot open the SQLite database")
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

pub(super) async fn columns(pool: &SqlitePool, table: &str) -> anyhow::Result<Vec<Column>> {
    let rows: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT name, type, \"notnull\" FROM pragma_table_info($1) ORDER BY cid")
            .bind(table)
            .fetch_all(pool)
            .await?;
    let columns = rows.into_iter().map(|(name, sql_type, not_null)| Column {
        name,
        sql_type,
        nullable: !not_null,
    });
    Ok(columns.collect())
}

/// `json_object('a', "a", 'b', "b", …)` over `columns`: the row as the
/// JSON object templates render over. Names stay unqualified: SQLite's
/// RETURNING takes no table or alias prefix.
fn row_json(columns: &[&Column]) -> String {
    let pairs: Vec<String> = columns
        .iter()
        .map(|c| format!("'{}', {}", c.name.replace('\'', "''"), quote(&c.name)))
        .collect();
    format!("json_object({})", pairs.join(", "))
}

/// The claim and record statements of a [`super::Queue`].
pub(super) async fn statements(
    pool: &SqlitePool,
    spec: &TableSpec,
    table: &[Column],
    returned: &[&Column],
) -> anyhow::Result<(String, String, String)> {
    let by_rowid = has_rowid(pool, spec, table).await?;
    let order = if by_rowid {
        "rowid".to_string()
    } else {
        quote(&spec.id_column)
    };
    Ok((
        claim_sql(spec, &row_json(returned), &order, by_rowid),
        record_sql(spec, by_rowid),
        release_requeued_sql(spec),
    ))
}

/// Makes rows that were queued again while in flight (see
/// [`super::Queue::record`]) due now. $1 = the write-backs.
fn release_requeued_sql(spec: &TableSpec) -> String {
    format!(
        "WITH v AS MATERIALIZED (SELECT value ->> '$.id' AS id, value ->> '$.lease' AS lease          FROM json_each($1))          UPDATE {table} AS _t SET {due} = NULL FROM v          WHERE _t.{id} = v.id AND {requeued}",
        table = quote(&spec.table),
        due = quote(&spec.next_retry_at),
        id = quote(&spec.id_column),
        requeued = sql::requeued_in_flight(spec),
    )
}

/// Whether the table has a rowid to take rows in (a `WITHOUT ROWID` table
/// has none; a column named `rowid` would hide it).
async fn has_rowid(pool: &SqlitePool, spec: &TableSpec, table: &[Column]) -> anyhow::Result<bool> {
    if table.iter().any(|c| c.name.eq_ignore_ascii_case("rowid")) {
        return Ok(false);
    }
    let probe = format!("SELECT rowid FROM {} LIMIT 0", quote(&spec.table));
    Ok(sqlx::query(AssertSqlSafe(probe))
        .execute(pool)
        .await
        .is_ok())
}

pub(super) async fn claim(
    pool: &SqlitePool,
    sql: &str,
    limit: i64,
    now: DateTime<Utc>,
    lease: DateTime<Utc>,
) -> anyhow::Result<Vec<ClaimedRow>> {
    type Row = (
        String,
        sqlx::types::Json<serde_json::Map<String, Value>>,
        i64,
        Option<i64>,
        Option<String>,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(sqlite_time(now))
        .bind(sqlite_time(lease))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let claimed = rows
        .into_iter()
        .map(|(id, row, retries, handle, held, other)| {
            // The lease the row holds, in the text `sqlite_time` wrote.
            let held = held
                .and_then(|text| {
                    chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f").ok()
                })
                .map(|at| at.and_utc());
            ClaimedRow::from_claim((id, row, retries, handle, held, other), lease)
        });
    Ok(claimed.collect())
}

/// Each arm (see [`sql::claim_arms`]) walks the claim index in order
/// (`order` is the index's last key: the rowid, or the id of a table
/// without one) and stops after `limit` rows; the outer query keeps the
/// first `limit` of all four. $1 = now, $2 = lease, $3 = limit.
fn claim_sql(spec: &TableSpec, row_json: &str, order: &str, by_rowid: bool) -> String {
    let (table, id, due) = (
        quote(&spec.table),
        quote(&spec.id_column),
        quote(&spec.next_retry_at),
    );
    let arms: Vec<String> = sql::claim_arms(spec, "$1", Some("$2"))
        .into_iter()
        .map(|predicate| {
            format!(
                "SELECT * FROM (SELECT {order} AS k, {due} AS due FROM {table} \
                 WHERE {predicate} ORDER BY {due}, {order} LIMIT $3)"
            )
        })
        .collect();
    format!(
        "UPDATE {table} SET {status} = '{processing}', {due} = {stamp} \
         WHERE {order} IN (SELECT k FROM ({arms}) ORDER BY due, k LIMIT $3) \
         RETURNING CAST({id} AS TEXT), {row_json}, CAST(COALESCE({retries}, 0) AS INTEGER), {handle}, \
         CAST({due} AS TEXT), COALESCE({held}, 0)",
        stamp = sql::claim_stamp(spec, ""),
        held = sql::held_by_another(spec, "").unwrap_or_else(|| "0".into()),
        handle = if by_rowid { "rowid" } else { "NULL" },
        status = quote(&spec.processing_status),
        processing = sql::PROCESSING,
        arms = arms.join(" UNION ALL "),
        retries = quote(&spec.retry_count),
    )
}

pub(super) async fn record(
    pool: &SqlitePool,
    sql: &str,
    release_requeued: &str,
    results: &[RowResult],
) -> anyhow::Result<u64> {
    let rows: Vec<WriteBack> = results
        .iter()
        .map(|r| WriteBack::new(r, sqlite_time))
        .collect();
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(Json(&rows))
        .execute(pool)
        .await?;
    let written = done.rows_affected();
    if written < rows.len() as u64 {
        sqlx::query(AssertSqlSafe(release_requeued))
            .bind(Json(&rows))
            .execute(pool)
            .await?;
    }
    Ok(written)
}

/// One UPDATE … FROM over the JSON array of write-backs ($1).
/// `MATERIALIZED` parses the JSON once. The fence's columns get SQLite's
/// no-op unary `+`, which keeps them from being used for an index: without it
/// the planner drives the update from the claim index (every `Processing` row
/// of the table, i.e. every worker's batch) and scans the JSON array once per
/// such row; with it, it walks the array once and finds each row by its primary
/// key. With 4 workers of 500 rows that was 1.5 to 6 s per record statement,
/// and claims waiting behind it hit the busy timeout ("database is locked").
///
/// `jsonb_each` hands each element over in SQLite's binary JSON, so reading
/// its fields does not parse its text once per field: the statement takes
/// 12 µs a row instead of 22 (SQLite 3.51, 100,000 rows).
///
/// In a table with a rowid, rows are found by the handle the claim returned,
/// not through the id's index: random uuids spread those lookups over the
/// whole index, more pages than SQLite's cache holds.
fn record_sql(spec: &TableSpec, by_rowid: bool) -> String {
    let fields: Vec<String> = sql::write_back_fields(spec)
        .map(|(name, _)| format!("value ->> '$.{name}' AS {name}"))
        .collect();
    let (set, fence) = sql::record_assignments_and_fence(spec, "+");
    format!(
        "WITH v AS MATERIALIZED (SELECT {fields} FROM jsonb_each($1)) \
         UPDATE {table} AS _t SET {set} FROM v \
         WHERE {target} AND {fence}",
        fields = fields.join(", "),
        table = quote(&spec.table),
        target = if by_rowid {
            // A result made by hand may carry no handle: find it by id then.
            format!(
                "_t.rowid = COALESCE(v.handle, (SELECT rowid FROM {table} WHERE {id} = v.id))",
                table = quote(&spec.table),
                id = quote(&spec.id_column),
            )
        } else {
            format!("_t.{} = v.id", quote(&spec.id_column))
        },
    )
}

pub(super) async fn fetch_row(
    pool: &SqlitePool,
    spec: &TableSpec,
    id: &str,
) -> anyhow::Result<Option<Map<String, Value>>> {
    let columns = columns(pool, &spec.table).await?;
    ensure!(!columns.is_empty(), "table {} does not exist", spec.table);
    let sql = format!(
        "SELECT {row_json} FROM {table} WHERE {id} = $1",
        row_json = row_json(&columns.iter().collect::<Vec<_>>()),
        table = quote(&spec.table),
        id = quote(&spec.id_column),
    );
    let row: Option<(Json<Map<String, Value>>,)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(Json(row),)| row))
}

/// Whether some index of `table` has exactly these key columns, in order.
pub(super) async fn has_index(
    pool: &SqlitePool,
    table: &str,
    columns: &[&str],
) -> anyhow::Result<bool> {
    let indexes: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_index_list($1)")
        .bind(table)
        .fetch_all(pool)
        .await?;
    for (index,) in indexes {
        let keys: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                .bind(&index)
                .fetch_all(pool)
                .await?;
        if keys
            .iter()
            .map(|(k,)| k.as_str())
            .eq(columns.iter().copied())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) async fn insert_rows(
    pool: &SqlitePool,
    table: &str,
    rows: &[Map<String, Value>],
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let mut inserted = 0;
    for batch in sql::insert_batches(rows, INSERT_CHUNK)? {
        let values: Vec<String> = batch
            .columns
            .iter()
            .map(|k| format!("value ->> '$.{k}'"))
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({columns}) SELECT {values} FROM json_each($1)",
            table = quote(table),
            columns = sql::column_list(&batch.columns),
            values = values.join(", "),
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(Json(batch.rows))
            .execute(&mut *tx)
            .await?;
        inserted += done.rows_affected();
    }
    tx.commit().await?;
    Ok(inserted)
}
