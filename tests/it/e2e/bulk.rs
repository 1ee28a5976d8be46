//! Brevo's asynchronous bulk flow (`[bulk]` in connectors/brevo.toml): a
//! claim of at least `min_rows` rows goes as one import, its process is
//! polled, and each row is confirmed by listing the contacts modified since
//! the import; rows the import skipped take the per-row flow.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use engine::clock::ManualClock;
use engine::store::Backend;
use serde_json::Value;

use super::{
    Fixture, assert_each_row_synced_once, brevo_by_email, generated_rows, ids_of, parse_time,
    sandbox_options, text, wait_for,
};
use crate::on_both_backends;

on_both_backends!(
    a_large_claim_goes_as_one_import_and_each_row_gets_its_contact_id_from_the_listing,
    rows_the_import_skipped_are_sent_one_by_one_and_end_with_their_own_error,
    a_claim_below_min_rows_takes_the_per_row_flow,
    a_run_killed_mid_import_resends_its_rows_after_the_lease_without_a_duplicate,
);

const IMPORT: &str = "POST /v3/contacts/import";
const PROCESS: &str = "GET /v3/processes/{processId}";
const LIST: &str = "GET /v3/contacts";
const CREATE: &str = "POST /v3/contacts";

/// A fixture whose Brevo mapping imports into list 7, with `lease_secs`.
async fn fixture(backend: Backend, lease_secs: u64) -> Option<Fixture> {
    Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "mappings/brevo.toml",
            "[fields]",
            "[params]\nlist_ids = [7]\n\n[fields]",
        );
        config.edit(
            "mappings/brevo.toml",
            "lease_secs = 600",
            &format!("lease_secs = {lease_secs}"),
        );
    })
    .await
}

async fn a_large_claim_goes_as_one_import_and_each_row_gets_its_contact_id_from_the_listing(
    backend: Backend,
) {
    let Some(f) = fixture(backend, 600).await else {
        return;
    };
    let rows = generated_rows(1_200);
    let ids = ids_of(&rows);
    f.insert(&rows).await;

    let summary = f.run_now("brevo").await;

    assert!(summary.all_complete());
    assert_each_row_synced_once(&f, "brevo", &ids).await;
    assert_eq!(f.requests(IMPORT), 1, "one import for the whole claim");
    assert!(f.requests(PROCESS) >= 1, "the process was read");
    // 1,200 contacts at 1,000 a page: two pages.
    assert_eq!(f.requests(LIST), 2);
    assert_eq!(f.requests(CREATE), 0, "no contact went one by one");
    let contacts = brevo_by_email(&f.sandbox);
    let (_, contact) = &contacts["contact-0001@e2e.example.com"];
    assert_eq!(contact["listIds"], serde_json::json!([7]));
    assert_eq!(contact["attributes"]["FIRSTNAME"], "Contact");
}

async fn rows_the_import_skipped_are_sent_one_by_one_and_end_with_their_own_error(
    backend: Backend,
) {
    let Some(f) = fixture(backend, 600).await else {
        return;
    };
    let mut rows = generated_rows(150);
    for i in [3, 70, 149] {
        rows[i].insert(
            "email".into(),
            Value::from(format!("broken-{i}@@example.com")),
        );
    }
    let ids = ids_of(&rows);
    f.insert(&rows).await;

    f.run_now("brevo").await;

    assert_eq!(f.requests(IMPORT), 1);
    // Only the three the import skipped (silently) went one by one.
    assert_eq!(f.requests(CREATE), 3);
    for (i, row) in f.rows(&ids).await.iter().enumerate() {
        if [3, 70, 149].contains(&i) {
            assert_eq!(text(row, "brevo_processing_status"), "Error", "{row:?}");
            assert!(
                text(row, "brevo_processing_error").contains("Invalid email address"),
                "{row:?}"
            );
        } else {
            assert_eq!(text(row, "brevo_processing_status"), "Complete", "{row:?}");
            assert!(!text(row, "brevo_contact_id").is_empty(), "{row:?}");
        }
    }
    assert_eq!(brevo_by_email(&f.sandbox).len(), 147);
}

async fn a_claim_below_min_rows_takes_the_per_row_flow(backend: Backend) {
    let Some(f) = fixture(backend, 600).await else {
        return;
    };
    // brevo.toml: min_rows = 100.
    let rows = generated_rows(99);
    let ids = ids_of(&rows);
    f.insert(&rows).await;

    f.run_now("brevo").await;

    assert_each_row_synced_once(&f, "brevo", &ids).await;
    assert_eq!(f.requests(IMPORT), 0);
    assert_eq!(f.requests(PROCESS), 0);
    assert_eq!(f.requests(CREATE), 99);
}

async fn a_run_killed_mid_import_resends_its_rows_after_the_lease_without_a_duplicate(
    backend: Backend,
) {
    let Some(f) = fixture(backend, 4).await else {
        return;
    };
    let rows = generated_rows(300);
    let ids = ids_of(&rows);
    f.insert(&rows).await;

    // Killed once the import is submitted, while it waits for the process.
    let mut engine = f.spawn(&["run", "--connector", "brevo"]);
    wait_for(
        "the import to be submitted",
        Duration::from_secs(20),
        || async { f.requests(IMPORT) >= 1 },
    )
    .await;
    engine.kill();
    engine.wait(Duration::from_secs(5)).await;
    assert_eq!(
        f.count("brevo", "Processing").await,
        300,
        "rows left claimed"
    );
    // Brevo applies the import all the same.
    wait_for(
        "the import to be applied",
        Duration::from_secs(10),
        || async { brevo_by_email(&f.sandbox).len() == 300 },
    )
    .await;

    // While the lease holds, nothing takes the rows. The clock is pinned just
    // before the lease ends rather than read: on a loaded machine the steps
    // above can outlast a short lease, and the real clock would then rightly
    // let the run take the rows.
    let lease = latest_lease(&f, &ids).await;
    let before_lease = ManualClock::new(lease - chrono::Duration::milliseconds(500));
    f.run("brevo", Arc::new(before_lease)).await;
    assert_eq!(f.count("brevo", "Processing").await, 300);
    assert_eq!(f.requests(IMPORT), 1);

    // After it, the rows go again as an import: an upsert of the same contacts.
    let wait =
        (lease - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(wait).await;
    f.run_now("brevo").await;

    assert_eq!(f.requests(IMPORT), 2);
    assert_each_row_synced_once(&f, "brevo", &ids).await;
}

/// When the last of these rows' leases ends (their `next_retry_at`).
async fn latest_lease(f: &Fixture, ids: &[String]) -> DateTime<Utc> {
    f.rows(ids)
        .await
        .iter()
        .map(|row| parse_time(&text(row, "next_retry_at")))
        .max()
        .expect("claimed rows")
}
