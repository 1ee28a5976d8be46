//! Config values `run` cannot honour are refused by `check` at their line,
//! never a panic at run time; and no secret planted in the config or the
//! environment is printed by `check` or `run`.

use crate::support::{ConfigDir, run_engine};

const SECRETS: &[(&str, &str)] = &[("HUBSPOT_ACCESS_TOKEN", "x"), ("BREVO_API_KEY", "x")];

fn check(config: &ConfigDir) -> String {
    run_engine(config.path(), &["check"], SECRETS)
}

fn assert_refused_without_panic(output: &str) {
    assert!(output.starts_with("exit code: 2\n"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
}

#[test]
fn absurd_durations_and_counts_are_located_errors_not_panics() {
    let config = ConfigDir::shipped();
    config
        .edit(
            "mappings/hubspot.toml",
            "lease_secs = 600",
            "lease_secs = 1000000000000000",
        )
        .edit(
            "mappings/hubspot.toml",
            "retry_delay_secs = 300",
            "retry_delay_secs = 1000000000000",
        )
        .edit(
            "mappings/brevo.toml",
            "max_retries = ",
            "max_retries = 1000000 #",
        )
        .edit(
            "connectors/hubspot.toml",
            "per_secs = 10",
            "per_secs = 9223372036854775807",
        )
        .edit(
            "connectors/hubspot.toml",
            "timeout_secs = 30",
            "timeout_secs = 0",
        )
        .edit(
            "connectors/hubspot.toml",
            "max_delay_ms = 10000",
            "max_delay_ms = 10000\nmax_rate_limit_wait_secs = 9223372036854775807",
        )
        .edit("connectors/hubspot.toml", "524]", "524, 70000]")
        .edit(
            "connectors/hubspot.toml",
            "wait_secs = 3600",
            "wait_secs = 99999999999",
        )
        .edit(
            "connectors/brevo.toml",
            "timeout_secs = 30",
            "timeout_secs = 30\nmax_response_bytes = 10",
        );
    let output = check(&config);
    assert_refused_without_panic(&output);
    insta::assert_snapshot!(output);
}

#[test]
fn run_refuses_an_absurd_lease_before_claiming_anything() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "lease_secs = 600",
        "lease_secs = 1000000000000000",
    );
    let output = run_engine(
        config.path(),
        &[
            "run",
            "--connector",
            "hubspot",
            "--database",
            "sqlite::memory:",
        ],
        SECRETS,
    );
    assert_refused_without_panic(&output);
    assert!(output.contains("`schedule.lease_secs` is 1000000000000000, above the maximum 604800"));
}

/// Planted in the config files: none may be printed, not even in part.
const PLANTED: &[&str] = &[
    "Zq9xHeaderSecret",
    "Zq9xQuerySecret",
    "Zq9xUrlPassword",
    "Zq9xTokenPasted",
];

#[test]
fn check_prints_no_secret_planted_in_headers_urls_or_env_names() {
    let config = ConfigDir::shipped();
    config
        .edit(
            "connectors/hubspot.toml",
            "timeout_secs = 30",
            "timeout_secs = 30\nheaders = { \"X-Api-Token\" = \"Zq9xHeaderSecret\" }",
        )
        .edit(
            "connectors/hubspot.toml",
            "base_url = \"https://api.hubapi.com\"",
            "base_url = \"https://api.hubapi.com/?hapikey=Zq9xQuerySecret\"",
        )
        .edit(
            "connectors/brevo.toml",
            "base_url = \"https://api.brevo.com/v3\"",
            "base_url = \"https://admin:Zq9xUrlPassword@api.brevo.com/v3\"",
        )
        .edit(
            "connectors/brevo.toml",
            "key_env = \"BREVO_API_KEY\"",
            "key_env = \"Zq9xTokenPasted\"",
        )
        .write(
            "connectors/salesforce.toml",
            include_str!("../../connectors/salesforce.toml"),
        )
        .edit(
            "connectors/salesforce.toml",
            "token_url = \"https://",
            "token_url = \"https://me:Zq9xTokenUrlPassword@",
        );
    let output = check(&config);
    assert_refused_without_panic(&output);
    for secret in PLANTED {
        assert!(!output.contains(secret), "{secret} printed: {output}");
    }
    // Not even the first characters of any of them.
    assert!(!output.contains("Zq9x"), "{output}");
    assert!(output.contains("literal secret in base_url"), "{output}");
    assert!(
        output.contains("literal secret in header `X-Api-Token`"),
        "{output}"
    );
    insta::assert_snapshot!(output);
}

#[test]
fn run_prints_no_credential_carried_by_a_base_url_override() {
    let config = ConfigDir::shipped();
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", db.path().join("engine.db").display());
    let migrated = run_engine(
        config.path(),
        &["migrate", "--mapping", "hubspot", "--database", &url],
        SECRETS,
    );
    assert!(migrated.starts_with("exit code: 0"), "{migrated}");
    for base_url in [
        "https://api.hubapi.com/?hapikey=Zq9xEnvQuerySecret",
        "https://user:Zq9xEnvPassword@api.hubapi.com",
    ] {
        let mut env = SECRETS.to_vec();
        env.push(("HUBSPOT_BASE_URL", base_url));
        let output = run_engine(
            config.path(),
            &["run", "--connector", "hubspot", "--database", &url],
            &env,
        );
        assert!(
            output.contains("HUBSPOT_BASE_URL is set but is not usable"),
            "{output}"
        );
        assert!(!output.contains("Zq9x"), "{output}");
        assert!(!output.contains("panicked"), "{output}");
    }
}

/// `engine run` at trace level, then `engine status`, against a CRM that
/// redirects elsewhere with a credential in the `Location`: neither the
/// connector's key nor the redirect's token is printed, and the row ends in
/// `Error` naming where it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_status_print_no_secret_at_trace_level_after_a_redirect() {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::FOUND,
            [(
                "location",
                "http://127.0.0.1:9/capture?api_key=Zq9xLocationToken",
            )],
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url: &'static str = format!("http://{}/v3", listener.local_addr().unwrap()).leak();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = ConfigDir::shipped();
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", db.path().join("engine.db").display());
    let env = [
        ("BREVO_API_KEY", "Zq9xConnectorKey"),
        ("BREVO_BASE_URL", base_url),
        ("HUBSPOT_ACCESS_TOKEN", "x"),
    ];
    let migrated = run_engine(
        config.path(),
        &["migrate", "--mapping", "brevo", "--database", &url],
        &env,
    );
    assert!(migrated.starts_with("exit code: 0"), "{migrated}");
    let store = engine::store::Store::connect(&url).await.unwrap();
    let row = serde_json::json!({
        "id": "00000000-0000-4000-8000-000000000001", "email": "a@example.com",
        "name": "Ada Lovelace", "brevo_processing_status": "Queued", "retry_count": 0,
    });
    store
        .insert_rows("contacts", &[row.as_object().unwrap().clone()])
        .await
        .unwrap();
    let dir = config.path().to_path_buf();
    let (run, status) = tokio::task::spawn_blocking(move || {
        let run = run_engine(
            &dir,
            &[
                "--log-level",
                "trace",
                "run",
                "--connector",
                "brevo",
                "--database",
                &url,
            ],
            &env,
        );
        let status = run_engine(
            &dir,
            &["status", "--connector", "brevo", "--database", &url],
            &env,
        );
        (run, status)
    })
    .await
    .unwrap();
    for output in [&run, &status] {
        assert!(!output.contains("Zq9x"), "a secret was printed: {output}");
        assert!(!output.contains("panicked"), "{output}");
    }
    assert!(
        status.contains("HTTP 302 Found: redirected to http://127.0.0.1:9/capture?api_key=***"),
        "{status}"
    );
}
