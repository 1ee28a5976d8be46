//! Run history: each cycle of a mapping recorded in the engine's own table,
//! shown by `engine history`, and kept to the latest N per mapping.

use std::sync::Arc;

use engine::clock::SystemClock;
use engine::history::{self, Counts};
use engine::store::Backend;
use serde_json::{Value, json};

use super::{Fixture, generated_rows, sandbox_options};
use crate::on_both_backends;
use crate::support::{quiet, run_engine, run_to_end};

on_both_backends!(
    a_run_records_its_cycle_with_counts_by_outcome_and_the_first_error,
    history_keeps_only_the_latest_cycles_of_each_mapping,
    status_lists_errors_by_when_they_were_last_tried_not_by_id,
);

/// Three good rows and one whose email the CRM rejects.
async fn fixture_with_a_bad_row(backend: Backend) -> Option<Fixture> {
    let f = Fixture::new(backend, sandbox_options(0), |_| {}).await?;
    let mut rows = generated_rows(4);
    rows[3].insert("email".into(), json!("not-an-email"));
    f.insert(&rows).await;
    Some(f)
}

async fn a_run_records_its_cycle_with_counts_by_outcome_and_the_first_error(backend: Backend) {
    let Some(f) = fixture_with_a_bad_row(backend).await else {
        return;
    };
    f.run_now("brevo").await;
    let table = f.db.table.as_str();
    let cycles = history::recent(&f.db.store, Some("brevo"), Some(table), 10)
        .await
        .unwrap();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let cycle = &cycles[0];
    assert_eq!(
        (cycle.mapping.as_str(), cycle.table.as_str()),
        ("brevo", table)
    );
    assert_eq!(cycle.outcome, "ok");
    assert_eq!(
        cycle.counts,
        Counts {
            complete: 3,
            failed: 1,
            retrying: 0,
            deferred: 0
        }
    );
    let error = cycle.first_error.as_deref().unwrap_or_default();
    assert!(error.contains("HTTP 400"), "{error}");
    assert!(cycle.finished_at >= cycle.started_at);

    // The command shows it; --json parses.
    let mut location = vec![
        "--config-dir".to_string(),
        f.config.path().display().to_string(),
    ];
    location.extend(["--database".to_string(), f.db.url.clone()]);
    let args: Vec<&str> = ["history", "--mapping", "brevo", "--json"]
        .into_iter()
        .chain(location.iter().map(String::as_str))
        .collect();
    let transcript = run_engine(f.config.path(), &args, &[]);
    assert!(transcript.starts_with("exit code: 0"), "{transcript}");
    let stdout = transcript
        .split("----- stdout -----\n")
        .nth(1)
        .and_then(|rest| rest.split("----- stderr -----").next())
        .unwrap();
    let shown: Value = serde_json::from_str(stdout).unwrap();
    assert_eq!(shown[0]["mapping"], "brevo");
    assert_eq!(shown[0]["complete"], 3);
    assert_eq!(shown[0]["failed"], 1);
    let args: Vec<&str> = ["history", "--mapping", "brevo"]
        .into_iter()
        .chain(location.iter().map(String::as_str))
        .collect();
    let table_text = run_engine(f.config.path(), &args, &[]);
    assert!(
        table_text.contains("brevo") && table_text.contains("HTTP 400"),
        "{table_text}"
    );

    // status --json: counts by status and the latest errors, as JSON.
    let args: Vec<&str> = ["status", "--connector", "brevo", "--json"]
        .into_iter()
        .chain(location.iter().map(String::as_str))
        .collect();
    let status = run_engine(f.config.path(), &args, &[]);
    let stdout = status
        .split("----- stdout -----\n")
        .nth(1)
        .and_then(|rest| rest.split("----- stderr -----").next())
        .unwrap();
    let shown: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(shown[0]["mapping"], "brevo");
    assert_eq!(shown[0]["counts"]["Complete"], 3);
    assert_eq!(shown[0]["counts"]["Error"], 1);
    assert_eq!(shown[0]["latest_errors"][0]["key"], "not-an-email");
    assert!(
        shown[0]["latest_errors"][0]["last_tried"].is_string(),
        "{shown}"
    );
}

async fn status_lists_errors_by_when_they_were_last_tried_not_by_id(backend: Backend) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    // The row with the higher id fails first, the lower one later.
    let mut rows = generated_rows(9);
    let mut later = rows.remove(0);
    let mut first = rows.pop().unwrap();
    first.insert("email".into(), json!("bad-first"));
    later.insert("email".into(), json!("bad-later"));
    f.insert(&[first]).await;
    f.run_now("brevo").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    f.insert(&[later]).await;
    f.run_now("brevo").await;

    let mut args = vec!["status", "--connector", "brevo", "--json"];
    let location = f.location();
    args.extend(location.iter().map(String::as_str));
    let status = run_engine(f.config.path(), &args, &[]);
    let stdout = status
        .split("----- stdout -----\n")
        .nth(1)
        .and_then(|rest| rest.split("----- stderr -----").next())
        .unwrap();
    let shown: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {status}"));
    let errors = &shown[0]["latest_errors"];
    assert_eq!(errors[0]["key"], "bad-later", "{shown}");
    assert_eq!(errors[1]["key"], "bad-first", "{shown}");
    let tried = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(errors[i]["last_tried"].as_str().unwrap()).unwrap()
    };
    assert!(tried(0) > tried(1), "{shown}");
}

async fn history_keeps_only_the_latest_cycles_of_each_mapping(backend: Backend) {
    let Some(f) = fixture_with_a_bad_row(backend).await else {
        return;
    };
    let options = engine::engine::RunOptions {
        history_keep: 2,
        ..quiet()
    };
    for _ in 0..3 {
        run_to_end(
            &f.plan,
            "brevo",
            &f.db,
            &f.env,
            Arc::new(SystemClock),
            options.clone(),
        )
        .await;
    }
    let table = f.db.table.as_str();
    let cycles = history::recent(&f.db.store, Some("brevo"), Some(table), 10)
        .await
        .unwrap();
    // The first run (3 complete, 1 error) was dropped; two empty runs remain.
    assert_eq!(cycles.len(), 2, "{cycles:?}");
    assert!(cycles.iter().all(|c| c.counts.total() == 0), "{cycles:?}");
}

#[test]
fn history_of_a_database_that_does_not_exist_fails_without_creating_it() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = run_engine(
        dir.path(),
        &["history", "--database", "sqlite://missing.db"],
        &[],
    );
    assert!(transcript.starts_with("exit code: 2"), "{transcript}");
    assert!(
        transcript.contains("no database at missing.db"),
        "{transcript}"
    );
    assert!(!dir.path().join("missing.db").exists());
}
