//! `engine run --connector hubspot` as a child process, as the benchmarks
//! measure it: memory sampled every 20 ms, its log read as it comes.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::memory_kb;

/// How one child run went.
pub struct EngineRun {
    pub status: ExitStatus,
    pub elapsed: Duration,
    /// `VmHWM` at its highest, kB.
    pub peak_kb: u64,
    /// `VmRSS` at the last sample, kB.
    pub last_kb: u64,
    pub log_lines: u64,
    /// The last 20 log lines, for a failure's report.
    pub tail: Vec<String>,
    /// The last log line containing the `mark` asked for. Each bench
    /// compiles this module; only `snapshot` reads it.
    #[allow(dead_code)]
    pub marked: Option<String>,
}

/// Runs `engine run --connector hubspot ARGS --config-dir .. --database ..`
/// in `dir` with `env` (and no `DATABASE_URL`, `STATE_DATABASE_URL` or
/// `RUST_LOG` from the caller's environment) until it exits.
pub async fn run_hubspot(
    args: &[&str],
    env: &BTreeMap<String, String>,
    config_dir: &Path,
    database: &str,
    dir: &Path,
    mark: &str,
) -> anyhow::Result<EngineRun> {
    let bin = env!("CARGO_BIN_EXE_engine");
    let start = Instant::now();
    let mut child = std::process::Command::new(bin)
        .args(["run", "--connector", "hubspot"])
        .args(args)
        .arg("--config-dir")
        .arg(config_dir)
        .args(["--database", database])
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("STATE_DATABASE_URL")
        .env_remove("RUST_LOG")
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let pid = child.id();
    // Read on a thread: a pipe nobody reads would block the child once full.
    let stderr = child.stderr.take().context("piped stderr")?;
    let mark = mark.to_string();
    let reader = std::thread::spawn(move || {
        let (mut count, mut marked, mut tail) = (0u64, None, VecDeque::new());
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            count += 1;
            if line.contains(&mark) {
                marked = Some(line.clone());
            }
            tail.push_back(line);
            if tail.len() > 20 {
                tail.pop_front();
            }
        }
        (count, marked, Vec::from(tail))
    });
    let (mut peak_kb, mut last_kb) = (0, 0);
    let status = loop {
        if let Some((hwm, rss)) = memory_kb(pid) {
            peak_kb = peak_kb.max(hwm);
            last_kb = rss;
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = start.elapsed();
    let (log_lines, marked, tail) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the log reader panicked"))?;
    Ok(EngineRun {
        status,
        elapsed,
        peak_kb,
        last_kb,
        log_lines,
        tail,
        marked,
    })
}
