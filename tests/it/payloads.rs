//! The exact JSON bodies the shipped connectors send for the seed's three rows
//! (plus a name with quotes, a backslash, a newline and emoji), with the clock
//! pinned so the sync date is stable.

use std::sync::Arc;

use engine::clock::{Clock, ManualClock};
use engine::engine::RunOptions;
use engine::sandbox::{Sandbox, SandboxOptions};
use engine::store::Backend;
use serde_json::{Value, json};

use crate::contract::recorder::Recorder;
use crate::support::{ConfigDir, Harness, point_at, quiet};

/// Runs `connector`'s shipped mapping over the seed rows through a recording
/// proxy, and returns every request as `METHOD path?query` and its JSON body.
async fn recorded_requests(connector: &str) -> Vec<(String, Value)> {
    let sandbox = Sandbox::start(SandboxOptions {
        port: 0,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let recorder = Recorder::start(&sandbox.base_url()).await;
    let env = engine::demo::sandbox_env(&recorder.base_url);
    let h = Harness::start(
        Backend::Sqlite,
        ConfigDir::shipped(),
        env,
        &[connector],
        |config, db| {
            point_at(config, db, &["hubspot", "brevo"]);
        },
    )
    .await
    .expect("SQLite is always there");
    let mut rows = engine::demo::seed_rows();
    let mut tricky = rows[0].clone();
    tricky.insert("id".into(), json!("5d2c1f0e-0000-4000-8000-000000000004"));
    tricky.insert("email".into(), json!("O'Brien+tag@Example.com"));
    tricky.insert("name".into(), json!("Zoë \"Zed\" O'Brien \\ 🚀\nJr"));
    tricky.insert("phone_number".into(), json!("+44 (20) 7946.0958"));
    rows.push(tricky);
    h.insert(&rows).await;

    let clock = ManualClock::new("2025-11-19T02:13:46Z".parse().unwrap());
    assert_eq!(clock.utc().to_rfc3339(), "2025-11-19T02:13:46+00:00");
    let options = RunOptions {
        workers: 1,
        ..quiet()
    };
    h.run_connector(connector, Arc::new(clock), options).await;

    let mut requests: Vec<(String, Value)> = recorder
        .requests()
        .into_iter()
        .map(|r| {
            let target = match &r.query {
                Some(query) => format!("{} {}?{query}", r.method, r.path),
                None => format!("{} {}", r.method, r.path),
            };
            (
                target,
                serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            )
        })
        .collect();
    requests.sort_by_key(|request| request.1.to_string());
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_rows_go_to_hubspot_as_one_batch_upsert_keyed_on_email() {
    let requests = recorded_requests("hubspot").await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (target, mut body) = requests.into_iter().next().unwrap();
    assert_eq!(target, "POST /crm/v3/objects/contacts/batch/upsert");
    // Inputs are built concurrently-safe but in claim order; sort for a stable snapshot.
    body["inputs"]
        .as_array_mut()
        .unwrap()
        .sort_by(|a, b| a["id"].to_string().cmp(&b["id"].to_string()));
    insta::assert_json_snapshot!(body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_rows_go_to_brevo_as_one_create_with_update_enabled_each() {
    let requests = recorded_requests("brevo").await;
    assert!(
        requests
            .iter()
            .all(|(target, _)| target == "POST /v3/contacts"),
        "{requests:?}"
    );
    let bodies: Vec<Value> = requests.into_iter().map(|(_, body)| body).collect();
    for body in &bodies {
        assert_eq!(body["updateEnabled"], true);
    }
    let tricky = bodies
        .iter()
        .find(|b| b["email"] == "o'brien+tag@example.com")
        .expect("the tricky row");
    assert_eq!(
        tricky["attributes"]["LASTNAME"],
        "\"Zed\" O'Brien \\ 🚀\nJr"
    );
    insta::assert_json_snapshot!(bodies);
}
