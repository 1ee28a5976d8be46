//! The one integration-test binary: each module is a feature area.

mod check;
mod e2e;
mod run;
mod sandbox;
mod scripted;
mod store;
mod support;
mod template;
