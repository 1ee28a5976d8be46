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

Exit codes: 0 ok (run: every claimed row ended Complete); 1 some claimed rows ended
in Error or were handed back to Queued for later (a retry, a rate limit, a
shutdown); 2 config, usage or environment error.";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "engine", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (overrides RUST_LOG), e.g. `debug` or `engine=debug`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
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
        /// Also check tables and columns in this database.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Sync every mapping of a connector until no row is claimable, then exit.
    Run {
        /// Connector name (connectors/<NAME>.toml).
        #[arg(long, value_name = "NAME")]
        connector: String,
        /// Keep running: a cycle every interval_secs until SIGINT/SIGTERM.
        #[arg(long)]
        watch: bool,
        /// Claim-and-send loops per mapping.
        #[arg(long, default_value_t = 4, value_name = "N")]
        workers: usize,
        /// Let a snapshot whose source returned no rows delete the records
        /// it synced (refused otherwise: a broken view must not wipe the CRM).
        #[arg(long)]
        allow_empty_source: bool,
        #[command(flatten)]
        location: Location,
    },
    /// Count rows per status and show the latest errors.
    Status {
        /// Only this connector's mappings.
        #[arg(long, value_name = "NAME")]
        connector: Option<String>,
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
    let filter = cli
        .log_level
        .clone()
        .map(tracing_subscriber::EnvFilter::new)
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())
        });
    // Colours only on a terminal: logs redirected to a file or a journal stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check {
            config_dir,
            database,
        } => check(config_dir, database).await,
        Command::Run {
            connector,
            watch,
            workers,
            allow_empty_source,
            location,
        } => run(&connector, watch, workers, allow_empty_source, &location).await,
        Command::Status {
            connector,
            location,
        } => status(connector.as_deref(), &location).await,
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
        Command::Sandbox(options) => crate::sandbox::serve_forever(options)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Demo => crate::demo::run().await,
    }
}

async fn check(config_dir: PathBuf, database: Option<String>) -> anyhow::Result<ExitCode> {
    let mut checked = check_dir(&config_dir, &ProcessEnv);
    if let (Some(url), false) = (database, checked.has_errors()) {
        let store = Store::connect(&url).await?;
        let mappings = || checked.plan.mappings.values().map(|m| m.as_ref());
        let mut found = check_database(mappings(), &store).await?;
        if !found.iter().any(crate::diagnostic::Diagnostic::is_error) {
            found.extend(
                crate::change::check_change_triggers(&store, &checked.plan, mappings()).await?,
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

async fn run(
    connector: &str,
    watch: bool,
    workers: usize,
    allow_empty_source: bool,
    location: &Location,
) -> anyhow::Result<ExitCode> {
    let Some(plan) = load_plan(&location.config_dir) else {
        return Ok(ExitCode::from(2));
    };
    let store = Store::connect(&location.database).await?;
    // The database half of `check`: a missing table or state column is a clear
    // error here, not an SQL error in the middle of a run.
    let mappings = plan.mappings_of(connector);
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
    let options = RunOptions {
        watch,
        workers,
        state_store: Some(location.state_store(&store).await?),
        allow_empty_source,
        ..RunOptions::default()
    };
    let summary = run_connector(
        Arc::new(plan),
        connector,
        store.clone(),
        &ProcessEnv,
        Arc::new(SystemClock),
        options,
        shutdown,
    )
    .await?;
    store.close().await;
    Ok(if summary.all_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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

async fn status(connector: Option<&str>, location: &Location) -> anyhow::Result<ExitCode> {
    let Some(plan) = load_plan(&location.config_dir) else {
        return Ok(ExitCode::from(2));
    };
    let store = Store::connect(&location.database).await?;
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
        let errors = store.latest_errors(&mapping.table, 10).await?;
        if !errors.is_empty() {
            println!("  latest errors:");
            for (key, error, retries) in errors {
                println!("    {key} (retries {retries}): {error}");
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
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
