//! `engine check --live`: one harmless read per connector in use, reported as
//! a run would stop on it.

use engine::sandbox::{Sandbox, SandboxOptions};

use crate::support::{ConfigDir, run_engine};

/// The sandbox, accepting only `right-token` for HubSpot, on a runtime that
/// keeps serving while the test blocks on the engine binary.
fn sandbox() -> (tokio::runtime::Runtime, Sandbox) {
    engine::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sandbox = runtime
        .block_on(Sandbox::start(SandboxOptions {
            port: 0,
            hubspot_token: Some("right-token".into()),
            ..SandboxOptions::default()
        }))
        .unwrap();
    (runtime, sandbox)
}

#[test]
fn check_live_reads_once_per_connector_and_says_both_work() {
    let (_runtime, sandbox) = sandbox();
    let config = ConfigDir::shipped();
    let base = sandbox.base_url();
    let brevo = format!("{base}/v3");
    let transcript = run_engine(
        config.path(),
        &["check", "--live"],
        &[
            ("HUBSPOT_BASE_URL", base.as_str()),
            ("HUBSPOT_ACCESS_TOKEN", "right-token"),
            ("BREVO_BASE_URL", brevo.as_str()),
            ("BREVO_API_KEY", "any-key"),
        ],
    );
    assert!(transcript.starts_with("exit code: 0"), "{transcript}");
    assert!(
        transcript.contains(&format!(
            "live: hubspot: GET {base}/crm/v3/objects/contacts answered 200"
        )),
        "{transcript}"
    );
    assert!(
        transcript.contains(&format!("live: brevo: GET {base}/v3/contacts answered 200")),
        "{transcript}"
    );
    assert_eq!(
        sandbox.stats()["requests"]["GET /crm/v3/objects/contacts"],
        1
    );
}

#[test]
fn check_live_names_a_rejected_token_and_a_wrong_base_url_without_the_secrets() {
    let (_runtime, sandbox) = sandbox();
    let config = ConfigDir::shipped();
    let base = sandbox.base_url();
    let transcript = run_engine(
        config.path(),
        &["check", "--live"],
        &[
            ("HUBSPOT_BASE_URL", base.as_str()),
            ("HUBSPOT_ACCESS_TOKEN", "wrong-token"),
            // Without /v3: no such endpoint.
            ("BREVO_BASE_URL", base.as_str()),
            ("BREVO_API_KEY", "secret-key"),
        ],
    );
    assert!(transcript.starts_with("exit code: 2"), "{transcript}");
    assert!(
        transcript.contains("answered HTTP 401 Unauthorized. Likely cause: the credentials were rejected: check HUBSPOT_ACCESS_TOKEN"),
        "{transcript}"
    );
    assert!(
        transcript.contains(&format!(
            "GET {base}/contacts answered HTTP 404 Not Found. Likely cause: no such endpoint"
        )),
        "{transcript}"
    );
    assert!(
        !transcript.contains("wrong-token") && !transcript.contains("secret-key"),
        "{transcript}"
    );
}
