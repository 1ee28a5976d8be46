//! `engine plan`: the requests the next run would send for the next due rows,
//! rendered as a run renders them, with every secret redacted, and nothing
//! sent, claimed or written.

use engine::store::Backend;

use super::{Fixture, generated_rows, sandbox_options};
use crate::on_both_backends;
use crate::support::{replacing, run_engine};

on_both_backends!(plan_prints_the_next_requests_with_the_secrets_redacted_and_changes_nothing);

const TOKEN: &str = "pat-na1-SECRET-0f3c";
const KEY: &str = "xkeysib-SECRET-77aa";

/// Runs `engine plan ARGS` against the fixture's database with real-looking
/// secrets and fixed base URLs; returns stdout with today's date replaced.
fn plan(f: &Fixture, args: &[&str]) -> String {
    let mut all: Vec<String> = ["plan"].iter().chain(args).map(|a| a.to_string()).collect();
    all.extend(f.location());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let transcript = run_engine(
        f.config.path(),
        &all,
        &[
            ("HUBSPOT_BASE_URL", "https://api.hubapi.test"),
            ("HUBSPOT_ACCESS_TOKEN", TOKEN),
            ("BREVO_BASE_URL", "https://api.brevo.test/v3"),
            ("BREVO_API_KEY", KEY),
        ],
    );
    assert!(transcript.starts_with("exit code: 0"), "{transcript}");
    assert!(
        !transcript.contains(TOKEN) && !transcript.contains(KEY),
        "{transcript}"
    );
    transcript
}

async fn plan_prints_the_next_requests_with_the_secrets_redacted_and_changes_nothing(
    backend: Backend,
) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    f.insert(&generated_rows(3)).await;
    let before = f
        .rows(&[super::generated_id(1), super::generated_id(3)])
        .await;

    let hubspot = plan(&f, &["--connector", "hubspot", "--limit", "2"]);
    let brevo = plan(
        &f,
        &["--connector", "brevo", "--mapping", "brevo", "--limit", "1"],
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    replacing(&[(&today, "[TODAY]")]).bind(|| {
        assert_snapshot!("plan_hubspot", hubspot);
        assert_snapshot!("plan_brevo", brevo);
    });

    // Nothing claimed, leased or recorded; nothing sent.
    let after = f
        .rows(&[super::generated_id(1), super::generated_id(3)])
        .await;
    assert_eq!(before, after);
    assert_eq!(f.sandbox.stats()["requests"], serde_json::json!({}));
    let history = engine::history::recent(&f.db.store, None, None, 1000)
        .await
        .unwrap();
    assert!(history.iter().all(|c| c.table != f.db.table), "{history:?}");
}
