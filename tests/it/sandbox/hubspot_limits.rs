//! HubSpot rate limits: the rolling 10-second window, the daily budget and
//! search's own per-second limit. The sandbox clock stands in for waiting.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::{Answer, Env, options, start};
use engine::sandbox::SandboxOptions;

async fn get(env: &Env) -> Answer {
    env.hubspot(Method::GET, "/crm/v3/objects/contacts/1", None)
        .await
}

fn assert_429(answer: &Answer, policy: &str, limit: &str) {
    assert_eq!(answer.status, 429);
    assert_eq!(answer.body["status"], "error");
    assert_eq!(
        answer.body["message"],
        format!("You have reached your {limit} limit.")
    );
    assert_eq!(answer.body["errorType"], "RATE_LIMIT");
    assert_eq!(answer.body["policyName"], policy);
    assert!(answer.body["correlationId"].is_string());
}

#[tokio::test]
async fn hubspot_rate_limit_headers_count_down_within_the_window_and_the_day() {
    let opts = SandboxOptions {
        hubspot_per_10s: Some(3),
        hubspot_daily: Some(10),
        ..options()
    };
    let env = start(opts).await;
    let first = get(&env).await;
    assert_eq!(first.header("x-hubspot-ratelimit-max"), Some("3"));
    assert_eq!(first.header("x-hubspot-ratelimit-remaining"), Some("2"));
    assert_eq!(
        first.header("x-hubspot-ratelimit-interval-milliseconds"),
        Some("10000")
    );
    assert_eq!(first.header("x-hubspot-ratelimit-daily"), Some("10"));
    assert_eq!(
        first.header("x-hubspot-ratelimit-daily-remaining"),
        Some("9")
    );
    let second = get(&env).await;
    assert_eq!(second.header("x-hubspot-ratelimit-remaining"), Some("1"));
    assert_eq!(
        second.header("x-hubspot-ratelimit-daily-remaining"),
        Some("8")
    );
    let unlimited = start(options()).await;
    assert!(
        get(&unlimited)
            .await
            .header("x-hubspot-ratelimit-max")
            .is_none()
    );
}

#[tokio::test]
async fn hubspot_ten_second_window_rolls_and_rejected_requests_do_not_count() {
    let env = start(SandboxOptions {
        hubspot_per_10s: Some(2),
        ..options()
    })
    .await;
    assert_eq!(get(&env).await.status, 404);
    env.sandbox.advance_clock(Duration::from_secs(6));
    assert_eq!(get(&env).await.status, 404);
    let limited = get(&env).await;
    assert_429(&limited, "TEN_SECONDLY_ROLLING", "ten_secondly_rolling");
    assert_eq!(limited.header("x-hubspot-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("x-hubspot-ratelimit-max"), Some("2"));
    env.sandbox.advance_clock(Duration::from_secs(4));
    let freed = get(&env).await;
    assert_eq!(freed.status, 404, "the first request has left the window");
    assert_eq!(freed.header("x-hubspot-ratelimit-remaining"), Some("0"));
    assert_eq!(get(&env).await.status, 429);
    env.sandbox.advance_clock(Duration::from_secs(6));
    assert_eq!(get(&env).await.status, 404);
}

#[tokio::test]
async fn hubspot_daily_limit_answers_429_daily_until_the_next_day() {
    let env = start(SandboxOptions {
        hubspot_daily: Some(2),
        ..options()
    })
    .await;
    assert_eq!(get(&env).await.status, 404);
    assert_eq!(get(&env).await.status, 404);
    let limited = get(&env).await;
    assert_429(&limited, "DAILY", "daily");
    assert_eq!(
        limited.header("x-hubspot-ratelimit-daily-remaining"),
        Some("0")
    );
    env.sandbox.advance_clock(Duration::from_secs(24 * 3600));
    let next_day = get(&env).await;
    assert_eq!(next_day.status, 404);
    assert_eq!(
        next_day.header("x-hubspot-ratelimit-daily-remaining"),
        Some("1")
    );
}

#[tokio::test]
async fn hubspot_search_has_its_own_per_second_limit_and_no_rate_limit_headers() {
    let opts = SandboxOptions {
        hubspot_search_per_s: Some(2),
        hubspot_per_10s: Some(100),
        ..options()
    };
    let env = start(opts).await;
    let filter = json!({"propertyName": "email", "operator": "EQ", "value": "a@example.com"});
    for _ in 0..2 {
        let answer = env.hubspot_search(filter.clone()).await;
        assert_eq!(answer.status, 200);
        assert!(answer.header("x-hubspot-ratelimit-remaining").is_none());
        assert!(answer.header("x-hubspot-correlation-id").is_some());
    }
    let limited = env.hubspot_search(filter.clone()).await;
    assert_429(&limited, "SECONDLY", "secondly");
    assert!(limited.header("x-hubspot-ratelimit-max").is_none());
    let other = get(&env).await;
    assert_eq!(
        other.header("x-hubspot-ratelimit-remaining"),
        Some("99"),
        "search is not in the window"
    );
    env.sandbox.advance_clock(Duration::from_secs(1));
    assert_eq!(env.hubspot_search(filter).await.status, 200);
}
