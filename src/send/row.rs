//! What the flows share: the record to upsert ([`RowJob`]), how it ended
//! ([`RowOutcome`]), and the outcome of a reply that is not a success. Its own
//! file so that the flows (`flow.rs`, `batch.rs`, `modes.rs`) depend on it and
//! not on each other.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::client::ReplyAction;

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

/// How one record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Created or updated; the CRM's id when known.
    Synced { crm_id: Option<String> },
    /// Will not work as sent.
    Permanent(String),
    /// Failed transiently after in-cycle retries.
    Transient(String),
    /// Rate-limited: try again after `until`, without spending a retry.
    Deferred {
        until: DateTime<Utc>,
        reason: String,
    },
    /// Not written: the mapping's sync mode forbids it (see `modes.rs`).
    Skipped {
        /// Why, for the row's error column.
        reason: String,
        /// The existing record's id, when one exists.
        crm_id: Option<String>,
    },
    /// Not sent: the CRM already confirmed these values (same fingerprint).
    Unchanged,
}

/// The outcome of a reply that is not a success.
pub fn failure(action: ReplyAction, label: &str) -> RowOutcome {
    match action {
        ReplyAction::Permanent(reason) => RowOutcome::Permanent(reason),
        ReplyAction::Transient(reason) => RowOutcome::Transient(reason),
        ReplyAction::Deferred { until, reason } => RowOutcome::Deferred { until, reason },
        ReplyAction::NotFound => RowOutcome::Permanent(format!("{label}: not found")),
        ReplyAction::DropFields(_, reason) => RowOutcome::Permanent(reason),
        ReplyAction::Success | ReplyAction::Lookup | ReplyAction::Update(_) => {
            RowOutcome::Permanent(format!("{label}: this rule action is not supported here"))
        }
    }
}
