//! The one integration-test binary: each module is a feature area.
mod sandbox;
