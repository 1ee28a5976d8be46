//! `engine run --watch --listen ADDR`: Prometheus metrics scraped from a
//! running engine and parsed, and the health endpoints.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engine::store::Backend;

use super::{Engine, Fixture, generated_rows, sandbox_options};
use crate::on_both_backends;

on_both_backends!(a_scrape_of_a_running_engine_has_every_series_with_the_rows_it_synced);

/// One sample: the metric name, its labels, its value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses Prometheus/OpenMetrics text: `name{a="x",b="y"} value`.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once('=').expect("key=value");
                            (key.to_string(), value.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            (name, labels, value)
        })
        .collect()
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

/// The address the engine says it serves on.
async fn listening_address(engine: &Engine) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stderr = engine.stderr();
        if let Some(addr) = stderr
            .lines()
            .find(|l| l.contains("Serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
        {
            return addr.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no address logged:\n{stderr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn a_scrape_of_a_running_engine_has_every_series_with_the_rows_it_synced(backend: Backend) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |config| {
        // Brevo with state columns of its own, so both run at once on one table.
        // (Without the seed's shared names it gets the per-mapping defaults.)
        config.edit(
            "mappings/brevo.toml",
            "[state]\nretry_count = \"retry_count\"\nnext_retry_at = \"next_retry_at\"\n",
            "",
        );
    })
    .await
    else {
        return;
    };
    f.insert(&generated_rows(5)).await;
    let mut engine = f.spawn(&["run", "--all", "--watch", "--listen", "127.0.0.1:0"]);
    let base = format!("http://{}", listening_address(&engine).await);

    let deadline = Instant::now() + Duration::from_secs(20);
    let samples = loop {
        let (status, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200, "{text}");
        let samples = parse(&text);
        let done = ["hubspot", "brevo"].iter().all(|m| {
            let complete = &[("mapping", *m), ("outcome", "complete")];
            value(&samples, "engine_rows_total", complete) == Some(5.0)
                && value(
                    &samples,
                    "engine_last_success_timestamp_seconds",
                    &[("mapping", m)],
                )
                .is_some()
        });
        if done {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "not synced in 20 s:\n{text}\n{}",
            engine.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Brevo: one request per row; HubSpot: one batch of 5.
    assert_eq!(
        value(
            &samples,
            "engine_requests_total",
            &[("connector", "brevo"), ("status_class", "2xx")]
        ),
        Some(5.0)
    );
    assert!(
        value(
            &samples,
            "engine_requests_total",
            &[("connector", "hubspot"), ("status_class", "2xx")]
        ) >= Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "engine_queue_rows",
            &[("mapping", "brevo"), ("status", "Complete")]
        ),
        Some(5.0)
    );
    assert_eq!(
        value(
            &samples,
            "engine_in_flight_limit",
            &[("connector", "hubspot")]
        ),
        Some(100.0),
        "the shipped max_in_flight"
    );
    assert_eq!(
        value(
            &samples,
            "engine_requests_in_flight",
            &[("connector", "brevo")]
        ),
        Some(0.0)
    );
    let now = chrono::Utc::now().timestamp() as f64;
    let last = value(
        &samples,
        "engine_last_success_timestamp_seconds",
        &[("mapping", "hubspot")],
    )
    .expect("a last success");
    assert!(
        (now - last).abs() < 60.0,
        "last success at {last}, now {now}"
    );
    assert!(
        value(
            &samples,
            "engine_cycle_duration_seconds_bucket",
            &[("mapping", "hubspot"), ("le", "+Inf")]
        ) >= Some(1.0)
    );
    assert!(
        value(
            &samples,
            "engine_rate_limited_total",
            &[("connector", "brevo")]
        )
        .unwrap_or(0.0)
            == 0.0
    );
    assert!(
        value(
            &samples,
            "engine_rate_limit_wait_seconds_total",
            &[("connector", "brevo")]
        ) >= Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "engine_connector_paused",
            &[("connector", "brevo")]
        ),
        Some(0.0)
    );

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");

    engine.stop_with(0).await;
}

#[tokio::test]
async fn a_connector_paused_by_a_broken_config_makes_readyz_fail_and_shows_in_the_metrics() {
    engine::install_crypto_provider();
    let Some(mut f) = Fixture::new(Backend::Sqlite, sandbox_options(0), |_| {}).await else {
        return;
    };
    // Brevo without its /v3 prefix: every endpoint answers 404.
    let base_url = f.sandbox.base_url();
    f.env.insert("BREVO_BASE_URL".into(), base_url);
    f.insert(&generated_rows(3)).await;
    let mut engine = f.spawn(&[
        "run",
        "--connector",
        "brevo",
        "--watch",
        "--listen",
        "127.0.0.1:0",
    ]);
    let base = format!("http://{}", listening_address(&engine).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = get(&format!("{base}/readyz")).await;
        if status != 200 {
            break (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed 200:\n{}",
            engine.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503);
    assert!(body.contains("connector `brevo` is paused"), "{body}");
    let samples = parse(&get(&format!("{base}/metrics")).await.1);
    assert_eq!(
        value(
            &samples,
            "engine_connector_paused",
            &[("connector", "brevo")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "engine_requests_total",
            &[("connector", "brevo"), ("status_class", "4xx")]
        ),
        Some(3.0)
    );
    assert_eq!(f.count("brevo", "Queued").await, 3);
    engine.stop_with(0).await;
}
