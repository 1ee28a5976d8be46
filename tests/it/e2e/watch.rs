//! `engine run --watch`: a long-running sync that picks up rows queued while it
//! runs, and stops cleanly on SIGTERM, recording the rows it is sending first.

use std::time::Duration;

use engine::store::Backend;

use super::{
    Engine, Fixture, assert_each_row_synced_once, generated_rows, ids_of, sandbox_options, text,
    wait_for,
};
use crate::on_both_backends;
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
    let Some(f) = Fixture::new(backend, sandbox_options(300), |config| {
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
    let rows = generated_rows(10);
    let ids = ids_of(&rows);
    f.insert(&rows).await;
    // One worker, two rows per batch, 300 ms per request: five batches in ~1.5 s.
    let mut engine = f.spawn(&["run", "--connector", "brevo", "--watch", "--workers", "1"]);
    wait_for("a batch at the CRM", Duration::from_secs(10), || async {
        f.in_flight() > 0
    })
    .await;
    let in_flight: Vec<String> = f
        .rows(&ids)
        .await
        .into_iter()
        .filter(|r| text(r, "brevo_processing_status") == "Processing")
        .map(|r| text(&r, "id"))
        .collect();
    assert!(
        !in_flight.is_empty(),
        "rows are Processing while their requests are in flight"
    );
    engine.terminate();

    engine.assert_exits_with(0, Duration::from_secs(10)).await;
    let counts = f.counts("brevo").await;
    assert_eq!(
        counts.get("Processing"),
        None,
        "no row is left Processing: {counts:?}"
    );
    for id in &in_flight {
        assert_eq!(
            text(&f.row(id).await, "brevo_processing_status"),
            "Complete",
            "the in-flight row {id} was recorded"
        );
    }
    // It stopped instead of draining the queue: later batches were never claimed.
    let (complete, queued) = (
        counts.get("Complete").copied().unwrap_or(0),
        counts.get("Queued").copied().unwrap_or(0),
    );
    assert!(queued > 0, "{counts:?}");
    assert_eq!(complete + queued, 10, "{counts:?}");
    assert_eq!(
        f.sandbox.brevo_contacts().len() as i64,
        complete,
        "the CRM holds the Complete rows and no other"
    );
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
