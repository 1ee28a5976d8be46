//! Batch upserts against the sandbox's HubSpot: per-item results of a 207 map
//! back to their rows, keys are de-duplicated within a batch, and a batch rejected
//! as a whole is bisected so one bad row cannot fail the other 99.

use engine::sandbox::SandboxOptions;
use serde_json::{Map, Value, json};

use crate::support::SandboxHarness;

fn rows(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("row-{i:04}"), format!("batch-{i}@example.com")))
        .collect()
}

fn status(row: &Map<String, Value>) -> &str {
    row["hubspot_processing_status"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_item_errors_of_a_207_end_their_own_rows_and_the_others_complete() {
    let h = SandboxHarness::new(
        "hubspot",
        SandboxOptions {
            hubspot_upsert_partial: true,
            ..SandboxOptions::default()
        },
    )
    .await;
    let mut queued = rows(5);
    queued[2].1 = "not-an-email".into();
    h.queue(&queued).await;
    h.run().await;
    for (id, _) in &queued {
        let row = h.row(id).await;
        if id == "row-0002" {
            assert_eq!(status(&row), "Error", "{row:?}");
            assert!(
                row["hubspot_processing_error"]
                    .as_str()
                    .unwrap()
                    .contains("not-an-email"),
                "{row:?}"
            );
        } else {
            assert_eq!(status(&row), "Complete", "{row:?}");
            assert!(row["hubspot_contact_id"].is_string());
        }
    }
    assert_eq!(
        h.requests("POST /crm/v3/objects/contacts/batch/upsert"),
        1,
        "a 207 is a normal answer: no resend"
    );
    assert_eq!(h.sandbox.hubspot_contacts().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_sharing_an_email_in_any_case_are_sent_once_and_share_the_record() {
    let h = SandboxHarness::new("hubspot", SandboxOptions::default()).await;
    let mut queued = rows(5);
    queued[1].1 = "Same@Example.com".into();
    queued[3].1 = " same@example.com ".into();
    queued[4].1 = "SAME@EXAMPLE.COM".into();
    h.queue(&queued).await;
    h.run().await;
    let ids: Vec<Value> = futures::future::join_all(queued.iter().map(|(id, _)| h.row(id)))
        .await
        .into_iter()
        .map(|row| {
            assert_eq!(status(&row), "Complete", "{row:?}");
            row["hubspot_contact_id"].clone()
        })
        .collect();
    assert_eq!(ids[1], ids[3]);
    assert_eq!(ids[1], ids[4]);
    assert_eq!(
        h.requests("POST /crm/v3/objects/contacts/batch/upsert"),
        1,
        "no 400 for duplicate ids, so no resend"
    );
    assert_eq!(h.sandbox.hubspot_contacts().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_rejected_for_one_bad_row_is_bisected_until_that_row_is_alone() {
    let h = SandboxHarness::new("hubspot", SandboxOptions::default()).await;
    let mut queued = rows(100);
    queued[37].1 = "not an email".into();
    h.queue(&queued).await;
    h.run().await;
    let mut complete = 0;
    for (id, _) in &queued {
        let row = h.row(id).await;
        if id == "row-0037" {
            assert_eq!(status(&row), "Error");
            assert!(
                row["hubspot_processing_error"]
                    .as_str()
                    .unwrap()
                    .contains("INVALID_EMAIL"),
                "{row:?}"
            );
        } else {
            assert_eq!(status(&row), "Complete", "{row:?}");
            complete += 1;
        }
    }
    assert_eq!(complete, 99);
    assert_eq!(h.sandbox.hubspot_contacts().len(), 99);
    // 1 whole batch, then two halves per level down a path of depth ceil(log2 100) = 7.
    assert!(
        h.requests("POST /crm/v3/objects/contacts/batch/upsert") <= 1 + 2 * 7,
        "{} requests",
        h.requests("POST /crm/v3/objects/contacts/batch/upsert")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_500_rows_goes_out_as_five_batches_of_100() {
    let h = SandboxHarness::new("hubspot", SandboxOptions::default()).await;
    h.queue(&rows(500)).await;
    h.run().await;
    assert_eq!(h.requests("POST /crm/v3/objects/contacts/batch/upsert"), 5);
    assert_eq!(h.sandbox.hubspot_contacts().len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_limit_hands_rows_back_for_an_hour_without_spending_retries() {
    let h = SandboxHarness::new(
        "hubspot",
        SandboxOptions {
            hubspot_daily: Some(1),
            ..SandboxOptions::default()
        },
    )
    .await;
    let queued = rows(150);
    h.queue(&queued).await;
    let started = std::time::Instant::now();
    h.run().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the run ends instead of waiting for the reset"
    );
    let mut complete = 0;
    let mut deferred = 0;
    for (id, _) in &queued {
        let row = h.row(id).await;
        match status(&row) {
            "Complete" => complete += 1,
            "Queued" => {
                assert_eq!(row["retry_count"], json!(0), "a rate limit spends no retry");
                assert!(row["next_retry_at"].is_string(), "{row:?}");
                deferred += 1;
            }
            other => panic!("unexpected status {other}: {row:?}"),
        }
    }
    // Two batches (100 and 50) race for the one request the day allows.
    assert!(
        matches!((complete, deferred), (100, 50) | (50, 100)),
        "{complete} complete, {deferred} deferred"
    );
    assert_eq!(
        h.sandbox.stats()["rate_limited"],
        json!(1),
        "one 429, then no more probing"
    );
}
