//! Failing fast on a broken connector config: a wrong base URL, rejected
//! credentials or an unreachable host stop the connector with one message and
//! hand the claimed rows back untouched, while one bad row still fails alone.

use std::collections::BTreeMap;

use engine::sandbox::{Sandbox, SandboxOptions};
use engine::send::probe::ConnectorPaused;
use engine::store::Backend;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::scripted::{Reply, ScriptedCrm};
use crate::support::{Harness, run_engine};

/// The shipped `connector` mapping over a fresh table holding `rows` queued rows.
async fn setup(
    backend: Backend,
    connector: &str,
    env: BTreeMap<String, String>,
    rows: usize,
) -> Option<Harness> {
    let harness = Harness::shipped(backend, env, &[connector], |_| {}).await?;
    let rows = (0..rows).map(|i| {
        json!({"id": row_id(i), "email": format!("person{i}@example.com"), "name": "Ada Lovelace"})
    });
    harness.queue(rows).await;
    Some(harness)
}

/// Every row's (status, retry_count, error).
async fn states(setup: &Harness, rows: usize) -> Vec<(Value, Value, Value)> {
    let spec = setup.spec(&setup.connector);
    let mut states = Vec::new();
    for i in 0..rows {
        let row = setup.row(&row_id(i)).await;
        states.push((
            row[&spec.processing_status].clone(),
            row["retry_count"].clone(),
            row[&spec.error].clone(),
        ));
    }
    states
}

/// A UUID (PostgreSQL's `id` column is one) that names row `i`.
fn row_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn untouched(rows: usize) -> Vec<(Value, Value, Value)> {
    vec![(json!("Queued"), json!(0), Value::Null); rows]
}

async fn sandbox(options: SandboxOptions) -> Sandbox {
    Sandbox::start(SandboxOptions { port: 0, ..options })
        .await
        .unwrap()
}

async fn a_base_url_missing_its_path_prefix_stops_the_run_and_leaves_the_rows_queued(
    backend: Backend,
) {
    let sandbox = sandbox(SandboxOptions::default()).await;
    let mut env = engine::demo::sandbox_env(&sandbox.base_url());
    // Brevo lives under /v3: without it every endpoint answers 404.
    env.insert("BREVO_BASE_URL".into(), sandbox.base_url());
    let Some(setup) = setup(backend, "brevo", env, 20).await else {
        return;
    };
    let err = setup.try_run().await.expect_err("the run stops");
    let paused = err
        .downcast_ref::<ConnectorPaused>()
        .expect("a paused connector");
    let message = paused.to_string();
    let url = format!("{}/contacts", sandbox.base_url());
    assert!(
        message.contains(&format!("POST {url} answered HTTP 404 Not Found")),
        "{message}"
    );
    assert!(message.contains("BREVO_BASE_URL"), "{message}");
    assert!(!message.contains("demo-key"), "{message}");
    assert_eq!(states(&setup, 20).await, untouched(20));
}

#[tokio::test]
async fn after_three_answers_blaming_the_config_the_rest_of_the_queue_is_not_sent() {
    let crm = ScriptedCrm::start(vec![Reply::json(404, json!({"message": "Not Found"}))]).await;
    let env = BTreeMap::from([
        ("BREVO_BASE_URL".to_string(), crm.base_url.clone()),
        ("BREVO_API_KEY".to_string(), "k".to_string()),
    ]);
    let setup = setup(Backend::Sqlite, "brevo", env, 40).await.unwrap();
    setup.try_run().await.expect_err("the run stops");
    assert_eq!(states(&setup, 40).await, untouched(40));
    // Three answers tell; at most the requests already in flight with them
    // (max_in_flight = 4) follow.
    let sent = crm.received().len();
    assert!((3..=6).contains(&sent), "{sent} requests sent for 40 rows");
}

async fn a_rejected_token_stops_a_batch_connector_without_splitting_its_batches(backend: Backend) {
    let sandbox = sandbox(SandboxOptions {
        hubspot_token: Some("the-right-token".into()),
        ..SandboxOptions::default()
    })
    .await;
    let env = engine::demo::sandbox_env(&sandbox.base_url());
    let Some(setup) = setup(backend, "hubspot", env, 300).await else {
        return;
    };
    let err = setup.try_run().await.expect_err("the run stops");
    let message = format!("{err:#}");
    assert!(
        message.contains("answered HTTP 401 Unauthorized"),
        "{message}"
    );
    assert!(message.contains("check HUBSPOT_ACCESS_TOKEN"), "{message}");
    assert!(!message.contains("demo-token"), "{message}");
    assert_eq!(states(&setup, 300).await, untouched(300));
    let sent = sandbox.stats()["requests"]["POST /crm/v3/objects/contacts/batch/upsert"]
        .as_u64()
        .unwrap_or(0);
    // Without the probe, each 100-row batch rejected as a whole is split
    // down to single rows: 199 requests per batch. With it, three answers
    // tell, and at most the requests in flight with them (8) follow.
    assert!((3..=8).contains(&sent), "{sent} batch requests sent");
}

on_both_backends!(
    a_base_url_missing_its_path_prefix_stops_the_run_and_leaves_the_rows_queued,
    a_rejected_token_stops_a_batch_connector_without_splitting_its_batches,
);

#[tokio::test]
async fn an_unreachable_host_stops_the_run_naming_the_url_and_the_variable() {
    let mut env = engine::demo::sandbox_env("http://127.0.0.1:9");
    env.insert("BREVO_BASE_URL".into(), "http://127.0.0.1:9/v3".into());
    let setup = setup(Backend::Sqlite, "brevo", env, 5).await.unwrap();
    let err = setup.try_run().await.expect_err("the run stops");
    let message = format!("{err:#}");
    assert!(
        message.contains("POST http://127.0.0.1:9/v3/contacts could not connect"),
        "{message}"
    );
    assert!(message.contains("the host cannot be reached"), "{message}");
    assert_eq!(states(&setup, 5).await, untouched(5));
}

#[tokio::test]
async fn one_rows_404_fails_only_that_row() {
    let crm = ScriptedCrm::start(vec![
        Reply::json(404, json!({"message": "no such list for this contact"})),
        Reply::json(201, json!({"id": 7})),
    ])
    .await;
    let env = BTreeMap::from([
        ("BREVO_BASE_URL".to_string(), crm.base_url.clone()),
        ("BREVO_API_KEY".to_string(), "k".to_string()),
    ]);
    let setup = setup(Backend::Sqlite, "brevo", env, 6).await.unwrap();
    setup.try_run().await.expect("the run finishes");
    let states = states(&setup, 6).await;
    let failed: Vec<_> = states.iter().filter(|s| s.0 == "Error").collect();
    assert_eq!(failed.len(), 1, "{states:?}");
    assert!(
        failed[0].2.as_str().unwrap().contains("HTTP 404"),
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| s.0 == "Complete").count(),
        5,
        "{states:?}"
    );
}

#[test]
fn the_cli_exits_2_on_a_wrong_base_url_with_the_url_and_a_hint() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (setup, sandbox) = runtime.block_on(async {
        let sandbox = sandbox(SandboxOptions::default()).await;
        let mut env = engine::demo::sandbox_env(&sandbox.base_url());
        env.insert("BREVO_BASE_URL".into(), sandbox.base_url());
        let setup = setup(Backend::Sqlite, "brevo", env, 3).await.unwrap();
        (setup, sandbox)
    });
    let base = sandbox.base_url();
    let transcript = run_engine(
        setup.config.path(),
        &["run", "--connector", "brevo"],
        &[
            ("DATABASE_URL", setup.db.url.as_str()),
            ("BREVO_BASE_URL", base.as_str()),
            ("BREVO_API_KEY", "secret-key"),
        ],
    );
    assert!(transcript.starts_with("exit code: 2"), "{transcript}");
    assert!(
        transcript.contains(&format!("POST {base}/contacts answered HTTP 404 Not Found")),
        "{transcript}"
    );
    assert!(!transcript.contains("secret-key"), "{transcript}");
    let states = runtime.block_on(states(&setup, 3));
    assert_eq!(states, untouched(3));
}
