//! Pieces the scenarios share: the shipped config, fresh databases filled with
//! queued seed-shaped rows, the sandbox and its request timeline, and statistics.

pub mod child;
pub mod db;
pub mod timeline;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, ensure};
use engine::plan::Plan;
use serde_json::Value;

/// The repository's own config dir: the shipped `connectors/` and `mappings/`, unchanged.
pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads and plans the shipped config with `env` (only the base URLs and the
/// placeholder secrets differ from production), refusing to run on any error.
pub fn shipped_plan(env: &BTreeMap<String, String>) -> anyhow::Result<Arc<Plan>> {
    plan_at(&config_dir(), env)
}

/// For the scenarios that measure the engine's own cost (no CRM limits): a
/// copy of the shipped config in a temp dir where the one change is that
/// HubSpot's `ten_secondly` window (100 per 10 s) becomes 1,000,000 per 10 s.
/// The sandbox's limits are off too; without this the engine's own limiter
/// would still pace the run at 100 requests per 10 s (1,000 contacts/s).
pub fn unlimited_config() -> anyhow::Result<tempfile::TempDir> {
    let dir = copied_config()?;
    let hubspot = dir.path().join("connectors/hubspot.toml");
    let text = std::fs::read_to_string(&hubspot)?;
    let window = "name = \"ten_secondly\"\nrequests = 100\n";
    ensure!(
        text.contains(window),
        "connectors/hubspot.toml no longer has {window:?}; update the bench"
    );
    std::fs::write(
        &hubspot,
        text.replace(window, "name = \"ten_secondly\"\nrequests = 1000000\n"),
    )?;
    Ok(dir)
}

/// For the per-contact Brevo scenario: a copy of the shipped config whose one
/// change is that `connectors/brevo.toml` has no `[bulk]` flow, so every
/// contact goes in its own request however many are due.
pub fn per_contact_brevo_config() -> anyhow::Result<tempfile::TempDir> {
    let dir = copied_config()?;
    let brevo = dir.path().join("connectors/brevo.toml");
    let text = std::fs::read_to_string(&brevo)?;
    let start = text
        .find("\n[bulk]")
        .context("connectors/brevo.toml no longer has [bulk]; update the bench")?;
    // [bulk] and its sub-tables are the file's last tables.
    std::fs::write(&brevo, &text[..start])?;
    Ok(dir)
}

/// For the multi-process scenario: a copy of the shipped config where the
/// one change is that HubSpot's mapping allows `instances` processes at
/// once (`schedule.max_instances`, shipped as 1).
pub fn instances_config(instances: u32) -> anyhow::Result<tempfile::TempDir> {
    let dir = copied_config()?;
    let mapping = dir.path().join("mappings/hubspot.toml");
    let text = std::fs::read_to_string(&mapping)?;
    let line = "max_instances = 1\n";
    ensure!(
        text.contains(line),
        "mappings/hubspot.toml no longer has {line:?}; update the bench"
    );
    std::fs::write(
        &mapping,
        text.replace(line, &format!("max_instances = {instances}\n")),
    )?;
    Ok(dir)
}

/// A copy of the shipped `connectors/` and `mappings/` in a temp dir.
fn copied_config() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("engine-bench-config-")
        .tempdir()?;
    for sub in ["connectors", "mappings"] {
        std::fs::create_dir_all(dir.path().join(sub))?;
        for entry in std::fs::read_dir(config_dir().join(sub))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                std::fs::copy(
                    &path,
                    dir.path()
                        .join(sub)
                        .join(path.file_name().context("a file name")?),
                )?;
            }
        }
    }
    Ok(dir)
}

/// Loads and plans the config in `dir` (see [`shipped_plan`]).
pub fn plan_at(dir: &std::path::Path, env: &BTreeMap<String, String>) -> anyhow::Result<Arc<Plan>> {
    let checked = engine::check::check_dir(dir, env);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    ensure!(
        errors.is_empty(),
        "the config in {} has errors:\n{}",
        dir.display(),
        errors.join("\n")
    );
    Ok(Arc::new(checked.plan))
}

/// Sum of the sandbox's per-route request counters (every CRM request that arrived).
pub fn total_requests(stats: &Value) -> u64 {
    stats["requests"]
        .as_object()
        .map_or(0, |routes| routes.values().filter_map(Value::as_u64).sum())
}

/// The sandbox's 429 count.
pub fn rate_limited(stats: &Value) -> u64 {
    stats["rate_limited"].as_u64().unwrap_or(0)
}

/// The sandbox's peak of requests in flight at once.
pub fn max_in_flight(stats: &Value) -> u64 {
    stats["max_in_flight"].as_u64().unwrap_or(0)
}

/// The middle value (the lower middle for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

/// The 1-minute load average, to show how busy the shared machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The machine's CPU time by kind, in clock ticks, from the first line of
/// `/proc/stat`: what every process used (engine, sandbox, PostgreSQL), what
/// stayed idle, and what the hypervisor gave to other guests (steal).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    pub busy: u64,
    pub idle: u64,
    pub steal: u64,
}

impl CpuTicks {
    /// `None` off Linux.
    pub fn now() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is
        // already counted in user).
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        Some(CpuTicks {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        })
    }

    /// What was spent between `self` and `later`, as fractions of all ticks:
    /// (busy seconds on all cores, idle fraction, steal fraction).
    pub fn since(self, later: CpuTicks) -> CpuSpent {
        let busy = later.busy.saturating_sub(self.busy);
        let idle = later.idle.saturating_sub(self.idle);
        let steal = later.steal.saturating_sub(self.steal);
        let all = (busy + idle + steal).max(1) as f64;
        CpuSpent {
            // USER_HZ is 100 on every Linux this runs on.
            busy_secs: busy as f64 / 100.0,
            idle: idle as f64 / all,
            steal: steal as f64 / all,
        }
    }
}

/// CPU used over an interval, by the whole machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuSpent {
    pub busy_secs: f64,
    pub idle: f64,
    pub steal: f64,
}

/// `VmHWM` and `VmRSS` (kB) of a process, from `/proc/<pid>/status`.
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Every row of the mapping is `Complete`: `(complete, total)`.
pub async fn completion(
    store: &engine::store::Store,
    spec: &engine::store::TableSpec,
) -> anyhow::Result<(i64, i64)> {
    let counts = store
        .status_counts(spec)
        .await
        .context("counting statuses")?;
    let total = counts.iter().map(|(_, n)| n).sum();
    let complete = counts
        .iter()
        .filter(|(s, _)| s.as_deref() == Some("Complete"))
        .map(|(_, n)| n)
        .sum();
    Ok((complete, total))
}
