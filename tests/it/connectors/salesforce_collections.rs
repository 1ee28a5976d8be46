//! `connectors/salesforce-collections.toml` against the Salesforce org imitation
//! of `salesforce` (facts and sources there): one request for many records,
//! results matched by position, per-record failures, a locked record retried.

use super::salesforce::{Org, SECRETS, assert_handed_back_for_an_hour, token_url_at};
use super::{Ended, ExampleSync, Imitation, synced};

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
    let mut org = Org::default();
    let known = org.seed("known@example.com", "Old");
    org.seed("twice@example.com", "One");
    org.seed("twice@example.com", "Two");
    org.locked_once.push("locked@example.com".into());
    org.throttle_key = Some("busy@example.com".into());
    let org = Imitation::start(org).await;
    let sync = ExampleSync::start(
        "salesforce-collections",
        &org.base_url,
        MAPPING,
        SECRETS,
        token_url_at(&org.base_url),
    )
    .await;
    sync.queue(&[
        ("new", "new@example.com", "New Person"),
        ("known", "Known@Example.com", "Known Person"),
        ("twice", "twice@example.com", "Twice Person"),
        ("bad", "bad.example.com", "Bad Person"),
        ("locked", "locked@example.com", "Locked Person"),
    ])
    .await;
    sync.run().await;
    // Five rows, one request.
    let route = "PATCH /services/data/v60.0/composite/sobjects/Contact/Email_Key__c";
    assert_eq!(org.count(route), 1);
    let locked = sync.ended("locked").await;
    assert_eq!(locked.status, "Queued", "{locked:?}");
    sync.run_after_retry_delay().await;

    let id_of = |key: &str| org.with(|o| o.with_key(key)[0].id.clone());
    assert_eq!(sync.ended("new").await, synced(&id_of("new@example.com")));
    assert_eq!(sync.ended("known").await, synced(&known));
    assert_eq!(
        sync.ended("locked").await,
        synced(&id_of("locked@example.com"))
    );
    let twice = sync.ended("twice").await;
    assert_eq!(twice.status, "Error");
    assert!(
        twice
            .error
            .as_deref()
            .unwrap()
            .contains("more than one record"),
        "{twice:?}"
    );
    assert_eq!(
        sync.ended("bad").await,
        Ended {
            status: "Error".into(),
            crm_id: None,
            error: Some("Email: invalid email address: bad.example.com".into()),
        }
    );
    assert_eq!(org.with(|o| o.contacts.len()), 5);

    // The org's allocation is spent: the whole request is refused, and its
    // rows wait an hour without an error.
    sync.queue(&[("busy", "busy@example.com", "Busy Person")])
        .await;
    sync.run().await;
    assert_eq!(org.answered(403), 1);
    assert_handed_back_for_an_hour(&sync, "busy").await;
}
