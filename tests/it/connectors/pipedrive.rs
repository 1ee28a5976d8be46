//! `connectors/pipedrive.toml` against an imitation of Pipedrive's persons API (v2).
//!
//! Facts imitated, with their sources (the v2 SDK, pipedrive/client-nodejs
//! `src/versions/v2/api/persons-api.ts`, and the docs):
//! - `GET /api/v2/persons/search?term=<email>&fields=email&exact_match=true`;
//!   `exact_match` is case-insensitive; the person id is at
//!   `/data/items/0/item/id`; items are `{result_score, item: {id, name, emails}}`.
//!   https://developers.pipedrive.com/docs/api/v1/Persons (v2 endpoints)
//! - `POST /api/v2/persons` creates (`{"success":true,"data":{"id":…}}`);
//!   `PATCH /api/v2/persons/{id}` updates. Errors are
//!   `{"success":false,"error":…,"error_info":…,"data":null}`; v2 needs `name`
//!   (the wording of that error below is representative, not quoted).
//! - Pipedrive has no duplicate answer: it accepts a second person with the same
//!   email. The search is what keeps the sync from making one.
//! - Auth: header `x-api-token: <token>` (what the v2 SDK sends).
//! - Burst limit per token in a 2 s window, search 10 per 2 s; over it: 429 with
//!   `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (seconds).
//!   https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting

use serde_json::{Value, json};

use super::{Answer, Crm, Ended, ExampleSync, Imitation, Request, ThrottleOnce, synced};

struct Person {
    id: u64,
    email: String,
}

#[derive(Default)]
struct Pipedrive {
    persons: Vec<Person>,
    throttle: ThrottleOnce,
}

fn error(status: u16, message: &str) -> Answer {
    Answer::json(
        status,
        json!({"success": false, "error": message,
               "error_info": "Please check developers.pipedrive.com for more information about Pipedrive API.",
               "data": null, "additional_data": null}),
    )
}

impl Pipedrive {
    fn search(&self, request: &Request) -> Answer {
        let term = request.query.get("term").cloned().unwrap_or_default();
        assert_eq!(
            request.query.get("fields").map(String::as_str),
            Some("email")
        );
        assert_eq!(
            request.query.get("exact_match").map(String::as_str),
            Some("true")
        );
        let items: Vec<Value> = self
            .persons
            .iter()
            .filter(|p| p.email.eq_ignore_ascii_case(&term))
            .map(|p| json!({"result_score": 1.0, "item": {"id": p.id, "type": "person", "emails": [p.email]}}))
            .collect();
        Answer::json(
            200,
            json!({"success": true, "data": {"items": items}, "additional_data": {"next_cursor": null}}),
        )
    }

    fn create(&mut self, body: &Value) -> Answer {
        if body["name"].as_str().is_none_or(str::is_empty) {
            return error(400, "Validation failed: name: Required");
        }
        let email = body["emails"][0]["value"].as_str().unwrap_or_default();
        let id = 1000 + self.persons.len() as u64;
        self.persons.push(Person {
            id,
            email: email.to_string(),
        });
        Answer::json(
            200,
            json!({"success": true, "data": {"id": id, "name": body["name"]}}),
        )
    }

    fn update(&self, id: &str) -> Answer {
        match self.persons.iter().find(|p| p.id.to_string() == id) {
            Some(p) => Answer::json(200, json!({"success": true, "data": {"id": p.id}})),
            None => error(404, "Person not found"),
        }
    }
}

impl Crm for Pipedrive {
    fn answer(&mut self, request: &Request, _: &str) -> Answer {
        if request.headers.get("x-api-token").map(String::as_str) != Some("pd-token") {
            return error(401, "unauthorized access");
        }
        if let Some(answer) = self.throttle.take(|| {
            error(429, "Request over limit")
                .header("x-ratelimit-limit", "20")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", "1")
        }) {
            return answer;
        }
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/api/v2/persons/search") => self.search(request),
            ("POST", "/api/v2/persons") => self.create(&request.body),
            ("PATCH", path) if path.starts_with("/api/v2/persons/") => {
                self.update(&path["/api/v2/persons/".len()..])
            }
            _ => error(404, "Unknown method"),
        }
    }
}

const MAPPING: &str = r#"
[fields]
name = "{{name}}"
emails = [{ value = "{{email}}", primary = true, label = "work" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipedrive_creates_finds_an_existing_person_by_email_rejects_a_nameless_row_and_waits_out_a_429()
 {
    let mut crm = Pipedrive::default();
    crm.persons.push(Person {
        id: 7,
        email: "Known@Example.com".into(),
    });
    let crm = Imitation::start(crm).await;
    let sync = ExampleSync::start(
        "pipedrive",
        &crm.base_url,
        MAPPING,
        &[("PIPEDRIVE_API_TOKEN", "pd-token")],
        |text| text,
    )
    .await;
    sync.queue(&[
        ("new", "new@example.com", "New Person"),
        ("known", "known@example.com", "Known Person"),
        ("nameless", "nameless@example.com", ""),
    ])
    .await;
    sync.run().await;

    assert_eq!(sync.ended("new").await, synced("1001"));
    assert_eq!(sync.ended("known").await, synced("7"));
    assert_eq!(
        sync.ended("nameless").await,
        Ended {
            status: "Error".into(),
            crm_id: None,
            error: Some("HTTP 400 Bad Request: Validation failed: name: Required".into()),
        }
    );
    // The known person was updated, not created again.
    assert_eq!(crm.with(|c| c.persons.len()), 2);
    assert_eq!(crm.count("PATCH /api/v2/persons/7"), 1);
    assert_eq!(crm.answered(429), 1);
    // x-ratelimit-reset: 1 was waited out before the same request went again.
    let waited = crm.resent_after(429);
    assert!(
        waited >= std::time::Duration::from_millis(950),
        "{waited:?}"
    );
}
