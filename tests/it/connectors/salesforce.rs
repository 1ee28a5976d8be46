//! `connectors/salesforce.toml` against an imitation of a Salesforce org; the
//! same org serves `salesforce-collections.toml` (see `salesforce_collections`).
//!
//! Facts imitated, with their sources:
//! - Refresh-token flow: `POST /services/oauth2/token`, form body
//!   `grant_type=refresh_token&refresh_token=…&client_id=…&client_secret=…`; the
//!   answer carries `access_token` and `instance_url`, where every call goes.
//!   https://developer.salesforce.com/docs/atlas.en-us.222.0.api_rest.meta/api/intro_understanding_refresh_token_oauth.htm
//!   An expired token: 401 `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`.
//! - Upsert: `PATCH /services/data/vXX.X/sobjects/Contact/{ExternalIdField}/{value}`;
//!   no match creates (201 `{"id","success":true,"errors":[],"created":true}`), one
//!   match updates (v46.0 and later: 200 with `"created":false`), several matches
//!   answer 300 with a list and write nothing. The body must not hold `Id` or the
//!   external-id field.
//!   https://developer.salesforce.com/docs/platform/api-rest/guide/dome-upsert.html
//!   https://developer.salesforce.com/docs/atlas.en-us.238.0.api_rest.meta/api/resources_sobject_upsert_patch.htm
//! - Errors are a JSON array `[{"message","errorCode","fields"}]`; the daily API
//!   allocation spent: 403 `REQUEST_LIMIT_EXCEEDED`; every answer carries
//!   `Sforce-Limit-Info: api-usage=n/5000`.
//!   https://developer.salesforce.com/docs/atlas.en-us.218.0.api_rest.meta/api_rest/headers_api_usage.htm
//!   (error codes: https://raw.githubusercontent.com/api-evangelist/salesforce/refs/heads/main/errors/salesforce-error-codes.yml,
//!   a third-party list citing Salesforce's page).
//! - sObject Collections upsert: `PATCH /services/data/vXX.X/composite/sobjects/Contact/{ExternalIdField}`
//!   with `{"allOrNone":false,"records":[{"attributes":{"type":"Contact"},…}]}`, at
//!   most 200 records; "The UpsertResult objects are returned in the same order";
//!   each result has `success` and `errors` (`statusCode`, `message`, `fields`).
//!   https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html
//!   `UNABLE_TO_LOCK_ROW` (another transaction holds the record) is worth a retry.
//!   The per-item code of several matching records is representative, not quoted.

use serde_json::{Map, Value, json};

use super::{Answer, Crm, Ended, ExampleSync, Imitation, Request, ThrottleOnce, synced};

pub const EXTERNAL_ID: &str = "Email_Key__c";

#[derive(Debug, Clone)]
pub struct Contact {
    pub id: String,
    pub key: String,
    pub fields: Map<String, Value>,
}

/// One Salesforce org.
#[derive(Default)]
pub struct Org {
    pub contacts: Vec<Contact>,
    /// Requests about this key meet a spent API allocation, once.
    pub throttle_key: Option<String>,
    throttle: ThrottleOnce,
    /// Records another transaction holds once (by external id).
    pub locked_once: Vec<String>,
    calls: u32,
}

/// What one record's upsert did.
enum Upserted {
    Done {
        id: String,
        created: bool,
    },
    Failed {
        code: &'static str,
        message: String,
        fields: Vec<&'static str>,
    },
    Several(Vec<String>),
}

fn errors(status: u16, code: &str, message: &str) -> Answer {
    Answer::json(
        status,
        json!([{"message": message, "errorCode": code, "fields": []}]),
    )
}

impl Org {
    pub fn seed(&mut self, key: &str, last_name: &str) -> String {
        let id = format!("003{:015}", self.contacts.len() + 1);
        let mut fields = Map::new();
        fields.insert("LastName".into(), json!(last_name));
        self.contacts.push(Contact {
            id: id.clone(),
            key: key.to_string(),
            fields,
        });
        id
    }

    pub fn with_key(&self, key: &str) -> Vec<&Contact> {
        self.contacts.iter().filter(|c| c.key == key).collect()
    }

    fn upsert(&mut self, key: &str, record: &Map<String, Value>) -> Upserted {
        if let Some(at) = self.locked_once.iter().position(|k| k == key) {
            self.locked_once.remove(at);
            return Upserted::Failed {
                code: "UNABLE_TO_LOCK_ROW",
                message: "unable to obtain exclusive access to this record".into(),
                fields: vec![],
            };
        }
        let email = record
            .get("Email")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !email.contains('@') {
            return Upserted::Failed {
                code: "INVALID_EMAIL_ADDRESS",
                message: format!("Email: invalid email address: {email}"),
                fields: vec!["Email"],
            };
        }
        let matches: Vec<usize> = (0..self.contacts.len())
            .filter(|&i| self.contacts[i].key == key)
            .collect();
        match matches[..] {
            [] => {
                if record.get("LastName").is_none() {
                    return Upserted::Failed {
                        code: "REQUIRED_FIELD_MISSING",
                        message: "Required fields are missing: [LastName]".into(),
                        fields: vec!["LastName"],
                    };
                }
                let id = self.seed(key, "");
                self.contacts.last_mut().unwrap().fields.clone_from(record);
                Upserted::Done { id, created: true }
            }
            [one] => {
                let contact = &mut self.contacts[one];
                contact.fields.extend(record.clone());
                Upserted::Done {
                    id: contact.id.clone(),
                    created: false,
                }
            }
            _ => Upserted::Several(
                matches
                    .iter()
                    .map(|&i| {
                        format!(
                            "/services/data/v60.0/sobjects/Contact/{}",
                            self.contacts[i].id
                        )
                    })
                    .collect(),
            ),
        }
    }

    fn token(request: &Request, base_url: &str) -> Answer {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(request.text.as_bytes())
            .into_owned()
            .collect();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
        if has("grant_type", "refresh_token")
            && has("refresh_token", "sf-refresh")
            && has("client_id", "sf-client")
            && has("client_secret", "sf-secret")
        {
            Answer::json(
                200,
                json!({"access_token": "sf-access", "instance_url": base_url,
                       "id": "https://login.salesforce.com/id/00D000000000001/005000000000001",
                       "token_type": "Bearer", "issued_at": "1735689600000", "signature": "c2ln"}),
            )
        } else {
            Answer::json(
                400,
                json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}),
            )
        }
    }

    fn single(&mut self, key: &str, body: &Value) -> Answer {
        let record = body.as_object().cloned().unwrap_or_default();
        if record.contains_key("Id") || record.contains_key(EXTERNAL_ID) {
            return errors(
                400,
                "INVALID_FIELD",
                "The Id field should not be specified in the sobject data.",
            );
        }
        match self.upsert(key, &record) {
            Upserted::Done { id, created } => Answer::json(
                if created { 201 } else { 200 },
                json!({"id": id, "success": true, "errors": [], "created": created}),
            ),
            Upserted::Failed {
                code,
                message,
                fields,
            } => Answer::json(
                400,
                json!([{"message": message, "errorCode": code, "fields": fields}]),
            ),
            Upserted::Several(urls) => Answer::json(300, json!(urls)),
        }
    }

    fn collection(&mut self, body: &Value) -> Answer {
        let records = body["records"].as_array().cloned().unwrap_or_default();
        if records.len() > 200 {
            return errors(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            );
        }
        let results: Vec<Value> = records
            .iter()
            .map(|record| {
                let mut record = record.as_object().cloned().unwrap_or_default();
                if record.remove("attributes") != Some(json!({"type": "Contact"})) {
                    return json!({"success": false, "errors": [{"statusCode": "INVALID_TYPE",
                        "message": "attributes.type is required", "fields": []}]});
                }
                let key = record
                    .get(EXTERNAL_ID)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                match self.upsert(&key, &record) {
                    Upserted::Done { id, created } => {
                        json!({"id": id, "success": true, "errors": [], "created": created})
                    }
                    Upserted::Failed {
                        code,
                        message,
                        fields,
                    } => json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": fields}]}),
                    Upserted::Several(_) => json!({"success": false, "errors": [{"statusCode": "DUPLICATE_EXTERNAL_ID",
                        "message": format!("{EXTERNAL_ID}: more than one record found for external id field"),
                        "fields": [EXTERNAL_ID]}]}),
                }
            })
            .collect();
        Answer::json(200, json!(results))
    }
}

impl Crm for Org {
    fn answer(&mut self, request: &Request, base_url: &str) -> Answer {
        if request.route() == "POST /services/oauth2/token" {
            return Org::token(request, base_url);
        }
        if request.headers.get("authorization").map(String::as_str) != Some("Bearer sf-access") {
            return errors(401, "INVALID_SESSION_ID", "Session expired or invalid");
        }
        self.calls += 1;
        let usage = format!("api-usage={}/5000", self.calls);
        let about_key = self.throttle_key.as_ref().is_some_and(|key| {
            request.path.contains(key.as_str()) || request.text.contains(key.as_str())
        });
        if about_key
            && let Some(answer) = self.throttle.take(|| {
                errors(
                    403,
                    "REQUEST_LIMIT_EXCEEDED",
                    "TotalRequests Limit exceeded.",
                )
            })
        {
            return answer.header("Sforce-Limit-Info", &usage);
        }
        let single = format!("/services/data/v60.0/sobjects/Contact/{EXTERNAL_ID}/");
        let collection = format!("/services/data/v60.0/composite/sobjects/Contact/{EXTERNAL_ID}");
        let answer = match (request.method.as_str(), request.path.as_str()) {
            ("PATCH", path) if path.starts_with(&single) => {
                self.single(&path[single.len()..], &request.body)
            }
            ("PATCH", path) if path == collection => self.collection(&request.body),
            _ => errors(404, "NOT_FOUND", "The requested resource does not exist"),
        };
        answer.header("Sforce-Limit-Info", &usage)
    }
}

/// The Salesforce connectors' secrets, and the token URL pointed at the imitation.
pub const SECRETS: &[(&str, &str)] = &[
    ("SALESFORCE_CLIENT_ID", "sf-client"),
    ("SALESFORCE_CLIENT_SECRET", "sf-secret"),
    ("SALESFORCE_REFRESH_TOKEN", "sf-refresh"),
];

/// The one edit the test makes to the shipped file: its token URL.
pub fn token_url_at(base_url: &str) -> impl FnOnce(String) -> String {
    let local = format!("{base_url}/services/oauth2/token");
    move |text: String| {
        let shipped = "https://login.salesforce.com/services/oauth2/token";
        assert!(text.contains(shipped));
        text.replace(shipped, &local)
    }
}

/// An org holding `known@example.com` and two records keyed
/// `twice@example.com`, whose API allocation is spent for requests about
/// `busy@example.com`, changed by `adjust`; then `connector` (a shipped
/// Salesforce file, its token URL pointed at the org) with `mapping`, and
/// the rows every Salesforce test queues (see [`assert_the_shared_rows_ended`]).
/// Returns the org, the sync, and the known record's id.
pub async fn sync_against_an_org(
    connector: &str,
    mapping: &str,
    adjust: impl FnOnce(&mut Org),
) -> (Imitation<Org>, ExampleSync, String) {
    let mut org = Org::default();
    let known = org.seed("known@example.com", "Old");
    org.seed("twice@example.com", "One");
    org.seed("twice@example.com", "Two");
    org.throttle_key = Some("busy@example.com".into());
    adjust(&mut org);
    let org = Imitation::start(org).await;
    let token_url = token_url_at(&org.base_url);
    let sync = ExampleSync::start(connector, &org.base_url, mapping, SECRETS, token_url).await;
    sync.queue(&[
        ("new", "new@example.com", "New Person"),
        ("known", "Known@Example.com", "Known Person"),
        ("twice", "twice@example.com", "Twice Person"),
        ("bad", "bad.example.com", "Bad Person"),
    ])
    .await;
    (org, sync, known)
}

/// The rows of [`sync_against_an_org`] ended as Salesforce decides: `new`
/// created, `known` updated (matched despite its case), `twice` failed for
/// matching several records (`twice_error` in its reason), `bad` failed with
/// `bad_error`.
pub async fn assert_the_shared_rows_ended(
    org: &Imitation<Org>,
    sync: &ExampleSync,
    known: &str,
    twice_error: &str,
    bad_error: &str,
) {
    let new_id = org.with(|o| o.with_key("new@example.com")[0].id.clone());
    assert_eq!(sync.ended("new").await, synced(&new_id));
    assert_eq!(sync.ended("known").await, synced(known));
    let twice = sync.ended("twice").await;
    assert_eq!(twice.status, "Error");
    let reason = twice.error.as_deref().unwrap_or_default();
    assert!(reason.contains(twice_error), "{twice:?}");
    assert_eq!(
        sync.ended("bad").await,
        Ended {
            status: "Error".into(),
            crm_id: None,
            error: Some(bad_error.into()),
        }
    );
}

const MAPPING: &str = r#"
[fields]
LastName = "{{last_name name}}"
FirstName = "{{first_name name}}"
Email = "{{email}}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_creates_updates_by_external_id_fails_on_several_matches_and_a_bad_email_and_hands_back_a_row_when_the_allocation_is_spent()
 {
    let (org, sync, known) = sync_against_an_org("salesforce", MAPPING, |_| {}).await;
    sync.queue(&[("busy", "busy@example.com", "Busy Person")])
        .await;
    sync.run().await;

    assert_the_shared_rows_ended(
        &org,
        &sync,
        &known,
        "HTTP 300 Multiple Choices",
        "HTTP 400 Bad Request: Email: invalid email address: bad.example.com",
    )
    .await;
    let known_fields = org.with(|o| o.with_key("known@example.com")[0].fields.clone());
    assert_eq!(known_fields["LastName"], "Person");
    // Nothing duplicated, nothing written on several matches.
    assert_eq!(org.with(|o| o.contacts.len()), 4);
    assert_eq!(org.count("POST /services/oauth2/token"), 1);
    assert_eq!(org.answered(403), 1);
    assert_handed_back_for_an_hour(&sync, "busy").await;
}

/// A row that met REQUEST_LIMIT_EXCEEDED is queued again an hour later, with
/// no error (only the hand-back's note) and no retry spent: the allocation is
/// the org's, not the row's.
pub async fn assert_handed_back_for_an_hour(sync: &ExampleSync, id: &str) {
    let row = sync.row(id).await;
    assert_eq!(row["crm_processing_status"], "Queued", "{row:?}");
    let note = row["crm_processing_error"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("not sent yet: handed back until"),
        "{row:?}"
    );
    assert_eq!(row["crm_retry_count"], 0, "{row:?}");
    let next = row["crm_next_retry_at"].as_str().expect("a retry time");
    let next = chrono::DateTime::parse_from_rfc3339(next)
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(next, "%Y-%m-%d %H:%M:%S%.f")
                .map(|n| n.and_utc().fixed_offset())
        })
        .expect("a time");
    let wait = next.signed_duration_since(chrono::Utc::now());
    assert!(wait > chrono::Duration::minutes(55), "{wait:?}");
}
