//! Rate limits: true rolling windows (count the requests admitted in the last
//! span) and HubSpot's daily budget. A rejected request is not counted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::NaiveDate;

use super::SandboxOptions;

/// At most `max` admissions in any rolling `span`.
#[derive(Debug)]
pub(crate) struct Window {
    max: u32,
    span: Duration,
    hits: VecDeque<Instant>,
}

impl Window {
    pub(crate) fn new(max: u32, span: Duration) -> Self {
        Window {
            max,
            span,
            hits: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&first) = self.hits.front() {
            if now.saturating_duration_since(first) < self.span {
                break;
            }
            self.hits.pop_front();
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.prune(now);
        self.hits.len() >= self.max as usize
    }

    fn take(&mut self, now: Instant) {
        self.hits.push_back(now);
    }

    fn remaining(&self) -> u32 {
        self.max.saturating_sub(self.hits.len() as u32)
    }

    /// Time until the oldest counted request leaves the window.
    fn frees_in(&self, now: Instant) -> Duration {
        self.hits.front().map_or(Duration::ZERO, |&first| {
            self.span
                .saturating_sub(now.saturating_duration_since(first))
        })
    }
}

/// HubSpot's daily budget, reset at (UTC) midnight.
#[derive(Debug)]
pub(crate) struct Daily {
    max: u32,
    day: Option<NaiveDate>,
    used: u32,
}

impl Daily {
    fn is_exhausted(&mut self, today: NaiveDate) -> bool {
        if self.day != Some(today) {
            self.day = Some(today);
            self.used = 0;
        }
        self.used >= self.max
    }

    fn remaining(&self) -> u32 {
        self.max.saturating_sub(self.used)
    }
}

/// Which HubSpot policy refused a request (its `policyName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Daily,
    TenSecondlyRolling,
    Secondly,
    /// Brevo's per-second limit.
    BrevoPerSecond,
}

/// The limiter's verdict: headers to send, and the policy that refused, if any.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    pub(crate) headers: HeaderMap,
    pub(crate) denied: Option<Policy>,
}

/// All the sandbox's limiters; `None` means unlimited.
#[derive(Debug)]
pub(crate) struct Limits {
    hubspot: Option<Window>,
    daily: Option<Daily>,
    search: Option<Window>,
    brevo: Option<Window>,
    /// Brevo's budget for "all other endpoints" (`/v3/processes`, ...).
    brevo_other: Option<Window>,
}

impl Limits {
    pub(crate) fn new(opts: &SandboxOptions) -> Self {
        let window = |max: Option<u32>, ms| max.map(|m| Window::new(m, Duration::from_millis(ms)));
        Limits {
            hubspot: window(opts.hubspot_per_10s, 10_000),
            daily: opts.hubspot_daily.map(|max| Daily {
                max,
                day: None,
                used: 0,
            }),
            search: window(opts.hubspot_search_per_s, 1_000),
            brevo: window(opts.brevo_per_s, 1_000),
            brevo_other: window(opts.brevo_other_per_hour, 3_600_000),
        }
    }

    /// Any HubSpot request but search: daily budget, then the 10-second window.
    pub(crate) fn admit_hubspot(&mut self, now: Instant, today: NaiveDate) -> Admission {
        let denied = if self.daily.as_mut().is_some_and(|d| d.is_exhausted(today)) {
            Some(Policy::Daily)
        } else if self.hubspot.as_mut().is_some_and(|w| w.is_full(now)) {
            Some(Policy::TenSecondlyRolling)
        } else {
            self.count_daily();
            if let Some(w) = self.hubspot.as_mut() {
                w.take(now);
            }
            None
        };
        Admission {
            headers: self.hubspot_headers(),
            denied,
        }
    }

    /// HubSpot search: its own per-second window (exempt from the 10-second
    /// one), still drawing on the daily budget; never any headers.
    pub(crate) fn admit_search(&mut self, now: Instant, today: NaiveDate) -> Admission {
        let denied = if self.search.as_mut().is_some_and(|w| w.is_full(now)) {
            Some(Policy::Secondly)
        } else if self.daily.as_mut().is_some_and(|d| d.is_exhausted(today)) {
            Some(Policy::Daily)
        } else {
            self.count_daily();
            if let Some(w) = self.search.as_mut() {
                w.take(now);
            }
            None
        };
        Admission {
            headers: HeaderMap::new(),
            denied,
        }
    }

    /// Brevo: `/v3/contacts*` in one rolling one-second window, every other
    /// endpoint (`/v3/processes`) in one rolling hour.
    pub(crate) fn admit_brevo(&mut self, now: Instant, contacts: bool) -> Admission {
        let mut admission = Admission::default();
        let window = if contacts {
            self.brevo.as_mut()
        } else {
            self.brevo_other.as_mut()
        };
        let Some(window) = window else {
            return admission;
        };
        if window.is_full(now) {
            admission.denied = Some(Policy::BrevoPerSecond);
        } else {
            window.take(now);
        }
        let reset = window.frees_in(now).as_millis().div_ceil(1000);
        let headers = &mut admission.headers;
        put(headers, "x-sib-ratelimit-limit", window.max);
        put(headers, "x-sib-ratelimit-remaining", window.remaining());
        put(headers, "x-sib-ratelimit-reset", reset);
        admission
    }

    fn count_daily(&mut self) {
        if let Some(daily) = self.daily.as_mut() {
            daily.used += 1;
        }
    }

    fn hubspot_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(window) = &self.hubspot {
            put(&mut headers, "x-hubspot-ratelimit-max", window.max);
            put(
                &mut headers,
                "x-hubspot-ratelimit-remaining",
                window.remaining(),
            );
            put(
                &mut headers,
                "x-hubspot-ratelimit-interval-milliseconds",
                10_000,
            );
        }
        if let Some(daily) = &self.daily {
            put(&mut headers, "x-hubspot-ratelimit-daily", daily.max);
            put(
                &mut headers,
                "x-hubspot-ratelimit-daily-remaining",
                daily.remaining(),
            );
        }
        headers
    }
}

fn put(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_frees_a_slot_once_its_oldest_request_is_older_than_the_span() {
        let start = Instant::now();
        let mut window = Window::new(2, Duration::from_secs(10));
        for at in [0, 4] {
            assert!(!window.is_full(start + Duration::from_secs(at)));
            window.take(start + Duration::from_secs(at));
        }
        assert!(window.is_full(start + Duration::from_millis(9_999)));
        assert_eq!(
            window.frees_in(start + Duration::from_secs(9)),
            Duration::from_secs(1)
        );
        assert!(!window.is_full(start + Duration::from_secs(10)));
        assert_eq!(window.remaining(), 1);
    }
}
