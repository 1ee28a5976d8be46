//! Reading the rows a claim would take, without taking them: `engine plan`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

use super::sql::{claim_arms, quote, sqlite_time};
use super::{Store, TableSpec, stored_time};

impl Store {
    /// Up to `limit` rows a claim at `now` would take, every column, in the
    /// claim's order (due time, NULLs first, then id). A plain SELECT: no
    /// lock, no lease, nothing written.
    pub async fn peek_due(
        &self,
        spec: &TableSpec,
        now: DateTime<Utc>,
        limit: u32,
    ) -> anyhow::Result<Vec<Map<String, Value>>> {
        let now = stored_time(now);
        let table = quote(&spec.table);
        let predicate = claim_arms(spec, "$1", None)
            .iter()
            .map(|arm| format!("({arm})"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let order = format!(
            "{due} IS NOT NULL, {due}, {id}",
            due = quote(&spec.next_retry_at),
            id = quote(&spec.id_column)
        );
        let rows: Vec<Json<Map<String, Value>>> = match self {
            Store::Sqlite(pool) => {
                let columns = super::sqlite::columns(pool, &spec.table).await?;
                let pairs: Vec<String> = columns
                    .iter()
                    .map(|c| format!("'{}', {}", c.name.replace('\'', "''"), quote(&c.name)))
                    .collect();
                let sql = format!(
                    "SELECT json_object({}) FROM {table} WHERE {predicate} ORDER BY {order} LIMIT $2",
                    pairs.join(", ")
                );
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .bind(sqlite_time(now))
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await
            }
            Store::Postgres(pool) => {
                let sql = format!(
                    "SELECT row_to_json(_t) FROM {table} AS _t WHERE {predicate} ORDER BY {order} LIMIT $2"
                );
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await
            }
        }
        .with_context(|| format!("reading the due rows of {}", spec.table))?;
        Ok(rows.into_iter().map(|Json(row)| row).collect())
    }
}
