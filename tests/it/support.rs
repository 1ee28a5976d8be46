//! Shared test helpers: temp config dirs holding the shipped files, running the
//! `engine` binary, and normalising its output for snapshots.

use std::path::{Path, PathBuf};
use std::process::Command;

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
