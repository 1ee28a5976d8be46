//! Authentication kinds on the wire, against scripted CRMs.

use std::collections::BTreeMap;

use engine::store::Backend;
use serde_json::json;

use crate::scripted::{Reply, ScriptedCrm};
use crate::support::{ConfigDir, Harness, TestDb};

/// Syncs one queued row through `connector` (named `crm`) and asserts it completed.
async fn sync_one_row(connector: &str, env: &BTreeMap<String, String>) {
    let write = |config: &ConfigDir, db: &TestDb| {
        let mapping = format!(
            "connector = \"crm\"\n[source]\ntable = \"{}\"\n[fields]\nLastName = \"{{{{last_name name}}}}\"\n",
            db.table
        );
        config
            .write("connectors/crm.toml", connector)
            .write("mappings/crm.toml", &mapping);
    };
    let h = Harness::start(
        Backend::Sqlite,
        ConfigDir::shipped(),
        env.clone(),
        &["crm"],
        write,
    )
    .await
    .expect("SQLite is always there");
    h.queue([json!({"id": "r1", "email": "Jane@Example.com", "name": "Jane Doe"})])
        .await;
    h.run_now().await;
    let row = h.row("r1").await;
    assert_eq!(row["crm_processing_status"], "Complete", "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_refresh_fetches_a_token_and_calls_the_instance_url_it_names() {
    let instance = ScriptedCrm::start(vec![Reply::json(
        201,
        json!({"id": "003xx", "success": true, "created": true}),
    )])
    .await;
    let login = ScriptedCrm::start(vec![Reply::json(
        200,
        json!({"access_token": "at-1", "instance_url": instance.base_url, "expires_in": 3600}),
    )])
    .await;
    let connector = format!(
        r#"
base_url = "https://login.example.com"
[auth]
kind = "oauth2_refresh"
token_url = "{login}/services/oauth2/token"
client_id_env = "SF_ID"
client_secret_env = "SF_SECRET"
refresh_token_env = "SF_REFRESH"
base_url_pointer = "/instance_url"
[upsert]
mode = "single"
[upsert.single]
method = "PATCH"
path = "/services/data/v60.0/sobjects/Contact/Email_Key__c/{{{{key}}}}"
body = "{{{{fields}}}}"
id_pointer = "/id"
"#,
        login = login.base_url
    );
    let env = BTreeMap::from([
        ("SF_ID".to_string(), "cid".to_string()),
        ("SF_SECRET".to_string(), "csecret".to_string()),
        ("SF_REFRESH".to_string(), "rt-1".to_string()),
    ]);
    sync_one_row(&connector, &env).await;

    let token = &login.received()[0];
    assert_eq!(
        (token.method.as_str(), token.path.as_str()),
        ("POST", "/services/oauth2/token")
    );
    assert!(
        token.text.contains("grant_type=refresh_token")
            && token.text.contains("refresh_token=rt-1"),
        "{}",
        token.text
    );
    let calls = instance.received();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].path,
        "/services/data/v60.0/sobjects/Contact/Email_Key__c/jane%40example.com"
    );
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer at-1"));
    assert_eq!(calls[0].body, json!({"LastName": "Doe"}));
}

/// The `Authorization` header one synced row reached a scripted CRM with, under
/// the `[auth]` table `auth`, with `var` set to `value`.
async fn authorization_sent(auth: &str, (var, value): (&str, &str)) -> Option<String> {
    let crm = ScriptedCrm::start(vec![Reply::json(200, json!({"id": "c1"}))]).await;
    let connector = format!(
        r#"
base_url = "http://127.0.0.1:9"
[auth]
{auth}
[upsert]
mode = "single"
[upsert.single]
method = "POST"
path = "/contacts"
body = "{{{{fields}}}}"
id_pointer = "/id"
"#
    );
    let env = BTreeMap::from([
        ("CRM_BASE_URL".to_string(), crm.base_url.clone()),
        (var.to_string(), value.to_string()),
    ]);
    sync_one_row(&connector, &env).await;
    crm.received()[0].authorization.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scheme_and_a_key_prefix_reach_the_crm_as_configured() {
    // Zoho's word for its OAuth tokens instead of `Bearer`.
    let zoho = "kind = \"bearer\"\ntoken_env = \"ZOHO_TOKEN\"\nscheme = \"Zoho-oauthtoken\"";
    assert_eq!(
        authorization_sent(zoho, ("ZOHO_TOKEN", "1000.abc"))
            .await
            .as_deref(),
        Some("Zoho-oauthtoken 1000.abc")
    );
    // Freshsales: `Authorization: Token token=<key>`.
    let freshsales = "kind = \"api_key_header\"\nheader = \"Authorization\"\nkey_env = \"FS_KEY\"\nprefix = \"Token token=\"";
    assert_eq!(
        authorization_sent(freshsales, ("FS_KEY", "sfg999"))
            .await
            .as_deref(),
        Some("Token token=sfg999")
    );
    // The default scheme.
    let bearer = "kind = \"bearer\"\ntoken_env = \"TOKEN\"";
    assert_eq!(
        authorization_sent(bearer, ("TOKEN", "t-1"))
            .await
            .as_deref(),
        Some("Bearer t-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_query_keys_reach_the_crm_as_configured() {
    let crm = ScriptedCrm::start(vec![Reply::json(200, json!({"id": "abc"}))]).await;
    let connector = r#"
base_url = "http://127.0.0.1:9"
[auth]
kind = "basic"
username = "engine"
password_env = "MC_KEY"
[upsert]
mode = "single"
[upsert.single]
method = "PUT"
path = "/lists/L1/members/{{md5 key}}"
body = { email_address = "{{key}}", merge_fields = "{{fields}}" }
id_pointer = "/id"
"#;
    let env = BTreeMap::from([
        ("CRM_BASE_URL".to_string(), crm.base_url.clone()),
        ("MC_KEY".to_string(), "key-us1".to_string()),
    ]);
    sync_one_row(connector, &env).await;
    let call = &crm.received()[0];
    // md5("jane@example.com"): Mailchimp's subscriber hash of the lower-cased email.
    assert_eq!(
        call.path,
        format!("/lists/L1/members/{}", md5_hex("jane@example.com"))
    );
    let expected = format!("Basic {}", base64("engine:key-us1"));
    assert_eq!(call.authorization.as_deref(), Some(expected.as_str()));

    let crm = ScriptedCrm::start(vec![Reply::json(200, json!({"id": "abc"}))]).await;
    let connector = connector.replace(
        "kind = \"basic\"\nusername = \"engine\"\npassword_env = \"MC_KEY\"",
        "kind = \"api_key_query\"\nparam = \"api_token\"\nkey_env = \"MC_KEY\"",
    );
    let env = BTreeMap::from([
        ("CRM_BASE_URL".to_string(), crm.base_url.clone()),
        ("MC_KEY".to_string(), "key-us1".to_string()),
    ]);
    sync_one_row(&connector, &env).await;
    assert!(
        crm.received()[0].path.ends_with("?api_token=key-us1"),
        "{}",
        crm.received()[0].path
    );
}

fn md5_hex(text: &str) -> String {
    use md5::Digest;
    crate::support::hex(&md5::Md5::digest(text.as_bytes()))
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
