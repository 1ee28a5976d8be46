//! Command-line interface: flags, and one function per subcommand. Each returns
//! the process exit code: 0 ok (for `run`: every claimed row ended `Complete`),
//! 1 a run finished but some rows did not (`Error`, or handed back to `Queued`
//! for later: a retry, a rate limit, a shutdown), 2 a config, usage or
//! environment error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::check::{check_database, check_dir};
use crate::clock::SystemClock;
use crate::diagnostic::summary;
use crate::engine::{RunOptions, require_table, run_connector};
use crate::plan::{Plan, ProcessEnv};
use crate::service::{ConnectorRun, run_all};
use crate::store::Store;

const ABOUT: &str = "Sync contact rows from a SQL table into CRMs described by TOML files.";
const LONG_ABOUT: &str = "\
Sync contact rows from a SQL table into CRMs described by TOML files.

A config dir holds connectors/<crm>.toml (one CRM's API) and mappings/<name>.toml
(one sync: table, key, state columns, schedule, fields). Rows whose processing
status is `Queued` are claimed, rendered, upserted, and marked `Complete` with the
CRM's id or `Error` with its message.

Start with `engine demo` (SQLite and a built-in CRM sandbox, no account needed),
then `engine check` and `engine run --connector hubspot`.

Secrets come only from environment variables (or a .env file) named in the
connector files, e.g. HUBSPOT_ACCESS_TOKEN, BREVO_API_KEY.";

const EXAMPLES: &str = "\
Examples:
  engine demo                                  try it: SQLite + the sandbox, no account
  engine check --database sqlite://engine.db   validate config, tables and columns
  engine migrate --mapping hubspot --print     SQL for the state columns (and triggers) a mapping needs
  engine run --connector hubspot               sync until nothing is claimable
  engine run --connector brevo --watch         every interval_secs, until SIGINT/SIGTERM
  engine status --connector hubspot            counts per status, latest errors
  engine init my-sync                          start anywhere: the shipped files and .env.example
  engine plan --connector hubspot --limit 5    the next requests, secrets redacted; sends nothing
  engine run --all --watch --listen 127.0.0.1:9464   every sync in one process, with /metrics
  engine history --mapping hubspot             the latest sync cycles

Exit codes: 0 ok (run: every claimed row ended Complete); 1 some claimed rows ended
in Error or were handed back to Queued for later (a retry, a rate limit, a
shutdown); 2 config, usage or environment error (a connector whose base URL,
credentials or host the CRM side rejects included: its claimed rows go back).";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "engine", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (overrides RUST_LOG): a level such as `debug` applies to the engine's
    /// lines (dependencies stay at `warn`); `engine=debug,sqlx=debug` names targets.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A config file kind.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaKind {
    /// `connectors/*.toml`
    Connector,
    /// `mappings/*.toml`
    Mapping,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the config files and the database are.
#[derive(Debug, Clone, clap::Args)]
pub struct Location {
    /// Directory holding connectors/ and mappings/.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub config_dir: PathBuf,
    /// Database URL: sqlite://engine.db (the default) or postgres://user@host/db.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://engine.db",
        value_name = "URL"
    )]
    pub database: String,
    /// Where snapshot-mode mappings keep their state (default: the --database),
    /// e.g. when the source is a read-only replica.
    #[arg(long, env = "STATE_DATABASE_URL", value_name = "URL")]
    pub state_database: Option<String>,
}

impl Location {
    /// The state database of snapshot mappings: `--state-database`, else `source`.
    async fn state_store(&self, source: &Store) -> anyhow::Result<Store> {
        match &self.state_database {
            Some(url) => Store::connect(url)
                .await
                .context("opening --state-database"),
            None => Ok(source.clone()),
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate every connector and mapping; with --database also the tables and columns.
    Check {
        /// Directory holding connectors/ and mappings/.
        #[arg(long, default_value = ".", value_name = "DIR")]
        config_dir: PathBuf,
        /// Also check tables and columns in this database (as `run` does, DATABASE_URL when not given).
        #[arg(long, env = "DATABASE_URL", value_name = "URL")]
        database: Option<String>,
        /// Also send each used connector's `live_check` (one harmless read) to verify its base URL and credentials.
        #[arg(long)]
        live: bool,
        /// With --database: check only this mapping's table (repeatable).
        #[arg(long, value_name = "NAME", requires = "database")]
        mapping: Vec<String>,
    },
    /// Sync every mapping of a connector (or, with --all, of every connector) until no row is claimable, then exit.
    Run {
        /// Connector name (connectors/<NAME>.toml).
        #[arg(
            long,
            value_name = "NAME",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        connector: Option<String>,
        /// Every mapping in the config dir, in one process: one rate limiter
        /// and in-flight cap per connector, shared by its mappings.
        #[arg(long)]
        all: bool,
        /// Keep running: a cycle every interval_secs until SIGINT/SIGTERM.
        #[arg(long)]
        watch: bool,
        /// Claim-and-send loops per mapping (more when the connector's
        /// rate-limit window sends a larger burst at once; see the README).
        #[arg(long, default_value_t = 4, value_name = "N")]
        workers: usize,
        /// Let a snapshot whose source returned no rows delete the records
        /// it synced (refused otherwise: a broken view must not wipe the CRM).
        #[arg(long)]
        allow_empty_source: bool,
        /// Cycles of run history kept per mapping (0: record none).
        #[arg(long, default_value_t = crate::history::DEFAULT_KEEP, value_name = "N")]
        keep_history: u32,
        /// No progress bar on a terminal: progress log lines, as when output is redirected.
        #[arg(long)]
        quiet: bool,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        location: Location,
    },
    /// Print the requests the next run would send for the next due rows, secrets redacted; sends and writes nothing.
    Plan {
        /// Connector name.
        #[arg(long, value_name = "NAME")]
        connector: String,
        /// Only this mapping of the connector.
        #[arg(long, value_name = "NAME")]
        mapping: Option<String>,
        /// Rows per mapping.
        #[arg(long, default_value_t = 10, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        location: Location,
    },
    /// Show the latest sync cycles: when, how long, rows by outcome, first error.
    History {
        /// Only this mapping's cycles.
        #[arg(long, value_name = "NAME")]
        mapping: Option<String>,
        /// How many cycles, newest first.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: u32,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: Location,
    },
    /// Count rows per status and show the latest errors.
    Status {
        /// Only this connector's mappings.
        #[arg(long, value_name = "NAME")]
        connector: Option<String>,
        /// One JSON object per mapping, in an array.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: Location,
    },
    /// Queue the rows in `Error` again.
    Retry {
        /// Connector name.
        #[arg(long, value_name = "NAME")]
        connector: String,
        #[command(flatten)]
        location: Location,
    },
    /// Create the source table, or add the state columns a mapping needs.
    Migrate {
        /// Mapping name (mappings/<NAME>.toml).
        #[arg(long, value_name = "NAME")]
        mapping: String,
        /// Print the SQL instead of running it.
        #[arg(long)]
        print: bool,
        /// With --print: show the change-trigger SQL (`queue_on_change`) for
        /// this database kind, without connecting to one.
        #[arg(long, value_enum, requires = "print", value_name = "KIND")]
        dialect: Option<Dialect>,
        #[command(flatten)]
        location: Location,
    },
    /// Write the shipped connectors, mappings, schemas and a .env.example into DIR.
    Init {
        /// Where to write (created if missing).
        #[arg(default_value = ".", value_name = "DIR")]
        dir: PathBuf,
        /// Overwrite files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Print the JSON Schema of a connector or a mapping file (for an editor).
    Schema {
        /// Which file kind.
        #[arg(value_enum)]
        kind: SchemaKind,
    },
    /// Print a shell completion script, e.g. `engine completions bash > /etc/bash_completion.d/engine`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Serve a local imitation of the HubSpot and Brevo contact APIs.
    Sandbox(crate::sandbox::SandboxOptions),
    /// Run both shipped syncs on SQLite against the built-in sandbox, and show the result.
    Demo,
}

/// Parses arguments, runs the command, and maps errors to exit code 2.
pub async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    init_tracing(&cli);
    crate::install_crypto_provider();
    match dispatch(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(cli: &Cli) {
    let asked = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(&asked))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(asked));
    // Colours only on a terminal: logs redirected to a file or a journal stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Bars only for `run`, on a terminal, unless asked for plain or JSON
    // lines; log lines then pause the bars while they are written.
    if let Command::Run { quiet, .. } = &cli.command
        && crate::progress::wanted(ansi, *quiet, matches!(cli.log_format, LogFormat::Json))
    {
        crate::progress::enable();
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::progress::LogWriter)
        .with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A bare level (`debug`) applies to the engine's own lines; dependencies
/// (TLS, SQL, HTTP) stay at `warn` unless the filter names them
/// (`engine=debug,sqlx=debug`).
fn log_filter(asked: &str) -> String {
    let level = asked.trim().to_ascii_lowercase();
    if ["trace", "debug", "info"].contains(&level.as_str()) {
        format!("warn,engine={level}")
    } else {
        asked.to_string()
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check {
            config_dir,
            database,
            live,
            mapping,
        } => check(config_dir, database, live, &mapping).await,
        Command::Run {
            connector,
            all: _,
            watch,
            workers,
            allow_empty_source,
            keep_history,
            quiet: _,
            listen,
            location,
        } => {
            let options = RunOptions {
                watch,
                workers,
                history_keep: keep_history,
                progress_bar: crate::progress::enabled(),
                allow_empty_source,
                ..RunOptions::default()
            };
            run(connector.as_deref(), options, listen, &location).await
        }
        Command::Plan {
            connector,
            mapping,
            limit,
            location,
        } => plan(&connector, mapping.as_deref(), limit, &location).await,
        Command::History {
            mapping,
            limit,
            json,
            location,
        } => history(mapping.as_deref(), limit, json, &location).await,
        Command::Status {
            connector,
            json,
            location,
        } => status(connector.as_deref(), json, &location).await,
        Command::Retry {
            connector,
            location,
        } => retry(&connector, &location).await,
        Command::Migrate {
            mapping,
            print,
            dialect,
            location,
        } => match dialect {
            Some(dialect) => print_change_triggers(&mapping, dialect, &location),
            None => migrate(&mapping, print, &location).await,
        },
        Command::Init { dir, force } => init(&dir, force),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "engine", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { kind } => {
            let kind = match kind {
                SchemaKind::Connector => crate::config::schema::Kind::Connector,
                SchemaKind::Mapping => crate::config::schema::Kind::Mapping,
            };
            print!("{}", crate::config::schema::schema_text(kind));
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox(options) => crate::sandbox::serve_forever(options)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Demo => crate::demo::run().await,
    }
}

async fn check(
    config_dir: PathBuf,
    database: Option<String>,
    live: bool,
    only: &[String],
) -> anyhow::Result<ExitCode> {
    let mut checked = check_dir(&config_dir, &ProcessEnv);
    if let (Some(url), false) = (database, checked.has_errors()) {
        let mappings = crate::check::selected_mappings(&checked.plan, only)?;
        let store = connect_existing(&url).await?;
        let mut found = check_database(mappings.iter().copied(), &store).await?;
        if !found.iter().any(crate::diagnostic::Diagnostic::is_error) {
            found.extend(
                crate::change::check_change_triggers(
                    &store,
                    &checked.plan,
                    mappings.iter().copied(),
                )
                .await?,
            );
        }
        checked.diagnostics.extend(found);
    }
    for diagnostic in &checked.diagnostics {
        eprint!("{diagnostic}");
    }
    let files =
        checked.set.connectors.len() + checked.set.mappings.len() + checked.set.broken.len();
    if checked.has_errors() {
        eprintln!(
            "check failed: {} in {files} files",
            summary(&checked.diagnostics)
        );
        return Ok(ExitCode::from(2));
    }
    println!(
        "ok: {} connectors, {} mappings checked ({})",
        checked.set.connectors.len(),
        checked.set.mappings.len(),
        summary(&checked.diagnostics)
    );
    for connector in checked.plan.connectors.values() {
        println!("limits {}: {}", connector.name, connector.pacing.limits);
    }
    if live {
        let checks =
            crate::live::check_all(&checked.plan, &ProcessEnv, Arc::new(SystemClock)).await;
        let failed = checks.iter().filter(|c| c.ok == Some(false)).count();
        for check in &checks {
            if check.ok == Some(false) {
                eprintln!("{}", check.line);
            } else {
                println!("{}", check.line);
            }
        }
        if failed > 0 {
            eprintln!("live check failed for {failed} connector(s)");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads and plans the config, printing problems; `None` when it has errors.
fn load_plan(config_dir: &std::path::Path) -> Option<Plan> {
    let checked = check_dir(config_dir, &ProcessEnv);
    for diagnostic in checked.diagnostics.iter().filter(|d| d.is_error()) {
        eprint!("{diagnostic}");
    }
    if checked.has_errors() {
        eprintln!(
            "the config has errors ({}); see `engine check`",
            summary(&checked.diagnostics)
        );
        return None;
    }
    Some(checked.plan)
}

/// `connector`: one connector's mappings; `None`: every mapping (`--all`).
async fn run(
    connector: Option<&str>,
    mut options: RunOptions,
    listen: Option<std::net::SocketAddr>,
    location: &Location,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = load_plan(&location.config_dir) else {
        return Ok(ExitCode::from(2));
    };
    let store = Store::connect(&location.database).await?;
    options.state_store = Some(location.state_store(&store).await?);
    // The database half of `check`: a missing table or state column is a clear
    // error here, not an SQL error in the middle of a run.
    let mappings = match connector {
        Some(connector) => plan.mappings_of(connector),
        None => plan.mappings.values().cloned().collect(),
    };
    anyhow::ensure!(
        connector.is_some() || !mappings.is_empty(),
        "no mapping in {}: add mappings/<name>.toml (`engine init` writes the shipped ones)",
        location.config_dir.join("mappings").display()
    );
    let problems = check_database(mappings.iter().map(|m| m.as_ref()), &store).await?;
    if problems.iter().any(|d| d.is_error()) {
        for problem in &problems {
            eprint!("{problem}");
        }
        eprintln!(
            "the database does not fit the config ({})",
            summary(&problems)
        );
        return Ok(ExitCode::from(2));
    }
    // Missing or stale change triggers do not stop a run (queued rows still
    // sync), but changed rows would go unnoticed: say so.
    let stale =
        crate::change::check_change_triggers(&store, &plan, mappings.iter().map(|m| m.as_ref()));
    for warning in stale.await? {
        let hint = warning.hint.as_deref().unwrap_or_default();
        tracing::warn!(file = %warning.file, "{} ({hint})", warning.message);
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            "Signal received: handing unsent rows back to Queued, then stopping (within 10 s)."
        );
        let _ = stop.send(true);
        // The first signal is enough; a second one is obeyed at once, leaving
        // any rows still claimed to be taken again when their lease expires.
        wait_for_signal().await;
        tracing::warn!("Second signal: exiting now.");
        std::process::exit(1);
    });
    let plan = Arc::new(plan);
    if let Some(addr) = listen {
        crate::metrics::serve(addr, plan.clone(), store.clone(), shutdown.clone()).await?;
    }
    let clock = Arc::new(SystemClock);
    let runs = match connector {
        Some(connector) => vec![ConnectorRun {
            connector: connector.to_string(),
            result: run_connector(
                plan,
                connector,
                store.clone(),
                &ProcessEnv,
                clock,
                options,
                shutdown,
            )
            .await,
        }],
        None => run_all(plan, store.clone(), &ProcessEnv, clock, options, shutdown).await,
    };
    store.close().await;
    Ok(exit_code_of(&runs))
}

/// 2 when a connector could not run to its end (each is named; a broken
/// config included), else 1 when some claimed rows ended in `Error` or were
/// handed back to `Queued` (a retry, a rate limit, a shutdown), else 0.
fn exit_code_of(runs: &[ConnectorRun]) -> ExitCode {
    let mut worst = 0;
    for run in runs {
        let code = match &run.result {
            Err(err) => {
                eprintln!("error: {err:#}");
                2
            }
            Ok(summary) if !summary.all_complete() => 1,
            Ok(_) => 0,
        };
        worst = worst.max(code);
    }
    ExitCode::from(worst)
}

fn init(dir: &std::path::Path, force: bool) -> anyhow::Result<ExitCode> {
    let done = crate::init::init(dir, force)?;
    let shown = dir.display();
    println!("wrote {} files into {shown}", done.written.len());
    for path in &done.written {
        println!("  {path}");
    }
    if !done.kept.is_empty() {
        println!(
            "kept {} files that exist (--force overwrites them):",
            done.kept.len()
        );
        for path in &done.kept {
            println!("  {path}");
        }
    }
    println!(
        "\nnext, in {shown}:\n  cp .env.example .env     # fill in the secrets\n  engine check\n  engine migrate --mapping <name>   # for each file in mappings/\n  engine run --all"
    );
    Ok(ExitCode::SUCCESS)
}

/// `engine plan`: reads only, sends nothing.
async fn plan(
    connector: &str,
    mapping: Option<&str>,
    limit: u32,
    location: &Location,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = load_plan(&location.config_dir) else {
        return Ok(ExitCode::from(2));
    };
    let store = connect_existing(&location.database).await?;
    let text = crate::preview::preview(
        &plan,
        connector,
        mapping,
        limit,
        &store,
        &ProcessEnv,
        Arc::new(SystemClock),
    )
    .await;
    store.close().await;
    print!("{}", text?);
    Ok(ExitCode::SUCCESS)
}

/// `engine history`: reads only; a database that does not exist yet has no history.
async fn history(
    mapping: Option<&str>,
    limit: u32,
    json: bool,
    location: &Location,
) -> anyhow::Result<ExitCode> {
    let store = connect_existing(&location.database).await?;
    // A mapping's history is that of its current table, when the config says.
    let table = mapping.and_then(|name| {
        let plan = crate::check::check_dir(&location.config_dir, &ProcessEnv).plan;
        plan.mappings.get(name).map(|m| m.table.table.clone())
    });
    let cycles = crate::history::recent(&store, mapping, table.as_deref(), limit).await?;
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&cycles)?);
    } else {
        print!("{}", crate::history::render(&cycles));
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the database for a command that only reads: a SQLite file that
/// does not exist is an error naming it, not a new empty database.
async fn connect_existing(url: &str) -> anyhow::Result<Store> {
    if let Some(path) = sqlite_file(url)
        && !path.exists()
    {
        anyhow::bail!(
            "no database at {} (set --database or DATABASE_URL; `engine run` creates it)",
            path.display()
        );
    }
    Store::connect(url).await
}

/// The file of a `sqlite://` URL (none for in-memory databases).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory"))
        .then(|| PathBuf::from(path))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn status(
    connector: Option<&str>,
    json: bool,
    location: &Location,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = load_plan(&location.config_dir) else {
        return Ok(ExitCode::from(2));
    };
    let store = connect_existing(&location.database).await?;
    let mappings: Vec<_> = plan
        .mappings
        .values()
        .filter(|m| connector.is_none_or(|c| m.connector == c))
        .collect();
    if mappings.is_empty() {
        anyhow::bail!("no mapping matches");
    }
    for mapping in mappings.iter().filter(|m| m.snapshot.is_none()) {
        require_table(&store, mapping).await?;
    }
    let state = location.state_store(&store).await?;
    if json {
        let mut all = Vec::new();
        for mapping in mappings {
            all.push(match mapping.snapshot {
                None => status_json(&store, mapping).await?,
                Some(_) => {
                    let state = crate::snapshot::state_store(mapping, &state, &ProcessEnv).await?;
                    snapshot_status_json(&state, mapping).await?
                }
            });
        }
        store.close().await;
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    for mapping in mappings {
        if mapping.snapshot.is_some() {
            let state = crate::snapshot::state_store(mapping, &state, &ProcessEnv).await?;
            snapshot_status(&state, mapping).await?;
            continue;
        }
        println!(
            "mapping {} -> connector {} (table {})",
            mapping.name, mapping.connector, mapping.table.table
        );
        for (status, count) in store.status_counts(&mapping.table).await? {
            println!("  {:<12} {count}", status.as_deref().unwrap_or("(none)"));
        }
        if let Some(counts) = store
            .sync_counts(&mapping.name, &mapping.table.table)
            .await?
        {
            println!("  outcomes     {}", counts.total);
            println!(
                "  last cycle   {} (ended {})",
                counts.last_cycle, counts.last_cycle_at
            );
        }
        let errors = crate::attempts::latest_failed_rows(&store, mapping, 10).await?;
        if !errors.is_empty() {
            println!("  latest errors, the most recently tried first:");
            for row in errors {
                let tried = row.last_tried.map_or_else(
                    || "not noted".to_string(),
                    |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                );
                println!(
                    "    {} (retries {}, last tried {tried}): {}",
                    row.key, row.retry_count, row.error
                );
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// One mapping's status as JSON: counts by status, and the latest errors.
async fn status_json(
    store: &Store,
    mapping: &crate::plan::MappingPlan,
) -> anyhow::Result<serde_json::Value> {
    let counts: serde_json::Map<String, serde_json::Value> = store
        .status_counts(&mapping.table)
        .await?
        .into_iter()
        .map(|(status, n)| (status.unwrap_or_else(|| "(none)".into()), n.into()))
        .collect();
    let errors = crate::attempts::latest_failed_rows(store, mapping, 10).await?;
    let outcomes = store
        .sync_counts(&mapping.name, &mapping.table.table)
        .await?;
    Ok(serde_json::json!({
        "mapping": mapping.name,
        "connector": mapping.connector,
        "table": mapping.table.table,
        "counts": counts,
        "outcomes": outcomes.as_ref().map(|c| c.total),
        "last_cycle": outcomes.as_ref().map(|c| serde_json::json!({
            "counts": c.last_cycle,
            "ended": c.last_cycle_at,
        })),
        "latest_errors": errors,
    }))
}

/// `engine status --json` of a snapshot mapping: its state rows by status
/// (a pending delete apart from a pending upsert).
async fn snapshot_status_json(
    state: &Store,
    mapping: &crate::plan::MappingPlan,
) -> anyhow::Result<serde_json::Value> {
    use crate::snapshot::{scope, state as snapshot_state};
    let scope = scope(mapping);
    let mut counts = serde_json::Map::new();
    if state.columns(snapshot_state::TABLE).await?.is_some() {
        for (status, action, count) in snapshot_state::counts(state, &scope).await? {
            let label = match (status.as_str(), action.as_str()) {
                ("Complete" | "Deleted", _) | (_, "upsert") => status,
                (_, action) => format!("{status} ({action})"),
            };
            counts.insert(label, count.into());
        }
    }
    Ok(serde_json::json!({
        "mapping": mapping.name,
        "connector": mapping.connector,
        "snapshot": scope,
        "counts": counts,
    }))
}

/// Which database `migrate --print --dialect` writes SQL for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

fn print_change_triggers(
    mapping: &str,
    dialect: Dialect,
    location: &Location,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = load_plan(&location.config_dir) else {
        return Ok(ExitCode::from(2));
    };
    let mapping = plan
        .mappings
        .get(mapping)
        .with_context(|| format!("no mapping `{mapping}` in mappings/"))?;
    let backend = match dialect {
        Dialect::Sqlite => crate::store::Backend::Sqlite,
        Dialect::Postgres => crate::store::Backend::Postgres,
    };
    println!(
        "-- change triggers of mapping `{}` on {backend}: queue a row of `{}` when it is inserted, or when a column the mapping reads changes",
        mapping.name, mapping.table.table
    );
    for statement in crate::change::change_trigger_sql_for(&plan, mapping, backend)? {
        println!("{statement};");
    }
    Ok(ExitCode::SUCCESS)
}

/// `engine status` of a snapshot mapping: its state rows by status, a
/// pending delete apart from a pending upsert.
async fn snapshot_status(state: &Store, mapping: &crate::plan::MappingPlan) -> anyhow::Result<()> {
    use crate::snapshot::{scope, state as snapshot_state};
    let scope = scope(mapping);
    println!(
        "mapping {} -> connector {} (snapshot, state {scope})",
        mapping.name, mapping.connector
    );
    if state.columns(snapshot_state::TABLE).await?.is_none() {
        println!("  no state yet: the first `engine run` creates it");
        return Ok(());
    }
    for (status, action, count) in snapshot_state::counts(state, &scope).await? {
        let label = match (status.as_str(), action.as_str()) {
            ("Complete" | "Deleted", _) | (_, "upsert") => status,
            (_, action) => format!("{status} ({action})"),
        };
        println!("  {label:<18} {count}");
    }
    let errors = snapshot_state::latest_errors(state, &scope, 10).await?;
    if !errors.is_empty() {
        println!("  latest errors:");
        for (key, error, retries) in errors {
            println!("    id {key} (retries {retries}): {error}");
        }
    }
    Ok(())
}

async fn retry(connector: &str, location: &Location) -> anyhow::Result<ExitCode> {
    let Some(plan) = load_plan(&location.config_dir) else {
        return Ok(ExitCode::from(2));
    };
    let store = Store::connect(&location.database).await?;
    let mappings = plan.mappings_of(connector);
    anyhow::ensure!(
        !mappings.is_empty(),
        "no mapping syncs to connector `{connector}`"
    );
    for mapping in mappings.iter().filter(|m| m.snapshot.is_none()) {
        require_table(&store, mapping).await?;
    }
    let state = location.state_store(&store).await?;
    for mapping in mappings {
        let count = match mapping.snapshot {
            Some(_) => {
                let state = crate::snapshot::state_store(&mapping, &state, &ProcessEnv).await?;
                let scope = crate::snapshot::scope(&mapping);
                crate::snapshot::state::ensure_table(&state).await?;
                crate::snapshot::state::requeue_errors(&state, &scope).await?
            }
            None => store.requeue_errors(&mapping.table).await?,
        };
        println!("mapping {}: {count} rows queued again", mapping.name);
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(mapping: &str, print: bool, location: &Location) -> anyhow::Result<ExitCode> {
    let Some(plan) = load_plan(&location.config_dir) else {
        return Ok(ExitCode::from(2));
    };
    let mapping = plan
        .mappings
        .get(mapping)
        .with_context(|| format!("no mapping `{mapping}` in mappings/"))?;
    let store = Store::connect(&location.database).await?;
    if mapping.snapshot.is_some() {
        // The source is only read: what a snapshot needs is its state table.
        let state = location.state_store(&store).await?;
        let state = crate::snapshot::state_store(mapping, &state, &ProcessEnv).await?;
        let statements = crate::snapshot::state::create_sql(state.backend());
        if !print {
            crate::snapshot::state::ensure_table(&state).await?;
        }
        for statement in statements {
            println!("{statement};");
        }
        state.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let mut statements = if print {
        store.migration_sql(&mapping.table).await?
    } else {
        store.migrate(&mapping.table).await?
    };
    // Triggers are planned on the migrated table: a fresh database shows
    // them once the table exists.
    let triggers = crate::change::change_trigger_migration(&store, &plan, mapping).await?;
    if !print {
        store.run_statements(&triggers).await?;
    }
    statements.extend(triggers);
    if statements.is_empty() {
        println!(
            "-- table `{}` already has every column mapping `{}` needs",
            mapping.table.table, mapping.name
        );
    }
    for statement in statements {
        println!("{statement};");
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn a_bare_level_leaves_dependencies_at_warn_and_named_targets_are_kept() {
        assert_eq!(log_filter("debug"), "warn,engine=debug");
        assert_eq!(log_filter("info"), "warn,engine=info");
        assert_eq!(log_filter("error"), "error");
        assert_eq!(
            log_filter("engine=debug,sqlx=debug"),
            "engine=debug,sqlx=debug"
        );
    }
}
