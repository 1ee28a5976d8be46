//! The connector language's answers to what unseen CRMs needed: a conflict
//! whose existing id is in the body (`id_pointer` on a rule), a request size
//! limit (`max_request_bytes`), plan tiers picked by the deployment, and
//! `check --database --mapping`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Answer, Crm, Ended, ExampleSync, Imitation, Request, synced};
use crate::support::{ConfigDir, run_engine};

/// A CRM that answers a duplicate create with 409 and the existing profile's
/// id in `/errors/0/meta/duplicate_profile_id`, the message saying only
/// "A profile already exists".
#[derive(Default)]
struct Profiles {
    /// (id, email)
    profiles: Vec<(String, String)>,
    /// Emails whose 409 carries no id.
    no_id: Vec<String>,
    /// Bodies of the batch requests, as received.
    batches: Vec<Value>,
}

impl Crm for Profiles {
    fn answer(&mut self, request: &Request, _: &str) -> Answer {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/profiles") => {
                let email = request.body["data"]["email"].as_str().unwrap_or_default();
                let existing = self.profiles.iter().find(|(_, e)| e == email);
                match existing {
                    Some((id, _)) if !self.no_id.iter().any(|e| e == email) => Answer::json(
                        409,
                        json!({"errors": [{"status": 409, "code": "duplicate_profile",
                            "detail": "A profile already exists with one of these identifiers.",
                            "meta": {"duplicate_profile_id": id}}]}),
                    ),
                    Some(_) => Answer::json(
                        409,
                        json!({"errors": [{"status": 409, "code": "duplicate_profile",
                            "detail": "A profile already exists with one of these identifiers."}]}),
                    ),
                    None => {
                        let id = format!("P{}", self.profiles.len() + 1);
                        self.profiles.push((id.clone(), email.to_string()));
                        Answer::json(201, json!({"data": {"id": id}}))
                    }
                }
            }
            ("PATCH", path) if path.starts_with("/profiles/") => {
                Answer::json(200, json!({"data": {"id": &path["/profiles/".len()..]}}))
            }
            ("POST", "/profiles/batch") => {
                self.batches.push(request.body.clone());
                let results: Vec<Value> = request.body["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|item| json!({"id": format!("B-{}", item["ref"].as_str().unwrap_or_default()), "ref": item["ref"]}))
                    .collect();
                Answer::json(200, json!({"results": results}))
            }
            _ => Answer::json(404, json!({"errors": [{"detail": "no such route"}]})),
        }
    }
}

const PROFILES: &str = r#"
base_url = "https://api.profiles.invalid"
max_request_bytes = 2000

[auth]
kind = "none"

[errors]
message_pointers = ["/errors/0/detail"]

[upsert]
mode = "single"

[upsert.single]
method = "POST"
path = "/profiles"
body = { data = "{{fields}}" }
id_pointer = "/data/id"
rules = [{ status = 409, id_pointer = "/errors/0/meta/duplicate_profile_id", then = "update" }]

[upsert.update]
method = "PATCH"
path = "/profiles/{{id}}"
body = { data = "{{fields}}" }
id_pointer = "/data/id"

[upsert.batch]
method = "POST"
path = "/profiles/batch"
max_items = 50
body = { items = "{{items}}" }
item = { ref = "{{trace_id}}", data = "{{fields}}" }

[upsert.batch.results]
results_pointer = "/results"
id_pointer = "/id"
match_pointer = "/ref"
"#;

const MAPPING: &str = r#"
[fields]
email = "{{email}}"
name = "{{name}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_whose_existing_id_is_in_the_body_becomes_an_update_of_that_id() {
    let mut crm = Profiles::default();
    crm.profiles
        .push(("P-41".into(), "known@example.com".into()));
    crm.profiles
        .push(("P-42".into(), "noid@example.com".into()));
    crm.no_id.push("noid@example.com".into());
    let crm = Imitation::start(crm).await;
    let sync =
        ExampleSync::start_with_text("profiles", PROFILES, &crm.base_url, MAPPING, &[]).await;
    sync.queue(&[
        ("new", "new@example.com", "New"),
        ("known", "known@example.com", "Known"),
        ("noid", "noid@example.com", "No Id"),
    ])
    .await;
    sync.run().await;

    assert_eq!(sync.ended("new").await, synced("P3"));
    assert_eq!(sync.ended("known").await, synced("P-41"));
    assert_eq!(crm.count("PATCH /profiles/P-41"), 1);
    // Without the id the 409 fails with the CRM's message, not a bare id.
    assert_eq!(
        sync.ended("noid").await,
        Ended {
            status: "Error".into(),
            crm_id: None,
            error: Some(
                "HTTP 409 Conflict: A profile already exists with one of these identifiers.".into()
            ),
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_max_request_bytes_fails_its_row_at_once_and_is_never_sent() {
    let crm = Imitation::start(Profiles::default()).await;
    let sync =
        ExampleSync::start_with_text("profiles", PROFILES, &crm.base_url, MAPPING, &[]).await;
    let huge = "x".repeat(5000);
    sync.queue(&[
        ("small", "small@example.com", "Small"),
        ("huge", "huge@example.com", &huge),
    ])
    .await;
    sync.run().await;

    assert_eq!(sync.ended("small").await, synced("P1"));
    let ended = sync.ended("huge").await;
    assert_eq!(ended.status, "Error");
    let error = ended.error.unwrap();
    assert!(
        regex::Regex::new(r"^payload too large: 50\d\d bytes, the connector allows 2000$")
            .unwrap()
            .is_match(&error),
        "{error}"
    );
    // Failed on the first try: no retry spent, one request in all.
    assert_eq!(sync.row("huge").await["crm_retry_count"], 0);
    assert_eq!(crm.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_batch_only_the_oversized_row_fails_and_rows_too_big_together_go_in_smaller_requests()
{
    let crm = Imitation::start(Profiles::default()).await;
    let batch = PROFILES.replace("mode = \"single\"", "mode = \"batch\"");
    let sync = ExampleSync::start_with_text("profiles", &batch, &crm.base_url, MAPPING, &[]).await;
    // 700-byte names: each item fits alone (2,000), three do not fit together.
    let big = "y".repeat(700);
    let huge = "x".repeat(5000);
    sync.queue(&[
        ("a", "a@example.com", &big),
        ("b", "b@example.com", &big),
        ("c", "c@example.com", &big),
        ("huge", "huge@example.com", &huge),
        ("d", "d@example.com", "Small"),
    ])
    .await;
    sync.run().await;

    for id in ["a", "b", "c", "d"] {
        assert_eq!(sync.ended(id).await, synced(&format!("B-{id}")), "{id}");
    }
    let huge = sync.ended("huge").await;
    assert_eq!(huge.status, "Error");
    assert!(
        huge.error
            .as_deref()
            .unwrap()
            .starts_with("payload too large: "),
        "{huge:?}"
    );
    let sizes: Vec<usize> = crm.with(|c| c.batches.iter().map(|b| b.to_string().len()).collect());
    assert!(sizes.len() >= 2, "split into requests that fit: {sizes:?}");
    assert!(sizes.iter().all(|s| *s <= 2000), "{sizes:?}");
    let sent: usize = crm.with(|c| {
        c.batches
            .iter()
            .map(|b| b["items"].as_array().unwrap().len())
            .sum()
    });
    assert_eq!(sent, 4, "every row but the oversized one, each once");
}

/// `engine check` with `env`, on the shipped config after `edit`.
fn check_with(edit: impl FnOnce(&ConfigDir), env: &[(&str, &str)]) -> String {
    let config = ConfigDir::shipped();
    edit(&config);
    let mut vars = vec![("HUBSPOT_ACCESS_TOKEN", "x"), ("BREVO_API_KEY", "x")];
    vars.extend_from_slice(env);
    run_engine(config.path(), &["check"], &vars)
}

#[test]
fn check_prints_the_limits_of_the_tier_the_environment_picks_and_of_overridden_windows() {
    insta::assert_snapshot!(check_with(
        |_| {},
        &[
            ("HUBSPOT_TIER", "professional"),
            ("BREVO_RATE_LIMIT_CONTACTS_PER_SECOND", "15"),
        ]
    ));
}

#[test]
fn a_tier_the_connector_does_not_name_is_an_error_listing_its_tiers() {
    insta::assert_snapshot!(check_with(|_| {}, &[("HUBSPOT_TIER", "gold")]));
}

#[test]
fn a_window_override_that_is_not_a_count_is_an_error() {
    insta::assert_snapshot!(check_with(|_| {}, &[("HUBSPOT_RATE_LIMIT_DAILY", "lots")]));
}

#[test]
fn a_tier_naming_an_unknown_window_and_a_tier_repeating_the_default_are_errors() {
    insta::assert_snapshot!(check_with(
        |config| {
            config
                .edit(
                    "connectors/hubspot.toml",
                    "ten_secondly = 190\ndaily = 625000",
                    "ten_second = 190\ndaily = 625000",
                )
                .edit(
                    "connectors/hubspot.toml",
                    "[tiers.enterprise]",
                    "[tiers.free_starter]",
                );
        },
        &[]
    ));
}

#[test]
fn an_update_rule_that_does_not_say_where_the_id_is_is_an_error() {
    insta::assert_snapshot!(check_with(
        |config| {
            config.edit(
                "connectors/hubspot.toml",
                r#"message_regex = 'Existing ID: (\d+)', then = "update""#,
                r#"message_regex = 'Existing ID', then = "update""#,
            );
        },
        &[]
    ));
}

#[test]
fn an_id_pointer_on_a_rule_that_does_not_update_and_a_body_value_without_body_has_are_errors() {
    insta::assert_snapshot!(check_with(
        |config| {
            config
                .edit(
                    "connectors/brevo.toml",
                    r#"{ status = 204, then = "lookup" }"#,
                    r#"{ status = 204, id_pointer = "/id", then = "lookup" }"#,
                )
                .edit(
                    "connectors/hubspot.toml",
                    r#"message_regex = "daily limit","#,
                    r#"body_value = "DAILY","#,
                );
        },
        &[]
    ));
}

#[test]
fn check_database_checks_only_the_mappings_named_with_mapping() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "table = \"contacts\"",
        "table = \"people\"",
    );
    let db = format!("sqlite://{}", config.path().join("check.db").display());
    let secrets = [("HUBSPOT_ACCESS_TOKEN", "x"), ("BREVO_API_KEY", "x")];
    // Only Brevo's table exists: HubSpot's mapping is not migrated yet.
    let migrated = run_engine(
        config.path(),
        &["migrate", "--mapping", "brevo", "--database", &db],
        &secrets,
    );
    assert!(migrated.starts_with("exit code: 0"), "{migrated}");
    let everything = run_engine(config.path(), &["check", "--database", &db], &secrets);
    assert!(everything.starts_with("exit code: 2"), "{everything}");
    let brevo_only = run_engine(
        config.path(),
        &["check", "--database", &db, "--mapping", "brevo"],
        &secrets,
    );
    insta::assert_snapshot!(brevo_only);
    let unknown = run_engine(
        config.path(),
        &["check", "--database", &db, "--mapping", "brevoo"],
        &secrets,
    );
    insta::assert_snapshot!("check_database_with_an_unknown_mapping", unknown);
}

/// The limits in force, as the plan holds them, for one environment.
fn hubspot_limits(env: &[(&str, &str)]) -> Vec<(String, u32)> {
    let config = ConfigDir::shipped();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let checked = engine::check::check_dir(config.path(), &env);
    checked.plan.connectors["hubspot"]
        .pacing
        .windows()
        .iter()
        .map(|w| (w.name.clone(), w.requests))
        .collect()
}

#[test]
fn the_tier_and_overrides_set_the_windows_the_engine_paces_by() {
    let pairs = |a: u32, b: u32| vec![("ten_secondly".to_string(), a), ("daily".to_string(), b)];
    assert_eq!(hubspot_limits(&[]), pairs(100, 250_000));
    assert_eq!(
        hubspot_limits(&[("HUBSPOT_TIER", "enterprise")]),
        pairs(190, 1_000_000)
    );
    assert_eq!(
        hubspot_limits(&[
            ("HUBSPOT_TIER", "enterprise"),
            ("HUBSPOT_RATE_LIMIT_TEN_SECONDLY", "250")
        ]),
        pairs(250, 1_000_000)
    );
}
