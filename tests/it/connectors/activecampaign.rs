//! `connectors/activecampaign.toml` against an imitation of ActiveCampaign's API v3.
//!
//! Facts imitated, with their sources:
//! - `POST /api/3/contact/sync` with `{"contact":{"email","firstName","lastName",…}}`
//!   creates or updates, matching on email; the id is at `/contact/id`, a string.
//!   https://developers.activecampaign.com/reference/sync-a-contacts-data
//!   (and rudderlabs/rudder-transformer `src/v0/destinations/active_campaign/`).
//!   Which of 200 and 201 each case answers is not in our notes; this
//!   imitation answers 201 on create and 200 on update.
//! - There is no duplicate answer: sync matches the existing contact.
//! - A bad email answers 422 `{"errors":[{"title":"Contact Email Address is not
//!   valid.","detail":"","code":"email_invalid","error":"must_be_valid_email_address",
//!   "source":{"pointer":"/data/attributes/email"}}]}` (rudder-transformer
//!   `test/integrations/destinations/active_campaign/network.ts`).
//! - Auth: header `Api-Token: <key>`.
//! - 5 requests per second per account; 429 carries `Retry-After: <s>`,
//!   `RateLimit-Limit` and `RateLimit-Remaining`.
//!   https://developers.activecampaign.com/reference/rate-limits

use serde_json::{Value, json};

use super::{Answer, Crm, Ended, ExampleSync, Imitation, Request, ThrottleOnce, synced};

#[derive(Default)]
struct ActiveCampaign {
    /// (id, email)
    contacts: Vec<(String, String)>,
    throttle: ThrottleOnce,
}

impl ActiveCampaign {
    fn sync(&mut self, body: &Value) -> Answer {
        let contact = &body["contact"];
        let email = contact["email"].as_str().unwrap_or_default();
        if !email.contains('@') {
            return Answer::json(
                422,
                json!({"errors": [{"title": "Contact Email Address is not valid.", "detail": "",
                                   "code": "email_invalid", "error": "must_be_valid_email_address",
                                   "source": {"pointer": "/data/attributes/email"}}]}),
            );
        }
        let existing = self
            .contacts
            .iter()
            .find(|(_, e)| e.eq_ignore_ascii_case(email))
            .map(|(id, _)| id.clone());
        let (status, id) = match existing {
            Some(id) => (200, id),
            None => {
                let id = (100 + self.contacts.len()).to_string();
                self.contacts.push((id.clone(), email.to_string()));
                (201, id)
            }
        };
        Answer::json(
            status,
            json!({"fieldValues": [], "contact": {"email": email, "firstName": contact["firstName"], "id": id}}),
        )
    }
}

impl Crm for ActiveCampaign {
    fn answer(&mut self, request: &Request, _: &str) -> Answer {
        if request.headers.get("api-token").map(String::as_str) != Some("ac-key") {
            return Answer::json(
                403,
                json!({"message": "No Result found for Subscriber with id 0"}),
            );
        }
        if let Some(answer) = self.throttle.take(|| {
            Answer::json(429, json!({"message": "Too Many Requests"}))
                .header("Retry-After", "1")
                .header("RateLimit-Limit", "5")
                .header("RateLimit-Remaining", "0")
        }) {
            return answer;
        }
        match request.route().as_str() {
            "POST /api/3/contact/sync" => self.sync(&request.body),
            _ => Answer::json(404, json!({"message": "Not Found"})),
        }
    }
}

const MAPPING: &str = r#"
[fields]
email = "{{email}}"
firstName = "{{first_name name}}"
lastName = "{{last_name name}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activecampaign_creates_syncs_an_existing_contact_rejects_a_bad_email_and_waits_out_a_429()
{
    let mut crm = ActiveCampaign::default();
    crm.contacts.push(("42".into(), "known@example.com".into()));
    let crm = Imitation::start(crm).await;
    // The account's own host: https://{account}.api-us1.com/api/3.
    let base_url = format!("{}/api/3", crm.base_url);
    let sync = ExampleSync::start(
        "activecampaign",
        &base_url,
        MAPPING,
        &[("ACTIVECAMPAIGN_API_TOKEN", "ac-key")],
        |text| text,
    )
    .await;
    sync.queue(&[
        ("new", "new@example.com", "New Person"),
        ("known", "Known@example.com", "Known Person"),
        ("bad", "not-an-email", "Bad Person"),
    ])
    .await;
    sync.run().await;

    assert_eq!(sync.ended("new").await, synced("101"));
    assert_eq!(sync.ended("known").await, synced("42"));
    assert_eq!(
        sync.ended("bad").await,
        Ended {
            status: "Error".into(),
            crm_id: None,
            error: Some(
                "HTTP 422 Unprocessable Entity: Contact Email Address is not valid.".into()
            ),
        }
    );
    assert_eq!(crm.with(|c| c.contacts.len()), 2);
    assert_eq!(crm.answered(429), 1);
    // Retry-After: 1 was waited out before the same request went again.
    let waited = crm.resent_after(429);
    assert!(
        waited >= std::time::Duration::from_millis(950),
        "{waited:?}"
    );
    assert_eq!(crm.count("POST /api/3/contact/sync"), 4);
}
