//! The table behind the shared rate budget (see [`crate::send::budget`]): one row
//! per slice of permits granted to a process, alive until it expires.
//!
//! Every grant runs in one transaction under an advisory lock on the budget
//! and window, so two processes never both see the same room. Times are the
//! database's `clock_timestamp()` (not `now()`, which is the transaction's
//! start and may be earlier than the lock was taken), so hosts with skewed
//! clocks still agree.

use std::time::Duration;

use anyhow::Context;
use sqlx::{PgPool, Postgres, Transaction};

use super::sql::fnv1a;

/// The engine-owned table.
pub const TABLE: &str = "engine_rate_budget";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS engine_rate_budget (\
     id BIGSERIAL PRIMARY KEY, \
     budget_key TEXT NOT NULL, \
     window_name TEXT NOT NULL, \
     permits INTEGER NOT NULL, \
     granted_at TIMESTAMPTZ NOT NULL, \
     expires_at TIMESTAMPTZ NOT NULL)";

const INDEX: &str = "CREATE INDEX IF NOT EXISTS engine_rate_budget_alive \
     ON engine_rate_budget (budget_key, window_name, expires_at)";

/// One grant in one round trip: the advisory lock is held only while the
/// server runs it, not across several client round trips, so a busy budget
/// is not serialised on network and client latency.
const TAKE_FUNCTION: &str = r#"CREATE OR REPLACE FUNCTION engine_rate_budget_take(
    p_key TEXT, p_window TEXT, p_lock BIGINT, p_limit INTEGER, p_want INTEGER, p_hold_us BIGINT,
    p_trim_id BIGINT, p_trim_used INTEGER, p_trim_held_us BIGINT,
    OUT o_id BIGINT, OUT o_permits INTEGER, OUT o_retry_us BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_used BIGINT;
    v_first TIMESTAMPTZ;
    v_now TIMESTAMPTZ;
    v_grant INTEGER;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    IF p_trim_id IS NOT NULL THEN
        IF p_trim_used = 0 THEN
            DELETE FROM engine_rate_budget WHERE id = p_trim_id;
        ELSE
            UPDATE engine_rate_budget
               SET permits = LEAST(permits, p_trim_used),
                   expires_at = LEAST(expires_at, granted_at + p_trim_held_us * INTERVAL '1 microsecond')
             WHERE id = p_trim_id;
        END IF;
    END IF;
    DELETE FROM engine_rate_budget b
     WHERE b.budget_key = p_key AND b.window_name = p_window AND b.expires_at <= clock_timestamp();
    SELECT COALESCE(SUM(b.permits), 0), MIN(b.expires_at) INTO v_used, v_first
      FROM engine_rate_budget b WHERE b.budget_key = p_key AND b.window_name = p_window;
    v_grant := LEAST(GREATEST(p_limit - v_used, 0), p_want);
    v_now := clock_timestamp();
    IF v_grant > 0 THEN
        INSERT INTO engine_rate_budget (budget_key, window_name, permits, granted_at, expires_at)
        VALUES (p_key, p_window, v_grant, v_now, v_now + p_hold_us * INTERVAL '1 microsecond')
        RETURNING id INTO o_id;
        o_permits := v_grant;
    ELSE
        o_permits := 0;
        o_retry_us := (EXTRACT(EPOCH FROM (v_first - v_now)) * 1000000)::BIGINT;
    END IF;
END
$$"#;

/// The advisory lock (first key) that serialises creating the table; the
/// second key is free for the grants' own locks (see [`lock_key`]).
const CREATE_LOCK: i64 = 0x656e_6769_6e65_5242; // "engineRB"

/// Creates the table and its index if missing. Two processes starting at
/// once would otherwise race in PostgreSQL's catalog (a unique violation).
pub async fn ensure_table(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CREATE_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(CREATE).execute(&mut *tx).await?;
    sqlx::query(INDEX).execute(&mut *tx).await?;
    sqlx::query(TAKE_FUNCTION).execute(&mut *tx).await?;
    tx.commit()
        .await
        .with_context(|| format!("creating the table {TABLE}"))
}

/// What a process asks for.
#[derive(Debug, Clone)]
pub struct SliceRequest<'a> {
    /// The budget: connector name and a hash of its base URL and credentials.
    pub key: &'a str,
    /// The rate-limit window.
    pub window: &'a str,
    /// The window's limit: permits alive at once never exceed it.
    pub limit: u32,
    /// How many permits the process would like (it gets fewer when the
    /// window has less room).
    pub want: u32,
    /// How long a new slice occupies the window from its grant: the time it
    /// may be used (TTL) + the window + the arrival margin.
    pub hold: Duration,
    /// The process's previous slice of this window, given back in the same
    /// transaction.
    pub trim: Option<Trim>,
}

/// A slice given back: only the permits used stay, and only until the last
/// one's use has left the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    /// The slice's row.
    pub id: i64,
    /// Permits used (0 deletes the slice).
    pub used: u32,
    /// From the grant until its last use has left the window: the time from
    /// the grant to the last use, + the window + the margin. Never more than
    /// the slice's `hold` (the expiry only moves earlier).
    pub held: Duration,
}

/// What the database granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The slice's row (`None` when nothing was granted).
    pub id: Option<i64>,
    /// Permits granted, at most `want`; 0 when the window is full.
    pub permits: u32,
    /// When nothing was granted: how long until the first slice alive
    /// expires (the earliest moment room can come back).
    pub retry_after: Option<Duration>,
}

/// Grants up to `want` permits of the window, never letting the permits of
/// slices alive at once exceed its limit. See [`crate::send::budget`] for why
/// that bounds every window at the CRM.
pub async fn take_slice(pool: &PgPool, request: &SliceRequest<'_>) -> anyhow::Result<Granted> {
    let trim = request.trim;
    let (id, permits, retry_us): (Option<i64>, i32, Option<i64>) = sqlx::query_as(
        "SELECT o_id, o_permits, o_retry_us \
         FROM engine_rate_budget_take($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(request.key)
    .bind(request.window)
    .bind(lock_key(request.key, request.window))
    .bind(i32::try_from(request.limit).unwrap_or(i32::MAX))
    .bind(i32::try_from(request.want).unwrap_or(i32::MAX))
    .bind(micros(request.hold))
    .bind(trim.map(|t| t.id))
    .bind(trim.map(|t| i32::try_from(t.used).unwrap_or(i32::MAX)))
    .bind(trim.map(|t| micros(t.held)))
    .fetch_one(pool)
    .await?;
    Ok(Granted {
        id,
        permits: u32::try_from(permits).unwrap_or(0),
        retry_after: retry_us.map(|us| Duration::from_micros(us.max(0) as u64)),
    })
}

/// Gives a slice back outside a grant (a run ending).
pub async fn give_back_slice(
    pool: &PgPool,
    key: &str,
    window: &str,
    trim: Trim,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(key, window))
        .execute(&mut *tx)
        .await?;
    give_back(&mut tx, trim).await?;
    tx.commit().await?;
    Ok(())
}

/// Holds a slice until `held` after its grant at least: its requests reached
/// the CRM later than its hold assumed (see `send::budget`, "Late arrivals").
pub async fn extend_slice(pool: &PgPool, id: i64, held: Duration) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE engine_rate_budget \
         SET expires_at = GREATEST(expires_at, granted_at + $2::INT8 * INTERVAL '1 microsecond') \
         WHERE id = $1",
    )
    .bind(id)
    .bind(micros(held))
    .execute(pool)
    .await
    .context("holding a late slice longer")?;
    Ok(())
}

async fn give_back(tx: &mut Transaction<'_, Postgres>, trim: Trim) -> anyhow::Result<()> {
    if trim.used == 0 {
        sqlx::query("DELETE FROM engine_rate_budget WHERE id = $1")
            .bind(trim.id)
            .execute(&mut **tx)
            .await?;
    } else {
        sqlx::query(
            "UPDATE engine_rate_budget SET permits = LEAST(permits, $2), \
             expires_at = LEAST(expires_at, granted_at + $3::INT8 * INTERVAL '1 microsecond') \
             WHERE id = $1",
        )
        .bind(trim.id)
        .bind(i32::try_from(trim.used).unwrap_or(i32::MAX))
        .bind(micros(trim.held))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One advisory lock per budget and window, the same in every process.
fn lock_key(key: &str, window: &str) -> i64 {
    let high = u64::from(fnv1a(key.as_bytes()));
    let low = u64::from(fnv1a(window.as_bytes()));
    // Reinterpreting the bits: any 64-bit value is a valid lock key.
    ((high << 32) | low) as i64
}

/// Microseconds, capped so the SQL arithmetic cannot overflow (a window is
/// at most 31 days, see the connector schema).
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX)
        .min(i64::MAX / 4)
}
