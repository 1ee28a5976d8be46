//! HubSpot single-record endpoints, search and property validation.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::{assert_hubspot_validation, options, start};
use engine::sandbox::SandboxOptions;

const CONTACTS: &str = "/crm/v3/objects/contacts";

#[tokio::test]
async fn hubspot_requests_without_a_valid_bearer_token_answer_401_invalid_authentication() {
    let env = start(SandboxOptions {
        hubspot_token: Some("secret".into()),
        ..options()
    })
    .await;
    let path = format!("{CONTACTS}/1");
    for auth in [
        None,
        Some(("authorization", "Bearer wrong")),
        Some(("authorization", "secret")),
    ] {
        let answer = env.send(Method::GET, &path, auth, None).await;
        assert_eq!(answer.status, 401);
        assert_eq!(answer.body["status"], "error");
        assert_eq!(answer.body["category"], "INVALID_AUTHENTICATION");
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .starts_with("Authentication credentials not found")
        );
        let correlation = answer.body["correlationId"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(correlation).is_ok());
    }
    for scheme in ["Bearer", "bearer"] {
        let auth = format!("{scheme} secret");
        let answer = env
            .send(Method::GET, &path, Some(("authorization", &auth)), None)
            .await;
        assert_eq!(answer.status, 404);
    }
}

#[tokio::test]
async fn hubspot_create_answers_201_with_a_simple_public_object() {
    let env = start(options()).await;
    let body = json!({"properties": {"email": "Jane@Example.com", "firstname": "Jane"}});
    let answer = env.hubspot(Method::POST, CONTACTS, Some(body)).await;
    assert_eq!(answer.status, 201);
    let id = answer.body["id"].as_str().unwrap();
    assert!(
        id.len() >= 9 && id.bytes().all(|b| b.is_ascii_digit()),
        "{id}"
    );
    assert_eq!(answer.body["properties"]["email"], "jane@example.com");
    assert_eq!(answer.body["properties"]["firstname"], "Jane");
    assert_eq!(answer.body["properties"]["hs_object_id"], id);
    assert!(answer.body["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(answer.body["updatedAt"].is_string());
    assert_eq!(answer.body["archived"], false);
    assert!(answer.header("x-hubspot-correlation-id").is_some());
}

#[tokio::test]
async fn hubspot_create_of_an_existing_email_answers_409_with_the_existing_id() {
    let env = start(options()).await;
    let id = env
        .hubspot_contact(json!({"email": "jane@example.com"}))
        .await;
    let body = json!({"properties": {"email": "JANE@example.com"}});
    let answer = env.hubspot(Method::POST, CONTACTS, Some(body)).await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.body["status"], "error");
    assert_eq!(
        answer.body["message"],
        format!("Contact already exists. Existing ID: {id}")
    );
    assert_eq!(answer.body["category"], "CONFLICT");
    assert!(answer.body["correlationId"].is_string());
    assert_eq!(env.sandbox.hubspot_contacts().len(), 1);
}

#[tokio::test]
async fn hubspot_get_reads_the_primary_store_by_id_or_by_email_without_search_lag() {
    let env = start(SandboxOptions {
        search_lag_ms: 60_000,
        ..options()
    })
    .await;
    let id = env
        .hubspot_contact(json!({"email": "jane@example.com", "firstname": "Jane", "city": "Oslo"}))
        .await;
    let by_id = env
        .hubspot(Method::GET, &format!("{CONTACTS}/{id}"), None)
        .await;
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.body["properties"]["firstname"], "Jane");
    assert!(
        by_id.body["properties"].get("city").is_none(),
        "only default properties"
    );
    let path = format!("{CONTACTS}/JANE%40example.com?idProperty=email&properties=city,phone");
    let by_email = env.hubspot(Method::GET, &path, None).await;
    assert_eq!(by_email.status, 200);
    assert_eq!(by_email.body["id"], id.as_str());
    assert_eq!(by_email.body["properties"]["city"], "Oslo");
    assert!(by_email.body["properties"]["phone"].is_null());
}

#[tokio::test]
async fn hubspot_get_or_patch_of_an_unknown_contact_answers_404_object_not_found() {
    let env = start(options()).await;
    let get = env
        .hubspot(Method::GET, &format!("{CONTACTS}/176559342699"), None)
        .await;
    let path = format!("{CONTACTS}/nobody%40example.com?idProperty=email");
    let patch = env
        .hubspot(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"firstname": "X"}})),
        )
        .await;
    for answer in [get, patch] {
        assert_eq!(answer.status, 404);
        assert_eq!(answer.body["message"], "resource not found");
        assert_eq!(answer.body["category"], "OBJECT_NOT_FOUND");
        assert!(answer.body["correlationId"].is_string());
    }
}

#[tokio::test]
async fn hubspot_patch_by_email_overwrites_values_and_an_empty_string_clears_one() {
    let env = start(options()).await;
    let id = env
        .hubspot_contact(json!({"email": "jane@example.com", "firstname": "Jane", "city": "Oslo"}))
        .await;
    let body = json!({"properties": {"firstname": "Janet", "city": ""}});
    let path = format!("{CONTACTS}/jane%40example.com?idProperty=email");
    let answer = env.hubspot(Method::PATCH, &path, Some(body)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["id"], id.as_str());
    assert_eq!(answer.body["properties"]["firstname"], "Janet");
    let stored = &env.sandbox.hubspot_contacts()[0];
    assert_eq!(stored["properties"]["firstname"], "Janet");
    assert!(stored["properties"].get("city").is_none());
}

#[tokio::test]
async fn hubspot_patch_to_an_email_another_contact_has_answers_409() {
    let env = start(options()).await;
    let taken = env.hubspot_contact(json!({"email": "a@example.com"})).await;
    let id = env.hubspot_contact(json!({"email": "b@example.com"})).await;
    let body = json!({"properties": {"email": "A@example.com"}});
    let answer = env
        .hubspot(Method::PATCH, &format!("{CONTACTS}/{id}"), Some(body))
        .await;
    assert_eq!(answer.status, 409);
    assert_eq!(
        answer.body["message"],
        format!("Contact already exists. Existing ID: {taken}")
    );
    assert_eq!(
        env.sandbox.hubspot_contacts()[1]["properties"]["email"],
        "b@example.com"
    );
}

#[tokio::test]
async fn hubspot_search_finds_contacts_by_email_with_eq_and_in() {
    let env = start(options()).await;
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        env.hubspot_contact(json!({ "email": email })).await;
    }
    let eq = env
        .hubspot_search(
            json!({"propertyName": "email", "operator": "EQ", "value": "B@example.com"}),
        )
        .await;
    assert_eq!(eq.status, 200);
    assert_eq!(eq.body["total"], 1);
    assert_eq!(
        eq.body["results"][0]["properties"]["email"],
        "b@example.com"
    );
    let values = json!(["a@example.com", "c@example.com", "zz@example.com"]);
    let filter = json!({"propertyName": "email", "operator": "IN", "values": values});
    let body = json!({"filterGroups": [{"filters": [filter]}], "limit": 1});
    let page = env
        .hubspot(Method::POST, &format!("{CONTACTS}/search"), Some(body))
        .await;
    assert_eq!(page.body["total"], 2);
    assert_eq!(page.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(page.body["paging"]["next"]["after"], "1");
}

#[tokio::test]
async fn hubspot_search_sees_a_write_only_after_the_index_lag() {
    let env = start(SandboxOptions {
        search_lag_ms: 5_000,
        ..options()
    })
    .await;
    let id = env
        .hubspot_contact(json!({"email": "jane@example.com", "firstname": "Jane"}))
        .await;
    let filter = json!({"propertyName": "email", "operator": "EQ", "value": "jane@example.com"});
    assert_eq!(env.hubspot_search(filter.clone()).await.body["total"], 0);
    let advance = env
        .send(
            Method::POST,
            "/_sandbox/clock/advance",
            None,
            Some(json!({"ms": 5_000})),
        )
        .await;
    assert_eq!(advance.status, 204);
    let found = env.hubspot_search(filter.clone()).await;
    assert_eq!(found.body["results"][0]["id"], id.as_str());
    let path = format!("{CONTACTS}/{id}");
    env.hubspot(
        Method::PATCH,
        &path,
        Some(json!({"properties": {"firstname": "Janet"}})),
    )
    .await;
    let stale = env.hubspot_search(filter.clone()).await;
    assert_eq!(stale.body["results"][0]["properties"]["firstname"], "Jane");
    env.sandbox.advance_clock(Duration::from_secs(5));
    let fresh = env.hubspot_search(filter).await;
    assert_eq!(fresh.body["results"][0]["properties"]["firstname"], "Janet");
}

#[tokio::test]
async fn hubspot_unknown_property_answers_400_property_doesnt_exist() {
    let env = start(options()).await;
    let body = json!({"properties": {"email": "a@example.com", "favourite_color": "red"}});
    let answer = env.hubspot(Method::POST, CONTACTS, Some(body)).await;
    assert_hubspot_validation(&answer, "PROPERTY_DOESNT_EXIST", "favourite_color");
    let expected = r#"Property values were not valid: [{"isValid":false,"message":"Property \"favourite_color\" does not exist","error":"PROPERTY_DOESNT_EXIST","name":"favourite_color"}]"#;
    assert_eq!(answer.body["message"], expected);
    assert_eq!(
        answer.body["errors"][0]["message"],
        "Property \"favourite_color\" does not exist"
    );
    assert!(env.sandbox.hubspot_contacts().is_empty());
}

#[tokio::test]
async fn hubspot_properties_named_in_the_options_exist_too() {
    let opts = SandboxOptions {
        hubspot_properties: vec!["favourite_color".into()],
        ..options()
    };
    let env = start(opts).await;
    let id = env
        .hubspot_contact(json!({"email": "a@example.com", "favourite_color": "red"}))
        .await;
    let stored = &env.sandbox.hubspot_contacts()[0];
    assert_eq!(stored["id"], id.as_str());
    assert_eq!(stored["properties"]["favourite_color"], "red");
}

#[tokio::test]
async fn hubspot_sync_date_accepts_a_date_or_epoch_ms_at_utc_midnight() {
    let env = start(options()).await;
    env.hubspot_contact(json!({"email": "a@example.com", "sync_date": "2024-03-01"}))
        .await;
    env.hubspot_contact(json!({"email": "b@example.com", "sync_date": "1709251200000"}))
        .await;
    for stored in env.sandbox.hubspot_contacts() {
        assert_eq!(stored["properties"]["sync_date"], "2024-03-01");
    }
}

#[tokio::test]
async fn hubspot_sync_date_off_utc_midnight_answers_400_invalid_date() {
    let env = start(options()).await;
    let body = json!({"properties": {"email": "a@example.com", "sync_date": "1635535865000"}});
    let answer = env.hubspot(Method::POST, CONTACTS, Some(body)).await;
    assert_hubspot_validation(&answer, "INVALID_DATE", "sync_date");
    let message = answer.body["errors"][0]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "1635535865000 is at 19:31:05.000 UTC, not midnight!"
    );
}

#[tokio::test]
async fn hubspot_invalid_email_answers_400_invalid_email() {
    let env = start(options()).await;
    for email in ["not-an-email", "jane doe@example.com"] {
        let body = json!({"properties": {"email": email}});
        let answer = env.hubspot(Method::POST, CONTACTS, Some(body)).await;
        assert_hubspot_validation(&answer, "INVALID_EMAIL", "email");
    }
}

#[tokio::test]
async fn hubspot_values_that_are_not_strings_or_bodies_that_are_not_json_answer_400() {
    let env = start(options()).await;
    for value in [json!(5551234), json!(true), json!(null)] {
        let body = json!({"properties": {"email": "a@example.com", "phone": value}});
        let answer = env.hubspot(Method::POST, CONTACTS, Some(body)).await;
        assert_eq!(answer.status, 400, "{value}");
        assert_eq!(answer.body["category"], "VALIDATION_ERROR");
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .contains("\"phone\"")
        );
    }
    let url = format!("{}{CONTACTS}", env.sandbox.base_url());
    let response = env
        .http
        .post(url)
        .bearer_auth("t")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input JSON on line 1")
    );
    assert!(env.sandbox.hubspot_contacts().is_empty());
}
