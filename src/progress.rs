//! A progress bar per connector on an interactive terminal. Elsewhere (output
//! redirected, `--quiet`, `--log-format json`, every test) the run prints
//! `Progress.` log lines instead (see `engine::report_progress`).
//!
//! Log lines and bars share stderr: once bars are on, each log line is
//! written with the bars suspended, so a line never lands inside a bar.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Whether to draw bars: only for a person watching a terminal, and not when
/// they asked for plain or machine-readable output.
pub fn wanted(stderr_is_terminal: bool, quiet: bool, json_logs: bool) -> bool {
    stderr_is_terminal && !quiet && !json_logs
}

/// Turns bars on for this process (before logging starts).
pub fn enable() {
    let _ = BARS.set(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    BARS.get().is_some()
}

/// stderr for log lines, with the bars suspended while a line is written.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars
                .suspend(|| io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A connector's bar, removed when dropped.
pub struct Bar(ProgressBar);

impl Bar {
    /// A new bar, or `None` when bars are off.
    pub fn new(connector: &str) -> Option<Bar> {
        let bars = BARS.get()?;
        let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} rows  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = bars.add(ProgressBar::new(0));
        bar.set_style(style);
        bar.set_prefix(connector.to_string());
        Some(Bar(bar))
    }

    /// The current cycle: `done` of `due` rows after `elapsed`, with what is
    /// left at the rate so far.
    pub fn show(&self, done: u64, due: u64, elapsed: Duration) {
        self.0.set_length(due.max(done));
        self.0.set_position(done);
        self.0.set_message(message(done, due, elapsed));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
        if let Some(bars) = BARS.get() {
            bars.remove(&self.0);
        }
    }
}

/// `12.5 rows/s, eta 40 s` (no eta before the first row is done).
pub fn message(done: u64, due: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if done == 0 || secs <= 0.0 {
        return "starting".into();
    }
    let rate = done as f64 / secs;
    let left = due.saturating_sub(done) as f64 / rate;
    format!("{rate:.1} rows/s, eta {} s", left.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_drawn_only_on_a_terminal_without_quiet_or_json_logs() {
        assert!(wanted(true, false, false));
        assert!(!wanted(false, false, false), "redirected: log lines");
        assert!(!wanted(true, true, false), "--quiet");
        assert!(!wanted(true, false, true), "--log-format json");
    }

    #[test]
    fn the_message_gives_the_rate_so_far_and_the_time_left_at_it() {
        let ten_secs = Duration::from_secs(10);
        assert_eq!(message(250, 1000, ten_secs), "25.0 rows/s, eta 30 s");
        assert_eq!(message(0, 1000, ten_secs), "starting");
        assert_eq!(message(1200, 1000, ten_secs), "120.0 rows/s, eta 0 s");
    }
}
