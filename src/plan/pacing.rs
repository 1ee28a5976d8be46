//! The send stage's policy as the plan holds it: rate-limit windows, in-cycle
//! retries and the rate-limit headers, with durations as `Duration` and
//! defaults resolved, so the runtime uses them as they are and never reads a
//! config type.

use std::time::Duration;

use super::ResetUnit;
use crate::config::connector::{RateLimit, RateLimitHeaders, Retry};

/// One rate-limit window: at most `requests` per `per` for the endpoint
/// classes it names (`*` for all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    pub name: String,
    pub requests: u32,
    pub per: Duration,
    pub classes: Vec<String>,
}

impl WindowPlan {
    pub(super) fn from_config(limit: &RateLimit) -> Self {
        Self {
            name: limit.name.clone(),
            requests: limit.requests,
            per: Duration::from_secs(limit.per_secs),
            classes: limit.endpoint_classes.clone(),
        }
    }
}

/// How one request is retried within a cycle, and which statuses mean what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPlan {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// The cap on any one delay.
    pub max_delay: Duration,
    /// Whether delays double with each attempt.
    pub exponential: bool,
    /// Whether delays are jittered (full jitter).
    pub jitter: bool,
    pub retryable_statuses: Vec<u16>,
    pub rate_limited_statuses: Vec<u16>,
    /// The longest header-derived wait taken within a cycle.
    pub max_rate_limit_wait: Duration,
}

impl RetryPlan {
    pub(super) fn from_config(retry: &Retry) -> Self {
        Self {
            max_attempts: retry.max_attempts,
            base_delay: Duration::from_millis(retry.base_delay_ms),
            max_delay: Duration::from_millis(retry.max_delay_ms),
            exponential: retry.exponential,
            jitter: retry.jitter,
            retryable_statuses: retry.retryable_statuses.clone(),
            rate_limited_statuses: retry.rate_limited_statuses.clone(),
            max_rate_limit_wait: Duration::from_secs(retry.max_rate_limit_wait_secs),
        }
    }
}

/// The CRM's rate-limit headers (names case-insensitive) and how to read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateHeadersPlan {
    /// The Retry-After header's name (`Retry-After` unless the connector says).
    pub retry_after: String,
    /// The header giving the requests left in the current window.
    pub remaining: Option<String>,
    /// The header giving when the window resets, read as `reset_unit` says.
    pub reset: Option<String>,
    pub reset_unit: ResetUnit,
    /// The header giving the window's length in milliseconds.
    pub window_ms: Option<String>,
}

impl RateHeadersPlan {
    pub(super) fn from_config(headers: &RateLimitHeaders) -> Self {
        Self {
            retry_after: headers
                .retry_after
                .clone()
                .unwrap_or_else(|| "Retry-After".into()),
            remaining: headers.remaining.clone(),
            reset: headers.reset.clone(),
            reset_unit: headers.reset_unit,
            window_ms: headers.window_ms.clone(),
        }
    }
}
