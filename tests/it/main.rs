//! The one integration-test binary: each module is a feature area.

mod absurd;
mod auth;
mod batch;
mod budget;
mod changes;
mod check;
mod config_props;
mod connectors;
mod contract;
mod e2e;
mod failfast;
mod flows;
mod guide;
mod hostile;
mod init;
mod live;
mod payloads;
mod plan;
mod run;
mod sandbox;
mod scripted;
mod snapshot;
mod store;
mod support;
mod template;
