//! The seed's scenario (WO-016.5, Tests 2, 4 and 5): its three contacts queued in
//! the seed's table, one run of a shipped sync against the sandbox, then the
//! database and the CRM checked as the seed's report checked them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::Utc;
use engine::store::Backend;
use serde_json::Value;

use super::{Fixture, brevo_by_email, hubspot_by_email, ids_of, sandbox_options, text};
use crate::on_both_backends;

on_both_backends!(
    the_seeds_three_contacts_sync_to_hubspot,
    the_seeds_three_contacts_sync_to_brevo
);

/// The seed report's Test 4 query as a table, ordered by email. The CRM id is
/// shown as whether it is the id the sandbox gave the contact with that email.
fn test_4_table(
    rows: &[serde_json::Map<String, Value>],
    crm: &str,
    crm_ids: &BTreeMap<String, String>,
) -> String {
    let mut rows: Vec<_> = rows.iter().collect();
    rows.sort_by_key(|r| text(r, "email"));
    let mut out = format!(
        "{:<46} {:<8} {:<10} {:<14} {:<7} error\n",
        "email", "sync", "processing", "id from crm", "retries"
    );
    for row in rows {
        let email = text(row, "email");
        let id = text(row, &format!("{crm}_contact_id"));
        let matches = if !id.is_empty() && crm_ids.get(&email) == Some(&id) {
            "yes"
        } else {
            "no"
        };
        let error = match &row[&format!("{crm}_processing_error")] {
            Value::Null => "NULL".to_string(),
            other => other.to_string(),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{email:<46} {:<8} {:<10} {matches:<14} {:<7} {error}",
            text(row, &format!("{crm}_sync_status")),
            text(row, &format!("{crm}_processing_status")),
            text(row, "retry_count"),
        );
    }
    out
}

async fn the_seeds_three_contacts_sync_to_hubspot(backend: Backend) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    let seed = engine::demo::seed_rows();
    f.insert(&seed).await;
    let before = Utc::now().date_naive().to_string();

    let summary = f.run_now("hubspot").await;

    let after = Utc::now().date_naive().to_string();
    assert_eq!(summary.total(), 3);
    let contacts = hubspot_by_email(&f.sandbox);
    assert_eq!(
        contacts.len(),
        3,
        "the sandbox holds exactly the three contacts: {contacts:?}"
    );
    let ids: BTreeMap<String, String> = contacts
        .iter()
        .map(|(email, (id, _))| (email.clone(), id.clone()))
        .collect();
    let rows = f.rows(&ids_of(&seed)).await;
    assert_snapshot!(
        "seed_hubspot_database",
        test_4_table(&rows, "hubspot", &ids)
    );

    // Test 5: what HubSpot holds, per contact.
    for n in 1..=3 {
        let (_, contact) = &contacts[&format!("hubspot-scheduler-test-{n}@scrapersky-test.com")];
        let properties = contact["properties"].as_object().expect("properties");
        let property = |name: &str| properties.get(name).and_then(Value::as_str);
        assert_eq!(property("firstname"), Some("Scheduler"));
        assert_eq!(property("lastname"), Some(format!("Test {n}").as_str()));
        assert_eq!(
            property("domain_id"),
            Some("1ad6264b-a0b6-4551-860a-1326b2bfa28f")
        );
        assert_eq!(
            property("page_id"),
            Some("ddc03eef-2550-46de-aca8-bbdb7cf525cb")
        );
        let sync_date = property("sync_date").expect("a sync_date");
        assert!(
            sync_date == before || sync_date == after,
            "sync_date {sync_date} is today's UTC date ({after})"
        );
        match n {
            3 => assert!(
                !properties.contains_key("phone"),
                "a NULL phone is left out, never \"None\": {properties:?}"
            ),
            _ => assert_eq!(property("phone"), Some(format!("+1555900{n}").as_str())),
        }
    }
}

async fn the_seeds_three_contacts_sync_to_brevo(backend: Backend) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    let seed = engine::demo::seed_rows();
    f.insert(&seed).await;

    let summary = f.run_now("brevo").await;

    assert_eq!(summary.total(), 3);
    let contacts = brevo_by_email(&f.sandbox);
    assert_eq!(
        contacts.len(),
        3,
        "the sandbox holds exactly the three contacts: {contacts:?}"
    );
    let ids: BTreeMap<String, String> = contacts
        .iter()
        .map(|(email, (id, _))| (email.clone(), id.clone()))
        .collect();
    let rows = f.rows(&ids_of(&seed)).await;
    assert_snapshot!("seed_brevo_database", test_4_table(&rows, "brevo", &ids));

    for n in 1..=3 {
        let (_, contact) = &contacts[&format!("hubspot-scheduler-test-{n}@scrapersky-test.com")];
        let attributes = contact["attributes"].as_object().expect("attributes");
        let attribute = |name: &str| attributes.get(name).and_then(Value::as_str);
        assert_eq!(attribute("FIRSTNAME"), Some("Scheduler"));
        assert_eq!(attribute("LASTNAME"), Some(format!("Test {n}").as_str()));
        match n {
            3 => assert!(
                !attributes.contains_key("SMS"),
                "a NULL phone is left out: {attributes:?}"
            ),
            // Brevo shows SMS as the digits of the E.164 number.
            _ => assert_eq!(attribute("SMS"), Some(format!("1555900{n}").as_str())),
        }
    }
}
