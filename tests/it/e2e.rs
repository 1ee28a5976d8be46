//! End to end: the shipped connectors and mappings, the sandbox standing in for
//! HubSpot and Brevo, a real database, and the engine run in-process or as the
//! `engine` binary (killed, stopped, run twice at once). Each test that touches
//! a database runs on SQLite and on PostgreSQL.
//!
//! The helpers every submodule shares are here: a [`Fixture`] (database table,
//! config dir, sandbox, environment), generated rows, and [`Engine`], a spawned
//! `engine` process whose output goes to files and which is killed if a test
//! fails while it runs.

/// `insta::assert_snapshot!(name, value)`, kept in `tests/it/snapshots/` with
/// the other modules' snapshots. Both backends compare against one file.
macro_rules! assert_snapshot {
    ($name:expr, $value:expr $(,)?) => {
        insta::with_settings!({ snapshot_path => "../snapshots" }, {
            insta::assert_snapshot!($name, $value);
        })
    };
}

mod bulk;
mod cli;
mod crash;
mod demo;
mod history;
mod instances;
mod metrics;
mod preview;
mod seed;
mod service;
mod shared_lease;
mod waits;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use engine::clock::{Clock, SystemClock};
use engine::engine::RunSummary;
use engine::sandbox::{Sandbox, SandboxOptions};
use engine::store::Backend;
use serde_json::{Map, Value, json};

use crate::support::{ConfigDir, Harness, engine_bin, quiet};

/// A sandbox on a free port, with `latency_ms` added to every CRM answer.
pub fn sandbox_options(latency_ms: u64) -> SandboxOptions {
    SandboxOptions {
        port: 0,
        latency_ms,
        ..SandboxOptions::default()
    }
}

/// One test's world: a fresh seed table (both shipped mappings pointed at it and
/// migrated), the shipped config (plus the test's edits), and a sandbox; the
/// environment is `demo::sandbox_env`, both connectors pointed at the sandbox.
pub struct Fixture {
    pub harness: Harness,
    pub sandbox: Sandbox,
}

crate::wraps!(Fixture => harness: Harness);

impl Fixture {
    /// `None` when PostgreSQL is not reachable outside CI (see [`crate::support::TestDb::open`]).
    /// `edit` changes the config dir before it is planned (schedules, limits).
    pub async fn new(
        backend: Backend,
        sandbox: SandboxOptions,
        edit: impl FnOnce(&ConfigDir),
    ) -> Option<Fixture> {
        engine::install_crypto_provider();
        let sandbox = Sandbox::start(sandbox).await.expect("the sandbox starts");
        let env = engine::demo::sandbox_env(&sandbox.base_url());
        let mappings = ["hubspot", "brevo"];
        let harness = Harness::shipped(backend, env, &mappings, edit).await?;
        Some(Fixture { harness, sandbox })
    }

    /// Runs `connector` in this process until nothing is claimable.
    pub async fn run(&self, connector: &str, clock: Arc<dyn Clock>) -> Arc<RunSummary> {
        self.run_connector(connector, clock, quiet()).await
    }

    /// Runs `connector` in this process on the real clock.
    pub async fn run_now(&self, connector: &str) -> Arc<RunSummary> {
        self.run(connector, Arc::new(SystemClock)).await
    }

    /// The rows with these ids, in that order.
    pub async fn rows(&self, ids: &[String]) -> Vec<Map<String, Value>> {
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            rows.push(self.row(id).await);
        }
        rows
    }

    /// How many rows have each processing status of `mapping` (`(none)` for NULL).
    pub async fn counts(&self, mapping: &str) -> BTreeMap<String, i64> {
        let counts = self
            .db
            .store
            .status_counts(self.spec(mapping))
            .await
            .expect("status counts");
        counts
            .into_iter()
            .map(|(status, n)| (status.unwrap_or_else(|| "(none)".into()), n))
            .collect()
    }

    /// How many rows of `mapping` are in `status`.
    pub async fn count(&self, mapping: &str, status: &str) -> i64 {
        self.counts(mapping).await.get(status).copied().unwrap_or(0)
    }

    /// Asks for the delete of row `id`'s record in `mapping`'s CRM, as the
    /// application does: its processing status set to `Delete`.
    pub async fn ask_to_delete(&self, mapping: &str, id: &str) {
        let status = &self.spec(mapping).processing_status;
        let table = &self.db.table;
        self.db
            .execute(format!(
                "UPDATE \"{table}\" SET \"{status}\" = 'Delete' WHERE id = '{id}'"
            ))
            .await;
    }

    /// `--config-dir DIR --database URL`, for the binary.
    pub fn location(&self) -> Vec<String> {
        vec![
            "--config-dir".into(),
            self.config.path().display().to_string(),
            "--database".into(),
            self.db.url.clone(),
        ]
    }

    /// Starts `engine ARGS --config-dir .. --database ..` with the sandbox environment.
    pub fn spawn(&self, args: &[&str]) -> Engine {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(self.location());
        Engine::spawn(&all, &self.env)
    }

    /// The number of requests the sandbox has answered on `route` (e.g. `POST /v3/contacts`).
    pub fn requests(&self, route: &str) -> u64 {
        self.sandbox.stats()["requests"][route]
            .as_u64()
            .unwrap_or(0)
    }

    /// Requests the sandbox is working on right now.
    pub fn in_flight(&self) -> u64 {
        self.sandbox.stats()["in_flight"].as_u64().unwrap_or(0)
    }
}

/// Lets the Brevo mapping delete records (`on_removed = "archive"`): a row
/// whose processing status is set to `Delete` has its contact deleted.
pub fn brevo_deletes_records(config: &ConfigDir) {
    config.edit(
        "mappings/brevo.toml",
        "connector = \"brevo\"",
        "connector = \"brevo\"\non_removed = \"archive\"",
    );
}

/// Brevo requests are tried once: a failure is not retried in-process.
pub fn brevo_tries_once(config: &ConfigDir) {
    config.edit(
        "connectors/brevo.toml",
        "max_attempts = 3",
        "max_attempts = 1",
    );
}

/// `n` contacts queued for both CRMs: ids `00000000-0000-4000-8000-000000000001`..,
/// emails `contact-0001@e2e.example.com`.., each with a name and a phone number.
pub fn generated_rows(n: usize) -> Vec<Map<String, Value>> {
    (1..=n)
        .map(|i| {
            let row = json!({
                "id": generated_id(i),
                "email": generated_email(i),
                "name": format!("Contact {i}"),
                "phone_number": format!("+1-555-{i:04}"),
                "hubspot_sync_status": "Queued",
                "hubspot_processing_status": "Queued",
                "brevo_sync_status": "Queued",
                "brevo_processing_status": "Queued",
                "retry_count": 0,
            });
            row.as_object().expect("an object").clone()
        })
        .collect()
}

pub fn generated_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

pub fn generated_email(i: usize) -> String {
    format!("contact-{i:04}@e2e.example.com")
}

/// The ids of rows built by [`generated_rows`] or `demo::seed_rows`.
pub fn ids_of(rows: &[Map<String, Value>]) -> Vec<String> {
    rows.iter().map(|r| text(r, "id")).collect()
}

/// A column as text (`""` for NULL; numbers as digits).
pub fn text(row: &Map<String, Value>, column: &str) -> String {
    match row.get(column) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// An instant as either backend returns it in a row: SQLite's
/// `YYYY-MM-DD HH:MM:SS.fff` text or PostgreSQL's RFC 3339.
pub fn parse_time(raw: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
        })
        .unwrap_or_else(|e| panic!("not a time: {raw:?}: {e}"))
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sandbox's contacts of one CRM by lower-cased email: (id, the contact).
/// Panics if two contacts share an email.
pub fn contacts_by_email(
    contacts: Vec<Value>,
    email_of: impl Fn(&Value) -> Option<&str>,
) -> BTreeMap<String, (String, Value)> {
    let mut by_email = BTreeMap::new();
    for contact in contacts {
        let email = email_of(&contact)
            .expect("every contact has an email")
            .to_lowercase();
        let id = match &contact["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let previous = by_email.insert(email.clone(), (id, contact));
        assert!(previous.is_none(), "two contacts with the email {email}");
    }
    by_email
}

/// HubSpot's contacts in the sandbox by email.
pub fn hubspot_by_email(sandbox: &Sandbox) -> BTreeMap<String, (String, Value)> {
    contacts_by_email(sandbox.hubspot_contacts(), |c| {
        c["properties"]["email"].as_str()
    })
}

/// Brevo's contacts in the sandbox by email.
pub fn brevo_by_email(sandbox: &Sandbox) -> BTreeMap<String, (String, Value)> {
    contacts_by_email(sandbox.brevo_contacts(), |c| c["email"].as_str())
}

/// Every row is `Complete` for `crm` exactly once: the CRM holds one contact per
/// row email and no other, and each row carries its contact's id, no error.
pub async fn assert_each_row_synced_once(f: &Fixture, crm: &str, ids: &[String]) {
    let contacts = match crm {
        "hubspot" => hubspot_by_email(&f.sandbox),
        _ => brevo_by_email(&f.sandbox),
    };
    let rows = f.rows(ids).await;
    let emails: BTreeSet<String> = rows
        .iter()
        .map(|r| text(r, "email").to_lowercase())
        .collect();
    assert_eq!(emails.len(), rows.len(), "the rows have distinct emails");
    assert_eq!(
        contacts.keys().cloned().collect::<BTreeSet<_>>(),
        emails,
        "the CRM holds exactly one contact per row"
    );
    for row in &rows {
        let email = text(row, "email").to_lowercase();
        assert_eq!(
            text(row, &format!("{crm}_processing_status")),
            "Complete",
            "{row:?}"
        );
        assert_eq!(
            text(row, &format!("{crm}_sync_status")),
            "Complete",
            "{row:?}"
        );
        assert_eq!(
            text(row, &format!("{crm}_contact_id")),
            contacts[&email].0,
            "{row:?}"
        );
        assert_eq!(
            row[&format!("{crm}_processing_error")],
            Value::Null,
            "{row:?}"
        );
    }
}

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// A running `engine` process. Its stdout and stderr go to files (a pipe nobody
/// reads would block it once full); dropping it kills the process.
pub struct Engine {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Engine {
    /// `engine ARGS` with a clean environment: PATH plus `env`.
    pub fn spawn(args: &[String], env: &BTreeMap<String, String>) -> Engine {
        let dir = tempfile::tempdir().expect("temp dir");
        let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
        let (stdout, stderr) = (
            dir.path().join(format!("{n}.stdout")),
            dir.path().join(format!("{n}.stderr")),
        );
        let child = Command::new(engine_bin())
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn engine");
        Engine {
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to record anything.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
    }

    /// SIGTERM, as a service manager stops it.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGTERM, then the exit code, which must come within the 10 s the
    /// README promises for a stop.
    pub async fn stop(&mut self) -> i32 {
        self.terminate();
        self.exit_code(Duration::from_secs(10)).await
    }

    /// [`Engine::stop`], and the exit code must be `expected`.
    pub async fn stop_with(&mut self, expected: i32) {
        self.terminate();
        self.assert_exits_with(expected, Duration::from_secs(10))
            .await;
    }

    /// Waits up to `timeout` for the exit, whose code must be `expected`
    /// (stderr shown if not).
    pub async fn assert_exits_with(&mut self, expected: i32, timeout: Duration) {
        let code = self.exit_code(timeout).await;
        assert_eq!(code, expected, "{}", self.stderr());
    }

    /// Waits for the process to exit; panics (and kills it) after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "engine did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a clean or failing exit and returns its code (panics on a signal).
    pub async fn exit_code(&mut self, timeout: Duration) -> i32 {
        let status = self.wait(timeout).await;
        status.code().unwrap_or_else(|| {
            panic!(
                "engine ended by a signal ({status:?}); stderr:\n{}",
                self.stderr()
            )
        })
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
