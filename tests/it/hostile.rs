//! A hostile CRM: answers that are too big, too slow, not JSON, without the
//! promised id, with NUL characters, or redirecting elsewhere. Each case ends
//! every row in a clear state in the database, on both backends, and never
//! sends the connector's credential to another origin.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use engine::store::Backend;
use serde_json::{Map, Value, json};

use crate::on_both_backends;
use crate::support::{ConfigDir, Harness};

/// The credential every request carries; it must never reach another origin.
const API_KEY: &str = "planted-api-key-5f2c91";

/// A request the server received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    api_key: Option<String>,
    email: String,
}

type Answer = Arc<dyn Fn(&Value) -> Response + Send + Sync>;

/// A server answering every request with `answer(its JSON body)`.
struct HostileCrm {
    base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl HostileCrm {
    async fn start(answer: impl Fn(&Value) -> Response + Send + Sync + 'static) -> Self {
        let answer: Answer = Arc::new(answer);
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let answer = answer.clone();
            let log = log.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let email = body["email"].as_str().unwrap_or_default().to_string();
                log.lock().unwrap().push(Received {
                    path: uri.to_string(),
                    api_key: headers
                        .get("api-key")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from),
                    email,
                });
                answer(&body)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base_url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn json_answer(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn raw_answer(status: u16, content_type: &str, body: Body) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

/// The connector; `extra` top-level keys may replace the 1 s timeout.
fn connector(extra: &str) -> String {
    let timeout = if extra.contains("timeout_secs") {
        ""
    } else {
        "timeout_secs = 1"
    };
    format!(
        r#"
base_url = "http://127.0.0.1:9"
{timeout}
max_in_flight = 4
{extra}
[auth]
kind = "api_key_header"
header = "api-key"
key_env = "CRM_KEY"
[retry]
max_attempts = 1
[upsert]
mode = "single"
[upsert.single]
method = "POST"
path = "/contacts"
body = {{ email = "{{{{key}}}}", properties = "{{{{fields}}}}" }}
id_pointer = "/id"
"#
    )
}

fn mapping(table: &str) -> String {
    format!(
        r#"
connector = "crm"
[source]
table = "{table}"
[schedule]
batch_size = 10
max_retries = 0
retry_delay_secs = 300
[fields]
name = "{{{{name}}}}"
"#
    )
}

/// The `crm` mapping over a fresh table, pointed at one hostile server.
async fn harness(backend: Backend, base_url: &str, connector_extra: &str) -> Option<Harness> {
    with_connector(backend, base_url, &connector(connector_extra)).await
}

async fn with_connector(backend: Backend, base_url: &str, connector: &str) -> Option<Harness> {
    let env = BTreeMap::from([
        ("CRM_BASE_URL".to_string(), base_url.to_string()),
        ("CRM_KEY".to_string(), API_KEY.to_string()),
    ]);
    Harness::start(
        backend,
        ConfigDir::shipped(),
        env,
        &["crm"],
        |config, db| {
            config
                .write("connectors/crm.toml", connector)
                .write("mappings/crm.toml", &mapping(&db.table));
        },
    )
    .await
}

/// Queues one row per email, with ids [`id`]`(0)`, `(1)`, …
async fn queue(h: &Harness, emails: &[&str]) {
    let rows = emails
        .iter()
        .enumerate()
        .map(|(i, email)| json!({"id": id(i), "email": email, "name": "Hostile Test"}));
    h.queue(rows).await;
}

/// The id of the `index`th queued row (a uuid: PostgreSQL's seed table wants one).
fn id(index: usize) -> String {
    format!("00000000-0000-4000-8000-{index:012}")
}

fn text(row: &Map<String, Value>, column: &str) -> String {
    row.get(column)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Asserts the row ended in `Error`, without a CRM id, with an error
/// containing `expected`; returns the error.
fn assert_error(row: &Map<String, Value>, expected: &str) -> String {
    let error = text(row, "crm_processing_error");
    assert_eq!(text(row, "crm_processing_status"), "Error", "{row:?}");
    assert_eq!(row["crm_contact_id"], Value::Null, "{row:?}");
    assert!(error.contains(expected), "{expected:?} not in {error:?}");
    error
}

/// One plain row through a server giving `answer`; returns the row.
async fn one_row_against(
    backend: Backend,
    connector_extra: &str,
    answer: impl Fn(&Value) -> Response + Send + Sync + 'static,
) -> Option<Map<String, Value>> {
    let crm = HostileCrm::start(answer).await;
    let h = harness(backend, &crm.base_url, connector_extra).await?;
    queue(&h, &["a@example.com"]).await;
    h.run_now().await;
    Some(h.row(&id(0)).await)
}

on_both_backends!(
    an_error_message_with_nul_characters_fails_only_its_own_row,
    a_five_megabyte_error_message_is_stored_cut_to_a_few_kilobytes,
    a_fifty_megabyte_body_is_refused_at_the_size_cap_without_reading_it,
    an_html_page_on_a_200_is_an_error_not_a_success,
    invalid_json_on_a_200_is_an_error_not_a_success,
    a_200_without_the_promised_id_is_not_complete,
    a_body_that_stops_arriving_is_a_timeout_not_an_empty_success,
    a_redirect_to_another_origin_is_not_followed_and_names_its_location,
    a_same_origin_redirect_is_followed_when_the_connector_allows_it,
    a_cross_origin_redirect_is_refused_even_when_same_origin_ones_are_allowed,
    a_batch_result_without_an_id_leaves_only_its_row_incomplete,
);

/// A batch API whose results name their input by trace id.
const BATCH_CONNECTOR: &str = r#"
base_url = "http://127.0.0.1:9"
timeout_secs = 5
[auth]
kind = "api_key_header"
header = "api-key"
key_env = "CRM_KEY"
[retry]
max_attempts = 1
[upsert]
mode = "batch"
[upsert.batch]
method = "POST"
path = "/batch"
max_items = 10
body = { inputs = "{{items}}" }
item = { email = "{{key}}", trace = "{{trace_id}}" }
[upsert.batch.results]
results_pointer = "/results"
id_pointer = "/id"
match_pointer = "/trace"
"#;

async fn a_batch_result_without_an_id_leaves_only_its_row_incomplete(backend: Backend) {
    let crm = HostileCrm::start(|body| {
        let results: Vec<Value> = body["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|input| match input["email"].as_str() {
                Some(email) if email.starts_with("noid") => json!({"trace": input["trace"]}),
                _ => json!({"trace": input["trace"], "id": format!("id-{}", input["email"].as_str().unwrap())}),
            })
            .collect();
        json_answer(200, json!({"results": results}))
    })
    .await;
    let Some(h) = with_connector(backend, &crm.base_url, BATCH_CONNECTOR).await else {
        return;
    };
    queue(&h, &["a@x.com", "noid@x.com"]).await;
    h.run_now().await;
    let synced = h.row(&id(0)).await;
    assert_eq!(
        text(&synced, "crm_processing_status"),
        "Complete",
        "{synced:?}"
    );
    assert_eq!(text(&synced, "crm_contact_id"), "id-a@x.com");
    assert_error(
        &h.row(&id(1)).await,
        "the batch result for this row has no record id at `/id`",
    );
}

async fn an_error_message_with_nul_characters_fails_only_its_own_row(backend: Backend) {
    let crm = HostileCrm::start(|body| {
        let email = body["email"].as_str().unwrap_or_default();
        if email.starts_with("bad") {
            json_answer(400, json!({"message": "invalid\u{0} value\u{0}"}))
        } else {
            json_answer(200, json!({"id": format!("id-{email}")}))
        }
    })
    .await;
    let Some(h) = harness(backend, &crm.base_url, "").await else {
        return;
    };
    let emails = ["a@x.com", "b@x.com", "bad@x.com", "c@x.com", "d@x.com"];
    queue(&h, &emails).await;
    h.run_now().await;
    for (i, email) in emails.iter().enumerate() {
        let row = h.row(&id(i)).await;
        if email.starts_with("bad") {
            let error = assert_error(&row, "invalid\u{FFFD} value\u{FFFD}");
            assert!(!error.contains('\0'));
        } else {
            assert_eq!(text(&row, "crm_processing_status"), "Complete", "{row:?}");
            assert_eq!(text(&row, "crm_contact_id"), format!("id-{email}"));
        }
    }
}

async fn a_five_megabyte_error_message_is_stored_cut_to_a_few_kilobytes(backend: Backend) {
    let body = json!({"message": "x".repeat(5 * 1024 * 1024)}).to_string();
    let Some(row) = one_row_against(backend, "timeout_secs = 60", move |_| {
        raw_answer(422, "application/json", Body::from(body.clone()))
    })
    .await
    else {
        return;
    };
    let error = assert_error(&row, "HTTP 422 Unprocessable Entity: xxx");
    assert!(error.len() < 4_096, "{} bytes stored", error.len());
    assert!(error.contains("[cut: "), "{}", &error[error.len() - 60..]);
}

async fn a_fifty_megabyte_body_is_refused_at_the_size_cap_without_reading_it(backend: Backend) {
    // Streamed without a Content-Length: the cap is checked as chunks arrive.
    let Some(row) = one_row_against(backend, "max_response_bytes = 1048576", |_| {
        let chunks = (0..50).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b' '; 1 << 20])));
        let body = Body::from_stream(futures::stream::iter(chunks));
        raw_answer(200, "application/json", body)
    })
    .await
    else {
        return;
    };
    assert_error(&row, TOO_LARGE);
    // With a Content-Length over the cap, nothing of the body is read.
    let Some(row) = one_row_against(backend, "max_response_bytes = 1048576", |_| {
        raw_answer(200, "application/json", Body::from(vec![b' '; 2 << 20]))
    })
    .await
    else {
        return;
    };
    assert_error(&row, TOO_LARGE);
}

const TOO_LARGE: &str = "larger than the connector's max_response_bytes (1048576 bytes)";

async fn an_html_page_on_a_200_is_an_error_not_a_success(backend: Backend) {
    let Some(row) = one_row_against(backend, "", |_| {
        raw_answer(
            200,
            "text/html",
            Body::from("<html><body>Maintenance</body></html>"),
        )
    })
    .await
    else {
        return;
    };
    assert_error(
        &row,
        "HTTP 200, but the body is not JSON: <html><body>Maintenance",
    );
}

async fn invalid_json_on_a_200_is_an_error_not_a_success(backend: Backend) {
    let Some(row) = one_row_against(backend, "", |_| {
        raw_answer(200, "application/json", Body::from(r#"{"id": 12"#))
    })
    .await
    else {
        return;
    };
    assert_error(&row, "HTTP 200, but the body is not JSON: {\"id\": 12");
}

async fn a_200_without_the_promised_id_is_not_complete(backend: Backend) {
    let Some(row) = one_row_against(backend, "", |_| json_answer(200, json!({"ok": true}))).await
    else {
        return;
    };
    assert_error(&row, "success, but the response has no record id at `/id`");
}

async fn a_body_that_stops_arriving_is_a_timeout_not_an_empty_success(backend: Backend) {
    let Some(row) = one_row_against(backend, "", |_| {
        let start = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from("{\"id\": ")) });
        let body = Body::from_stream(futures::StreamExt::chain(start, futures::stream::pending()));
        raw_answer(200, "application/json", body)
    })
    .await
    else {
        return;
    };
    let error = assert_error(&row, "HTTP 200, but the body did not arrive whole");
    assert!(error.contains("timeout"), "{error}");
}

/// A server that redirects every request to `target` with `status`.
async fn redirecting_to(target: String, status: u16) -> HostileCrm {
    HostileCrm::start(move |_| {
        Response::builder()
            .status(status)
            .header("location", target.clone())
            .body(Body::empty())
            .unwrap()
    })
    .await
}

async fn a_redirect_to_another_origin_is_not_followed_and_names_its_location(backend: Backend) {
    let elsewhere = HostileCrm::start(|_| json_answer(200, json!({"id": "stolen"}))).await;
    for status in [302, 307, 308] {
        let target = format!("{}/capture?api_key=leaked-token", elsewhere.base_url);
        let crm = redirecting_to(target, status).await;
        let Some(h) = harness(backend, &crm.base_url, "").await else {
            return;
        };
        queue(&h, &["a@example.com"]).await;
        h.run_now().await;
        let error = assert_error(&h.row(&id(0)).await, &format!("HTTP {status}"));
        assert!(
            error.contains(&format!(
                "redirected to {}/capture?api_key=***",
                elsewhere.base_url
            )),
            "{error}"
        );
        assert!(!error.contains("leaked-token"), "{error}");
        assert_eq!(crm.received().len(), 1);
    }
    assert!(
        elsewhere.received().is_empty(),
        "the other origin was reached: {:?}",
        elsewhere.received()
    );
}

async fn a_same_origin_redirect_is_followed_when_the_connector_allows_it(backend: Backend) {
    let moved = SameOriginMove::start().await;
    let Some(h) = harness(backend, &moved.base_url, r#"redirects = "same_origin""#).await else {
        return;
    };
    queue(&h, &["a@example.com"]).await;
    h.run_now().await;
    let row = h.row(&id(0)).await;
    assert_eq!(text(&row, "crm_processing_status"), "Complete", "{row:?}");
    assert_eq!(text(&row, "crm_contact_id"), "moved-1");
    assert_eq!(*moved.paths.lock().unwrap(), ["/contacts", "/v2/contacts"]);
    assert_eq!(*moved.keys.lock().unwrap(), [API_KEY, API_KEY]);
}

/// A CRM that moved its API under `/v2` on the same origin.
struct SameOriginMove {
    base_url: String,
    paths: Arc<Mutex<Vec<String>>>,
    keys: Arc<Mutex<Vec<String>>>,
}

impl SameOriginMove {
    async fn start() -> Self {
        let paths = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let (seen, keyed) = (paths.clone(), keys.clone());
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (seen, keyed) = (seen.clone(), keyed.clone());
            async move {
                seen.lock().unwrap().push(uri.path().to_string());
                let key = headers.get("api-key").and_then(|v| v.to_str().ok());
                keyed
                    .lock()
                    .unwrap()
                    .push(key.unwrap_or_default().to_string());
                if uri.path() == "/contacts" {
                    Response::builder()
                        .status(307)
                        .header("location", "/v2/contacts")
                        .body(Body::empty())
                        .unwrap()
                } else {
                    json_answer(200, json!({"id": "moved-1"}))
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base_url,
            paths,
            keys,
        }
    }
}

async fn a_cross_origin_redirect_is_refused_even_when_same_origin_ones_are_allowed(
    backend: Backend,
) {
    let elsewhere = HostileCrm::start(|_| json_answer(200, json!({"id": "stolen"}))).await;
    let crm = redirecting_to(format!("{}/contacts", elsewhere.base_url), 307).await;
    let Some(h) = harness(backend, &crm.base_url, r#"redirects = "same_origin""#).await else {
        return;
    };
    queue(&h, &["a@example.com"]).await;
    h.run_now().await;
    assert_error(
        &h.row(&id(0)).await,
        "HTTP 307 Temporary Redirect: redirected to",
    );
    assert!(elsewhere.received().is_empty());
    let sent = crm.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].api_key.as_deref(), Some(API_KEY));
    assert_eq!(sent[0].email, "a@example.com");
    assert_eq!(sent[0].path, "/contacts");
}
