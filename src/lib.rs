//! `engine`: a config-driven sync engine that pushes contact rows from a SQL
//! database (SQLite or PostgreSQL) into CRMs described by TOML files.
//!
//! # Layout
//! The pipeline has one module per stage (see `docs/DESIGN.md`):
//! `config` (raw TOML) → `plan` (validated, pure) → `store::claim` →
//! `template` (render) → `crm` (send, classify) → `store::record`.

/// Installs the process-wide rustls crypto provider (ring).
///
/// reqwest is built with `rustls-no-provider`, so a provider must be installed
/// before the first `reqwest::Client` is built, in the binary and in every test
/// binary. Calling it more than once is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub mod attempts;
pub mod change;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crm;
pub mod delete;
pub mod demo;
pub mod diagnostic;
pub mod engine;
pub mod fingerprint;
pub mod history;
pub mod init;
pub mod live;
pub mod metrics;
pub mod outcome;
pub mod plan;
pub mod preview;
pub mod ratelimit;
pub mod redact;
pub mod retry;
pub mod sandbox;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod template;
