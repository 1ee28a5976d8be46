//! The sandbox: local imitations of the HubSpot and Brevo contact APIs.
//! Each test starts its own sandbox on a free port. Helpers live here, the
//! vendor behaviours in the submodules, and what both share at the bottom.

mod brevo;
mod hubspot;
mod hubspot_batch;
mod hubspot_limits;

use std::time::{Duration, Instant};

use engine::sandbox::{Sandbox, SandboxOptions};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const HUBSPOT_TOKEN: &str = "pat-test-token";
const BREVO_KEY: &str = "xkeysib-test";

/// Options for a test: a free port, everything else at the CLI defaults.
fn options() -> SandboxOptions {
    SandboxOptions {
        port: 0,
        ..SandboxOptions::default()
    }
}

struct Env {
    sandbox: Sandbox,
    http: reqwest::Client,
}

/// One answer: status, headers and the JSON body (`Null` when empty).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn start(opts: SandboxOptions) -> Env {
    engine::install_crypto_provider();
    let sandbox = Sandbox::start(opts).await.expect("sandbox starts");
    Env {
        sandbox,
        http: reqwest::Client::new(),
    }
}

impl Env {
    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> Answer {
        let url = format!("{}{path}", self.sandbox.base_url());
        let mut request = self.http.request(method, url);
        if let Some((name, value)) = auth {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body is read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A HubSpot call with a valid bearer token; `path` starts with `/crm`.
    async fn hubspot(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let bearer = format!("Bearer {HUBSPOT_TOKEN}");
        self.send(method, path, Some(("authorization", &bearer)), body)
            .await
    }

    /// A Brevo call with a valid `api-key`; `path` is under `/v3`.
    async fn brevo(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.send(
            method,
            &format!("/v3{path}"),
            Some(("api-key", BREVO_KEY)),
            body,
        )
        .await
    }

    /// Creates a HubSpot contact; answers its id.
    async fn hubspot_contact(&self, properties: Value) -> String {
        let answer = self
            .hubspot(
                Method::POST,
                "/crm/v3/objects/contacts",
                Some(json!({ "properties": properties })),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["id"].as_str().expect("id").to_owned()
    }

    async fn hubspot_search(&self, filter: Value) -> Answer {
        let body =
            json!({"filterGroups": [{"filters": [filter]}], "properties": ["email", "firstname"]});
        self.hubspot(Method::POST, "/crm/v3/objects/contacts/search", Some(body))
            .await
    }

    /// Creates a Brevo contact; answers its id.
    async fn brevo_contact(&self, body: Value) -> u64 {
        let answer = self.brevo(Method::POST, "/contacts", Some(body)).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["id"].as_u64().expect("id")
    }
}

/// HubSpot's 400 body for invalid property values.
fn assert_hubspot_validation(answer: &Answer, code: &str, property: &str) {
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.body["status"], "error");
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    assert!(answer.body["correlationId"].is_string());
    let message = answer.body["message"].as_str().unwrap();
    assert!(
        message.starts_with("Property values were not valid: [{"),
        "{message}"
    );
    assert_eq!(answer.body["errors"][0]["code"], code);
    assert_eq!(
        answer.body["errors"][0]["context"]["propertyName"],
        json!([property])
    );
}

#[tokio::test]
async fn latency_delays_every_answer_and_counts_requests_as_in_flight_meanwhile() {
    let env = start(SandboxOptions {
        latency_ms: 200,
        ..options()
    })
    .await;
    let started = Instant::now();
    let path = "/crm/v3/objects/contacts/1";
    let (a, b, c) = tokio::join!(
        env.hubspot(Method::GET, path, None),
        env.hubspot(Method::GET, path, None),
        env.brevo(Method::GET, "/contacts/1", None),
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!([a.status, b.status, c.status], [404, 404, 404]);
    let stats = env.sandbox.stats();
    assert_eq!(stats["max_in_flight"], 3);
    assert_eq!(stats["in_flight"], 0);
}

#[tokio::test]
async fn fail_rate_answers_502_or_503_in_the_vendor_shape_before_writing() {
    let env = start(SandboxOptions {
        fail_rate: 1.0,
        ..options()
    })
    .await;
    let body = json!({"properties": {"email": "a@example.com"}});
    let hubspot = env
        .hubspot(Method::POST, "/crm/v3/objects/contacts", Some(body))
        .await;
    assert!([502, 503].contains(&hubspot.status), "{}", hubspot.status);
    assert_eq!(hubspot.body["status"], "error");
    assert!(hubspot.body["correlationId"].is_string());
    let brevo = env
        .brevo(
            Method::POST,
            "/contacts",
            Some(json!({"email": "a@example.com"})),
        )
        .await;
    assert!([502, 503].contains(&brevo.status), "{}", brevo.status);
    assert!(brevo.body["code"].is_string() && brevo.body["message"].is_string());
    assert!(env.sandbox.hubspot_contacts().is_empty());
    assert!(env.sandbox.brevo_contacts().is_empty());
}

#[tokio::test]
async fn inspection_endpoints_list_stored_contacts_sorted_by_id_without_auth() {
    let env = start(options()).await;
    let first = env.hubspot_contact(json!({"email": "a@example.com"})).await;
    let second = env.hubspot_contact(json!({"email": "b@example.com"})).await;
    env.brevo_contact(json!({"email": "a@example.com"})).await;
    env.brevo_contact(json!({"email": "b@example.com"})).await;
    let hubspot = env
        .send(Method::GET, "/_sandbox/hubspot/contacts", None, None)
        .await;
    assert_eq!(hubspot.status, 200);
    let ids: Vec<&Value> = hubspot
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, [&json!(first), &json!(second)]);
    assert_eq!(hubspot.body, Value::Array(env.sandbox.hubspot_contacts()));
    let brevo = env
        .send(Method::GET, "/_sandbox/brevo/contacts", None, None)
        .await;
    let ids: Vec<&Value> = brevo
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, [&json!(1), &json!(2)]);
    assert_eq!(brevo.body, Value::Array(env.sandbox.brevo_contacts()));
}

#[tokio::test]
async fn stats_count_requests_by_route_pattern_and_by_status() {
    let env = start(SandboxOptions {
        brevo_per_s: Some(1),
        ..options()
    })
    .await;
    env.hubspot(Method::GET, "/crm/v3/objects/contacts/1", None)
        .await;
    env.hubspot(Method::GET, "/crm/v3/objects/contacts/2", None)
        .await;
    env.brevo(Method::GET, "/contacts/a%40b.co", None).await;
    env.brevo(Method::GET, "/contacts/a%40b.co", None).await;
    let stats = env
        .send(Method::GET, "/_sandbox/stats", None, None)
        .await
        .body;
    assert_eq!(stats["requests"]["GET /crm/v3/objects/contacts/{id}"], 2);
    assert_eq!(stats["requests"]["GET /v3/contacts/{identifier}"], 2);
    assert_eq!(stats["statuses"]["404"], 3);
    assert_eq!(stats["statuses"]["429"], 1);
    assert_eq!(stats["rate_limited"], 1);
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats, env.sandbox.stats());
}

#[tokio::test]
async fn reset_forgets_contacts_counters_and_limits() {
    let env = start(SandboxOptions {
        hubspot_per_10s: Some(1),
        ..options()
    })
    .await;
    env.hubspot_contact(json!({"email": "a@example.com"})).await;
    let reset = env.send(Method::POST, "/_sandbox/reset", None, None).await;
    assert_eq!(reset.status, 204);
    assert!(env.sandbox.hubspot_contacts().is_empty());
    assert_eq!(env.sandbox.stats()["requests"], json!({}));
    env.hubspot_contact(json!({"email": "a@example.com"})).await;
}

#[test]
fn sandbox_options_default_matches_the_cli_defaults() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sandbox: SandboxOptions,
    }
    let parsed = Cli::parse_from(["engine"]).sandbox;
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", SandboxOptions::default())
    );
    let args = [
        "engine",
        "--port",
        "0",
        "--hubspot-properties",
        "a,b",
        "--hubspot-upsert-partial",
    ];
    let parsed = Cli::parse_from(args).sandbox;
    assert_eq!(parsed.hubspot_properties, ["a", "b"]);
    assert!(parsed.hubspot_upsert_partial);
}

#[tokio::test]
async fn shutdown_stops_serving_even_with_idle_keep_alive_connections() {
    let env = start(options()).await;
    let base = env.sandbox.base_url();
    assert_eq!(
        env.brevo(Method::GET, "/contacts/1", None).await.status,
        404
    );
    let stopping = tokio::time::timeout(Duration::from_secs(1), env.sandbox.shutdown());
    stopping
        .await
        .expect("shutdown does not wait for idle connections");
    assert!(
        env.http
            .get(format!("{base}/_sandbox/stats"))
            .send()
            .await
            .is_err()
    );
}
