//! Raw types of `connectors/<crm>.toml`: everything about one CRM's HTTP API.
//!
//! These structs mirror the file exactly (`deny_unknown_fields` everywhere) and
//! generate `schemas/connector.schema.json`; `plan` turns them into validated
//! runtime values. Doc comments here are the user documentation of each key.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::choices::{Redirects, ResetUnit, RuleAction};

/// One CRM's API: where it is, how to authenticate, how fast it may be called,
/// and how to upsert one record or a batch of them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFile {
    /// Base URL every operation path is appended to, e.g. `https://api.hubapi.com`.
    /// The environment variable `<NAME>_BASE_URL` (upper-cased connector name)
    /// replaces it wholesale, e.g. to point at the sandbox.
    pub base_url: String,
    /// How requests are authenticated. Secrets are named by environment variable, never written here.
    pub auth: Auth,
    /// Total time allowed for one HTTP request, in seconds.
    #[serde(default = "default_timeout_secs")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: u64,
    /// Largest response body read, in bytes (default 8 MiB). A longer answer
    /// ends its request with an error naming this limit, read no further, so
    /// a runaway response cannot exhaust memory.
    #[serde(default = "default_max_response_bytes")]
    #[schemars(range(min = 1024, max = 1_073_741_824))]
    pub max_response_bytes: u64,
    /// Which HTTP redirects to follow: `none` (the default: a 3xx answer is a
    /// failure naming its `Location`) or `same_origin` (follow up to 5 that stay
    /// on the same scheme, host and port; credentials never leave the origin).
    #[serde(default)]
    pub redirects: Redirects,
    /// Requests in flight at once for this connector (across all its mappings).
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 256))]
    pub max_in_flight: u32,
    /// Halve the requests in flight when the CRM pushes back (429, 5xx,
    /// timeouts) and grow them back by one per round of normal answers, up to
    /// `max_in_flight` (AIMD). `false` keeps `max_in_flight` fixed.
    #[serde(default = "default_true")]
    pub adaptive_concurrency: bool,
    /// Static headers sent with every request (never secrets), e.g. `Intercom-Version = "2.14"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Largest request body this connector sends, in bytes. A rendered request
    /// over it is never sent: its row ends in `Error` ("payload too large"), and
    /// in a batch only the rows that do not fit fail. Unset: no limit.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_request_bytes: Option<u64>,
    /// Whether every engine process syncing through this connector with the
    /// same base URL and credentials takes its requests from one rate budget
    /// held in PostgreSQL (the table `engine_rate_budget`), so that together
    /// they never exceed `rate_limits`. Only on PostgreSQL (a SQLite queue has
    /// one host); `false` lets each process pace to the whole limit alone.
    #[serde(default = "default_true")]
    pub share_rate_budget: bool,
    /// Every rate-limit window the CRM enforces; all are respected at once.
    /// `requests` is the count on the plan named by `default_tier`.
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    /// The plan whose counts `rate_limits` gives, e.g. `free_starter`.
    /// Required when `tiers` is not empty.
    #[serde(default)]
    pub default_tier: Option<String>,
    /// The CRM's other plans, by name: each gives the request count of some
    /// `rate_limits` windows (by window name), e.g. `[tiers.professional]`
    /// `ten_secondly = 190`; a window a tier does not name keeps its
    /// `requests`. The environment variable `<NAME>_TIER` (upper-cased
    /// connector name) picks a tier (or the default one), and
    /// `<NAME>_RATE_LIMIT_<WINDOW>` overrides one window's count.
    #[serde(default)]
    pub tiers: BTreeMap<String, BTreeMap<String, u32>>,
    /// Response headers that report the CRM's own rate-limit count.
    #[serde(default)]
    pub rate_limit_headers: RateLimitHeaders,
    /// How failed requests are retried within one cycle.
    #[serde(default)]
    pub retry: Retry,
    /// Where the human-readable message is in an error body.
    #[serde(default)]
    pub errors: Errors,
    /// Default values for `params`, which mappings may override (e.g. `list_ids = []`).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Which flow upserts a record, and the requests it uses.
    pub upsert: Upsert,
    /// One harmless read that `engine check --live` sends to verify the base URL
    /// and the credentials, e.g. `{ method = "GET", path = "/contacts", query = { limit = "1" } }`.
    /// Its templates see `params` only.
    #[serde(default)]
    pub live_check: Option<Operation>,
    /// How a record is deleted or archived by its CRM id, for mappings with
    /// `on_removed = "archive"`. Optional: without it such mappings are refused.
    #[serde(default)]
    pub delete: Option<DeleteOperation>,
    /// An asynchronous bulk flow for large claims: submit many rows in one
    /// job, poll it until done, then confirm each row's record id. Rows the
    /// job does not confirm go through the per-row flow of `[upsert]`.
    #[serde(default)]
    pub bulk: Option<Bulk>,
}

fn default_timeout_secs() -> u64 {
    30
}
fn default_max_in_flight() -> u32 {
    4
}
fn default_max_response_bytes() -> u64 {
    8 * 1024 * 1024
}

/// How requests are authenticated. Every secret is the NAME of an environment variable.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No authentication.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// Environment variable holding the token, e.g. `HUBSPOT_ACCESS_TOKEN`.
        token_env: String,
        /// The word before the token, e.g. `Zoho-oauthtoken`; default `Bearer`.
        #[serde(default = "default_scheme")]
        scheme: String,
    },
    /// An API key in a named request header, e.g. Brevo's `api-key`.
    ApiKeyHeader {
        /// Header name, e.g. `api-key`, `Api-Token`, `x-api-token`.
        header: String,
        /// Environment variable holding the key, e.g. `BREVO_API_KEY`.
        key_env: String,
        /// Literal text before the key, e.g. `Token token=` (Freshsales, with
        /// `header = "Authorization"`).
        #[serde(default)]
        prefix: Option<String>,
    },
    /// An API key in a query parameter, e.g. Pipedrive's `api_token`.
    ApiKeyQuery {
        /// Query parameter name.
        param: String,
        /// Environment variable holding the key.
        key_env: String,
    },
    /// HTTP basic authentication.
    Basic {
        /// A literal user name (not a secret), e.g. Mailchimp accepts any.
        #[serde(default)]
        username: Option<String>,
        /// Environment variable holding the user name, when it is not literal.
        #[serde(default)]
        username_env: Option<String>,
        /// Environment variable holding the password or API key.
        password_env: String,
    },
    /// OAuth 2 refresh-token flow: an access token is fetched from `token_url`
    /// and refreshed before it expires.
    Oauth2Refresh {
        /// Token endpoint, e.g. `https://login.salesforce.com/services/oauth2/token`.
        token_url: String,
        /// Environment variable holding the client id.
        client_id_env: String,
        /// Environment variable holding the client secret.
        client_secret_env: String,
        /// Environment variable holding the refresh token.
        refresh_token_env: String,
        /// Optional scope parameter.
        #[serde(default)]
        scope: Option<String>,
        /// Where the access token is in the token response (JSON pointer).
        #[serde(default = "default_access_token_pointer")]
        access_token_pointer: String,
        /// Where the lifetime in seconds is in the token response; when absent the token is refreshed on 401.
        #[serde(default = "default_expires_in_pointer")]
        expires_in_pointer: String,
        /// When set, the base URL is taken from the token response (Salesforce's `/instance_url`).
        #[serde(default)]
        base_url_pointer: Option<String>,
        /// Refresh this many seconds before the token expires.
        #[serde(default = "default_refresh_margin_secs")]
        #[schemars(range(max = 86_400))]
        refresh_margin_secs: u64,
        /// The word before the access token in `Authorization`, e.g.
        /// `Zoho-oauthtoken`; default `Bearer`.
        #[serde(default = "default_scheme")]
        scheme: String,
    },
}

fn default_scheme() -> String {
    "Bearer".into()
}

fn default_access_token_pointer() -> String {
    "/access_token".into()
}
fn default_expires_in_pointer() -> String {
    "/expires_in".into()
}
fn default_refresh_margin_secs() -> u64 {
    60
}

/// One rate-limit window: at most `requests` per `per_secs` seconds (a rolling window).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// A name for logs, e.g. `ten_secondly`.
    pub name: String,
    /// Requests allowed in the window.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub requests: u32,
    /// Window length in seconds (at most 31 days).
    #[schemars(range(min = 1, max = 2_678_400))]
    pub per_secs: u64,
    /// Endpoint classes the window applies to (see `endpoint_class` on operations); `*` means all.
    #[serde(default = "default_all_classes")]
    pub endpoint_classes: Vec<String>,
}

fn default_all_classes() -> Vec<String> {
    vec!["*".into()]
}

/// Names of the headers through which the CRM reports its own count. All optional.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitHeaders {
    /// Requests left in the current window, e.g. `X-HubSpot-RateLimit-Remaining`.
    #[serde(default)]
    pub remaining: Option<String>,
    /// When the window frees up, e.g. `x-sib-ratelimit-reset`.
    #[serde(default)]
    pub reset: Option<String>,
    /// Unit of `reset`.
    #[serde(default)]
    pub reset_unit: ResetUnit,
    /// Header giving the window length in milliseconds, e.g. `X-HubSpot-RateLimit-Interval-Milliseconds`.
    #[serde(default)]
    pub window_ms: Option<String>,
    /// Header with the wait before retrying (seconds or HTTP date); default `Retry-After`.
    #[serde(default)]
    pub retry_after: Option<String>,
}

/// How one request is retried inside a cycle before the row is handed back to the
/// mapping's durable retry schedule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts per request within one cycle (1 = no immediate retry).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds.
    #[serde(default = "default_base_delay_ms")]
    #[schemars(range(max = 3_600_000))]
    pub base_delay_ms: u64,
    /// Upper bound of any retry delay, in milliseconds.
    #[serde(default = "default_max_delay_ms")]
    #[schemars(range(max = 3_600_000))]
    pub max_delay_ms: u64,
    /// Double the delay at each attempt.
    #[serde(default = "default_true")]
    pub exponential: bool,
    /// Randomise delays so parallel workers do not retry in lockstep.
    #[serde(default = "default_true")]
    pub jitter: bool,
    /// Statuses that are worth retrying (besides timeouts and connection errors).
    #[serde(default = "default_retryable_statuses")]
    #[schemars(inner(range(min = 100, max = 599)))]
    pub retryable_statuses: Vec<u16>,
    /// Statuses that mean "too fast": wait, and spend no retry.
    #[serde(default = "default_rate_limited_statuses")]
    #[schemars(inner(range(min = 100, max = 599)))]
    pub rate_limited_statuses: Vec<u16>,
    /// Longest wait taken in-process for a rate limit; a longer one hands the row
    /// back to the queue with its retry time instead.
    #[serde(default = "default_max_rate_limit_wait_secs")]
    #[schemars(range(max = 86_400))]
    pub max_rate_limit_wait_secs: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            base_delay_ms: default_base_delay_ms(),
            max_delay_ms: default_max_delay_ms(),
            exponential: true,
            jitter: true,
            retryable_statuses: default_retryable_statuses(),
            rate_limited_statuses: default_rate_limited_statuses(),
            max_rate_limit_wait_secs: default_max_rate_limit_wait_secs(),
        }
    }
}

fn default_max_attempts() -> u32 {
    3
}
fn default_base_delay_ms() -> u64 {
    500
}
fn default_max_delay_ms() -> u64 {
    30_000
}
fn default_true() -> bool {
    true
}
fn default_retryable_statuses() -> Vec<u16> {
    vec![408, 500, 502, 503, 504]
}
fn default_rate_limited_statuses() -> Vec<u16> {
    vec![429]
}
fn default_max_rate_limit_wait_secs() -> u64 {
    120
}

/// Where the message is in an error body.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Errors {
    /// JSON pointers tried in order; the first string found is the error message.
    #[serde(default = "default_message_pointers")]
    pub message_pointers: Vec<String>,
}

impl Default for Errors {
    fn default() -> Self {
        Self {
            message_pointers: default_message_pointers(),
        }
    }
}

fn default_message_pointers() -> Vec<String> {
    [
        "/message",
        "/errors/0/message",
        "/error",
        "/detail",
        "/0/message",
        "/title",
    ]
    .map(String::from)
    .to_vec()
}

/// Which flow upserts a record, and the requests it is made of.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upsert {
    /// The flow: `single` (one upsert request per record), `batch` (a batch upsert
    /// request for many records), or `lookup_then_write` (find the record by key,
    /// then update it or create it).
    pub mode: UpsertMode,
    /// The one-record upsert request (mode `single`).
    #[serde(default)]
    pub single: Option<Operation>,
    /// The batch upsert request (mode `batch`).
    #[serde(default)]
    pub batch: Option<BatchOperation>,
    /// Finds a record's id by its key (mode `lookup_then_write`, or a rule's `then = "lookup"`).
    /// Mappings with `mode = "update_only"` (and `create_only` without `create`) use it to
    /// tell whether a record exists: a 404 or a `not_found` rule means none.
    #[serde(default)]
    pub lookup: Option<Operation>,
    /// Creates a record (mode `lookup_then_write`). Mappings with `mode = "create_only"`
    /// send it alone: a rule saying `update` or `lookup` then means the record exists,
    /// and it is left untouched.
    #[serde(default)]
    pub create: Option<Operation>,
    /// Updates the record `{{id}}` (mode `lookup_then_write`, or a rule's `then = "update"`).
    /// Mappings with `mode = "update_only"` update found records with it.
    #[serde(default)]
    pub update: Option<Operation>,
}

/// The upsert flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpsertMode {
    /// One request per record that creates or updates (Brevo, Mailchimp, Salesforce, Attio).
    Single,
    /// One request for many records (HubSpot batch upsert).
    Batch,
    /// Look the key up, then update or create (Pipedrive, Intercom).
    LookupThenWrite,
}

/// HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

/// One HTTP request. Templates see `key` (the normalised match key), `fields`
/// (the mapping's rendered fields), `params`, `row` (all columns), `trace_id`
/// (the row's id) and, in `update`, `id` (the CRM record id).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// HTTP method.
    pub method: Method,
    /// Path appended to the base URL; interpolated values are percent-encoded,
    /// e.g. `/contacts/{{key}}`.
    pub path: String,
    /// Query parameters (templates).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers (templates, never secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body written as TOML; every string leaf is a template, and a leaf that
    /// is exactly `{{fields}}` inserts the rendered fields object.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Rate-limit class of this endpoint (see `rate_limits.endpoint_classes`).
    #[serde(default = "default_class")]
    pub endpoint_class: String,
    /// Where the record id is in a success response (JSON pointer), e.g. `/id`.
    #[serde(default)]
    pub id_pointer: Option<String>,
    /// Special cases checked before the default classification, in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_class() -> String {
    "default".into()
}

/// Deletes (or archives) records by id. Templates see `id` (the CRM id this
/// mapping recorded), `key` (the record's key as it was synced) and `params`.
/// With `item`, it is a batch request: `body` holds `{{items}}`, one `item` per
/// record, at most `max_items` per request. A 2xx or a 404 means the record is
/// gone; any other answer is classified like an upsert's.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteOperation {
    /// HTTP method, e.g. `DELETE`, or `POST` for a batch archive.
    pub method: Method,
    /// Path appended to the base URL, e.g. `/contacts/{{id}}`.
    pub path: String,
    /// Query parameters (templates).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers (templates, never secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body as TOML; for a batch, a leaf that is exactly `{{items}}`
    /// inserts the rendered items.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// One item per record for a batch request, e.g. `{ id = "{{id}}" }`.
    #[serde(default)]
    pub item: Option<serde_json::Value>,
    /// Most items one batch request may carry (HubSpot: 100); needs `item`.
    #[serde(default)]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_items: Option<u32>,
    /// Rate-limit class of this endpoint.
    #[serde(default = "default_class")]
    pub endpoint_class: String,
    /// Special cases checked before the default classification, in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A batch request: `body` holds `{{items}}`, each item rendered from `item`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOperation {
    /// HTTP method.
    pub method: Method,
    /// Path appended to the base URL.
    pub path: String,
    /// Query parameters (templates).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers (templates, never secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body as TOML; a leaf that is exactly `{{items}}` inserts the rendered items.
    pub body: serde_json::Value,
    /// One item per row, as TOML; templates see the same variables as a single operation.
    pub item: serde_json::Value,
    /// Most items one request may carry (HubSpot: 100).
    #[schemars(range(min = 1, max = 10_000))]
    pub max_items: u32,
    /// Rate-limit class of this endpoint.
    #[serde(default = "default_class")]
    pub endpoint_class: String,
    /// How per-item results are found in the response.
    pub results: BatchResults,
    /// Special cases checked before the default classification, in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Where per-item results and errors are in a batch response, and how they map back to rows.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchResults {
    /// Array of successful items, e.g. `/results`.
    pub results_pointer: String,
    /// Record id inside one result, e.g. `/id`.
    pub id_pointer: String,
    /// Value inside one result that identifies its row: the row's `trace_id` or its
    /// key (compared case-insensitively), e.g. `/objectWriteTraceId` or `/properties/email`.
    /// Leave it out when the CRM answers one result per input in input order
    /// without naming the input (Salesforce sObject Collections): results are then
    /// matched by position, and a response with another count of results matches none.
    #[serde(default)]
    pub match_pointer: Option<String>,
    /// Value inside one result that tells whether that input succeeded, e.g.
    /// `/success` (Salesforce). Unset: every result is a success.
    #[serde(default)]
    pub success_pointer: Option<String>,
    /// What `success_pointer` holds for a success, e.g. `true` or `"success"`.
    #[serde(default = "default_success_value")]
    pub success_value: serde_json::Value,
    /// Array of per-item errors, e.g. `/errors`.
    #[serde(default)]
    pub errors_pointer: Option<String>,
    /// Value (or array of values) inside one error that identifies its row(s) by
    /// `trace_id` or key, e.g. `/context/objectWriteTraceId`.
    #[serde(default)]
    pub error_match_pointer: Option<String>,
    /// Message inside one error, or inside a result that is not a success
    /// (Salesforce: `/errors/0/message`).
    #[serde(default = "default_error_message_pointer")]
    pub error_message_pointer: String,
    /// Regular expression for a per-item failure worth trying again later,
    /// matched against the failed item as compact JSON (code and message
    /// alike), e.g. `UNABLE_TO_LOCK_ROW` for Salesforce. Such a row goes back
    /// to the queue on its retry schedule instead of ending in `Error`.
    #[serde(default)]
    pub transient_item_regex: Option<String>,
}

fn default_error_message_pointer() -> String {
    "/message".into()
}

fn default_success_value() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

/// A special case: when the response has `status` (and the error message matches
/// `message_regex`, if given), do `then`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// HTTP status the rule applies to.
    #[schemars(range(min = 100, max = 599))]
    pub status: u16,
    /// Regular expression the error message must match; its first capture group, if
    /// any, is the existing record's id (HubSpot `Existing ID: (\d+)`).
    #[serde(default)]
    pub message_regex: Option<String>,
    /// For `then = "update"`: where the existing record's id is in the answer's
    /// body (JSON pointer), e.g. `/errors/0/meta/duplicate_profile_id`. Takes
    /// precedence over `message_regex`'s capture group.
    #[serde(default)]
    pub id_pointer: Option<String>,
    /// JSON pointer that must hold a value in the response body for the rule to
    /// apply, e.g. `/errors/0` for an API that answers 200 with an `errors`
    /// array (GraphQL).
    #[serde(default)]
    pub body_has: Option<String>,
    /// With `body_has`: the value that must be there, e.g. `body_has =
    /// "/0/errorCode"`, `body_value = "REQUEST_LIMIT_EXCEEDED"` (Salesforce
    /// names the error by a code beside its message).
    #[serde(default)]
    pub body_value: Option<serde_json::Value>,
    /// What the response means.
    pub then: RuleAction,
    /// For `retry` and `rate_limited`: how long to wait, in seconds (e.g. 3600 for
    /// HubSpot's daily limit, which no header announces).
    #[serde(default)]
    #[schemars(range(max = 604_800))]
    pub wait_secs: Option<u64>,
    /// For `drop_fields`: mapping fields to leave out before sending once more
    /// (Brevo rejects an `SMS` that another contact already has).
    #[serde(default)]
    pub drop_fields: Vec<String>,
}

/// An asynchronous bulk flow (e.g. Brevo's contact import): one `submit`
/// request carries many rows and answers a job id; `poll` reads the job until
/// it is done; `confirm` reads (page by page) what the job wrote and matches
/// it to the rows by key. Used only for mappings in `upsert` mode, and only
/// when a claim holds at least `min_rows` rows.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bulk {
    /// Fewest rows in one claim for the bulk flow to be used; a smaller claim
    /// takes the per-row flow (a job costs a submit, polls and listing pages,
    /// which pays only for many rows).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub min_rows: u32,
    /// Most rows in one job. A mapping whose claims are smaller than this
    /// claims up to this many rows at once while at least `min_rows` are due.
    #[schemars(range(min = 1, max = 10_000))]
    pub max_rows: u32,
    /// Connector params that environment variables may set for bulk requests,
    /// by param name, e.g. `{ list_ids = "BREVO_LIST_IDS" }`. The variable's
    /// value is read as JSON (`[7]`), or else as text; unset, the mapping's
    /// (or the connector's) param is used.
    #[serde(default)]
    pub params_env: BTreeMap<String, String>,
    /// Params the job cannot do without, e.g. `["list_ids"]` (a Brevo import
    /// needs a list): while one is empty (unset, `""`, `[]`), the mapping
    /// takes the per-row flow only.
    #[serde(default)]
    pub requires_params: Vec<String>,
    /// The request that starts a job.
    pub submit: BulkSubmit,
    /// The request that reads a job's status.
    pub poll: BulkPoll,
    /// The request that reads back what a job wrote.
    pub confirm: BulkConfirm,
}

/// The request that starts a bulk job: `body` holds `{{items}}`, one `item`
/// per row. Its templates see `items` and `params`; `item` sees what a
/// one-record operation sees (`key`, `fields`, `params`, `row`, `trace_id`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkSubmit {
    /// HTTP method.
    pub method: Method,
    /// Path appended to the base URL, e.g. `/contacts/import`.
    pub path: String,
    /// Query parameters (templates).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers (templates, never secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body as TOML; a leaf that is exactly `{{items}}` inserts the items.
    pub body: serde_json::Value,
    /// One item per row, as TOML.
    pub item: serde_json::Value,
    /// Where the job id is in the answer, e.g. `/processId`.
    pub job_id_pointer: String,
    /// Rate-limit class of this endpoint.
    #[serde(default = "default_class")]
    pub endpoint_class: String,
    /// Special cases checked before the default classification, in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Reads a job's status until it is done. Templates see `job` (the job id),
/// `params`. The first read is `first_after_ms` after the submit, then every
/// `interval_ms`, multiplied by `backoff` after each read up to
/// `max_interval_ms`: a status endpoint with a small budget (Brevo's 100
/// requests per hour) is read a few times per job, not every second.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkPoll {
    /// HTTP method.
    pub method: Method,
    /// Path appended to the base URL, e.g. `/processes/{{job}}`.
    pub path: String,
    /// Query parameters (templates).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers (templates, never secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Rate-limit class of this endpoint, e.g. `other` for Brevo's
    /// "all other endpoints" budget.
    #[serde(default = "default_class")]
    pub endpoint_class: String,
    /// Where the job's status is in the answer, e.g. `/status`.
    pub status_pointer: String,
    /// Statuses that mean the job is over and its results can be read.
    pub done_values: Vec<String>,
    /// Statuses that mean the job failed: every row takes the per-row flow.
    #[serde(default)]
    pub failed_values: Vec<String>,
    /// Wait before the first read, in milliseconds.
    #[serde(default = "default_first_poll_ms")]
    #[schemars(range(max = 3_600_000))]
    pub first_after_ms: u64,
    /// Wait between reads, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    #[schemars(range(min = 100, max = 3_600_000))]
    pub interval_ms: u64,
    /// Factor the wait grows by after each read (1 = a fixed interval).
    #[serde(default = "default_poll_backoff")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub backoff: f64,
    /// Longest wait between reads, in milliseconds.
    #[serde(default = "default_max_poll_interval_ms")]
    #[schemars(range(min = 100, max = 3_600_000))]
    pub max_interval_ms: u64,
    /// Most reads of one job; a job still running after them is left to
    /// the rows' next claim, which submits them again (an upsert).
    #[serde(default = "default_max_polls")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_polls: u32,
}

fn default_first_poll_ms() -> u64 {
    2_000
}
fn default_poll_interval_ms() -> u64 {
    2_000
}
fn default_poll_backoff() -> f64 {
    2.0
}
fn default_max_poll_interval_ms() -> u64 {
    60_000
}
fn default_max_polls() -> u32 {
    10
}

/// Reads back what a job wrote and matches it to the rows on their key: a
/// results document the CRM offers for the job (Salesforce Bulk 2.0, HubSpot
/// imports), or a listing of the records changed since the job started
/// (Brevo). Templates see `job` (the job id), `since` (when the job was
/// submitted, less `since_margin_secs`, RFC 3339 with milliseconds, UTC),
/// `offset` and `limit` (for paging) and `params`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkConfirm {
    /// HTTP method.
    pub method: Method,
    /// Path appended to the base URL, e.g. `/contacts` or `/jobs/{{job}}/results`.
    pub path: String,
    /// Query parameters (templates), e.g. `{ modifiedSince = "{{since}}",
    /// limit = "{{limit}}", offset = "{{offset}}" }`.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers (templates, never secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Rate-limit class of this endpoint.
    #[serde(default = "default_class")]
    pub endpoint_class: String,
    /// Where the records are in the answer, e.g. `/contacts`.
    pub records_pointer: String,
    /// Where a record's key is inside one record, e.g. `/email` (compared
    /// trimmed and case-insensitively).
    pub key_pointer: String,
    /// Where a record's id is inside one record, e.g. `/id`.
    pub id_pointer: String,
    /// Records per page (`{{limit}}`); pages are read, `{{offset}}` growing by
    /// this, until a page has fewer records or every row is matched. Unset:
    /// one request reads the whole document.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100_000))]
    pub page_size: Option<u32>,
    /// Most pages read for one job.
    #[serde(default = "default_max_pages")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_pages: u32,
    /// How far before the submit `{{since}}` lies, in seconds: room for the
    /// CRM's clock being behind ours. Records changed in between by others
    /// only make the listing longer.
    #[serde(default = "default_since_margin_secs")]
    #[schemars(range(max = 86_400))]
    pub since_margin_secs: u64,
}

fn default_max_pages() -> u32 {
    100
}
fn default_since_margin_secs() -> u64 {
    60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_unit_is_read_from_snake_case_config() {
        #[derive(Deserialize)]
        struct Cfg {
            unit: ResetUnit,
        }
        for (text, expected) in [
            ("unit = \"seconds\"", ResetUnit::Seconds),
            ("unit = \"milliseconds\"", ResetUnit::Milliseconds),
            ("unit = \"epoch_seconds\"", ResetUnit::EpochSeconds),
        ] {
            assert_eq!(toml::from_str::<Cfg>(text).unwrap().unit, expected);
        }
        let schema = serde_json::to_string(&schemars::schema_for!(ResetUnit)).unwrap();
        assert!(schema.contains("\"epoch_seconds\""), "{schema}");
    }
}
