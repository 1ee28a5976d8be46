//! `engine run --watch`: a long-running sync that picks up rows queued while it
//! runs, and stops cleanly on SIGTERM, recording the rows it is sending first.

use std::collections::BTreeSet;
use std::time::Duration;

use engine::store::Backend;
use serde_json::{Map, Value, json};

use super::{
    Engine, Fixture, assert_each_row_synced_once, generated_rows, ids_of, sandbox_options, text,
    wait_for,
};
use crate::on_both_backends;
use crate::scripted::{Reply, ScriptedCrm};
use crate::support::execute;

on_both_backends!(
    a_watching_run_syncs_rows_queued_after_it_started,
    sigterm_lets_a_watching_run_record_its_in_flight_rows_and_exit_0,
    a_watching_run_outlives_a_failed_cycle_and_syncs_once_the_database_answers_again,
);

/// An empty queue, and `engine run --connector brevo --watch` every second,
/// past its first (empty) cycle. `None` where PostgreSQL is not reachable
/// outside CI.
async fn watching_brevo(backend: Backend) -> Option<(Fixture, Engine)> {
    let f = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "mappings/brevo.toml",
            "interval_secs = 300",
            "interval_secs = 1",
        );
    })
    .await?;
    let engine = f.spawn(&["run", "--connector", "brevo", "--watch"]);
    wait_for(
        "the first (empty) cycle",
        Duration::from_secs(10),
        || async { engine.stderr().contains("Finished sync cycle.") },
    )
    .await;
    Some((f, engine))
}

async fn a_watching_run_syncs_rows_queued_after_it_started(backend: Backend) {
    let Some((f, mut engine)) = watching_brevo(backend).await else {
        return;
    };

    let rows = generated_rows(5);
    f.insert(&rows).await;
    wait_for(
        "the rows queued later to be Complete",
        Duration::from_secs(10),
        || async { f.count("brevo", "Complete").await == 5 },
    )
    .await;
    assert_each_row_synced_once(&f, "brevo", &ids_of(&rows)).await;
    // The rows came in a later cycle, which ends (and says so) just after
    // its last record, so the line may still be on its way.
    wait_for(
        "the cycle that synced them to finish",
        Duration::from_secs(10),
        || async { engine.stderr().matches("Finished sync cycle.").count() >= 2 },
    )
    .await;

    // Stopped while it sleeps between cycles.
    engine.stop_with(0).await;
    assert!(
        engine.stderr().contains("Signal received"),
        "{}",
        engine.stderr()
    );
}

async fn sigterm_lets_a_watching_run_record_its_in_flight_rows_and_exit_0(backend: Backend) {
    let Some(mut f) = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "mappings/brevo.toml",
            "interval_secs = 300",
            "interval_secs = 1",
        );
        config.edit("mappings/brevo.toml", "batch_size = 50", "batch_size = 2");
    })
    .await
    else {
        return;
    };
    // Brevo's answer to a create, held until the test lets the CRM answer:
    // the first batch stays in flight for as long as the test needs.
    let crm = ScriptedCrm::start(vec![Reply::json(201, json!({"id": 7}))]).await;
    crm.hold();
    f.env.insert("BREVO_BASE_URL".into(), crm.base_url.clone());
    let rows = generated_rows(10);
    let ids = ids_of(&rows);
    f.insert(&rows).await;
    // One worker, two rows per batch: one batch at a time, a request per row.
    let mut engine = f.spawn(&["run", "--connector", "brevo", "--watch", "--workers", "1"]);
    wait_for(
        "the first batch's two requests at the CRM",
        Duration::from_secs(30),
        || async { crm.received().len() == 2 },
    )
    .await;
    let in_flight: Vec<Map<String, Value>> = f
        .rows(&ids)
        .await
        .into_iter()
        .filter(|r| text(r, "brevo_processing_status") == "Processing")
        .collect();
    assert_eq!(
        emails_of(&in_flight),
        sent_emails(&crm),
        "the rows Processing are those whose requests are in flight"
    );
    engine.terminate();
    // The CRM answers only once the engine is stopping.
    wait_for(
        "the engine to take the signal",
        Duration::from_secs(30),
        || async { engine.stderr().contains("Signal received") },
    )
    .await;
    crm.release();

    engine.assert_exits_with(0, Duration::from_secs(10)).await;
    for row in &in_flight {
        let id = text(row, "id");
        assert_eq!(
            text(&f.row(&id).await, "brevo_processing_status"),
            "Complete",
            "the in-flight row {id} was recorded"
        );
    }
    // It stopped instead of draining the queue: no later batch was claimed
    // or sent.
    assert_eq!(
        f.counts("brevo").await,
        [("Complete".to_string(), 2), ("Queued".to_string(), 8)].into()
    );
    assert_eq!(crm.received().len(), 2, "no request after the stop");
}

/// The lower-cased emails of `rows`.
fn emails_of(rows: &[Map<String, Value>]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| text(r, "email").to_lowercase())
        .collect()
}

/// The emails Brevo was sent contacts for.
fn sent_emails(crm: &ScriptedCrm) -> BTreeSet<String> {
    crm.received()
        .iter()
        .filter_map(|r| r.body["email"].as_str().map(str::to_lowercase))
        .collect()
}

async fn a_watching_run_outlives_a_failed_cycle_and_syncs_once_the_database_answers_again(
    backend: Backend,
) {
    let Some((f, mut engine)) = watching_brevo(backend).await else {
        return;
    };

    // The claim's column goes away, as if the database failed every statement.
    let table = &f.db.table;
    let rename = |from: &str, to: &str| {
        format!("ALTER TABLE \"{table}\" RENAME COLUMN \"{from}\" TO \"{to}\"")
    };
    let status = "brevo_processing_status";
    let away = "brevo_processing_status_away";
    execute(&f.db.store, rename(status, away)).await;
    wait_for("a failed cycle", Duration::from_secs(10), || async {
        engine.stderr().contains("The sync cycle failed")
    })
    .await;
    execute(&f.db.store, rename(away, status)).await;

    let rows = generated_rows(5);
    f.insert(&rows).await;
    wait_for(
        "the rows queued after the failure to be Complete",
        Duration::from_secs(20),
        || async { f.count("brevo", "Complete").await == 5 },
    )
    .await;
    assert_each_row_synced_once(&f, "brevo", &ids_of(&rows)).await;
    engine.stop_with(0).await;
}
