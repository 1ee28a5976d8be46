//! Long and endless waits: a CRM that keeps answering 429 (with a `Retry-After`
//! of 0, unreadable or absurd), an hourly window used up mid-run, a wait longer
//! than the lease, and SIGTERM while the engine waits. No run hangs: rows that
//! cannot be sent in time go back to `Queued` at the time the CRM named, with
//! no retry spent, and a one-shot run ends (exit code 1: rows were handed back).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use engine::store::Backend;
use serde_json::json;

use super::{Fixture, generated_rows, ids_of, parse_time, sandbox_options, text, wait_for};
use crate::on_both_backends;
use crate::scripted::{Reply, ScriptedCrm};

on_both_backends!(
    endless_429s_with_retry_after_0_end_a_one_shot_run_with_the_rows_queued_a_second_later,
    endless_429s_with_an_unreadable_retry_after_end_a_one_shot_run_with_the_rows_queued_later,
    a_429_with_an_absurd_retry_after_hands_the_rows_back_for_a_day_after_one_request,
    a_retry_after_longer_than_the_wait_cap_hands_the_rows_back_until_the_time_the_crm_named,
    an_hourly_window_used_up_mid_run_hands_the_rest_back_and_the_run_exits_1,
    a_rate_limit_wait_longer_than_the_lease_hands_the_rows_back_within_the_cap,
    sigterm_during_a_long_retry_after_wait_exits_within_10_s_with_the_rows_queued_again,
    sigterm_while_rows_wait_in_the_rate_limiter_exits_within_10_s_with_them_queued_again,
    run_exits_1_when_every_row_is_put_back_for_a_retry,
    a_batch_paced_by_the_limiter_is_not_handed_back_for_waiting_its_turn,
);

/// The shipped config with Brevo pointed at a scripted CRM that answers every
/// request with `reply`, waiting at most `max_wait_secs` in-process.
async fn brevo_against(
    backend: Backend,
    reply: Reply,
    max_wait_secs: u64,
    edit: impl FnOnce(&crate::support::ConfigDir),
) -> Option<(Fixture, ScriptedCrm)> {
    let mut f = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "connectors/brevo.toml",
            "[retry]\n",
            &format!("[retry]\nmax_rate_limit_wait_secs = {max_wait_secs}\n"),
        );
        edit(config);
    })
    .await?;
    let crm = ScriptedCrm::start(vec![reply]).await;
    f.env.insert("BREVO_BASE_URL".into(), crm.base_url.clone());
    Some((f, crm))
}

fn too_many_requests(retry_after: &str) -> Reply {
    Reply::json(
        429,
        json!({"code": "too_many_requests", "message": "slow down"}),
    )
    .header("Retry-After", retry_after)
}

/// Runs Brevo in-process and fails the test if the run does not end in `within`.
async fn run_brevo_within(
    f: &Fixture,
    within: Duration,
) -> std::sync::Arc<engine::engine::RunSummary> {
    tokio::time::timeout(within, f.run_now("brevo"))
        .await
        .unwrap_or_else(|_| panic!("the one-shot run did not end within {within:?}"))
}

/// Every row is `Queued` for Brevo again, due no sooner than `earliest` and no
/// later than `latest`, with its retry count unchanged (no retry spent).
async fn assert_handed_back(
    f: &Fixture,
    ids: &[String],
    earliest: chrono::DateTime<Utc>,
    latest: chrono::DateTime<Utc>,
    retry_count: i64,
) {
    for row in f.rows(ids).await {
        assert_eq!(text(&row, "brevo_processing_status"), "Queued", "{row:?}");
        let due = parse_time(&text(&row, "next_retry_at"));
        assert!(
            due >= earliest && due <= latest,
            "due at {due}, expected within [{earliest}, {latest}]: {row:?}"
        );
        assert_eq!(
            text(&row, "retry_count"),
            retry_count.to_string(),
            "{row:?}"
        );
    }
}

async fn endless_429s_with_retry_after_0_end_a_one_shot_run_with_the_rows_queued_a_second_later(
    backend: Backend,
) {
    let Some((f, crm)) = brevo_against(backend, too_many_requests("0"), 2, |_| {}).await else {
        return;
    };
    let rows = generated_rows(3);
    f.insert(&rows).await;
    let started = Utc::now();

    let summary = run_brevo_within(&f, Duration::from_secs(60)).await;

    assert_eq!(summary.deferred.load(Ordering::Relaxed), 3);
    assert!(!summary.all_complete());
    // A pause of at least a second each time, over a 2 s cap: a few requests
    // per row, not ten a second for ever.
    let requests = crm.received().len();
    assert!((3..=15).contains(&requests), "{requests} requests");
    let ended = Utc::now();
    assert_handed_back(
        &f,
        &ids_of(&rows),
        started + chrono::Duration::seconds(1),
        ended + chrono::Duration::seconds(2),
        0,
    )
    .await;
}

async fn endless_429s_with_an_unreadable_retry_after_end_a_one_shot_run_with_the_rows_queued_later(
    backend: Backend,
) {
    let reply = too_many_requests("soon, maybe").header("x-sib-ratelimit-reset", "-7");
    let Some((f, crm)) = brevo_against(backend, reply, 2, |_| {}).await else {
        return;
    };
    let rows = generated_rows(3);
    f.insert(&rows).await;
    let started = Utc::now();

    let summary = run_brevo_within(&f, Duration::from_secs(60)).await;

    assert_eq!(summary.deferred.load(Ordering::Relaxed), 3);
    assert!(crm.received().len() <= 12, "{}", crm.received().len());
    // Never deferred to a time already past: the run would claim them again.
    assert_handed_back(
        &f,
        &ids_of(&rows),
        started + chrono::Duration::seconds(1),
        Utc::now() + chrono::Duration::seconds(61),
        0,
    )
    .await;
}

async fn a_429_with_an_absurd_retry_after_hands_the_rows_back_for_a_day_after_one_request(
    backend: Backend,
) {
    let Some((f, crm)) =
        brevo_against(backend, too_many_requests("99999999999999"), 120, |_| {}).await
    else {
        return;
    };
    let rows = generated_rows(3);
    f.insert(&rows).await;
    let started = Utc::now();

    let summary = run_brevo_within(&f, Duration::from_secs(30)).await;

    assert_eq!(summary.deferred.load(Ordering::Relaxed), 3);
    // The first 429 pauses the class: the other rows are not sent at all.
    assert!(crm.received().len() <= 3, "{}", crm.received().len());
    let day = chrono::Duration::days(1);
    assert_handed_back(
        &f,
        &ids_of(&rows),
        started + day,
        Utc::now() + day + chrono::Duration::seconds(1),
        0,
    )
    .await;
}

async fn a_retry_after_longer_than_the_wait_cap_hands_the_rows_back_until_the_time_the_crm_named(
    backend: Backend,
) {
    // The CRM names ~2,780 s; the connector waits at most 120 s in-process.
    let Some((f, _crm)) = brevo_against(backend, too_many_requests("2780"), 120, |_| {}).await
    else {
        return;
    };
    let rows = generated_rows(2);
    f.insert(&rows).await;
    let started = Utc::now();

    let summary = run_brevo_within(&f, Duration::from_secs(30)).await;

    assert_eq!(summary.deferred.load(Ordering::Relaxed), 2);
    assert_handed_back(
        &f,
        &ids_of(&rows),
        started + chrono::Duration::seconds(2_780),
        Utc::now() + chrono::Duration::seconds(2_781),
        0,
    )
    .await;
}

async fn an_hourly_window_used_up_mid_run_hands_the_rest_back_and_the_run_exits_1(
    backend: Backend,
) {
    // A low plan: 3 requests an hour. The sandbox itself would allow more.
    let Some(f) = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit("connectors/brevo.toml", "requests = 36000", "requests = 3");
    })
    .await
    else {
        return;
    };
    let rows = generated_rows(10);
    f.insert(&rows).await;
    let started = Utc::now();
    let began = Instant::now();

    let mut run = f.spawn(&["run", "--connector", "brevo"]);
    assert_eq!(
        run.exit_code(Duration::from_secs(60)).await,
        1,
        "{}",
        run.stderr()
    );
    assert!(began.elapsed() < Duration::from_secs(60));

    let counts = f.counts("brevo").await;
    assert_eq!(counts.get("Complete"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("Queued"), Some(&7), "{counts:?}");
    let queued: Vec<String> = f
        .rows(&ids_of(&rows))
        .await
        .into_iter()
        .filter(|r| text(r, "brevo_processing_status") == "Queued")
        .map(|r| text(&r, "id"))
        .collect();
    // Handed back until the window has room again: about an hour on.
    assert_handed_back(
        &f,
        &queued,
        started + chrono::Duration::minutes(59),
        Utc::now() + chrono::Duration::minutes(61),
        0,
    )
    .await;
}

async fn a_rate_limit_wait_longer_than_the_lease_hands_the_rows_back_within_the_cap(
    backend: Backend,
) {
    // The connector would wait up to an hour, but the rows' lease is 4 s: a
    // 30 s Retry-After cannot be waited out while the rows are still ours.
    let Some((f, crm)) = brevo_against(backend, too_many_requests("30"), 3_600, |config| {
        config.edit("mappings/brevo.toml", "lease_secs = 600", "lease_secs = 4");
    })
    .await
    else {
        return;
    };
    let rows = generated_rows(2);
    f.insert(&rows).await;
    let started = Utc::now();

    let summary = run_brevo_within(&f, Duration::from_secs(20)).await;

    assert_eq!(summary.deferred.load(Ordering::Relaxed), 2);
    assert!(crm.received().len() <= 2, "{}", crm.received().len());
    assert_handed_back(
        &f,
        &ids_of(&rows),
        started + chrono::Duration::seconds(30),
        Utc::now() + chrono::Duration::seconds(31),
        0,
    )
    .await;
}

async fn sigterm_during_a_long_retry_after_wait_exits_within_10_s_with_the_rows_queued_again(
    backend: Backend,
) {
    // A 300 s Retry-After the engine may wait out (cap an hour, lease 600 s).
    let Some((f, _crm)) = brevo_against(backend, too_many_requests("300"), 3_600, |_| {}).await
    else {
        return;
    };
    let mut rows = generated_rows(3);
    for row in &mut rows {
        // A retry already spent before: the stop must not spend another.
        row.insert("retry_count".into(), json!(1));
    }
    f.insert(&rows).await;
    let ids = ids_of(&rows);

    let mut run = f.spawn(&["run", "--connector", "brevo"]);
    wait_for(
        "the engine to pause for the CRM",
        Duration::from_secs(30),
        || async { run.stderr().contains("Rate limited by the CRM; pausing.") },
    )
    .await;
    assert_eq!(f.count("brevo", "Processing").await, 3);
    let signalled = Instant::now();
    run.terminate();

    assert_eq!(
        run.exit_code(Duration::from_secs(10)).await,
        1,
        "{}",
        run.stderr()
    );
    let stop = signalled.elapsed();
    assert!(stop < Duration::from_secs(10), "stopped after {stop:?}");
    let now = Utc::now();
    // Due at once: the next run sends them (an upsert: no duplicate).
    assert_handed_back(&f, &ids, now - chrono::Duration::seconds(30), now, 1).await;
}

async fn run_exits_1_when_every_row_is_put_back_for_a_retry(backend: Backend) {
    let html = Reply {
        status: 503,
        body: "<html><body>Service Unavailable</body></html>".into(),
        headers: vec![],
        delay: Duration::ZERO,
    };
    let Some((f, _crm)) = brevo_against(backend, html, 120, |config| {
        config.edit(
            "connectors/brevo.toml",
            "max_attempts = 3",
            "max_attempts = 1",
        );
    })
    .await
    else {
        return;
    };
    f.insert(&generated_rows(3)).await;

    let mut run = f.spawn(&["run", "--connector", "brevo"]);
    assert_eq!(
        run.exit_code(Duration::from_secs(30)).await,
        1,
        "0 of 3 rows synced is not a success: {}",
        run.stderr()
    );
    assert_eq!(f.count("brevo", "Queued").await, 3);
    assert_eq!(f.count("brevo", "Complete").await, 0);
}

async fn sigterm_while_rows_wait_in_the_rate_limiter_exits_within_10_s_with_them_queued_again(
    backend: Backend,
) {
    // 3 requests per 5 minutes, and the engine may wait an hour in-process:
    // after 3 rows the others sit in the limiter (within their 600 s lease).
    let Some(f) = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "connectors/brevo.toml",
            "requests = 36000\nper_secs = 3600",
            "requests = 3\nper_secs = 300",
        );
        config.edit(
            "connectors/brevo.toml",
            "[retry]\n",
            "[retry]\nmax_rate_limit_wait_secs = 3600\n",
        );
        // A row per batch: each is recorded as soon as it is sent.
        config.edit("mappings/brevo.toml", "batch_size = 50", "batch_size = 1");
    })
    .await
    else {
        return;
    };
    let rows = generated_rows(6);
    f.insert(&rows).await;

    let mut run = f.spawn(&["run", "--connector", "brevo"]);
    wait_for(
        "three rows synced and three waiting",
        Duration::from_secs(30),
        || async {
            f.count("brevo", "Complete").await == 3 && f.count("brevo", "Processing").await == 3
        },
    )
    .await;
    assert_eq!(f.count("brevo", "Processing").await, 3);
    let signalled = Instant::now();
    run.terminate();

    assert_eq!(
        run.exit_code(Duration::from_secs(10)).await,
        1,
        "{}",
        run.stderr()
    );
    assert!(signalled.elapsed() < Duration::from_secs(10));
    let counts = f.counts("brevo").await;
    assert_eq!(counts.get("Queued"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("Processing"), None, "{counts:?}");
    for row in f.rows(&ids_of(&rows)).await {
        assert_eq!(text(&row, "retry_count"), "0", "no retry spent: {row:?}");
    }
}

async fn a_batch_paced_by_the_limiter_is_not_handed_back_for_waiting_its_turn(backend: Backend) {
    // 2 requests a second and at most 2 s waited in-process for a rate limit:
    // the batch's 12 rows take ~5 s of pacing in all, each wait about 1 s.
    let Some(f) = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "connectors/brevo.toml",
            "requests = 10\nper_secs = 1",
            "requests = 2\nper_secs = 1",
        );
        config.edit(
            "connectors/brevo.toml",
            "[retry]\n",
            "[retry]\nmax_rate_limit_wait_secs = 2\n",
        );
    })
    .await
    else {
        return;
    };
    f.insert(&generated_rows(12)).await;

    let summary = run_brevo_within(&f, Duration::from_secs(60)).await;

    assert_eq!(summary.deferred.load(Ordering::Relaxed), 0);
    assert!(summary.all_complete());
    assert_eq!(f.count("brevo", "Complete").await, 12);
}
