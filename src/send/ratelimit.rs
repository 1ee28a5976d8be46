//! A client-side rate limiter that never exceeds any configured window.
//!
//! # Why a sliding log and not `governor`
//! GCRA with a burst of N per T lets N requests through at once and then N
//! more as cells replenish over T, so up to ~2N requests can land in one
//! rolling window of length T. HubSpot counts a *rolling* 10-second window,
//! so this limiter keeps a log of send times and admits a request only if the
//! window ending now holds fewer than N.
//!
//! # The guarantee
//! For every window `(requests = N, per)`, in any half-open interval of length
//! `per + margin` at most N requests are admitted. The margin covers arrival
//! jitter: the server counts a request when it *arrives*, so two requests sent
//! exactly `per` apart could still land in one server window.
//!
//! Windows with `requests` up to [`EXACT_LOG_MAX_REQUESTS`] keep one entry per
//! request (at most N). Larger windows (a daily 250,000) group requests into
//! buckets [`BUCKETS_PER_WINDOW`]-th of the window wide, and a bucket's whole
//! count expires with its *last* request, so the count is never too low and
//! memory stays at about 62 buckets; the price is that a slot can come back up
//! to one bucket width (1/60 of the window) late.
//!
//! # Classes
//! Each window applies to a list of endpoint classes (`"*"` = all). A request
//! of class `c` takes one slot in every window that applies to `c`, all or
//! none, under one lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::plan::WindowPlan;

/// Windows with more requests than this use bucketed counting.
pub const EXACT_LOG_MAX_REQUESTS: u32 = 10_000;
/// Number of buckets a large window is divided into.
pub const BUCKETS_PER_WINDOW: u32 = 60;
/// At most this many server-reported usage entries are kept per window; past
/// it, new ones are merged (conservatively) into existing ones.
const MAX_FILLERS: usize = 128;
/// Exact logs remember our send times this long after they leave the
/// window, so a response that arrives late is still compared with what we had
/// sent when the server counted it (see [`RateLimiter::observe_sent`]).
const HISTORY: Duration = Duration::from_secs(60);
/// At most this many send times are remembered per window (older ones are
/// forgotten first, which only makes [`RateLimiter::observe_sent`] more
/// cautious).
const HISTORY_MAX: usize = 2 * EXACT_LOG_MAX_REQUESTS as usize;
/// Waits and pauses longer than this are cut to it (keeps `Instant`
/// arithmetic from overflowing on absurd inputs).
const MAX_HORIZON: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A rolling-window rate limiter shared (as `Arc`) by all tasks of one
/// connector. See the [module docs](self) for the guarantee.
#[derive(Debug)]
pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    windows: Vec<WindowState>,
    /// Class-level pauses after a 429.
    paused: HashMap<String, Instant>,
}

impl RateLimiter {
    /// A limiter enforcing every window in `windows`, each request counted for
    /// `per + margin` after it was sent (margin ~ 50–100 ms).
    ///
    /// Windows are not validated here (that is the config's job): a window of
    /// 0 requests admits nothing, and one with `per + margin` zero admits
    /// everything.
    pub fn new(windows: Vec<WindowPlan>, clock: Arc<dyn Clock>, margin: Duration) -> Self {
        let windows = windows
            .into_iter()
            .map(|w| WindowState::new(w, margin))
            .collect();
        Self {
            clock,
            state: Mutex::new(State {
                windows,
                paused: HashMap::new(),
            }),
        }
    }

    /// How long until a request of `class` may be sent (`Duration::ZERO` =
    /// now). Reserves nothing. Waiting exactly this long and calling
    /// [`try_acquire`](Self::try_acquire) succeeds, unless other requests
    /// took the slot meanwhile.
    pub fn wait_time(&self, class: &str) -> Duration {
        let now = self.clock.now();
        self.lock().wait(class, now)
    }

    /// Takes a slot in every window that applies to `class`, or in none:
    /// `Err(wait)` if any of them is full (or blocked, or the class paused),
    /// with the time until all of them have room.
    pub fn try_acquire(&self, class: &str) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut state = self.lock();
        let wait = state.wait(class, now);
        if !wait.is_zero() {
            return Err(wait);
        }
        for window in state.applying(class) {
            window.record(now);
        }
        Ok(())
    }

    /// Waits (on the tokio timer) until a slot is free in every window of
    /// `class`, and takes it. Not FIFO: tasks that wake together race for the
    /// slots, and the losers sleep again.
    pub async fn acquire(&self, class: &str) {
        loop {
            match self.try_acquire(class) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Brings our count in line with the server's: a response to a request of
    /// `class` said `remaining` requests are left in a window that resets in
    /// `reset`. The same as [`observe_sent`](Self::observe_sent) for a
    /// request sent just now.
    pub fn observe(&self, class: &str, remaining: Option<u32>, reset: Option<Duration>) {
        self.observe_sent(class, remaining, reset, self.clock.now());
    }

    /// Brings our count in line with the server's: the response to a request
    /// of `class` sent at `sent_at` said `remaining` requests were left in a
    /// window that resets in `reset`.
    ///
    /// The server counted when that request arrived, so its count is compared
    /// with ours *at `sent_at`*: our requests sent in the `per` before it (kept
    /// for a while after they leave the window for this), plus usage learned
    /// earlier. Only the excess, requests the server counted that we cannot
    /// account for (other clients sharing the token), is learned:
    ///
    /// - `remaining` unknown, or no excess: nothing to learn; ignored. In
    ///   particular a `remaining` of 0 that our own requests explain adds
    ///   nothing: our log already waits for them to leave the window.
    /// - `remaining == 0` and `reset` known: the window is blocked until now +
    ///   `reset`.
    /// - otherwise the excess is taken as used until now + `reset`, or for the
    ///   window's length if `reset` is unknown. With `remaining == 0` and no
    ///   reset, that makes the window wait until its oldest entry expires (the
    ///   full window if it has none).
    ///
    /// Comparing at `sent_at` rather than at the response matters: requests
    /// we sent while this one was in flight are not in `remaining`, and ours
    /// that left our window meanwhile may still have been in the server's;
    /// taking either difference as others' usage held slots for a whole
    /// window, over and over, and cut a steady sender to about 60 % of the
    /// limit (HubSpot 100/10 s, Brevo 10/s).
    ///
    /// Which window the header describes: with a known `reset`, the class's
    /// shortest window(s) at least `reset` long (a window never resets later
    /// than its length), else its longest; Brevo's per-second count is then
    /// not read as "the hour is nearly used up". Without a reset, the class's
    /// *shortest* window(s): headers without a reset (HubSpot's
    /// `X-HubSpot-RateLimit-Remaining`) describe the short interval window,
    /// and filling a daily window for a whole day on that evidence would
    /// stall the connector.
    ///
    /// Never loosens: a server count more generous than ours is ignored.
    /// Requests in flight when the response was produced are not in
    /// `remaining`, so with other clients on the token the server can still
    /// see more before the reset; a 429 then leads to [`pause`](Self::pause).
    pub fn observe_sent(
        &self,
        class: &str,
        remaining: Option<u32>,
        reset: Option<Duration>,
        sent_at: Instant,
    ) {
        let Some(remaining) = remaining else {
            return;
        };
        let now = self.clock.now();
        let sent_at = sent_at.min(now);
        let mut state = self.lock();
        let mut windows = state.applying(class);
        let described = match reset {
            None => windows.iter().map(|w| w.spec.per).min(),
            Some(reset) => windows
                .iter()
                .map(|w| w.spec.per)
                .filter(|per| *per >= reset)
                .min()
                .or_else(|| windows.iter().map(|w| w.spec.per).max()),
        };
        windows.retain(|w| Some(w.spec.per) == described);
        for window in windows {
            window.prune(now);
            let server_used = u64::from(window.spec.requests.saturating_sub(remaining));
            let unknown = server_used.saturating_sub(window.known_at(sent_at));
            if unknown == 0 {
                continue;
            }
            match reset {
                Some(reset) if remaining == 0 => window.block_until(later(now, reset)),
                _ => window.fill(unknown, later(now, reset.unwrap_or(window.span))),
            }
        }
    }

    /// Counts every request sent from now on for `per + margin` (requests
    /// already counted keep their expiry). The client widens the margin when
    /// the CRM's latency varies: a request can arrive up to that variation
    /// later than the one before it, and two requests that left a window apart
    /// must not land in one window of the CRM's.
    ///
    /// A wider margin also holds the requests already counted for longer: the
    /// spread it comes from was measured on them, so they may arrive that late
    /// too. (The first burst of a run goes out with the base margin; its
    /// answers then show how far apart it arrived, and without this the next
    /// burst left as the first one's base expiry ran out: 4 × 429 in 300
    /// requests at HubSpot's 100 per 10 s.) A narrower one leaves them as they
    /// are, erring on the safe side.
    pub fn set_margin(&self, margin: Duration) {
        let mut state = self.lock();
        for window in &mut state.windows {
            let span = window.spec.per.saturating_add(margin);
            if let Some(grown) = span.checked_sub(window.span).filter(|d| !d.is_zero()) {
                // Every expiry moves by the same amount: the log stays sorted.
                for bucket in &mut window.sent {
                    bucket.expires = later(bucket.expires, grown);
                }
            }
            window.span = span;
        }
    }

    /// A 429 arrived anyway: no request of `class` is admitted for `pause`
    /// (from Retry-After or the reset header, or the window length if
    /// unknown). Only this class is paused; a pause never shortens an
    /// existing one.
    pub fn pause(&self, class: &str, pause: Duration) {
        let until = later(self.clock.now(), pause);
        let mut state = self.lock();
        let entry = state.paused.entry(class.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic,
        // so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn applying(&mut self, class: &str) -> Vec<&mut WindowState> {
        self.windows
            .iter_mut()
            .filter(|w| w.spec.applies_to(class))
            .collect()
    }

    fn wait(&mut self, class: &str, now: Instant) -> Duration {
        let mut wait = Duration::ZERO;
        if let Some(&until) = self.paused.get(class) {
            if until > now {
                wait = until - now;
            } else {
                self.paused.remove(class);
            }
        }
        for window in self.applying(class) {
            window.prune(now);
            wait = wait.max(window.wait(now));
        }
        wait
    }
}

/// `now + d`, with `d` cut to [`MAX_HORIZON`].
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(MAX_HORIZON)).unwrap_or(now)
}

/// Requests sent in `[first, first + width)`, all counted until `expires`
/// (the last one's send time + span).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    first: Instant,
    expires: Instant,
    count: u32,
}

/// Requests the server counted that we did not send, held until `expires`.
#[derive(Debug, Clone, Copy)]
struct Filler {
    expires: Instant,
    count: u64,
}

#[derive(Debug)]
struct WindowState {
    spec: WindowPlan,
    /// How long a request is counted: `per + margin`.
    span: Duration,
    /// Bucket width; zero for an exact log (one bucket per request).
    width: Duration,
    /// Our requests, oldest first; `expires` is ascending.
    sent: VecDeque<Bucket>,
    sent_count: u64,
    /// Exact logs only: our send times over the last `per` + [`HISTORY`],
    /// ascending.
    history: VecDeque<Instant>,
    /// Usage learned from the server; unordered, at most [`MAX_FILLERS`].
    fillers: Vec<Filler>,
    filler_count: u64,
    blocked_until: Option<Instant>,
}

impl WindowState {
    fn new(spec: WindowPlan, margin: Duration) -> Self {
        let span = spec.per.saturating_add(margin);
        let width = if spec.requests > EXACT_LOG_MAX_REQUESTS {
            span / BUCKETS_PER_WINDOW
        } else {
            Duration::ZERO
        };
        Self {
            spec,
            span,
            width,
            sent: VecDeque::new(),
            sent_count: 0,
            history: VecDeque::new(),
            fillers: Vec::new(),
            filler_count: 0,
            blocked_until: None,
        }
    }

    fn used(&self) -> u64 {
        self.sent_count + self.filler_count
    }

    /// What we know the server counted at `at` (up to now): our requests sent
    /// in the `per` up to `at`, plus usage learned from it that is still held.
    /// The margin widens that on both sides, as arrival jitter does at the
    /// server: requests sent up to a margin after `at` may have arrived first,
    /// and requests sent up to a margin more than `per` before it may have
    /// arrived late enough to be in the server's window still. Leaving the
    /// latter out read a whole burst's late arrivals as others' usage and held
    /// their slots for another window (HubSpot: a third window left short).
    /// Bucketed logs keep no send times: they count every request still in
    /// the log except the buckets begun after `at`.
    fn known_at(&self, at: Instant) -> u64 {
        let ours = if self.width.is_zero() {
            let until = at + self.span.saturating_sub(self.spec.per);
            let after = self.history.partition_point(|t| *t <= until);
            let before = at
                .checked_sub(self.span)
                .map_or(0, |from| self.history.partition_point(|t| *t <= from));
            (after - before.min(after)) as u64
        } else {
            let later: u64 = self
                .sent
                .iter()
                .filter(|b| b.first > at)
                .map(|b| u64::from(b.count))
                .sum();
            self.sent_count - later
        };
        ours + self.filler_count
    }

    /// Drops everything that has expired by `now`.
    fn prune(&mut self, now: Instant) {
        if let Some(forget) = now.checked_sub(self.spec.per.saturating_add(HISTORY)) {
            while self.history.front().is_some_and(|t| *t <= forget) {
                self.history.pop_front();
            }
        }
        while let Some(front) = self.sent.front() {
            if front.expires > now {
                break;
            }
            self.sent_count -= u64::from(front.count);
            self.sent.pop_front();
        }
        let mut freed = 0;
        self.fillers.retain(|f| {
            let live = f.expires > now;
            if !live {
                freed += f.count;
            }
            live
        });
        self.filler_count -= freed;
        if self.blocked_until.is_some_and(|b| b <= now) {
            self.blocked_until = None;
        }
    }

    /// Time until this window admits one more request. Call after `prune`.
    fn wait(&self, now: Instant) -> Duration {
        let blocked = self.blocked_until.map_or(Duration::ZERO, |b| b - now);
        let limit = u64::from(self.spec.requests);
        let used = self.used();
        if used < limit {
            return blocked;
        }
        if limit == 0 {
            return blocked.max(self.span.max(Duration::from_millis(1)));
        }
        // Walk expiries in order (the log is sorted; fillers are few) until
        // enough slots are free.
        let need = used - limit + 1;
        let mut fillers = self.fillers.clone();
        fillers.sort_unstable_by_key(|f| f.expires);
        let mut fillers = fillers.into_iter().peekable();
        let mut sent = self.sent.iter().peekable();
        let mut freed = 0;
        let mut at = now;
        while freed < need {
            let take_sent = match (sent.peek(), fillers.peek()) {
                (Some(s), Some(f)) => s.expires <= f.expires,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break, // unreachable: used > 0 implies entries
            };
            if take_sent {
                let s = sent.next().expect("peeked");
                freed += u64::from(s.count);
                at = s.expires;
            } else {
                let f = fillers.next().expect("peeked");
                freed += f.count;
                at = f.expires;
            }
        }
        blocked.max(at - now)
    }

    /// Counts one request sent at `now`.
    fn record(&mut self, now: Instant) {
        if self.width.is_zero() {
            if self.history.len() >= HISTORY_MAX {
                self.history.pop_front();
            }
            self.history.push_back(now);
        }
        // Never before the previous entry's expiry: the log stays sorted when
        // the margin shrinks (see `set_margin`), erring on the safe side.
        let expires = later(now, self.span).max(self.sent.back().map_or(now, |b| b.expires));
        match self.sent.back_mut() {
            Some(back) if now < later(back.first, self.width) => {
                back.count += 1;
                back.expires = back.expires.max(expires);
            }
            _ => self.sent.push_back(Bucket {
                first: now,
                expires,
                count: 1,
            }),
        }
        self.sent_count += 1;
    }

    /// Counts `count` requests of others as used until `expires`.
    fn fill(&mut self, count: u64, expires: Instant) {
        self.filler_count += count;
        if let Some(same) = self.fillers.iter_mut().find(|f| f.expires == expires) {
            same.count += count;
        } else if self.fillers.len() < MAX_FILLERS {
            self.fillers.push(Filler { expires, count });
        } else {
            // Merge into the filler that expires soonest at or after this one
            // (it outlives ours, so nothing is released early); if this one
            // expires last, extend the latest filler to it instead.
            let after = self
                .fillers
                .iter_mut()
                .filter(|f| f.expires >= expires)
                .min_by_key(|f| f.expires);
            match after {
                Some(f) => f.count += count,
                None => {
                    let latest = self
                        .fillers
                        .iter_mut()
                        .max_by_key(|f| f.expires)
                        .expect("MAX_FILLERS > 0");
                    latest.count += count;
                    latest.expires = expires;
                }
            }
        }
    }

    fn block_until(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn limiter(windows: Vec<WindowPlan>, margin: Duration) -> (RateLimiter, ManualClock) {
        let clock = ManualClock::default();
        (
            RateLimiter::new(windows, Arc::new(clock.clone()), margin),
            clock,
        )
    }

    #[test]
    fn a_window_too_long_for_the_clock_refuses_without_panicking() {
        // `check` bounds `per_secs`; the limiter must not panic on one it let through.
        let huge = Duration::from_secs(i64::MAX as u64);
        let window = WindowPlan {
            name: "forever".into(),
            requests: 2,
            per: huge,
            classes: vec!["*".into()],
        };
        let (limiter, clock) = limiter(vec![window], ms(100));
        let (taken, wait) = drain(&limiter, "x");
        assert_eq!(taken, 2);
        assert!(wait > secs(86_400 * 365), "{wait:?}");
        limiter.observe_sent("x", Some(0), Some(huge), clock.now());
        limiter.pause("x", huge);
        assert!(limiter.wait_time("x") > secs(1));
    }

    /// Takes slots until refused; returns how many were taken and the wait.
    fn drain(limiter: &RateLimiter, class: &str) -> (u32, Duration) {
        let mut n = 0;
        loop {
            match limiter.try_acquire(class) {
                Ok(()) => n += 1,
                Err(wait) => return (n, wait),
            }
        }
    }

    /// Panics unless every half-open interval of length `span` holds at most
    /// `limit` of the (sorted) `times`.
    fn assert_never_exceeds(times: &[Instant], limit: u32, span: Duration) {
        let n = limit as usize;
        for i in n..times.len() {
            let gap = times[i] - times[i - n];
            assert!(
                gap >= span,
                "requests {} and {} are {gap:?} apart: {} requests within {span:?} (limit {limit})",
                i - n,
                i,
                n + 1
            );
        }
    }

    /// Random small clock steps, now and then a long one, now and then
    /// exactly the wait the limiter returned; one attempt per step with a
    /// class picked at random. Returns the admitted times of each class.
    fn simulate(
        limiter: &RateLimiter,
        clock: &ManualClock,
        classes: &[&str],
        attempts: usize,
        max_step: Duration,
        seed: u64,
    ) -> Vec<Vec<Instant>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut admitted = vec![Vec::new(); classes.len()];
        for _ in 0..attempts {
            let c = rng.random_range(0..classes.len());
            match limiter.try_acquire(classes[c]) {
                Ok(()) => admitted[c].push(clock.now()),
                Err(wait) if rng.random_bool(0.3) => clock.advance(wait),
                Err(_) => {}
            }
            let step = if rng.random_bool(0.01) {
                rng.random_range(Duration::ZERO..=max_step * 150)
            } else {
                rng.random_range(Duration::ZERO..=max_step)
            };
            clock.advance(step);
        }
        admitted
    }

    fn merged(lists: &[Vec<Instant>]) -> Vec<Instant> {
        let mut all: Vec<Instant> = lists.iter().flatten().copied().collect();
        all.sort();
        all
    }

    #[test]
    fn a_window_of_100_per_10_s_never_admits_a_101st_request_in_any_rolling_10_s() {
        for margin in [Duration::ZERO, ms(50)] {
            let (limiter, clock) = limiter(
                vec![WindowPlan::new("ten_secondly", 100, secs(10), &["*"])],
                margin,
            );
            let admitted = simulate(&limiter, &clock, &["default"], 100_000, ms(20), 1);
            let times = &admitted[0];
            assert!(times.len() > 10_000, "only {} admitted", times.len());
            assert_never_exceeds(times, 100, secs(10));
            assert_never_exceeds(times, 100, secs(10) + margin);
        }
    }

    #[test]
    fn two_windows_at_once_both_hold() {
        let windows = vec![
            WindowPlan::new("secondly", 10, secs(1), &["*"]),
            WindowPlan::new("ten_secondly", 100, secs(10), &["*"]),
        ];
        let (limiter, clock) = limiter(windows, ms(50));
        let admitted = simulate(&limiter, &clock, &["default", "search"], 100_000, ms(5), 2);
        let all = merged(&admitted);
        assert!(all.len() > 5_000, "only {} admitted", all.len());
        assert_never_exceeds(&all, 10, ms(1050));
        assert_never_exceeds(&all, 100, ms(10_050));
    }

    #[test]
    fn a_search_window_does_not_slow_default_but_a_star_window_applies_to_both() {
        let windows = vec![
            WindowPlan::new("all", 10, secs(10), &["*"]),
            WindowPlan::new("search", 2, secs(1), &["search"]),
        ];
        let (limiter, _clock) = limiter(windows, Duration::ZERO);
        assert_eq!(drain(&limiter, "search"), (2, secs(1)));
        // Search is full, default is not slowed by it...
        assert_eq!(limiter.wait_time("default"), Duration::ZERO);
        // ...but search requests did count in the shared window.
        assert_eq!(drain(&limiter, "default"), (8, secs(10)));
        assert_eq!(limiter.wait_time("search"), secs(10));
    }

    #[test]
    fn class_scoped_windows_hold_under_random_traffic() {
        let windows = vec![
            WindowPlan::new("all", 50, secs(10), &["*"]),
            WindowPlan::new("search", 4, secs(1), &["search"]),
            WindowPlan::new("writes", 3, secs(1), &["default", "batch"]),
        ];
        let (limiter, clock) = limiter(windows, ms(10));
        let classes = ["default", "search", "batch", "other"];
        let admitted = simulate(&limiter, &clock, &classes, 50_000, ms(5), 3);
        assert_never_exceeds(&merged(&admitted), 50, ms(10_010));
        assert_never_exceeds(&admitted[1], 4, ms(1010));
        assert_never_exceeds(
            &merged(&[admitted[0].clone(), admitted[2].clone()]),
            3,
            ms(1010),
        );
        assert!(admitted.iter().all(|a| !a.is_empty()));
    }

    #[test]
    fn a_refusal_by_one_window_does_not_consume_a_slot_of_another() {
        let windows = vec![
            WindowPlan::new("all", 5, secs(10), &["*"]),
            WindowPlan::new("search", 2, secs(10), &["search"]),
        ];
        let (limiter, _clock) = limiter(windows, Duration::ZERO);
        assert_eq!(drain(&limiter, "search").0, 2);
        for _ in 0..100 {
            assert_eq!(limiter.try_acquire("search"), Err(secs(10)));
        }
        // The shared window lost only the 2 admitted searches.
        assert_eq!(drain(&limiter, "default").0, 3);
    }

    #[test]
    fn observe_with_zero_remaining_and_a_reset_blocks_for_exactly_that_long() {
        let (limiter, clock) = limiter(vec![WindowPlan::new("w", 10, secs(1), &["*"])], ms(50));
        limiter.try_acquire("default").unwrap();
        limiter.observe("default", Some(0), Some(secs(3)));
        assert_eq!(limiter.try_acquire("default"), Err(secs(3)));
        assert_eq!(limiter.wait_time("search"), secs(3));
        clock.advance(secs(3).saturating_sub(Duration::from_nanos(1)));
        assert_eq!(limiter.try_acquire("default"), Err(Duration::from_nanos(1)));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(limiter.try_acquire("default"), Ok(()));
    }

    #[test]
    fn observe_with_zero_remaining_and_no_reset_waits_for_the_oldest_entry() {
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("w", 10, secs(10), &["*"])],
            Duration::ZERO,
        );
        limiter.try_acquire("default").unwrap();
        clock.advance(secs(4));
        limiter.try_acquire("default").unwrap();
        limiter.observe("default", Some(0), None);
        assert_eq!(limiter.wait_time("default"), secs(6));
        clock.advance(secs(6));
        assert_eq!(drain(&limiter, "default").0, 1);
    }

    #[test]
    fn observe_with_zero_remaining_and_an_empty_log_waits_a_whole_window() {
        let (limiter, _clock) = limiter(vec![WindowPlan::new("w", 10, secs(10), &["*"])], ms(100));
        limiter.observe("default", Some(0), None);
        assert_eq!(limiter.wait_time("default"), ms(10_100));
    }

    #[test]
    fn observe_with_fewer_remaining_than_we_think_admits_only_that_many_until_the_reset() {
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("w", 10, secs(10), &["*"])],
            Duration::ZERO,
        );
        limiter.try_acquire("default").unwrap();
        limiter.try_acquire("default").unwrap();
        // We think 8 are left; the server says 3, resetting in 4 s.
        limiter.observe("default", Some(3), Some(secs(4)));
        assert_eq!(drain(&limiter, "default"), (3, secs(4)));
        clock.advance(secs(4));
        // Others' usage is gone; ours (2 + 3) still counts.
        assert_eq!(drain(&limiter, "default"), (5, secs(6)));
    }

    #[test]
    fn observe_without_a_reset_holds_others_usage_for_a_window_length() {
        let (limiter, clock) = limiter(vec![WindowPlan::new("w", 10, secs(10), &["*"])], ms(50));
        assert_eq!(drain(&limiter, "default").0, 10);
        clock.advance(ms(10_050));
        limiter.try_acquire("default").unwrap();
        limiter.try_acquire("default").unwrap();
        clock.advance(secs(5));
        // We think 8 are left; the server says 4 and gives no reset: others'
        // 4 are held for a whole window (10.05 s) from now.
        limiter.observe("default", Some(4), None);
        assert_eq!(drain(&limiter, "default"), (4, ms(5050)));
        clock.advance(ms(5050));
        // Our first 2 expired; others' 4 and our last 4 are still counted.
        assert_eq!(drain(&limiter, "default"), (2, secs(5)));
        clock.advance(secs(5));
        assert_eq!(drain(&limiter, "default").0, 8);
    }

    #[test]
    fn observe_never_loosens_our_own_count_and_ignores_unknown_remaining() {
        let (limiter, _clock) = limiter(
            vec![WindowPlan::new("w", 10, secs(10), &["*"])],
            Duration::ZERO,
        );
        assert_eq!(drain(&limiter, "default").0, 10);
        limiter.observe("default", Some(10), Some(Duration::ZERO));
        limiter.observe("default", None, Some(secs(1)));
        assert_eq!(limiter.wait_time("default"), secs(10));

        let (limiter, _clock) = self::limiter(
            vec![WindowPlan::new("w", 10, secs(10), &["*"])],
            Duration::ZERO,
        );
        limiter.observe("default", None, Some(secs(30)));
        limiter.observe("default", Some(50), None);
        assert_eq!(drain(&limiter, "default").0, 10);
    }

    #[test]
    fn observe_without_a_reset_fills_only_the_shortest_window_of_the_class() {
        let windows = vec![
            WindowPlan::new("ten_secondly", 100, secs(10), &["*"]),
            WindowPlan::new("daily", 250_000, secs(86_400), &["*"]),
        ];
        let (limiter, clock) = limiter(windows, Duration::ZERO);
        limiter.observe("default", Some(0), None);
        assert_eq!(limiter.wait_time("default"), secs(10));
        clock.advance(secs(10));
        // The daily window was not filled for a day.
        assert_eq!(drain(&limiter, "default"), (100, secs(10)));
    }

    #[test]
    fn a_long_reset_describes_the_long_window_until_the_reset() {
        let windows = vec![
            WindowPlan::new("secondly", 10, secs(1), &["*"]),
            WindowPlan::new("hourly", 36_000, secs(3600), &["*"]),
            WindowPlan::new("search", 5, secs(1), &["search"]),
        ];
        let (limiter, clock) = limiter(windows, Duration::ZERO);
        // Brevo: 2 left in the hour, resetting in 30 s.
        limiter.observe("default", Some(2), Some(secs(30)));
        let (n, wait) = drain(&limiter, "default");
        assert_eq!(n, 2);
        assert_eq!(wait, secs(30));
        clock.advance(secs(30));
        assert_eq!(drain(&limiter, "default").0, 10);
        // Observing "default" did not touch the search-only window.
        clock.advance(secs(1));
        assert_eq!(drain(&limiter, "search").0, 5);
    }

    #[test]
    fn a_zero_remaining_that_our_own_requests_explain_adds_no_wait() {
        // Brevo: 10 per second (and 36,000 per hour); the reset header is in
        // whole seconds, rounded up.
        let windows = vec![
            WindowPlan::new("secondly", 10, secs(1), &["*"]),
            WindowPlan::new("hourly", 36_000, secs(3600), &["*"]),
        ];
        let (limiter, clock) = limiter(windows, ms(100));
        let mut sent = Vec::new();
        for _ in 0..10 {
            limiter.try_acquire("default").unwrap();
            sent.push(clock.now());
            clock.advance(ms(50));
        }
        // At 0.75 s the 10th request's answer says: none left, reset in 1 s.
        clock.advance(ms(250));
        limiter.observe_sent("default", Some(0), Some(secs(1)), sent[9]);
        // Our own log frees a slot 1.1 s after the first request, not 1 s
        // after the answer, and the hour is not taken as used up.
        assert_eq!(limiter.wait_time("default"), ms(350));
        clock.advance(ms(350));
        assert_eq!(drain(&limiter, "default").0, 1);
    }

    #[test]
    fn a_stale_remaining_is_compared_with_what_we_had_sent_when_it_was_counted() {
        // HubSpot: 100 per 10 s, no reset header; 100 requests in the first second.
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("ten_secondly", 100, secs(10), &["*"])],
            ms(100),
        );
        for _ in 0..100 {
            limiter.try_acquire("default").unwrap();
            clock.advance(ms(10));
        }
        clock.advance(ms(9100));
        limiter.try_acquire("default").unwrap();
        let sent = clock.now();
        // The server (a 10 s window) held our 89 sent after 0.1 s, plus this
        // one: 10 remaining. The answer comes 250 ms later, when our log has
        // let go of the first 26 and holds 75.
        clock.advance(ms(250));
        limiter.observe_sent("default", Some(10), None, sent);
        assert_eq!(drain(&limiter, "default").0, 25);
    }

    #[test]
    fn a_bursts_late_arrivals_are_not_taken_for_others_usage() {
        // HubSpot: 100 per 10 s, margin 100 ms. A burst of 100 leaves over
        // 99 ms; the server saw most of it up to 90 ms late.
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("ten_secondly", 100, secs(10), &["*"])],
            ms(100),
        );
        let start = clock.now();
        for _ in 0..100 {
            limiter.try_acquire("default").unwrap();
            clock.advance(ms(1));
        }
        // The first slot frees at 10.1 s; that request arrives at once, when
        // the server's window (0.1 s, 10.1 s] still holds the 89 late ones
        // sent from 11 ms on: 90 counted, 10 remaining.
        clock.advance(start + ms(10_100) - clock.now());
        limiter.try_acquire("default").unwrap();
        let sent = clock.now();
        clock.advance(ms(20));
        limiter.observe_sent("default", Some(10), None, sent);
        // All of them are ours: once the burst has left our window, the next
        // one goes out whole, not cut to the 10 the answer seemed to leave.
        clock.advance(start + ms(10_200) - clock.now());
        assert_eq!(drain(&limiter, "default").0, 99);
    }

    #[test]
    fn a_wider_margin_holds_the_requests_already_sent_for_longer_too() {
        let (limiter, clock) = limiter(vec![WindowPlan::new("w", 2, secs(10), &["*"])], ms(100));
        assert_eq!(drain(&limiter, "default"), (2, ms(10_100)));
        // Their answers show 400 ms of spread: they may arrive that late.
        limiter.set_margin(ms(400));
        assert_eq!(limiter.wait_time("default"), ms(10_400));
        // Narrowing again does not release them early.
        limiter.set_margin(ms(100));
        assert_eq!(limiter.wait_time("default"), ms(10_400));
        clock.advance(ms(10_400));
        assert_eq!(drain(&limiter, "default"), (2, ms(10_100)));
    }

    #[test]
    fn others_usage_is_still_learned_from_a_late_answer() {
        let (limiter, clock) = limiter(vec![WindowPlan::new("w", 10, secs(10), &["*"])], ms(100));
        limiter.try_acquire("default").unwrap();
        let sent = clock.now();
        clock.advance(secs(2));
        for _ in 0..3 {
            limiter.try_acquire("default").unwrap();
        }
        // When our first request arrived the server had counted 4: ours and
        // 3 of someone else's. Ours are 4 now; 10 - 4 - 3 are left.
        limiter.observe_sent("default", Some(6), None, sent);
        assert_eq!(drain(&limiter, "default").0, 3);
    }

    #[test]
    fn many_observations_keep_bounded_memory() {
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("w", 1000, secs(10), &["*"])],
            Duration::ZERO,
        );
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..10_000 {
            let remaining = rng.random_range(0..1000);
            let reset = rng.random_range(ms(1)..=secs(20));
            limiter.observe("default", Some(remaining), Some(reset));
            let _ = limiter.try_acquire("default");
            clock.advance(ms(rng.random_range(0..3)));
            let state = limiter.lock();
            assert!(state.windows[0].fillers.len() <= MAX_FILLERS);
            assert!(state.windows[0].used() <= 1000);
        }
    }

    #[test]
    fn merged_server_usage_is_never_released_before_its_true_expiry() {
        let start = Instant::now();
        let mut window = WindowState::new(
            WindowPlan::new("w", 10_000, secs(10), &["*"]),
            Duration::ZERO,
        );
        let mut expiries: Vec<u64> = (1..=(3 * MAX_FILLERS as u64)).collect();
        let mut rng = StdRng::seed_from_u64(8);
        for i in (1..expiries.len()).rev() {
            expiries.swap(i, rng.random_range(0..=i));
        }
        for e in &expiries {
            window.fill(1, start + ms(*e));
        }
        assert!(window.fillers.len() <= MAX_FILLERS);
        for t in 0..=expiries.len() as u64 {
            window.prune(start + ms(t));
            let truly_live = expiries.iter().filter(|e| **e > t).count() as u64;
            assert!(
                window.used() >= truly_live,
                "at {t} ms: {} < {truly_live}",
                window.used()
            );
        }
        assert_eq!(window.used(), 0);
    }

    #[test]
    fn a_window_applies_to_its_classes_and_star_to_all() {
        let search = WindowPlan::new("s", 1, secs(1), &["search", "lookup"]);
        assert!(search.applies_to("search") && search.applies_to("lookup"));
        assert!(!search.applies_to("default"));
        let all = WindowPlan::new("a", 1, secs(1), &["*"]);
        assert!(all.applies_to("default") && all.applies_to("search"));
    }

    #[test]
    fn pause_blocks_only_that_class_and_never_shortens_an_earlier_pause() {
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("w", 10, secs(1), &["*"])],
            Duration::ZERO,
        );
        limiter.pause("default", secs(5));
        assert_eq!(limiter.try_acquire("default"), Err(secs(5)));
        assert_eq!(limiter.try_acquire("search"), Ok(()));
        limiter.pause("default", secs(1));
        assert_eq!(limiter.wait_time("default"), secs(5));
        clock.advance(secs(5));
        assert_eq!(limiter.try_acquire("default"), Ok(()));
        // A pause works for a class without windows too.
        limiter.pause("unlimited", secs(2));
        assert_eq!(limiter.wait_time("unlimited"), secs(2));
        // Absurd pauses do not overflow.
        limiter.pause("default", Duration::MAX);
        assert_eq!(limiter.wait_time("default"), MAX_HORIZON);
    }

    #[test]
    fn a_greedy_sender_gets_exactly_n_per_window() {
        for margin in [Duration::ZERO, ms(50)] {
            let (limiter, clock) =
                limiter(vec![WindowPlan::new("w", 100, secs(10), &["*"])], margin);
            let span = secs(10) + margin;
            let start = clock.now();
            let mut admitted = Vec::new();
            while clock.now() < start + span * 20 {
                match limiter.try_acquire("default") {
                    Ok(()) => admitted.push(clock.now()),
                    Err(wait) => clock.advance(wait),
                }
            }
            assert_eq!(admitted.len(), 2000, "margin {margin:?}");
            for k in 0..20 {
                let from = start + span * k;
                let in_window = admitted
                    .iter()
                    .filter(|t| **t >= from && **t < from + span)
                    .count();
                assert_eq!(in_window, 100, "window {k}, margin {margin:?}");
            }
        }
    }

    #[test]
    fn a_whole_window_budget_is_admitted_at_once_and_the_next_one_a_window_plus_margin_later() {
        let (limiter, clock) = limiter(vec![WindowPlan::new("w", 100, secs(10), &["*"])], ms(100));
        let start = clock.now();
        // All 100 at the same instant, none held back to spread them.
        assert_eq!(drain(&limiter, "default"), (100, ms(10_100)));
        clock.advance(ms(10_099));
        assert_eq!(limiter.try_acquire("default"), Err(ms(1)));
        clock.advance(ms(1));
        assert_eq!(drain(&limiter, "default"), (100, ms(10_100)));
        assert_eq!(clock.now() - start, ms(10_100));
    }

    /// Random arrival patterns: bursts of random size at random moments, each
    /// request reaching the CRM after a latency that varies by up to the
    /// margin. Whenever the limiter refuses, the window ending now must
    /// already hold N of our requests (it never holds back budget the window
    /// has), and at the CRM's end no rolling window of `per` may see more
    /// than N arrivals.
    #[test]
    fn under_random_bursts_every_free_slot_is_admitted_and_no_crm_window_sees_more_than_n() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let n: u32 = rng.random_range(1..=120);
            let per = ms(rng.random_range(200..=20_000));
            let jitter = ms(rng.random_range(0..=150));
            let (limiter, clock) = limiter(vec![WindowPlan::new("w", n, per, &["*"])], jitter);
            let span = per + jitter;
            let mut sent: Vec<Instant> = Vec::new();
            let mut arrivals: Vec<Instant> = Vec::new();
            for _ in 0..400 {
                let burst = rng.random_range(1..=2 * n as usize);
                for _ in 0..burst {
                    match limiter.try_acquire("default") {
                        Ok(()) => {
                            sent.push(clock.now());
                            let on_the_way = ms(250) + rng.random_range(Duration::ZERO..=jitter);
                            arrivals.push(clock.now() + on_the_way);
                        }
                        Err(_) => {
                            let now = clock.now();
                            // `sent` is ascending: those still in the window are a suffix.
                            let in_window = sent.len() - sent.partition_point(|t| now - *t >= span);
                            assert_eq!(
                                in_window, n as usize,
                                "seed {seed}: refused with {in_window} of {n} in the window"
                            );
                        }
                    }
                }
                // Sometimes exactly when a slot frees, sometimes at random.
                match (rng.random_bool(0.5), limiter.wait_time("default")) {
                    (true, wait) if !wait.is_zero() => clock.advance(wait),
                    _ => clock.advance(rng.random_range(Duration::ZERO..=per)),
                }
            }
            arrivals.sort();
            assert!(
                sent.len() > 2 * n as usize,
                "seed {seed}: only {} sent",
                sent.len()
            );
            assert_never_exceeds(&arrivals, n, per);
        }
    }

    #[test]
    fn the_returned_wait_is_exact_neither_early_nor_late() {
        let windows = vec![
            WindowPlan::new("secondly", 3, secs(1), &["*"]),
            WindowPlan::new("ten_secondly", 12, secs(10), &["*"]),
        ];
        let (limiter, clock) = limiter(windows, ms(70));
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..2000 {
            let wait = match limiter.try_acquire("default") {
                Ok(()) => {
                    clock.advance(rng.random_range(Duration::ZERO..=ms(300)));
                    continue;
                }
                Err(wait) => wait,
            };
            assert_eq!(limiter.wait_time("default"), wait);
            clock.advance(wait.saturating_sub(Duration::from_nanos(1)));
            assert_eq!(limiter.try_acquire("default"), Err(Duration::from_nanos(1)));
            clock.advance(Duration::from_nanos(1));
            assert_eq!(limiter.try_acquire("default"), Ok(()));
        }
    }

    #[test]
    fn wait_time_does_not_reserve() {
        let (limiter, _clock) = limiter(
            vec![WindowPlan::new("w", 3, secs(1), &["*"])],
            Duration::ZERO,
        );
        for _ in 0..100 {
            assert_eq!(limiter.wait_time("default"), Duration::ZERO);
        }
        assert_eq!(drain(&limiter, "default").0, 3);
    }

    #[test]
    fn a_class_with_no_windows_is_never_delayed() {
        let (limiter, _clock) = limiter(
            vec![WindowPlan::new("search", 1, secs(1), &["search"])],
            ms(50),
        );
        assert_eq!(drain(&limiter, "search").0, 1);
        for _ in 0..10_000 {
            assert_eq!(limiter.try_acquire("default"), Ok(()));
        }
    }

    #[test]
    fn a_window_of_zero_requests_admits_nothing() {
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("off", 0, secs(1), &["*"])],
            Duration::ZERO,
        );
        for _ in 0..5 {
            assert_eq!(limiter.try_acquire("default"), Err(secs(1)));
            clock.advance(secs(1));
        }
    }

    #[test]
    fn large_windows_use_bounded_memory_and_still_never_exceed() {
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("minutely", 20_000, secs(60), &["*"])],
            ms(50),
        );
        let span = ms(60_050);
        let mut rng = StdRng::seed_from_u64(6);
        let mut admitted = Vec::new();
        for _ in 0..300_000 {
            if limiter.try_acquire("default").is_ok() {
                admitted.push(clock.now());
            }
            clock.advance(rng.random_range(Duration::ZERO..=ms(4)));
            let buckets = limiter.lock().windows[0].sent.len();
            assert!(
                buckets <= BUCKETS_PER_WINDOW as usize + 2,
                "{buckets} buckets"
            );
        }
        assert_never_exceeds(&admitted, 20_000, span);
        // A slot comes back at most one bucket width (+ one step) late.
        let elapsed = clock.now() - admitted[0];
        let slot_life = span + span / BUCKETS_PER_WINDOW + ms(4);
        let whole_windows = (elapsed.as_secs_f64() / slot_life.as_secs_f64()).floor() as usize;
        assert!(
            admitted.len() >= 20_000 * whole_windows,
            "{} in {elapsed:?}",
            admitted.len()
        );
    }

    #[test]
    fn a_steady_sender_just_under_the_limit_is_never_refused_by_a_bucketed_window() {
        // Bucketing may hold a slot up to one bucket width (1/60) too long, so
        // a steady rate of 99% of N per (span + width) always gets through.
        let (limiter, clock) = limiter(
            vec![WindowPlan::new("minutely", 20_000, secs(60), &["*"])],
            ms(50),
        );
        let span = ms(60_050);
        let rate = 0.99 * 20_000.0 / (span + span / BUCKETS_PER_WINDOW).as_secs_f64();
        let interval = Duration::from_secs_f64(1.0 / rate);
        for i in 0..200_000 {
            assert_eq!(limiter.try_acquire("default"), Ok(()), "request {i}");
            clock.advance(interval);
        }
    }

    #[test]
    fn a_steady_sender_just_under_the_limit_is_never_refused_by_an_exact_window() {
        let (limiter, clock) = limiter(vec![WindowPlan::new("w", 100, secs(10), &["*"])], ms(50));
        let interval = ms(10_050) / 100;
        for i in 0..20_000 {
            assert_eq!(limiter.try_acquire("default"), Ok(()), "request {i}");
            clock.advance(interval);
        }
        assert!(limiter.try_acquire("default").is_ok());
    }

    #[test]
    fn a_daily_window_of_250000_is_bounded_and_never_exceeded_by_bursts() {
        let windows = vec![
            WindowPlan::new("ten_secondly", 100, secs(10), &["*"]),
            WindowPlan::new("daily", 250_000, secs(86_400), &["*"]),
        ];
        let (limiter, clock) = limiter(windows, ms(100));
        let mut rng = StdRng::seed_from_u64(7);
        let mut admitted = Vec::new();
        while clock.elapsed() < secs(3 * 86_400) {
            let burst = rng.random_range(1..=400);
            for _ in 0..burst {
                if limiter.try_acquire("default").is_err() {
                    break;
                }
                admitted.push(clock.now());
            }
            clock.advance(rng.random_range(Duration::ZERO..=secs(2)));
            let state = limiter.lock();
            assert!(state.windows[0].sent.len() <= 100);
            assert!(state.windows[1].sent.len() <= BUCKETS_PER_WINDOW as usize + 2);
        }
        assert_never_exceeds(&admitted, 250_000, secs(86_400) + ms(100));
        assert_never_exceeds(&admitted, 100, secs(10) + ms(100));
        // The daily limit, not the 10 s one, was what held the sender back.
        assert!(admitted.len() > 700_000, "{}", admitted.len());
    }

    #[test]
    fn concurrent_threads_together_get_exactly_the_limit() {
        let (limiter, _clock) = limiter(
            vec![WindowPlan::new("w", 500, secs(10), &["*"])],
            Duration::ZERO,
        );
        let limiter = Arc::new(limiter);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| limiter.try_acquire("default").is_ok())
                        .count()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 500);
    }

    #[tokio::test]
    async fn acquire_sleeps_on_the_real_clock_until_a_slot_is_free() {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let limiter = RateLimiter::new(
            vec![WindowPlan::new("w", 2, ms(100), &["*"])],
            clock,
            ms(20),
        );
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire("default").await;
        }
        assert!(start.elapsed() >= ms(120), "{:?}", start.elapsed());
    }

    #[test]
    fn the_limiter_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RateLimiter>();
    }
}
