//! Deletes in queue mode: a row whose processing status the application sets
//! to `Delete` asks the engine to delete its CRM record (the id in the row's
//! CRM id column), with `on_removed = "archive"` in its mapping.
//!
//! Such rows go `Delete` → `Deleting` (claimed, the lease deadline in
//! `next_retry_at`) → `Deleted`, or back to `Delete` with a retry time, or to
//! `Error`. The claim and the fenced record work as for upserts, in their own
//! statements, so an upsert claim never takes a row waiting for a delete.

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::AssertSqlSafe;

use super::decide::after_failure;
use super::{LoopGate, Run};
use crate::plan::MappingPlan;
use crate::send::delete::DeleteTarget;
use crate::snapshot::state::time_text;
use crate::store::text::stored_text;
use crate::store::{RowUpdate, Store, TableSpec};

/// The processing status that asks for a delete.
pub const DELETE: &str = "Delete";
/// A delete under way (claimed under a lease).
pub const DELETING: &str = "Deleting";
/// The record is gone from the CRM.
pub const DELETED: &str = "Deleted";

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A claimed delete: `(id, CRM id, key, retry count)`.
type Claimed = (String, Option<String>, Option<String>, i64);

/// Claims, deletes and records up to `batch_size` rows asking for a delete;
/// returns how many it claimed.
pub(crate) async fn process_batch(
    run: &Run,
    mapping: &MappingPlan,
    store: &Store,
    due_by: DateTime<Utc>,
    gate: &LoopGate,
) -> anyhow::Result<usize> {
    let now = run.clock.utc().trunc_subsecs(3);
    let lease = crate::engine::lease_deadline(now, mapping.schedule.lease).trunc_subsecs(3);
    let spec = &mapping.table;
    let due = now.min(due_by);
    let claimed = claim(
        store,
        spec,
        i64::from(mapping.schedule.batch_size),
        due,
        lease,
    )
    .await
    .with_context(|| format!("claiming rows to delete from {}", spec.table))?;
    gate.claimed(claimed.len(), mapping.schedule.batch_size as usize);
    if claimed.is_empty() {
        return Ok(0);
    }
    let targets: Vec<DeleteTarget> = claimed
        .iter()
        .map(|(id, crm_id, key, _)| DeleteTarget {
            crm_id: crm_id.clone(),
            key: key.as_deref().map(|k| k.trim().to_lowercase()),
            trace_id: id.clone(),
        })
        .collect();
    let sends = crate::send::delete::send(&run.client, mapping, &targets);
    let outcomes = crate::engine::send_bounded(run, now, lease, sends)
        .await
        .unwrap_or_else(|| vec![Err(super::handed_back(run)); targets.len()]);
    let mut deleted = 0;
    let mut writes = Vec::with_capacity(claimed.len());
    for ((id, _, key, retry_count), outcome) in claimed.iter().zip(outcomes) {
        let key = key.as_deref().unwrap_or("");
        let write = match outcome {
            Ok(()) => {
                deleted += 1;
                tracing::debug!(mapping = %mapping.name, row = %id, %key, "Deleted the record.");
                Write::deleted(id)
            }
            Err(failure) => {
                let update = after_failure(&mapping.schedule, *retry_count, failure, now);
                run.summary.add_unfinished_delete(&mapping.name, &update);
                tracing::warn!(mapping = %mapping.name, row = %id, %key, update = ?update, "The record was not deleted.");
                Write::failed(id, update)
            }
        };
        writes.push(write);
    }
    record(store, spec, &writes, lease)
        .await
        .with_context(|| format!("recording deletes in {}", spec.table))?;
    run.summary.add_deleted(&mapping.name, deleted);
    Ok(claimed.len())
}

async fn claim(
    store: &Store,
    spec: &TableSpec,
    limit: i64,
    now: DateTime<Utc>,
    lease: DateTime<Utc>,
) -> anyhow::Result<Vec<Claimed>> {
    let (table, id, status, due) = (
        quote(&spec.table),
        quote(&spec.id_column),
        quote(&spec.processing_status),
        quote(&spec.next_retry_at),
    );
    let (crm, key, retries) = (
        quote(&spec.crm_id),
        quote(&spec.key_column),
        quote(&spec.retry_count),
    );
    let due_rows =
        format!("{status} IN ('{DELETE}', '{DELETING}') AND ({due} IS NULL OR {due} <= $1)");
    let rows = match store {
        Store::Sqlite(pool) => {
            let sql = format!(
                "UPDATE {table} SET {status} = '{DELETING}', {due} = $2 \
                 WHERE {id} IN (SELECT {id} FROM {table} WHERE {due_rows} LIMIT $3) \
                 RETURNING CAST({id} AS TEXT), CAST({crm} AS TEXT), CAST({key} AS TEXT), \
                 COALESCE({retries}, 0)"
            );
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(time_text(store.backend(), now))
                .bind(time_text(store.backend(), lease))
                .bind(limit)
                .fetch_all(pool)
                .await?
        }
        Store::Postgres(pool) => {
            let sql = format!(
                "WITH picked AS (SELECT {id} FROM {table} WHERE {due_rows} LIMIT $3 \
                 FOR UPDATE SKIP LOCKED) \
                 UPDATE {table} AS _t SET {status} = '{DELETING}', {due} = $2 \
                 FROM picked WHERE _t.{id} = picked.{id} \
                 RETURNING _t.{id}::text, _t.{crm}::text, _t.{key}::text, \
                 COALESCE(_t.{retries}, 0)::bigint"
            );
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(now)
                .bind(lease)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows)
}

/// One row's write-back.
struct Write {
    id: String,
    status: &'static str,
    sync: Option<&'static str>,
    set_error: bool,
    error: Option<String>,
    retry_count: Option<i64>,
    next_retry_at: Option<DateTime<Utc>>,
}

impl Write {
    fn deleted(id: &str) -> Self {
        Write {
            id: id.to_string(),
            status: DELETED,
            sync: Some(DELETED),
            set_error: true,
            error: None,
            retry_count: Some(0),
            next_retry_at: None,
        }
    }

    fn failed(id: &str, update: RowUpdate) -> Self {
        let base = Write {
            id: id.to_string(),
            status: DELETE,
            sync: None,
            set_error: false,
            error: None,
            retry_count: None,
            next_retry_at: None,
        };
        match update {
            RowUpdate::Complete { .. } => Write::deleted(id),
            RowUpdate::RetryLater {
                error,
                retry_count,
                next_retry_at,
            } => Write {
                set_error: true,
                error: Some(error),
                retry_count: Some(retry_count),
                next_retry_at: Some(next_retry_at),
                ..base
            },
            RowUpdate::Release { next_retry_at } => Write {
                next_retry_at,
                ..base
            },
            // Deletes have no sync mode; kept for completeness: the row stays
            // in `Delete` with the reason.
            RowUpdate::Skipped { reason, .. } => Write {
                set_error: true,
                error: Some(reason),
                ..base
            },
            RowUpdate::Failed { error, retry_count } => Write {
                status: "Error",
                sync: Some("Error"),
                set_error: true,
                error: Some(error),
                retry_count: Some(retry_count),
                ..base
            },
        }
    }
}

/// Writes every result in one transaction, each fenced on the claim's lease.
async fn record(
    store: &Store,
    spec: &TableSpec,
    writes: &[Write],
    lease: DateTime<Utc>,
) -> anyhow::Result<()> {
    let (table, id, status, due) = (
        quote(&spec.table),
        quote(&spec.id_column),
        quote(&spec.processing_status),
        quote(&spec.next_retry_at),
    );
    let (sync, error, retries) = (
        quote(&spec.sync_status),
        quote(&spec.error),
        quote(&spec.retry_count),
    );
    let backend = store.backend();
    let (id_cast, time_cast) = match store {
        Store::Sqlite(_) => (String::new(), ""),
        Store::Postgres(_) => {
            let columns = store.columns(&spec.table).await?.unwrap_or_default();
            let id_type = columns
                .iter()
                .find(|c| c.name == spec.id_column)
                .map_or("text".to_string(), |c| c.sql_type.clone());
            (format!("::{id_type}"), "::timestamptz")
        }
    };
    let sql = format!(
        "UPDATE {table} SET {status} = $2, {sync} = COALESCE($3, {sync}), \
         {error} = CASE WHEN $4 THEN $5 ELSE {error} END, \
         {retries} = COALESCE($6, {retries}), {due} = $7{time_cast} \
         WHERE {id} = $1{id_cast} AND {status} = '{DELETING}' AND {due} = $8{time_cast}"
    );
    let lease = time_text(backend, lease);
    macro_rules! run_all {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await?;
            for write in writes {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(&write.id)
                    .bind(write.status)
                    .bind(write.sync)
                    .bind(write.set_error)
                    .bind(write.error.as_deref().map(stored_text))
                    .bind(write.retry_count)
                    .bind(write.next_retry_at.map(|t| time_text(backend, t)))
                    .bind(&lease)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }};
    }
    match store {
        Store::Sqlite(pool) => run_all!(pool),
        Store::Postgres(pool) => run_all!(pool),
    }
    Ok(())
}
