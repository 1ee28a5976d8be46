//! Turns every HTTP response (or transport error) into one closed [`Outcome`],
//! and reads the rate-limit headers that keep the [`RateLimiter`] in step
//! with the server.
//!
//! Everything here is pure: the current time is a parameter.
//!
//! [`RateLimiter`]: crate::send::ratelimit::RateLimiter

use std::error::Error as _;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::plan::{ClassifyPolicy, HeaderPolicy, ResetUnit};

/// What the engine does with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx (or a response rule said so).
    Success,
    /// Transient failure: try again later, spending one retry. `after` is the
    /// server's wish (`Retry-After`), capped; `None` means use the backoff.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Over a rate limit: wait `after` (or the window length if `None`), then
    /// send again *without* spending a retry.
    RateLimited {
        reason: String,
        after: Option<Duration>,
    },
    /// Will fail the same way again: record the error, do not retry.
    Permanent { reason: String },
}

impl Outcome {
    /// The wait the server asked for, if any.
    pub fn after(&self) -> Option<Duration> {
        match self {
            Outcome::Retry { after, .. } | Outcome::RateLimited { after, .. } => *after,
            Outcome::Success | Outcome::Permanent { .. } => None,
        }
    }

    /// The failure reason, if this is a failure.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Success => None,
            Outcome::Retry { reason, .. }
            | Outcome::RateLimited { reason, .. }
            | Outcome::Permanent { reason } => Some(reason),
        }
    }
}

/// A rate-limited answer's wait is read up to this (a day: the longest
/// window a CRM documents); the client decides whether to wait it out or hand
/// the rows back until then.
pub const MAX_RATE_LIMIT_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What one response says about the server's rate-limit count; feeds
/// [`RateLimiter::observe`](crate::send::ratelimit::RateLimiter::observe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateInfo {
    /// Requests left in the server's window.
    pub remaining: Option<u32>,
    /// Time until that window resets (capped at `max_wait`).
    pub reset: Option<Duration>,
}

/// Classifies a response by status and headers.
///
/// Precedence, first match wins:
/// 1. 2xx: [`Outcome::Success`], always (a 2xx that hides an error is for the
///    response rules to catch, not for the status lists).
/// 2. 429 or a status in `rate_limited_statuses`: [`Outcome::RateLimited`];
///    `after` is the first of Retry-After, the reset header, the window-length
///    header that can be read, capped at `max_wait`; `None` if none can.
/// 3. A status in `retryable_statuses`: [`Outcome::Retry`] (this can turn a
///    built-in permanent status such as 501 into a retryable one).
/// 4. 408, and 5xx except 501 (Not Implemented) and 505 (HTTP Version Not
///    Supported): [`Outcome::Retry`]. `after` is Retry-After, capped.
/// 5. Anything else (other 4xx, 1xx, 3xx such as Salesforce's 300 on
///    multiple matches): [`Outcome::Permanent`].
///
/// `reason` is the error message taken from the body; it is appended to the
/// status in the outcome's reason.
pub fn classify(
    status: u16,
    headers: &HeaderMap,
    reason: &str,
    policy: &ClassifyPolicy,
    now: DateTime<Utc>,
) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Success;
    }
    let hp = &policy.headers;
    let reason = describe(status, reason);
    if status == 429 || policy.rate_limited_statuses.contains(&status) {
        // Uncut by `max_wait`: a wait longer than the engine waits in-process
        // hands the rows back until the time the CRM named, not to a time cut
        // short, at which it would only answer 429 again.
        let cap = MAX_RATE_LIMIT_AFTER;
        let after = retry_after(headers, hp, now, cap)
            .or_else(|| reset_after(headers, hp, now, cap))
            .or_else(|| window_length(headers, hp, cap));
        return Outcome::RateLimited { reason, after };
    }
    let built_in_retry =
        status == 408 || ((500..600).contains(&status) && !matches!(status, 501 | 505));
    if built_in_retry || policy.retryable_statuses.contains(&status) {
        let after = retry_after(headers, hp, now, hp.max_wait);
        return Outcome::Retry { reason, after };
    }
    Outcome::Permanent { reason }
}

/// Reads the remaining count and the reset time from a response's headers.
///
/// A remaining count that is negative reads as 0; one that is not a number is
/// ignored (`None`), as is a reset that cannot be read. A reset in the past
/// reads as zero; any reset is capped at `max_wait`.
pub fn rate_info(headers: &HeaderMap, policy: &HeaderPolicy, now: DateTime<Utc>) -> RateInfo {
    let remaining = policy
        .remaining
        .as_deref()
        .and_then(|name| header_str(headers, name))
        .and_then(parse_count);
    RateInfo {
        remaining,
        reset: reset_after(headers, policy, now, policy.max_wait),
    }
}

/// Classifies an error that came before (or instead of) a complete response.
///
/// - timeouts, connection failures, and errors while sending the request or
///   reading the body: [`Outcome::Retry`];
/// - an error carrying a status (from `error_for_status`): as [`classify`]
///   with the default policy and no headers;
/// - a request that could not be built, a redirect loop, a body that could
///   not be decoded: [`Outcome::Permanent`] (sending it again fails again).
pub fn classify_transport_error(err: &reqwest::Error) -> Outcome {
    let text = error_chain(err);
    if err.is_timeout() {
        return Outcome::Retry {
            reason: format!("timeout: {text}"),
            after: None,
        };
    }
    if err.is_connect() {
        return Outcome::Retry {
            reason: format!("connection failed: {text}"),
            after: None,
        };
    }
    if err.is_builder() || err.is_redirect() || err.is_decode() {
        return Outcome::Permanent { reason: text };
    }
    if let Some(status) = err.status() {
        return classify(
            status.as_u16(),
            &HeaderMap::new(),
            &text,
            &ClassifyPolicy::default(),
            DateTime::<Utc>::UNIX_EPOCH,
        );
    }
    Outcome::Retry {
        reason: format!("transport error: {text}"),
        after: None,
    }
}

/// `"HTTP 503 Service Unavailable: <reason>"`.
fn describe(status: u16, reason: &str) -> String {
    let canonical = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    let head = match canonical {
        Some(text) => format!("HTTP {status} {text}"),
        None => format!("HTTP {status}"),
    };
    let reason = reason.trim();
    if reason.is_empty() {
        head
    } else {
        format!("{head}: {reason}")
    }
}

/// The error's message followed by its sources, `": "`-separated.
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    // The URL may carry a secret in its query (`?api_token=...`): show it without.
    if let Some(url) = err.url() {
        let mut shown = url.clone();
        shown.set_query(None);
        text = text.replace(url.as_str(), shown.as_str());
    }
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // A user name or password in the URL, or one a cause repeats, is hidden too.
    crate::redact::urls_in_text(&text)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then_some(value)
}

/// Retry-After (seconds or HTTP-date), capped at `cap`.
fn retry_after(
    headers: &HeaderMap,
    hp: &HeaderPolicy,
    now: DateTime<Utc>,
    cap: Duration,
) -> Option<Duration> {
    let name = hp.retry_after.as_str();
    let value = header_str(headers, name)?;
    let wait = parse_seconds(value).or_else(|| parse_http_date(value, now))?;
    Some(wait.min(cap))
}

/// The reset header read in its unit, capped at `cap`.
fn reset_after(
    headers: &HeaderMap,
    hp: &HeaderPolicy,
    now: DateTime<Utc>,
    cap: Duration,
) -> Option<Duration> {
    let value = header_str(headers, hp.reset.as_deref()?)?;
    let wait = match hp.reset_unit {
        ResetUnit::Seconds => parse_seconds(value)?,
        ResetUnit::Milliseconds => parse_millis(value)?,
        ResetUnit::EpochSeconds => {
            let at = parse_seconds(value)?;
            let at = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::from_std(at).ok()?;
            until(at, now)
        }
    };
    Some(wait.min(cap))
}

/// The window-length header (milliseconds), capped at `cap`.
fn window_length(headers: &HeaderMap, hp: &HeaderPolicy, cap: Duration) -> Option<Duration> {
    let value = header_str(headers, hp.window_ms.as_deref()?)?;
    Some(parse_millis(value)?.min(cap))
}

/// A non-negative decimal number of seconds. Integers are exact; fractions
/// are accepted ("1.5").
fn parse_seconds(value: &str) -> Option<Duration> {
    parse_decimal(value, Duration::from_secs, 1.0)
}

/// A non-negative decimal number of milliseconds.
fn parse_millis(value: &str) -> Option<Duration> {
    parse_decimal(value, Duration::from_millis, 0.001)
}

fn parse_decimal(
    value: &str,
    from_int: fn(u64) -> Duration,
    secs_per_unit: f64,
) -> Option<Duration> {
    if let Ok(n) = value.parse::<u64>() {
        return Some(from_int(n));
    }
    let n: f64 = value.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(n * secs_per_unit).ok()
}

/// An HTTP-date (IMF-fixdate, RFC 850 or asctime form) as a wait from `now`;
/// a date in the past is zero.
fn parse_http_date(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let at = DateTime::parse_from_rfc2822(value)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|fmt| NaiveDateTime::parse_from_str(value, fmt).ok())
                .map(|naive| naive.and_utc())
        })?;
    Some(until(at, now))
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

/// A remaining count: negative reads as 0, huge as `u32::MAX`, "5.0" as 5.
fn parse_count(value: &str) -> Option<u32> {
    if let Ok(n) = value.parse::<i64>() {
        return Some(u32::try_from(n.max(0)).unwrap_or(u32::MAX));
    }
    let n: f64 = value.parse().ok()?;
    if n.is_nan() {
        return None;
    }
    // `as` saturates: -3.0 -> 0, 1e12 -> u32::MAX.
    Some(n.floor() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn now() -> DateTime<Utc> {
        // 2025-01-01T00:00:00Z, Unix 1735689600.
        crate::clock::ManualClock::default_start_utc()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    fn hubspot() -> ClassifyPolicy {
        ClassifyPolicy {
            retryable_statuses: vec![423, 477],
            rate_limited_statuses: vec![],
            headers: HeaderPolicy {
                remaining: Some("X-HubSpot-RateLimit-Remaining".into()),
                window_ms: Some("X-HubSpot-RateLimit-Interval-Milliseconds".into()),
                ..HeaderPolicy::default()
            },
        }
    }

    fn brevo() -> ClassifyPolicy {
        ClassifyPolicy {
            headers: HeaderPolicy {
                remaining: Some("x-sib-ratelimit-remaining".into()),
                reset: Some("x-sib-ratelimit-reset".into()),
                reset_unit: ResetUnit::Seconds,
                max_wait: Duration::from_secs(60),
                ..HeaderPolicy::default()
            },
            ..ClassifyPolicy::default()
        }
    }

    fn intercom() -> ClassifyPolicy {
        ClassifyPolicy {
            headers: HeaderPolicy {
                remaining: Some("X-RateLimit-Remaining".into()),
                reset: Some("X-RateLimit-Reset".into()),
                reset_unit: ResetUnit::EpochSeconds,
                ..HeaderPolicy::default()
            },
            ..ClassifyPolicy::default()
        }
    }

    /// The outcome's kind and wait, without the reason text.
    #[derive(Debug, PartialEq, Eq)]
    enum Kind {
        Success,
        Retry(Option<Duration>),
        RateLimited(Option<Duration>),
        Permanent,
    }

    fn kind(outcome: &Outcome) -> Kind {
        match outcome {
            Outcome::Success => Kind::Success,
            Outcome::Retry { after, .. } => Kind::Retry(*after),
            Outcome::RateLimited { after, .. } => Kind::RateLimited(*after),
            Outcome::Permanent { .. } => Kind::Permanent,
        }
    }

    #[test]
    fn statuses_classify_by_default_rules() {
        let policy = ClassifyPolicy::default();
        let table = [
            (200, Kind::Success),
            (201, Kind::Success),
            (202, Kind::Success),
            (204, Kind::Success),
            (207, Kind::Success),
            (300, Kind::Permanent),
            (400, Kind::Permanent),
            (401, Kind::Permanent),
            (403, Kind::Permanent),
            (404, Kind::Permanent),
            (409, Kind::Permanent),
            (414, Kind::Permanent),
            (422, Kind::Permanent),
            (423, Kind::Permanent),
            (477, Kind::Permanent),
            (408, Kind::Retry(None)),
            (429, Kind::RateLimited(None)),
            (500, Kind::Retry(None)),
            (501, Kind::Permanent),
            (502, Kind::Retry(None)),
            (503, Kind::Retry(None)),
            (504, Kind::Retry(None)),
            (505, Kind::Permanent),
            (521, Kind::Retry(None)),
            (524, Kind::Retry(None)),
        ];
        for (status, expected) in table {
            let outcome = classify(status, &HeaderMap::new(), "", &policy, now());
            assert_eq!(kind(&outcome), expected, "status {status}");
        }
    }

    #[test]
    fn rate_limited_waits_come_from_the_headers_each_connector_sends() {
        let date = "Wed, 01 Jan 2025 00:00:42 GMT";
        let epoch = (1_735_689_600 + 37).to_string();
        let table: Vec<(&str, ClassifyPolicy, HeaderMap, Option<Duration>)> = vec![
            (
                "Retry-After seconds",
                ClassifyPolicy::default(),
                headers(&[("retry-after", "7")]),
                secs(7),
            ),
            (
                "Retry-After HTTP-date",
                ClassifyPolicy::default(),
                headers(&[("Retry-After", date)]),
                secs(42),
            ),
            (
                "Retry-After date in the past",
                ClassifyPolicy::default(),
                headers(&[("Retry-After", "Tue, 31 Dec 2024 23:00:00 GMT")]),
                secs(0),
            ),
            (
                "Brevo reset seconds",
                brevo(),
                headers(&[
                    ("x-sib-ratelimit-remaining", "0"),
                    ("x-sib-ratelimit-reset", "12"),
                ]),
                secs(12),
            ),
            (
                "Intercom epoch reset",
                intercom(),
                headers(&[
                    ("X-RateLimit-Remaining", "0"),
                    ("X-RateLimit-Reset", &epoch),
                ]),
                secs(37),
            ),
            ("HubSpot with no header", hubspot(), HeaderMap::new(), None),
            (
                "HubSpot with the interval header",
                hubspot(),
                headers(&[
                    ("x-hubspot-ratelimit-remaining", "0"),
                    ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
                ]),
                secs(10),
            ),
            (
                "Retry-After wins over the reset header",
                brevo(),
                headers(&[("Retry-After", "3"), ("x-sib-ratelimit-reset", "12")]),
                secs(3),
            ),
            (
                "an unreadable Retry-After falls back to the reset",
                brevo(),
                headers(&[("Retry-After", "soon"), ("x-sib-ratelimit-reset", "12")]),
                secs(12),
            ),
        ];
        for (case, policy, headers, expected) in table {
            let outcome = classify(429, &headers, "slow down", &policy, now());
            assert_eq!(kind(&outcome), Kind::RateLimited(expected), "{case}");
        }
    }

    #[test]
    fn configured_retryable_statuses_retry_and_honour_retry_after() {
        let policy = hubspot();
        let locked = classify(423, &HeaderMap::new(), "locked", &policy, now());
        assert_eq!(kind(&locked), Kind::Retry(None));
        let migrating = classify(477, &headers(&[("Retry-After", "120")]), "", &policy, now());
        assert_eq!(kind(&migrating), Kind::Retry(secs(120)));
        let unavailable = classify(503, &headers(&[("Retry-After", "5")]), "", &policy, now());
        assert_eq!(kind(&unavailable), Kind::Retry(secs(5)));
    }

    #[test]
    fn configured_rate_limited_statuses_win_over_retryable_and_permanent() {
        let policy = ClassifyPolicy {
            retryable_statuses: vec![403, 501],
            rate_limited_statuses: vec![403],
            ..ClassifyPolicy::default()
        };
        let table = [
            (403, Kind::RateLimited(None)),
            (501, Kind::Retry(None)),
            (200, Kind::Success),
        ];
        for (status, expected) in table {
            assert_eq!(
                kind(&classify(status, &HeaderMap::new(), "", &policy, now())),
                expected
            );
        }
        let success_listed = ClassifyPolicy {
            rate_limited_statuses: vec![200],
            ..ClassifyPolicy::default()
        };
        assert_eq!(
            classify(200, &HeaderMap::new(), "", &success_listed, now()),
            Outcome::Success
        );
    }

    #[test]
    fn retry_waits_and_resets_are_capped_by_max_wait_but_rate_limits_only_by_a_day() {
        let day = "86400";
        let cases: Vec<(u16, ClassifyPolicy, HeaderMap)> = vec![
            (477, hubspot(), headers(&[("Retry-After", day)])),
            (429, brevo(), headers(&[("x-sib-ratelimit-reset", day)])),
            (
                429,
                ClassifyPolicy::default(),
                headers(&[("Retry-After", "Thu, 01 Jan 2026 00:00:00 GMT")]),
            ),
        ];
        for (status, mut policy, headers) in cases {
            policy.headers.max_wait = Duration::from_secs(30);
            let after = classify(status, &headers, "", &policy, now()).after();
            if status == 429 {
                // A rate limit's wait is the CRM's own, uncut: rows handed back
                // wait as long as it asked (up to a day).
                assert!(after > secs(30), "{after:?}");
                assert!(after <= Some(MAX_RATE_LIMIT_AFTER), "{after:?}");
            } else {
                assert_eq!(after, secs(30));
            }
        }
        let info = rate_info(
            &headers(&[("x-sib-ratelimit-reset", day)]),
            &brevo().headers,
            now(),
        );
        assert_eq!(info.reset, secs(60));
    }

    #[test]
    fn retry_after_reads_every_http_date_form_and_fractions() {
        let policy = ClassifyPolicy::default();
        let table = [
            ("Wed, 01 Jan 2025 00:01:00 GMT", secs(60)),
            ("Wednesday, 01-Jan-25 00:01:00 GMT", secs(60)),
            ("Wed Jan  1 00:01:00 2025", secs(60)),
            ("1.5", Some(Duration::from_millis(1500))),
            ("0", secs(0)),
            ("-1", None),
            ("NaN", None),
            ("tomorrow", None),
            ("", None),
        ];
        for (value, expected) in table {
            let outcome = classify(429, &headers(&[("Retry-After", value)]), "", &policy, now());
            assert_eq!(outcome.after(), expected, "Retry-After: {value:?}");
        }
    }

    #[test]
    fn a_custom_retry_after_header_name_is_used() {
        let policy = ClassifyPolicy {
            headers: HeaderPolicy {
                retry_after: "X-Retry-In".into(),
                ..HeaderPolicy::default()
            },
            ..ClassifyPolicy::default()
        };
        let h = headers(&[("x-retry-in", "4"), ("retry-after", "99")]);
        assert_eq!(classify(429, &h, "", &policy, now()).after(), secs(4));
    }

    #[test]
    fn reset_units_are_read_as_configured() {
        let policy = |unit| HeaderPolicy {
            reset: Some("X-RateLimit-Reset".into()),
            reset_unit: unit,
            ..HeaderPolicy::default()
        };
        let table = [
            (ResetUnit::Seconds, "30", secs(30)),
            (
                ResetUnit::Milliseconds,
                "2500",
                Some(Duration::from_millis(2500)),
            ),
            (
                ResetUnit::Milliseconds,
                "0.5",
                Some(Duration::from_micros(500)),
            ),
            (ResetUnit::EpochSeconds, "1735689610", secs(10)),
            (ResetUnit::EpochSeconds, "1735689000", secs(0)),
            (ResetUnit::Seconds, "later", None),
        ];
        for (unit, value, expected) in table {
            let info = rate_info(
                &headers(&[("x-ratelimit-reset", value)]),
                &policy(unit),
                now(),
            );
            assert_eq!(info.reset, expected, "{unit:?} {value}");
        }
    }

    #[test]
    fn rate_info_reads_remaining_case_insensitively() {
        let hp = hubspot().headers;
        let table = [
            (
                headers(&[("x-hubspot-ratelimit-remaining", "42")]),
                Some(42),
            ),
            (
                headers(&[("X-HUBSPOT-RATELIMIT-REMAINING", " 7 ")]),
                Some(7),
            ),
            (headers(&[("x-hubspot-ratelimit-remaining", "-3")]), Some(0)),
            (
                headers(&[("x-hubspot-ratelimit-remaining", "5.0")]),
                Some(5),
            ),
            (
                headers(&[("x-hubspot-ratelimit-remaining", "99999999999")]),
                Some(u32::MAX),
            ),
            (headers(&[("x-hubspot-ratelimit-remaining", "many")]), None),
            (HeaderMap::new(), None),
        ];
        for (h, expected) in table {
            let info = rate_info(&h, &hp, now());
            assert_eq!(
                info,
                RateInfo {
                    remaining: expected,
                    reset: None
                },
                "{h:?}"
            );
        }
    }

    #[test]
    fn rate_info_without_configured_headers_is_empty() {
        let h = headers(&[("x-ratelimit-remaining", "3"), ("x-ratelimit-reset", "3")]);
        assert_eq!(
            rate_info(&h, &HeaderPolicy::default(), now()),
            RateInfo::default()
        );
    }

    #[test]
    fn brevo_rate_info_gives_remaining_and_reset() {
        let h = headers(&[
            ("x-sib-ratelimit-remaining", "4"),
            ("x-sib-ratelimit-reset", "2"),
        ]);
        assert_eq!(
            rate_info(&h, &brevo().headers, now()),
            RateInfo {
                remaining: Some(4),
                reset: secs(2)
            }
        );
    }

    #[test]
    fn reasons_name_the_status_and_the_body_message() {
        let policy = ClassifyPolicy::default();
        let outcome = classify(
            429,
            &HeaderMap::new(),
            " You have reached your secondly limit. ",
            &policy,
            now(),
        );
        assert_eq!(
            outcome.reason(),
            Some("HTTP 429 Too Many Requests: You have reached your secondly limit.")
        );
        let outcome = classify(477, &HeaderMap::new(), "", &policy, now());
        assert_eq!(outcome.reason(), Some("HTTP 477"));
        assert_eq!(Outcome::Success.reason(), None);
    }

    fn client(timeout: Duration) -> reqwest::Client {
        crate::install_crypto_provider();
        reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_transport_error_never_shows_the_query_string_that_may_hold_a_key() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        crate::install_crypto_provider();
        let err = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/persons?api_token=SECRET-123"
            ))
            .send()
            .await
            .unwrap_err();
        let reason = classify_transport_error(&err)
            .reason()
            .unwrap_or_default()
            .to_string();
        assert!(!reason.contains("SECRET-123"), "{reason}");
        assert!(reason.contains("/persons"), "{reason}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        // Bind then drop a listener so the port is (almost surely) closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = client(Duration::from_secs(5))
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap_err();
        let outcome = classify_transport_error(&err);
        assert!(
            matches!(&outcome, Outcome::Retry { reason, .. } if reason.starts_with("connection failed")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_timeout_is_retryable() {
        // Accepts the connection but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let err = client(Duration::from_millis(200))
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap_err();
        server.abort();
        let outcome = classify_transport_error(&err);
        assert!(
            matches!(&outcome, Outcome::Retry { reason, .. } if reason.starts_with("timeout")),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_request_that_cannot_be_built_is_permanent() {
        let err = client(Duration::from_secs(1))
            .get("not a url")
            .build()
            .unwrap_err();
        let outcome = classify_transport_error(&err);
        assert!(matches!(outcome, Outcome::Permanent { .. }), "{outcome:?}");
    }
}
