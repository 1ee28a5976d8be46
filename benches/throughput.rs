//! Throughput benchmark (issue #5): the shipped connectors and mappings, run
//! unchanged against the in-process sandbox with its limits on.
//!
//! ```sh
//! cargo bench --bench throughput -- all
//! cargo bench --bench throughput -- hubspot|hubspot-window|brevo|brevo-bulk|multi-process|overhead-sqlite|overhead-postgres|rss [--runs N] [--rows N]
//! ```
//!
//! Prints one line per run and a result table at the end; BENCHMARKS.md is
//! written by hand from that output. `RUST_LOG` sets the engine's log filter
//! (default `warn`, so a rate-limit pause shows).

mod support;

/// The same allocator as the `engine` binary (src/main.rs), so the in-process
/// scenarios measure what `engine run` does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::Utc;
use engine::clock::SystemClock;
use engine::demo::sandbox_env;
use engine::engine::{RunOptions, run_connector};
use engine::sandbox::{Sandbox, SandboxOptions};
use engine::store::{Backend, Queue, RowResult, RowUpdate, Store, TableSpec};
use support::child::{EngineRun, run_hubspot};
use support::db::Db;
use support::timeline::{Timeline, sustained_fraction, write_if_asked};
use support::{
    CpuTicks, completion, instances_config, load_average, max_in_flight, median,
    per_contact_brevo_config, plan_at, rate_limited, shipped_plan, total_requests,
    unlimited_config,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Hubspot,
    HubspotWindow,
    Brevo,
    BrevoBulk,
    MultiProcess,
    OverheadSqlite,
    OverheadPostgres,
    Rss,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::Hubspot,
        Scenario::HubspotWindow,
        Scenario::Brevo,
        Scenario::BrevoBulk,
        Scenario::MultiProcess,
        Scenario::OverheadSqlite,
        Scenario::OverheadPostgres,
        Scenario::Rss,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Hubspot => "hubspot",
            Scenario::HubspotWindow => "hubspot-window",
            Scenario::Brevo => "brevo",
            Scenario::BrevoBulk => "brevo-bulk",
            Scenario::MultiProcess => "multi-process",
            Scenario::OverheadSqlite => "overhead-sqlite",
            Scenario::OverheadPostgres => "overhead-postgres",
            Scenario::Rss => "rss",
        }
    }

    fn default_rows(self) -> u64 {
        match self {
            Scenario::Hubspot => 20_000,
            Scenario::HubspotWindow => 30_000,
            Scenario::Brevo => 2_000,
            Scenario::BrevoBulk => 20_000,
            Scenario::MultiProcess => 30_000,
            Scenario::OverheadSqlite | Scenario::OverheadPostgres => 100_000,
            Scenario::Rss => 1_000_000,
        }
    }

    fn default_runs(self) -> usize {
        match self {
            Scenario::Rss | Scenario::MultiProcess => 1,
            _ => 3,
        }
    }
}

struct Args {
    scenarios: Vec<Scenario>,
    runs: Option<usize>,
    rows: Option<u64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        scenarios: Vec::new(),
        runs: None,
        rows: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` appends `--bench` to every bench binary's arguments.
            "--bench" => {}
            "--runs" => args.runs = Some(it.next().context("--runs needs a number")?.parse()?),
            "--rows" => args.rows = Some(it.next().context("--rows needs a number")?.parse()?),
            "all" => args.scenarios.extend(Scenario::ALL),
            name => match Scenario::ALL.iter().find(|s| s.name() == name) {
                Some(s) => args.scenarios.push(*s),
                None => bail!(
                    "unknown argument {name:?}; expected all, {} [--runs N] [--rows N]",
                    Scenario::ALL.map(Scenario::name).join(", ")
                ),
            },
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios.extend(Scenario::ALL);
    }
    Ok(args)
}

/// What a figure must reach.
#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
    /// Every run at most this (used for 429 counts).
    EveryRunAtMost(f64),
    /// Reported beside the others, no target.
    Info,
}

/// One line of the result table.
struct Line {
    scenario: &'static str,
    figure: &'static str,
    values: Vec<f64>,
    decimals: usize,
    target: Target,
}

impl Line {
    fn verdict(&self) -> &'static str {
        let m = median(&self.values);
        let ok = match self.target {
            Target::AtLeast(t) => m >= t,
            Target::AtMost(t) => m <= t,
            Target::EveryRunAtMost(t) => self.values.iter().all(|v| *v <= t),
            Target::Info => return "",
        };
        if ok { "pass" } else { "SHORT" }
    }

    fn target_text(&self) -> String {
        let d = self.decimals;
        match self.target {
            Target::AtLeast(t) => format!(">= {t:.d$}"),
            Target::AtMost(t) => format!("<= {t:.d$}"),
            Target::EveryRunAtMost(t) => format!("{t:.d$} every run"),
            Target::Info => String::new(),
        }
    }
}

fn main() -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    engine::install_crypto_provider();
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    print_machine();
    let mut lines = Vec::new();
    for scenario in &args.scenarios {
        let runs = args.runs.unwrap_or(scenario.default_runs()).max(1);
        let rows = args.rows.unwrap_or(scenario.default_rows());
        println!("\n== {} ({rows} rows, {runs} run(s))", scenario.name());
        let result = runtime.block_on(async {
            match scenario {
                Scenario::Hubspot => limited(&HUBSPOT, rows, runs).await,
                Scenario::HubspotWindow => limited(&HUBSPOT_WINDOW, rows, runs).await,
                Scenario::Brevo => limited(&BREVO, rows, runs).await,
                Scenario::BrevoBulk => brevo_bulk(rows, runs).await,
                Scenario::MultiProcess => multi_process(rows, runs).await,
                Scenario::OverheadSqlite => overhead(Backend::Sqlite, rows, runs).await,
                Scenario::OverheadPostgres => overhead(Backend::Postgres, rows, runs).await,
                Scenario::Rss => rss(rows, runs).await,
            }
        });
        match result {
            Ok(mut found) => lines.append(&mut found),
            Err(err) => {
                eprintln!("error: scenario {} failed: {err:#}", scenario.name());
                return ExitCode::FAILURE;
            }
        }
    }
    print_table(&lines);
    ExitCode::SUCCESS
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!(
        "machine: {cores} cores, {cpu}, kernel {}, load {}, {}",
        kernel.trim(),
        load_average(),
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
}

fn print_table(lines: &[Line]) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| scenario | figure | median | runs | target | result |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---|---|");
    for line in lines {
        let d = line.decimals;
        let runs: Vec<String> = line.values.iter().map(|v| format!("{v:.d$}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.d$} | {} | {} | {} |",
            line.scenario,
            line.figure,
            median(&line.values),
            runs.join(", "),
            line.target_text(),
            line.verdict()
        );
    }
    print!("{out}");
}

// ---------------------------------------------------------------- rate-limited

/// A rate-limited scenario: the CRM's window and what one request carries.
struct Limited {
    name: &'static str,
    connector: &'static str,
    options: fn() -> SandboxOptions,
    /// Requests the CRM admits per `window` (rolling).
    window_requests: u64,
    window: Duration,
    /// Contacts per request (HubSpot batch upsert: 100; Brevo: 1).
    per_request: u64,
    latency: Duration,
    /// Run with [`per_contact_brevo_config`] instead of the shipped config.
    per_contact: bool,
    /// Where the queued rows live.
    backend: Backend,
    /// Which figure carries the target: the sustained rate (first window left
    /// out), or the whole run against the best possible time, burst included.
    headline: Headline,
}

/// The figure a rate-limited scenario is judged on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Headline {
    /// At least 0.95 of N per W, the first window left out.
    Sustained,
    /// At least 0.90 of the least possible time for the whole run.
    BurstIncluded,
}

const HUBSPOT: Limited = Limited {
    name: "hubspot",
    connector: "hubspot",
    options: || SandboxOptions {
        port: 0,
        latency_ms: 250,
        hubspot_per_10s: Some(100),
        ..SandboxOptions::default()
    },
    window_requests: 100,
    window: Duration::from_secs(10),
    per_request: 100,
    latency: Duration::from_millis(250),
    per_contact: false,
    backend: Backend::Sqlite,
    headline: Headline::Sustained,
};

/// Issue #15, item 1: the same CRM and config, from PostgreSQL, judged on the
/// whole run (the first window's burst included) against the least possible
/// time: 30,000 contacts = 300 requests = 100 at 0 s, 10 s and 20 s, + 250 ms.
const HUBSPOT_WINDOW: Limited = Limited {
    name: "hubspot-window",
    backend: Backend::Postgres,
    headline: Headline::BurstIncluded,
    ..HUBSPOT
};

const BREVO: Limited = Limited {
    name: "brevo",
    connector: "brevo",
    options: || SandboxOptions {
        port: 0,
        latency_ms: 250,
        brevo_per_s: Some(10),
        ..SandboxOptions::default()
    },
    window_requests: 10,
    window: Duration::from_secs(1),
    per_request: 1,
    latency: Duration::from_millis(250),
    per_contact: true,
    backend: Backend::Sqlite,
    headline: Headline::Sustained,
};

/// The ceiling arithmetic. With a rolling window of N requests per W, the
/// fastest any client can send R requests is: N at once, N more one W later,
/// and so on, the last group at (ceil(R/N) - 1) * W, answered one latency
/// later. `best` is that time; the run's fraction of the ceiling is `best /
/// elapsed`, over the whole run (so the free first window is not counted as
/// speed). The sustained rate leaves the first window out: requests N+1..R
/// arrived between the N-th and the R-th arrival, against N per W.
struct Ceiling {
    requests: u64,
    best: Duration,
}

impl Limited {
    fn ceiling(&self, rows: u64) -> Ceiling {
        let requests = rows.div_ceil(self.per_request);
        let groups = requests.div_ceil(self.window_requests);
        Ceiling {
            requests,
            best: self.window * (groups.saturating_sub(1) as u32) + self.latency,
        }
    }

    fn nominal_rate(&self) -> f64 {
        (self.window_requests * self.per_request) as f64 / self.window.as_secs_f64()
    }
}

struct LimitedRun {
    elapsed: Duration,
    contacts_per_s: f64,
    fraction: f64,
    sustained: Option<f64>,
    rejected: u64,
    requests: u64,
    peak_in_flight: u64,
}

async fn limited(s: &Limited, rows: u64, runs: usize) -> anyhow::Result<Vec<Line>> {
    let ceiling = s.ceiling(rows);
    println!(
        "ceiling: {} requests of {} at {} per {:?} rolling, {:?} latency: best possible {:.2} s for the whole run \
         ({:.0} contacts/s over the run; {:.0}/s sustained)",
        ceiling.requests,
        s.per_request,
        s.window_requests,
        s.window,
        s.latency,
        ceiling.best.as_secs_f64(),
        rows as f64 / ceiling.best.as_secs_f64(),
        s.nominal_rate()
    );
    let mut results = Vec::new();
    for run in 1..=runs {
        let r = limited_run(s, rows, &ceiling)
            .await
            .with_context(|| format!("{} run {run}", s.name))?;
        println!(
            "run {run}: {:.2} s, {:.0} contacts/s, {:.3} of the run's ceiling, sustained {}, {} requests, {} answered 429, \
             peak {} in flight, load {}",
            r.elapsed.as_secs_f64(),
            r.contacts_per_s,
            r.fraction,
            r.sustained.map_or("-".into(), |v| format!("{v:.3}")),
            r.requests,
            r.rejected,
            r.peak_in_flight,
            load_average()
        );
        results.push(r);
    }
    let values = |f: fn(&LimitedRun) -> f64| results.iter().map(f).collect::<Vec<_>>();
    // The issue's figure is contacts/s as a fraction of the documented
    // ceiling (N per W). Over a run that fraction includes the free first
    // window (a rolling window admits N at once), so the target is read on
    // the sustained rate, the first window left out; the whole-run fraction
    // of the best any client could do (burst included) is the stricter
    // reading, shown beside it.
    let mut lines = vec![
        Line {
            scenario: s.name,
            figure: "fraction of the run's best possible time (burst included)",
            values: values(|r| r.fraction),
            decimals: 3,
            target: Target::Info,
        },
        Line {
            scenario: s.name,
            figure: "contacts/s over the run",
            values: values(|r| r.contacts_per_s),
            decimals: 0,
            target: Target::Info,
        },
        Line {
            scenario: s.name,
            figure: "sandbox 429 answers",
            values: values(|r| r.rejected as f64),
            decimals: 0,
            target: Target::EveryRunAtMost(0.0),
        },
    ];
    let sustained = results.iter().all(|r| r.sustained.is_some()).then(|| Line {
        scenario: s.name,
        figure: "sustained fraction of the ceiling (first window left out)",
        values: values(|r| r.sustained.unwrap_or(0.0)),
        decimals: 3,
        target: Target::Info,
    });
    match (s.headline, sustained) {
        (Headline::Sustained, Some(mut sustained)) => {
            sustained.target = Target::AtLeast(0.95);
            lines.insert(0, sustained);
        }
        // Too few requests for a second window: the whole run is all there is.
        (Headline::Sustained, None) => lines[0].target = Target::AtLeast(0.95),
        // The headline first, the sustained figure beside it.
        (Headline::BurstIncluded, sustained) => {
            lines[0].target = Target::AtLeast(0.90);
            if let Some(sustained) = sustained {
                lines.insert(1, sustained);
            }
        }
    }
    Ok(lines)
}

async fn limited_run(s: &Limited, rows: u64, ceiling: &Ceiling) -> anyhow::Result<LimitedRun> {
    let sandbox = Arc::new(Sandbox::start((s.options)()).await?);
    let env = sandbox_env(&sandbox.base_url());
    let config = s.per_contact.then(per_contact_brevo_config).transpose()?;
    let plan = match &config {
        Some(dir) => plan_at(dir.path(), &env)?,
        None => shipped_plan(&env)?,
    };
    let spec = spec_of(&plan, s.connector)?;
    let db = Db::fresh(s.backend, &plan).await?;
    db.fill(rows).await?;
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let timeline = Timeline::start(sandbox.clone(), start);
    let options = RunOptions {
        progress_every: None,
        ..RunOptions::default()
    };
    let summary = run_connector(
        plan.clone(),
        s.connector,
        db.store.clone(),
        &env,
        Arc::new(SystemClock),
        options,
        shutdown,
    )
    .await?;
    let elapsed = start.elapsed();
    let points = timeline.finish();
    let points = points.lock().unwrap().clone();
    let stats = sandbox.stats();
    let (complete, total) = completion(&db.store, &spec).await?;
    ensure!(
        complete == total && total as u64 == rows,
        "only {complete} of {total} rows are Complete (summary: {summary:?}); sandbox stats {stats}"
    );
    db.store.close().await;
    write_if_asked(&points, "")?;
    let sustained = sustained_fraction(&points, s.window_requests, ceiling.requests, s.window);
    Ok(LimitedRun {
        elapsed,
        contacts_per_s: rows as f64 / elapsed.as_secs_f64(),
        fraction: ceiling.best.as_secs_f64() / elapsed.as_secs_f64(),
        sustained,
        rejected: rate_limited(&stats),
        requests: total_requests(&stats),
        peak_in_flight: max_in_flight(&stats),
    })
}

// ---------------------------------------------------------------- brevo bulk

/// Rows of the bulk scenario given an invalid email, which Brevo's import
/// skips without a word: they must end `Error` with their own message.
const BROKEN_EMAILS: u64 = 20;

/// Brevo's import (`[bulk]` in the shipped connector) against the sandbox at
/// Brevo's general-tier limits: 10 requests/s on `/v3/contacts*`, 100 per
/// hour on `/v3/processes`, 250 ms latency, the sandbox's import delay (1 s
/// plus 0.1 ms per contact: an assumption, Brevo publishes none). The list
/// comes from `BREVO_LIST_IDS`.
async fn brevo_bulk(rows: u64, runs: usize) -> anyhow::Result<Vec<Line>> {
    println!(
        "brevo-bulk: {rows} new contacts ({BROKEN_EMAILS} with an invalid email), shipped config, \
         sandbox 10 req/s contacts, 100 req/h processes, 250 ms latency; per-contact ceiling 10 contacts/s"
    );
    let (mut rates, mut rejected) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let sandbox = Sandbox::start(SandboxOptions {
            port: 0,
            latency_ms: 250,
            brevo_per_s: Some(10),
            brevo_other_per_hour: Some(100),
            ..SandboxOptions::default()
        })
        .await?;
        let mut env = sandbox_env(&sandbox.base_url());
        env.insert("BREVO_LIST_IDS".into(), "[2]".into());
        let plan = shipped_plan(&env)?;
        let spec = spec_of(&plan, "brevo")?;
        let db = Db::fresh(Backend::Sqlite, &plan).await?;
        db.fill(rows).await?;
        let Store::Sqlite(pool) = &db.store else {
            bail!("the bulk scenario runs on SQLite");
        };
        // Every 1000th row, from the 500th: spread over the jobs.
        sqlx::query(
            "UPDATE contacts SET email = replace(email, '@', '@@') \
             WHERE rowid IN (SELECT rowid FROM contacts ORDER BY rowid LIMIT $1 OFFSET 0) \
             AND (rowid % 1000) = 500",
        )
        .bind(i64::try_from(rows)?)
        .execute(pool)
        .await?;
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let start = Instant::now();
        run_connector(
            plan.clone(),
            "brevo",
            db.store.clone(),
            &env,
            Arc::new(SystemClock),
            RunOptions {
                progress_every: None,
                ..RunOptions::default()
            },
            shutdown,
        )
        .await?;
        let elapsed = start.elapsed();
        let stats = sandbox.stats();
        let verdict = bulk_verdict(pool, &spec, rows).await?;
        let rate = rows as f64 / elapsed.as_secs_f64();
        println!(
            "run {run}: {:.2} s, {rate:.0} contacts/s, {} Complete with an id, {} Error with their own message, \
             requests {}, 429s {}, load {}",
            elapsed.as_secs_f64(),
            verdict.0,
            verdict.1,
            stats["requests"],
            rate_limited(&stats),
            load_average()
        );
        rates.push(rate);
        rejected.push(rate_limited(&stats) as f64);
        db.store.close().await;
    }
    Ok(vec![
        Line {
            scenario: "brevo-bulk",
            figure: "contacts/s end to end",
            values: rates,
            decimals: 0,
            target: Target::AtLeast(500.0),
        },
        Line {
            scenario: "brevo-bulk",
            figure: "sandbox 429 answers",
            values: rejected,
            decimals: 0,
            target: Target::EveryRunAtMost(0.0),
        },
    ])
}

/// Checks that every row is `Complete` with its contact id or `Error` with
/// the message Brevo gives its own request; `(complete, errors)`.
async fn bulk_verdict(
    pool: &sqlx::SqlitePool,
    spec: &TableSpec,
    rows: u64,
) -> anyhow::Result<(i64, i64)> {
    let complete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM contacts WHERE brevo_processing_status = 'Complete' \
         AND coalesce(brevo_contact_id, '') <> ''",
    )
    .fetch_one(pool)
    .await?;
    let errors: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM contacts WHERE brevo_processing_status = 'Error' \
         AND email LIKE '%@@%' AND brevo_processing_error LIKE '%Invalid email address%'",
    )
    .fetch_one(pool)
    .await?;
    ensure!(
        (complete + errors) as u64 == rows,
        "{complete} Complete with an id and {errors} Error with their own message, of {rows} rows ({})",
        spec.table
    );
    Ok((complete, errors))
}

fn spec_of(plan: &engine::plan::Plan, connector: &str) -> anyhow::Result<TableSpec> {
    let mappings = plan.mappings_of(connector);
    ensure!(
        mappings.len() == 1,
        "expected one shipped mapping for {connector}, found {}",
        mappings.len()
    );
    Ok(mappings[0].table.clone())
}

// ---------------------------------------------------------------- overhead

/// The sandbox with no latency and no limits: what the engine itself costs
/// (with [`unlimited_config`], so the engine's own limiter does not pace it either).
fn open_sandbox() -> SandboxOptions {
    SandboxOptions {
        port: 0,
        ..SandboxOptions::default()
    }
}

async fn overhead(backend: Backend, rows: u64, runs: usize) -> anyhow::Result<Vec<Line>> {
    let name = match backend {
        Backend::Sqlite => "overhead-sqlite",
        Backend::Postgres => "overhead-postgres",
    };
    let target = match backend {
        Backend::Sqlite => 20_000.0,
        Backend::Postgres => 10_000.0,
    };
    let (mut engine_rates, mut db_rates) = (Vec::new(), Vec::new());
    let (mut cpu_per_contact, mut steals) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let sandbox = Sandbox::start(open_sandbox()).await?;
        let env = sandbox_env(&sandbox.base_url());
        let config = unlimited_config()?;
        let plan = plan_at(config.path(), &env)?;
        let spec = spec_of(&plan, "hubspot")?;
        let mapping = plan.mappings_of("hubspot")[0].clone();
        // The engine's default workers; BENCH_DB_WORKERS overrides it for the
        // claim/record loop alone (a diagnostic: how the database scales).
        let workers = std::env::var("BENCH_DB_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RunOptions::default().workers);

        // The database work alone: the same claims and records, no HTTP.
        let db = Db::fresh(backend, &plan).await?;
        db.fill(rows).await?;
        let queue = db
            .store
            .open_queue(&spec, &plan.row_columns(&mapping))
            .await?
            .context("the bench table exists")?;
        let db_elapsed = claim_record_loop(
            &queue,
            mapping.schedule.batch_size as usize,
            mapping.schedule.lease.as_secs(),
            workers,
        )
        .await?;
        let (complete, _) = completion(&db.store, &spec).await?;
        ensure!(
            complete as u64 == rows,
            "the claim/record loop completed {complete} of {rows}"
        );
        db.store.close().await;
        drop(db);

        // The engine, end to end.
        let db = Db::fresh(backend, &plan).await?;
        db.fill(rows).await?;
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let cpu_before = CpuTicks::now();
        let start = Instant::now();
        // BENCH_ENGINE_WORKERS overrides the engine's claim loops (`engine run
        // --workers`), a diagnostic like BENCH_DB_WORKERS; unset, the default runs.
        let engine_workers = std::env::var("BENCH_ENGINE_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RunOptions::default().workers);
        let options = RunOptions {
            progress_every: None,
            workers: engine_workers,
            ..RunOptions::default()
        };
        run_connector(
            plan.clone(),
            "hubspot",
            db.store.clone(),
            &env,
            Arc::new(SystemClock),
            options,
            shutdown,
        )
        .await?;
        let elapsed = start.elapsed();
        let cpu = cpu_before.zip(CpuTicks::now()).map(|(a, b)| a.since(b));
        let (complete, _) = completion(&db.store, &spec).await?;
        ensure!(
            complete as u64 == rows,
            "the engine completed {complete} of {rows}"
        );
        let stats = sandbox.stats();
        db.store.close().await;

        let engine_rate = rows as f64 / elapsed.as_secs_f64();
        let db_rate = rows as f64 / db_elapsed.as_secs_f64();
        // CPU of the whole machine (engine, sandbox, PostgreSQL) per contact:
        // unlike contacts/s, it does not move with what other guests of the
        // host take from this VM (steal).
        let cpu_text = cpu.map_or_else(
            || "cpu not readable".to_string(),
            |c| {
                format!(
                    "cpu {:.2} s on all cores = {:.1} µs/contact, idle {:.0} %, steal {:.0} %",
                    c.busy_secs,
                    c.busy_secs * 1e6 / rows as f64,
                    c.idle * 100.0,
                    c.steal * 100.0
                )
            },
        );
        println!(
            "run {run}: engine {:.2} s = {engine_rate:.0} contacts/s ({} requests), {cpu_text}; claim+record alone {:.2} s = {db_rate:.0} rows/s; load {}",
            elapsed.as_secs_f64(),
            total_requests(&stats),
            db_elapsed.as_secs_f64(),
            load_average()
        );
        engine_rates.push(engine_rate);
        db_rates.push(db_rate);
        if let Some(c) = cpu {
            cpu_per_contact.push(c.busy_secs * 1e6 / rows as f64);
            steals.push(c.steal * 100.0);
        }
    }
    Ok(vec![
        Line {
            scenario: name,
            figure: "contacts/s end to end",
            values: engine_rates,
            decimals: 0,
            target: Target::AtLeast(target),
        },
        Line {
            scenario: name,
            figure: "rows/s, claim + record alone",
            values: db_rates,
            decimals: 0,
            target: Target::Info,
        },
        Line {
            scenario: name,
            figure: "CPU µs per contact end to end, whole machine",
            values: cpu_per_contact,
            decimals: 1,
            target: Target::Info,
        },
        Line {
            scenario: name,
            figure: "% of CPU time stolen by the host end to end",
            values: steals,
            decimals: 0,
            target: Target::Info,
        },
    ])
}

/// `workers` loops of claim(batch) → record(every row Complete), as the engine's
/// workers do (the same queue, the same columns), until nothing is claimable.
/// Returns the wall time.
async fn claim_record_loop(
    queue: &Queue,
    batch: usize,
    lease_secs: u64,
    workers: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let loops = (0..workers).map(|_| {
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut crm_id = 1_000_000u64;
            loop {
                let now = Utc::now();
                let lease = now + chrono::Duration::seconds(lease_secs as i64);
                let rows = queue.claim(batch, now, lease).await?;
                if rows.is_empty() {
                    return anyhow::Ok(());
                }
                let results: Vec<RowResult> = rows
                    .iter()
                    .map(|row| {
                        crm_id += 1;
                        let crm_id = Some(crm_id.to_string());
                        RowResult::of(
                            row,
                            RowUpdate::Complete {
                                crm_id,
                                fingerprint: None,
                            },
                        )
                    })
                    .collect();
                queue.record(&results).await?;
            }
        })
    });
    for handle in futures::future::join_all(loops).await {
        handle??;
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------- multi-process

/// 2 and 4 `engine run --connector hubspot` processes (the release binary)
/// on one PostgreSQL queue, against one sandbox served here that counts
/// HubSpot's rolling 100 requests per 10 s across all of them (250 ms
/// latency). The processes share one rate budget in PostgreSQL; alone, each
/// would pace to the whole limit and together they would be answered 429.
async fn multi_process(rows: u64, runs: usize) -> anyhow::Result<Vec<Line>> {
    let s = &HUBSPOT;
    let ceiling = s.ceiling(rows);
    println!(
        "ceiling: {} requests of {} at {} per {:?} rolling across all processes, {:?} latency: best possible {:.2} s",
        ceiling.requests,
        s.per_request,
        s.window_requests,
        s.window,
        s.latency,
        ceiling.best.as_secs_f64()
    );
    let mut lines = Vec::new();
    for (processes, scenario) in [(2, "multi-process x2"), (4, "multi-process x4")] {
        let mut results = Vec::new();
        for run in 1..=runs {
            let r = multi_process_run(processes, rows, &ceiling)
                .await
                .with_context(|| format!("{scenario} run {run}"))?;
            println!(
                "{scenario} run {run}: {:.2} s, {:.0} contacts/s, {:.3} of the run's ceiling, sustained {}, {} requests, \
                 {} answered 429, {} records for {rows} rows, peak {} in flight, load {}",
                r.elapsed.as_secs_f64(),
                r.contacts_per_s,
                r.fraction,
                r.sustained.map_or("-".into(), |v| format!("{v:.3}")),
                r.requests,
                r.rejected,
                r.records,
                r.peak_in_flight,
                load_average()
            );
            results.push(r);
        }
        let values = |f: fn(&MultiRun) -> f64| results.iter().map(f).collect::<Vec<_>>();
        lines.extend([
            Line {
                scenario,
                figure: "sustained fraction of the limit, all processes (first window left out)",
                values: values(|r| r.sustained.unwrap_or(0.0)),
                decimals: 3,
                target: Target::AtLeast(0.90),
            },
            Line {
                scenario,
                figure: "fraction of the run's best possible time (burst included)",
                values: values(|r| r.fraction),
                decimals: 3,
                target: Target::Info,
            },
            Line {
                scenario,
                figure: "sandbox 429 answers",
                values: values(|r| r.rejected as f64),
                decimals: 0,
                target: Target::EveryRunAtMost(0.0),
            },
            Line {
                scenario,
                figure: "sandbox records minus rows (a row sent twice shows here)",
                values: results
                    .iter()
                    .map(|r| r.records as f64 - rows as f64)
                    .collect(),
                decimals: 0,
                target: Target::EveryRunAtMost(0.0),
            },
        ]);
    }
    Ok(lines)
}

struct MultiRun {
    elapsed: Duration,
    contacts_per_s: f64,
    fraction: f64,
    sustained: Option<f64>,
    rejected: u64,
    requests: u64,
    records: u64,
    peak_in_flight: u64,
}

async fn multi_process_run(
    processes: u32,
    rows: u64,
    ceiling: &Ceiling,
) -> anyhow::Result<MultiRun> {
    let s = &HUBSPOT;
    let sandbox = Arc::new(Sandbox::start((s.options)()).await?);
    let env = sandbox_env(&sandbox.base_url());
    let config = instances_config(processes)?;
    let plan = plan_at(config.path(), &env)?;
    let spec = spec_of(&plan, "hubspot")?;
    let db = Db::fresh(Backend::Postgres, &plan).await?;
    db.fill(rows).await?;
    let start = Instant::now();
    let timeline = Timeline::start(sandbox.clone(), start);
    let bin = env!("CARGO_BIN_EXE_engine");
    let mut children = Vec::new();
    for _ in 0..processes {
        let child = tokio::process::Command::new(bin)
            .args(["run", "--connector", "hubspot", "--config-dir"])
            .arg(config.path())
            .args(["--database", &db.url])
            .env_remove("DATABASE_URL")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(&env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        children.push(child);
    }
    for child in children {
        let output = child.wait_with_output().await?;
        ensure!(
            output.status.success(),
            "an engine process exited {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let elapsed = start.elapsed();
    let points = timeline.finish();
    let points = points.lock().unwrap().clone();
    let stats = sandbox.stats();
    let (complete, total) = completion(&db.store, &spec).await?;
    db.store.close().await;
    ensure!(
        complete == total && total as u64 == rows,
        "only {complete} of {total} rows are Complete; sandbox stats {stats}"
    );
    write_if_asked(&points, &format!(".x{processes}"))?;
    let sustained = sustained_fraction(&points, s.window_requests, ceiling.requests, s.window);
    Ok(MultiRun {
        elapsed,
        contacts_per_s: rows as f64 / elapsed.as_secs_f64(),
        fraction: ceiling.best.as_secs_f64() / elapsed.as_secs_f64(),
        sustained,
        rejected: rate_limited(&stats),
        requests: total_requests(&stats),
        records: sandbox.hubspot_contacts().len() as u64,
        peak_in_flight: max_in_flight(&stats),
    })
}

// ---------------------------------------------------------------- rss

/// Fills a SQLite file with `rows` queued rows, then runs `engine run
/// --connector hubspot` (the release binary, shipped config with HubSpot's
/// 10-second window lifted, see [`unlimited_config`]) as a child against
/// a sandbox served here, and reads the child's peak RSS (`VmHWM`).
async fn rss(rows: u64, runs: usize) -> anyhow::Result<Vec<Line>> {
    let (mut peaks, mut rates) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let sandbox = Sandbox::start(open_sandbox()).await?;
        let env = sandbox_env(&sandbox.base_url());
        let config = unlimited_config()?;
        let plan = plan_at(config.path(), &env)?;
        let spec = spec_of(&plan, "hubspot")?;
        let db = Db::fresh(Backend::Sqlite, &plan).await?;
        let fill = db.fill(rows).await?;
        db.store.close().await;
        println!(
            "run {run}: inserted {rows} rows in {:.1} s",
            fill.as_secs_f64()
        );
        let dir = db.dir().context("a SQLite db has a dir")?.to_path_buf();
        let child = run_engine_child(&env, config.path(), &db.url, &dir).await?;
        let store = Store::connect(&db.url).await?;
        let (complete, total) = completion(&store, &spec).await?;
        store.close().await;
        let rate = rows as f64 / child.elapsed.as_secs_f64();
        println!(
            "run {run}: engine run exited {:?} after {:.1} s ({rate:.0} contacts/s), {complete}/{total} Complete, \
             peak RSS {:.1} MB (VmHWM), last RSS {:.1} MB, {} log lines",
            child.status,
            child.elapsed.as_secs_f64(),
            child.peak_kb as f64 / 1024.0,
            child.last_kb as f64 / 1024.0,
            child.log_lines
        );
        if complete != total {
            println!("last log lines:\n{}", child.tail.join("\n"));
            bail!("the child left {} rows not Complete", total - complete);
        }
        peaks.push(child.peak_kb as f64 / 1024.0);
        rates.push(rate);
        drop(sandbox);
    }
    Ok(vec![
        Line {
            scenario: "rss",
            figure: "peak RSS of `engine run`, MB",
            values: peaks,
            decimals: 1,
            target: Target::AtMost(64.0),
        },
        Line {
            scenario: "rss",
            figure: "contacts/s (no latency, no limits)",
            values: rates,
            decimals: 0,
            target: Target::Info,
        },
    ])
}

/// `engine run --connector hubspot` at its default log level (every row at
/// info: the log lines are counted).
async fn run_engine_child(
    env: &BTreeMap<String, String>,
    config_dir: &std::path::Path,
    database: &str,
    dir: &std::path::Path,
) -> anyhow::Result<EngineRun> {
    run_hubspot(&[], env, config_dir, database, dir, "").await
}
