//! Every example connector proven end to end: each shipped file in
//! `connectors/` runs unchanged (only its base URL pointed here) against a
//! scripted imitation of its CRM, written from the vendor's documentation,
//! with each fact's source beside the code that imitates it. Each imitation
//! creates, updates an existing record, answers a duplicate or conflict the
//! way its CRM does, rejects a bad row, and throttles once.
//!
//! This module holds the one imitation server and the one harness they share.

mod activecampaign;
mod attio;
mod intercom;
mod language;
mod mailchimp;
mod pipedrive;
mod salesforce;
mod salesforce_collections;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use engine::store::Backend;
use serde_json::{Map, Value, json};

use crate::support::{ConfigDir, Harness};

/// A request as an imitation sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// Lower-cased names.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    /// The raw body (a token request is form-encoded, not JSON).
    pub text: String,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Request {
    /// `"POST /contacts"`.
    pub fn route(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An imitation's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Empty for no body.
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: body.to_string(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A CRM's documented behaviour: one answer per request, from its own state.
pub trait Crm: Send + 'static {
    /// `base_url` is the imitation's own address (for a token response that
    /// names the instance to call).
    fn answer(&mut self, request: &Request, base_url: &str) -> Answer;
}

struct Shared<C> {
    crm: C,
    received: Vec<Request>,
    /// The status of each answer, in order.
    statuses: Vec<u16>,
}

/// A running imitation of one CRM.
pub struct Imitation<C> {
    pub base_url: String,
    shared: Arc<Mutex<Shared<C>>>,
}

impl<C: Crm> Imitation<C> {
    pub async fn start(crm: C) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared {
            crm,
            received: Vec::new(),
            statuses: Vec::new(),
        }));
        let state = shared.clone();
        let own_url = base_url.clone();
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let request = request_of(method, &uri, &headers, &body);
                let mut shared = state.lock().unwrap();
                let answer = shared.crm.answer(&request, &own_url);
                shared.received.push(request);
                shared.statuses.push(answer.status);
                std::future::ready(respond(answer))
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base_url, shared }
    }

    /// Every request received, in order.
    pub fn received(&self) -> Vec<Request> {
        self.shared.lock().unwrap().received.clone()
    }

    /// How many requests came on one route, e.g. `"POST /contacts"`.
    pub fn count(&self, route: &str) -> usize {
        self.received()
            .iter()
            .filter(|r| r.route() == route)
            .count()
    }

    /// How many answers had this status.
    pub fn answered(&self, status: u16) -> usize {
        let shared = self.shared.lock().unwrap();
        shared.statuses.iter().filter(|s| **s == status).count()
    }

    /// How long the engine waited before sending again the request first
    /// answered `status` (the same route, query and body).
    pub fn resent_after(&self, status: u16) -> std::time::Duration {
        let shared = self.shared.lock().unwrap();
        let answered = shared
            .statuses
            .iter()
            .position(|s| *s == status)
            .unwrap_or_else(|| panic!("no answer had status {status}"));
        let first = &shared.received[answered];
        let again = shared.received[answered + 1..]
            .iter()
            .find(|r| r.route() == first.route() && r.query == first.query && r.text == first.text)
            .expect("the request was sent again");
        again.at - first.at
    }

    /// A look at the CRM's state.
    pub fn with<R>(&self, look: impl FnOnce(&C) -> R) -> R {
        look(&self.shared.lock().unwrap().crm)
    }
}

fn request_of(method: Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Request {
    let query = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    Request {
        method: method.to_string(),
        path: percent_decoded(uri.path()),
        query,
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(body).into_owned(),
        at: std::time::Instant::now(),
    }
}

fn percent_decoded(path: &str) -> String {
    url::form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn respond(answer: Answer) -> axum::response::Response {
    let status = StatusCode::from_u16(answer.status).unwrap();
    let mut response = if answer.body.is_empty() {
        status.into_response()
    } else {
        let mut response = (status, answer.body).into_response();
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    };
    for (name, value) in answer.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// Answers the first request it is asked about with the CRM's rate-limit
/// signal, then lets every request through: the engine must wait and send
/// again, not fail the row.
#[derive(Debug, Default)]
pub struct ThrottleOnce {
    done: bool,
}

impl ThrottleOnce {
    pub fn take(&mut self, signal: impl FnOnce() -> Answer) -> Option<Answer> {
        (!std::mem::replace(&mut self.done, true)).then(signal)
    }
}

/// One shipped example connector, unchanged but for `edit`, synced by a test
/// mapping from a fresh SQLite table.
pub struct ExampleSync {
    harness: Harness,
}

/// Row state columns of the test mapping (the connector's name may hold a dash).
const STATE: &str = r#"
[state]
processing_status = "crm_processing_status"
sync_status = "crm_sync_status"
crm_id = "crm_contact_id"
error = "crm_processing_error"
retry_count = "crm_retry_count"
next_retry_at = "crm_next_retry_at"
"#;

/// How one row ended: status, CRM id, error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub status: String,
    pub crm_id: Option<String>,
    pub error: Option<String>,
}

impl ExampleSync {
    /// `mapping` is the test mapping's `[params]` / `[fields]` text; `env`
    /// holds the secrets; the connector's `<NAME>_BASE_URL` is set to `base_url`.
    pub async fn start(
        connector: &str,
        base_url: &str,
        mapping: &str,
        env: &[(&str, &str)],
        edit: impl FnOnce(String) -> String,
    ) -> ExampleSync {
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("connectors")
            .join(format!("{connector}.toml"));
        let text = std::fs::read_to_string(shipped).expect("the example connector exists");
        ExampleSync::start_with_text(connector, &edit(text), base_url, mapping, env).await
    }

    /// As [`ExampleSync::start`], with the connector file's text given.
    pub async fn start_with_text(
        connector: &str,
        text: &str,
        base_url: &str,
        mapping: &str,
        env: &[(&str, &str)],
    ) -> ExampleSync {
        let config = ConfigDir {
            dir: tempfile::tempdir().unwrap(),
        };
        let mut vars: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.insert(
            format!("{}_BASE_URL", connector.to_uppercase().replace('-', "_")),
            base_url.to_string(),
        );
        let harness = Harness::start(Backend::Sqlite, config, vars, &[connector], |config, db| {
            config.write(&format!("connectors/{connector}.toml"), text);
            config.write(
                &format!("mappings/{connector}.toml"),
                &format!(
                    "connector = \"{connector}\"\n\n[source]\ntable = \"{}\"\n\n[schedule]\nbatch_size = 20\nmax_retries = 2\nretry_delay_secs = 1\nretry_exponential = false\n{STATE}\n{mapping}",
                    db.table
                ),
            );
        })
        .await
        .expect("SQLite is always there");
        ExampleSync { harness }
    }

    /// Queues rows `(id, email, name)`.
    pub async fn queue(&self, rows: &[(&str, &str, &str)]) {
        let rows = rows
            .iter()
            .map(|(id, email, name)| json!({"id": id, "email": email, "name": name}));
        self.harness.queue(rows).await;
    }

    /// Runs until no row is claimable.
    pub async fn run(&self) {
        self.harness.run_now().await;
    }

    /// Runs again once the mapping's retry delay (1 s) has passed: rows handed
    /// back as transient are due again.
    pub async fn run_after_retry_delay(&self) {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        self.run().await;
    }

    /// Row `id`, every column.
    pub async fn row(&self, id: &str) -> Map<String, Value> {
        self.harness.row(id).await
    }

    /// How row `id` ended.
    pub async fn ended(&self, id: &str) -> Ended {
        let row = self.row(id).await;
        let text = |column: &str| row.get(column).and_then(Value::as_str).map(String::from);
        Ended {
            status: text("crm_processing_status").unwrap_or_default(),
            crm_id: text("crm_contact_id"),
            error: text("crm_processing_error"),
        }
    }
}

/// `Complete` with this CRM id.
pub fn synced(id: &str) -> Ended {
    Ended {
        status: "Complete".into(),
        crm_id: Some(id.into()),
        error: None,
    }
}
