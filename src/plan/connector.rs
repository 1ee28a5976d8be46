//! Validating one connector file into a [`ConnectorPlan`].

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use serde_json::{Map, Value};

use super::templates::{VariableUse, WHOLE_CONTEXT, check_tree};
use super::tiers::LimitsInForce;
use super::{Env, is_env_name};
use crate::config::connector::{
    Auth, BatchOperation, BatchResults, DeleteOperation, Operation, RateLimit, RateLimitHeaders,
    Redirects, Retry, RuleAction, Upsert, UpsertMode,
};
use crate::config::mapping::SyncMode;
use crate::config::toml_json::{join_index, join_key};
use crate::config::{ConnectorFile, Loaded, SourceFile};
use crate::diagnostic::{Diagnostic, Severity};
use crate::redact::url_for_display;
use crate::template::{CompiledPath, CompiledTree, Templates};

/// Variables connector templates may use.
pub const OPERATION_VARIABLES: &[&str] = &["key", "fields", "params", "row", "trace_id", "id"];
const BATCH_BODY_VARIABLES: &[&str] = &["items", "params"];

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
    pub auth: Auth,
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
    /// Static headers.
    pub headers: Vec<(String, String)>,
    /// Rate-limit windows in force (the chosen tier's counts, with overrides).
    pub rate_limits: Vec<RateLimit>,
    /// The limits in force and where they came from, for `engine check`.
    pub limits: LimitsInForce,
    /// Largest request body sent, in bytes.
    pub max_request_bytes: Option<usize>,
    /// Rate-limit headers.
    pub rate_limit_headers: RateLimitHeaders,
    /// In-cycle retry policy.
    pub retry: Retry,
    /// Where error messages are.
    pub message_pointers: Vec<String>,
    /// Default params.
    pub params: Map<String, Value>,
    /// The upsert flow.
    pub flow: Flow,
    /// The harmless read of `engine check --live`, if the file declares one.
    pub live_check: Option<OpPlan>,
    /// `upsert.lookup`, `upsert.create` and `upsert.update` whatever the
    /// flow, for the sync modes that forbid some writes.
    pub keyed: KeyedOps,
    /// Deletes records by id (`[delete]`), when the file declares it.
    pub delete: Option<DeletePlan>,
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
            .rate_limits
            .iter()
            .filter(|w| w.endpoint_classes.iter().any(|c| c == "*" || c == class))
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
        /// The upsert.
        upsert: OpPlan,
        /// For rules that say `lookup`.
        lookup: Option<OpPlan>,
        /// For rules that say `update`.
        update: Option<OpPlan>,
    },
    /// One request for many records.
    Batch {
        /// The batch request.
        batch: BatchPlan,
    },
    /// Find, then update or create.
    LookupThenWrite {
        /// Finds the id.
        lookup: OpPlan,
        /// Creates.
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
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path template (values percent-encoded).
    pub path: CompiledPath,
    /// Query parameters.
    pub query: Vec<(String, CompiledTree)>,
    /// Headers.
    pub headers: Vec<(String, CompiledTree)>,
    /// Body.
    pub body: Option<CompiledTree>,
    /// Rate-limit class.
    pub class: String,
    /// Where the id is in a success body.
    pub id_pointer: Option<String>,
    /// Special cases.
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
    /// Meaning.
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

/// A compiled batch request.
#[derive(Debug)]
pub struct BatchPlan {
    /// Envelope request (its body holds `{{items}}`).
    pub op: OpPlan,
    /// One item per row.
    pub item: CompiledTree,
    /// Most items per request.
    pub max_items: usize,
    /// Where results are.
    pub results: BatchResults,
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
    check_rate_limits(&mut ctx, &raw.rate_limits, &raw.upsert);
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
        auth: raw.auth.clone(),
        timeout: Duration::from_secs(raw.timeout_secs),
        max_response_bytes: raw.max_response_bytes,
        redirects: raw.redirects,
        max_in_flight: raw.max_in_flight as usize,
        adaptive_concurrency: raw.adaptive_concurrency,
        headers: raw
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        rate_limits: limits.windows.clone(),
        limits,
        max_request_bytes: raw
            .max_request_bytes
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        rate_limit_headers: raw.rate_limit_headers.clone(),
        retry: raw.retry.clone(),
        message_pointers: raw.errors.message_pointers.clone(),
        params: raw.params.clone(),
        flow,
        live_check,
        keyed,
        delete: delete.flatten(),
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
        label,
        op.method,
        &op.path,
        &op.query,
        &op.headers,
        op.body.as_ref(),
        body_variables,
        &op.endpoint_class,
        None,
        &op.rules,
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

/// The names of the environment variables holding `auth`'s secrets (for hints).
pub fn secret_env_names(auth: &Auth) -> Vec<String> {
    env_fields(auth)
        .into_iter()
        .map(|(_, name)| name.to_string())
        .collect()
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

fn operation_classes(upsert: &Upsert) -> Vec<&str> {
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
    classes.sort_unstable();
    classes.dedup();
    classes
}

fn check_rate_limits(ctx: &mut Ctx<'_>, limits: &[RateLimit], upsert: &Upsert) {
    let classes = operation_classes(upsert);
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

fn method(m: crate::config::connector::Method) -> reqwest::Method {
    use crate::config::connector::Method as M;
    match m {
        M::Get => reqwest::Method::GET,
        M::Post => reqwest::Method::POST,
        M::Put => reqwest::Method::PUT,
        M::Patch => reqwest::Method::PATCH,
        M::Delete => reqwest::Method::DELETE,
    }
}

fn build_op(ctx: &mut Ctx<'_>, label: &str, op: &Operation) -> Option<OpPlan> {
    let body = op.body.clone();
    build_request(
        ctx,
        label,
        op.method,
        &op.path,
        &op.query,
        &op.headers,
        body.as_ref(),
        OPERATION_VARIABLES,
        &op.endpoint_class,
        op.id_pointer.clone(),
        &op.rules,
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
        label,
        op.method,
        &op.path,
        &op.query,
        &op.headers,
        Some(&op.body),
        BATCH_BODY_VARIABLES,
        &op.endpoint_class,
        None,
        &op.rules,
    );
    Some(BatchPlan {
        op: request?,
        item: item?,
        max_items: op.max_items as usize,
        results: results.clone(),
        transient_items,
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

#[allow(clippy::too_many_arguments)]
fn build_request(
    ctx: &mut Ctx<'_>,
    label: &str,
    m: crate::config::connector::Method,
    path: &str,
    query: &BTreeMap<String, String>,
    headers: &BTreeMap<String, String>,
    body: Option<&Value>,
    body_variables: &[&str],
    class: &str,
    id_pointer: Option<String>,
    rules: &[crate::config::connector::Rule],
) -> Option<OpPlan> {
    let path_key = join_key(label, "path");
    let uses = check_tree(
        ctx.source,
        &path_key,
        &Value::String(path.to_string()),
        Some(OPERATION_VARIABLES),
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
    let query = compile_pairs(ctx, &join_key(label, "query"), query);
    let headers = compile_pairs(ctx, &join_key(label, "headers"), headers);
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
) -> Option<Vec<(String, CompiledTree)>> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        let key = join_key(base, name);
        let tree = Value::String(value.clone());
        let uses = check_tree(
            ctx.source,
            &key,
            &tree,
            Some(OPERATION_VARIABLES),
            ctx.diagnostics,
        );
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

fn build_rules(
    ctx: &mut Ctx<'_>,
    label: &str,
    rules: &[crate::config::connector::Rule],
) -> Vec<RulePlan> {
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
    use super::pointer_for;

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
