//! `connectors/attio.toml` against an imitation of Attio's records API (v2).
//!
//! Facts imitated, with their sources:
//! - Assert: `PUT /v2/objects/people/records?matching_attribute=email_addresses`
//!   with `{"data":{"values":{"email_addresses":[…],"name":[{first_name,last_name,full_name}]}}}`
//!   creates or updates on the (unique) matching attribute; the id is at
//!   `/data/id/record_id`. https://docs.attio.com/api-reference/records/assert-a-record
//!   https://docs.attio.com/rest-api/endpoint-reference/people/upsert-a-person-record
//! - Errors: `{"status_code","type":"invalid_request_error","code","message"}`
//!   (Attio's OpenAPI file, copy in d-stoll/attio-js `openapi.json`); the wording
//!   of a bad address below is representative, not quoted.
//! - Two writes to one record at once: 409 `concurrent_write_conflict`.
//!   https://docs.attio.com/rest-api/endpoint-reference/activity-records/upsert-an-activity-record
//! - 25 write requests per second; over it 429 `rate_limit_error` (no header in our notes).
//!   https://docs.attio.com/rest-api/how-to/rate-limiting
//! - `Authorization: Bearer <key>`.

use serde_json::{Value, json};

use super::{Answer, Crm, Ended, ExampleSync, Imitation, Request, ThrottleOnce, synced};

#[derive(Default)]
struct Attio {
    /// (record_id, email, values)
    people: Vec<(String, String, Value)>,
    /// Emails whose next write meets another write in flight, once.
    racing: Vec<String>,
    throttle: ThrottleOnce,
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> Answer {
    Answer::json(
        status,
        json!({"status_code": status, "type": kind, "code": code, "message": message}),
    )
}

impl Attio {
    fn assert_person(&mut self, request: &Request) -> Answer {
        if request.query.get("matching_attribute").map(String::as_str) != Some("email_addresses") {
            return error(
                400,
                "invalid_request_error",
                "missing_value",
                "matching_attribute is required",
            );
        }
        let values = request.body["data"]["values"].clone();
        let email = values["email_addresses"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !email.contains('@') {
            let message = format!(
                "Invalid value was passed to attribute with slug \"email_addresses\": {email}"
            );
            return error(400, "invalid_request_error", "validation_type", &message);
        }
        if let Some(at) = self.racing.iter().position(|e| *e == email) {
            self.racing.remove(at);
            return error(
                409,
                "invalid_request_error",
                "concurrent_write_conflict",
                "A concurrent write to this record is in progress.",
            );
        }
        let id = match self
            .people
            .iter_mut()
            .find(|(_, e, _)| e.eq_ignore_ascii_case(&email))
        {
            Some((id, _, stored)) => {
                *stored = values.clone();
                id.clone()
            }
            None => {
                let id = format!("0f1c0000-0000-4000-8000-{:012}", self.people.len() + 1);
                self.people.push((id.clone(), email, values.clone()));
                id
            }
        };
        Answer::json(
            200,
            json!({"data": {"id": {"workspace_id": "w-1", "object_id": "people", "record_id": id}, "values": values}}),
        )
    }
}

impl Crm for Attio {
    fn answer(&mut self, request: &Request, _: &str) -> Answer {
        if request.headers.get("authorization").map(String::as_str) != Some("Bearer attio-key") {
            return error(401, "auth_error", "unauthorized", "Invalid API key");
        }
        if let Some(answer) = self.throttle.take(|| {
            error(
                429,
                "rate_limit_error",
                "rate_limit_exceeded",
                "Rate limit exceeded, please try again later",
            )
        }) {
            return answer;
        }
        match request.route().as_str() {
            "PUT /v2/objects/people/records" => self.assert_person(request),
            _ => error(404, "invalid_request_error", "not_found", "Not found"),
        }
    }
}

const MAPPING: &str = r#"
[fields]
email_addresses = ["{{lower (trim email)}}"]
name = [{ first_name = "{{first_name name}}", last_name = "{{last_name name}}", full_name = "{{name}}" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attio_asserts_new_and_existing_people_retries_a_write_conflict_rejects_a_bad_address_and_waits_out_a_429()
 {
    let mut crm = Attio::default();
    crm.people
        .push(("0f1c-known".into(), "known@example.com".into(), Value::Null));
    crm.racing.push("racing@example.com".into());
    let crm = Imitation::start(crm).await;
    let sync = ExampleSync::start(
        "attio",
        &crm.base_url,
        MAPPING,
        &[("ATTIO_API_KEY", "attio-key")],
        |text| text,
    )
    .await;
    sync.queue(&[
        ("new", "new@example.com", "New Person"),
        ("known", "Known@Example.com", "Known Person"),
        ("racing", "racing@example.com", "Racing Person"),
        ("bad", "bad.example.com", "Bad Person"),
    ])
    .await;
    sync.run().await;

    let id_of = |email: &str| {
        crm.with(|c| c.people.iter().find(|p| p.1 == email).map(|p| p.0.clone()))
            .unwrap()
    };
    assert_eq!(sync.ended("new").await, synced(&id_of("new@example.com")));
    assert_eq!(sync.ended("known").await, synced("0f1c-known"));
    assert_eq!(
        sync.ended("racing").await,
        synced(&id_of("racing@example.com"))
    );
    assert_eq!(
        sync.ended("bad").await,
        Ended {
            status: "Error".into(),
            crm_id: None,
            error: Some("HTTP 400 Bad Request: Invalid value was passed to attribute with slug \"email_addresses\": bad.example.com".into()),
        }
    );
    assert_eq!(crm.with(|c| c.people.len()), 3);
    let known = crm.with(|c| c.people[0].2.clone());
    assert_eq!(known["name"][0]["full_name"], "Known Person");
    assert_eq!(crm.answered(409), 1);
    assert_eq!(crm.answered(429), 1);
    // No header: the 1 s `writes` window was waited out before sending again.
    let waited = crm.resent_after(429);
    assert!(
        waited >= std::time::Duration::from_millis(950),
        "{waited:?}"
    );
}
