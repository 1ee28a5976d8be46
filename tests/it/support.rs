//! Shared test helpers: temp config dirs holding the shipped files, running the
//! `engine` binary, and normalising its output for snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use engine::clock::Clock;
use engine::engine::{RunOptions, RunSummary, run_connector};
use engine::plan::Plan;

/// A temporary config dir holding the shipped connectors and mappings.
pub struct ConfigDir {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    /// A copy of the shipped config.
    pub fn shipped() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        engine::demo::write_shipped_config(dir.path()).expect("write config");
        Self { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces `from` by `to` in one file, failing if `from` is absent.
    pub fn edit(&self, file: &str, from: &str, to: &str) -> &Self {
        let path = self.path().join(file);
        let text = std::fs::read_to_string(&path).expect("read config file");
        assert!(text.contains(from), "{file} does not contain {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write config file");
        self
    }

    /// Writes a file.
    pub fn write(&self, file: &str, text: &str) -> &Self {
        let path = self.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }
}

/// The engine binary built for these tests.
pub fn engine_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_engine"))
}

/// Runs `engine ARGS` in `dir` with a clean environment (no secrets, no DATABASE_URL)
/// and returns a normalised transcript: exit code, stdout, stderr.
pub fn run_engine(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(engine_bin())
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run engine");
    let text = format!(
        "exit code: {}\n----- stdout -----\n{}----- stderr -----\n{}",
        output
            .status
            .code()
            .map_or("signal".into(), |c| c.to_string()),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    text.replace(&dir.display().to_string(), "[DIR]")
}

/// The PostgreSQL the tests use: `ENGINE_TEST_PG_URL`, or the local default.
pub fn pg_url() -> String {
    std::env::var("ENGINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database for one test, or `None` when PostgreSQL is not reachable outside CI
/// (under `CI` that is a failure, never a silent skip).
pub struct TestDb {
    pub store: engine::store::Store,
    /// The URL, for a second connection or a child process.
    #[allow(dead_code)]
    pub url: String,
    /// A table name no other test uses.
    pub table: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn open(backend: engine::store::Backend) -> Option<TestDb> {
        let table = format!(
            "contacts_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        match backend {
            engine::store::Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("engine.db").display());
                let store = engine::store::Store::connect(&url).await.unwrap();
                Some(TestDb {
                    store,
                    url,
                    table,
                    _dir: Some(dir),
                })
            }
            engine::store::Backend::Postgres => {
                let url = pg_url();
                match engine::store::Store::connect(&url).await {
                    Ok(store) => Some(TestDb {
                        store,
                        url,
                        table,
                        _dir: None,
                    }),
                    Err(e) if std::env::var_os("CI").is_some() => {
                        panic!("PostgreSQL not reachable at {url} under CI: {e:#}")
                    }
                    Err(e) => {
                        eprintln!("skipped: PostgreSQL not reachable at {url}: {e:#}");
                        None
                    }
                }
            }
        }
    }
}

/// Runs SQL the store has no method for (test set-up only).
pub async fn execute(store: &engine::store::Store, sql: String) {
    use engine::store::Store;
    match store {
        Store::Sqlite(pool) => {
            let mut conn = pool.acquire().await.unwrap();
            // A pooled connection may hold the schema from before another
            // connection's DDL, and SQLite resolves the names of an ALTER
            // TABLE against it when preparing ("no such column"). A read
            // first brings it up to date.
            sqlx::query("SELECT count(*) FROM sqlite_master")
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        Store::Postgres(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

/// Points each of the shipped `mappings` (`"hubspot"`, `"brevo"`) at `db`'s table.
pub fn point_at(config: &ConfigDir, db: &TestDb, mappings: &[&str]) {
    let table = format!("table = \"{}\"", db.table);
    for mapping in mappings {
        config.edit(
            &format!("mappings/{mapping}.toml"),
            "table = \"contacts\"",
            &table,
        );
    }
}

/// Plans `config` against `env` (failing with the diagnostics if it has
/// errors) and migrates the tables of `mappings`.
pub async fn plan_and_migrate(
    config: &ConfigDir,
    env: &BTreeMap<String, String>,
    db: &TestDb,
    mappings: &[&str],
) -> Arc<Plan> {
    let checked = engine::check::check_dir(config.path(), env);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let plan = Arc::new(checked.plan);
    for mapping in mappings {
        db.store
            .migrate(&plan.mappings[*mapping].table)
            .await
            .expect("migrate");
    }
    plan
}

/// The engine's defaults without progress lines.
pub fn quiet() -> RunOptions {
    RunOptions {
        progress_every: None,
        ..RunOptions::default()
    }
}

/// Runs `connector` in this process until nothing is claimable.
pub async fn run_to_end(
    plan: &Arc<Plan>,
    connector: &str,
    db: &TestDb,
    env: &BTreeMap<String, String>,
    clock: Arc<dyn Clock>,
    options: RunOptions,
) -> Arc<RunSummary> {
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    run_connector(
        plan.clone(),
        connector,
        db.store.clone(),
        env,
        clock,
        options,
        shutdown,
    )
    .await
    .expect("the run finishes")
}

/// Generates `mod <test> { on_sqlite, on_postgres }` for async fns taking a `Backend`.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$test(engine::store::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                super::$test(engine::store::Backend::Postgres).await;
            }
        }
    )*};
}

/// A shipped connector and mapping run in-process against the sandbox, over a
/// fresh SQLite table.
pub struct SandboxHarness {
    pub db: TestDb,
    pub plan: Arc<Plan>,
    pub sandbox: engine::sandbox::Sandbox,
    env: BTreeMap<String, String>,
    connector: String,
    _config: ConfigDir,
}

impl SandboxHarness {
    /// `connector` names both the shipped connector and its mapping.
    pub async fn new(connector: &str, options: engine::sandbox::SandboxOptions) -> SandboxHarness {
        engine::install_crypto_provider();
        let db = TestDb::open(engine::store::Backend::Sqlite)
            .await
            .expect("SQLite is always there");
        let sandbox =
            engine::sandbox::Sandbox::start(engine::sandbox::SandboxOptions { port: 0, ..options })
                .await
                .unwrap();
        let config = ConfigDir::shipped();
        point_at(&config, &db, &[connector]);
        let env = engine::demo::sandbox_env(&sandbox.base_url());
        let plan = plan_and_migrate(&config, &env, &db, &[connector]).await;
        SandboxHarness {
            db,
            plan,
            sandbox,
            env,
            connector: connector.to_string(),
            _config: config,
        }
    }

    /// Queues rows `(id, email)`, plus any extra columns, for this connector.
    pub async fn queue_with(&self, rows: &[(String, String)], extra: serde_json::Value) {
        let status = format!("{}_processing_status", self.connector);
        let rows: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .iter()
            .map(|(id, email)| {
                let mut row = serde_json::json!({"id": id, "email": email, "name": "Batch Test"});
                row[status.as_str()] = "Queued".into();
                let mut row = row.as_object().unwrap().clone();
                row.extend(extra.as_object().cloned().unwrap_or_default());
                row
            })
            .collect();
        self.db
            .store
            .insert_rows(&self.db.table, &rows)
            .await
            .unwrap();
    }

    /// Queues rows `(id, email)`.
    pub async fn queue(&self, rows: &[(String, String)]) {
        self.queue_with(rows, serde_json::json!({})).await;
    }

    /// One `run_connector` to completion.
    pub async fn run(&self) {
        let clock = Arc::new(engine::clock::SystemClock);
        run_to_end(
            &self.plan,
            &self.connector,
            &self.db,
            &self.env,
            clock,
            quiet(),
        )
        .await;
    }

    /// One row, all columns.
    pub async fn row(&self, id: &str) -> serde_json::Map<String, serde_json::Value> {
        self.db
            .store
            .fetch_row(&self.plan.mappings[&self.connector].table, id)
            .await
            .unwrap()
            .unwrap()
    }

    /// Requests the sandbox received on one route pattern.
    pub fn requests(&self, route: &str) -> u64 {
        self.sandbox.stats()["requests"][route]
            .as_u64()
            .unwrap_or(0)
    }
}
