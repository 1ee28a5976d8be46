//! Snapshot-mode benchmark (issue #11): a source of N rows (default 1,000,000)
//! of which M (default 10,000) changed since the last cycle.
//!
//! ```sh
//! cargo bench --bench snapshot -- sqlite|postgres [--rows N] [--changed M]
//! ```
//!
//! Per backend: fill the seed's `contacts` table, run `engine run` (the release
//! binary, as a child) once to sync every row (the initial load), change M rows'
//! names, run again and record the time the diff took to find them (from its
//! `Compared the snapshot source` log line), the whole run's time, the requests
//! it sent and its peak RSS (VmHWM); then a third run with nothing changed,
//! which must send no request. The sandbox has no limits, and HubSpot's window
//! is lifted in the config, so the figures are the engine's own. Not run in CI.

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure};
use engine::demo::sandbox_env;
use engine::sandbox::{Sandbox, SandboxOptions};
use engine::store::{Backend, Store};
use sqlx::AssertSqlSafe;
use support::child::run_hubspot;
use support::db::Db;
use support::{plan_at, total_requests, unlimited_config};

const MAPPING: &str = "snapshot_bench";

fn main() -> ExitCode {
    let mut backends = Vec::new();
    let (mut rows, mut changed) = (1_000_000u64, 10_000u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "sqlite" => backends.push(Backend::Sqlite),
            "postgres" => backends.push(Backend::Postgres),
            "--rows" => rows = args.next().and_then(|n| n.parse().ok()).unwrap_or(rows),
            "--changed" => changed = args.next().and_then(|n| n.parse().ok()).unwrap_or(changed),
            "--bench" => {}
            other => {
                eprintln!(
                    "unknown argument {other:?}; expected sqlite|postgres [--rows N] [--changed M]"
                );
                return ExitCode::from(2);
            }
        }
    }
    if backends.is_empty() {
        backends = vec![Backend::Sqlite, Backend::Postgres];
    }
    engine::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let mut failed = false;
    for backend in backends {
        println!("\n== snapshot on {backend}: {rows} rows, {changed} changed");
        if let Err(err) = runtime.block_on(scenario(backend, rows, changed)) {
            eprintln!("error: {err:#}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn scenario(backend: Backend, rows: u64, changed: u64) -> anyhow::Result<()> {
    ensure!(changed > 0 && rows >= changed, "need 0 < changed <= rows");
    let sandbox = Sandbox::start(SandboxOptions {
        port: 0,
        ..SandboxOptions::default()
    })
    .await?;
    let env = sandbox_env(&sandbox.base_url());
    let config = unlimited_config()?;
    let plan = plan_at(config.path(), &env)?;
    let db = Db::fresh(backend, &plan).await?;
    forget_previous_state(&db.store).await?;
    let fill = db.fill(rows).await?;
    println!("inserted {rows} rows in {:.1} s", fill.as_secs_f64());
    // Only the snapshot mapping runs: the shipped queue mappings are removed.
    for shipped in ["hubspot", "brevo"] {
        std::fs::remove_file(config.path().join(format!("mappings/{shipped}.toml")))?;
    }
    std::fs::write(
        config.path().join(format!("mappings/{MAPPING}.toml")),
        "connector = \"hubspot\"\non_removed = \"archive\"\n\n[source]\nmode = \"snapshot\"\n\
         table = \"contacts\"\nkey = \"email\"\nid = \"id\"\n\n[schedule]\nbatch_size = 500\n\n\
         [fields]\nemail = \"{{lower (trim email)}}\"\nfirstname = \"{{first_name name}}\"\n\
         lastname = \"{{last_name name}}\"\nphone = \"{{e164 phone_number}}\"\n",
    )?;
    let dir = tempfile::tempdir()?;
    let initial = run_child(&env, config.path(), &db.url, dir.path()).await?;
    let sent = total_requests(&sandbox.stats());
    initial.print("initial load", sent);
    // Every (rows / changed)-th row gets a new name.
    let every = rows / changed;
    let update = match backend {
        Backend::Sqlite => {
            format!("UPDATE contacts SET name = name || ' Changed' WHERE rowid % {every} = 0")
        }
        Backend::Postgres => format!(
            "UPDATE contacts SET name = name || ' Changed' WHERE \
             substring(email from 'bench-(\\d+)@')::bigint % {every} = 0"
        ),
    };
    let touched = execute(&db.store, &update).await?;
    println!("changed {touched} rows");
    let second = run_child(&env, config.path(), &db.url, dir.path()).await?;
    let sent_second = total_requests(&sandbox.stats()) - sent;
    second.print(&format!("{touched} changed"), sent_second);
    ensure!(
        second
            .diff_line
            .as_deref()
            .is_some_and(|l| l.contains(&format!(" changed={touched} "))),
        "the diff did not find exactly the {touched} changed rows"
    );
    // 100 rows per batch request; a claim that got fewer than 500 rows (parallel
    // claimers skip each other's locked rows) ends in one partial batch.
    let (least, most) = (
        touched.div_ceil(100),
        touched.div_ceil(100) + touched.div_ceil(500),
    );
    ensure!(
        (least..=most).contains(&sent_second),
        "expected {least} to {most} batch requests for {touched} changed rows, got {sent_second}"
    );
    let before = total_requests(&sandbox.stats());
    let third = run_child(&env, config.path(), &db.url, dir.path()).await?;
    let sent_third = total_requests(&sandbox.stats()) - before;
    third.print("nothing changed", sent_third);
    ensure!(
        sent_third == 0,
        "a cycle with nothing changed sent {sent_third} requests"
    );
    db.store.close().await;
    Ok(())
}

/// PostgreSQL's bench database outlives a run: drop the last run's state.
async fn forget_previous_state(store: &Store) -> anyhow::Result<()> {
    if store.columns("engine_snapshot_state").await?.is_some() {
        execute(
            store,
            &format!("DELETE FROM engine_snapshot_state WHERE mapping LIKE '{MAPPING}:%'"),
        )
        .await?;
    }
    Ok(())
}

async fn execute(store: &Store, sql: &str) -> anyhow::Result<u64> {
    let done = match store {
        Store::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(pool)
            .await?
            .rows_affected(),
        Store::Postgres(pool) => sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(pool)
            .await?
            .rows_affected(),
    };
    Ok(done)
}

struct Child {
    elapsed: Duration,
    peak_kb: u64,
    /// `elapsed_ms` of the diff's log line.
    diff_ms: Option<u64>,
    diff_line: Option<String>,
}

impl Child {
    fn print(&self, what: &str, requests: u64) {
        println!(
            "{what}: run {:.1} s, diff {} ms, {requests} requests, peak RSS {:.1} MB (VmHWM)",
            self.elapsed.as_secs_f64(),
            self.diff_ms.map_or("?".into(), |ms| ms.to_string()),
            self.peak_kb as f64 / 1024.0,
        );
        if let Some(line) = &self.diff_line {
            println!("  {line}");
        }
    }
}

/// `engine run --connector hubspot` as a child, sampling its memory and
/// keeping the snapshot diff's log line.
async fn run_child(
    env: &BTreeMap<String, String>,
    config_dir: &std::path::Path,
    database: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Child> {
    let run = run_hubspot(
        &["--log-level", "warn,engine::snapshot=info"],
        env,
        config_dir,
        database,
        dir,
        "Compared the snapshot source",
    )
    .await?;
    if !run.status.success() {
        bail!("engine run exited {}:\n{}", run.status, run.tail.join("\n"));
    }
    let diff_ms = run.marked.as_deref().and_then(|line| {
        let rest = line.split("elapsed_ms=").nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    Ok(Child {
        elapsed: run.elapsed,
        peak_kb: run.peak_kb,
        diff_ms,
        diff_line: run.marked,
    })
}
