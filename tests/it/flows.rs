//! The single-record flow against the sandbox's Brevo: 201 with an id, 204 then a
//! lookup, and a rejected SMS dropped instead of failing the contact.

use engine::sandbox::SandboxOptions;
use serde_json::{Value, json};

use crate::support::SandboxHarness;

fn status(row: &serde_json::Map<String, Value>) -> &str {
    row["brevo_processing_status"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_contact_answers_204_and_its_id_is_looked_up() {
    let h = SandboxHarness::new("brevo", SandboxOptions::default()).await;
    h.queue(&[("a".into(), "first@example.com".into())]).await;
    h.run().await;
    let created = h.row("a").await["brevo_contact_id"].clone();
    // The same email again, in another row and another case: an update (204).
    h.queue(&[("b".into(), " FIRST@example.com".into())]).await;
    h.run().await;
    let row = h.row("b").await;
    assert_eq!(status(&row), "Complete", "{row:?}");
    assert_eq!(row["brevo_contact_id"], created);
    assert_eq!(h.requests("GET /v3/contacts/{identifier}"), 1);
    assert_eq!(h.sandbox.brevo_contacts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_sms_is_dropped_and_the_contact_still_syncs() {
    let h = SandboxHarness::new("brevo", SandboxOptions::default()).await;
    h.queue_with(
        &[("a".into(), "one@example.com".into())],
        json!({"phone_number": "+1-555-9001"}),
    )
    .await;
    h.run().await;
    // Another contact with the same number, and one with no country code.
    h.queue_with(
        &[("b".into(), "two@example.com".into())],
        json!({"phone_number": "+1 555 9001"}),
    )
    .await;
    h.queue_with(
        &[("c".into(), "three@example.com".into())],
        json!({"phone_number": "555-9003"}),
    )
    .await;
    h.run().await;
    for id in ["a", "b", "c"] {
        let row = h.row(id).await;
        assert_eq!(status(&row), "Complete", "{row:?}");
        assert_eq!(row["brevo_processing_error"], Value::Null);
    }
    let contacts = h.sandbox.brevo_contacts();
    let sms: Vec<Option<&str>> = contacts
        .iter()
        .map(|c| c["attributes"]["SMS"].as_str())
        .collect();
    assert_eq!(sms, [Some("15559001"), None, None], "{contacts:?}");
}
