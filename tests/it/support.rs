//! Shared test helpers: temp config dirs holding the shipped files, running the
//! `engine` binary, and normalising its output for snapshots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};

use chrono::{DateTime, Utc};
use engine::clock::{Clock, SystemClock};
use engine::engine::{RunOptions, RunSummary, run_connector};
use engine::plan::Plan;
use engine::sandbox::{Sandbox, SandboxOptions};
use engine::store::{Backend, ClaimedRow, Store, TableSpec};
use futures::FutureExt;
use serde_json::{Map, Value};

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
    pub store: Store,
    /// The URL, for a second connection or a child process.
    pub url: String,
    /// A table name no other test uses.
    pub table: String,
    /// The seed's HubSpot state columns over `table`: what a test reads and
    /// writes through when it has no mapping (the store tests).
    pub spec: TableSpec,
    /// Holds the SQLite file's directory until the test ends.
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn open(backend: Backend) -> Option<TestDb> {
        let table = format!(
            "contacts_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("engine.db").display());
                (url, Some(dir))
            }
            Backend::Postgres => (pg_url(), None),
        };
        let store = match Store::connect(&url).await {
            Ok(store) => store,
            Err(e) if backend == Backend::Sqlite => panic!("SQLite at {url}: {e:#}"),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("PostgreSQL not reachable at {url} under CI: {e:#}")
            }
            Err(e) => {
                eprintln!("skipped: PostgreSQL not reachable at {url}: {e:#}");
                return None;
            }
        };
        Some(TestDb {
            store,
            url,
            spec: seed_spec(&table),
            table,
            _dir: dir,
        })
    }

    /// The seed's table, created by migrate, holding `rows`.
    pub async fn with_rows(self, rows: &[Map<String, Value>]) -> TestDb {
        self.store.migrate(&self.spec).await.unwrap();
        let inserted = self
            .store
            .insert_rows(&self.spec.table, rows)
            .await
            .unwrap();
        assert_eq!(inserted, rows.len() as u64);
        self
    }

    /// Row `id` of [`TestDb::spec`], every column.
    pub async fn row(&self, id: &str) -> Map<String, Value> {
        let row = self.store.fetch_row(&self.spec, id).await.unwrap();
        row.unwrap_or_else(|| panic!("no row {id}"))
    }

    /// Claims up to `limit` rows of [`TestDb::spec`].
    pub async fn claim(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        lease: DateTime<Utc>,
    ) -> Vec<ClaimedRow> {
        self.store
            .claim(&self.spec, limit, now, lease)
            .await
            .unwrap()
    }

    /// Runs SQL the store has no method for (test set-up only).
    pub async fn execute(&self, sql: String) {
        execute(&self.store, sql).await;
    }
}

/// The seed's HubSpot state columns over `table`.
pub fn seed_spec(table: &str) -> TableSpec {
    TableSpec {
        table: table.into(),
        id_column: "id".into(),
        key_column: "email".into(),
        processing_status: "hubspot_processing_status".into(),
        sync_status: "hubspot_sync_status".into(),
        crm_id: "hubspot_contact_id".into(),
        error: "hubspot_processing_error".into(),
        retry_count: "retry_count".into(),
        next_retry_at: "next_retry_at".into(),
        fingerprint: None,
        table_mates: vec![],
    }
}

/// Opens the backend's database, runs `test`, and drops the test's table
/// (PostgreSQL) even when the test panics.
pub async fn with_db<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(db) = TestDb::open(backend).await else {
        return;
    };
    let (store, table) = (db.store.clone(), db.spec.table.clone());
    let outcome = AssertUnwindSafe(test(db)).catch_unwind().await;
    if let Store::Postgres(pool) = &store {
        let drop = format!("DROP TABLE IF EXISTS \"{table}\"");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(pool)
            .await
            .unwrap();
    }
    store.close().await;
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
}

/// Runs SQL the store has no method for (test set-up only).
pub async fn execute(store: &Store, sql: String) {
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

/// The errors `engine check` finds in `config` against `env`, each as it
/// prints them (file, line, message, hint).
pub fn check_errors(config: &ConfigDir, env: &BTreeMap<String, String>) -> Vec<String> {
    let checked = engine::check::check_dir(config.path(), env);
    checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect()
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
    try_run_to_end(plan, connector, &db.store, env, clock, options)
        .await
        .expect("the run finishes")
}

/// As [`run_to_end`] over `store`, handing back the error a run stops with.
pub async fn try_run_to_end(
    plan: &Arc<Plan>,
    connector: &str,
    store: &Store,
    env: &BTreeMap<String, String>,
    clock: Arc<dyn Clock>,
    options: RunOptions,
) -> anyhow::Result<Arc<RunSummary>> {
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    run_connector(
        plan.clone(),
        connector,
        store.clone(),
        env,
        clock,
        options,
        shutdown,
    )
    .await
}

/// Generates `mod <test> { on_sqlite, on_postgres }` for each test fn.
///
/// `on_both_backends!(a, b)` calls `a(Backend)`, for tests that open their
/// own database (usually through a [`Harness`]); `on_both_backends!(with_db:
/// a, b)` calls `a(TestDb)` through [`with_db`], which drops the test's
/// table afterwards.
#[macro_export]
macro_rules! on_both_backends {
    (with_db: $($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                $crate::support::with_db(engine::store::Backend::Sqlite, super::$test).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                $crate::support::with_db(engine::store::Backend::Postgres, super::$test).await;
            }
        }
    )*};
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

/// `Deref` and `DerefMut` from a test's fixture to the harness it wraps:
/// `wraps!(Fixture => harness: Harness)`.
#[macro_export]
macro_rules! wraps {
    ($outer:ty => $field:ident: $inner:ty) => {
        impl std::ops::Deref for $outer {
            type Target = $inner;

            fn deref(&self) -> &$inner {
                &self.$field
            }
        }

        impl std::ops::DerefMut for $outer {
            fn deref_mut(&mut self) -> &mut $inner {
                &mut self.$field
            }
        }
    };
}

/// The engine driven in-process over one test's table: a config dir, the
/// environment, and the plan checked from them with its tables migrated.
pub struct Harness {
    pub db: TestDb,
    pub config: ConfigDir,
    pub env: BTreeMap<String, String>,
    pub plan: Arc<Plan>,
    /// The mapping [`Harness::row`] and [`Harness::queue`] use.
    pub mapping: String,
    /// Its connector: the one [`Harness::run`] drives.
    pub connector: String,
    /// The mappings whose tables are migrated (and again on a replan).
    mappings: Vec<String>,
}

impl Harness {
    /// Opens `backend`'s database, lets `write` fill `config` for its table,
    /// then plans against `env` and migrates `mappings` (the first is the
    /// harness's mapping). `None` when PostgreSQL is not reachable outside CI.
    pub async fn start(
        backend: Backend,
        config: ConfigDir,
        env: BTreeMap<String, String>,
        mappings: &[&str],
        write: impl FnOnce(&ConfigDir, &TestDb),
    ) -> Option<Harness> {
        let first = mappings[0].to_string();
        let write = |config: &ConfigDir, db: &TestDb| {
            write(config, db);
            first
        };
        Harness::open(backend, config, env, mappings, write).await
    }

    /// As [`Harness::start`] for a mapping over a table the test makes
    /// itself (a snapshot's source, a view): nothing is migrated. `write`
    /// fills `config` and names the harness's mapping.
    pub async fn unmigrated(
        backend: Backend,
        config: ConfigDir,
        env: BTreeMap<String, String>,
        write: impl FnOnce(&ConfigDir, &TestDb) -> String,
    ) -> Option<Harness> {
        Harness::open(backend, config, env, &[], write).await
    }

    async fn open(
        backend: Backend,
        config: ConfigDir,
        env: BTreeMap<String, String>,
        migrated: &[&str],
        write: impl FnOnce(&ConfigDir, &TestDb) -> String,
    ) -> Option<Harness> {
        engine::install_crypto_provider();
        let db = TestDb::open(backend).await?;
        let mapping = write(&config, &db);
        let plan = plan_and_migrate(&config, &env, &db, migrated).await;
        let connector = plan.mappings[&mapping].connector.clone();
        Some(Harness {
            db,
            config,
            env,
            plan,
            mapping,
            connector,
            mappings: migrated.iter().map(|m| m.to_string()).collect(),
        })
    }

    /// The shipped config with `mappings` pointed at a fresh table and
    /// migrated, after `edit` has changed it.
    pub async fn shipped(
        backend: Backend,
        env: BTreeMap<String, String>,
        mappings: &[&str],
        edit: impl FnOnce(&ConfigDir),
    ) -> Option<Harness> {
        Harness::start(
            backend,
            ConfigDir::shipped(),
            env,
            mappings,
            |config, db| {
                point_at(config, db, mappings);
                edit(config);
            },
        )
        .await
    }

    /// Re-reads the config (after an edit) and migrates again.
    pub async fn replan(&mut self) {
        let mappings: Vec<&str> = self.mappings.iter().map(String::as_str).collect();
        self.plan = plan_and_migrate(&self.config, &self.env, &self.db, &mappings).await;
    }

    /// The environment as [`run_engine`] takes it.
    pub fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The state columns of `mapping`.
    pub fn spec(&self, mapping: &str) -> &TableSpec {
        &self.plan.mappings[mapping].table
    }

    /// Inserts `rows` as they are.
    pub async fn insert(&self, rows: &[Map<String, Value>]) {
        let inserted = self
            .db
            .store
            .insert_rows(&self.db.table, rows)
            .await
            .expect("insert rows");
        assert_eq!(inserted, rows.len() as u64);
    }

    /// Inserts `rows` (JSON objects) into the harness's mapping's table,
    /// queued for it with no retry spent.
    pub async fn queue(&self, rows: impl IntoIterator<Item = Value>) {
        let spec = self.spec(&self.mapping);
        let (status, retry_count) = (spec.processing_status.clone(), spec.retry_count.clone());
        let rows: Vec<Map<String, Value>> = rows
            .into_iter()
            .map(|row| {
                let Value::Object(mut row) = row else {
                    panic!("not an object: {row}")
                };
                row.entry(status.clone()).or_insert("Queued".into());
                row.entry(retry_count.clone()).or_insert(0.into());
                row
            })
            .collect();
        let inserted = self
            .db
            .store
            .insert_rows(&spec.table, &rows)
            .await
            .expect("insert rows");
        assert_eq!(inserted, rows.len() as u64);
    }

    /// Runs `connector` in this process until nothing is claimable.
    pub async fn run_connector(
        &self,
        connector: &str,
        clock: Arc<dyn Clock>,
        options: RunOptions,
    ) -> Arc<RunSummary> {
        run_to_end(&self.plan, connector, &self.db, &self.env, clock, options).await
    }

    /// Runs the harness's connector until nothing is claimable.
    pub async fn run(&self, clock: Arc<dyn Clock>) -> Arc<RunSummary> {
        self.run_connector(&self.connector, clock, quiet()).await
    }

    /// Runs the harness's connector on the real clock.
    pub async fn run_now(&self) -> Arc<RunSummary> {
        self.run(Arc::new(SystemClock)).await
    }

    /// As [`Harness::run_now`], handing back the error the run stops with.
    pub async fn try_run(&self) -> anyhow::Result<Arc<RunSummary>> {
        self.try_run_over(&self.db.store, Arc::new(SystemClock), quiet())
            .await
    }

    /// Runs the harness's connector with `options` until nothing is
    /// claimable, reading `source` (a read-only connection, say) instead of
    /// the test's own, and hands back the error the run stops with.
    pub async fn try_run_over(
        &self,
        source: &Store,
        clock: Arc<dyn Clock>,
        options: RunOptions,
    ) -> anyhow::Result<Arc<RunSummary>> {
        try_run_to_end(
            &self.plan,
            &self.connector,
            source,
            &self.env,
            clock,
            options,
        )
        .await
    }

    /// Row `id` of the harness's mapping, every column.
    pub async fn row(&self, id: &str) -> Map<String, Value> {
        self.db
            .store
            .fetch_row(self.spec(&self.mapping), id)
            .await
            .expect("fetch row")
            .unwrap_or_else(|| panic!("no row {id}"))
    }
}

/// A [`Harness`] run in-process against the sandbox.
pub struct SandboxHarness {
    pub harness: Harness,
    pub sandbox: Sandbox,
}

wraps!(SandboxHarness => harness: Harness);

impl SandboxHarness {
    /// A shipped connector and its mapping (`connector` names both) over a
    /// fresh SQLite table.
    pub async fn new(connector: &str, options: SandboxOptions) -> SandboxHarness {
        SandboxHarness::around(options, |base_url| async move {
            let env = engine::demo::sandbox_env(&base_url);
            Harness::shipped(Backend::Sqlite, env, &[connector], |_| {}).await
        })
        .await
        .expect("SQLite is always there")
    }

    /// Starts a sandbox on a free port, then the harness `start` makes for
    /// the sandbox's base URL (`None` where `start` gives none: PostgreSQL
    /// not reachable outside CI).
    pub async fn around<F, Fut>(options: SandboxOptions, start: F) -> Option<SandboxHarness>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Option<Harness>>,
    {
        engine::install_crypto_provider();
        let options = SandboxOptions { port: 0, ..options };
        let sandbox = Sandbox::start(options).await.expect("the sandbox starts");
        let harness = start(sandbox.base_url()).await?;
        Some(SandboxHarness { harness, sandbox })
    }

    /// Queues rows `(id, email)`, plus any extra columns, for this connector.
    pub async fn queue_with(&self, rows: &[(String, String)], extra: serde_json::Value) {
        let extra = extra.as_object().cloned().unwrap_or_default();
        self.harness
            .queue(rows.iter().map(|(id, email)| {
                let mut row = serde_json::json!({"id": id, "email": email, "name": "Batch Test"});
                row.as_object_mut().unwrap().extend(extra.clone());
                row
            }))
            .await;
    }

    /// Queues rows `(id, email)`.
    pub async fn queue(&self, rows: &[(String, String)]) {
        self.queue_with(rows, serde_json::json!({})).await;
    }

    /// One `run_connector` to completion.
    pub async fn run(&self) {
        self.harness.run_now().await;
    }

    /// Requests the sandbox received on one route pattern.
    pub fn requests(&self, route: &str) -> u64 {
        self.sandbox.stats()["requests"][route]
            .as_u64()
            .unwrap_or(0)
    }

    /// Every request the sandbox received, on any route.
    pub fn all_requests(&self) -> u64 {
        let stats = self.sandbox.stats();
        let routes = stats["requests"].as_object().cloned().unwrap_or_default();
        routes.values().filter_map(Value::as_u64).sum()
    }
}

/// Insta settings that write each `(text, placeholder)` literally in place of
/// `text` (a table name, a path, today's date) before comparing a snapshot.
pub fn replacing(pairs: &[(&str, &str)]) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    for (text, placeholder) in pairs {
        settings.add_filter(&regex::escape(text), *placeholder);
    }
    settings
}

/// Bytes as lower-case hex (an MD5 digest as the CRMs spell it).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, b| {
        // Writing to a String cannot fail.
        let _ = write!(text, "{b:02x}");
        text
    })
}
