//! `connectors/intercom.toml` against an imitation of Intercom's contacts API.
//!
//! Facts imitated, with their sources:
//! - `POST /contacts/search` with `{"query":{"field":"email","operator":"=","value":…}}`
//!   answers `{"type":"list","data":[{"type":"contact","id":…}]}`; contacts created
//!   recently "may not appear … This delay can take a few minutes".
//!   https://developers.intercom.com/docs/references/rest-api/api.intercom.io/contacts
//! - `POST /contacts` creates (id at `/id`); a duplicate answers 409
//!   `{"type":"error.list","errors":[{"code":"conflict","message":"A contact matching
//!   those details already exists with id=…"}]}` (not yet in the OpenAPI file:
//!   https://github.com/intercom/Intercom-OpenAPI/pull/543).
//! - `PUT /contacts/{id}` updates.
//! - Errors are `{"type":"error.list","request_id":…,"errors":[{"code","message","field"}]}`
//!   (same page). The code and wording of a bad email below are representative,
//!   not quoted.
//! - Over the limit: 429 with `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
//!   `X-RateLimit-Reset`, a UNIX timestamp.
//!   https://developers.intercom.com/docs/references/rest-api/errors/rate-limiting
//! - `Authorization: Bearer <token>`, `Intercom-Version: 2.14`.

use serde_json::{Value, json};

use super::{Answer, Crm, Ended, ExampleSync, Imitation, Request, ThrottleOnce, synced};

struct Contact {
    id: String,
    email: String,
    /// Created moments ago: search does not see it yet.
    indexed: bool,
}

#[derive(Default)]
struct Intercom {
    contacts: Vec<Contact>,
    throttle: ThrottleOnce,
}

fn error(status: u16, code: &str, message: &str) -> Answer {
    Answer::json(
        status,
        json!({"type": "error.list", "request_id": "r-1", "errors": [{"code": code, "message": message}]}),
    )
}

impl Intercom {
    fn find(&self, email: &str) -> Option<&Contact> {
        self.contacts
            .iter()
            .find(|c| c.email.eq_ignore_ascii_case(email))
    }

    fn search(&self, body: &Value) -> Answer {
        let wanted = body["query"]["value"].as_str().unwrap_or_default();
        let data: Vec<Value> = self
            .find(wanted)
            .filter(|c| c.indexed)
            .map(|c| json!({"type": "contact", "id": c.id, "email": c.email}))
            .into_iter()
            .collect();
        Answer::json(
            200,
            json!({"type": "list", "total_count": data.len(), "data": data}),
        )
    }

    fn create(&mut self, body: &Value) -> Answer {
        let email = body["email"].as_str().unwrap_or_default();
        if !email.contains('@') {
            return error(400, "parameter_invalid", "Email address is invalid");
        }
        if let Some(existing) = self.find(email) {
            let message = format!(
                "A contact matching those details already exists with id={}",
                existing.id
            );
            return error(409, "conflict", &message);
        }
        let id = format!("6{:023x}", self.contacts.len() + 1);
        self.contacts.push(Contact {
            id: id.clone(),
            email: email.to_string(),
            indexed: false,
        });
        Answer::json(200, json!({"type": "contact", "id": id, "email": email}))
    }

    fn update(&self, id: &str, body: &Value) -> Answer {
        match self.contacts.iter().find(|c| c.id == id) {
            Some(c) => Answer::json(
                200,
                json!({"type": "contact", "id": c.id, "email": body["email"]}),
            ),
            None => error(404, "not_found", "User Not Found"),
        }
    }
}

impl Crm for Intercom {
    fn answer(&mut self, request: &Request, _: &str) -> Answer {
        let authorised = request.headers.get("authorization").map(String::as_str)
            == Some("Bearer ic-token")
            && request.headers.get("intercom-version").map(String::as_str) == Some("2.14");
        if !authorised {
            return error(401, "unauthorized", "Access Token Invalid");
        }
        let reset = (chrono::Utc::now().timestamp() + 2).to_string();
        if let Some(answer) = self.throttle.take(|| {
            error(429, "rate_limit_exceeded", "Rate Limit Exceeded")
                .header("X-RateLimit-Limit", "1666")
                .header("X-RateLimit-Remaining", "0")
                .header("X-RateLimit-Reset", &reset)
        }) {
            return answer;
        }
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/contacts/search") => self.search(&request.body),
            ("POST", "/contacts") => self.create(&request.body),
            ("PUT", path) if path.starts_with("/contacts/") => {
                self.update(&path["/contacts/".len()..], &request.body)
            }
            _ => error(404, "not_found", "Resource Not Found"),
        }
    }
}

const MAPPING: &str = r#"
[fields]
role = "user"
email = "{{email}}"
name = "{{name}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercom_creates_updates_turns_a_409_into_an_update_rejects_a_bad_email_and_waits_out_a_429()
 {
    let mut crm = Intercom::default();
    crm.contacts.push(Contact {
        id: "64a0000000000000000000b1".into(),
        email: "known@example.com".into(),
        indexed: true,
    });
    // Created by someone else a moment ago: search cannot see it yet.
    crm.contacts.push(Contact {
        id: "64a0000000000000000000c2".into(),
        email: "fresh@example.com".into(),
        indexed: false,
    });
    let crm = Imitation::start(crm).await;
    let sync = ExampleSync::start(
        "intercom",
        &crm.base_url,
        MAPPING,
        &[("INTERCOM_ACCESS_TOKEN", "ic-token")],
        |text| text,
    )
    .await;
    sync.queue(&[
        ("new", "new@example.com", "New Person"),
        ("known", "Known@Example.com ", "Known Person"),
        ("fresh", "fresh@example.com", "Fresh Person"),
        ("bad", "not-an-email", "Bad Person"),
    ])
    .await;
    sync.run().await;

    let new_id = crm.with(|c| c.find("new@example.com").map(|c| c.id.clone()));
    assert_eq!(sync.ended("new").await, synced(&new_id.unwrap()));
    assert_eq!(
        sync.ended("known").await,
        synced("64a0000000000000000000b1")
    );
    assert_eq!(
        sync.ended("fresh").await,
        synced("64a0000000000000000000c2")
    );
    assert_eq!(
        sync.ended("bad").await,
        Ended {
            status: "Error".into(),
            crm_id: None,
            error: Some("HTTP 400 Bad Request: Email address is invalid".into()),
        }
    );
    // No duplicate: the two known contacts and the one new one.
    assert_eq!(crm.with(|c| c.contacts.len()), 3);
    assert_eq!(crm.count("PUT /contacts/64a0000000000000000000c2"), 1);
    // Throttled once, then the 9 requests the four rows need.
    assert_eq!(crm.answered(429), 1);
    // X-RateLimit-Reset (an epoch second, 2 s ahead) was waited out.
    let waited = crm.resent_after(429);
    assert!(
        waited >= std::time::Duration::from_millis(950),
        "{waited:?}"
    );
    assert_eq!(crm.received().len(), 10);
}
