//! One rate budget across processes: every engine process syncing through
//! the same connector, base URL and credentials takes its requests from one
//! budget held in PostgreSQL (the database the workers already share), so N
//! processes together never exceed the CRM's windows.
//!
//! # Slices
//! A process does not ask the database for every request: it takes a
//! *slice* of permits of a window at a time ([`crate::store::budget`]) and
//! spends them locally. A slice
//! - is granted only if the permits of every slice alive, plus its own, stay
//!   within the window's limit (checked under an advisory lock);
//! - may be spent for its TTL after the grant; a permit not spent by then is
//!   never used;
//! - occupies the window from its grant until grant + TTL + window + margin,
//!   measured by the database's clock, so a process that dies gives its
//!   slice back by expiry;
//! - is trimmed when the process takes its next slice of the window: only
//!   the permits spent stay, until the last one's use + window + margin.
//!   Permits not spent come back at once.
//!
//! # Late arrivals
//! A request can reach the CRM well after its permit was spent: a burst of
//! new connections (TCP and TLS handshakes), or a process starved of CPU
//! between the permit and the wire. Measured: four processes starting on two
//! cores had requests counted up to 1.6 s after their slice's grant, and
//! the CRM answered 44 to 83 requests 429. So each answer tells the budget
//! when its request arrived at the latest (the answer's time less the
//! fastest answer seen, never before it was sent), and a slice whose
//! requests arrived later than its hold assumed is held longer in the
//! database (one statement per slice that was late, none otherwise).
//!
//! # Why that bounds the CRM's window
//! The local clock reads `start` before the grant request leaves, so the
//! grant's database time is no earlier than `start`; every permit is spent
//! at some `u` with grant <= u <= start + TTL <= grant + TTL, and arrives at
//! the CRM by `u` + margin. A request the CRM counts at `t` therefore
//! belongs to a slice still alive at `t`, and the slices alive at any moment
//! hold at most the limit: the CRM sees at most the limit in any window.
//!
//! # Sizing
//! A slice asks for as many permits as requests are waiting for one in this
//! process (so they leave together), at least a thousandth of the window (a
//! daily window is not asked for every request). Near a full window the
//! database grants what room is left, so slices are small where it matters.
//! Every permit is held from its slice's grant rather than its own use, so
//! a large slice spent slowly would hold room it no longer needs; waiting
//! requests spend theirs at once.
//!
//! # Waits
//! Waiting for a slice is a rate-limit wait like the limiter's: bounded by
//! the batch's lease and `max_rate_limit_wait_secs`, and cut short on
//! shutdown ([`crate::send::wait`]). A database error hands the rows back
//! rather than send without a budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex as SyncMutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::clock::Clock;
use crate::plan::{ConnectorPlan, Env, WindowPlan};
use crate::send::wait::{self, Stop};
use crate::store::budget::{self as table, SliceRequest, Trim};

/// How long a slice may be spent: a twentieth of the window, between 50 ms
/// and 1 s. Short, because a dead process's unspent slice blocks room for
/// TTL + window; long enough for the requests waiting to leave.
pub fn slice_ttl(per: Duration) -> Duration {
    (per / 20).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The smallest slice worth a database round trip for a window of `limit`.
pub fn min_slice(limit: u32) -> u32 {
    (limit / 1000).max(1)
}

/// How many permits to ask for: one for each request waiting, and more as
/// demand shows: twice the last slice when it was spent to the end, as many
/// as it spent when it was not (up to a tenth of the window), at least
/// [`min_slice`], at most the whole window. `last` is the last slice's
/// `(spent, left)`.
pub fn slice_want(waiting: u32, last: Option<(u32, u32)>, limit: u32) -> u32 {
    let shown = match last {
        Some((spent, 0)) => spent.saturating_mul(2),
        Some((spent, _)) => spent,
        None => 1,
    };
    let grown = shown.min((limit / 10).max(1));
    waiting.max(grown).max(min_slice(limit)).min(limit.max(1))
}

/// Whether the database cannot be reached: waits this long before the rows
/// go back, so a flapping database is not hammered.
const DB_ERROR_PAUSE: Duration = Duration::from_secs(5);

/// The shortest wait for room, so that a slice expiring "now" is not polled
/// in a tight loop.
const MIN_POLL: Duration = Duration::from_millis(5);

/// The budget key: the connector's name and a SHA-256 of its base URL and
/// every credential's *value* (the secret itself is never stored). Two
/// processes with the same token on the same CRM share one budget; another
/// token, or another server (a sandbox), gets its own.
pub fn budget_key(plan: &ConnectorPlan, base_url: &str, env: &dyn Env) -> String {
    let mut hash = Sha256::new();
    hash.update(base_url.trim_end_matches('/').as_bytes());
    for name in crate::plan::secret_env_names(&plan.auth) {
        hash.update([0]);
        hash.update(env.var(&name).unwrap_or_default().as_bytes());
    }
    let hex = crate::hex::encode(&hash.finalize());
    format!("{}:{hex}", plan.name)
}

/// One process's share of the budget of one connector.
#[derive(Debug)]
pub struct SharedBudget {
    pool: PgPool,
    key: String,
    windows: Vec<WindowPlan>,
    clock: Arc<dyn Clock>,
    /// The arrival margin, as the limiter's (see `CrmClient::observe_latency`).
    margin: SyncMutex<Duration>,
    /// The cap on one wait (`max_rate_limit_wait_secs`).
    max_wait: Duration,
    /// Requests waiting for a permit now: the next slice's size.
    waiting: AtomicU32,
    /// One slice per window; a tokio mutex because a grant is awaited under it
    /// (one grant per window at a time in this process).
    slices: tokio::sync::Mutex<Vec<Option<Slice>>>,
    /// How long each recent slice is held in the database, by slice id, so
    /// that late answers can hold it longer (see "Late arrivals").
    holds: SyncMutex<HashMap<i64, Hold>>,
    /// The fastest answer seen, in microseconds: how long the CRM takes at
    /// least, so an answer's time less it is no earlier than the arrival.
    fastest_answer_us: AtomicU64,
}

/// The permits one request took: when, and from which slices.
#[derive(Debug, Clone)]
pub struct Permit {
    /// When the permits were spent.
    pub at: Instant,
    /// `(window index, slice id)` for each window the request counts in.
    slices: Vec<(usize, i64)>,
}

/// How long a slice is held in the database, from its local `start`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    start: Instant,
    held: Duration,
}

/// A late answer holds its slice longer only past this much more, so that
/// answers a little late do not each cost a statement.
const EXTEND_SLACK: Duration = Duration::from_millis(20);

/// A slice being spent.
#[derive(Debug, Clone, Copy)]
struct Slice {
    id: i64,
    /// Read before the grant was asked for (see the module docs).
    start: Instant,
    left: u32,
    used: u32,
    last_use: Option<Instant>,
}

impl Slice {
    fn usable(&self, now: Instant, ttl: Duration) -> bool {
        self.left > 0 && now < self.start + ttl
    }

    /// What stays of it once given back.
    fn trim(&self, per: Duration, margin: Duration) -> Trim {
        let spent = self.last_use.map_or(Duration::ZERO, |last| {
            last.saturating_duration_since(self.start)
        });
        Trim {
            id: self.id,
            used: self.used,
            held: spent + per + margin,
        }
    }
}

impl SharedBudget {
    /// The shared budget of `plan` in `pool`, when it applies: the connector
    /// shares it (`share_rate_budget`, the default) and has windows. Creates
    /// the table if missing.
    pub async fn open(
        pool: &PgPool,
        plan: &ConnectorPlan,
        base_url: &str,
        env: &dyn Env,
        clock: Arc<dyn Clock>,
        margin: Duration,
    ) -> anyhow::Result<Option<Self>> {
        if !plan.share_rate_budget || plan.pacing.windows().is_empty() {
            return Ok(None);
        }
        table::ensure_table(pool).await?;
        Ok(Some(Self::new(
            pool.clone(),
            budget_key(plan, base_url, env),
            plan.pacing.windows().to_vec(),
            clock,
            margin,
            plan.classify.headers.max_wait,
        )))
    }

    /// A budget over `windows` under `key` (the table must exist).
    pub fn new(
        pool: PgPool,
        key: String,
        windows: Vec<WindowPlan>,
        clock: Arc<dyn Clock>,
        margin: Duration,
        max_wait: Duration,
    ) -> Self {
        let slices = tokio::sync::Mutex::new(vec![None; windows.len()]);
        Self {
            pool,
            key,
            windows,
            clock,
            margin: SyncMutex::new(margin),
            max_wait,
            waiting: AtomicU32::new(0),
            slices,
            holds: SyncMutex::new(HashMap::new()),
            fastest_answer_us: AtomicU64::new(u64::MAX),
        }
    }

    /// The budget's key (connector name and hash).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Follows the limiter's margin (wider while the CRM's latency varies).
    pub fn set_margin(&self, margin: Duration) {
        *self.margin.lock().unwrap_or_else(|e| e.into_inner()) = margin;
    }

    fn margin(&self) -> Duration {
        *self.margin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one permit of every window that applies to `class`, waiting
    /// (within the bounds, see [`wait`]) for room. Returns when it was spent:
    /// the request must leave now. `Err` says why it stopped waiting and for
    /// how long it would have waited.
    pub async fn take(&self, class: &str) -> Result<Instant, (Stop, Duration)> {
        self.take_permit(class).await.map(|permit| permit.at)
    }

    /// As [`SharedBudget::take`], returning the permit so that the answer can
    /// be reported to [`SharedBudget::answered`].
    pub async fn take_permit(&self, class: &str) -> Result<Permit, (Stop, Duration)> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let result = self.take_waiting(class).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// Reports the answer to a request that left at `sent_at` with `permit`
    /// and was answered at `answered_at`: a slice whose request arrived later
    /// than its hold assumed is held longer (see "Late arrivals").
    pub fn answered(&self, permit: &Permit, sent_at: Instant, answered_at: Instant) {
        let took = answered_at.saturating_duration_since(sent_at);
        let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let fastest_us = self
            .fastest_answer_us
            .fetch_min(took_us, Ordering::Relaxed)
            .min(took_us);
        let arrived_by = answered_at
            .checked_sub(Duration::from_micros(fastest_us))
            .map_or(sent_at, |t| t.max(sent_at));
        let margin = self.margin();
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        for &(window, id) in &permit.slices {
            let Some(hold) = holds.get_mut(&id) else {
                continue;
            };
            let needed = arrived_by.saturating_duration_since(hold.start)
                + self.windows[window].per
                + margin;
            if needed > hold.held + EXTEND_SLACK {
                hold.held = needed;
                let pool = self.pool.clone();
                tokio::spawn(async move {
                    if let Err(err) = table::extend_slice(&pool, id, needed).await {
                        tracing::debug!(error = %format!("{err:#}"), "A late slice could not be held longer.");
                    }
                });
            }
        }
    }

    /// The hold a trim must keep: no shorter than late answers made it.
    fn trimmed(&self, slice: &Slice, per: Duration, margin: Duration) -> Trim {
        let mut trim = slice.trim(per, margin);
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hold) = holds.get(&slice.id) {
            trim.held = trim.held.max(hold.held);
        }
        trim
    }

    async fn take_waiting(&self, class: &str) -> Result<Permit, (Stop, Duration)> {
        loop {
            if wait::shutting_down() {
                return Err((Stop::ShutDown, Duration::ZERO));
            }
            let pause = wait::race_shutdown(self.try_take(class), Duration::ZERO)
                .await
                .map_err(|stop| (stop, Duration::ZERO))?;
            let pause = match pause {
                Ok(spent) => return Ok(spent),
                Err(pause) => pause,
            };
            let lease_left = wait::lease_left(self.clock.now());
            wait::plan_wait(pause, Duration::ZERO, self.max_wait, lease_left)
                .map_err(|stop| (stop, pause))?;
            wait::sleep(pause).await.map_err(|stop| (stop, pause))?;
        }
    }

    /// Spends a permit of every window of `class` if each has one or can get
    /// a slice now; else `Err(wait)` until room may come back. Permits are
    /// spent all together or not at all.
    async fn try_take(&self, class: &str) -> Result<Permit, Duration> {
        let mut slices = self.slices.lock().await;
        let mut pause = Duration::ZERO;
        for (i, window) in self.windows.iter().enumerate() {
            // Once one window must wait, asking the others for slices now
            // would only hold their permits while this request waits.
            if !window.applies_to(class) || !pause.is_zero() {
                continue;
            }
            let ttl = slice_ttl(window.per);
            let now = self.clock.now();
            if slices[i].is_some_and(|s| s.usable(now, ttl)) {
                continue;
            }
            let margin = self.margin();
            let request = SliceRequest {
                key: &self.key,
                window: &window.name,
                limit: window.requests,
                want: slice_want(
                    self.waiting.load(Ordering::Relaxed),
                    slices[i].map(|s| (s.used, s.left)),
                    window.requests,
                ),
                hold: ttl + window.per + margin,
                trim: slices[i].map(|s| self.trimmed(&s, window.per, margin)),
            };
            let start = self.clock.now();
            let granted = match table::take_slice(&self.pool, &request).await {
                Ok(granted) => granted,
                Err(err) => {
                    tracing::warn!(budget = %self.key, window = %window.name, error = %format!("{err:#}"),
                        "The shared rate budget cannot be read; requests wait rather than risk the CRM's limit.");
                    return Err(DB_ERROR_PAUSE);
                }
            };
            // Given back in that transaction (or still there, if it failed:
            // then it expires as granted, which only holds room longer).
            slices[i] = None;
            match granted.id {
                Some(id) if granted.permits > 0 => {
                    self.note_hold(id, start, request.hold);
                    slices[i] = Some(Slice {
                        id,
                        start,
                        left: granted.permits,
                        used: 0,
                        last_use: None,
                    });
                }
                _ => {
                    let room_back = granted.retry_after.unwrap_or(window.per);
                    pause = pause.max(room_back.max(MIN_POLL));
                }
            }
        }
        if !pause.is_zero() {
            return Err(pause);
        }
        let now = self.clock.now();
        let mut ready = true;
        for (i, window) in self.windows.iter().enumerate() {
            if window.applies_to(class)
                && !slices[i].is_some_and(|s| s.usable(now, slice_ttl(window.per)))
            {
                // A slice's TTL ran out while another window's was granted.
                ready = false;
            }
        }
        if !ready {
            return Err(MIN_POLL);
        }
        let mut spent = Vec::new();
        for (i, window) in self.windows.iter().enumerate() {
            if let (true, Some(slice)) = (window.applies_to(class), slices[i].as_mut()) {
                slice.left -= 1;
                slice.used += 1;
                slice.last_use = Some(now);
                spent.push((i, slice.id));
            }
        }
        Ok(Permit {
            at: now,
            slices: spent,
        })
    }

    /// Remembers a new slice's hold, and forgets those long over.
    fn note_hold(&self, id: i64, start: Instant, held: Duration) {
        let now = self.clock.now();
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        holds.retain(|_, hold| hold.start + hold.held > now);
        holds.insert(id, Hold { start, held });
    }

    /// Gives back every slice this process holds, so the permits it did not
    /// spend come back at once (a run ending). Best effort: a slice not given
    /// back expires anyway.
    pub async fn release(&self) {
        let mut slices = self.slices.lock().await;
        let margin = self.margin();
        for (i, window) in self.windows.iter().enumerate() {
            let Some(slice) = slices[i].take() else {
                continue;
            };
            let trim = self.trimmed(&slice, window.per, margin);
            if let Err(err) =
                table::give_back_slice(&self.pool, &self.key, &window.name, trim).await
            {
                tracing::debug!(budget = %self.key, error = %format!("{err:#}"), "A slice was not given back; it expires.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_slice_lives_a_twentieth_of_its_window_within_bounds() {
        assert_eq!(slice_ttl(Duration::from_secs(10)), ms(500));
        assert_eq!(slice_ttl(Duration::from_secs(1)), ms(50));
        assert_eq!(
            slice_ttl(Duration::from_secs(86_400)),
            Duration::from_secs(1)
        );
        assert_eq!(slice_ttl(Duration::ZERO), ms(50));
    }

    #[test]
    fn a_slice_asks_for_one_permit_per_waiting_request_within_the_window() {
        assert_eq!(slice_want(0, None, 100), 1);
        assert_eq!(slice_want(8, None, 100), 8);
        assert_eq!(slice_want(500, None, 100), 100);
        // A daily window is not asked for every request.
        assert_eq!(slice_want(3, None, 250_000), 250);
        assert_eq!(slice_want(3, None, 0), 1);
    }

    #[test]
    fn a_slice_grows_while_demand_spends_it_and_shrinks_to_what_was_spent() {
        // Spent to the end: twice as many, up to a tenth of the window.
        assert_eq!(slice_want(1, Some((4, 0)), 100), 8);
        assert_eq!(slice_want(1, Some((8, 0)), 100), 10);
        // Not spent to the end (its TTL ran out): as many as were spent.
        assert_eq!(slice_want(1, Some((3, 5)), 100), 3);
        // Waiting requests always get a permit each.
        assert_eq!(slice_want(12, Some((3, 5)), 100), 12);
        // A window of ten grows by one at a time only through waiting requests.
        assert_eq!(slice_want(1, Some((1, 0)), 10), 1);
    }

    #[test]
    fn a_trimmed_slice_is_held_from_its_grant_until_its_last_use_has_left_the_window() {
        let start = Instant::now();
        let slice = Slice {
            id: 7,
            start,
            left: 2,
            used: 3,
            last_use: Some(start + ms(120)),
        };
        let trim = slice.trim(Duration::from_secs(10), ms(100));
        assert_eq!(
            trim,
            Trim {
                id: 7,
                used: 3,
                held: ms(120) + Duration::from_secs(10) + ms(100)
            }
        );
        let unused = Slice {
            used: 0,
            last_use: None,
            ..slice
        };
        assert_eq!(unused.trim(Duration::from_secs(10), ms(100)).used, 0);
    }

    #[test]
    fn a_slice_is_spent_only_within_its_ttl_and_while_permits_are_left() {
        let start = Instant::now();
        let slice = Slice {
            id: 1,
            start,
            left: 1,
            used: 0,
            last_use: None,
        };
        assert!(slice.usable(start + ms(49), ms(50)));
        assert!(!slice.usable(start + ms(50), ms(50)));
        assert!(!Slice { left: 0, ..slice }.usable(start, ms(50)));
    }
}
