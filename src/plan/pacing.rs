//! The send stage's policy as the plan holds it: how requests are paced
//! (rate-limit windows and the margins around them), how one request is
//! retried within a cycle, and how an answer's status and rate-limit headers
//! are read. Durations are `Duration`s and every default and derived value is
//! resolved here, so the runtime (`crate::send`) uses these types as they are
//! and never reads a config type; the behaviour over them (the limiter, the
//! backoff's delays, the classification) lives there.

use std::fmt;
use std::time::Duration;

use super::ResetUnit;
use crate::config::connector::{RateLimit, RateLimitHeaders, Retry};

/// The most the rate limiter adds to every window (see `PacingPlan::new`).
const MAX_MARGIN: Duration = Duration::from_millis(100);

/// The cap on header-derived waits of a policy no connector set (a
/// transport error's status is classified with the default policy).
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// One rate-limit window: at most `requests` per `per` for the endpoint
/// classes it names (`*` for all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    /// For logs and errors, e.g. `"ten_secondly"`.
    pub name: String,
    /// How many requests the window allows.
    pub requests: u32,
    /// The window's length.
    pub per: Duration,
    /// Endpoint classes the window applies to; `"*"` applies to all.
    pub classes: Vec<String>,
}

impl WindowPlan {
    /// Shorthand for building a window.
    pub fn new(name: &str, requests: u32, per: Duration, classes: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            requests,
            per,
            classes: classes.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    pub(super) fn from_config(limit: &RateLimit) -> Self {
        Self {
            name: limit.name.clone(),
            requests: limit.requests,
            per: Duration::from_secs(limit.per_secs),
            classes: limit.endpoint_classes.clone(),
        }
    }

    /// Whether requests of `class` count against this window.
    pub fn applies_to(&self, class: &str) -> bool {
        self.classes.iter().any(|c| c == "*" || c == class)
    }
}

/// The rate limits in force for one connector, and where their counts came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsInForce {
    /// The windows, with the counts of the chosen tier and any override applied.
    pub windows: Vec<WindowPlan>,
    /// The chosen tier, if the connector names tiers.
    pub tier: Option<String>,
    /// How the tier was chosen, e.g. `default_tier` or `HUBSPOT_TIER`.
    pub tier_from: Option<String>,
    /// The windows whose count an environment variable set: (window, variable).
    pub overridden: Vec<(String, String)>,
}

impl fmt::Display for LimitsInForce {
    /// `tier professional (HUBSPOT_TIER): ten_secondly 190 per 10 s, daily 625000 per 86400 s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(tier), Some(from)) = (&self.tier, &self.tier_from) {
            write!(f, "tier {tier} ({from}): ")?;
        }
        if self.windows.is_empty() {
            return write!(f, "no rate limit");
        }
        let windows: Vec<String> = self
            .windows
            .iter()
            .map(|w| {
                let mut text = format!("{} {} per {} s", w.name, w.requests, w.per.as_secs());
                if let Some((_, variable)) = self.overridden.iter().find(|(n, _)| *n == w.name) {
                    text.push_str(" (");
                    text.push_str(variable);
                    text.push(')');
                }
                text
            })
            .collect();
        write!(f, "{}", windows.join(", "))
    }
}

/// How a connector's requests are paced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacingPlan {
    /// The windows in force and where their counts came from.
    pub limits: LimitsInForce,
    /// What the limiter adds to every window, at the start.
    pub margin: Duration,
    /// The widest the margin grows while the CRM's latency varies.
    pub widest_margin: Duration,
}

impl PacingPlan {
    /// The pacing of `limits`, with the margins their windows' lengths call for.
    pub(super) fn new(limits: LimitsInForce) -> Self {
        // Requests are counted from when they leave; the CRM counts from when they
        // arrive. The margin keeps two requests a window apart on our side from
        // landing in one window on theirs: 100 ms, but at most 2 % of the shortest
        // window, so a per-second limit is not cut to 10 per 1.1 s (91 %).
        let shortest = limits.windows.iter().map(|w| w.per).min();
        let margin = shortest.map_or(MAX_MARGIN, |per| MAX_MARGIN.min(per / 50));
        // Wider while the CRM's latency varies, up to a quarter of the
        // shortest window (see `crate::send::margin`).
        let widest_margin = shortest.map_or(margin, |per| (per / 4).max(margin));
        Self {
            limits,
            margin,
            widest_margin,
        }
    }

    /// The rate-limit windows in force.
    pub fn windows(&self) -> &[WindowPlan] {
        &self.limits.windows
    }
}

/// How one request is retried within a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPlan {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The delays between them.
    pub backoff: Backoff,
}

impl RetryPlan {
    pub(super) fn from_config(retry: &Retry) -> Self {
        Self {
            max_attempts: retry.max_attempts,
            backoff: Backoff {
                base: Duration::from_millis(retry.base_delay_ms),
                max: Duration::from_millis(retry.max_delay_ms),
                exponential: retry.exponential,
                jitter: if retry.jitter {
                    Jitter::Full
                } else {
                    Jitter::None
                },
            },
        }
    }
}

/// Retry delays: `base * 2^(attempt-1)` (or `base`), capped at `max`, then
/// jittered (see `crate::send::retry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub base: Duration,
    /// No delay (before or after jitter) is longer than this.
    pub max: Duration,
    /// Double the delay for every further retry; otherwise always `base`.
    pub exponential: bool,
    /// How the delay is randomised.
    pub jitter: Jitter,
}

/// How a computed delay `d` is randomised, so that many tasks that failed
/// together do not all retry at the same instant.
///
/// The default is [`Jitter::Equal`]: it spreads retries over half the delay
/// while guaranteeing that a retry never comes sooner than `d / 2`, which
/// matters for servers that need a real pause (HubSpot's 423 locks last 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly `d`.
    None,
    /// Uniform in `[0, d]` ("full jitter"): the least contention, but a retry
    /// can come almost immediately.
    Full,
    /// `d / 2` plus uniform in `[0, d / 2]`, i.e. uniform in `[d / 2, d]`.
    #[default]
    Equal,
}

/// Which statuses a connector treats specially, and which headers it reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassifyPolicy {
    /// Extra statuses that are retried (e.g. HubSpot 423, 477).
    pub retryable_statuses: Vec<u16>,
    /// Extra statuses that mean rate-limited besides 429 (e.g. a CRM that
    /// throttles with 403).
    pub rate_limited_statuses: Vec<u16>,
    /// Rate-limit and Retry-After headers.
    pub headers: HeaderPolicy,
}

impl ClassifyPolicy {
    pub(super) fn from_config(retry: &Retry, headers: &RateLimitHeaders) -> Self {
        Self {
            retryable_statuses: retry.retryable_statuses.clone(),
            rate_limited_statuses: retry.rate_limited_statuses.clone(),
            headers: HeaderPolicy {
                retry_after: headers
                    .retry_after
                    .clone()
                    .unwrap_or_else(|| RETRY_AFTER.into()),
                remaining: headers.remaining.clone(),
                reset: headers.reset.clone(),
                reset_unit: headers.reset_unit,
                window_ms: headers.window_ms.clone(),
                max_wait: Duration::from_secs(retry.max_rate_limit_wait_secs),
            },
        }
    }
}

/// The header a wait is read from unless the connector names another.
const RETRY_AFTER: &str = "Retry-After";

/// Header names (case-insensitive, all optional but the first) and how to
/// read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderPolicy {
    /// The Retry-After header (`Retry-After` unless the connector says).
    /// Seconds or HTTP-date.
    pub retry_after: String,
    /// Requests left in the current window, e.g.
    /// `X-HubSpot-RateLimit-Remaining`, `x-sib-ratelimit-remaining`.
    pub remaining: Option<String>,
    /// When the window resets, e.g. `x-sib-ratelimit-reset`,
    /// `X-RateLimit-Reset`; read as `reset_unit` says.
    pub reset: Option<String>,
    /// Unit of the reset header.
    pub reset_unit: ResetUnit,
    /// The window length in milliseconds, e.g.
    /// `X-HubSpot-RateLimit-Interval-Milliseconds`: the wait of a 429 that
    /// carries neither Retry-After nor a reset.
    pub window_ms: Option<String>,
    /// Every header-derived wait is capped at this (Brevo's reset can be
    /// large, HubSpot's 477 Retry-After can be a day).
    pub max_wait: Duration,
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        Self {
            retry_after: RETRY_AFTER.into(),
            remaining: None,
            reset: None,
            reset_unit: ResetUnit::Seconds,
            window_ms: None,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_in_force_read_as_one_line() {
        let window = |name: &str, requests, secs| {
            WindowPlan::new(name, requests, Duration::from_secs(secs), &["*"])
        };
        let limits = LimitsInForce {
            windows: vec![window("burst", 40, 2), window("search", 10, 2)],
            tier: Some("advanced".into()),
            tier_from: Some("PIPEDRIVE_TIER".into()),
            overridden: vec![("search".into(), "PIPEDRIVE_RATE_LIMIT_SEARCH".into())],
        };
        assert_eq!(
            limits.to_string(),
            "tier advanced (PIPEDRIVE_TIER): burst 40 per 2 s, search 10 per 2 s (PIPEDRIVE_RATE_LIMIT_SEARCH)"
        );
        let none = LimitsInForce {
            windows: vec![],
            tier: None,
            tier_from: None,
            overridden: vec![],
        };
        assert_eq!(none.to_string(), "no rate limit");
    }

    fn pacing(window_secs: &[u64]) -> PacingPlan {
        PacingPlan::new(LimitsInForce {
            windows: window_secs
                .iter()
                .map(|secs| WindowPlan::new("w", 10, Duration::from_secs(*secs), &["*"]))
                .collect(),
            tier: None,
            tier_from: None,
            overridden: Vec::new(),
        })
    }

    #[test]
    fn the_margin_is_100_ms_or_2_percent_of_the_shortest_window_and_grows_to_a_quarter_of_it() {
        let ms = Duration::from_millis;
        let ten_seconds_and_a_day = pacing(&[86_400, 10]);
        assert_eq!(ten_seconds_and_a_day.margin, ms(100));
        assert_eq!(ten_seconds_and_a_day.widest_margin, ms(2_500));
        let per_second = pacing(&[1]);
        assert_eq!(per_second.margin, ms(20));
        assert_eq!(per_second.widest_margin, ms(250));
        let unlimited = pacing(&[]);
        assert_eq!(unlimited.margin, ms(100));
        assert_eq!(unlimited.widest_margin, ms(100));
    }
}
