//! Closed choices a config file spells and the runtime acts on: their
//! spelling in the file already is the runtime value, so `config` parses
//! them (serde, JSON Schema) and the plan hands them to the runtime as they
//! are. A leaf: it imports nothing of the crate, so config and plan both
//! depend on it and on nothing through it.

use schemars::JsonSchema;
use serde::Deserialize;

/// What a sync may do to the CRM's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Create the record when the key is new, else update it.
    #[default]
    Upsert,
    /// Update records that exist; a key the CRM does not know is skipped
    /// (sync status `Skipped`, with the reason), never created.
    UpdateOnly,
    /// Create records for new keys; a record that exists is left untouched
    /// (sync status `Skipped`, its id recorded).
    CreateOnly,
}

/// What happens to the CRM record of a row that left the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnRemoved {
    /// Leave the CRM record as it is.
    #[default]
    Ignore,
    /// Delete (or archive) the CRM record through the connector's `[delete]`
    /// operation, if this mapping created or updated it.
    Archive,
}

/// Which HTTP redirects a connector follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Redirects {
    /// Follow none: a 3xx answer fails the request, naming where it pointed.
    #[default]
    None,
    /// Follow redirects to the same scheme, host and port only (at most 5).
    SameOrigin,
}

/// How the reset header's number is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetUnit {
    /// Seconds from now (Brevo's documented reading, Pipedrive).
    #[default]
    Seconds,
    /// Milliseconds from now.
    Milliseconds,
    /// A Unix timestamp in seconds (Intercom's `X-RateLimit-Reset`).
    EpochSeconds,
}

/// What a rule's response means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Success (id from `id_pointer` when present).
    Success,
    /// Success without an id in the body: find it with the `lookup` operation (Brevo's 204).
    Lookup,
    /// The record exists: run `update` on it (HubSpot's 409), with the id at the
    /// rule's `id_pointer` or in `message_regex`'s capture group.
    Update,
    /// Nothing found (for `lookup`): go on to `create`.
    NotFound,
    /// A transient failure: retry.
    Retry,
    /// Too fast: wait, spend no retry.
    RateLimited,
    /// A permanent failure: the row ends in Error with the message.
    Permanent,
    /// Send once more without the fields in `drop_fields`.
    DropFields,
}
