//! Long and endless waits: a CRM that keeps answering 429 (with a `Retry-After`
//! of 0, unreadable or absurd), an hourly window used up mid-run, a wait longer
//! than the lease, and SIGTERM while the engine waits. No run hangs: rows that
//! cannot be sent in time go back to `Queued` at the time the CRM named, with
//! no retry spent, and a one-shot run ends (exit code 1: rows were handed back).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use engine::engine::RunSummary;
use engine::store::Backend;
use serde_json::json;

use super::{
    Engine, Fixture, brevo_deletes_records, generated_rows, ids_of, parse_time, sandbox_options,
    text, wait_for,
};
use crate::on_both_backends;
use crate::scripted::{Reply, ScriptedCrm};
use crate::support::ConfigDir;

fn seconds(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

on_both_backends!(
    endless_429s_with_retry_after_0_end_a_one_shot_run_with_the_rows_queued_a_second_later,
    endless_429s_with_an_unreadable_retry_after_end_a_one_shot_run_with_the_rows_queued_later,
    a_429_with_an_absurd_retry_after_hands_the_rows_back_for_a_day_after_one_request,
    a_retry_after_longer_than_the_wait_cap_hands_the_rows_back_until_the_time_the_crm_named,
    an_hourly_window_used_up_mid_run_hands_the_rest_back_and_the_run_exits_1,
    a_rate_limit_wait_longer_than_the_lease_hands_the_rows_back_within_the_cap,
    sigterm_during_a_long_retry_after_wait_exits_within_10_s_with_the_rows_queued_again,
    sigterm_while_rows_wait_in_the_rate_limiter_exits_within_10_s_with_them_queued_again,
    sigterm_while_a_delete_waits_out_a_long_retry_after_exits_within_10_s_with_the_delete_asked_again,
    run_exits_1_when_every_row_is_put_back_for_a_retry,
    a_batch_paced_by_the_limiter_is_not_handed_back_for_waiting_its_turn,
);

/// The shipped config with Brevo pointed at a scripted CRM that answers every
/// request with `reply`, waiting at most `max_wait_secs` in-process.
async fn brevo_against(
    backend: Backend,
    reply: Reply,
    max_wait_secs: u64,
    edit: impl FnOnce(&ConfigDir),
) -> Option<(Fixture, ScriptedCrm)> {
    let mut f = Fixture::new(backend, sandbox_options(0), |config| {
        cap_rate_limit_waits(config, max_wait_secs);
        edit(config);
    })
    .await?;
    let crm = ScriptedCrm::start(vec![reply]).await;
    f.env.insert("BREVO_BASE_URL".into(), crm.base_url.clone());
    Some((f, crm))
}

/// Brevo waits at most `secs` in-process for a rate limit.
fn cap_rate_limit_waits(config: &ConfigDir, secs: u64) {
    config.edit(
        "connectors/brevo.toml",
        "[retry]\n",
        &format!("[retry]\nmax_rate_limit_wait_secs = {secs}\n"),
    );
}

/// A one-shot Brevo run over `rows` queued rows that handed every one back.
struct HandedBack {
    f: Fixture,
    crm: ScriptedCrm,
    ids: Vec<String>,
    summary: Arc<RunSummary>,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
}

/// Queues `rows` rows and runs Brevo once against a CRM answering every
/// request with `reply` (see [`brevo_against`]); the run must end within
/// `within` and hand every row back for later.
async fn one_shot_handing_back(
    backend: Backend,
    reply: Reply,
    max_wait_secs: u64,
    edit: impl FnOnce(&ConfigDir),
    rows: usize,
    within: Duration,
) -> Option<HandedBack> {
    let (f, crm) = brevo_against(backend, reply, max_wait_secs, edit).await?;
    let queued = generated_rows(rows);
    f.insert(&queued).await;
    let started = Utc::now();
    let summary = run_brevo_within(&f, within).await;
    let ended = Utc::now();
    assert_eq!(summary.deferred.load(Ordering::Relaxed), rows as u64);
    Some(HandedBack {
        f,
        crm,
        ids: ids_of(&queued),
        summary,
        started,
        ended,
    })
}

impl HandedBack {
    /// Requests the CRM received.
    fn requests(&self) -> usize {
        self.crm.received().len()
    }

    /// Every row is `Queued` again with no retry spent, due no sooner than
    /// `after_start` past the run's start and no later than `after_end` past
    /// its end.
    async fn assert_due(&self, after_start: chrono::Duration, after_end: chrono::Duration) {
        let (earliest, latest) = (self.started + after_start, self.ended + after_end);
        assert_handed_back(&self.f, &self.ids, earliest, latest, 0).await;
    }
}

fn too_many_requests(retry_after: &str) -> Reply {
    Reply::json(
        429,
        json!({"code": "too_many_requests", "message": "slow down"}),
    )
    .header("Retry-After", retry_after)
}

/// Runs Brevo in-process and fails the test if the run does not end in `within`.
async fn run_brevo_within(f: &Fixture, within: Duration) -> Arc<RunSummary> {
    tokio::time::timeout(within, f.run_now("brevo"))
        .await
        .unwrap_or_else(|_| panic!("the one-shot run did not end within {within:?}"))
}

/// Every row is `Queued` for Brevo again, due no sooner than `earliest` and no
/// later than `latest`, with its retry count unchanged (no retry spent).
async fn assert_handed_back(
    f: &Fixture,
    ids: &[String],
    earliest: DateTime<Utc>,
    latest: DateTime<Utc>,
    retry_count: i64,
) {
    assert_back_in(f, ids, "Queued", earliest, latest, retry_count).await;
}

/// As [`assert_handed_back`], the rows back in `status` (`Delete` for a
/// delete still asked for).
async fn assert_back_in(
    f: &Fixture,
    ids: &[String],
    status: &str,
    earliest: DateTime<Utc>,
    latest: DateTime<Utc>,
    retry_count: i64,
) {
    for row in f.rows(ids).await {
        assert_eq!(text(&row, "brevo_processing_status"), status, "{row:?}");
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
    let reply = too_many_requests("0");
    let within = Duration::from_secs(60);
    let Some(run) = one_shot_handing_back(backend, reply, 2, |_| {}, 3, within).await else {
        return;
    };
    assert!(!run.summary.all_complete());
    // A pause of at least a second each time, over a 2 s cap: a few requests
    // per row, not ten a second for ever.
    let requests = run.requests();
    assert!((3..=15).contains(&requests), "{requests} requests");
    run.assert_due(seconds(1), seconds(2)).await;
}

async fn endless_429s_with_an_unreadable_retry_after_end_a_one_shot_run_with_the_rows_queued_later(
    backend: Backend,
) {
    let reply = too_many_requests("soon, maybe").header("x-sib-ratelimit-reset", "-7");
    let within = Duration::from_secs(60);
    let Some(run) = one_shot_handing_back(backend, reply, 2, |_| {}, 3, within).await else {
        return;
    };
    assert!(run.requests() <= 12, "{}", run.requests());
    // Never deferred to a time already past: the run would claim them again.
    run.assert_due(seconds(1), seconds(61)).await;
}

async fn a_429_with_an_absurd_retry_after_hands_the_rows_back_for_a_day_after_one_request(
    backend: Backend,
) {
    let reply = too_many_requests("99999999999999");
    let within = Duration::from_secs(30);
    let Some(run) = one_shot_handing_back(backend, reply, 120, |_| {}, 3, within).await else {
        return;
    };
    // The first 429 pauses the class: the other rows are not sent at all.
    assert!(run.requests() <= 3, "{}", run.requests());
    let day = chrono::Duration::days(1);
    run.assert_due(day, day + seconds(1)).await;
}

async fn a_retry_after_longer_than_the_wait_cap_hands_the_rows_back_until_the_time_the_crm_named(
    backend: Backend,
) {
    // The CRM names ~2,780 s; the connector waits at most 120 s in-process.
    let reply = too_many_requests("2780");
    let within = Duration::from_secs(30);
    let Some(run) = one_shot_handing_back(backend, reply, 120, |_| {}, 2, within).await else {
        return;
    };
    run.assert_due(seconds(2_780), seconds(2_781)).await;
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
    run.assert_exits_with(1, Duration::from_secs(60)).await;
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
    let short_lease = |config: &ConfigDir| {
        config.edit("mappings/brevo.toml", "lease_secs = 600", "lease_secs = 4");
    };
    let reply = too_many_requests("30");
    let within = Duration::from_secs(20);
    let Some(run) = one_shot_handing_back(backend, reply, 3_600, short_lease, 2, within).await
    else {
        return;
    };
    assert!(run.requests() <= 2, "{}", run.requests());
    run.assert_due(seconds(30), seconds(31)).await;
}

/// Starts `engine run --connector brevo` and waits until it pauses for the
/// CRM's 429.
async fn paused_for_the_crm(f: &Fixture) -> Engine {
    let run = f.spawn(&["run", "--connector", "brevo"]);
    wait_for(
        "the engine to pause for the CRM",
        Duration::from_secs(30),
        || async { run.stderr().contains("Rate limited by the CRM; pausing.") },
    )
    .await;
    run
}

/// A 300 s Retry-After the engine may wait out (cap an hour, lease 600 s).
async fn brevo_asking_to_wait_300_s(
    backend: Backend,
    edit: impl FnOnce(&ConfigDir),
) -> Option<(Fixture, ScriptedCrm)> {
    brevo_against(backend, too_many_requests("300"), 3_600, edit).await
}

async fn sigterm_during_a_long_retry_after_wait_exits_within_10_s_with_the_rows_queued_again(
    backend: Backend,
) {
    let Some((f, _crm)) = brevo_asking_to_wait_300_s(backend, |_| {}).await else {
        return;
    };
    let mut rows = generated_rows(3);
    for row in &mut rows {
        // A retry already spent before: the stop must not spend another.
        row.insert("retry_count".into(), json!(1));
    }
    f.insert(&rows).await;

    let mut run = paused_for_the_crm(&f).await;
    assert_eq!(f.count("brevo", "Processing").await, 3);
    // Exit code 1: rows were handed back.
    run.stop_with(1).await;

    let now = Utc::now();
    // Due at once: the next run sends them (an upsert: no duplicate).
    assert_handed_back(&f, &ids_of(&rows), now - seconds(30), now, 1).await;
}

async fn sigterm_while_a_delete_waits_out_a_long_retry_after_exits_within_10_s_with_the_delete_asked_again(
    backend: Backend,
) {
    let Some((f, crm)) = brevo_asking_to_wait_300_s(backend, brevo_deletes_records).await else {
        return;
    };
    // Synced rows the application asks to delete, a retry already spent.
    let mut rows = generated_rows(3);
    for (i, row) in rows.iter_mut().enumerate() {
        row.insert("brevo_processing_status".into(), json!("Delete"));
        row.insert("brevo_sync_status".into(), json!("Complete"));
        row.insert("brevo_contact_id".into(), json!(format!("{}", 100 + i)));
        row.insert("retry_count".into(), json!(1));
    }
    f.insert(&rows).await;

    let mut run = paused_for_the_crm(&f).await;
    assert_eq!(f.count("brevo", "Deleting").await, 3);
    run.stop_with(1).await;

    let methods: Vec<String> = crm.received().into_iter().map(|r| r.method).collect();
    assert!(
        !methods.is_empty() && methods.iter().all(|m| m == "DELETE"),
        "only deletes were sent: {methods:?}"
    );
    let now = Utc::now();
    // Asked again, due at once: not lost, not failed, no retry spent.
    assert_back_in(&f, &ids_of(&rows), "Delete", now - seconds(30), now, 1).await;
    for row in f.rows(&ids_of(&rows)).await {
        assert_eq!(text(&row, "brevo_sync_status"), "Complete", "{row:?}");
        assert_eq!(text(&row, "brevo_processing_error"), "", "{row:?}");
    }
}

async fn run_exits_1_when_every_row_is_put_back_for_a_retry(backend: Backend) {
    let html = Reply {
        status: 503,
        body: "<html><body>Service Unavailable</body></html>".into(),
        headers: vec![],
        delay: Duration::ZERO,
    };
    let Some((f, _crm)) = brevo_against(backend, html, 120, super::brevo_tries_once).await else {
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
        cap_rate_limit_waits(config, 3_600);
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
    run.stop_with(1).await;

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
        cap_rate_limit_waits(config, 2);
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
