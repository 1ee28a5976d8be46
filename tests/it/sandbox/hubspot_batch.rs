//! HubSpot batch endpoints: upsert by email, create, update and read.

use reqwest::Method;
use serde_json::{Value, json};

use super::{Answer, Env, options, start};
use engine::sandbox::SandboxOptions;

async fn batch(env: &Env, action: &str, body: Value) -> Answer {
    let path = format!("/crm/v3/objects/contacts/batch/{action}");
    env.hubspot(Method::POST, &path, Some(body)).await
}

fn upsert_input(email: &str, properties: Value, trace: &str) -> Value {
    json!({"idProperty": "email", "id": email, "properties": properties, "objectWriteTraceId": trace})
}

fn emails(results: &Value) -> Vec<&str> {
    let results = results.as_array().unwrap();
    results
        .iter()
        .map(|r| r["properties"]["email"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn hubspot_batch_with_more_than_100_inputs_answers_400_validation_error() {
    let env = start(options()).await;
    let inputs: Vec<Value> = (0..101)
        .map(|i| upsert_input(&format!("u{i}@example.com"), json!({}), &i.to_string()))
        .collect();
    let answer = batch(&env, "upsert", json!({ "inputs": inputs })).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    assert!(answer.body["message"].as_str().unwrap().contains("100"));
    assert!(env.sandbox.hubspot_contacts().is_empty());
}

#[tokio::test]
async fn hubspot_batch_upsert_with_a_repeated_email_answers_400_and_writes_nothing() {
    let env = start(options()).await;
    let inputs = [
        upsert_input("a@example.com", json!({"firstname": "A"}), "1"),
        upsert_input("A@Example.com", json!({"firstname": "B"}), "2"),
    ];
    let answer = batch(&env, "upsert", json!({ "inputs": inputs })).await;
    assert_eq!(answer.status, 400);
    let message = "Duplicate IDs found in batch input: [a@example.com]. IDs must be unique";
    assert_eq!(answer.body["message"], message);
    assert_eq!(answer.body["context"]["ids"], json!(["a@example.com"]));
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    assert!(env.sandbox.hubspot_contacts().is_empty());
}

#[tokio::test]
async fn hubspot_batch_upsert_creates_and_updates_by_email_out_of_input_order() {
    let env = start(options()).await;
    let existing = env
        .hubspot_contact(json!({"email": "b@example.com", "firstname": "Old"}))
        .await;
    let inputs = [
        upsert_input("a@example.com", json!({"firstname": "A"}), "row-1"),
        upsert_input("B@example.com", json!({"firstname": "B"}), "row-2"),
        upsert_input("c@example.com", json!({"firstname": "C"}), "row-3"),
    ];
    let answer = batch(&env, "upsert", json!({ "inputs": inputs })).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "COMPLETE");
    assert!(answer.body["startedAt"].is_string() && answer.body["completedAt"].is_string());
    let results = &answer.body["results"];
    assert_ne!(
        emails(results),
        ["a@example.com", "b@example.com", "c@example.com"]
    );
    let by_trace = |trace: &str| {
        results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["objectWriteTraceId"] == trace)
            .unwrap()
    };
    assert_eq!(by_trace("row-1")["new"], true);
    assert_eq!(by_trace("row-2")["new"], false);
    assert_eq!(by_trace("row-2")["id"], existing.as_str());
    assert_eq!(by_trace("row-2")["properties"]["firstname"], "B");
    assert_eq!(by_trace("row-3")["archived"], false);
    assert_eq!(env.sandbox.hubspot_contacts().len(), 3);
}

#[tokio::test]
async fn hubspot_batch_upsert_with_one_invalid_input_answers_400_and_writes_nothing() {
    let env = start(options()).await;
    let inputs = [
        upsert_input("a@example.com", json!({"firstname": "A"}), "row-1"),
        upsert_input("b@example.com", json!({"shoe_size": "44"}), "row-2"),
    ];
    let answer = batch(&env, "upsert", json!({ "inputs": inputs })).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    assert_eq!(answer.body["errors"][0]["code"], "PROPERTY_DOESNT_EXIST");
    assert_eq!(
        answer.body["context"]["objectWriteTraceId"],
        json!(["row-2"])
    );
    assert!(env.sandbox.hubspot_contacts().is_empty());
}

#[tokio::test]
async fn hubspot_batch_upsert_in_partial_mode_answers_207_with_per_item_errors() {
    let env = start(SandboxOptions {
        hubspot_upsert_partial: true,
        ..options()
    })
    .await;
    let mut no_trace = upsert_input("c@example.com", json!({"shoe_size": "44"}), "");
    no_trace
        .as_object_mut()
        .unwrap()
        .remove("objectWriteTraceId");
    let inputs = [
        upsert_input("a@example.com", json!({"firstname": "A"}), "row-1"),
        upsert_input("not-an-email", json!({}), "row-2"),
        no_trace,
    ];
    let answer = batch(&env, "upsert", json!({ "inputs": inputs })).await;
    assert_eq!(answer.status, 207, "{}", answer.body);
    assert_eq!(answer.body["numErrors"], 2);
    assert_eq!(emails(&answer.body["results"]), ["a@example.com"]);
    let errors = answer.body["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .all(|e| e["status"] == "error" && e["category"] == "VALIDATION_ERROR")
    );
    assert_eq!(
        errors[0]["context"],
        json!({"objectWriteTraceId": ["row-2"]})
    );
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("INVALID_EMAIL")
    );
    assert_eq!(errors[1]["context"], json!({"ids": ["c@example.com"]}));
    assert_eq!(env.sandbox.hubspot_contacts().len(), 1);
}

#[tokio::test]
async fn hubspot_batch_create_with_existing_emails_answers_409_naming_only_the_first() {
    let env = start(options()).await;
    let first = env.hubspot_contact(json!({"email": "a@example.com"})).await;
    env.hubspot_contact(json!({"email": "b@example.com"})).await;
    let inputs = json!([
        {"properties": {"email": "new@example.com"}},
        {"properties": {"email": "A@example.com"}},
        {"properties": {"email": "b@example.com"}},
    ]);
    let answer = batch(&env, "create", json!({ "inputs": inputs })).await;
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.body["message"],
        format!("Contact already exists. Existing ID: {first}")
    );
    assert_eq!(answer.body["category"], "CONFLICT");
    assert_eq!(env.sandbox.hubspot_contacts().len(), 2, "nothing written");
}

#[tokio::test]
async fn hubspot_batch_create_answers_207_per_invalid_input_only_with_trace_ids() {
    let env = start(options()).await;
    let good = json!({"properties": {"email": "a@example.com"}, "objectWriteTraceId": "row-1"});
    let bad = json!({"properties": {"email": "b@example.com", "shoe_size": "44"}, "objectWriteTraceId": "row-2"});
    let answer = batch(&env, "create", json!({"inputs": [good, bad]})).await;
    assert_eq!(answer.status, 207, "{}", answer.body);
    assert_eq!(answer.body["results"][0]["objectWriteTraceId"], "row-1");
    assert_eq!(
        answer.body["errors"][0]["context"],
        json!({"objectWriteTraceId": ["row-2"]})
    );
    assert_eq!(env.sandbox.hubspot_contacts().len(), 1);
    let untraced =
        json!([{"properties": {"email": "c@example.com"}}, {"properties": {"shoe_size": "1"}}]);
    let whole = batch(&env, "create", json!({ "inputs": untraced })).await;
    assert_eq!(whole.status, 400);
    assert_eq!(env.sandbox.hubspot_contacts().len(), 1);
    let fine = batch(
        &env,
        "create",
        json!({"inputs": [{"properties": {"email": "c@example.com"}}]}),
    )
    .await;
    assert_eq!(fine.status, 201);
}

#[tokio::test]
async fn hubspot_batch_update_goes_by_record_id_and_answers_207_for_unknown_ids() {
    let env = start(options()).await;
    let id = env.hubspot_contact(json!({"email": "a@example.com"})).await;
    let inputs = json!([
        {"id": id, "properties": {"firstname": "A"}},
        {"id": "42", "properties": {"firstname": "X"}},
    ]);
    let answer = batch(&env, "update", json!({ "inputs": inputs })).await;
    assert_eq!(answer.status, 207, "{}", answer.body);
    assert_eq!(answer.body["results"][0]["properties"]["firstname"], "A");
    assert_eq!(answer.body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(answer.body["errors"][0]["context"]["ids"], json!(["42"]));
    let by_email = json!([{"id": "a@example.com", "idProperty": "email", "properties": {}}]);
    let refused = batch(&env, "update", json!({ "inputs": by_email })).await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("non-unique")
    );
}

#[tokio::test]
async fn hubspot_batch_read_answers_207_with_errors_for_missing_ids() {
    let env = start(options()).await;
    let id = env
        .hubspot_contact(json!({"email": "a@example.com", "city": "Oslo"}))
        .await;
    let inputs = json!([{"id": "A@example.com"}, {"id": "missing@example.com"}]);
    let body = json!({"idProperty": "email", "inputs": inputs, "properties": ["city"]});
    let answer = batch(&env, "read", body).await;
    assert_eq!(answer.status, 207);
    assert_eq!(answer.body["results"][0]["id"], id.as_str());
    assert_eq!(answer.body["results"][0]["properties"]["city"], "Oslo");
    assert_eq!(
        answer.body["errors"][0]["context"]["ids"],
        json!(["missing@example.com"])
    );
    let all_found = batch(
        &env,
        "read",
        json!({"inputs": [{ "id": id }], "properties": []}),
    )
    .await;
    assert_eq!(all_found.status, 200);
    assert!(all_found.body.get("errors").is_none());
}

#[tokio::test]
async fn hubspot_batch_archive_answers_204_and_passes_over_unknown_ids() {
    let env = start(options()).await;
    let kept = env
        .hubspot_contact(json!({"email": "kept@example.com"}))
        .await;
    let gone = env
        .hubspot_contact(json!({"email": "gone@example.com"}))
        .await;
    let body = json!({"inputs": [{"id": gone}, {"id": "999999"}]});
    let answer = env
        .hubspot(
            Method::POST,
            "/crm/v3/objects/contacts/batch/archive",
            Some(body.clone()),
        )
        .await;
    assert_eq!(answer.status, 204);
    assert_eq!(answer.body, Value::Null);
    let ids: Vec<Value> = env
        .sandbox
        .hubspot_contacts()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [json!(kept)]);
    // Archiving again is harmless, and the email can be created anew.
    let again = env
        .hubspot(
            Method::POST,
            "/crm/v3/objects/contacts/batch/archive",
            Some(body),
        )
        .await;
    assert_eq!(again.status, 204);
    env.hubspot_contact(json!({"email": "gone@example.com"}))
        .await;
}

#[tokio::test]
async fn hubspot_batch_archive_of_more_than_100_inputs_is_a_400() {
    let env = start(options()).await;
    let inputs: Vec<Value> = (0..101).map(|n| json!({"id": n.to_string()})).collect();
    let answer = env
        .hubspot(
            Method::POST,
            "/crm/v3/objects/contacts/batch/archive",
            Some(json!({"inputs": inputs})),
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
}

#[tokio::test]
async fn hubspot_archive_of_one_contact_answers_204_then_404() {
    let env = start(options()).await;
    let id = env
        .hubspot_contact(json!({"email": "jane@example.com"}))
        .await;
    let path = format!("/crm/v3/objects/contacts/{id}");
    let answer = env.hubspot(Method::DELETE, &path, None).await;
    assert_eq!(answer.status, 204);
    assert!(env.sandbox.hubspot_contacts().is_empty());
    let again = env.hubspot(Method::DELETE, &path, None).await;
    assert_eq!(again.status, 404, "{}", again.body);
    assert_eq!(again.body["category"], "OBJECT_NOT_FOUND");
    let read = env.hubspot(Method::GET, &path, None).await;
    assert_eq!(read.status, 404);
}
