//! PostgreSQL's SQL. Claims lock rows with `FOR UPDATE SKIP LOCKED`, so
//! concurrent claimers pass over each other's rows instead of waiting.

use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use super::sql::{self, WriteBack, pg_time, quote};
use super::{ClaimedRow, Column, ReturnedWithLease, RowResult, TableSpec};

/// Rows per INSERT statement in `insert_rows`.
const INSERT_CHUNK: usize = 1000;

pub(super) async fn connect(url: &str) -> anyhow::Result<PgPool> {
    // UTC sessions, so timestamps in row JSON read the same whatever the
    // server's default time zone.
    let options = PgConnectOptions::from_str(url)
        .context("invalid PostgreSQL URL")?
        .options([("timezone", "UTC")]);
    // One direct connection first: the pool would retry until its acquire
    // timeout (30 s) and then report only that it timed out, hiding the
    // server's own error (refused, bad password, no such database).
    let probe = PgConnection::connect_with(&options)
        .await
        .context("cannot connect to PostgreSQL")?;
    probe.close().await?;
    Ok(PgPoolOptions::new()
        .max_connections(10)
        .connect_lazy_with(options))
}

pub(super) async fn columns(pool: &PgPool, table: &str) -> anyhow::Result<Vec<Column>> {
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull \
         FROM pg_attribute a \
         WHERE a.attrelid = to_regclass(quote_ident($1)) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    let columns = rows.into_iter().map(|(name, sql_type, nullable)| Column {
        name,
        sql_type,
        nullable,
    });
    Ok(columns.collect())
}

/// The declared type of the id column, so ids sent as text are cast to it
/// and compared with the column as it is: that is what lets the primary-key
/// index find the rows.
fn id_type<'c>(spec: &TableSpec, table: &'c [Column]) -> anyhow::Result<&'c str> {
    let id = table.iter().find(|c| c.name == spec.id_column);
    let id =
        id.with_context(|| format!("table {} has no column {}", spec.table, spec.id_column))?;
    Ok(&id.sql_type)
}

/// `json_build_object` takes at most 100 arguments: 50 columns.
const MAX_BUILT_COLUMNS: usize = 50;

/// The row as the JSON object templates render over: `row_to_json(_t)` for
/// every column, else `json_build_object('a', _t."a", …)`. Both convert
/// each value the same way.
fn row_json(table: &[Column], returned: &[&Column]) -> String {
    if returned.len() == table.len() || returned.len() > MAX_BUILT_COLUMNS {
        return "row_to_json(_t)".to_string();
    }
    let pairs: Vec<String> = returned
        .iter()
        .map(|c| format!("'{}', _t.{}", c.name.replace('\'', "''"), quote(&c.name)))
        .collect();
    format!("json_build_object({})", pairs.join(", "))
}

/// The claim and record statements of a [`super::Queue`].
pub(super) fn statements(
    spec: &TableSpec,
    table: &[Column],
    returned: &[&Column],
) -> anyhow::Result<(String, String, String)> {
    let id_type = id_type(spec, table)?;
    Ok((
        claim_sql(spec, &row_json(table, returned)),
        record_sql(spec, id_type),
        release_requeued_sql(spec, id_type),
    ))
}

/// Makes rows that were queued again while in flight (see
/// [`super::Queue::record`]) due now. $1 = the write-backs.
fn release_requeued_sql(spec: &TableSpec, id_type: &str) -> String {
    format!(
        "UPDATE {table} AS _t SET {due} = NULL          FROM jsonb_to_recordset($1::jsonb) AS v(id text, lease timestamptz)          WHERE _t.{id} = v.id::{id_type} AND {requeued}",
        table = quote(&spec.table),
        due = quote(&spec.next_retry_at),
        id = quote(&spec.id_column),
        requeued = sql::requeued_in_flight(spec),
    )
}

pub(super) async fn claim(
    pool: &PgPool,
    sql: &str,
    limit: i64,
    now: DateTime<Utc>,
    lease: DateTime<Utc>,
) -> anyhow::Result<Vec<ClaimedRow>> {
    let rows: Vec<ReturnedWithLease> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(now)
        .bind(lease)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let claimed = rows
        .into_iter()
        .map(|row| ClaimedRow::from_claim(row, lease));
    Ok(claimed.collect())
}

/// Each arm (see [`sql::claim_arms`]) walks the claim index in order,
/// locks up to `limit` rows no one else holds, and stops; the outer query
/// keeps the first `limit` of all three (the others are unlocked when the
/// statement ends). $1 = now, $2 = lease, $3 = limit.
fn claim_sql(spec: &TableSpec, row_json: &str) -> String {
    let (table, id, due) = (
        quote(&spec.table),
        quote(&spec.id_column),
        quote(&spec.next_retry_at),
    );
    // FOR UPDATE is not allowed in a UNION, so each arm is a CTE.
    let arms: Vec<String> = sql::claim_arms(spec, "$1", Some("$2"))
        .into_iter()
        .map(|predicate| {
            format!(
                "SELECT {id} AS id, {due} AS due FROM {table} WHERE {predicate} \
                 ORDER BY {due} NULLS FIRST, {id} LIMIT $3 FOR UPDATE SKIP LOCKED"
            )
        })
        .collect();
    let ctes: Vec<String> = (0..)
        .zip(&arms)
        .map(|(n, arm)| format!("_claim_{n} AS ({arm})"))
        .collect();
    let union: Vec<String> = (0..arms.len())
        .map(|n| format!("SELECT * FROM _claim_{n}"))
        .collect();
    format!(
        "WITH {ctes}, \
              _claim_picked AS (SELECT id FROM ({union}) c ORDER BY due NULLS FIRST, id LIMIT $3) \
         UPDATE {table} AS _t SET {status} = '{processing}', {due} = {stamp} \
         FROM _claim_picked WHERE _t.{id} = _claim_picked.id \
         RETURNING _t.{id}::text, {row_json}, COALESCE(_t.{retries}, 0)::bigint, NULL::bigint, \
         CAST(_t.{due} AS timestamptz), COALESCE({held}, false)",
        stamp = sql::claim_stamp(spec, "_t."),
        held = sql::held_by_another(spec, "_t.").unwrap_or_else(|| "false".into()),
        ctes = ctes.join(", "),
        union = union.join(" UNION ALL "),
        status = quote(&spec.processing_status),
        processing = sql::PROCESSING,
        retries = quote(&spec.retry_count),
    )
}

pub(super) async fn record(
    pool: &PgPool,
    sql: &str,
    release_requeued: &str,
    results: &[RowResult],
) -> anyhow::Result<u64> {
    let rows: Vec<WriteBack> = results.iter().map(|r| WriteBack::new(r, pg_time)).collect();
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
fn record_sql(spec: &TableSpec, id_type: &str) -> String {
    let fields: Vec<String> = sql::write_back_fields(spec)
        .map(|(name, pg_type)| format!("{name} {pg_type}"))
        .collect();
    let (set, fence) = sql::record_assignments_and_fence(spec, "");
    format!(
        "UPDATE {table} AS _t SET {set} \
         FROM jsonb_to_recordset($1::jsonb) AS v({fields}) \
         WHERE _t.{id} = v.id::{id_type} AND {fence}",
        table = quote(&spec.table),
        fields = fields.join(", "),
        id = quote(&spec.id_column),
    )
}

pub(super) async fn fetch_row(
    pool: &PgPool,
    spec: &TableSpec,
    id: &str,
) -> anyhow::Result<Option<Map<String, Value>>> {
    let sql = format!(
        "SELECT row_to_json(_t) FROM {table} AS _t WHERE {id} = $1::{id_type}",
        table = quote(&spec.table),
        id = quote(&spec.id_column),
        id_type = id_type(spec, &columns(pool, &spec.table).await?)?,
    );
    let row: Option<Json<Map<String, Value>>> = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|Json(row)| row))
}

/// Whether some index of `table` has exactly these key columns, in order.
pub(super) async fn has_index(
    pool: &PgPool,
    table: &str,
    columns: &[&str],
) -> anyhow::Result<bool> {
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index i \
         WHERE i.indrelid = to_regclass(quote_ident($1)) AND i.indnkeyatts = cardinality($2::text[]) \
         AND ARRAY(SELECT a.attname::text FROM unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, n) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n) = $2::text[])",
    )
    .bind(table)
    .bind(columns)
    .fetch_one(pool)
    .await?;
    Ok(found)
}

/// `jsonb_populate_recordset` converts each JSON value to its column's type
/// (uuid, timestamptz, integer …), which binding text parameters would not.
pub(super) async fn insert_rows(
    pool: &PgPool,
    table: &str,
    rows: &[Map<String, Value>],
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let mut inserted = 0;
    for batch in sql::insert_batches(rows, INSERT_CHUNK)? {
        let columns = sql::column_list(&batch.columns);
        let sql = format!(
            "INSERT INTO {table} ({columns}) SELECT {columns} \
             FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)",
            table = quote(table),
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
