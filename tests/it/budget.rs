//! One rate budget across processes, held in PostgreSQL (issue #15, item 3).
//! Every test uses a budget key of its own, so parallel tests (and other
//! checkouts on the same server) never share one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::clock::{Clock, SystemClock};
use engine::plan::WindowPlan;
use engine::sandbox::{Sandbox, SandboxOptions};
use engine::send::budget::{SharedBudget, budget_key, slice_ttl};
use engine::store::budget::{self as table, SliceRequest, Trim};
use engine::store::{Backend, Store};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use crate::support::{ConfigDir, TestDb, plan_and_migrate, point_at, quiet, run_to_end};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A fresh pool on the test database (a second process has its own), with
/// the budget's table in place; `None` outside CI without PostgreSQL.
async fn pool() -> Option<PgPool> {
    let db = TestDb::open(Backend::Postgres).await?;
    let Store::Postgres(pool) = db.store else {
        unreachable!("a PostgreSQL TestDb")
    };
    table::ensure_table(&pool).await.unwrap();
    Some(pool)
}

fn unique_key() -> String {
    format!("test:{}", uuid::Uuid::new_v4().simple())
}

/// 10 requests per second: short enough to see several windows in a test.
fn per_second() -> Vec<WindowPlan> {
    vec![WindowPlan::new(
        "secondly",
        10,
        Duration::from_secs(1),
        &["*"],
    )]
}

fn budget(pool: PgPool, key: &str) -> SharedBudget {
    SharedBudget::new(
        pool,
        key.to_owned(),
        per_second(),
        Arc::new(SystemClock),
        ms(20),
        Duration::from_secs(60),
    )
}

/// The most admissions in any interval `[t, t + per)`.
fn most_in_any_window(mut times: Vec<Instant>, per: Duration) -> usize {
    times.sort();
    (0..times.len())
        .map(|i| times[i..].partition_point(|t| *t < times[i] + per))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_one_postgresql_budget_never_exceed_the_window_together() {
    let Some(first) = pool().await else { return };
    let Some(second) = pool().await else { return };
    let key = unique_key();
    let budgets = [
        Arc::new(budget(first, &key)),
        Arc::new(budget(second, &key)),
    ];
    let admitted: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let until = Instant::now() + Duration::from_millis(3_500);
    let mut tasks = Vec::new();
    for (process, budget) in budgets.iter().enumerate() {
        // Four requests at a time in each process, as `max_in_flight` would.
        for _ in 0..4 {
            let (budget, admitted) = (budget.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    let spent = budget
                        .take("default")
                        .await
                        .expect("no bound outside a batch");
                    admitted.lock().unwrap().push((process, spent));
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let admitted = admitted.lock().unwrap().clone();
    let times: Vec<Instant> = admitted.iter().map(|(_, t)| *t).collect();
    let most = most_in_any_window(times, Duration::from_secs(1));
    assert!(
        most <= 10,
        "{most} permits spent within one second, the window allows 10"
    );
    // Both processes got permits, and together they used the windows: about
    // four of them in 3.5 s (40 permits); far fewer would mean room was lost.
    for process in 0..2 {
        assert!(
            admitted.iter().any(|(p, _)| *p == process),
            "process {process} never got a permit"
        );
    }
    assert!(
        admitted.len() >= 20,
        "only {} permits in 3.5 s of a 10-per-second window",
        admitted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_processs_slice_comes_back_by_its_expiry() {
    let Some(pool) = pool().await else { return };
    let key = unique_key();
    let per = Duration::from_secs(1);
    let hold = slice_ttl(per) + per + ms(20);
    let request = SliceRequest {
        key: &key,
        window: "secondly",
        limit: 10,
        want: 10,
        hold,
        trim: None,
    };
    // A process takes the whole window and dies without giving it back.
    let dead = table::take_slice(&pool, &request).await.unwrap();
    assert_eq!(dead.permits, 10);
    // Another finds no room, and learns when the dead slice expires.
    let blocked = table::take_slice(&pool, &request).await.unwrap();
    assert_eq!(blocked.permits, 0);
    let retry_after = blocked
        .retry_after
        .expect("the slice alive says when room returns");
    assert!(
        retry_after <= hold,
        "room returns {retry_after:?} later, past the slice's hold of {hold:?}"
    );
    tokio::time::sleep(retry_after + ms(5)).await;
    let after = table::take_slice(&pool, &request).await.unwrap();
    assert_eq!(after.permits, 10, "the dead slice's permits came back");
    // The live process's own take() waits for it the same way.
    let survivor = budget(pool, &key);
    let spent = tokio::time::timeout(Duration::from_secs(30), survivor.take("default"))
        .await
        .expect("room comes back by expiry");
    assert!(spent.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_given_back_keeps_only_the_permits_it_spent() {
    let Some(pool) = pool().await else { return };
    let key = unique_key();
    let request = |trim| SliceRequest {
        key: &key,
        window: "secondly",
        limit: 10,
        want: 10,
        hold: Duration::from_secs(60),
        trim,
    };
    let first = table::take_slice(&pool, &request(None)).await.unwrap();
    assert_eq!(first.permits, 10);
    // Three spent: seven come back at once, the three stay held.
    let trim = Trim {
        id: first.id.unwrap(),
        used: 3,
        held: Duration::from_secs(60),
    };
    let second = table::take_slice(&pool, &request(Some(trim)))
        .await
        .unwrap();
    assert_eq!(second.permits, 7);
    // A slice given back unspent frees all of it.
    let trim = Trim {
        id: second.id.unwrap(),
        used: 0,
        held: Duration::ZERO,
    };
    let third = table::take_slice(&pool, &request(Some(trim)))
        .await
        .unwrap();
    assert_eq!(third.permits, 7);
}

#[test]
fn the_budget_key_names_the_connector_and_hashes_the_credential_it_never_shows() {
    let plan_with = |token: &str, url: &str| {
        let config = ConfigDir::shipped();
        let env = BTreeMap::from([
            ("HUBSPOT_ACCESS_TOKEN".to_string(), token.to_string()),
            ("HUBSPOT_BASE_URL".to_string(), url.to_string()),
            ("BREVO_API_KEY".to_string(), "brevo-key".to_string()),
        ]);
        let checked = engine::check::check_dir(config.path(), &env);
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        let plan = checked.plan.connectors["hubspot"].clone();
        budget_key(&plan, url, &env)
    };
    let key = plan_with("pat-na1-secret-token", "https://api.hubapi.com");
    assert!(key.starts_with("hubspot:"), "{key}");
    assert!(!key.contains("secret"), "{key}");
    assert_eq!(
        key,
        plan_with("pat-na1-secret-token", "https://api.hubapi.com")
    );
    assert_ne!(key, plan_with("another-token", "https://api.hubapi.com"));
    assert_ne!(
        key,
        plan_with("pat-na1-secret-token", "http://127.0.0.1:9999")
    );
}

/// Runs the shipped HubSpot mapping on PostgreSQL against a sandbox, with
/// `share` as the connector's `share_rate_budget`; returns the rows the run
/// left in the budget table for its key.
async fn budget_rows_after_a_run(share: bool) -> Option<(i64, u64)> {
    engine::install_crypto_provider();
    let db = TestDb::open(Backend::Postgres).await?;
    let sandbox = Sandbox::start(SandboxOptions {
        port: 0,
        ..SandboxOptions::default()
    })
    .await
    .unwrap();
    let config = ConfigDir::shipped();
    point_at(&config, &db, &["hubspot"]);
    std::fs::remove_file(config.path().join("mappings/brevo.toml")).unwrap();
    if !share {
        config.edit(
            "connectors/hubspot.toml",
            "max_in_flight = 100\n",
            "max_in_flight = 100\nshare_rate_budget = false\n",
        );
    }
    let env = engine::demo::sandbox_env(&sandbox.base_url());
    let plan = plan_and_migrate(&config, &env, &db, &["hubspot"]).await;
    let rows: Vec<Map<String, Value>> = (0..3)
        .map(|n| {
            json!({
                "email": format!("budget{n}@example.com"),
                "name": format!("Ann Budget{n}"),
                "retry_count": 0,
                "hubspot_processing_status": "Queued",
            })
            .as_object()
            .unwrap()
            .clone()
        })
        .collect();
    db.store.insert_rows(&db.table, &rows).await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let summary = run_to_end(&plan, "hubspot", &db, &env, clock, quiet()).await;
    assert_eq!(sandbox.hubspot_contacts().len(), 3, "{summary:?}");
    let requests: u64 = sandbox.stats()["requests"]
        .as_object()
        .map_or(0, |routes| routes.values().filter_map(Value::as_u64).sum());
    assert!(requests > 0);
    let connector = plan.connectors["hubspot"].clone();
    let key = budget_key(&connector, &sandbox.base_url(), &env);
    let Store::Postgres(pool) = &db.store else {
        unreachable!()
    };
    table::ensure_table(pool).await.unwrap();
    let held: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(permits), 0)::INT8 FROM engine_rate_budget WHERE budget_key = $1",
    )
    .bind(&key)
    .fetch_one(pool)
    .await
    .unwrap();
    Some((held, requests))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_postgresql_takes_its_requests_from_the_shared_budget() {
    let Some((held, requests)) = budget_rows_after_a_run(true).await else {
        return;
    };
    // The run's requests stay held in the budget (given back at the run's
    // end, trimmed to what was spent) until they leave the window: one
    // permit of each of HubSpot's two windows per request.
    assert_eq!(held, 2 * requests as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_opts_out_takes_nothing_from_the_shared_budget() {
    let Some((held, requests)) = budget_rows_after_a_run(false).await else {
        return;
    };
    assert!(requests > 0);
    assert_eq!(held, 0);
}
