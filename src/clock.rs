//! Time sources.
//!
//! Every piece of policy that depends on time (the rate limiter, row retry
//! scheduling, header parsing) reads it through a [`Clock`], so that tests can
//! drive time by hand with a [`ManualClock`] instead of sleeping.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};

/// A source of monotonic time (for pacing) and wall-clock time (for
/// timestamps stored in the database and for HTTP dates).
pub trait Clock: Send + Sync + Debug {
    /// Monotonic time; never goes backwards.
    fn now(&self) -> Instant;
    /// Wall-clock time in UTC.
    fn utc(&self) -> DateTime<Utc>;
}

/// The real clock: [`Instant::now`] and [`Utc::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn utc(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to, for tests.
///
/// It starts at a fixed `Instant` (taken once, at construction) and a fixed UTC
/// time, and both move forward together by [`ManualClock::advance`]. Clones
/// share the same state, so a test can keep one handle and give another (as
/// `Arc<dyn Clock>`) to the code under test.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

#[derive(Debug)]
struct ManualState {
    start: Instant,
    start_utc: DateTime<Utc>,
    elapsed: Duration,
}

impl ManualClock {
    /// The UTC time a [`ManualClock::default`] starts at: 2025-01-01T00:00:00Z.
    pub fn default_start_utc() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .expect("a valid fixed date")
    }

    /// A clock whose wall-clock time starts at `start_utc`.
    pub fn new(start_utc: DateTime<Utc>) -> Self {
        Self {
            state: Arc::new(Mutex::new(ManualState {
                start: Instant::now(),
                start_utc,
                elapsed: Duration::ZERO,
            })),
        }
    }

    /// Moves both the monotonic and the wall-clock time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.lock();
        state.elapsed = state.elapsed.saturating_add(by);
    }

    /// How far the clock has been advanced since it was made.
    pub fn elapsed(&self) -> Duration {
        self.lock().elapsed
    }

    fn lock(&self) -> MutexGuard<'_, ManualState> {
        // The state is two constants and a counter: a panic elsewhere cannot
        // leave it half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(Self::default_start_utc())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let state = self.lock();
        state.start + state.elapsed
    }

    fn utc(&self) -> DateTime<Utc> {
        let state = self.lock();
        let elapsed = chrono::Duration::from_std(state.elapsed).unwrap_or(chrono::Duration::MAX);
        state
            .start_utc
            .checked_add_signed(elapsed)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_does_not_move_by_itself() {
        let clock = ManualClock::default();
        let (a, u) = (clock.now(), clock.utc());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), a);
        assert_eq!(clock.utc(), u);
        assert_eq!(u, ManualClock::default_start_utc());
    }

    #[test]
    fn advance_moves_monotonic_and_wall_clock_time_together() {
        let clock = ManualClock::default();
        let (a, u) = (clock.now(), clock.utc());
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - a, Duration::from_millis(1500));
        assert_eq!(clock.utc() - u, chrono::Duration::milliseconds(1500));
        assert_eq!(clock.elapsed(), Duration::from_millis(1500));
    }

    #[test]
    fn clones_share_the_same_time() {
        let clock = ManualClock::default();
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let before = shared.now();
        clock.advance(Duration::from_secs(3));
        assert_eq!(shared.now() - before, Duration::from_secs(3));
    }

    #[test]
    fn system_clock_moves_forward() {
        let clock = SystemClock;
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(clock.now() > a);
        assert!((Utc::now() - clock.utc()).num_seconds().abs() < 5);
    }
}
