//! `connectors/mailchimp.toml` against an imitation of Mailchimp's list members API.
//!
//! Facts imitated, with their sources:
//! - `PUT /3.0/lists/{list_id}/members/{subscriber_hash}`, where the hash is
//!   md5(lowercase(email)), creates or updates; `status_if_new` is required for a
//!   new member; repeat calls are safe; the id at `/id` is that hash.
//!   https://mailchimp.com/developer/marketing/api/list-members/add-or-update-list-member/
//!   (and https://hexdocs.pm/mailchimp/Mailchimp.Member.html for the id).
//! - A duplicate: `POST /lists/{id}/members` fails for an existing member with
//!   "… is already a list member" (https://github.com/Arcadier/Mailchimp-Exporter/wiki/Mailchimp-Sync-Errors);
//!   the connector's PUT never meets it, which the imitation checks by answering it.
//! - Errors are problem JSON `{"type","title","status","detail","instance"}`; a bad
//!   address: 400 "Invalid Resource", "… looks fake or invalid, please enter a
//!   real email address." (same wiki page).
//! - Auth: HTTP Basic, any user name, the API key as password.
//! - Limits: at most 10 simultaneous connections, no rate headers; over it 429
//!   (https://raw.githubusercontent.com/api-evangelist/mailchimp/refs/heads/main/rate-limits/mailchimp-rate-limits.yml,
//!   a third-party summary of Mailchimp's "fundamentals" page).

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::{Answer, Crm, Ended, ExampleSync, Imitation, Request, ThrottleOnce, synced};

#[derive(Default)]
struct Mailchimp {
    /// Members of list `abc123`, by subscriber hash.
    members: BTreeMap<String, Value>,
    throttle: ThrottleOnce,
}

fn subscriber_hash(email: &str) -> String {
    crate::support::hex(&Md5::digest(email.to_lowercase().as_bytes()))
}

fn problem(status: u16, title: &str, detail: &str) -> Answer {
    Answer::json(
        status,
        json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/",
               "title": title, "status": status, "detail": detail, "instance": "i-1"}),
    )
}

impl Mailchimp {
    fn put_member(&mut self, hash: &str, body: &Value) -> Answer {
        let email = body["email_address"].as_str().unwrap_or_default();
        if !email.contains('@') || email.contains("fake") {
            let detail =
                format!("{email} looks fake or invalid, please enter a real email address.");
            return problem(400, "Invalid Resource", &detail);
        }
        if subscriber_hash(email) != hash {
            return problem(
                400,
                "Invalid Resource",
                "The subscriber hash does not match the email address.",
            );
        }
        let exists = self.members.contains_key(hash);
        if !exists && body["status_if_new"].as_str().is_none() {
            return problem(
                400,
                "Invalid Resource",
                "The resource submitted could not be validated.",
            );
        }
        let member =
            json!({"id": hash, "email_address": email, "merge_fields": body["merge_fields"]});
        self.members.insert(hash.to_string(), member.clone());
        Answer::json(200, member)
    }
}

impl Crm for Mailchimp {
    fn answer(&mut self, request: &Request, _: &str) -> Answer {
        // Basic base64("engine:mc-key-us1").
        if request.headers.get("authorization").map(String::as_str)
            != Some("Basic ZW5naW5lOm1jLWtleS11czE=")
        {
            return problem(401, "API Key Invalid", "Your API key may be invalid.");
        }
        if let Some(answer) = self.throttle.take(|| {
            problem(
                429,
                "Too Many Requests",
                "You have exceeded the limit of 10 simultaneous connections.",
            )
        }) {
            return answer;
        }
        let prefix = "/lists/abc123/members";
        match (request.method.as_str(), request.path.strip_prefix(prefix)) {
            ("PUT", Some(hash)) if hash.len() > 1 => self.put_member(&hash[1..], &request.body),
            ("POST", Some("")) => {
                let email = request.body["email_address"].as_str().unwrap_or_default();
                let detail = format!(
                    "{email} is already a list member. Use PUT to insert or update list members."
                );
                problem(400, "Member Exists", &detail)
            }
            _ => problem(
                404,
                "Resource Not Found",
                "The requested resource could not be found.",
            ),
        }
    }
}

const MAPPING: &str = r#"
[params]
list_id = "abc123"

[fields]
FNAME = "{{first_name name}}"
LNAME = "{{last_name name}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailchimp_creates_updates_the_same_member_by_hash_rejects_a_fake_address_and_waits_out_a_429()
 {
    let mut crm = Mailchimp::default();
    let known = subscriber_hash("known@example.com");
    crm.members.insert(
        known.clone(),
        json!({"id": known, "email_address": "known@example.com"}),
    );
    let crm = Imitation::start(crm).await;
    let sync = ExampleSync::start(
        "mailchimp",
        &crm.base_url,
        MAPPING,
        &[("MAILCHIMP_API_KEY", "mc-key-us1")],
        |text| text,
    )
    .await;
    sync.queue(&[
        ("new", "New@Example.com", "New Person"),
        ("known", " KNOWN@example.com", "Known Person"),
        ("fake", "fake@example.com", "Fake Person"),
    ])
    .await;
    sync.run().await;

    assert_eq!(
        sync.ended("new").await,
        synced(&subscriber_hash("new@example.com"))
    );
    assert_eq!(sync.ended("known").await, synced(&known));
    assert_eq!(
        sync.ended("fake").await,
        Ended {
            status: "Error".into(),
            crm_id: None,
            error: Some("HTTP 400 Bad Request: fake@example.com looks fake or invalid, please enter a real email address.".into()),
        }
    );
    assert_eq!(crm.with(|c| c.members.len()), 2);
    let known_member = crm.with(|c| c.members[&known].clone());
    assert_eq!(known_member["merge_fields"]["FNAME"], "Known");
    assert_eq!(crm.count("POST /lists/abc123/members"), 0);
    assert_eq!(crm.answered(429), 1);
    // No header and no window: one second before sending again.
    let waited = crm.resent_after(429);
    assert!(
        waited >= std::time::Duration::from_millis(950),
        "{waited:?}"
    );
}
