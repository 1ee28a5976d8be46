//! `max_instances` across processes: N named slots, each a lock the
//! operating system or the database drops when its holder dies, so a
//! crashed process never keeps a slot.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool, SqlitePool};

use super::sql::fnv1a;

/// One taken instance slot; freed when dropped.
#[derive(Debug)]
pub struct InstanceGuard {
    slot: u32,
    held: Held,
}

#[derive(Debug)]
enum Held {
    /// An exclusive lock on `<db path>.<lock name>.<slot>.lock`.
    File(#[expect(dead_code, reason = "held for its lock, which closing the file frees")] File),
    /// A session advisory lock, held by this connection (outside the pool,
    /// so no one else runs queries on it and the lock lives exactly as
    /// long as the guard).
    Advisory { conn: PgConnection, key: (i32, i32) },
    /// An in-memory SQLite database belongs to one process: nothing to
    /// share, nothing to hold.
    Nothing,
}

impl InstanceGuard {
    /// Which of the `max_instances` slots this is (0-based).
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Frees the slot now. Dropping the guard frees it too, but PostgreSQL
    /// only notices a dropped connection a moment later; this waits until
    /// the lock is gone.
    pub async fn release(self) -> anyhow::Result<()> {
        if let Held::Advisory { mut conn, key } = self.held {
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(key.0)
                .bind(key.1)
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
        Ok(())
    }
}

pub(super) async fn acquire_file_slot(
    pool: &SqlitePool,
    lock_name: &str,
    max_instances: u32,
) -> anyhow::Result<Option<InstanceGuard>> {
    let db_file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(pool)
            .await?;
    if db_file.is_empty() {
        return Ok(Some(InstanceGuard {
            slot: 0,
            held: Held::Nothing,
        }));
    }
    for slot in 0..max_instances {
        let path = lock_path(&db_file, lock_name, slot);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                return Ok(Some(InstanceGuard {
                    slot,
                    held: Held::File(file),
                }));
            }
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
    Ok(None)
}

/// `<db path>.<lock name>.<slot>.lock`, with the lock name reduced to
/// characters every file system accepts. The files stay behind: deleting
/// a lock file while another process opens it would split the lock.
fn lock_path(db_file: &str, lock_name: &str, slot: u32) -> PathBuf {
    let name: String = lock_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(format!("{db_file}.{name}.{slot}.lock"))
}

pub(super) async fn acquire_advisory_slot(
    pool: &PgPool,
    lock_name: &str,
    max_instances: u32,
) -> anyhow::Result<Option<InstanceGuard>> {
    // The lock name picks the first key, the slot the second.
    let name_key = fnv1a(lock_name.as_bytes()) as i32;
    let mut conn = pool.acquire().await?.detach();
    for slot in 0..max_instances {
        let key = (name_key, i32::try_from(slot).context("too many instances")?);
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(key.0)
            .bind(key.1)
            .fetch_one(&mut conn)
            .await?;
        if taken {
            return Ok(Some(InstanceGuard {
                slot,
                held: Held::Advisory { conn, key },
            }));
        }
    }
    conn.close().await?;
    Ok(None)
}
