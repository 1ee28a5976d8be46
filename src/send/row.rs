//! What the client and the flows share: the record to upsert ([`RowJob`]),
//! what one request's reply means ([`ReplyAction`]), why a request or a
//! record did not go through ([`Failure`]) and how a record ended
//! ([`RowOutcome`]). Its own file so that the flows (`flow.rs`, `batch.rs`,
//! `modes.rs`) and the client depend on it and not on each other.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// One record to upsert: its match key, its row id (sent as `trace_id`), and the
/// template context `{key, fields, params, row, trace_id}`.
#[derive(Debug, Clone)]
pub struct RowJob {
    /// Normalised key (trimmed, lower-cased).
    pub key: String,
    /// The row's id.
    pub trace_id: String,
    pub ctx: Value,
}

/// What one request (after in-cycle retries) means for the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyAction {
    /// Done; the id may be in the body.
    Success,
    /// Done, but the id must be looked up.
    Lookup,
    /// The record exists with this id: update it.
    Update(String),
    /// A lookup found nothing.
    NotFound,
    /// Rejected because of these fields: send once more without them.
    DropFields(Vec<String>, String),
    /// Did not go through.
    Failed(Failure),
}

impl ReplyAction {
    pub(crate) fn permanent(reason: impl Into<String>) -> Self {
        ReplyAction::Failed(Failure::Permanent(reason.into()))
    }

    pub(crate) fn transient(reason: impl Into<String>) -> Self {
        ReplyAction::Failed(Failure::Transient(reason.into()))
    }
}

/// Why a request, and so its records, did not go through. One meaning from
/// the reply to the row's next state: the engine turns it into an error, a
/// retry on the mapping's schedule, or a hand-back (see `engine::decide`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Will fail the same way again (the CRM's message, or ours).
    Permanent(String),
    /// Kept failing transiently after the in-cycle retries; the row's durable
    /// retry schedule takes over.
    Transient(String),
    /// Not sent, or rate-limited for longer than the run may wait: handed
    /// back until `until` without spending a retry.
    Deferred {
        until: DateTime<Utc>,
        /// Why, for the row's log line.
        reason: String,
    },
}

impl Failure {
    /// The text for the row's error column and log line.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Permanent(reason)
            | Failure::Transient(reason)
            | Failure::Deferred { reason, .. } => reason,
        }
    }
}

/// How one record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Created or updated; the CRM's id when known.
    Synced { crm_id: Option<String> },
    /// Not written: the mapping's sync mode forbids it (see `modes.rs`).
    Skipped {
        /// Why, for the row's error column.
        reason: String,
        /// The existing record's id, when one exists.
        crm_id: Option<String>,
    },
    /// Not sent: the CRM already confirmed these values (same fingerprint).
    Unchanged,
    /// Did not go through.
    Failed(Failure),
}

impl RowOutcome {
    /// A record that will fail the same way again.
    pub fn permanent(reason: impl Into<String>) -> Self {
        RowOutcome::Failed(Failure::Permanent(reason.into()))
    }

    /// A record to try again on the mapping's retry schedule.
    pub fn transient(reason: impl Into<String>) -> Self {
        RowOutcome::Failed(Failure::Transient(reason.into()))
    }
}

/// The outcome of a reply that is not a success, for a flow that has no use
/// for `label`'s other answers.
pub fn failure(action: ReplyAction, label: &str) -> RowOutcome {
    match action {
        ReplyAction::Failed(failure) => RowOutcome::Failed(failure),
        ReplyAction::NotFound => RowOutcome::permanent(format!("{label}: not found")),
        ReplyAction::DropFields(_, reason) => RowOutcome::permanent(reason),
        ReplyAction::Success | ReplyAction::Lookup | ReplyAction::Update(_) => {
            RowOutcome::permanent(format!("{label}: this rule action is not supported here"))
        }
    }
}
