//! The sandbox's clock: real time plus an offset that tests can move forward.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// One moment on the sandbox clock, with the search lag to apply to writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) instant: Instant,
    pub(crate) wall: DateTime<Utc>,
    pub(crate) lag: Duration,
}

/// Real time shifted by a simulated offset that only ever grows.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: AtomicU64,
}

impl Clock {
    fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }

    /// Monotonic "now", for windows and the search index lag.
    pub(crate) fn instant(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// Wall-clock "now", for record timestamps and the daily limit.
    pub(crate) fn wall(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }

    pub(crate) fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}
