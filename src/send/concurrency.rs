//! Adaptive request concurrency: additive increase, multiplicative decrease
//! (AIMD), as TCP does with its window.
//!
//! The rate limiter already paces requests ahead of the CRM's documented
//! windows. What it cannot see is a CRM that pushes back anyway: a 429 from a
//! limit the connector file does not know, a 503 or a "cheaper early throttle"
//! 500 under load, timeouts. Each such answer halves the requests allowed in
//! flight; after every round of `limit` normal answers the limit grows back by
//! one, up to the connector's `max_in_flight`.
//!
//! Answers to requests that were sent before the last decrease do not decrease
//! again: they were in flight together and report the same congestion, so a
//! burst of 503s from 8 parallel requests halves the limit once, not 8 times.
//!
//! A transient server error whose answer carries the CRM's own rate-limit
//! count with room left is more likely a fault than load: one such error in a
//! round is ignored, a second in the same round halves the limit. (Halving on
//! every 5xx cut a CRM answering 10 % 5xx to 4.1 rows/s against its 10/s.)
//!
//! Latency alone does not lower the limit. The CRMs' windows are counted in
//! requests, not in time, and a slow CRM already holds fewer requests per
//! second at the same limit.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

/// What one answer says about the CRM's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered normally: a success, or a rejection of this request's data.
    Fine,
    /// Pushed back: rate-limited, a transient 5xx, a timeout, a lost connection.
    Overloaded,
    /// A transient server error while the CRM's own rate-limit headers say
    /// its window has room: more likely a fault than load. One in a round is
    /// ignored; a second in the same round counts as [`Signal::Overloaded`].
    Faulty,
}

/// The AIMD state: pure, driven by the caller's clock.
#[derive(Debug, Clone)]
pub struct Aimd {
    max: usize,
    limit: usize,
    /// Normal answers in this round (a round is `limit` normal answers).
    fine_answers: usize,
    /// [`Signal::Faulty`] answers in this round.
    faults: usize,
    last_decrease: Option<Instant>,
}

impl Aimd {
    /// Starts at the ceiling: the rate limiter paces from the first request.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Aimd {
            max,
            limit: max,
            fine_answers: 0,
            faults: 0,
            last_decrease: None,
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Feeds one answer to a request sent at `sent_at`, received at `now`.
    /// Returns the new limit when it changed by a whole request.
    pub fn observe(&mut self, signal: Signal, sent_at: Instant, now: Instant) -> Option<usize> {
        let before = self.limit;
        match signal {
            Signal::Fine => {
                self.fine_answers += 1;
                if self.fine_answers >= self.limit {
                    // A round complete: grow, and forget its faults.
                    self.limit = (self.limit + 1).min(self.max);
                    self.fine_answers = 0;
                    self.faults = 0;
                }
            }
            Signal::Faulty if self.faults == 0 => self.faults = 1,
            Signal::Faulty | Signal::Overloaded => self.decrease(sent_at, now),
        }
        (self.limit != before).then_some(self.limit)
    }

    /// Halves the limit, unless the answer is to a request sent before the
    /// last decrease (see the module docs).
    fn decrease(&mut self, sent_at: Instant, now: Instant) {
        if self.last_decrease.is_some_and(|at| sent_at < at) {
            return;
        }
        self.limit = (self.limit / 2).max(1);
        self.fine_answers = 0;
        self.faults = 0;
        self.last_decrease = Some(now);
    }
}

/// A gate that admits at most [`Aimd::limit`] requests at once.
#[derive(Debug)]
pub struct AdaptiveGate {
    state: Mutex<GateState>,
    freed: Notify,
    /// When false, the limit stays at the ceiling (`adaptive_concurrency = false`).
    adaptive: bool,
}

#[derive(Debug)]
struct GateState {
    aimd: Aimd,
    in_flight: usize,
}

/// One admitted request; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted<'a> {
    gate: &'a AdaptiveGate,
}

impl AdaptiveGate {
    /// A gate of at most `max` requests; fixed at `max` unless `adaptive`.
    pub fn new(max: usize, adaptive: bool) -> Self {
        AdaptiveGate {
            state: Mutex::new(GateState {
                aimd: Aimd::new(max),
                in_flight: 0,
            }),
            freed: Notify::new(),
            adaptive,
        }
    }

    /// Waits for a place.
    pub async fn admit(&self) -> Admitted<'_> {
        loop {
            // Registered before checking, so a place freed in between wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.in_flight < state.aimd.limit() {
                    state.in_flight += 1;
                    return Admitted { gate: self };
                }
            }
            freed.await;
        }
    }

    /// Feeds one answer to the limit; returns the new limit when it changed.
    pub fn observe(&self, signal: Signal, sent_at: Instant, now: Instant) -> Option<usize> {
        if !self.adaptive {
            return None;
        }
        let changed = self.lock().aimd.observe(signal, sent_at, now);
        if changed.is_some() {
            // A raised limit has room for more than the one waiter a drop wakes.
            self.freed.notify_waiters();
        }
        changed
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().aimd.limit()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state stays consistent whatever a panicking holder did: every
        // update is a single assignment.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.gate.lock().in_flight -= 1;
        self.gate.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn ms(start: Instant, n: u64) -> Instant {
        start + Duration::from_millis(n)
    }

    #[test]
    fn the_limit_starts_at_the_ceiling_and_halves_on_pushback_down_to_one() {
        let t = Instant::now();
        let mut aimd = Aimd::new(8);
        assert_eq!(aimd.limit(), 8);
        let limits: Vec<Option<usize>> = (0..5)
            .map(|i| aimd.observe(Signal::Overloaded, ms(t, 10 * i + 5), ms(t, 10 * i + 9)))
            .collect();
        assert_eq!(limits, [Some(4), Some(2), Some(1), None, None]);
        assert_eq!(aimd.limit(), 1);
    }

    #[test]
    fn answers_to_requests_sent_before_the_last_decrease_do_not_decrease_again() {
        let t = Instant::now();
        let mut aimd = Aimd::new(8);
        // Eight requests sent together at 0 ms; all answer 503 between 100 and 107 ms.
        let changes: Vec<Option<usize>> = (0..8)
            .map(|i| aimd.observe(Signal::Overloaded, t, ms(t, 100 + i)))
            .collect();
        assert_eq!(changes, [Some(4), None, None, None, None, None, None, None]);
        // A request sent after that decrease reports new congestion.
        assert_eq!(
            aimd.observe(Signal::Overloaded, ms(t, 101), ms(t, 200)),
            Some(2)
        );
    }

    #[test]
    fn normal_answers_grow_the_limit_by_one_per_round_up_to_the_ceiling() {
        let t = Instant::now();
        let mut aimd = Aimd::new(6);
        aimd.observe(Signal::Overloaded, t, t);
        aimd.observe(Signal::Overloaded, ms(t, 1), ms(t, 1));
        assert_eq!(aimd.limit(), 1);
        // From 1: one answer to reach 2, two more to reach 3, three more to 4 …
        let mut answers_per_step = Vec::new();
        let mut answers = 0;
        while aimd.limit() < 6 {
            answers += 1;
            if aimd.observe(Signal::Fine, ms(t, 2), ms(t, 3)).is_some() {
                answers_per_step.push(answers);
                answers = 0;
            }
        }
        assert_eq!(answers_per_step, [1, 2, 3, 4, 5]);
        for _ in 0..100 {
            aimd.observe(Signal::Fine, ms(t, 2), ms(t, 3));
        }
        assert_eq!(aimd.limit(), 6);
    }

    #[test]
    fn one_server_error_in_a_round_with_room_in_the_crms_window_keeps_the_limit() {
        let t = Instant::now();
        let mut aimd = Aimd::new(4);
        // 10 % faults, spread out: one per round of four normal answers.
        for round in 0..25 {
            let at = ms(t, 10 * round);
            assert_eq!(aimd.observe(Signal::Faulty, at, at), None, "round {round}");
            for _ in 0..4 {
                aimd.observe(Signal::Fine, at, at);
            }
        }
        assert_eq!(aimd.limit(), 4);
    }

    #[test]
    fn a_second_server_error_in_the_same_round_halves_the_limit() {
        let t = Instant::now();
        let mut aimd = Aimd::new(8);
        assert_eq!(aimd.observe(Signal::Faulty, t, ms(t, 1)), None);
        aimd.observe(Signal::Fine, t, ms(t, 2));
        assert_eq!(aimd.observe(Signal::Faulty, ms(t, 3), ms(t, 4)), Some(4));
        // The round starts over after a decrease: one more fault is forgiven.
        assert_eq!(aimd.observe(Signal::Faulty, ms(t, 5), ms(t, 6)), None);
        // Without room in the CRM's window, one 5xx is load: halve at once.
        assert_eq!(
            aimd.observe(Signal::Overloaded, ms(t, 7), ms(t, 8)),
            Some(2)
        );
    }

    #[tokio::test]
    async fn the_gate_admits_no_more_than_the_limit_and_a_freed_place_admits_the_next() {
        let gate = Arc::new(AdaptiveGate::new(4, true));
        let t = Instant::now();
        gate.observe(Signal::Overloaded, t, t);
        gate.observe(Signal::Overloaded, ms(t, 1), ms(t, 1));
        assert_eq!(gate.limit(), 1);
        let first = gate.admit().await;
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _second = gate.admit().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a second request got in at limit 1");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the freed place admits the waiting request")
            .unwrap();
    }

    #[tokio::test]
    async fn a_fixed_gate_ignores_pushback() {
        let gate = AdaptiveGate::new(3, false);
        let t = Instant::now();
        assert_eq!(gate.observe(Signal::Overloaded, t, t), None);
        assert_eq!(gate.limit(), 3);
        let _a = gate.admit().await;
        let _b = gate.admit().await;
        let _c = gate.admit().await;
    }
}
