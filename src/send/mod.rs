//! Talking to one CRM: authentication, pacing, sending one request with in-cycle
//! retries, and the upsert flows (single, batch, lookup-then-write) built from the
//! connector's TOML. Nothing here names a particular CRM.

mod auth;
mod batch;
mod body;
pub mod budget;
mod bulk;
mod client;
pub mod concurrency;
pub mod delete;
mod flow;
pub mod margin;
mod modes;
pub mod outcome;
pub mod probe;
pub mod ratelimit;
mod response;
pub mod retry;
mod row;
pub mod wait;

pub use client::{CrmClient, PreviewRequest, Reply};
pub use flow::execute;
pub use modes::execute_in_mode;
pub use row::{Failure, ReplyAction, RowJob, RowOutcome};
