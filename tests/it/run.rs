//! The sync core against a scripted CRM: retries on the mapping's schedule with an
//! injected clock, permanent errors, rate limits, malformed rows. Each test runs on
//! SQLite and on PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use engine::clock::{Clock, ManualClock, SystemClock};
use engine::store::Backend;
use serde_json::{Map, Value, json};

use crate::on_both_backends;
use crate::scripted::{Reply, ScriptedCrm};
use crate::support::{ConfigDir, Harness};

const CONNECTOR: &str = r#"
base_url = "http://127.0.0.1:9"
[auth]
kind = "bearer"
token_env = "CRM_TOKEN"
[retry]
max_attempts = 1
[upsert]
mode = "single"
[upsert.single]
method = "POST"
path = "/contacts"
body = { email = "{{key}}", properties = "{{fields}}" }
id_pointer = "/id"
"#;

fn mapping(table: &str, max_retries: u32) -> String {
    format!(
        r#"
connector = "crm"
[source]
table = "{table}"
[schedule]
batch_size = 10
max_retries = {max_retries}
retry_delay_secs = 300
[fields]
name = "{{{{name}}}}"
"#
    )
}

/// A scripted CRM and a `crm` mapping over a fresh seed table.
struct Scripted {
    harness: Harness,
    crm: ScriptedCrm,
}

crate::wraps!(Scripted => harness: Harness);

impl Scripted {
    async fn new(backend: Backend, script: Vec<Reply>, max_retries: u32) -> Option<Scripted> {
        Self::with_connector(backend, CONNECTOR, script, max_retries).await
    }

    async fn with_connector(
        backend: Backend,
        connector: &str,
        script: Vec<Reply>,
        max_retries: u32,
    ) -> Option<Scripted> {
        let crm = ScriptedCrm::start(script).await;
        let env = BTreeMap::from([
            ("CRM_BASE_URL".to_string(), crm.base_url.clone()),
            ("CRM_TOKEN".to_string(), "t".to_string()),
        ]);
        let harness = Harness::start(
            backend,
            ConfigDir::shipped(),
            env,
            &["crm"],
            |config, db| {
                config
                    .write("connectors/crm.toml", connector)
                    .write("mappings/crm.toml", &mapping(&db.table, max_retries));
            },
        )
        .await?;
        Some(Scripted { harness, crm })
    }

    /// Queues rows `(id, email)`.
    async fn queue_emails(&self, rows: &[(&str, Value)]) {
        let rows = rows
            .iter()
            .map(|(id, email)| json!({"id": id, "email": email, "name": format!("Name {id}")}));
        self.queue(rows).await;
    }
}

const ID: &str = "4b4be366-da73-4926-83a2-2fddb9a77d95";
const ID2: &str = "bbe6872a-f479-4d76-a943-fb6c182963d4";

fn text(row: &Map<String, Value>, column: &str) -> String {
    row.get(column)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn count(row: &Map<String, Value>) -> i64 {
    row["crm_retry_count"].as_i64().unwrap()
}

/// The row's next_retry_at as seconds after `base` (SQLite text or PostgreSQL timestamptz JSON).
fn due_after(row: &Map<String, Value>, base: chrono::DateTime<chrono::Utc>) -> i64 {
    let raw = text(row, "crm_next_retry_at");
    let parsed = chrono::DateTime::parse_from_rfc3339(&raw)
        .map(|d| d.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(&raw, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
        })
        .unwrap_or_else(|e| panic!("next_retry_at {raw:?}: {e}"));
    (parsed - base).num_seconds()
}

on_both_backends!(
    server_errors_are_retried_on_the_mappings_schedule_until_the_crm_accepts,
    a_400_ends_in_error_at_once_with_the_crms_message,
    a_429_is_waited_out_without_spending_a_retry,
    a_row_that_runs_out_of_retries_ends_in_error,
    a_row_without_a_key_ends_in_error_while_the_others_sync,
);

/// Pipedrive's shape: search, then create or update; the create has no
/// conflict answer unless `create_rules` gives it one.
fn lookup_then_write(create_rules: &str) -> String {
    format!(
        r#"
base_url = "http://127.0.0.1:9"
[auth]
kind = "bearer"
token_env = "CRM_TOKEN"
[retry]
max_attempts = 3
base_delay_ms = 1
max_delay_ms = 1
[upsert]
mode = "lookup_then_write"
[upsert.lookup]
method = "GET"
path = "/persons/search"
query = {{ term = "{{{{key}}}}" }}
id_pointer = "/data/items/0/item/id"
[upsert.create]
method = "POST"
path = "/persons"
body = {{ email = "{{{{key}}}}" }}
id_pointer = "/data/id"
{create_rules}
[upsert.update]
method = "PATCH"
path = "/persons/{{{{id}}}}"
body = {{ email = "{{{{key}}}}" }}
id_pointer = "/data/id"
"#
    )
}

/// One row through [`lookup_then_write`] on SQLite: the search finds nothing and
/// every create answers 502 (it may have landed).
async fn sync_one_row_whose_create_fails(create_rules: &str) -> Scripted {
    let script = vec![
        Reply::json(200, json!({"data": {"items": []}})),
        Reply::json(502, json!({"error": "Bad gateway"})),
    ];
    let connector = lookup_then_write(create_rules);
    let h = Scripted::with_connector(Backend::Sqlite, &connector, script, 3)
        .await
        .expect("SQLite is always there");
    h.queue_emails(&[(ID, json!("a@example.com"))]).await;
    h.run(Arc::new(ManualClock::default())).await;
    h
}

fn methods(crm: &ScriptedCrm) -> Vec<String> {
    crm.received().iter().map(|r| r.method.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_with_no_conflict_answer_is_not_sent_again_at_once_after_a_502() {
    let h = sync_one_row_whose_create_fails("").await;
    // Sent again now, the create could make a second person: the row waits for
    // its retry, which starts over from the search.
    assert_eq!(methods(&h.crm), ["GET", "POST"]);
    let row = h.row(ID).await;
    assert_eq!(text(&row, "crm_processing_status"), "Queued");
    assert_eq!(count(&row), 1);
    let error = text(&row, "crm_processing_error");
    assert!(
        error.contains("502") && error.contains("not repeated at once"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_conflict_becomes_an_update_is_retried_at_once() {
    let rules = r#"rules = [{ status = 409, message_regex = 'id=(\d+)', then = "update" }]"#;
    let h = sync_one_row_whose_create_fails(rules).await;
    // A repeat that landed twice answers 409 and becomes an update: safe.
    assert_eq!(methods(&h.crm), ["GET", "POST", "POST", "POST"]);
    let row = h.row(ID).await;
    assert_eq!(text(&row, "crm_processing_status"), "Queued");
    assert!(
        text(&row, "crm_processing_error").contains("after 3 attempts"),
        "{row:?}"
    );
}

async fn server_errors_are_retried_on_the_mappings_schedule_until_the_crm_accepts(
    backend: Backend,
) {
    let script = vec![
        Reply::json(500, json!({"message": "Internal error"})),
        Reply::json(500, json!({"message": "Internal error"})),
        Reply::json(201, json!({"id": "176559342616"})),
    ];
    let Some(h) = Scripted::new(backend, script, 3).await else {
        return;
    };
    h.queue_emails(&[(ID, json!("hubspot-scheduler-test-1@scrapersky-test.com"))])
        .await;
    let clock = ManualClock::default();
    let start = clock.utc();

    h.run(Arc::new(clock.clone())).await;
    let row = h.row(ID).await;
    assert_eq!(text(&row, "crm_processing_status"), "Queued");
    assert_eq!(count(&row), 1);
    assert_eq!(due_after(&row, start), 300);
    assert!(
        text(&row, "crm_processing_error").contains("500"),
        "{row:?}"
    );

    h.run(Arc::new(clock.clone())).await;
    assert_eq!(
        h.crm.received().len(),
        1,
        "a row is not retried before its time"
    );

    clock.advance(Duration::from_secs(300));
    h.run(Arc::new(clock.clone())).await;
    let row = h.row(ID).await;
    assert_eq!(count(&row), 2);
    assert_eq!(
        due_after(&row, start),
        300 + 600,
        "the second delay doubles"
    );

    clock.advance(Duration::from_secs(600));
    let summary = h.run(Arc::new(clock.clone())).await;
    let row = h.row(ID).await;
    assert_eq!(text(&row, "crm_processing_status"), "Complete");
    assert_eq!(text(&row, "crm_sync_status"), "Complete");
    assert_eq!(text(&row, "crm_contact_id"), "176559342616");
    assert_eq!(row["crm_processing_error"], Value::Null);
    assert_eq!(summary.failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(h.crm.received().len(), 3);
}

async fn a_400_ends_in_error_at_once_with_the_crms_message(backend: Backend) {
    let script = vec![Reply::json(
        400,
        json!({"status": "error", "message": "Property values were not valid", "category": "VALIDATION_ERROR"}),
    )];
    let Some(h) = Scripted::new(backend, script, 3).await else {
        return;
    };
    h.queue_emails(&[(ID, json!("a@example.com"))]).await;
    let summary = h.run(Arc::new(SystemClock)).await;
    let row = h.row(ID).await;
    assert_eq!(text(&row, "crm_processing_status"), "Error");
    assert_eq!(text(&row, "crm_sync_status"), "Error");
    assert_eq!(
        text(&row, "crm_processing_error"),
        "HTTP 400 Bad Request: Property values were not valid"
    );
    assert_eq!(count(&row), 0);
    assert_eq!(summary.failed.load(std::sync::atomic::Ordering::Relaxed), 1);
    let received = h.crm.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        (received[0].method.as_str(), received[0].path.as_str()),
        ("POST", "/contacts")
    );
    assert_eq!(received[0].body["email"], "a@example.com");
}

async fn a_429_is_waited_out_without_spending_a_retry(backend: Backend) {
    let script = vec![
        Reply::json(429, json!({"message": "You have reached your ten_secondly_rolling limit.", "policyName": "TEN_SECONDLY_ROLLING"}))
            .header("Retry-After", "1"),
        Reply::json(201, json!({"id": 21})),
    ];
    let Some(h) = Scripted::new(backend, script, 3).await else {
        return;
    };
    h.queue_emails(&[(ID, json!("a@example.com"))]).await;
    h.run(Arc::new(SystemClock)).await;
    let row = h.row(ID).await;
    assert_eq!(text(&row, "crm_processing_status"), "Complete");
    assert_eq!(text(&row, "crm_contact_id"), "21");
    assert_eq!(count(&row), 0, "a rate limit spends no retry");
    assert_eq!(h.crm.received().len(), 2);
}

async fn a_row_that_runs_out_of_retries_ends_in_error(backend: Backend) {
    let script = vec![Reply::json(503, json!({"message": "Service unavailable"}))];
    let Some(h) = Scripted::new(backend, script, 1).await else {
        return;
    };
    h.queue_emails(&[(ID, json!("a@example.com"))]).await;
    let clock = ManualClock::default();
    h.run(Arc::new(clock.clone())).await;
    assert_eq!(text(&h.row(ID).await, "crm_processing_status"), "Queued");
    clock.advance(Duration::from_secs(300));
    let summary = h.run(Arc::new(clock.clone())).await;
    let row = h.row(ID).await;
    assert_eq!(text(&row, "crm_processing_status"), "Error");
    assert_eq!(count(&row), 2);
    assert!(
        text(&row, "crm_processing_error")
            .starts_with("HTTP 503 Service Unavailable: Service unavailable"),
        "{row:?}"
    );
    assert_eq!(summary.failed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

async fn a_row_without_a_key_ends_in_error_while_the_others_sync(backend: Backend) {
    let script = vec![Reply::json(201, json!({"id": 7}))];
    let Some(h) = Scripted::new(backend, script, 3).await else {
        return;
    };
    h.queue_emails(&[(ID, json!("   ")), (ID2, json!("b@example.com"))])
        .await;
    h.run(Arc::new(SystemClock)).await;
    let bad = h.row(ID).await;
    assert_eq!(text(&bad, "crm_processing_status"), "Error");
    assert_eq!(
        text(&bad, "crm_processing_error"),
        "key column `email` is empty"
    );
    assert_eq!(text(&h.row(ID2).await, "crm_processing_status"), "Complete");
    assert_eq!(h.crm.received().len(), 1);
}

/// [`CONNECTOR`] with 8 requests in flight, adaptive or fixed.
fn eight_in_flight(adaptive: bool) -> String {
    CONNECTOR.replace(
        "[auth]",
        &format!("max_in_flight = 8\nadaptive_concurrency = {adaptive}\n[auth]"),
    )
}

/// 40 rows against a CRM that answers its first 8 requests 503 and every later
/// one 201, each after 50 ms; returns how many requests were being answered
/// when each request arrived, in arrival order.
async fn in_flight_at_arrival(adaptive: bool) -> Vec<usize> {
    let slow = Duration::from_millis(50);
    let mut script =
        vec![Reply::json(503, json!({"message": "Service unavailable"})).after(slow); 8];
    script.push(Reply::json(201, json!({"id": 7})).after(slow));
    let h = Scripted::with_connector(Backend::Sqlite, &eight_in_flight(adaptive), script, 3)
        .await
        .expect("SQLite is always there");
    let ids: Vec<String> = (0..40).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let rows: Vec<(&str, Value)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), json!(format!("c{i}@example.com"))))
        .collect();
    h.queue_emails(&rows).await;
    h.run(Arc::new(SystemClock)).await;
    let received = h.crm.received();
    assert_eq!(
        received.len(),
        40,
        "each row is sent once (503s wait for the row's retry delay)"
    );
    received.iter().map(|r| r.in_flight).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_of_503s_halves_the_requests_in_flight_once_and_normal_answers_grow_them_back() {
    let arrivals = in_flight_at_arrival(true).await;
    assert_eq!(
        arrivals[..8].iter().max(),
        Some(&8),
        "the first round goes out at the ceiling: {arrivals:?}"
    );
    // Eight 503s from one round halve the limit once: 8 -> 4, not 8 -> 1.
    let after_pushback = &arrivals[8..12];
    assert!(after_pushback.iter().all(|&n| n <= 4), "{arrivals:?}");
    assert!(
        after_pushback.contains(&4),
        "halved once, not down to 1: {arrivals:?}"
    );
    // 201s raise it by one per round of answers.
    assert!(arrivals[12..].iter().any(|&n| n > 4), "{arrivals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_adaptive_concurrency_off_503s_leave_the_requests_in_flight_at_the_ceiling() {
    let arrivals = in_flight_at_arrival(false).await;
    assert!(arrivals[8..16].iter().any(|&n| n > 4), "{arrivals:?}");
}

/// Salesforce sObject Collections' shape: one result per input, in input
/// order, naming no input; `success` tells each one's fate.
const BY_POSITION: &str = r#"
base_url = "http://127.0.0.1:9"
[auth]
kind = "bearer"
token_env = "CRM_TOKEN"
[retry]
max_attempts = 1
[upsert]
mode = "batch"
[upsert.batch]
method = "PATCH"
path = "/composite/sobjects/Contact/Email"
max_items = 200
body = { allOrNone = false, records = "{{items}}" }
item = "{{fields}}"
[upsert.batch.results]
results_pointer = ""
id_pointer = "/id"
success_pointer = "/success"
error_message_pointer = "/errors/0/message"
"#;

const ID3: &str = "0f3b8f9e-6c1d-4c52-9a0e-3d6f1c2b7a11";

/// Runs three rows through `connector` (e.g. [`BY_POSITION`]) against
/// `reply`; returns the rows in the order the request carried them.
async fn three_rows_by_position(connector: &str, reply: Reply) -> Vec<Map<String, Value>> {
    let h = Scripted::with_connector(Backend::Sqlite, connector, vec![reply], 3)
        .await
        .expect("SQLite is always there");
    h.queue_emails(&[
        (ID, json!("a@example.com")),
        (ID2, json!("b@example.com")),
        (ID3, json!("c@example.com")),
    ])
    .await;
    h.run(Arc::new(SystemClock)).await;
    let received = h.crm.received();
    assert_eq!(received.len(), 1, "one request for the three rows");
    let mut rows = Vec::new();
    for record in received[0].body["records"].as_array().unwrap() {
        let id = record["name"].as_str().unwrap().trim_start_matches("Name ");
        rows.push(h.row(id).await);
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_results_without_a_match_pointer_are_matched_to_rows_by_position() {
    let rows = three_rows_by_position(BY_POSITION, Reply::json(
        200,
        json!([
            {"id": "003A", "success": true, "errors": [], "created": true},
            {"success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [LastName]"}]},
            {"id": "003C", "success": true, "errors": [], "created": false}
        ]),
    ))
    .await;
    let seen: Vec<(String, String, String)> = rows
        .iter()
        .map(|row| {
            (
                text(row, "crm_processing_status"),
                text(row, "crm_contact_id"),
                text(row, "crm_processing_error"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("Complete".into(), "003A".into(), String::new()),
            (
                "Error".into(),
                String::new(),
                "Required fields are missing: [LastName]".into()
            ),
            ("Complete".into(), "003C".into(), String::new()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_positional_batch_response_with_too_few_results_syncs_no_row() {
    let rows = three_rows_by_position(
        BY_POSITION,
        Reply::json(
            200,
            json!([
                {"id": "003A", "success": true, "errors": []},
                {"id": "003B", "success": true, "errors": []}
            ]),
        ),
    )
    .await;
    for row in rows {
        assert_eq!(text(&row, "crm_processing_status"), "Queued", "{row:?}");
        assert_eq!(count(&row), 1);
        assert_eq!(
            text(&row, "crm_processing_error"),
            "the batch response has 2 results for 3 inputs, and results are matched by position"
        );
    }
}

/// A GraphQL API: every answer is 200, and a failure is an `errors` array.
const GRAPHQL: &str = r#"
base_url = "http://127.0.0.1:9"
[auth]
kind = "bearer"
token_env = "CRM_TOKEN"
[errors]
message_pointers = ["/errors/0/message"]
[retry]
max_attempts = 1
[upsert]
mode = "single"
[upsert.single]
method = "POST"
path = "/graphql"
body = { query = "mutation Upsert($email: String!, $name: String) { upsertContact(email: $email, name: $name) { id } }", variables = { email = "{{key}}", name = "{{fields.name}}" } }
id_pointer = "/data/upsertContact/id"
rules = [{ status = 200, body_has = "/errors/0", then = "permanent" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_a_body_pointer_fails_a_200_that_carries_errors() {
    let script = vec![
        Reply::json(200, json!({"data": {"upsertContact": {"id": "c-1"}}})),
        Reply::json(
            200,
            json!({"data": null, "errors": [{"message": "Variable $email got invalid value"}]}),
        ),
    ];
    let h = Scripted::with_connector(Backend::Sqlite, GRAPHQL, script, 3)
        .await
        .expect("SQLite is always there");
    h.queue_emails(&[(ID, json!("a@example.com"))]).await;
    h.run(Arc::new(SystemClock)).await;
    h.queue_emails(&[(ID2, json!("b@example.com"))]).await;
    h.run(Arc::new(SystemClock)).await;

    let synced = h.row(ID).await;
    assert_eq!(text(&synced, "crm_processing_status"), "Complete");
    assert_eq!(text(&synced, "crm_contact_id"), "c-1");
    let failed = h.row(ID2).await;
    assert_eq!(
        text(&failed, "crm_processing_status"),
        "Error",
        "{failed:?}"
    );
    assert_eq!(
        text(&failed, "crm_processing_error"),
        "HTTP 200 OK: Variable $email got invalid value"
    );
    let sent = &h.crm.received()[0].body;
    assert_eq!(
        sent["variables"],
        json!({"email": "a@example.com", "name": "Name 4b4be366-da73-4926-83a2-2fddb9a77d95"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_item_failure_matching_transient_item_regex_is_retried_later_not_failed() {
    let connector = format!("{BY_POSITION}transient_item_regex = \"UNABLE_TO_LOCK_ROW\"\n");
    let rows = three_rows_by_position(
        &connector,
        Reply::json(
            200,
            json!([
                {"id": "003A", "success": true, "errors": []},
                {"success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record"}]},
                {"success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [LastName]"}]}
            ]),
        ),
    )
    .await;
    let seen: Vec<(String, i64, String)> = rows
        .iter()
        .map(|row| {
            (
                text(row, "crm_processing_status"),
                count(row),
                text(row, "crm_processing_error"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("Complete".into(), 0, String::new()),
            (
                "Queued".into(),
                1,
                "unable to obtain exclusive access to this record".into()
            ),
            (
                "Error".into(),
                0,
                "Required fields are missing: [LastName]".into()
            ),
        ]
    );
}
