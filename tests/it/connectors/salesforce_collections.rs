//! `connectors/salesforce-collections.toml` against the Salesforce org imitation
//! of `salesforce` (facts and sources there): one request for many records,
//! results matched by position, per-record failures, a locked record retried.

use super::salesforce::{
    assert_handed_back_for_an_hour, assert_the_shared_rows_ended, sync_against_an_org,
};
use super::synced;

const MAPPING: &str = r#"
[fields]
attributes = { type = "Contact" }
Email_Key__c = "{{lower (trim email)}}"
LastName = "{{last_name name}}"
Email = "{{email}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_collections_upserts_many_records_in_one_request_fails_bad_ones_alone_retries_a_locked_one_and_hands_back_rows_when_the_allocation_is_spent()
 {
    let (org, sync, known) = sync_against_an_org("salesforce-collections", MAPPING, |org| {
        org.locked_once.push("locked@example.com".into());
    })
    .await;
    sync.queue(&[("locked", "locked@example.com", "Locked Person")])
        .await;
    sync.run().await;
    // Five rows, one request.
    let route = "PATCH /services/data/v60.0/composite/sobjects/Contact/Email_Key__c";
    assert_eq!(org.count(route), 1);
    let locked = sync.ended("locked").await;
    assert_eq!(locked.status, "Queued", "{locked:?}");
    sync.run_after_retry_delay().await;

    assert_the_shared_rows_ended(
        &org,
        &sync,
        &known,
        "more than one record",
        "Email: invalid email address: bad.example.com",
    )
    .await;
    let locked_id = org.with(|o| o.with_key("locked@example.com")[0].id.clone());
    assert_eq!(sync.ended("locked").await, synced(&locked_id));
    assert_eq!(org.with(|o| o.contacts.len()), 5);

    // The org's allocation is spent: the whole request is refused, and its
    // rows wait an hour without an error.
    sync.queue(&[("busy", "busy@example.com", "Busy Person")])
        .await;
    sync.run().await;
    assert_eq!(org.answered(403), 1);
    assert_handed_back_for_an_hour(&sync, "busy").await;
}
