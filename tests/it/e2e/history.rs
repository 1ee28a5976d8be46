//! Run history: each cycle of a mapping recorded in the engine's own table,
//! shown by `engine history`, and kept to the latest N per mapping.

use std::sync::Arc;

use engine::clock::SystemClock;
use engine::history::{self, Counts};
use engine::store::Backend;
use serde_json::{Value, json};

use super::{Fixture, generated_rows, sandbox_options};
use crate::on_both_backends;
use crate::support::{TestDb, execute, pg_url, quiet, run_engine, run_to_end};

on_both_backends!(
    a_run_records_its_cycle_with_counts_by_outcome_and_the_first_error,
    history_keeps_only_the_latest_cycles_of_each_mapping,
    status_lists_errors_by_when_they_were_last_tried_not_by_id,
    a_cycle_of_unchanged_rows_is_recorded_with_its_unchanged_count_and_shown,
    a_history_table_of_an_older_engine_gains_the_new_counts_and_keeps_its_cycles,
    status_json_gives_the_outcomes_so_far_and_those_of_the_last_cycle,
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
            ..Counts::default()
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

async fn a_cycle_of_unchanged_rows_is_recorded_with_its_unchanged_count_and_shown(
    backend: Backend,
) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "mappings/brevo.toml",
            "[state]\n",
            "[state]\nfingerprint = \"brevo_fingerprint\"\n",
        );
    })
    .await
    else {
        return;
    };
    f.insert(&generated_rows(3)).await;
    f.run_now("brevo").await;
    // Queued again with the same values: recorded without a request.
    execute(
        &f.db.store,
        format!(
            "UPDATE {} SET brevo_processing_status = 'Queued'",
            f.db.table
        ),
    )
    .await;
    f.run_now("brevo").await;
    let table = f.db.table.as_str();
    let cycles = history::recent(&f.db.store, Some("brevo"), Some(table), 10)
        .await
        .unwrap();
    assert_eq!(cycles.len(), 2, "{cycles:?}");
    assert_eq!(
        cycles[0].counts,
        Counts {
            unchanged: 3,
            ..Counts::default()
        },
        "newest first"
    );
    assert_eq!(cycles[1].counts.complete, 3);

    let mut args = vec!["history".to_string(), "--mapping".into(), "brevo".into()];
    args.extend(["--database".to_string(), f.db.url.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let transcript = run_engine(f.config.path(), &args, &[]);
    let mut lines = transcript.lines().skip_while(|l| !l.starts_with("started"));
    let header = lines.next().unwrap_or_default();
    assert!(
        header.contains("unchanged") && header.contains("skipped") && header.contains("deleted"),
        "{transcript}"
    );
    let newest: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // date, time, mapping, secs, outcome, complete, error, retrying, deferred, unchanged, skipped, deleted
    assert_eq!(
        newest.get(9..12),
        Some(&["3", "0", "0"][..]),
        "{transcript}"
    );
}

async fn a_history_table_of_an_older_engine_gains_the_new_counts_and_keeps_its_cycles(
    backend: Backend,
) {
    // `engine_cycles` has one name per database: on PostgreSQL the test gets
    // a schema of its own, so the old shape does not meet other tests' table.
    let Some(db) = TestDb::open(backend).await else {
        return;
    };
    let store = match backend {
        Backend::Sqlite => db.store.clone(),
        Backend::Postgres => {
            let schema = format!("h_{}", db.table);
            execute(&db.store, format!("CREATE SCHEMA {schema}")).await;
            let url = format!("{}?options=-c%20search_path%3D{schema}", pg_url());
            engine::store::Store::connect(&url).await.unwrap()
        }
    };
    let (time, int) = match backend {
        Backend::Sqlite => ("TEXT", "INTEGER"),
        Backend::Postgres => ("TIMESTAMPTZ", "BIGINT"),
    };
    // The table as the engine first shipped it, with one cycle in it.
    execute(
        &store,
        format!(
            "CREATE TABLE engine_cycles (id {key}, mapping TEXT NOT NULL, \
             source_table TEXT NOT NULL, started_at {time} NOT NULL, finished_at {time} NOT NULL, \
             outcome TEXT NOT NULL, complete {int} NOT NULL, failed {int} NOT NULL, \
             retrying {int} NOT NULL, deferred {int} NOT NULL, first_error TEXT)",
            key = match backend {
                Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
                Backend::Postgres => "BIGSERIAL PRIMARY KEY",
            }
        ),
    )
    .await;
    execute(
        &store,
        "INSERT INTO engine_cycles (mapping, source_table, started_at, finished_at, outcome, \
         complete, failed, retrying, deferred) VALUES ('brevo', 'contacts', \
         '2026-12-01 10:00:00+00:00', '2026-12-01 10:00:01+00:00', 'ok', 5, 1, 0, 0)"
            .into(),
    )
    .await;
    // Read-only, the old table reads 0 for what it lacks.
    let old = history::recent(&store, None, None, 10).await.unwrap();
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!((old[0].counts.complete, old[0].counts.unchanged), (5, 0));
    assert!(
        store
            .columns("engine_cycles")
            .await
            .unwrap()
            .unwrap()
            .iter()
            .all(|c| c.name != "unchanged"),
        "reading changed nothing"
    );

    let now = chrono::Utc::now();
    let cycle = history::Cycle {
        mapping: "brevo".into(),
        table: "contacts".into(),
        started_at: now,
        finished_at: now,
        outcome: "ok".into(),
        counts: Counts {
            unchanged: 2,
            skipped: 1,
            deleted: 4,
            ..Counts::default()
        },
        first_error: None,
    };
    history::record(&store, &cycle, 10).await.unwrap();
    let cycles = history::recent(&store, Some("brevo"), Some("contacts"), 10)
        .await
        .unwrap();
    assert_eq!(cycles.len(), 2, "{cycles:?}");
    assert_eq!(cycles[0].counts, cycle.counts);
    assert_eq!(cycles[1].counts.complete, 5);
    assert_eq!(cycles[1].counts.deleted, 0);
    if backend == Backend::Postgres {
        execute(&db.store, format!("DROP SCHEMA h_{} CASCADE", db.table)).await;
    }
}

async fn status_json_gives_the_outcomes_so_far_and_those_of_the_last_cycle(backend: Backend) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "mappings/brevo.toml",
            "[state]\n",
            "[state]\nfingerprint = \"brevo_fingerprint\"\n",
        );
    })
    .await
    else {
        return;
    };
    let mut rows = generated_rows(4);
    rows[3].insert("email".into(), json!("not-an-email"));
    f.insert(&rows).await;
    f.run_now("brevo").await;
    execute(
        &f.db.store,
        format!(
            "UPDATE {} SET brevo_processing_status = 'Queued' WHERE brevo_processing_status = 'Complete'",
            f.db.table
        ),
    )
    .await;
    f.run_now("brevo").await;

    let mut args = vec![
        "status".to_string(),
        "--connector".into(),
        "brevo".into(),
        "--json".into(),
    ];
    args.extend(["--database".to_string(), f.db.url.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let transcript = run_engine(f.config.path(), &args, &[]);
    let stdout = transcript
        .split("----- stdout -----\n")
        .nth(1)
        .and_then(|rest| rest.split("----- stderr -----").next())
        .unwrap();
    let shown: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {transcript}"));
    let brevo = &shown[0];
    assert_eq!(brevo["mapping"], "brevo", "{shown}");
    assert_eq!(
        brevo["outcomes"],
        json!({"created": 3, "updated": 0, "unchanged": 3, "skipped": 0, "failed": 1}),
        "{shown}"
    );
    assert_eq!(
        brevo["last_cycle"]["counts"],
        json!({"created": 0, "updated": 0, "unchanged": 3, "skipped": 0, "failed": 0}),
        "{shown}"
    );
    assert!(brevo["last_cycle"]["ended"].is_string(), "{shown}");
}
