//! Raw types of `mappings/<name>.toml`: one sync from a source table to one connector.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::choices::{OnRemoved, SyncMode};

/// One sync: which rows, which connector, when, and how each row becomes a CRM record.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// Name of the connector file (`connectors/<name>.toml`) this mapping syncs to.
    pub connector: String,
    /// The source table and its key.
    pub source: Source,
    /// Columns that carry the sync state; each defaults to the seed's naming.
    #[serde(default)]
    pub state: State,
    /// When and how much to sync, and how failed rows are retried.
    #[serde(default)]
    pub schedule: Schedule,
    /// What a field that renders empty (or from a NULL column) becomes.
    #[serde(default)]
    pub on_empty: OnEmptyChoice,
    /// What the sync may do to the CRM: create or update (`upsert`), only
    /// update records that exist (`update_only`), or only create missing ones
    /// (`create_only`). The last two need the connector's `upsert.lookup`.
    #[serde(default)]
    pub mode: SyncMode,
    /// `engine migrate` installs triggers that set the processing status to
    /// `Queued` when a row is inserted, or when a column the fields read
    /// changes (not when only other columns, or the engine's state, change).
    #[serde(default)]
    pub queue_on_change: bool,
    /// What happens in the CRM to a record whose row left the source (snapshot
    /// mode only): `ignore` leaves it, `archive` deletes or archives it through
    /// the connector's `[delete]` operation.
    #[serde(default)]
    pub on_removed: OnRemoved,
    /// Constants for the connector's templates, e.g. `list_ids = [3]`.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// CRM field <- template over the row's columns. Nested tables and arrays are
    /// allowed; every string leaf is a handlebars template.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The source: a table the engine keeps the sync state in (queue mode), or a
/// table, view or query it only reads (snapshot mode).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `queue`: sync the rows whose processing status is `Queued`, writing the
    /// state back to the table's own columns. `snapshot`: read the whole table,
    /// view or query each cycle and send the rows that are new, changed or gone;
    /// the engine never writes to the source and keeps the state in its own
    /// table (`engine_snapshot_state`).
    #[serde(default)]
    pub mode: SourceMode,
    /// Table (or, in snapshot mode, view) name, e.g. `contacts`. Snapshot mode
    /// takes either `table` or `query`.
    #[serde(default)]
    pub table: Option<String>,
    /// Snapshot mode: a `SELECT` whose rows are the source, e.g.
    /// `SELECT id, email, name FROM contacts WHERE active`. It must return the
    /// `id` and `key` columns and every column the fields read.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub query: Option<String>,
    /// Snapshot mode: the NAME of an environment variable holding the URL of
    /// the database that keeps this mapping's state (e.g. when the source is a
    /// read-only replica). Unset: `--state-database`, else the source database.
    #[serde(default)]
    pub state_database_env: Option<String>,
    /// Column the CRM matches records on (trimmed and lower-cased), e.g. `email`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Primary-key column.
    #[serde(default = "default_id")]
    pub id: String,
}

/// How the engine learns which rows to send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    /// Rows set to `Queued` by the application (or triggers) are synced; the
    /// state lives in the table's own columns.
    #[default]
    Queue,
    /// Each cycle compares the whole source with the engine's own state table
    /// and sends new and changed rows (and removed ones, with `on_removed`).
    Snapshot,
}

fn default_key() -> String {
    "email".into()
}
fn default_id() -> String {
    "id".into()
}

/// State columns. Unset names default to `<connector>_processing_status`,
/// `<connector>_sync_status`, `<connector>_contact_id`, `<connector>_processing_error`,
/// `<connector>_retry_count` and `<connector>_next_retry_at` (the seed's table
/// shares `retry_count` / `next_retry_at` between CRMs: name them explicitly there).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// `Queued` -> `Processing` -> `Complete` | `Error`; rows set to `Queued` are synced.
    #[serde(default)]
    pub processing_status: Option<String>,
    /// Set to `Complete` on success and `Error` on final failure.
    #[serde(default)]
    pub sync_status: Option<String>,
    /// The CRM's record id.
    #[serde(default)]
    pub crm_id: Option<String>,
    /// The CRM's error message; NULL on success.
    #[serde(default)]
    pub error: Option<String>,
    /// Failed attempts so far. Default `<connector>_retry_count`; the seed's
    /// table has a shared `retry_count`.
    #[serde(default)]
    pub retry_count: Option<String>,
    /// When a failed row may be tried again; while `Processing`, the lease
    /// deadline. Default `<connector>_next_retry_at`; the seed's table has a
    /// shared `next_retry_at`.
    #[serde(default)]
    pub next_retry_at: Option<String>,
    /// Optional: a hash of the values the mapping last sent, written only once
    /// the CRM confirmed them. A queued row whose values hash the same is
    /// recorded `Complete` without a request (`unchanged`). No default: unset,
    /// every queued row is sent.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// The seed's scheduler settings, with its defaults.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Seconds between cycles with `run --watch`.
    #[serde(default = "default_interval_secs")]
    #[schemars(range(min = 1, max = 604_800))]
    pub interval_secs: u64,
    /// Rows claimed per claim statement.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: u32,
    /// Processes allowed to run this mapping at once.
    #[serde(default = "default_max_instances")]
    #[schemars(range(min = 1, max = 64))]
    pub max_instances: u32,
    /// Retries after the first failure before a row ends in `Error`.
    #[serde(default = "default_max_retries")]
    #[schemars(range(max = 1000))]
    pub max_retries: u32,
    /// Delay before the first retry, in seconds (at most 30 days).
    #[serde(default = "default_retry_delay_secs")]
    #[schemars(range(max = 2_592_000))]
    pub retry_delay_secs: u64,
    /// Double the delay at each retry.
    #[serde(default = "default_true")]
    pub retry_exponential: bool,
    /// How long a claimed row may stay `Processing` before another run may reclaim it.
    #[serde(default = "default_lease_secs")]
    #[schemars(range(min = 1, max = 604_800))]
    pub lease_secs: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            interval_secs: default_interval_secs(),
            batch_size: default_batch_size(),
            max_instances: default_max_instances(),
            max_retries: default_max_retries(),
            retry_delay_secs: default_retry_delay_secs(),
            retry_exponential: true,
            lease_secs: default_lease_secs(),
        }
    }
}

fn default_interval_secs() -> u64 {
    300
}
fn default_batch_size() -> u32 {
    10
}
fn default_max_instances() -> u32 {
    1
}
fn default_max_retries() -> u32 {
    3
}
fn default_retry_delay_secs() -> u64 {
    300
}
fn default_true() -> bool {
    true
}
fn default_lease_secs() -> u64 {
    600
}

/// What a field that renders empty becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnEmptyChoice {
    /// Leave the field out of the request.
    #[default]
    Omit,
    /// Send `""` (HubSpot clears the value).
    EmptyString,
    /// Send JSON `null`.
    Null,
}

impl SyncMode {
    /// The name used in mapping files.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Upsert => "upsert",
            SyncMode::UpdateOnly => "update_only",
            SyncMode::CreateOnly => "create_only",
        }
    }
}
