//! Contract tests: every request the engine sends to a CRM has the shape the
//! vendor documents. The shipped connectors run in-process against the sandbox
//! through a recording proxy; each recorded request is then checked against
//! - Brevo's own OpenAPI 3.0 document, read at test time from
//!   `$ENGINE_SHARED_DIR/crm/specs/brevo-api-v3.yml` (default: `../shared` beside
//!   the repo; never copied into it). Without the file the test is skipped, and
//!   under `CI` it fails.
//! - HubSpot's documented batch upsert body (`../shared/crm/apis.md` §1.4), as a
//!   hand-written JSON Schema: HubSpot's spec files may not be kept or vendored.
//!
//! Each check has a negative control proving that it can fail.

mod openapi;
pub(crate) mod recorder;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use engine::clock::SystemClock;
use engine::sandbox::{Sandbox, SandboxOptions};
use engine::store::Backend;
use serde_json::{Map, Value, json};

use crate::on_both_backends;
use crate::support::{ConfigDir, Harness, quiet};
use openapi::OpenApi;
use recorder::{Recorded, Recorder};

/// `ENGINE_SHARED_DIR`, else `shared/` beside the repo (CI lays it out as X/main and X/shared).
fn shared_dir() -> PathBuf {
    std::env::var_os("ENGINE_SHARED_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        PathBuf::from,
    )
}

/// The Brevo spec, or `None` (skipped) when it is absent outside CI.
fn brevo_spec() -> Option<OpenApi> {
    let path = shared_dir().join("crm/specs/brevo-api-v3.yml");
    if !path.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} not found under CI: the contract test needs the Brevo OpenAPI spec (set ENGINE_SHARED_DIR)",
            path.display()
        );
        println!("skipped: {} not found", path.display());
        return None;
    }
    Some(OpenApi::load(&path).unwrap_or_else(|e| panic!("{e:#}")))
}

/// The sandbox behind a recorder, and the shipped config pointed at the recorder.
struct Recording {
    harness: Harness,
    sandbox: Sandbox,
    recorder: Recorder,
}

crate::wraps!(Recording => harness: Harness);

impl Recording {
    /// `None` when PostgreSQL is not reachable outside CI (see
    /// [`crate::support::TestDb::open`]).
    async fn start(backend: Backend) -> Option<Recording> {
        Recording::start_with(backend, |_| {}).await
    }

    /// Like [`Recording::start`], after `edit` has changed the shipped config.
    async fn start_with(backend: Backend, edit: impl FnOnce(&ConfigDir)) -> Option<Recording> {
        let sandbox = Sandbox::start(SandboxOptions {
            port: 0,
            ..SandboxOptions::default()
        })
        .await
        .expect("the sandbox starts");
        let recorder = Recorder::start(&sandbox.base_url()).await;
        let env = engine::demo::sandbox_env(&recorder.base_url);
        let mappings = ["brevo", "hubspot"];
        let harness = Harness::shipped(backend, env, &mappings, edit).await?;
        Some(Recording {
            harness,
            sandbox,
            recorder,
        })
    }

    async fn queue(&self, rows: &[Map<String, Value>]) {
        self.harness.insert(rows).await;
    }

    async fn run(&self, connector: &str) {
        let clock = Arc::new(SystemClock);
        self.run_connector(connector, clock, quiet()).await;
    }

    /// `(status, crm id, error)` of each row, by row id.
    async fn outcomes(
        &self,
        mapping: &str,
        rows: &[Map<String, Value>],
    ) -> BTreeMap<String, (String, String, String)> {
        let spec = &self.plan.mappings[mapping].table;
        let mut out = BTreeMap::new();
        for row in rows {
            let id = row["id"].as_str().unwrap();
            let stored = self
                .db
                .store
                .fetch_row(spec, id)
                .await
                .unwrap()
                .expect("the row is there");
            let text = |column: &str| {
                stored
                    .get(&format!("{mapping}_{column}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            out.insert(
                id.to_owned(),
                (
                    text("processing_status"),
                    text("contact_id"),
                    text("processing_error"),
                ),
            );
        }
        out
    }
}

/// A queued contact like the seed's, with another id, email, name and phone.
fn contact(email: &str, name: &str, phone: Option<&str>) -> Map<String, Value> {
    let mut row = engine::demo::seed_rows().remove(0);
    row.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    row.insert("email".into(), json!(email));
    row.insert("name".into(), json!(name));
    row.insert(
        "phone_number".into(),
        phone.map_or(Value::Null, Value::from),
    );
    row
}

/// Names and phones that would break a payload built by pasting text.
fn tricky_rows() -> Vec<Map<String, Value>> {
    vec![
        contact(
            "zoe.obrien+quotes@example.com",
            "Zoë \"Zed\" O'Brien",
            Some("+44 20 7946 0958"),
        ),
        contact("ferris@example.com", "🦀 Ferris Crab 🦀", None),
        contact(
            "newline@example.com",
            "Line\nBreak\r\nName\tTab",
            Some("0033612345678"),
        ),
        contact(
            "braces@example.com",
            "Back\\slash {{name}} </script>",
            Some(""),
        ),
    ]
}

/// Brevo's operations the shipped connector is expected to use.
const CREATE: &str = "createContact";
const LOOKUP: &str = "getContactInfo";

/// What createContact's description says and its schema cannot: SMS is "to be
/// passed ... along with proper country code, For example- {"SMS":"+91xxxxxxxxxx"}
/// or {"SMS":"0091xxxxxxxxxx"}".
fn documented_rules(check: &openapi::Check, request: &Recorded) -> Vec<String> {
    if check.operation.as_deref() != Some(CREATE) || !check.body_checked {
        return Vec::new();
    }
    let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
    let sms = &body["attributes"]["SMS"];
    let international = regex::Regex::new(r"^(\+|00)[1-9][0-9]{6,14}$").unwrap();
    match sms.as_str() {
        Some(number) if !international.is_match(number) => vec![format!(
            "body: /attributes/SMS: {sms} has no country code (+ or 00, then digits), as createContact asks"
        )],
        _ => Vec::new(),
    }
}

/// What the recorded Brevo requests got wrong, and what was checked.
struct BrevoReport {
    /// One line per violation, naming the request.
    violations: Vec<String>,
    /// How many requests of each kind were checked.
    checked: BTreeMap<String, usize>,
    /// Emails whose create answered 204 (an update: the engine must look the id up).
    updated_emails: HashSet<String>,
    /// Identifiers of the lookups, percent-decoded.
    looked_up: Vec<String>,
}

fn check_brevo_requests(spec: &OpenApi, requests: &[Recorded]) -> BrevoReport {
    let mut report = BrevoReport {
        violations: Vec::new(),
        checked: BTreeMap::new(),
        updated_emails: HashSet::new(),
        looked_up: Vec::new(),
    };
    for (i, request) in requests.iter().enumerate() {
        let mut check = spec.check(request);
        check.violations.extend(documented_rules(&check, request));
        let operation = check
            .operation
            .clone()
            .unwrap_or_else(|| "(no operation)".into());
        report.violations.extend(check.violations.iter().map(|v| {
            format!(
                "#{i} {} [{operation}] → {}: {v}",
                request.line(),
                request.status
            )
        }));
        let kind = match operation.as_str() {
            CREATE if check.body_checked => {
                if request.status == 204 {
                    let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
                    report
                        .updated_emails
                        .insert(body["email"].as_str().unwrap_or_default().to_owned());
                }
                format!("POST {CREATE} (body)")
            }
            LOOKUP
                if check
                    .parameters_checked
                    .iter()
                    .any(|p| p == "identifierType") =>
            {
                let identifier = request.path.rsplit('/').next().unwrap_or_default();
                report.looked_up.push(
                    percent_encoding::percent_decode_str(identifier)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
                format!("GET {LOOKUP} (identifier, identifierType)")
            }
            _ => format!("{} {operation}", request.method),
        };
        *report.checked.entry(kind).or_default() += 1;
    }
    report
}

on_both_backends!(
    every_request_body_sent_to_brevo_validates_against_the_openapi_schema,
    every_batch_upsert_sent_to_hubspot_has_the_documented_shape,
);

/// On PostgreSQL the table is the seed's own (uuid ids, domain_id and page_id).
async fn every_request_body_sent_to_brevo_validates_against_the_openapi_schema(backend: Backend) {
    let Some(spec) = brevo_spec() else { return };
    let Some(h) = Recording::start(backend).await else {
        return;
    };

    // A contact Brevo already holds: the engine's create answers 204, so it looks the id up.
    let existing = reqwest::Client::new()
        .post(format!("{}/v3/contacts", h.sandbox.base_url()))
        .header("api-key", "demo-key")
        .json(&json!({"email": "existing.contact@example.com", "attributes": {"FIRSTNAME": "Old"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(existing.status(), 201);
    let existing_id = existing.json::<Value>().await.unwrap()["id"].to_string();

    let mut rows = engine::demo::seed_rows();
    rows.extend(tricky_rows());
    rows.push(contact(
        "  Existing.Contact@Example.COM ",
        "Existing Contact",
        Some("+1 (555) 010-9999"),
    ));
    h.queue(&rows).await;
    h.run("brevo").await;

    let outcomes = h.outcomes("brevo", &rows).await;
    assert_every_row_synced(&outcomes);
    let existing_row = rows.last().unwrap()["id"].as_str().unwrap();
    assert_eq!(
        outcomes[existing_row].1, existing_id,
        "the 204 → GET path found the existing contact"
    );

    let report = check_brevo_requests(&spec, &h.recorder.requests());
    let BrevoReport {
        violations,
        checked,
        updated_emails,
        looked_up,
    } = report;
    println!("checked against the Brevo spec: {checked:?}");
    assert!(
        violations.is_empty(),
        "{} request(s) break the Brevo OpenAPI spec:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(
        checked
            .get(&format!("POST {CREATE} (body)"))
            .copied()
            .unwrap_or(0)
            >= rows.len(),
        "every row was POSTed with a body: {checked:?}"
    );
    assert!(
        checked.contains_key(&format!("GET {LOOKUP} (identifier, identifierType)")),
        "no lookup was checked: {checked:?}"
    );
    // The lookup after a 204 names the contact that create updated, decoded exactly.
    for email in &looked_up {
        assert!(
            updated_emails.contains(email),
            "GET for {email:?}, but no create answered 204 for it ({updated_emails:?})"
        );
    }
}

/// Fails naming every row that did not end `Complete` with a CRM id.
fn assert_every_row_synced(outcomes: &BTreeMap<String, (String, String, String)>) {
    let unfinished: Vec<_> = outcomes
        .iter()
        .filter(|(_, (status, id, _))| status != "Complete" || id.is_empty())
        .collect();
    assert!(
        unfinished.is_empty(),
        "rows that did not sync: {unfinished:#?}"
    );
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_body_that_breaks_the_brevo_spec_is_caught_end_to_end() {
    let Some(spec) = brevo_spec() else { return };
    let h = Recording::start_with(Backend::Sqlite, |config| {
        config.edit(
            "connectors/brevo.toml",
            "listIds = \"{{params.list_ids}}\", updateEnabled = true",
            "listIds = \"x\", updateEnabled = \"yes\"",
        );
    })
    .await
    .expect("SQLite is always there");
    h.queue(&engine::demo::seed_rows()).await;
    h.run("brevo").await;
    let report = check_brevo_requests(&spec, &h.recorder.requests());
    assert_eq!(
        report.checked.get(&format!("POST {CREATE} (body)")),
        Some(&3),
        "{:?}",
        report.checked
    );
    let text = report.violations.join("\n");
    assert_eq!(report.violations.len(), 6, "two per request:\n{text}");
    for needle in [
        "body: /listIds: \"x\" is not of type \"array\"",
        "body: /updateEnabled: \"yes\" is not of type \"boolean\"",
    ] {
        assert_eq!(
            text.matches(needle).count(),
            3,
            "{needle:?} in each request:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_openapi_check_rejects_what_the_brevo_spec_forbids() {
    let Some(spec) = brevo_spec() else { return };
    let json_key = [("content-type", "application/json"), ("api-key", "k")];
    // The same code as the end-to-end test: the spec's schemas plus its documented rules.
    let violations = |request: Recorded| {
        check_brevo_requests(&spec, &[request])
            .violations
            .join("\n")
    };

    let good = Recorded::new(
        "POST",
        "/v3/contacts",
        &json_key,
        Some(
            json!({"email": "a@example.com", "attributes": {"FIRSTNAME": "A"}, "listIds": [3], "updateEnabled": true}),
        ),
    );
    assert_eq!(violations(good), "", "a conforming create passes");
    let good = Recorded::new(
        "GET",
        "/v3/contacts/a%2Bb%40example.com?identifierType=email_id",
        &[("api-key", "k")],
        None,
    );
    assert_eq!(violations(good), "", "a conforming lookup passes");

    let cases: [(Recorded, &[&str]); 10] = [
        (
            Recorded::new(
                "POST",
                "/v3/contacts",
                &json_key,
                Some(json!({"email": "a@example.com", "listIds": "x", "updateEnabled": "yes"})),
            ),
            &[
                "body: /listIds: \"x\" is not of type \"array\"",
                "body: /updateEnabled: \"yes\" is not of type \"boolean\"",
            ],
        ),
        (
            Recorded::new(
                "POST",
                "/v3/contacts",
                &json_key,
                Some(json!({"email": "a@example.com", "listIds": ["3"]})),
            ),
            &["body: /listIds/0:"],
        ),
        (
            Recorded::new(
                "POST",
                "/v3/contacts",
                &json_key,
                Some(json!({"email": "a@example.com", "attributes": {"SMS": null}})),
            ),
            &["body: /attributes/SMS:"],
        ),
        (
            Recorded::new(
                "POST",
                "/v3/contacts",
                &json_key,
                Some(json!({"email": "a@example.com", "attributes": {"SMS": "555-9001"}})),
            ),
            &["body: /attributes/SMS: \"555-9001\" has no country code"],
        ),
        (
            Recorded::new(
                "POST",
                "/v3/contacts",
                &json_key,
                Some(json!({"email": "not an email"})),
            ),
            &["body: /email:"],
        ),
        (
            Recorded::new(
                "POST",
                "/v3/contacts",
                &[("content-type", "application/json")],
                Some(json!({"email": "a@example.com"})),
            ),
            &["no security requirement is met"],
        ),
        (
            Recorded::new("POST", "/v3/contacts", &json_key, None),
            &["the request body is required"],
        ),
        (
            Recorded::new(
                "GET",
                "/v3/contacts/a%40example.com?identifierType=email&idProperty=email",
                &[("api-key", "k")],
                None,
            ),
            &[
                "query parameter `identifierType` = \"email\"",
                "query parameter `idProperty` is not declared",
            ],
        ),
        (
            Recorded::new(
                "GET",
                "/v3/contacts/a%40example.com",
                &[("api-key", "k")],
                Some(json!({})),
            ),
            &["takes no request body"],
        ),
        (
            Recorded::new(
                "PATCH",
                "/v3/contacts/a%40example.com",
                &json_key,
                Some(json!({})),
            ),
            &["/contacts/{identifier} has no PATCH operation"],
        ),
    ];
    for (request, expected) in cases {
        let line = request.line();
        let found = violations(request);
        for needle in expected {
            assert!(
                found.contains(needle),
                "{line}: expected a violation containing {needle:?}, got:\n{found}"
            );
        }
    }
    assert!(
        violations(Recorded::new(
            "GET",
            "/v3/nowhere",
            &[("api-key", "k")],
            None
        ))
        .contains("no path in the spec matches /nowhere")
    );
    assert!(
        violations(Recorded::new("GET", "/contacts", &[("api-key", "k")], None))
            .contains("outside the server's base path /v3")
    );
}

/// HubSpot's batch upsert body as `apis.md` §1.4 documents it: `id` and
/// `properties` required per input, at most 100 inputs, keyed on `email`,
/// property values always strings (§1.8), and only the documented input fields.
fn hubspot_batch_upsert_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "BatchInputSimplePublicObjectBatchInputUpsert, as shared/crm/apis.md §1.4 and §1.8 state it",
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": false,
        "properties": {
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {
                    "type": "object",
                    "required": ["idProperty", "id", "properties"],
                    "additionalProperties": false,
                    "properties": {
                        "idProperty": {"const": "email"},
                        "id": {"type": "string", "minLength": 1},
                        "properties": {"type": "object", "additionalProperties": {"type": "string"}},
                        "objectWriteTraceId": {"type": "string", "minLength": 1}
                    }
                }
            }
        }
    })
}

/// What one request to HubSpot gets wrong against the documented batch upsert.
fn hubspot_violations(validator: &jsonschema::Validator, request: &Recorded) -> Vec<String> {
    let mut out = Vec::new();
    if (request.method.as_str(), request.path.as_str())
        != ("POST", "/crm/v3/objects/contacts/batch/upsert")
    {
        return vec![
            "not the documented batch upsert (POST /crm/v3/objects/contacts/batch/upsert)".into(),
        ];
    }
    let bearer = request
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !bearer
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
        || bearer.len() <= 7
    {
        out.push("no `Authorization: Bearer <token>` header (§1.1)".into());
    }
    let content_type = request
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        out.push(format!(
            "content type {content_type:?} is not application/json"
        ));
    }
    let body: Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(err) => return [out, vec![format!("the body is not JSON: {err}")]].concat(),
    };
    out.extend(
        validator
            .iter_errors(&body)
            .map(|e| format!("body: {}: {e}", e.instance_path())),
    );
    // "Duplicate IDs found in batch input ... IDs must be unique": dedupe on the case-folded email.
    let mut ids = BTreeSet::new();
    let mut traces = BTreeSet::new();
    for input in body["inputs"].as_array().into_iter().flatten() {
        if let Some(id) = input["id"].as_str()
            && !ids.insert(id.trim().to_lowercase())
        {
            out.push(format!(
                "body: id {id:?} is sent twice in one request (HubSpot answers 400 Duplicate IDs)"
            ));
        }
        if let Some(trace) = input["objectWriteTraceId"].as_str()
            && !traces.insert(trace.to_owned())
        {
            out.push(format!("body: objectWriteTraceId {trace:?} is not unique, so its errors cannot be told apart"));
        }
    }
    out
}

async fn every_batch_upsert_sent_to_hubspot_has_the_documented_shape(backend: Backend) {
    let Some(h) = Recording::start(backend).await else {
        return;
    };
    let mut rows = engine::demo::seed_rows();
    rows.extend(tricky_rows());
    // Two rows share a key once normalised: HubSpot rejects a batch naming an id twice.
    rows.push(contact("dup.key@example.com", "Dup One", None));
    rows.push(contact("  DUP.Key@Example.com", "Dup Two", None));
    // More than one batch's worth, so the 100-input limit is exercised.
    rows.extend((0..230).map(|n| {
        contact(
            &format!("bulk-{n:03}@example.com"),
            &format!("Bulk {n}"),
            Some("+15550100000"),
        )
    }));
    h.queue(&rows).await;
    h.run("hubspot").await;

    let outcomes = h.outcomes("hubspot", &rows).await;
    assert_every_row_synced(&outcomes);

    let validator = jsonschema::validator_for(&hubspot_batch_upsert_schema()).unwrap();
    let requests = h.recorder.requests();
    let mut violations = Vec::new();
    let mut inputs = 0;
    for (i, request) in requests.iter().enumerate() {
        let found = hubspot_violations(&validator, request);
        violations.extend(
            found
                .iter()
                .map(|v| format!("#{i} {} → {}: {v}", request.line(), request.status)),
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        inputs += body["inputs"].as_array().map_or(0, Vec::len);
    }
    println!(
        "checked {} HubSpot batch upserts carrying {inputs} inputs",
        requests.len()
    );
    assert!(
        violations.is_empty(),
        "{} request(s) break HubSpot's documented batch upsert:\n{}",
        violations.len(),
        violations.join("\n")
    );
    let keys: HashSet<String> = rows
        .iter()
        .map(|r| r["email"].as_str().unwrap().trim().to_lowercase())
        .collect();
    assert!(
        requests.len() >= keys.len().div_ceil(100),
        "{} keys need at least {} requests",
        keys.len(),
        keys.len().div_ceil(100)
    );
    assert_eq!(inputs, keys.len(), "each key is sent once");
}

#[test]
fn the_hubspot_shape_check_rejects_what_the_docs_forbid() {
    let validator = jsonschema::validator_for(&hubspot_batch_upsert_schema()).unwrap();
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer t"),
    ];
    let path = "/crm/v3/objects/contacts/batch/upsert";
    let input = |n: usize| json!({"idProperty": "email", "id": format!("c{n}@example.com"), "properties": {"firstname": "C"}, "objectWriteTraceId": n.to_string()});
    let violations = |body: Value| {
        hubspot_violations(
            &validator,
            &Recorded::new("POST", path, &headers, Some(body)),
        )
        .join("\n")
    };

    assert_eq!(
        violations(json!({"inputs": [input(1), input(2)]})),
        "",
        "a conforming batch passes"
    );
    let cases: [(Value, &str); 7] = [
        (
            json!({"inputs": (0..101).map(input).collect::<Vec<_>>()}),
            "/inputs: ",
        ),
        (
            json!({"inputs": [input(1), {"idProperty": "email", "id": "C1@Example.com", "properties": {}, "objectWriteTraceId": "x"}]}),
            "is sent twice",
        ),
        (
            json!({"inputs": [{"idProperty": "email", "id": "a@example.com", "properties": {"age": 42}}]}),
            "/inputs/0/properties/age: 42 is not of type \"string\"",
        ),
        (
            json!({"inputs": [{"id": "a@example.com", "properties": {}}]}),
            "\"idProperty\" is a required property",
        ),
        (
            json!({"inputs": [{"idProperty": "hs_object_id", "id": "1", "properties": {}}]}),
            "/inputs/0/idProperty",
        ),
        (
            json!({"inputs": [input(1), input(1).as_object().unwrap().clone().into_iter().chain([("id".into(), json!("other@example.com"))]).collect::<Map<_, _>>()]}),
            "objectWriteTraceId \"1\" is not unique",
        ),
        (json!({"inputs": []}), "/inputs: [] has less than 1 item"),
    ];
    for (body, needle) in cases {
        let found = violations(body);
        assert!(
            found.contains(needle),
            "expected a violation containing {needle:?}, got:\n{found}"
        );
    }
    let unauthenticated = Recorded::new(
        "POST",
        path,
        &[("content-type", "application/json")],
        Some(json!({"inputs": [input(1)]})),
    );
    assert!(
        hubspot_violations(&validator, &unauthenticated)
            .join("\n")
            .contains("Bearer")
    );
    let elsewhere = Recorded::new(
        "POST",
        "/crm/v3/objects/contacts",
        &headers,
        Some(json!({"properties": {}})),
    );
    assert!(
        hubspot_violations(&validator, &elsewhere)
            .join("\n")
            .contains("not the documented batch upsert")
    );
}
