//! The one integration-test binary: each module is a feature area.

mod absurd;
mod auth;
mod batch;
mod changes;
mod check;
mod config_props;
mod contract;
mod e2e;
mod flows;
mod hostile;
mod payloads;
mod plan;
mod run;
mod sandbox;
mod scripted;
mod snapshot;
mod store;
mod support;
mod template;
