//! Fresh databases holding the seed's `contacts` table, filled with queued rows.
//!
//! SQLite: a new file in a temp dir per run (WAL, as the engine opens it).
//! PostgreSQL: the database `engine_bench` (or `ENGINE_BENCH_PG_DB`) next to the test database (created
//! once), its `contacts` table dropped and migrated again per run, so the
//! engine's own table name is used and other engineers' test tables are left alone.

use std::time::{Duration, Instant};

use anyhow::Context;
use engine::plan::Plan;
use engine::store::{Backend, Store};
use sqlx::AssertSqlSafe;

/// The PostgreSQL server: `ENGINE_BENCH_PG_URL`, else the test database's server.
fn pg_admin_url() -> String {
    std::env::var("ENGINE_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The benchmark's own database: `ENGINE_BENCH_PG_DB`, else `engine_bench`
/// (two benchmarks run at once on one server each need their own, as every
/// run drops and migrates its `contacts` table again).
fn pg_database() -> String {
    std::env::var("ENGINE_BENCH_PG_DB")
        .ok()
        .filter(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .unwrap_or_else(|| "engine_bench".into())
}

/// A database for one run. The temp dir (SQLite) lives as long as this.
pub struct Db {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    /// An empty database with the seed's table, migrated for every shipped mapping
    /// (the table, their state columns and claim indexes), exactly as `engine migrate` does.
    pub async fn fresh(backend: Backend, plan: &Plan) -> anyhow::Result<Db> {
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new().prefix("engine-bench-").tempdir()?;
                (
                    format!("sqlite://{}", dir.path().join("bench.db").display()),
                    Some(dir),
                )
            }
            Backend::Postgres => (ensure_pg_database().await?, None),
        };
        let store = Store::connect(&url).await?;
        if let Store::Postgres(pool) = &store {
            sqlx::query("DROP TABLE IF EXISTS contacts")
                .execute(pool)
                .await?;
        }
        for mapping in plan.mappings.values() {
            store
                .migrate(&mapping.table)
                .await
                .with_context(|| format!("migrating for mapping {}", mapping.name))?;
        }
        Ok(Db {
            store,
            url,
            _dir: dir,
        })
    }

    /// The SQLite file's directory (none for PostgreSQL).
    pub fn dir(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(|d| d.path())
    }

    /// Inserts `n` rows shaped like the seed's, queued for both CRMs, with
    /// unique emails and phone numbers, in one `INSERT … SELECT` over a row
    /// generator (a recursive CTE on SQLite, `generate_series` on PostgreSQL);
    /// ids come from the table's uuid default. PostgreSQL's statistics are
    /// refreshed afterwards, as autovacuum would soon do.
    pub async fn fill(&self, n: u64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let columns = "email, name, phone_number, domain_id, page_id, \
                       hubspot_sync_status, hubspot_processing_status, \
                       brevo_sync_status, brevo_processing_status, retry_count";
        let n = i64::try_from(n)?;
        // In chunks, so that no statement nears the store's slow-statement
        // warning (a million rows in one took 9 s on SQLite), which prints the
        // whole statement into the benchmark's output.
        const CHUNK: i64 = 20_000;
        let chunks = (1..=n)
            .step_by(CHUNK as usize)
            .map(|first| (first, (first + CHUNK - 1).min(n)));
        match &self.store {
            Store::Sqlite(pool) => {
                let sql = format!(
                    "WITH RECURSIVE seq(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM seq WHERE i < $2) \
                     INSERT INTO contacts ({columns}) \
                     SELECT printf('bench-%07d@example.com', i), printf('First%d Last%d', i, i), \
                            printf('+1-415-%07d', i), '{DOMAIN}', '{PAGE}', \
                            'Queued', 'Queued', 'Queued', 'Queued', 0 FROM seq"
                );
                for (first, last) in chunks {
                    sqlx::query(AssertSqlSafe(sql.clone()))
                        .bind(first)
                        .bind(last)
                        .execute(pool)
                        .await?;
                }
            }
            Store::Postgres(pool) => {
                let sql = format!(
                    "INSERT INTO contacts ({columns}) \
                     SELECT format('bench-%s@example.com', lpad(i::text, 7, '0')), format('First%s Last%s', i, i), \
                            format('+1-415-%s', lpad(i::text, 7, '0')), '{DOMAIN}'::uuid, '{PAGE}'::uuid, \
                            'Queued', 'Queued', 'Queued', 'Queued', 0 FROM generate_series($1::bigint, $2::bigint) AS i"
                );
                for (first, last) in chunks {
                    sqlx::query(AssertSqlSafe(sql.clone()))
                        .bind(first)
                        .bind(last)
                        .execute(pool)
                        .await?;
                }
                sqlx::query("ANALYZE contacts").execute(pool).await?;
            }
        }
        Ok(started.elapsed())
    }
}

/// The seed's constant domain and page ids.
const DOMAIN: &str = "1ad6264b-a0b6-4551-860a-1326b2bfa28f";
const PAGE: &str = "ddc03eef-2550-46de-aca8-bbdb7cf525cb";

/// Creates the benchmark's database on the server if missing; returns its URL.
async fn ensure_pg_database() -> anyhow::Result<String> {
    let admin_url = pg_admin_url();
    let database = pg_database();
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .with_context(|| format!("PostgreSQL not reachable at {admin_url}; start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&admin)
            .await?;
    if !exists {
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    Ok(format!("{base}/{database}"))
}
