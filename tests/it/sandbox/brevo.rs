//! Brevo contacts: create/upsert, get, update, batch, attributes and limits.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::{Answer, options, start};
use engine::sandbox::SandboxOptions;

fn assert_error(answer: &Answer, status: u16, code: &str, message: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.body["code"], code);
    assert_eq!(answer.body["message"], message);
}

#[tokio::test]
async fn brevo_requests_without_a_valid_api_key_answer_401_unauthorized() {
    let env = start(SandboxOptions {
        brevo_api_key: Some("right".into()),
        ..options()
    })
    .await;
    for key in [None, Some(("api-key", "wrong"))] {
        let answer = env.send(Method::GET, "/v3/contacts/1", key, None).await;
        assert_eq!(
            answer.body,
            json!({"code": "unauthorized", "message": "Key not found"})
        );
        assert_eq!(answer.status, 401);
    }
    let answer = env
        .send(
            Method::GET,
            "/v3/contacts/1",
            Some(("api-key", "right")),
            None,
        )
        .await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn brevo_create_of_a_new_contact_answers_201_with_its_id() {
    let env = start(options()).await;
    let body =
        json!({"email": "Jane@Example.com", "attributes": {"FIRSTNAME": "Jane"}, "listIds": [7]});
    let answer = env.brevo(Method::POST, "/contacts", Some(body)).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body, json!({"id": 1}));
    let stored = &env.sandbox.brevo_contacts()[0];
    assert_eq!(stored["email"], "jane@example.com");
    assert_eq!(stored["listIds"], json!([7]));
}

#[tokio::test]
async fn brevo_create_of_an_existing_email_with_update_enabled_answers_204_and_updates() {
    let env = start(options()).await;
    env.brevo_contact(json!({"email": "jane@example.com", "attributes": {"FIRSTNAME": "Jane"}}))
        .await;
    let body = json!({"email": "JANE@example.com", "attributes": {"LASTNAME": "Doe"}, "listIds": [3], "updateEnabled": true});
    let answer = env.brevo(Method::POST, "/contacts", Some(body)).await;
    assert_eq!(answer.status, 204);
    assert!(answer.body.is_null());
    let stored = env.sandbox.brevo_contacts();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["attributes"],
        json!({"FIRSTNAME": "Jane", "LASTNAME": "Doe"})
    );
    assert_eq!(stored[0]["listIds"], json!([3]));
}

#[tokio::test]
async fn brevo_create_of_an_existing_email_without_update_enabled_answers_400_duplicate_parameter()
{
    let env = start(options()).await;
    env.brevo_contact(json!({"email": "jane@example.com"}))
        .await;
    let answer = env
        .brevo(
            Method::POST,
            "/contacts",
            Some(json!({"email": "jane@example.com"})),
        )
        .await;
    let message = "Unable to create contact, email is already associated with another Contact";
    assert_error(&answer, 400, "duplicate_parameter", message);
    assert_eq!(
        answer.body["metadata"],
        json!({"duplicate_identifiers": ["email"]})
    );
}

#[tokio::test]
async fn brevo_create_without_email_sms_or_ext_id_answers_400_missing_parameter() {
    let env = start(options()).await;
    let body = json!({"attributes": {"FIRSTNAME": "Jane"}});
    let answer = env.brevo(Method::POST, "/contacts", Some(body)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["code"], "missing_parameter");
    env.brevo_contact(json!({"ext_id": "row-7"})).await;
    env.brevo_contact(json!({"attributes": {"SMS": "+33612345678"}}))
        .await;
}

#[tokio::test]
async fn brevo_get_by_urlencoded_email_or_by_id_answers_the_contact() {
    let env = start(options()).await;
    let body = json!({"email": "jane+x@example.com", "attributes": {"FIRSTNAME": "Jane"}});
    let id = env.brevo_contact(body).await;
    for path in [
        "/contacts/Jane%2Bx%40example.com",
        &format!("/contacts/{id}"),
        "/contacts/jane%2Bx%40example.com?identifierType=email_id",
    ] {
        let answer = env.brevo(Method::GET, path, None).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.body["id"], id);
        assert_eq!(answer.body["email"], "jane+x@example.com");
        assert_eq!(answer.body["emailBlacklisted"], false);
        assert_eq!(answer.body["smsBlacklisted"], false);
        assert_eq!(answer.body["attributes"]["FIRSTNAME"], "Jane");
        assert_eq!(answer.body["listIds"], json!([]));
        assert_eq!(answer.body["statistics"], json!({}));
        assert!(answer.body["createdAt"].is_string() && answer.body["modifiedAt"].is_string());
    }
}

#[tokio::test]
async fn brevo_get_or_put_of_an_unknown_contact_answers_404_document_not_found() {
    let env = start(options()).await;
    let get = env
        .brevo(Method::GET, "/contacts/nobody%40example.com", None)
        .await;
    assert_error(&get, 404, "document_not_found", "Contact does not exist");
    let put = env
        .brevo(Method::PUT, "/contacts/42", Some(json!({"attributes": {}})))
        .await;
    assert_error(&put, 404, "document_not_found", "Contact does not exist");
}

#[tokio::test]
async fn brevo_put_updates_attributes_and_answers_204() {
    let env = start(options()).await;
    env.brevo_contact(json!({"email": "jane@example.com", "attributes": {"FIRSTNAME": "Jane"}}))
        .await;
    let body = json!({"attributes": {"FIRSTNAME": "Janet", "EMAIL": "janet@example.com"}});
    let answer = env
        .brevo(Method::PUT, "/contacts/jane%40example.com", Some(body))
        .await;
    assert_eq!(answer.status, 204);
    let stored = &env.sandbox.brevo_contacts()[0];
    assert_eq!(stored["email"], "janet@example.com");
    assert_eq!(stored["attributes"]["FIRSTNAME"], "Janet");
}

#[tokio::test]
async fn brevo_batch_updates_existing_contacts_and_answers_204() {
    let env = start(options()).await;
    let a = env.brevo_contact(json!({"email": "a@example.com"})).await;
    env.brevo_contact(json!({"email": "b@example.com"})).await;
    let contacts = json!([
        {"id": a, "attributes": {"FIRSTNAME": "A"}},
        {"email": "B@example.com", "attributes": {"FIRSTNAME": "B"}},
    ]);
    let answer = env
        .brevo(
            Method::POST,
            "/contacts/batch",
            Some(json!({ "contacts": contacts })),
        )
        .await;
    assert_eq!(answer.status, 204);
    let names: Vec<_> = env
        .sandbox
        .brevo_contacts()
        .iter()
        .map(|c| c["attributes"]["FIRSTNAME"].clone())
        .collect();
    assert_eq!(names, [json!("A"), json!("B")]);
    let unknown =
        json!({"contacts": [{"email": "c@example.com", "attributes": {"FIRSTNAME": "C"}}]});
    let refused = env
        .brevo(Method::POST, "/contacts/batch", Some(unknown))
        .await;
    assert_eq!(refused.status, 400, "batch updates only");
    assert_eq!(env.sandbox.brevo_contacts().len(), 2);
}

#[tokio::test]
async fn brevo_unknown_attribute_answers_400_invalid_parameter() {
    let env = start(options()).await;
    let body = json!({"email": "a@example.com", "attributes": {"SHOE_SIZE": 44}});
    let answer = env.brevo(Method::POST, "/contacts", Some(body)).await;
    assert_error(
        &answer,
        400,
        "invalid_parameter",
        "Attribute SHOE_SIZE does not exist",
    );
    assert!(env.sandbox.brevo_contacts().is_empty());
}

#[tokio::test]
async fn brevo_sms_without_a_country_code_answers_400_invalid_phone_number() {
    let env = start(options()).await;
    for sms in ["0612345678", "+33 6 12 34 56 78", "+1234"] {
        let body = json!({"email": "a@example.com", "attributes": {"SMS": sms}});
        let answer = env.brevo(Method::POST, "/contacts", Some(body)).await;
        assert_error(&answer, 400, "invalid_parameter", "Invalid phone number");
    }
    env.brevo_contact(json!({"email": "a@example.com", "attributes": {"SMS": "0033612345678"}}))
        .await;
    assert_eq!(
        env.sandbox.brevo_contacts()[0]["attributes"]["SMS"],
        "33612345678"
    );
}

#[tokio::test]
async fn brevo_sms_used_by_another_contact_answers_400_duplicate_parameter() {
    let env = start(options()).await;
    env.brevo_contact(json!({"email": "a@example.com", "attributes": {"SMS": "+33612345678"}}))
        .await;
    let body = json!({"email": "b@example.com", "attributes": {"SMS": "0033612345678"}, "updateEnabled": true});
    let answer = env.brevo(Method::POST, "/contacts", Some(body)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["code"], "duplicate_parameter");
    assert_eq!(
        answer.body["metadata"],
        json!({"duplicate_identifiers": ["SMS"]})
    );
    assert_eq!(env.sandbox.brevo_contacts().len(), 1);
}

#[tokio::test]
async fn brevo_invalid_email_answers_400_invalid_parameter() {
    let env = start(options()).await;
    let answer = env
        .brevo(
            Method::POST,
            "/contacts",
            Some(json!({"email": "jane at example"})),
        )
        .await;
    assert_error(&answer, 400, "invalid_parameter", "Invalid email address");
}

#[tokio::test]
async fn brevo_rate_limit_answers_429_with_sib_ratelimit_headers() {
    let env = start(SandboxOptions {
        brevo_per_s: Some(2),
        ..options()
    })
    .await;
    let first = env.brevo(Method::GET, "/contacts/1", None).await;
    assert_eq!(first.header("x-sib-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-sib-ratelimit-remaining"), Some("1"));
    assert_eq!(first.header("x-sib-ratelimit-reset"), Some("1"));
    env.brevo(Method::GET, "/contacts/1", None).await;
    let limited = env.brevo(Method::GET, "/contacts/1", None).await;
    assert_error(&limited, 429, "too_many_requests", "Too many requests");
    assert_eq!(limited.header("x-sib-ratelimit-remaining"), Some("0"));
    env.sandbox.advance_clock(Duration::from_secs(1));
    assert_eq!(
        env.brevo(Method::GET, "/contacts/1", None).await.status,
        404
    );
}

#[tokio::test]
async fn brevo_delete_answers_204_with_no_body_then_404_document_not_found() {
    let env = start(options()).await;
    let id = env
        .brevo_contact(json!({"email": "jane@example.com"}))
        .await;
    let deleted = env
        .brevo(
            Method::DELETE,
            &format!("/contacts/{id}?identifierType=contact_id"),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.body, serde_json::Value::Null);
    assert!(env.sandbox.brevo_contacts().is_empty());
    let again = env
        .brevo(
            Method::DELETE,
            &format!("/contacts/{id}?identifierType=contact_id"),
            None,
        )
        .await;
    assert_error(&again, 404, "document_not_found", "Contact does not exist");
    // The email is free again: a create makes a new contact.
    env.brevo_contact(json!({"email": "jane@example.com"}))
        .await;
}

#[tokio::test]
async fn brevo_delete_by_email_finds_the_contact_case_insensitively() {
    let env = start(options()).await;
    env.brevo_contact(json!({"email": "jane@example.com"}))
        .await;
    let deleted = env
        .brevo(Method::DELETE, "/contacts/Jane%40Example.com", None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert!(env.sandbox.brevo_contacts().is_empty());
}

#[tokio::test]
async fn brevo_import_answers_202_and_applies_its_valid_rows_once_the_process_completes() {
    let env = start(SandboxOptions {
        brevo_import_delay_ms: 60_000,
        ..options()
    })
    .await;
    let body = json!({
        "jsonBody": [
            {"email": "Ada@Example.com", "attributes": {"FIRSTNAME": "Ada", "NOT_IN_ACCOUNT": 1}},
            {"email": "not-an-email", "attributes": {"FIRSTNAME": "Skipped"}},
            {"email": "bob@example.com", "attributes": {"SMS": "12"}},
        ],
        "listIds": [7],
    });
    let answer = env
        .brevo(Method::POST, "/contacts/import", Some(body))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body, json!({"processId": 1}));
    let process = env.brevo(Method::GET, "/processes/1", None).await;
    assert_eq!(process.body["status"], "in_process");
    assert!(env.sandbox.brevo_contacts().is_empty(), "not applied yet");

    env.sandbox.advance_clock(Duration::from_secs(60));

    let process = env.brevo(Method::GET, "/processes/1", None).await;
    assert_eq!(process.body["status"], "completed");
    // The invalid email and the invalid SMS were skipped without a word; the
    // unknown attribute was ignored.
    let contacts = env.sandbox.brevo_contacts();
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(contacts[0]["email"], "ada@example.com");
    assert_eq!(contacts[0]["listIds"], json!([7]));
    assert_eq!(contacts[0]["attributes"], json!({"FIRSTNAME": "Ada"}));
}

#[tokio::test]
async fn brevo_import_updates_existing_contacts_instead_of_duplicating_them() {
    let env = start(SandboxOptions {
        brevo_import_delay_ms: 0,
        brevo_import_us_per_row: 0,
        ..options()
    })
    .await;
    let id = env
        .brevo_contact(json!({"email": "ada@example.com", "attributes": {"FIRSTNAME": "A"}}))
        .await;
    let body = json!({
        "jsonBody": [{"email": "ADA@example.com", "attributes": {"FIRSTNAME": "Ada"}}],
        "listIds": [7],
    });
    for _ in 0..2 {
        let answer = env
            .brevo(Method::POST, "/contacts/import", Some(body.clone()))
            .await;
        assert_eq!(answer.status, 202);
    }
    let contacts = env.sandbox.brevo_contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["id"], id);
    assert_eq!(contacts[0]["attributes"]["FIRSTNAME"], "Ada");
}

#[tokio::test]
async fn brevo_import_without_a_list_or_contacts_answers_400() {
    let env = start(options()).await;
    let no_list = json!({"jsonBody": [{"email": "ada@example.com"}]});
    let answer = env
        .brevo(Method::POST, "/contacts/import", Some(no_list))
        .await;
    assert_error(
        &answer,
        400,
        "missing_parameter",
        "listIds or newList is mandatory",
    );
    let no_contacts = json!({"listIds": [7]});
    let answer = env
        .brevo(Method::POST, "/contacts/import", Some(no_contacts))
        .await;
    assert_eq!(answer.status, 400);
    let unknown = env.brevo(Method::GET, "/processes/99", None).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn brevo_listing_pages_at_most_1000_contacts_modified_after_the_given_instant() {
    let env = start(options()).await;
    for i in 0..3 {
        env.brevo_contact(json!({"email": format!("old{i}@example.com")}))
            .await;
    }
    env.sandbox.advance_clock(Duration::from_secs(10));
    let since = chrono::Utc::now() + chrono::Duration::seconds(5);
    env.sandbox.advance_clock(Duration::from_secs(10));
    for i in 0..3 {
        env.brevo_contact(json!({"email": format!("new{i}@example.com")}))
            .await;
    }
    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let page =
        |offset: usize| format!("/contacts?modifiedSince={since}&limit=2&offset={offset}&sort=asc");
    let first = env.brevo(Method::GET, &page(0), None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["count"], 3);
    let emails = |answer: &Answer| -> Vec<String> {
        answer.body["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["email"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(emails(&first), ["new0@example.com", "new1@example.com"]);
    let second = env.brevo(Method::GET, &page(2), None).await;
    assert_eq!(emails(&second), ["new2@example.com"]);
    let too_many = env.brevo(Method::GET, "/contacts?limit=1001", None).await;
    assert_eq!(too_many.status, 400);
}

#[tokio::test]
async fn brevo_processes_draw_on_the_hourly_budget_of_other_endpoints_not_on_contacts() {
    let env = start(SandboxOptions {
        brevo_per_s: Some(1),
        brevo_other_per_hour: Some(2),
        ..options()
    })
    .await;
    // The contacts window is spent; the processes budget is not.
    assert_eq!(
        env.brevo(Method::GET, "/contacts/1", None).await.status,
        404
    );
    for _ in 0..2 {
        assert_eq!(
            env.brevo(Method::GET, "/processes/1", None).await.status,
            404
        );
    }
    let limited = env.brevo(Method::GET, "/processes/1", None).await;
    assert_eq!(limited.status, 429);
    env.sandbox.advance_clock(Duration::from_secs(3_599));
    assert_eq!(
        env.brevo(Method::GET, "/processes/1", None).await.status,
        429
    );
    env.sandbox.advance_clock(Duration::from_secs(1));
    assert_eq!(
        env.brevo(Method::GET, "/processes/1", None).await.status,
        404
    );
}
