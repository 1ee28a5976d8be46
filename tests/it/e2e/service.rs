//! `engine run --all`: every mapping in one process, one rate limiter and
//! in-flight cap per connector shared by its mappings, a clean stop on SIGTERM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::clock::SystemClock;
use engine::sandbox::SandboxOptions;
use engine::store::Backend;

use super::{Fixture, generated_rows, sandbox_options, wait_for};
use crate::on_both_backends;
use crate::support::{execute, quiet};

on_both_backends!(
    two_mappings_on_one_connector_in_one_process_share_its_rate_limit_and_get_no_429,
    run_all_watch_syncs_every_connector_and_stops_cleanly_on_sigterm,
    sigterm_during_run_all_on_the_shared_retry_columns_leaves_every_row_complete_or_queued,
);

/// How the shipped mappings name the seed's shared retry columns.
const SHARED_RETRY_COLUMNS: &str =
    "[state]\nretry_count = \"retry_count\"\nnext_retry_at = \"next_retry_at\"\n";

/// A second Brevo mapping over the same table, with state columns of its own.
const SECOND_STATE: &str = r#"
[state]
processing_status = "brevo2_processing_status"
sync_status = "brevo2_sync_status"
crm_id = "brevo2_contact_id"
error = "brevo2_processing_error"
retry_count = "brevo2_retry_count"
next_retry_at = "brevo2_next_retry_at"
"#;

/// The fixture with `mappings/brevo2.toml` added, migrated, and `rows` rows
/// queued for all three mappings. The shipped mappings share the seed's
/// `retry_count` and `next_retry_at` (a claim's lease in one would hide the
/// row from the other while they run at once): Brevo gets its own here.
async fn three_mappings(backend: Backend, sandbox: SandboxOptions, rows: usize) -> Option<Fixture> {
    let f = Fixture::new(backend, sandbox, |config| {
        let brevo = std::fs::read_to_string(config.path().join("mappings/brevo.toml")).unwrap();
        assert!(brevo.contains(SHARED_RETRY_COLUMNS));
        let brevo2 = brevo.replace(SHARED_RETRY_COLUMNS, "");
        config.write("mappings/brevo2.toml", &format!("{brevo2}{SECOND_STATE}"));
        // Without the seed's shared names, Brevo gets its own defaults.
        let own = brevo.replace(SHARED_RETRY_COLUMNS, "");
        config.write("mappings/brevo.toml", &own);
        // Half the sandbox's 10/s: on a loaded test machine a request can
        // leave late and land in the next second with the following ones.
        config.edit("connectors/brevo.toml", "requests = 10\n", "requests = 5\n");
    })
    .await?;
    f.db.store
        .migrate(&f.plan.mappings["brevo2"].table)
        .await
        .expect("migrate brevo2");
    f.insert(&generated_rows(rows)).await;
    execute(
        &f.db.store,
        format!(
            "UPDATE {} SET brevo2_processing_status = 'Queued', brevo2_retry_count = 0",
            f.db.table
        ),
    )
    .await;
    Some(f)
}

async fn two_mappings_on_one_connector_in_one_process_share_its_rate_limit_and_get_no_429(
    backend: Backend,
) {
    // The sandbox enforces Brevo's real 10 requests per rolling second.
    let sandbox = SandboxOptions {
        brevo_per_s: Some(10),
        ..sandbox_options(0)
    };
    let Some(f) = three_mappings(backend, sandbox, 10).await else {
        return;
    };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let runs = engine::service::run_all(
        f.plan.clone(),
        f.db.store.clone(),
        &f.env,
        Arc::new(SystemClock),
        quiet(),
        shutdown,
    )
    .await;
    let elapsed = started.elapsed();
    let connectors: Vec<&str> = runs.iter().map(|r| r.connector.as_str()).collect();
    assert_eq!(connectors, ["brevo", "hubspot"]);
    for run in &runs {
        assert!(
            run.result.is_ok(),
            "{}: {:?}",
            run.connector,
            run.result.as_ref().err()
        );
    }
    for mapping in ["brevo", "brevo2", "hubspot"] {
        assert_eq!(f.count(mapping, "Complete").await, 10, "{mapping}");
    }
    assert!(f.requests("POST /v3/contacts") >= 20);
    assert_eq!(f.sandbox.stats()["rate_limited"], 0, "the CRM said 429");
    // 20 requests at 5 per second, paced as one: past the first window's
    // 5, three more windows. Two limiters would each send their 10 at 5 per
    // second side by side, done in about one second.
    assert!(
        elapsed >= Duration::from_millis(2900),
        "20 requests in {elapsed:?}: the mappings did not share the limit"
    );
}

async fn run_all_watch_syncs_every_connector_and_stops_cleanly_on_sigterm(backend: Backend) {
    let Some(f) = three_mappings(backend, sandbox_options(0), 5).await else {
        return;
    };
    let mut engine = f.spawn(&["run", "--all", "--watch"]);
    let done = || async {
        f.count("hubspot", "Complete").await == 5
            && f.count("brevo", "Complete").await == 5
            && f.count("brevo2", "Complete").await == 5
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "rows not synced in 20 s:\n{}",
            engine.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.stop_with(0).await;
    assert!(
        engine.stderr().contains("Signal received"),
        "{}",
        engine.stderr()
    );
}

async fn sigterm_during_run_all_on_the_shared_retry_columns_leaves_every_row_complete_or_queued(
    backend: Backend,
) {
    // The shipped mappings, on the seed's shared `retry_count` and
    // `next_retry_at`: both start at once, claim the same rows, and share
    // leases. Brevo sends one contact per request at 10/s: 60 rows take ~6 s.
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    f.insert(&generated_rows(60)).await;
    let mut engine = f.spawn(&["run", "--all"]);
    wait_for(
        "some Brevo rows synced",
        Duration::from_secs(30),
        || async { f.count("brevo", "Complete").await >= 5 },
    )
    .await;
    let code = engine.stop().await;
    assert!(code <= 1, "exit {code}: {}", engine.stderr());
    for mapping in ["hubspot", "brevo"] {
        let counts = f.counts(mapping).await;
        assert_eq!(counts.get("Processing"), None, "{mapping}: {counts:?}");
        let settled = counts.get("Complete").unwrap_or(&0) + counts.get("Queued").unwrap_or(&0);
        assert_eq!(settled, 60, "{mapping}: {counts:?}");
    }
}
