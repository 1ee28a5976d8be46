//! Validating one connector file into a [`ConnectorPlan`].

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use serde_json::{Map, Value};

use super::auth::AuthPlan;
use super::pacing::{ClassifyPolicy, PacingPlan, RetryPlan};
use super::templates::{VariableUse, WHOLE_CONTEXT, check_tree};
use super::{Env, Redirects, RuleAction, SyncMode, is_env_name};
use crate::config::connector::{
    Auth, BatchOperation, Bulk, DeleteOperation, Method, Operation, RateLimit, Retry, Rule, Upsert,
    UpsertMode,
};
use crate::config::toml_json::{join_index, join_key};
use crate::config::{ConnectorFile, Loaded};
use crate::diagnostic::{Diagnostic, Severity};
use crate::redact::url_for_display;
use crate::source_file::SourceFile;
use crate::template::{CompiledPath, CompiledTree, Templates};

/// Variables connector templates may use.
pub const OPERATION_VARIABLES: &[&str] = &["key", "fields", "params", "row", "trace_id", "id"];
const BATCH_BODY_VARIABLES: &[&str] = &["items", "params"];
/// Variables the templates of a bulk job's `poll` and `confirm` may use.
pub const BULK_JOB_VARIABLES: &[&str] = &["job", "since", "offset", "limit", "params"];

/// A validated connector.
#[derive(Debug)]
pub struct ConnectorPlan {
    /// File stem, e.g. `hubspot`.
    pub name: String,
    /// Base URL from the file (the `<NAME>_BASE_URL` override is applied at run time).
    pub base_url: String,
    /// The variable that overrides `base_url`.
    pub base_url_env: String,
    /// Authentication (environment-variable names only).
    pub auth: AuthPlan,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Largest response body read, in bytes.
    pub max_response_bytes: u64,
    /// Which redirects are followed.
    pub redirects: Redirects,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Whether pushback from the CRM lowers the requests in flight (AIMD).
    pub adaptive_concurrency: bool,
    /// Share one rate budget across processes on PostgreSQL (see `crate::send::budget`).
    pub share_rate_budget: bool,
    pub headers: Vec<(String, String)>,
    /// The rate-limit windows in force and the margins around them.
    pub pacing: PacingPlan,
    /// Largest request body sent, in bytes.
    pub max_request_bytes: Option<usize>,
    /// In-cycle retry policy.
    pub retry: RetryPlan,
    /// What an answer's status and rate-limit headers mean.
    pub classify: ClassifyPolicy,
    /// Where error messages are.
    pub message_pointers: Vec<String>,
    pub params: Map<String, Value>,
    pub flow: Flow,
    /// The harmless read of `engine check --live`, if the file declares one.
    pub live_check: Option<OpPlan>,
    /// `upsert.lookup`, `upsert.create` and `upsert.update` whatever the
    /// flow, for the sync modes that forbid some writes.
    pub keyed: KeyedOps,
    /// Deletes records by id (`[delete]`), when the file declares it.
    pub delete: Option<DeletePlan>,
    /// The asynchronous bulk flow, when the connector has `[bulk]`.
    pub bulk: Option<BulkPlan>,
    /// Some template reads `row` (the claimed row's columns) directly, so
    /// claims return every column, not only those the mapping reads.
    pub reads_row: bool,
}

impl ConnectorPlan {
    /// How many rows one burst of requests carries, for the engine to have
    /// that many claimed and rendered before a rate-limit window opens.
    ///
    /// A burst is a window's whole budget sent at once: the rolling window
    /// allows it, so the rows for it must be in hand the moment the window
    /// opens, not claimed one batch at a time while the window ticks. Only
    /// windows the in-flight ceiling can send at once (`requests <=
    /// max_in_flight`) burst; a larger window (a daily budget, an overhead
    /// run with the window lifted) never opens all at once, and the ceiling
    /// paces the sends instead: `None`.
    ///
    /// The rows per request are the batch's `max_items` for a batch upsert,
    /// else one (the per-record flows and the lookup-first sync modes).
    pub fn burst_rows(&self, mode: SyncMode) -> Option<usize> {
        let (class, per_request) = match (&self.flow, mode) {
            (Flow::Batch { batch }, SyncMode::Upsert) => (&batch.op.class, batch.max_items.max(1)),
            (Flow::Batch { batch }, _) => (&batch.op.class, 1),
            (Flow::Single { upsert, .. }, _) => (&upsert.class, 1),
            (Flow::LookupThenWrite { lookup, .. }, _) => (&lookup.class, 1),
        };
        let burst = self
            .pacing
            .windows()
            .iter()
            .filter(|w| w.applies_to(class))
            .map(|w| w.requests as usize)
            .min()?;
        (burst <= self.max_in_flight).then(|| burst.max(1).saturating_mul(per_request))
    }
}

/// The one-record operations a connector declares, kept apart from its flow
/// for the mapping sync modes `update_only` and `create_only`.
#[derive(Debug, Default)]
pub struct KeyedOps {
    /// Finds a record's id by key; a 404 (or a `not_found` rule) means none.
    pub lookup: Option<OpPlan>,
    /// Creates a record; a rule saying `update` or `lookup` means it exists.
    pub create: Option<OpPlan>,
    /// Updates the record `{{id}}`.
    pub update: Option<OpPlan>,
}

/// How a record is upserted.
#[derive(Debug)]
pub enum Flow {
    /// One upsert request per record.
    Single {
        upsert: OpPlan,
        /// For rules that say `lookup`.
        lookup: Option<OpPlan>,
        /// For rules that say `update`.
        update: Option<OpPlan>,
    },
    /// One request for many records.
    Batch { batch: BatchPlan },
    /// Find, then update or create.
    LookupThenWrite {
        lookup: OpPlan,
        create: OpPlan,
        /// Updates `{{id}}`.
        update: OpPlan,
    },
}

/// A compiled request.
#[derive(Debug, Clone)]
pub struct OpPlan {
    /// `upsert.single`, `upsert.lookup`, ...
    pub label: String,
    pub method: reqwest::Method,
    /// Path template (values percent-encoded).
    pub path: CompiledPath,
    pub query: Vec<(String, CompiledTree)>,
    pub headers: Vec<(String, CompiledTree)>,
    pub body: Option<CompiledTree>,
    /// Rate-limit class.
    pub class: String,
    /// Where the id is in a success body.
    pub id_pointer: Option<String>,
    /// Answers that mean something other than their status class.
    pub rules: Vec<RulePlan>,
    /// Whether sending it twice has the effect of sending it once. False
    /// only for a lookup_then_write create with no rule that turns a conflict
    /// into an update or lookup: after a timeout or a 5xx it is not sent again
    /// at once (the row retries later, from the lookup).
    pub repeatable: bool,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct RulePlan {
    /// Status it applies to.
    pub status: u16,
    /// Message pattern; capture 1 is an id.
    pub regex: Option<Regex>,
    /// Where the existing id is in the body (for `update`).
    pub id_pointer: Option<String>,
    /// A pointer that must hold a value in the body.
    pub body_has: Option<String>,
    /// The value `body_has` must hold, if any.
    pub body_value: Option<Value>,
    /// What the answer means.
    pub then: RuleAction,
    /// Wait before the retry.
    pub wait: Option<Duration>,
    /// Fields to leave out on the resend.
    pub drop_fields: Vec<String>,
}

/// A compiled `[delete]` operation.
#[derive(Debug)]
pub struct DeletePlan {
    /// The request; a 404 answer counts as done.
    pub op: OpPlan,
    /// For a batch request: one item per record, and the most per request.
    pub batch: Option<(CompiledTree, usize)>,
}

/// A compiled `[bulk]` flow (see [`crate::config::connector::Bulk`]).
#[derive(Debug)]
pub struct BulkPlan {
    /// Fewest rows in a claim for the bulk flow.
    pub min_rows: usize,
    /// Most rows in one job.
    pub max_rows: usize,
    /// Params set by environment variables, over the mapping's.
    pub params_from_env: Map<String, Value>,
    /// Params that must not be empty for the flow to be used.
    pub requires_params: Vec<String>,
    /// Starts a job (its body holds `{{items}}`).
    pub submit: OpPlan,
    /// One item per row.
    pub item: CompiledTree,
    /// Where the job id is in the submit's answer.
    pub job_id_pointer: String,
    /// Reads the job's status.
    pub poll: OpPlan,
    /// Where the status is in the poll's answer.
    pub status_pointer: String,
    /// Statuses that mean done.
    pub done_values: Vec<String>,
    /// Statuses that mean failed.
    pub failed_values: Vec<String>,
    /// When to read the status.
    pub schedule: PollSchedule,
    /// Reads back what the job wrote.
    pub confirm: OpPlan,
    /// Where the records are in a confirm answer.
    pub records_pointer: String,
    /// A record's key.
    pub key_pointer: String,
    /// A record's id.
    pub id_pointer: String,
    /// Records per page, when the confirm pages.
    pub page_size: Option<usize>,
    /// Most pages per job.
    pub max_pages: usize,
    /// How far before the submit `{{since}}` lies.
    pub since_margin: Duration,
}

impl BulkPlan {
    /// The params bulk requests see for a mapping whose params are
    /// `mapping`: those, then those environment variables set.
    pub fn params(&self, mapping: &Map<String, Value>) -> Map<String, Value> {
        let mut params = mapping.clone();
        params.extend(self.params_from_env.clone());
        params
    }

    /// Whether a mapping with these params may use the flow: every
    /// `requires_params` entry holds something.
    pub fn usable_with(&self, mapping: &Map<String, Value>) -> bool {
        let params = self.params(mapping);
        self.requires_params
            .iter()
            .all(|name| match params.get(name) {
                None | Some(Value::Null) => false,
                Some(Value::String(s)) => !s.trim().is_empty(),
                Some(Value::Array(items)) => !items.is_empty(),
                Some(Value::Object(map)) => !map.is_empty(),
                Some(_) => true,
            })
    }
}

/// When a job's status is read: a pure function of the read's number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollSchedule {
    /// Before the first read.
    pub first_after: Duration,
    /// Between the first and the second read.
    pub interval: Duration,
    /// Growth of the interval after each read.
    pub backoff: f64,
    /// Longest interval.
    pub max_interval: Duration,
    /// Most reads.
    pub max_polls: u32,
}

impl PollSchedule {
    /// The wait before read number `poll` (0 = the first), `None` once
    /// `max_polls` reads were spent.
    pub fn delay(&self, poll: u32) -> Option<Duration> {
        if poll >= self.max_polls {
            return None;
        }
        if poll == 0 {
            return Some(self.first_after);
        }
        let exponent = i32::try_from(poll - 1).unwrap_or(i32::MAX);
        let factor = self.backoff.max(1.0).powi(exponent);
        let ms =
            (self.interval.as_millis() as f64 * factor).min(self.max_interval.as_millis() as f64);
        Some(Duration::from_millis(ms as u64).max(self.interval.min(self.max_interval)))
    }

    /// The longest a job may be waited for: every read's delay added up.
    pub fn total(&self) -> Duration {
        (0..self.max_polls)
            .filter_map(|poll| self.delay(poll))
            .sum()
    }
}

/// A compiled batch request.
#[derive(Debug)]
pub struct BatchPlan {
    /// Envelope request (its body holds `{{items}}`).
    pub op: OpPlan,
    /// One item per row.
    pub item: CompiledTree,
    /// Most items per request.
    pub max_items: usize,
    /// Where results are, and which failed items are retried.
    pub results: BatchResultsPlan,
}

/// Where per-item results and errors are in a batch answer, and how they
/// map back to rows (see [`crate::config::connector::BatchResults`]).
#[derive(Debug)]
pub struct BatchResultsPlan {
    /// The array of results.
    pub results_pointer: String,
    /// The record id inside one result.
    pub id_pointer: String,
    /// What inside one result names its row (trace id or key); `None`:
    /// results answer the inputs one for one, in order.
    pub match_pointer: Option<String>,
    /// What inside one result tells whether it succeeded; `None`: all did.
    pub success_pointer: Option<String>,
    /// What `success_pointer` holds for a success.
    pub success_value: Value,
    /// The array of per-item errors.
    pub errors_pointer: Option<String>,
    /// What inside one error names its row(s).
    pub error_match_pointer: Option<String>,
    /// The message inside one error or failed result.
    pub error_message_pointer: String,
    /// Per-item failures that are retried later, not final.
    pub transient_items: Option<Regex>,
}

struct Ctx<'a> {
    source: &'a SourceFile,
    name: &'a str,
    templates: &'a mut Templates,
    diagnostics: &'a mut Vec<Diagnostic>,
    /// Every variable the connector's templates read.
    uses: Vec<VariableUse>,
}

impl Ctx<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.diagnostics.push(
            self.source
                .diagnostic_at_value(Severity::Error, path, message)
                .hint(hint),
        );
    }
}

/// Validates one connector; `None` when it has errors.
pub fn build(
    loaded: &Loaded<ConnectorFile>,
    env: &dyn Env,
    used: bool,
    templates: &mut Templates,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<ConnectorPlan> {
    let before = diagnostics.iter().filter(|d| d.is_error()).count();
    let raw = &loaded.raw;
    let mut ctx = Ctx {
        source: &loaded.source,
        name: &loaded.name,
        templates,
        diagnostics,
        uses: Vec::new(),
    };
    let base_url_env = format!(
        "{}_BASE_URL",
        loaded.name.to_ascii_uppercase().replace('-', "_")
    );
    check_base_url(&mut ctx, &raw.base_url, &base_url_env);
    check_auth(&mut ctx, &raw.auth, env, used);
    check_headers(&mut ctx, &raw.headers);
    check_rate_limits(&mut ctx, &raw.rate_limits, &raw.upsert, raw.bulk.as_ref());
    let limits = super::tiers::resolve(
        &super::tiers::TierInput {
            connector: &loaded.name,
            source: &loaded.source,
            windows: &raw.rate_limits,
            default_tier: raw.default_tier.as_deref(),
            tiers: &raw.tiers,
        },
        env,
        ctx.diagnostics,
    );
    check_retry(&mut ctx, &raw.retry);
    check_pointers(
        &mut ctx,
        "errors.message_pointers",
        &raw.errors.message_pointers,
    );
    let (flow, keyed) = build_flow(&mut ctx, &raw.upsert);
    let live_check = raw
        .live_check
        .as_ref()
        .and_then(|op| build_op(&mut ctx, "live_check", op));
    let delete = raw.delete.as_ref().map(|op| build_delete(&mut ctx, op));
    let bulk = raw
        .bulk
        .as_ref()
        .map(|bulk| build_bulk(&mut ctx, bulk, env));
    let after = ctx.diagnostics.iter().filter(|d| d.is_error()).count();
    let flow = flow.filter(|_| after == before)?;
    let reads_row = ctx
        .uses
        .iter()
        .any(|u| u.name == "row" || u.name == WHOLE_CONTEXT);
    Some(ConnectorPlan {
        name: loaded.name.clone(),
        base_url: raw.base_url.trim_end_matches('/').to_string(),
        base_url_env,
        auth: AuthPlan::from_config(&raw.auth)?,
        timeout: Duration::from_secs(raw.timeout_secs),
        max_response_bytes: raw.max_response_bytes,
        redirects: raw.redirects,
        max_in_flight: raw.max_in_flight as usize,
        adaptive_concurrency: raw.adaptive_concurrency,
        share_rate_budget: raw.share_rate_budget,
        headers: raw
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        pacing: PacingPlan::new(limits),
        max_request_bytes: raw
            .max_request_bytes
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        retry: RetryPlan::from_config(&raw.retry),
        classify: ClassifyPolicy::from_config(&raw.retry, &raw.rate_limit_headers),
        message_pointers: raw.errors.message_pointers.clone(),
        params: raw.params.clone(),
        flow,
        live_check,
        keyed,
        delete: delete.flatten(),
        bulk: bulk.flatten(),
        reads_row,
    })
}

fn build_delete(ctx: &mut Ctx<'_>, op: &DeleteOperation) -> Option<DeletePlan> {
    let label = "delete";
    let batch = match (&op.item, op.max_items) {
        (Some(item), Some(max_items)) => {
            let uses = check_tree(
                ctx.source,
                "delete.item",
                item,
                Some(OPERATION_VARIABLES),
                ctx.diagnostics,
            );
            ctx.uses.extend(uses);
            if !op
                .body
                .as_ref()
                .is_some_and(|b| contains_exact(b, "{{items}}"))
            {
                ctx.error(
                    "delete.body",
                    "a batch delete's body must contain a leaf that is exactly \"{{items}}\"",
                    "e.g. body = { inputs = \"{{items}}\" }",
                );
            }
            Some(compile(ctx, "delete.item", item).map(|item| (item, max_items as usize)))
        }
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            ctx.error(
                "delete",
                "a batch delete needs both `item` and `max_items`",
                "set both for a batch request, or neither for one request per record",
            );
            None
        }
    };
    let body_variables = if batch.is_some() {
        BATCH_BODY_VARIABLES
    } else {
        OPERATION_VARIABLES
    };
    let mut request = build_request(
        ctx,
        RequestSource {
            label,
            method: op.method,
            path: &op.path,
            query: &op.query,
            headers: &op.headers,
            body: op.body.as_ref(),
            class: &op.endpoint_class,
            id_pointer: None,
            rules: &op.rules,
            sees: OPERATION_VARIABLES,
            body_sees: body_variables,
        },
    )?;
    // A record that is already gone is what a delete wants: done, not an error.
    request.rules.push(RulePlan {
        status: 404,
        regex: None,
        id_pointer: None,
        body_has: None,
        body_value: None,
        then: RuleAction::Success,
        wait: None,
        drop_fields: Vec::new(),
    });
    Some(DeletePlan {
        op: request,
        batch: match batch {
            Some(compiled) => Some(compiled?),
            None => None,
        },
    })
}

/// Checks a base URL: absolute http(s) with a host. The URL is named only
/// as [`url_for_display`] shows it, without its credentials.
pub fn base_url_problem(url: &str) -> Option<String> {
    let shown = url_for_display(url);
    match url::Url::parse(url) {
        Err(err) => Some(format!("`{shown}` is not a URL ({err})")),
        Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => Some(format!(
            "`{shown}` must use http or https, not `{}`",
            parsed.scheme()
        )),
        Ok(parsed) if parsed.host_str().is_none() => Some(format!("`{shown}` has no host")),
        Ok(parsed) if parsed.query().is_some() => {
            Some(format!("`{shown}` must not carry a query string"))
        }
        Ok(_) => None,
    }
}

/// A user name or password written into a URL is a secret in the file (or
/// in a `<NAME>_BASE_URL` variable that is printed and logged as a URL).
pub fn base_url_credentials(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let has_credentials = !parsed.username().is_empty() || parsed.password().is_some();
    has_credentials.then(|| {
        format!(
            "`{}` carries a user name or password; credentials never go in a URL",
            url_for_display(url)
        )
    })
}

fn check_base_url(ctx: &mut Ctx<'_>, url: &str, env_name: &str) {
    if let Some(problem) = base_url_problem(url) {
        let diagnostic = ctx
            .source
            .diagnostic_at_value(Severity::Error, "base_url", format!("bad base URL: {problem}"))
            .hint(format!("write an absolute URL such as `https://api.example.com/v3`; {env_name} may override it"));
        ctx.diagnostics
            .push(redact_url_credentials(diagnostic, url));
    } else if let Some(problem) = base_url_credentials(url) {
        let diagnostic = ctx
            .source
            .diagnostic_at_value(Severity::Error, "base_url", format!("literal secret in base_url: {problem}"))
            .hint("remove it from the URL and authenticate with the [auth] table (e.g. `kind = \"basic\"` with `password_env`)");
        ctx.diagnostics
            .push(redact_url_credentials(diagnostic, url));
    }
}

/// Hides every credential of `url` in the diagnostic's code frame.
fn redact_url_credentials(mut diagnostic: Diagnostic, url: &str) -> Diagnostic {
    let Ok(parsed) = url::Url::parse(url) else {
        return diagnostic;
    };
    let mut secrets: Vec<String> = vec![parsed.username().to_string()];
    secrets.extend(parsed.password().map(String::from));
    for (name, value) in parsed.query_pairs() {
        if crate::redact::is_secret_param(&name) {
            secrets.push(value.into_owned());
        }
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        diagnostic = diagnostic.redact(secret);
    }
    diagnostic
}

fn env_fields(auth: &Auth) -> Vec<(&'static str, &str)> {
    match auth {
        Auth::None => vec![],
        Auth::Bearer { token_env, .. } => vec![("auth.token_env", token_env)],
        Auth::ApiKeyHeader { key_env, .. } | Auth::ApiKeyQuery { key_env, .. } => {
            vec![("auth.key_env", key_env)]
        }
        Auth::Basic {
            username_env,
            password_env,
            ..
        } => {
            let mut fields = vec![("auth.password_env", password_env.as_str())];
            if let Some(user) = username_env {
                fields.push(("auth.username_env", user));
            }
            fields
        }
        Auth::Oauth2Refresh {
            client_id_env,
            client_secret_env,
            refresh_token_env,
            ..
        } => vec![
            ("auth.client_id_env", client_id_env),
            ("auth.client_secret_env", client_secret_env),
            ("auth.refresh_token_env", refresh_token_env),
        ],
    }
}

fn check_auth(ctx: &mut Ctx<'_>, auth: &Auth, env: &dyn Env, used: bool) {
    for (path, name) in env_fields(auth) {
        if !is_env_name(name) {
            let message = format!(
                "`{path}` must name an environment variable, and its value ({}) does not look like one",
                mask(name)
            );
            ctx.diagnostics.push(
                ctx.source
                    .diagnostic_at_value(Severity::Error, path, message)
                    .hint("if this is the secret itself, remove it from the file and put it in the environment or .env; write its variable name here, e.g. \"HUBSPOT_ACCESS_TOKEN\"")
                    .redact(name),
            );
        } else if used && env.var(name).is_none() {
            ctx.diagnostics.push(
                ctx.source
                    .diagnostic_at_value(
                        Severity::Warning,
                        path,
                        format!("environment variable `{name}` is not set"),
                    )
                    .hint(format!(
                        "set it in the environment or in .env before `engine run --connector {}`",
                        ctx.name
                    )),
            );
        }
    }
    match auth {
        Auth::Basic {
            username: None,
            username_env: None,
            ..
        } => ctx.error(
            "auth",
            "basic auth needs `username` or `username_env`",
            "e.g. `username = \"anystring\"` for Mailchimp",
        ),
        Auth::Oauth2Refresh {
            token_url, scheme, ..
        } => {
            if let Some(problem) =
                base_url_problem(token_url).or_else(|| base_url_credentials(token_url))
            {
                let diagnostic = ctx
                    .source
                    .diagnostic_at_value(Severity::Error, "auth.token_url", format!("bad token URL: {problem}"))
                    .hint("an absolute https URL, without credentials: they come from the `*_env` variables");
                ctx.diagnostics
                    .push(redact_url_credentials(diagnostic, token_url));
            }
            check_scheme(ctx, scheme);
        }
        Auth::Bearer { scheme, .. } => check_scheme(ctx, scheme),
        Auth::ApiKeyHeader {
            prefix: Some(prefix),
            ..
        } => check_prefix(ctx, prefix),
        _ => {}
    }
}

/// An authentication scheme is one word (RFC 9110 `token`), e.g. `Bearer`.
fn check_scheme(ctx: &mut Ctx<'_>, scheme: &str) {
    let is_token = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !is_token {
        // A scheme with a space in it may be a pasted `Bearer <token>`.
        ctx.diagnostics.push(
            ctx.source
                .diagnostic_at_value(
                    Severity::Error,
                    "auth.scheme",
                    format!("`auth.scheme` ({}) is not an authentication scheme", mask(scheme)),
                )
                .hint("one word such as `Bearer` or `Zoho-oauthtoken`; the token itself comes from the environment variable in `token_env`")
                .redact(scheme),
        );
    }
}

/// A key's prefix is short literal text such as `Token token=`: anything
/// longer may be a pasted secret, which config files never hold.
fn check_prefix(ctx: &mut Ctx<'_>, prefix: &str) {
    const LONGEST: usize = 24;
    if prefix.chars().count() > LONGEST || !prefix.chars().all(|c| c == ' ' || c.is_ascii_graphic())
    {
        ctx.diagnostics.push(
            ctx.source
                .diagnostic_at_value(
                    Severity::Error,
                    "auth.prefix",
                    format!(
                        "`auth.prefix` ({}) is not a short literal prefix ({LONGEST} characters at most)",
                        mask(prefix)
                    ),
                )
                .hint("e.g. `Token token=`; the key itself comes from the environment variable in `key_env`")
                .redact(prefix),
        );
    }
}

/// Names something that may be a secret without showing any of it: even its
/// first characters narrow a guess, and tell a reader which key leaked.
fn mask(text: &str) -> String {
    format!("<{} characters, hidden>", text.chars().count())
}

fn check_headers(ctx: &mut Ctx<'_>, headers: &BTreeMap<String, String>) {
    for (name, value) in headers {
        let path = join_key("headers", name);
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            ctx.error(
                &path,
                format!("`{name}` is not a valid header name"),
                "letters, digits and dashes",
            );
        }
        let lowered = name.to_ascii_lowercase();
        if lowered == "authorization"
            || lowered.contains("api-key")
            || lowered.contains("token")
            || value.starts_with("Bearer ")
        {
            ctx.diagnostics.push(
                ctx.source
                    .diagnostic_at_value(
                        Severity::Error,
                        &path,
                        format!(
                            "literal secret in header `{name}`: config files never hold secrets"
                        ),
                    )
                    .hint("use the [auth] table with an environment-variable name instead")
                    .redact(value),
            );
        }
    }
}

fn operation_classes<'a>(upsert: &'a Upsert, bulk: Option<&'a Bulk>) -> Vec<&'a str> {
    let single = [
        &upsert.single,
        &upsert.lookup,
        &upsert.create,
        &upsert.update,
    ];
    let mut classes: Vec<&str> = single
        .iter()
        .filter_map(|op| op.as_ref())
        .map(|op| op.endpoint_class.as_str())
        .collect();
    if let Some(batch) = &upsert.batch {
        classes.push(&batch.endpoint_class);
    }
    if let Some(bulk) = bulk {
        classes.push(&bulk.submit.endpoint_class);
        classes.push(&bulk.poll.endpoint_class);
        classes.push(&bulk.confirm.endpoint_class);
    }
    classes.sort_unstable();
    classes.dedup();
    classes
}

fn check_rate_limits(
    ctx: &mut Ctx<'_>,
    limits: &[RateLimit],
    upsert: &Upsert,
    bulk: Option<&Bulk>,
) {
    let classes = operation_classes(upsert, bulk);
    let mut names = Vec::new();
    for (index, limit) in limits.iter().enumerate() {
        let path = join_index("rate_limits", index);
        if names.contains(&limit.name.as_str()) {
            ctx.error(
                &join_key(&path, "name"),
                format!("duplicate rate limit name `{}`", limit.name),
                "give each window its own name",
            );
        }
        names.push(&limit.name);
        for (i, class) in limit.endpoint_classes.iter().enumerate() {
            if class != "*" && !classes.contains(&class.as_str()) {
                ctx.diagnostics.push(
                    ctx.source
                        .diagnostic_at_value(
                            Severity::Warning,
                            &join_index(&join_key(&path, "endpoint_classes"), i),
                            format!("no operation has endpoint_class `{class}`, so this window never applies"),
                        )
                        .hint(format!("operations use: {}", classes.join(", "))),
                );
            }
        }
    }
}

fn check_retry(ctx: &mut Ctx<'_>, retry: &Retry) {
    if retry.base_delay_ms > retry.max_delay_ms {
        ctx.error(
            "retry.base_delay_ms",
            "`retry.base_delay_ms` is above `retry.max_delay_ms`",
            "the cap must be at least the first delay",
        );
    }
    for (key, statuses) in [
        ("retryable_statuses", &retry.retryable_statuses),
        ("rate_limited_statuses", &retry.rate_limited_statuses),
    ] {
        for (index, status) in statuses.iter().enumerate() {
            if !(100..=599).contains(status) {
                ctx.error(
                    &join_index(&join_key("retry", key), index),
                    format!("{status} is not an HTTP status"),
                    "100 to 599",
                );
            }
        }
    }
}

fn check_pointers(ctx: &mut Ctx<'_>, path: &str, pointers: &[String]) {
    for (index, pointer) in pointers.iter().enumerate() {
        check_pointer(ctx, &join_index(path, index), pointer);
    }
}

fn check_pointer(ctx: &mut Ctx<'_>, path: &str, pointer: &str) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        ctx.error(
            path,
            format!("`{pointer}` is not a JSON pointer"),
            format!(
                "JSON pointers start with `/` and separate keys and indexes with `/`, e.g. `{}`",
                pointer_for(pointer)
            ),
        );
    }
}

/// The JSON pointer a user most likely meant: `$.data.items[0].id` (JSONPath,
/// as API docs write it) or `data.id` becomes `/data/items/0/id`, `/data/id`.
fn pointer_for(written: &str) -> String {
    let path = written.trim_start_matches('$').trim_start_matches('.');
    let keys: Vec<String> = path
        .replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|key| !key.is_empty())
        .map(|key| key.trim_matches(|c| c == '\'' || c == '"').to_string())
        .collect();
    format!("/{}", keys.join("/"))
}

/// The flow, and the one-record operations (when declared and valid) for
/// sync modes.
fn build_flow(ctx: &mut Ctx<'_>, upsert: &Upsert) -> (Option<Flow>, KeyedOps) {
    // `None`: not configured; `Some(None)`: configured, with errors reported.
    let mut build =
        |label: &str, op: &Option<Operation>| op.as_ref().map(|op| build_op(ctx, label, op));
    let lookup = build("upsert.lookup", &upsert.lookup);
    let update = build("upsert.update", &upsert.update);
    let mut create = build("upsert.create", &upsert.create);
    if let Some(Some(create)) = &mut create {
        create.repeatable = create
            .rules
            .iter()
            .any(|rule| matches!(rule.then, RuleAction::Update | RuleAction::Lookup));
    }
    let keyed = KeyedOps {
        lookup: lookup.clone().flatten(),
        create: create.clone().flatten(),
        update: update.clone().flatten(),
    };
    let single = build("upsert.single", &upsert.single);
    let batch = upsert.batch.as_ref().map(|op| build_batch(ctx, op));
    let all_ops = [&single, &lookup, &create, &update];
    for op in all_ops.iter().copied().flatten().flatten() {
        check_rule_targets(ctx, op, lookup.is_some(), update.is_some());
    }
    if let Some(Some(batch)) = &batch {
        check_rule_targets(ctx, &batch.op, lookup.is_some(), update.is_some());
    }
    let missing = |ctx: &mut Ctx<'_>, what: &str| {
        ctx.error(
            "upsert.mode",
            format!("mode `{:?}` needs `[upsert.{what}]`", upsert.mode).to_lowercase(),
            format!("add an [upsert.{what}] table, or choose another mode"),
        );
    };
    let flow = (|| match upsert.mode {
        UpsertMode::Single => match single {
            Some(upsert_op) => Some(Flow::Single {
                upsert: upsert_op?,
                lookup: lookup.flatten(),
                update: update.flatten(),
            }),
            None => {
                missing(ctx, "single");
                None
            }
        },
        UpsertMode::Batch => match batch {
            Some(batch) => Some(Flow::Batch { batch: batch? }),
            None => {
                missing(ctx, "batch");
                None
            }
        },
        UpsertMode::LookupThenWrite => {
            for (op, what) in [
                (&lookup, "lookup"),
                (&create, "create"),
                (&update, "update"),
            ] {
                if op.is_none() {
                    missing(ctx, what);
                }
            }
            Some(Flow::LookupThenWrite {
                lookup: lookup??,
                create: create??,
                update: update??,
            })
        }
    })();
    (flow, keyed)
}

fn check_rule_targets(ctx: &mut Ctx<'_>, op: &OpPlan, has_lookup: bool, has_update: bool) {
    for (index, rule) in op.rules.iter().enumerate() {
        let path = join_key(&join_index(&join_key(&op.label, "rules"), index), "then");
        if rule.then == RuleAction::DropFields && rule.drop_fields.is_empty() {
            ctx.error(
                &path,
                "`then = \"drop_fields\"` needs `drop_fields`",
                "e.g. drop_fields = [\"SMS\"]",
            );
        }
        if rule.then == RuleAction::Lookup && !has_lookup {
            ctx.error(
                &path,
                "`then = \"lookup\"` needs an [upsert.lookup] operation",
                "add [upsert.lookup] to find the record's id",
            );
        }
        if rule.then == RuleAction::Update && !has_update {
            ctx.error(
                &path,
                "`then = \"update\"` needs an [upsert.update] operation",
                "add [upsert.update] with `{{id}}` in its path",
            );
        }
        let captures_id = rule.regex.as_ref().is_some_and(|r| r.captures_len() >= 2);
        if rule.then == RuleAction::Update && rule.id_pointer.is_none() && !captures_id {
            ctx.error(
                &path,
                "`then = \"update\"` needs to know where the existing id is: an `id_pointer` into the answer, or a `message_regex` with a capture group",
                "e.g. id_pointer = \"/errors/0/meta/duplicate_id\", or message_regex = 'Existing ID: (\\d+)'",
            );
        }
        if rule.then != RuleAction::Update && rule.id_pointer.is_some() {
            ctx.error(
                &join_key(
                    &join_index(&join_key(&op.label, "rules"), index),
                    "id_pointer",
                ),
                "a rule's `id_pointer` is read only by `then = \"update\"`",
                "remove it, or write then = \"update\"",
            );
        }
    }
}

fn method(m: Method) -> reqwest::Method {
    match m {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    }
}

fn build_op(ctx: &mut Ctx<'_>, label: &str, op: &Operation) -> Option<OpPlan> {
    build_request(
        ctx,
        RequestSource {
            label,
            method: op.method,
            path: &op.path,
            query: &op.query,
            headers: &op.headers,
            body: op.body.as_ref(),
            class: &op.endpoint_class,
            id_pointer: op.id_pointer.clone(),
            rules: &op.rules,
            sees: OPERATION_VARIABLES,
            body_sees: OPERATION_VARIABLES,
        },
    )
}

fn build_batch(ctx: &mut Ctx<'_>, op: &BatchOperation) -> Option<BatchPlan> {
    let label = "upsert.batch";
    let uses = check_tree(
        ctx.source,
        &join_key(label, "item"),
        &op.item,
        Some(OPERATION_VARIABLES),
        ctx.diagnostics,
    );
    ctx.uses.extend(uses);
    let results = &op.results;
    check_pointer(
        ctx,
        "upsert.batch.results.results_pointer",
        &results.results_pointer,
    );
    check_pointer(ctx, "upsert.batch.results.id_pointer", &results.id_pointer);
    if let Some(p) = &results.match_pointer {
        check_pointer(ctx, "upsert.batch.results.match_pointer", p);
    }
    if let Some(p) = &results.success_pointer {
        check_pointer(ctx, "upsert.batch.results.success_pointer", p);
    }
    check_pointer(
        ctx,
        "upsert.batch.results.error_message_pointer",
        &results.error_message_pointer,
    );
    if let Some(p) = &results.errors_pointer {
        check_pointer(ctx, "upsert.batch.results.errors_pointer", p);
    }
    if let Some(p) = &results.error_match_pointer {
        check_pointer(ctx, "upsert.batch.results.error_match_pointer", p);
    }
    let transient_items = results.transient_item_regex.as_ref().and_then(|pattern| {
        compile_regex(ctx, "upsert.batch.results.transient_item_regex", pattern)
    });
    if !contains_exact(&op.body, "{{items}}") {
        ctx.error(
            "upsert.batch.body",
            "the batch body must contain a leaf that is exactly \"{{items}}\"",
            "e.g. body = { inputs = \"{{items}}\" }",
        );
    }
    let item = compile(ctx, &format!("{label}.item"), &op.item);
    let request = build_request(
        ctx,
        RequestSource {
            label,
            method: op.method,
            path: &op.path,
            query: &op.query,
            headers: &op.headers,
            body: Some(&op.body),
            class: &op.endpoint_class,
            id_pointer: None,
            rules: &op.rules,
            sees: OPERATION_VARIABLES,
            body_sees: BATCH_BODY_VARIABLES,
        },
    );
    Some(BatchPlan {
        op: request?,
        item: item?,
        max_items: op.max_items as usize,
        results: BatchResultsPlan {
            results_pointer: results.results_pointer.clone(),
            id_pointer: results.id_pointer.clone(),
            match_pointer: results.match_pointer.clone(),
            success_pointer: results.success_pointer.clone(),
            success_value: results.success_value.clone(),
            errors_pointer: results.errors_pointer.clone(),
            error_match_pointer: results.error_match_pointer.clone(),
            error_message_pointer: results.error_message_pointer.clone(),
            transient_items,
        },
    })
}

fn build_bulk(ctx: &mut Ctx<'_>, bulk: &Bulk, env: &dyn Env) -> Option<BulkPlan> {
    let label = "bulk";
    if bulk.min_rows > bulk.max_rows {
        ctx.error(
            "bulk.min_rows",
            format!(
                "`bulk.min_rows` ({}) is above `bulk.max_rows` ({}), so the bulk flow never runs",
                bulk.min_rows, bulk.max_rows
            ),
            "a job must be able to hold `min_rows` rows",
        );
    }
    let mut params_from_env = Map::new();
    for (param, name) in &bulk.params_env {
        if !is_env_name(name) {
            ctx.error(
                &join_key("bulk.params_env", param),
                format!("`{name}` is not an environment variable name"),
                "upper-case letters, digits and `_`, e.g. BREVO_LIST_IDS",
            );
            continue;
        }
        if let Some(value) = env.var(name) {
            let value = serde_json::from_str(value.trim()).unwrap_or(Value::String(value));
            params_from_env.insert(param.clone(), value);
        }
    }
    // The submit: a batch-like envelope around one item per row.
    let submit = &bulk.submit;
    let uses = check_tree(
        ctx.source,
        "bulk.submit.item",
        &submit.item,
        Some(OPERATION_VARIABLES),
        ctx.diagnostics,
    );
    ctx.uses.extend(uses);
    if !contains_exact(&submit.body, "{{items}}") {
        ctx.error(
            "bulk.submit.body",
            "the bulk submit body must contain a leaf that is exactly \"{{items}}\"",
            "e.g. body = { jsonBody = \"{{items}}\" }",
        );
    }
    check_pointer(ctx, "bulk.submit.job_id_pointer", &submit.job_id_pointer);
    let item = compile(ctx, "bulk.submit.item", &submit.item);
    let submit_op = build_request(
        ctx,
        RequestSource {
            label: &join_key(label, "submit"),
            method: submit.method,
            path: &submit.path,
            query: &submit.query,
            headers: &submit.headers,
            body: Some(&submit.body),
            class: &submit.endpoint_class,
            id_pointer: None,
            rules: &submit.rules,
            sees: OPERATION_VARIABLES,
            body_sees: BATCH_BODY_VARIABLES,
        },
    );
    // The poll.
    let poll = &bulk.poll;
    check_pointer(ctx, "bulk.poll.status_pointer", &poll.status_pointer);
    if poll.done_values.is_empty() {
        ctx.error(
            "bulk.poll.done_values",
            "`bulk.poll.done_values` is empty, so no job would ever be done",
            "e.g. done_values = [\"completed\"]",
        );
    }
    if poll.interval_ms > poll.max_interval_ms {
        ctx.error(
            "bulk.poll.interval_ms",
            "`bulk.poll.interval_ms` is above `bulk.poll.max_interval_ms`",
            "the cap must be at least the first interval",
        );
    }
    if !poll.backoff.is_finite() || !(1.0..=10.0).contains(&poll.backoff) {
        ctx.error(
            "bulk.poll.backoff",
            format!(
                "`bulk.poll.backoff` is {}; it must be 1 to 10",
                poll.backoff
            ),
            "1 keeps the interval fixed, 2 doubles it after each read",
        );
    }
    let poll_op = build_request(
        ctx,
        RequestSource {
            label: &join_key(label, "poll"),
            method: poll.method,
            path: &poll.path,
            query: &poll.query,
            headers: &poll.headers,
            body: None,
            class: &poll.endpoint_class,
            id_pointer: None,
            rules: &[],
            sees: BULK_JOB_VARIABLES,
            body_sees: BULK_JOB_VARIABLES,
        },
    );
    // The confirm.
    let confirm = &bulk.confirm;
    for (key, pointer) in [
        ("records_pointer", &confirm.records_pointer),
        ("key_pointer", &confirm.key_pointer),
        ("id_pointer", &confirm.id_pointer),
    ] {
        check_pointer(ctx, &join_key("bulk.confirm", key), pointer);
    }
    let confirm_op = build_request(
        ctx,
        RequestSource {
            label: &join_key(label, "confirm"),
            method: confirm.method,
            path: &confirm.path,
            query: &confirm.query,
            headers: &confirm.headers,
            body: None,
            class: &confirm.endpoint_class,
            id_pointer: None,
            rules: &[],
            sees: BULK_JOB_VARIABLES,
            body_sees: BULK_JOB_VARIABLES,
        },
    );
    Some(BulkPlan {
        min_rows: bulk.min_rows as usize,
        max_rows: bulk.max_rows as usize,
        params_from_env,
        requires_params: bulk.requires_params.clone(),
        submit: submit_op?,
        item: item?,
        job_id_pointer: submit.job_id_pointer.clone(),
        poll: poll_op?,
        status_pointer: poll.status_pointer.clone(),
        done_values: poll.done_values.clone(),
        failed_values: poll.failed_values.clone(),
        schedule: PollSchedule {
            first_after: Duration::from_millis(poll.first_after_ms),
            interval: Duration::from_millis(poll.interval_ms),
            backoff: poll.backoff,
            max_interval: Duration::from_millis(poll.max_interval_ms),
            max_polls: poll.max_polls,
        },
        confirm: confirm_op?,
        records_pointer: confirm.records_pointer.clone(),
        key_pointer: confirm.key_pointer.clone(),
        id_pointer: confirm.id_pointer.clone(),
        page_size: confirm.page_size.map(|n| n as usize),
        max_pages: confirm.max_pages as usize,
        since_margin: Duration::from_secs(confirm.since_margin_secs),
    })
}

fn contains_exact(tree: &Value, text: &str) -> bool {
    match tree {
        Value::String(s) => s.trim() == text,
        Value::Array(items) => items.iter().any(|v| contains_exact(v, text)),
        Value::Object(map) => map.values().any(|v| contains_exact(v, text)),
        _ => false,
    }
}

/// One request as the file writes it, and what its templates may read.
struct RequestSource<'a> {
    /// Where it is in the file, e.g. `upsert.single`, `bulk.poll`.
    label: &'a str,
    method: Method,
    path: &'a str,
    query: &'a BTreeMap<String, String>,
    headers: &'a BTreeMap<String, String>,
    body: Option<&'a Value>,
    /// Rate-limit class.
    class: &'a str,
    /// Where the id is in a success body.
    id_pointer: Option<String>,
    rules: &'a [Rule],
    /// What the path, query and headers may read: a row's variables, or a
    /// bulk job's for its poll and confirm.
    sees: &'a [&'a str],
    /// What the body may read (a batch body reads `items`).
    body_sees: &'a [&'a str],
}

/// Checks and compiles one request.
fn build_request(ctx: &mut Ctx<'_>, request: RequestSource<'_>) -> Option<OpPlan> {
    let RequestSource {
        label,
        method: m,
        path,
        query,
        headers,
        body,
        class,
        id_pointer,
        rules,
        sees: variables,
        body_sees: body_variables,
    } = request;
    let path_key = join_key(label, "path");
    let uses = check_tree(
        ctx.source,
        &path_key,
        &Value::String(path.to_string()),
        Some(variables),
        ctx.diagnostics,
    );
    ctx.uses.extend(uses);
    if !path.starts_with('/') {
        ctx.error(
            &path_key,
            format!("path `{path}` must start with `/`"),
            "it is appended to base_url",
        );
    }
    if let Some(pointer) = &id_pointer {
        check_pointer(ctx, &join_key(label, "id_pointer"), pointer);
    }
    let compiled_path = ctx
        .templates
        .compile_path(&format!("{}:{path_key}", ctx.name), path)
        .ok();
    let query = compile_pairs(ctx, &join_key(label, "query"), query, variables);
    let headers = compile_pairs(ctx, &join_key(label, "headers"), headers, variables);
    let body = match body {
        Some(tree) => {
            let key = join_key(label, "body");
            let uses = check_tree(
                ctx.source,
                &key,
                tree,
                Some(body_variables),
                ctx.diagnostics,
            );
            ctx.uses.extend(uses);
            Some(compile(ctx, &key, tree)?)
        }
        None => None,
    };
    let mut rules = build_rules(ctx, label, rules);
    if label == "upsert.lookup" {
        // A lookup that answers 404 found nothing; that is not an error.
        rules.push(RulePlan {
            status: 404,
            regex: None,
            id_pointer: None,
            body_has: None,
            body_value: None,
            then: RuleAction::NotFound,
            wait: None,
            drop_fields: Vec::new(),
        });
    }
    Some(OpPlan {
        label: label.to_string(),
        method: method(m),
        path: compiled_path?,
        query: query?,
        headers: headers?,
        body,
        class: class.to_string(),
        id_pointer,
        rules,
        repeatable: true,
    })
}

fn compile_pairs(
    ctx: &mut Ctx<'_>,
    base: &str,
    pairs: &BTreeMap<String, String>,
    variables: &[&str],
) -> Option<Vec<(String, CompiledTree)>> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        let key = join_key(base, name);
        let tree = Value::String(value.clone());
        let uses = check_tree(ctx.source, &key, &tree, Some(variables), ctx.diagnostics);
        ctx.uses.extend(uses);
        out.push((name.clone(), compile(ctx, &key, &tree)?));
    }
    Some(out)
}

/// Compiles a tree whose problems were already reported by `check_tree`.
fn compile(ctx: &mut Ctx<'_>, key: &str, tree: &Value) -> Option<CompiledTree> {
    ctx.templates
        .compile_tree(&format!("{}:{key}", ctx.name), tree)
        .ok()
}

/// `pattern` compiled, or an error at `path` (whose last key names it).
fn compile_regex(ctx: &mut Ctx<'_>, path: &str, pattern: &str) -> Option<Regex> {
    match Regex::new(pattern) {
        Ok(regex) => Some(regex),
        Err(err) => {
            let first = err
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .to_string();
            let key = path.rsplit('.').next().unwrap_or(path);
            ctx.error(
                path,
                format!("`{key}` does not compile: {first}"),
                "Rust regex syntax; write it as a TOML literal string '...'",
            );
            None
        }
    }
}

fn build_rules(ctx: &mut Ctx<'_>, label: &str, rules: &[Rule]) -> Vec<RulePlan> {
    let mut out = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let rule_path = join_index(&join_key(label, "rules"), index);
        if let Some(pointer) = &rule.body_has {
            check_pointer(ctx, &join_key(&rule_path, "body_has"), pointer);
        }
        if let Some(pointer) = &rule.id_pointer {
            check_pointer(ctx, &join_key(&rule_path, "id_pointer"), pointer);
        }
        if rule.body_value.is_some() && rule.body_has.is_none() {
            ctx.error(
                &join_key(&rule_path, "body_value"),
                "`body_value` needs `body_has`, the pointer where the value must be",
                "e.g. body_has = \"/0/errorCode\", body_value = \"REQUEST_LIMIT_EXCEEDED\"",
            );
        }
        let path = join_key(&rule_path, "message_regex");
        let regex = match &rule.message_regex {
            Some(pattern) => match compile_regex(ctx, &path, pattern) {
                Some(regex) => Some(regex),
                None => continue,
            },
            None => None,
        };
        out.push(RulePlan {
            status: rule.status,
            regex,
            id_pointer: rule.id_pointer.clone(),
            body_has: rule.body_has.clone(),
            body_value: rule.body_value.clone(),
            then: rule.then,
            wait: rule.wait_secs.map(Duration::from_secs),
            drop_fields: rule.drop_fields.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{PollSchedule, pointer_for};
    use std::time::Duration;

    #[test]
    fn a_job_is_read_after_the_first_wait_then_at_growing_intervals_up_to_the_cap() {
        let ms = Duration::from_millis;
        let schedule = PollSchedule {
            first_after: ms(2_000),
            interval: ms(3_000),
            backoff: 2.0,
            max_interval: ms(10_000),
            max_polls: 5,
        };
        let delays: Vec<_> = (0..6).map(|poll| schedule.delay(poll)).collect();
        assert_eq!(
            delays,
            [
                Some(ms(2_000)),
                Some(ms(3_000)),
                Some(ms(6_000)),
                Some(ms(10_000)),
                Some(ms(10_000)),
                None
            ]
        );
    }

    #[test]
    fn a_fixed_interval_stays_fixed_and_a_huge_poll_number_does_not_overflow() {
        let ms = Duration::from_millis;
        let schedule = PollSchedule {
            first_after: ms(0),
            interval: ms(500),
            backoff: 1.0,
            max_interval: ms(60_000),
            max_polls: u32::MAX,
        };
        assert_eq!(schedule.delay(7), Some(ms(500)));
        let growing = PollSchedule {
            backoff: 10.0,
            ..schedule
        };
        assert_eq!(growing.delay(u32::MAX - 1), Some(ms(60_000)));
    }

    #[test]
    fn a_jsonpath_or_dotted_path_is_suggested_as_the_json_pointer_it_means() {
        assert_eq!(pointer_for("$.id"), "/id");
        assert_eq!(
            pointer_for("$.data.items[0].item.id"),
            "/data/items/0/item/id"
        );
        assert_eq!(pointer_for("contact.id"), "/contact/id");
        assert_eq!(pointer_for("$['data']['id']"), "/data/id");
    }
}
