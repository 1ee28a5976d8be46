//! Request counters for `GET /_sandbox/stats`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Counts per route pattern and per status, plus concurrency.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    requests: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    rate_limited: u64,
    in_flight: u64,
    max_in_flight: u64,
}

impl Stats {
    /// A request for `route` (e.g. `POST /v3/contacts`) has arrived.
    pub(crate) fn enter(&mut self, route: &str) {
        *self.requests.entry(route.to_owned()).or_default() += 1;
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
    }

    /// A request has left, answered or abandoned by its client.
    pub(crate) fn leave(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A response with `status` has been sent.
    pub(crate) fn answered(&mut self, status: u16) {
        *self.statuses.entry(status).or_default() += 1;
        if status == 429 {
            self.rate_limited += 1;
        }
    }

    /// Forgets all counts but the requests still in flight.
    pub(crate) fn reset(&mut self) {
        *self = Stats {
            in_flight: self.in_flight,
            max_in_flight: self.in_flight,
            ..Stats::default()
        };
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut statuses: BTreeMap<String, u64> = [("429".to_owned(), 0)].into();
        for (status, count) in &self.statuses {
            statuses.insert(status.to_string(), *count);
        }
        json!({
            "requests": self.requests,
            "statuses": statuses,
            "rate_limited": self.rate_limited,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
        })
    }
}
