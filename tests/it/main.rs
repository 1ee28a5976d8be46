//! The one integration-test binary: each module is a feature area.

mod auth;
mod batch;
mod changes;
mod check;
mod contract;
mod e2e;
mod flows;
mod payloads;
mod plan;
mod run;
mod sandbox;
mod scripted;
mod snapshot;
mod store;
mod support;
mod template;
