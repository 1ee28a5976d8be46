//! Bounded waits: every pause a request takes (the rate limiter, a 429's
//! Retry-After, a retry's backoff, the in-flight cap) ends by the claimed rows'
//! lease and at once on shutdown.
//!
//! A batch's sends run inside [`within`], which makes its [`WaitBound`] (the
//! lease deadline and the shutdown signal) visible to every request of the
//! batch without threading it through each flow. A send outside any bound (a
//! unit test calling the client directly) waits as before, bounded only by
//! the connector's `max_rate_limit_wait_secs`.
//!
//! Whether to wait or hand the rows back is a pure function ([`plan_wait`]),
//! so that its rules are tested without a clock.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A rate-limit pause is never shorter than this: a CRM that answers 429 with
/// `Retry-After: 0` (or a negative or unreadable value) is not sent the same
/// request again at once, over and over.
pub const MIN_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// A rate-limit pause is never longer than this: an absurd `Retry-After`
/// (years) defers rows by a day, not forever. A CRM's longest documented
/// window (a daily limit) resets within a day.
pub const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// How long requests already on the wire may still finish after a shutdown
/// signal before they are abandoned (their rows handed back). Together with
/// the write-back it keeps a stop well under 10 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What bounds the waits of one claimed batch.
#[derive(Debug, Clone)]
pub struct WaitBound {
    /// No wait may end after this (monotonic time of the run's clock): the
    /// batch's lease, less the time its write-back needs.
    pub deadline: Instant,
    /// Becomes `true` on SIGTERM/SIGINT.
    pub shutdown: watch::Receiver<bool>,
}

tokio::task_local! {
    static BOUND: WaitBound;
}

/// Runs `work` (one batch's sends) with `bound` on every wait inside it.
pub async fn within<F: Future>(bound: WaitBound, work: F) -> F::Output {
    BOUND.scope(bound, work).await
}

/// The bound of the batch being sent, if any.
pub fn current() -> Option<WaitBound> {
    BOUND.try_with(WaitBound::clone).ok()
}

/// Why a wait did not happen, or did not end normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The wait would end after the lease or past `max_rate_limit_wait_secs`:
    /// hand the rows back, to be tried when it ends.
    HandBack,
    /// The run is shutting down.
    ShutDown,
}

/// Whether to wait `wait` now, given what this request has waited already
/// (`waited`), the connector's cap on in-process waits (`max_wait`), and the
/// time left before the lease deadline (`lease_left`, `None` = no lease).
///
/// A wait is taken only when it fits both; otherwise the rows go back to the
/// queue (with no retry spent) and are tried once it is over. Pure: the
/// caller reads the clock.
pub fn plan_wait(
    wait: Duration,
    waited: Duration,
    max_wait: Duration,
    lease_left: Option<Duration>,
) -> Result<(), Stop> {
    if wait.is_zero() {
        return Ok(());
    }
    let within_cap = waited.saturating_add(wait) <= max_wait;
    let within_lease = lease_left.is_none_or(|left| wait <= left);
    if within_cap && within_lease {
        Ok(())
    } else {
        Err(Stop::HandBack)
    }
}

/// The pause a 429 asks for, kept within sane bounds: at least
/// [`MIN_RATE_LIMIT_PAUSE`] (a `Retry-After` of 0 or a reset already past
/// must not make the engine hammer the CRM, nor defer rows to a time already
/// due), at most [`MAX_RATE_LIMIT_PAUSE`].
pub fn clamp_rate_limit_pause(pause: Duration) -> Duration {
    pause.clamp(MIN_RATE_LIMIT_PAUSE, MAX_RATE_LIMIT_PAUSE)
}

/// Time left before the current batch's lease deadline, measured at `now`
/// (`None` outside a batch).
pub fn lease_left(now: Instant) -> Option<Duration> {
    current().map(|bound| bound.deadline.saturating_duration_since(now))
}

/// Whether the run is shutting down.
pub fn shutting_down() -> bool {
    current().is_some_and(|bound| *bound.shutdown.borrow())
}

/// Sleeps `wait`, or less if the run shuts down meanwhile.
pub async fn sleep(wait: Duration) -> Result<(), Stop> {
    race_shutdown(tokio::time::sleep(wait), Duration::ZERO).await
}

/// Runs `work`, but gives up on it `grace` after a shutdown signal (or at
/// once if one came already and `grace` is zero).
pub async fn race_shutdown<F: Future>(work: F, grace: Duration) -> Result<F::Output, Stop> {
    let Some(bound) = current() else {
        return Ok(work.await);
    };
    let mut shutdown = bound.shutdown;
    let stopped = async move {
        // A dropped sender means no signal can come: wait on `work` alone.
        if shutdown.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        biased;
        output = work => Ok(output),
        () = stopped => Err(Stop::ShutDown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_wait_that_fits_the_cap_and_the_lease_is_taken() {
        assert_eq!(
            plan_wait(secs(5), secs(0), secs(120), Some(secs(600))),
            Ok(())
        );
        assert_eq!(
            plan_wait(secs(5), secs(115), secs(120), Some(secs(6))),
            Ok(())
        );
        assert_eq!(plan_wait(secs(5), secs(0), secs(120), None), Ok(()));
        assert_eq!(
            plan_wait(Duration::ZERO, secs(500), secs(1), Some(secs(0))),
            Ok(())
        );
    }

    #[test]
    fn a_wait_past_the_cap_hands_the_rows_back_uncut() {
        // A Retry-After of ~2,780 s against a 120 s cap: hand back, don't loop.
        assert_eq!(
            plan_wait(secs(2_780), secs(0), secs(120), Some(secs(600))),
            Err(Stop::HandBack)
        );
        // Several short waits add up to more than the cap.
        assert_eq!(
            plan_wait(secs(10), secs(115), secs(120), Some(secs(600))),
            Err(Stop::HandBack)
        );
    }

    #[test]
    fn a_wait_past_the_lease_hands_the_rows_back_even_within_the_cap() {
        assert_eq!(
            plan_wait(secs(60), secs(0), secs(3_600), Some(secs(59))),
            Err(Stop::HandBack)
        );
        assert_eq!(
            plan_wait(secs(1), secs(0), secs(3_600), Some(Duration::ZERO)),
            Err(Stop::HandBack)
        );
    }

    #[test]
    fn rate_limit_pauses_are_at_least_a_second_and_at_most_a_day() {
        assert_eq!(clamp_rate_limit_pause(Duration::ZERO), MIN_RATE_LIMIT_PAUSE);
        assert_eq!(
            clamp_rate_limit_pause(Duration::from_millis(10)),
            MIN_RATE_LIMIT_PAUSE
        );
        assert_eq!(clamp_rate_limit_pause(secs(7)), secs(7));
        assert_eq!(
            clamp_rate_limit_pause(secs(u64::MAX / 4)),
            MAX_RATE_LIMIT_PAUSE
        );
    }

    #[tokio::test]
    async fn a_bounded_sleep_ends_at_once_on_shutdown() {
        let (stop, shutdown) = watch::channel(false);
        let bound = WaitBound {
            deadline: Instant::now() + secs(3_600),
            shutdown,
        };
        let sleeping = tokio::spawn(within(bound, sleep(secs(3_600))));
        stop.send(true).unwrap();
        let result = tokio::time::timeout(secs(10), sleeping)
            .await
            .expect("the sleep ends on shutdown")
            .unwrap();
        assert_eq!(result, Err(Stop::ShutDown));
    }

    #[tokio::test]
    async fn outside_a_batch_nothing_bounds_the_wait() {
        assert_eq!(lease_left(Instant::now()), None);
        assert!(!shutting_down());
        assert_eq!(sleep(Duration::from_millis(1)).await, Ok(()));
    }
}
