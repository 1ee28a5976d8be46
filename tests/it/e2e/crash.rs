//! Crashes: a run killed with SIGKILL mid-batch leaves its rows `Processing` under
//! a lease; nothing takes them while the lease holds, and the next run after it
//! expires sends them again, which updates the same CRM records.

use std::sync::Arc;
use std::time::Duration;

use engine::clock::{Clock, ManualClock};
use engine::store::Backend;

use super::{
    Fixture, assert_each_row_synced_once, generated_rows, ids_of, parse_time, sandbox_options,
    text, wait_for,
};
use crate::on_both_backends;

on_both_backends!(
    a_run_killed_mid_batch_leaves_rows_processing_that_the_next_run_after_the_lease_completes_once,
    rows_of_a_crashed_run_are_reclaimed_after_the_other_crms_sync_cleared_the_shared_lease,
);

const ROWS: usize = 60;

async fn a_run_killed_mid_batch_leaves_rows_processing_that_the_next_run_after_the_lease_completes_once(
    backend: Backend,
) {
    let Some(f) = Fixture::new(backend, sandbox_options(150), |config| {
        config.edit(
            "mappings/hubspot.toml",
            "batch_size = 500",
            "batch_size = 5",
        );
        config.edit(
            "mappings/hubspot.toml",
            "lease_secs = 600",
            "lease_secs = 2",
        );
        // Fewer in flight than the window: no burst, so `--workers 1` is one loop.
        config.edit(
            "connectors/hubspot.toml",
            "max_in_flight = 100",
            "max_in_flight = 4",
        );
    })
    .await
    else {
        return;
    };
    let rows = generated_rows(ROWS);
    let ids = ids_of(&rows);
    f.insert(&rows).await;

    // One worker: a batch of 5 every ~150 ms, so the run lasts ~2 s.
    let mut engine = f.spawn(&["run", "--connector", "hubspot", "--workers", "1"]);
    // Kill it while a request is at the CRM, after some batches were recorded:
    // the rows of that request are `Processing` until the answer is recorded.
    wait_for(
        "some rows Complete and a request in flight",
        Duration::from_secs(10),
        // The sandbox is asked last, so the kill follows its answer at once.
        || async { f.count("hubspot", "Complete").await > 0 && f.in_flight() > 0 },
    )
    .await;
    engine.kill();
    engine.wait(Duration::from_secs(5)).await;
    // The dead process's instance slot is freed by the OS (lock file) or by
    // PostgreSQL (advisory lock of a closed session), without anyone's help.
    let lock_name = format!("mapping:hubspot:{}", f.db.table);
    wait_for(
        "the killed run's instance slot to be free",
        Duration::from_secs(5),
        || async {
            match f
                .db
                .store
                .acquire_instance_slot(&lock_name, 1)
                .await
                .unwrap()
            {
                Some(slot) => slot.release().await.is_ok(),
                None => false,
            }
        },
    )
    .await;

    let stuck: Vec<_> = f
        .rows(&ids)
        .await
        .into_iter()
        .filter(|r| text(r, "hubspot_processing_status") == "Processing")
        .collect();
    let complete = f.count("hubspot", "Complete").await;
    assert!(!stuck.is_empty(), "the killed run left rows Processing");
    assert!(
        complete > 0 && (complete as usize) < ROWS,
        "killed mid-run: {complete} of {ROWS} Complete"
    );
    let lease = stuck
        .iter()
        .map(|r| parse_time(&text(r, "next_retry_at")))
        .max()
        .expect("stuck rows");

    // While the lease holds (the clock pinned just before it ends), a new run
    // syncs every other row and leaves the stuck ones to their owner.
    let before_lease = ManualClock::new(lease - chrono::Duration::milliseconds(500));
    f.run("hubspot", Arc::new(before_lease)).await;
    for row in &stuck {
        let row = f.row(&text(row, "id")).await;
        assert_eq!(
            text(&row, "hubspot_processing_status"),
            "Processing",
            "a live lease is not taken: {row:?}"
        );
    }
    assert_eq!(
        f.count("hubspot", "Complete").await as usize,
        ROWS - stuck.len()
    );

    // After the lease, the real binary takes them again and finishes.
    let wait =
        (lease - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(wait).await;
    let mut restart = f.spawn(&["run", "--connector", "hubspot"]);
    restart.assert_exits_with(0, Duration::from_secs(10)).await;

    assert_eq!(
        f.counts("hubspot").await,
        [("Complete".to_string(), ROWS as i64)].into()
    );
    assert_each_row_synced_once(&f, "hubspot", &ids).await;
}

/// The seed's table shares `next_retry_at` (the lease) between HubSpot and Brevo.
/// A Brevo run dies holding rows; once its lease expires HubSpot's sync takes the
/// same rows and, completing them, sets `next_retry_at` to NULL. The Brevo rows
/// are still `Processing` and must be reclaimable, not stuck for good (the seed's
/// "a row stuck in Processing after a crash stays stuck").
async fn rows_of_a_crashed_run_are_reclaimed_after_the_other_crms_sync_cleared_the_shared_lease(
    backend: Backend,
) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    let seed = engine::demo::seed_rows();
    let ids = ids_of(&seed);
    f.insert(&seed).await;
    let clock = ManualClock::new(chrono::Utc::now());

    // What a Brevo run killed after its claim leaves behind.
    let brevo = f.spec("brevo");
    let now = clock.utc();
    let claimed =
        f.db.store
            .claim(brevo, 10, now, now + chrono::Duration::seconds(600))
            .await
            .unwrap();
    assert_eq!(claimed.len(), 3);

    clock.advance(Duration::from_secs(601));
    f.run("hubspot", Arc::new(clock.clone())).await;
    assert_eq!(f.count("hubspot", "Complete").await, 3);
    assert_eq!(f.count("brevo", "Processing").await, 3);
    for row in f.rows(&ids).await {
        assert_eq!(
            row["next_retry_at"],
            serde_json::Value::Null,
            "HubSpot's Complete cleared the shared lease"
        );
    }

    f.run("brevo", Arc::new(clock.clone())).await;
    assert_eq!(
        f.counts("brevo").await,
        [("Complete".to_string(), 3)].into()
    );
    assert_each_row_synced_once(&f, "brevo", &ids).await;
    assert_each_row_synced_once(&f, "hubspot", &ids).await;
}
