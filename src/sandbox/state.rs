//! The state shared by all handlers.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::SandboxOptions;
use super::brevo::store::Store as BrevoStore;
use super::clock::{Clock, Now};
use super::common::lock;
use super::hubspot::store::Store as HubSpotStore;
use super::hubspot::validate::DEFAULT_PROPERTIES;
use super::limits::Limits;
use super::stats::Stats;

#[derive(Debug)]
pub(crate) struct App {
    pub(crate) opts: SandboxOptions,
    pub(crate) clock: Clock,
    /// HubSpot property names that exist (defaults plus `hubspot_properties`).
    pub(crate) hubspot_known: HashSet<String>,
    pub(crate) stats: Mutex<Stats>,
    pub(crate) limits: Mutex<Limits>,
    pub(crate) hubspot: Mutex<HubSpotStore>,
    pub(crate) brevo: Mutex<BrevoStore>,
}

impl App {
    pub(crate) fn new(opts: SandboxOptions) -> Self {
        let hubspot_known = DEFAULT_PROPERTIES
            .iter()
            .map(|name| name.to_string())
            .chain(
                opts.hubspot_properties
                    .iter()
                    .map(|name| name.trim().to_owned()),
            )
            .filter(|name| !name.is_empty())
            .collect();
        App {
            limits: Mutex::new(Limits::new(&opts)),
            opts,
            clock: Clock::default(),
            hubspot_known,
            stats: Mutex::default(),
            hubspot: Mutex::default(),
            brevo: Mutex::default(),
        }
    }

    pub(crate) fn now(&self) -> Now {
        Now {
            instant: self.clock.instant(),
            wall: self.clock.wall(),
            lag: Duration::from_millis(self.opts.search_lag_ms),
        }
    }

    pub(crate) fn hubspot_contacts(&self) -> Vec<Value> {
        lock(&self.hubspot).dump()
    }

    pub(crate) fn brevo_contacts(&self) -> Vec<Value> {
        self.brevo_settled().dump()
    }

    /// Brevo's store, with every import whose processing delay is over applied.
    pub(crate) fn brevo_settled(&self) -> std::sync::MutexGuard<'_, BrevoStore> {
        let mut store = lock(&self.brevo);
        super::brevo::apply::settle(&mut store, self.clock.instant(), self.clock.wall());
        store
    }

    pub(crate) fn stats_json(&self) -> Value {
        lock(&self.stats).to_json()
    }

    /// Forgets all contacts, counters and limiter state (not the clock).
    pub(crate) fn reset(&self) {
        *lock(&self.hubspot) = HubSpotStore::default();
        *lock(&self.brevo) = BrevoStore::default();
        *lock(&self.limits) = Limits::new(&self.opts);
        lock(&self.stats).reset();
    }
}
