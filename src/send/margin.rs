//! How far apart on our side requests must leave so that they still arrive a
//! window apart on the CRM's: the rate limiter's margin, from the latency the
//! CRM shows.
//!
//! The CRM counts a request when it arrives, somewhere between when it left
//! and when its answer came back. Two requests that leave exactly a window
//! apart can land in one of the CRM's windows when the first took longer on
//! the way than the second: by as much as the spread of the latencies. A
//! fixed margin of a few tens of milliseconds was drawn 32 times in 1,032
//! requests to a CRM with 0–200 ms of jitter; a margin as wide as the spread
//! of recent latencies draws none, and costs nothing when latency is steady.

use std::collections::VecDeque;
use std::time::Duration;

/// Latencies remembered: enough to see the spread, short enough to follow a
/// CRM whose latency settles down again.
const SAMPLES: usize = 64;

/// The margin only changes by at least this much (a lock and a write on the
/// limiter per request would buy nothing).
const STEP: Duration = Duration::from_millis(5);

/// The arrival margin, from the spread of recent latencies. Pure: fed
/// latencies, returns margins.
#[derive(Debug, Clone)]
pub struct ArrivalMargin {
    /// The margin with no spread at all.
    base: Duration,
    /// Never wider than this (a quarter of the shortest window: at worst 80 %
    /// of its rate).
    cap: Duration,
    latencies: VecDeque<Duration>,
    current: Duration,
}

impl ArrivalMargin {
    /// A margin of at least `base` and at most `cap`, starting at `base`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.min(cap);
        Self {
            base,
            cap,
            latencies: VecDeque::with_capacity(SAMPLES),
            current: base,
        }
    }

    /// The margin now.
    pub fn margin(&self) -> Duration {
        self.current
    }

    /// Feeds the latency of one answered request (sent to answered). Returns
    /// the new margin when it moved by at least [`STEP`].
    pub fn observe(&mut self, latency: Duration) -> Option<Duration> {
        if self.latencies.len() == SAMPLES {
            self.latencies.pop_front();
        }
        self.latencies.push_back(latency);
        let (min, max) = self
            .latencies
            .iter()
            .fold((Duration::MAX, Duration::ZERO), |(lo, hi), l| {
                (lo.min(*l), hi.max(*l))
            });
        let wanted = max.saturating_sub(min).max(self.base).min(self.cap);
        let moved = wanted.abs_diff(self.current) >= STEP;
        moved.then(|| {
            self.current = wanted;
            wanted
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::plan::WindowPlan;
    use crate::send::ratelimit::RateLimiter;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steady_latency_keeps_the_base_margin() {
        let mut margin = ArrivalMargin::new(ms(20), ms(250));
        for _ in 0..200 {
            assert_eq!(margin.observe(ms(120)), None);
        }
        assert_eq!(margin.margin(), ms(20));
    }

    #[test]
    fn the_margin_follows_the_spread_of_latencies_up_to_its_cap_and_back() {
        let mut margin = ArrivalMargin::new(ms(20), ms(250));
        margin.observe(ms(10));
        assert_eq!(margin.observe(ms(190)), Some(ms(180)));
        assert_eq!(margin.observe(ms(900)), Some(ms(250)), "capped");
        // Latency settles: once the slow answers are forgotten, back to the base.
        for _ in 0..SAMPLES {
            margin.observe(ms(50));
        }
        assert_eq!(margin.margin(), ms(20));
    }

    /// Sends 1,000 requests through a 10-per-second limiter as fast as it
    /// admits them, each arriving after a random 0–200 ms on the way, and
    /// returns the most arrivals seen in any one-second window of the CRM's.
    fn most_arrivals_in_a_second(adaptive: bool) -> usize {
        let clock = ManualClock::default();
        let window = WindowPlan::new("per_second", 10, Duration::from_secs(1), &["*"]);
        let limiter = RateLimiter::new(vec![window], Arc::new(clock.clone()), ms(20));
        let mut margin = ArrivalMargin::new(ms(20), ms(250));
        let mut rng = StdRng::seed_from_u64(7);
        let start = clock.now();
        let mut arrivals: Vec<Instant> = Vec::new();
        while arrivals.len() < 1_000 {
            match limiter.try_acquire("c") {
                Ok(()) => {
                    let latency = ms(rng.random_range(0..=200));
                    arrivals.push(clock.now() + latency);
                    if let (true, Some(m)) = (adaptive, margin.observe(latency)) {
                        limiter.set_margin(m);
                    }
                }
                Err(wait) => clock.advance(wait),
            }
        }
        arrivals.sort();
        let mut most = 0;
        for (i, at) in arrivals.iter().enumerate() {
            let within = arrivals[i..]
                .iter()
                .take_while(|t| **t < *at + Duration::from_secs(1))
                .count();
            most = most.max(within);
        }
        assert!(clock.now() > start);
        most
    }

    #[test]
    fn latency_jitter_alone_puts_no_more_requests_in_a_crm_window_than_it_allows() {
        assert!(
            most_arrivals_in_a_second(false) > 10,
            "a fixed 20 ms margin lets jitter crowd a window (the test can fail)"
        );
        assert_eq!(most_arrivals_in_a_second(true), 10);
    }
}
