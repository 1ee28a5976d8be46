//! `engine`: a config-driven sync engine that pushes contact rows from a SQL
//! database (SQLite or PostgreSQL) into CRMs described by TOML files.
//!
//! # Map of the stages
//! config → plan → claim → render → send → record, one home each:
//! - **config** (`config`): raw TOML → typed structs, the JSON Schema gate;
//!   `source_file` keeps each file's text and the spans for file:line:column,
//!   `diagnostic` prints located errors, `redact` keeps secrets out of
//!   everything printed; `choices` holds the closed choices a file spells and
//!   the runtime acts on as they are.
//! - **plan** (`plan`, `fingerprint`, `change`): the validated, pure plan that `check`
//!   builds and `run` executes; fingerprints of a mapping and of a row, and
//!   whether a claimed row changed since the CRM confirmed it.
//! - **claim / record** (`store`): SQLite and PostgreSQL queues, leases,
//!   fenced write-backs, migrations and change triggers; `snapshot` diffs a
//!   source the engine may not alter against its own state table.
//! - **render** (`template`): strict handlebars, typed insertion, helpers.
//! - **send** (`send`): everything between a rendered job and a row's
//!   outcome, in one folder: `auth`, pacing (`ratelimit`, `margin`, the cross-process `budget`), adaptive
//!   `concurrency`, bounded `wait`s, one request with in-cycle retries
//!   (`client`), response classification (`outcome`), the flows (`flow`,
//!   `batch`, `bulk`, `modes`), `delete`s, and row retry timing (`retry`).
//!   One meaning per type along the way: a response's [`send::outcome::Outcome`]
//!   (success, retry, rate-limited, permanent), a request's
//!   [`send::ReplyAction`] after in-cycle retries, a record's
//!   [`send::RowOutcome`], with one [`send::Failure`] for what did not go
//!   through; `engine::decide` turns that into the row's
//!   [`store::RowUpdate`].
//! - **orchestration** (`engine`, `service`): one straight loop per mapping
//!   (`engine`; rendering a claim into jobs in `engine::render`, a row's next
//!   state in `engine::decide`, progress lines in `engine::progress`, the
//!   delete queue in `engine::deletes`, a snapshot mapping's batch in
//!   `engine::snapshot`); every mapping in one process with one limiter per
//!   connector.
//! - **around it**: `cli` (one function per subcommand), `check`, `live`,
//!   `preview` (`engine plan`), `history`, `attempts`, `metrics`, `progress`, `init`,
//!   `demo`, `sandbox` (the local CRM imitation), `clock`.

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
pub mod choices;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod diagnostic;
pub mod engine;
pub mod fingerprint;
mod hex;
pub mod history;
pub mod init;
pub mod live;
pub mod metrics;
pub mod plan;
pub mod preview;
pub mod progress;
pub mod redact;
pub mod sandbox;
pub mod send;
pub mod service;
pub mod snapshot;
pub mod source_file;
pub mod store;
pub mod template;
