//! Retry timing, as pure functions.
//!
//! Two levels of retry use this module:
//! - [`Backoff`] (the plan's): in-process retries of one HTTP request
//!   (seconds), with jitter drawn from a caller-supplied RNG so tests can
//!   seed it.
//! - [`next_row_retry`]: durable, row-level retries stored in the database
//!   (minutes to hours), deterministic, computed from the row's `retry_count`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngExt;

use crate::plan::{Backoff, Jitter};

// The plan resolves a connector's backoff; the delays it gives are the send
// stage's, with the rest of the retry timing.
impl Backoff {
    /// Delay before retry number `attempt` (1 = first retry), jittered with
    /// `rng`. Always within `[0, delay_without_jitter(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl rand::Rng) -> Duration {
        let d = self.delay_without_jitter(attempt);
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => uniform_up_to(d, rng),
            Jitter::Equal => {
                let half = d / 2;
                half + uniform_up_to(d.saturating_sub(half), rng)
            }
        }
    }

    /// Delay before retry number `attempt` without jitter:
    /// `base * 2^(attempt-1)` when exponential, else `base`; capped at `max`.
    /// `attempt` 0 is treated as 1. Never overflows: any product that does
    /// not fit is `max`.
    pub fn delay_without_jitter(&self, attempt: u32) -> Duration {
        let d = if self.exponential {
            2u32.checked_pow(attempt.saturating_sub(1))
                .and_then(|factor| self.base.checked_mul(factor))
                .unwrap_or(self.max)
        } else {
            self.base
        };
        d.min(self.max)
    }
}

/// A duration uniform in `[0, d]`, at nanosecond resolution. (`d` beyond
/// `u64::MAX` nanoseconds, about 584 years, is treated as that.)
fn uniform_up_to(d: Duration, rng: &mut impl rand::Rng) -> Duration {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

/// What to do with a row whose send just failed with a retryable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Store `retry_count` and try the row again at `at`.
    RetryAt { retry_count: i64, at: DateTime<Utc> },
    /// Retries are used up: store `retry_count` and mark the row failed.
    GiveUp { retry_count: i64 },
}

/// Row-level delays never grow past this by doubling (a configured `delay`
/// longer than this is still used as is).
pub const MAX_ROW_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Decides the row's next step after a retryable failure.
///
/// `retry_count` counts the row's failed attempts. `retry_count_before` is its
/// value *before* this failure, and both variants return the new value,
/// `retry_count_before + 1`, to store. `max_retries` is the number of retries
/// *after* the first attempt, so a row is sent at most `max_retries + 1`
/// times. The delay before retry `n` (n = new retry_count) is
/// `delay * 2^(n-1)` when `exponential`, else `delay`; doubling stops at
/// [`MAX_ROW_RETRY_DELAY`] (or at `delay`, if that is longer).
///
/// With the seed's settings (max_retries 3, retry_delay_secs 300,
/// retry_exponential true):
///
/// | retry_count before | attempt that failed | decision                          |
/// |--------------------|---------------------|-----------------------------------|
/// | 0                  | 1 (first send)      | `RetryAt { 1, now + 300 s }`      |
/// | 1                  | 2 (retry 1)         | `RetryAt { 2, now + 600 s }`      |
/// | 2                  | 3 (retry 2)         | `RetryAt { 3, now + 1200 s }`     |
/// | 3                  | 4 (retry 3)         | `GiveUp { 4 }`                    |
///
/// `max_retries` 0 gives up on the first failure (`GiveUp { 1 }`). A negative
/// `retry_count_before` (a corrupt row) is treated as 0.
pub fn next_row_retry(
    retry_count_before: i64,
    max_retries: u32,
    delay: Duration,
    exponential: bool,
    now: DateTime<Utc>,
) -> RetryDecision {
    let before = retry_count_before.max(0);
    let retry_count = before.saturating_add(1);
    if before >= i64::from(max_retries) {
        return RetryDecision::GiveUp { retry_count };
    }
    let backoff = Backoff {
        base: delay,
        max: delay.max(MAX_ROW_RETRY_DELAY),
        exponential,
        jitter: Jitter::None,
    };
    // `before < max_retries <= u32::MAX`, so this conversion cannot fail.
    let attempt = u32::try_from(retry_count).unwrap_or(u32::MAX);
    let wait = backoff.delay_without_jitter(attempt);
    let at = chrono::Duration::from_std(wait)
        .ok()
        .and_then(|wait| now.checked_add_signed(wait))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    RetryDecision::RetryAt { retry_count, at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn backoff(base: Duration, max: Duration, exponential: bool, jitter: Jitter) -> Backoff {
        Backoff {
            base,
            max,
            exponential,
            jitter,
        }
    }

    #[test]
    fn exponential_delays_double_from_base_until_the_cap() {
        let b = backoff(ms(200), secs(5), true, Jitter::None);
        let table = [
            (0, ms(200)),
            (1, ms(200)),
            (2, ms(400)),
            (3, ms(800)),
            (4, ms(1600)),
            (5, ms(3200)),
            (6, secs(5)),
            (7, secs(5)),
            (40, secs(5)),
        ];
        for (attempt, expected) in table {
            assert_eq!(
                b.delay_without_jitter(attempt),
                expected,
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn constant_delays_stay_at_base_and_are_still_capped() {
        let b = backoff(secs(2), secs(60), false, Jitter::None);
        for attempt in [1, 2, 10, 1000] {
            assert_eq!(b.delay_without_jitter(attempt), secs(2));
        }
        let capped = backoff(secs(90), secs(60), false, Jitter::None);
        assert_eq!(capped.delay_without_jitter(1), secs(60));
    }

    #[test]
    fn huge_attempts_do_not_overflow_and_give_the_cap() {
        let b = backoff(secs(1), secs(3600), true, Jitter::None);
        for attempt in [31, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(
                b.delay_without_jitter(attempt),
                secs(3600),
                "attempt {attempt}"
            );
        }
        let unbounded = backoff(secs(1), Duration::MAX, true, Jitter::Full);
        assert_eq!(unbounded.delay_without_jitter(1000), Duration::MAX);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(unbounded.delay(1000, &mut rng) <= Duration::MAX);
        let big_base = backoff(Duration::MAX, Duration::MAX, true, Jitter::None);
        assert_eq!(big_base.delay_without_jitter(2), Duration::MAX);
    }

    #[test]
    fn no_jitter_returns_the_exact_delay() {
        let b = backoff(ms(100), secs(10), true, Jitter::None);
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(b.delay(3, &mut rng), ms(400));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_delay_and_spreads_over_it() {
        let b = backoff(secs(1), secs(30), true, Jitter::Full);
        let mut rng = StdRng::seed_from_u64(42);
        let d = secs(4);
        let draws: Vec<Duration> = (0..10_000).map(|_| b.delay(3, &mut rng)).collect();
        assert!(draws.iter().all(|x| *x <= d));
        assert!(draws.iter().min().unwrap() < &(d / 20));
        assert!(draws.iter().max().unwrap() > &(d * 19 / 20));
    }

    #[test]
    fn equal_jitter_stays_within_half_the_delay_and_the_delay() {
        let b = backoff(secs(1), secs(30), true, Jitter::Equal);
        let mut rng = StdRng::seed_from_u64(42);
        let d = secs(4);
        let draws: Vec<Duration> = (0..10_000).map(|_| b.delay(3, &mut rng)).collect();
        assert!(draws.iter().all(|x| *x >= d / 2 && *x <= d));
        assert!(draws.iter().min().unwrap() < &(d * 11 / 20));
        assert!(draws.iter().max().unwrap() > &(d * 19 / 20));
    }

    #[test]
    fn jitter_never_exceeds_the_cap() {
        let mut rng = StdRng::seed_from_u64(3);
        for jitter in [Jitter::None, Jitter::Full, Jitter::Equal] {
            let b = backoff(secs(1), secs(10), true, jitter);
            for attempt in 1..50 {
                assert!(b.delay(attempt, &mut rng) <= secs(10));
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let b = backoff(ms(250), secs(30), true, Jitter::Full);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..10).map(|a| b.delay(a, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    fn now() -> DateTime<Utc> {
        crate::clock::ManualClock::default_start_utc()
    }

    fn retry_at(retry_count: i64, after: u64) -> RetryDecision {
        RetryDecision::RetryAt {
            retry_count,
            at: now() + chrono::Duration::seconds(after as i64),
        }
    }

    #[test]
    fn the_seeds_settings_retry_three_times_then_give_up() {
        let table = [
            (0, retry_at(1, 300)),
            (1, retry_at(2, 600)),
            (2, retry_at(3, 1200)),
            (3, RetryDecision::GiveUp { retry_count: 4 }),
            (4, RetryDecision::GiveUp { retry_count: 5 }),
        ];
        for (before, expected) in table {
            assert_eq!(
                next_row_retry(before, 3, secs(300), true, now()),
                expected,
                "retry_count before = {before}"
            );
        }
    }

    #[test]
    fn non_exponential_row_retries_use_the_same_delay_each_time() {
        let table = [
            (0, retry_at(1, 300)),
            (1, retry_at(2, 300)),
            (2, retry_at(3, 300)),
            (3, RetryDecision::GiveUp { retry_count: 4 }),
        ];
        for (before, expected) in table {
            assert_eq!(next_row_retry(before, 3, secs(300), false, now()), expected);
        }
    }

    #[test]
    fn zero_max_retries_gives_up_on_the_first_failure() {
        assert_eq!(
            next_row_retry(0, 0, secs(300), true, now()),
            RetryDecision::GiveUp { retry_count: 1 }
        );
    }

    #[test]
    fn a_negative_retry_count_is_treated_as_zero() {
        assert_eq!(
            next_row_retry(-5, 3, secs(300), true, now()),
            retry_at(1, 300)
        );
    }

    #[test]
    fn row_delays_stop_doubling_at_seven_days_and_never_overflow() {
        let week = MAX_ROW_RETRY_DELAY.as_secs();
        assert_eq!(
            next_row_retry(20, 1000, secs(300), true, now()),
            retry_at(21, week)
        );
        assert_eq!(
            next_row_retry(999, 1000, secs(300), true, now()),
            retry_at(1000, week)
        );
        assert_eq!(
            next_row_retry(i64::MAX, u32::MAX, secs(300), true, now()),
            RetryDecision::GiveUp {
                retry_count: i64::MAX
            }
        );
        // A configured delay longer than the cap is kept as is.
        let month = 30 * 24 * 3600;
        assert_eq!(
            next_row_retry(0, 3, secs(month), true, now()),
            retry_at(1, month)
        );
        assert_eq!(
            next_row_retry(0, 3, Duration::MAX, false, now()),
            RetryDecision::RetryAt {
                retry_count: 1,
                at: DateTime::<Utc>::MAX_UTC
            }
        );
    }
}
