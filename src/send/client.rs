//! One connector's HTTP client: renders an operation, paces it through the rate
//! limiter and the in-flight cap, sends it, and classifies the answer into a closed
//! [`ReplyAction`], retrying transient failures within the connector's policy.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::auth::Authenticator;
use super::body::{self, BodyError};
use super::concurrency::{AdaptiveGate, Signal};
use super::margin::ArrivalMargin;
use super::probe::{ConfigProbe, ConnectorPaused};
use super::response::Response;
use super::row::{Failure, ReplyAction};
use super::wait::{self, Stop};
use crate::clock::Clock;
use crate::plan::{ConnectorPlan, Env, OpPlan};
use crate::plan::{Redirects, RuleAction};
use crate::plan::{base_url_credentials, base_url_problem};
use crate::redact::url_for_display;
use crate::send::budget::{Permit, SharedBudget};
use crate::send::outcome::{self, Outcome};
use crate::send::ratelimit::RateLimiter;
use crate::template::{OnEmpty, Templates};

/// The action and the response it came from (none for transport errors).
#[derive(Debug, Clone)]
pub struct Reply {
    /// What it means.
    pub action: ReplyAction,
    /// The response, if one arrived.
    pub response: Option<Response>,
}

/// A request as `engine plan` shows it.
#[derive(Debug, Clone)]
pub struct PreviewRequest {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The full URL, query included.
    pub url: reqwest::Url,
    /// The connector's headers (authentication is not among them).
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: Option<Value>,
}

/// A rendered request.
struct Rendered {
    method: reqwest::Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// The JSON body, serialized once for every attempt.
    body: Option<Bytes>,
}

/// One connector's client, shared by every task syncing to it.
#[derive(Debug)]
pub struct CrmClient {
    /// The validated connector.
    pub plan: Arc<ConnectorPlan>,
    templates: Arc<Templates>,
    http: reqwest::Client,
    base_url: String,
    auth: Authenticator,
    limiter: Arc<RateLimiter>,
    /// At most `max_in_flight` requests at once, fewer while the CRM pushes back.
    in_flight: AdaptiveGate,
    /// The limiter's margin, from the spread of the CRM's latency.
    arrival_margin: Mutex<ArrivalMargin>,
    clock: Arc<dyn Clock>,
    /// Whether the answers so far blame the config (see [`super::probe`]).
    probe: ConfigProbe,
    /// The rate budget shared with other processes, on PostgreSQL.
    budget: Option<SharedBudget>,
}

impl CrmClient {
    /// Builds the client: resolves the base URL override and every secret.
    pub fn new(
        plan: Arc<ConnectorPlan>,
        templates: Arc<Templates>,
        env: &dyn Env,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let base_url = match env.var(&plan.base_url_env) {
            Some(url) => {
                if let Some(problem) = base_url_problem(&url) {
                    bail!("{} is set but is not usable: {problem}", plan.base_url_env);
                }
                if let Some(problem) = base_url_credentials(&url) {
                    bail!("{} is set but is not usable: {problem}", plan.base_url_env);
                }
                url.trim_end_matches('/').to_string()
            }
            None => plan.base_url.clone(),
        };
        let auth = Authenticator::resolve(&plan.auth, env)
            .with_context(|| format!("connector `{}`", plan.name))?;
        let http = reqwest::Client::builder()
            .timeout(plan.timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(redirect_policy(plan.redirects))
            .pool_max_idle_per_host(plan.max_in_flight)
            .user_agent(concat!("engine/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let pacing = &plan.pacing;
        let limiter = Arc::new(RateLimiter::new(
            pacing.windows().to_vec(),
            clock.clone(),
            pacing.margin,
        ));
        let arrival_margin = ArrivalMargin::new(pacing.margin, pacing.widest_margin);
        let client = Self {
            in_flight: AdaptiveGate::new(plan.max_in_flight, plan.adaptive_concurrency),
            arrival_margin: Mutex::new(arrival_margin),
            plan,
            templates,
            http,
            base_url,
            auth,
            limiter,
            clock,
            probe: ConfigProbe::default(),
            budget: None,
        };
        crate::metrics::global().connector_started(&client.plan.name, client.in_flight.limit());
        Ok(client)
    }

    /// Takes every request's permit from `budget` too (after the limiter's
    /// own slot), so this process and the others sharing it stay within the
    /// CRM's windows together.
    pub fn with_shared_budget(mut self, budget: SharedBudget) -> Self {
        budget.set_margin(self.limiter_margin());
        self.budget = Some(budget);
        self
    }

    /// The shared rate budget, if this client takes from one.
    pub fn shared_budget(&self) -> Option<&SharedBudget> {
        self.budget.as_ref()
    }

    fn limiter_margin(&self) -> Duration {
        self.arrival_margin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .margin()
    }

    /// The connector's config looks broken: every answer so far blamed it
    /// (see [`super::probe`]). `None` once one answer proved it works.
    pub fn config_fault(&self) -> Option<ConnectorPaused> {
        let fault = self.probe.fault_found()?;
        let secrets = crate::plan::secret_env_names(&self.plan.auth);
        let hint = fault.hint(&self.plan.name, &self.plan.base_url_env, &secrets);
        Some(ConnectorPaused {
            connector: self.plan.name.clone(),
            fault,
            hint,
        })
    }

    /// `op` rendered with `ctx` as it would be sent, without sending it and
    /// without authentication (see `crate::preview`, which describes it).
    pub fn preview(&self, op: &OpPlan, ctx: &Value) -> anyhow::Result<PreviewRequest> {
        let rendered = self.render(op, Cow::Borrowed(ctx))?;
        let mut url = reqwest::Url::parse(&format!("{}{}", self.base_url, rendered.path))
            .context("the rendered URL is not valid")?;
        if !rendered.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&rendered.query);
        }
        let body = rendered
            .body
            .map(|bytes| serde_json::from_slice(&bytes))
            .transpose()?;
        Ok(PreviewRequest {
            method: rendered.method.to_string(),
            url,
            headers: rendered.headers,
            body,
        })
    }

    /// Several answers blamed the config and none proved it: sending more
    /// would only spend the rate limit. The row goes back as it was.
    fn held_back(&self) -> Option<ReplyAction> {
        self.probe.tripped().then(|| {
            ReplyAction::Failed(Failure::Deferred {
                until: self.clock.utc(),
                reason: "not sent: the connector's config looks broken".into(),
            })
        })
    }

    /// Forgets the answers so far: the next requests probe the config afresh.
    pub fn reset_config_probe(&self) {
        self.probe.reset();
    }

    /// The compiled templates.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// The run's clock (the bulk flow times its polls and its `since` by it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Renders and sends `op` with the template context `ctx`, retrying transient
    /// failures up to the connector's `max_attempts` and waiting out rate limits
    /// without spending an attempt.
    pub async fn send(&self, op: &OpPlan, ctx: &Value) -> Reply {
        self.send_rendered(op, self.render(op, Cow::Borrowed(ctx)))
            .await
    }

    /// As [`CrmClient::send`], for a context built for this one request (a
    /// batch's `items`): the body takes its values instead of copying them.
    pub async fn send_owned(&self, op: &OpPlan, ctx: Value) -> Reply {
        self.send_rendered(op, self.render(op, Cow::Owned(ctx)))
            .await
    }

    async fn send_rendered(&self, op: &OpPlan, rendered: anyhow::Result<Rendered>) -> Reply {
        let rendered = match rendered {
            Ok(rendered) => rendered,
            Err(err) => {
                return Reply {
                    action: ReplyAction::permanent(format!("render error: {err}")),
                    response: None,
                };
            }
        };
        let size = rendered.body.as_ref().map_or(0, Bytes::len);
        if let Some(reason) = self.too_large(size) {
            // Never sent: the CRM would cut the connection mid-body (a broken
            // pipe that looks transient) or answer 413, every time.
            return Reply {
                action: ReplyAction::permanent(reason),
                response: None,
            };
        }
        let mut attempt = 1;
        let mut waited = Duration::ZERO;
        loop {
            if let Some(action) = self.held_back() {
                return Reply {
                    action,
                    response: None,
                };
            }
            // Nothing new leaves once the run is stopping.
            if wait::shutting_down() {
                let reason = "not sent".to_string();
                return self.stopped(Stop::ShutDown, Duration::ZERO, reason, None);
            }
            // A pause longer than we may wait (past `max_rate_limit_wait_secs` or
            // the rows' lease: a daily limit) hands the row back without sending
            // anything, so a run ends instead of hanging.
            let pending = self.limiter.wait_time(&op.class);
            if let Err(stop) = self.wait_within(pending).await {
                return self.stopped(
                    stop,
                    pending,
                    format!(
                        "rate limit of `{}` requests: paused for {} s",
                        op.class,
                        pending.as_secs()
                    ),
                    None,
                );
            }
            let (outcome, response) = match self.send_once(op, &rendered).await {
                Ok(sent) => sent,
                Err((stop, wait)) => {
                    let reason = format!("rate limit of `{}` requests", op.class);
                    return self.stopped(stop, wait, reason, None);
                }
            };
            match outcome {
                Verdict::Done(action) => return Reply { action, response },
                Verdict::Retry {
                    reason,
                    after,
                    maybe_applied,
                } => {
                    if attempt >= self.plan.retry.max_attempts {
                        let reason = if attempt > 1 {
                            format!("{reason} (after {attempt} attempts)")
                        } else {
                            reason
                        };
                        return Reply {
                            action: ReplyAction::transient(reason),
                            response,
                        };
                    }
                    if maybe_applied && !op.repeatable {
                        // A create with no conflict answer that may have landed:
                        // sent again now, it could make a second record. The row's
                        // retry starts over from the lookup, after the CRM's search
                        // has had the row's retry delay to catch up.
                        return Reply {
                            action: ReplyAction::transient(format!(
                                "{reason} (not repeated at once: the create may have been applied, \
                                 and repeating it could duplicate the record; the row's next \
                                 attempt looks the record up first)"
                            )),
                            response,
                        };
                    }
                    let delay = after
                        .unwrap_or_else(|| self.plan.retry.backoff.delay(attempt, &mut rand::rng()))
                        .min(self.plan.retry.backoff.max);
                    tracing::debug!(op = %op.label, attempt, delay_ms = delay.as_millis() as u64, %reason, "Retrying request.");
                    // A backoff the lease cannot hold ends the attempt as the
                    // failure it is: the row's durable retry takes over.
                    let lease_left = wait::lease_left(self.clock.now());
                    if wait::plan_wait(delay, Duration::ZERO, delay, lease_left).is_err() {
                        return Reply {
                            action: ReplyAction::transient(reason),
                            response,
                        };
                    }
                    if let Err(stop) = wait::sleep(delay).await {
                        return self.stopped(stop, delay, reason, response);
                    }
                    attempt += 1;
                }
                Verdict::RateLimited { reason, after } => {
                    // The CRM's own figure, uncut, so rows handed back wait as
                    // long as it asked; never under a second (no hammering).
                    let pause = wait::clamp_rate_limit_pause(
                        after.unwrap_or_else(|| self.default_pause(&op.class)),
                    );
                    tracing::warn!(op = %op.label, pause_ms = pause.as_millis() as u64, %reason, "Rate limited by the CRM; pausing.");
                    self.limiter.pause(&op.class, pause);
                    // The wait itself happens at the top of the loop, where the
                    // limiter reports the pause just set. The CRM's pauses add
                    // up: an endless run of 429s hands the row back once they
                    // pass `max_rate_limit_wait_secs`.
                    let lease_left = wait::lease_left(self.clock.now());
                    if let Err(stop) = wait::plan_wait(
                        pause,
                        waited,
                        self.plan.classify.headers.max_wait,
                        lease_left,
                    ) {
                        return self.stopped(stop, pause, reason, response);
                    }
                    waited += pause;
                }
            }
        }
    }

    /// The permanent error of a request body of `size` bytes, when it is over
    /// the connector's `max_request_bytes`.
    pub fn too_large(&self, size: usize) -> Option<String> {
        let limit = self.plan.max_request_bytes?;
        (size > limit)
            .then(|| format!("payload too large: {size} bytes, the connector allows {limit}"))
    }

    /// Waits `wait` if it fits the bounds on its own (see [`wait::plan_wait`]):
    /// at most `max_rate_limit_wait_secs`, and within the lease.
    async fn wait_within(&self, wait: Duration) -> Result<(), Stop> {
        if wait.is_zero() {
            return Ok(());
        }
        let lease_left = wait::lease_left(self.clock.now());
        wait::plan_wait(
            wait,
            Duration::ZERO,
            self.plan.classify.headers.max_wait,
            lease_left,
        )?;
        wait::sleep(wait).await
    }

    /// The reply of a request that stopped waiting: handed back until `wait`
    /// is over (no retry spent), or at once on shutdown, to be sent again by
    /// the next run (an upsert: sending twice makes no second record).
    fn stopped(
        &self,
        stop: Stop,
        wait: Duration,
        reason: String,
        response: Option<Response>,
    ) -> Reply {
        let now = self.clock.utc();
        let (until, reason) = match stop {
            Stop::HandBack => {
                let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                let until = now
                    .checked_add_signed(wait)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                (until, format!("{reason}; handed back until {until}"))
            }
            Stop::ShutDown => (
                now,
                format!("{reason}; handed back: the run is shutting down"),
            ),
        };
        Reply {
            action: ReplyAction::Failed(Failure::Deferred { until, reason }),
            response,
        }
    }

    /// The longest window that applies to `class`, or one second.
    fn default_pause(&self, class: &str) -> Duration {
        self.plan
            .pacing
            .windows()
            .iter()
            .filter(|l| l.applies_to(class))
            .map(|l| l.per)
            .filter(|d| *d <= Duration::from_secs(60))
            .max()
            .unwrap_or(Duration::from_secs(1))
    }

    fn render(&self, op: &OpPlan, ctx: Cow<'_, Value>) -> anyhow::Result<Rendered> {
        let path = self.templates.render_path(&op.path, &ctx)?;
        let mut query = Vec::with_capacity(op.query.len());
        for (name, tree) in &op.query {
            query.push((name.clone(), self.templates.render_str(tree, &ctx)?));
        }
        let mut headers: Vec<(String, String)> = self.plan.headers.clone();
        for (name, tree) in &op.headers {
            headers.push((name.clone(), self.templates.render_str(tree, &ctx)?));
        }
        let body = match (&op.body, ctx) {
            (Some(tree), Cow::Borrowed(ctx)) => {
                Some(self.templates.render_tree(tree, ctx, OnEmpty::Omit)?)
            }
            (Some(tree), Cow::Owned(ctx)) => Some(self.templates.render_tree_consuming(
                tree,
                ctx,
                OnEmpty::Omit,
            )?),
            (None, _) => None,
        };
        let body = body
            .map(|body| serde_json::to_vec(&body).map(Bytes::from))
            .transpose()?;
        Ok(Rendered {
            method: op.method.clone(),
            path,
            query,
            headers,
            body,
        })
    }

    /// One attempt. The rate-limit slot is taken last, once a connection slot
    /// is held and the request is built, so the limiter records when the
    /// request really leaves: a slot taken while still queued for the
    /// in-flight cap would be counted from earlier than the CRM counts it.
    ///
    /// Every wait in it is bounded (see [`wait`]): `Err` says why it stopped
    /// and how long the wait it gave up on was. A request already on the wire
    /// when the run shuts down gets [`wait::SHUTDOWN_GRACE`] to finish.
    async fn send_once(
        &self,
        op: &OpPlan,
        rendered: &Rendered,
    ) -> Result<(Verdict, Option<Response>), (Stop, Duration)> {
        let shut_down = |stop| (stop, Duration::ZERO);
        let _admitted = wait::race_shutdown(self.in_flight.admit(), Duration::ZERO)
            .await
            .map_err(shut_down)?;
        let request = match self.build_request(rendered).await {
            Ok(request) => request,
            Err(err) => {
                return Ok((
                    Verdict::Retry {
                        reason: format!("authentication failed: {err:#}"),
                        after: None,
                        maybe_applied: false,
                    },
                    None,
                ));
            }
        };
        let metrics = crate::metrics::global();
        let waiting = std::time::Instant::now();
        let acquired = self.acquire_slot(&op.class).await;
        metrics.rate_limit_wait(&self.plan.name, waiting.elapsed());
        let permit = acquired?;
        // Checked again here: answers that came while this request queued
        // for a connection and the rate limit may have tripped the probe.
        if let Some(action) = self.held_back() {
            return Ok((Verdict::Done(action), None));
        }
        let sent_at = self.clock.now();
        let sending = metrics.sending(&self.plan.name);
        let exchanged =
            wait::race_shutdown(self.exchange(op, request, sent_at), wait::SHUTDOWN_GRACE).await;
        drop(sending);
        let (verdict, response, room) = exchanged.map_err(shut_down)?;
        if let (Some(budget), Some(permit)) = (&self.budget, &permit) {
            budget.answered(permit, sent_at, self.clock.now());
        }
        metrics.request(&self.plan.name, response.as_ref().map(|r| r.status));
        if response.is_some() {
            self.observe_latency(self.clock.now().saturating_duration_since(sent_at));
        }
        let signal = load_signal(&verdict, response.as_ref().map(|r| r.status), room);
        if let Some(limit) = self.in_flight.observe(signal, sent_at, self.clock.now()) {
            metrics.in_flight_limit(&self.plan.name, limit);
            let max = self.plan.max_in_flight;
            match signal {
                Signal::Overloaded | Signal::Faulty => tracing::info!(
                    op = %op.label, limit, max,
                    "The CRM is pushing back; fewer requests in flight until it answers normally."
                ),
                Signal::Fine => {
                    tracing::debug!(op = %op.label, limit, max, "Requests in flight raised.");
                }
            }
        }
        Ok((verdict, response))
    }

    /// Takes a rate-limit slot, waiting for one within the bounds: tasks that
    /// passed the check before the window filled must not sit in the limiter
    /// past their lease (an hourly cap used up mid-run). Each wait is judged
    /// alone, not added up: waiting in turn behind the batch's other requests
    /// is pacing, not a rate limit, and a large batch must not hand rows back
    /// for it while the lease holds.
    ///
    /// The shared budget's permit comes last: it is counted from the moment
    /// it is taken, so the request must leave right after.
    async fn acquire_slot(&self, class: &str) -> Result<Option<Permit>, (Stop, Duration)> {
        while let Err(wait) = self.limiter.try_acquire(class) {
            self.wait_within(wait).await.map_err(|stop| (stop, wait))?;
        }
        match &self.budget {
            Some(budget) => budget.take_permit(class).await.map(Some),
            None => Ok(None),
        }
    }

    /// Widens or narrows the limiter's margin with the CRM's latency.
    fn observe_latency(&self, latency: Duration) {
        let changed = self
            .arrival_margin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(latency);
        if let Some(margin) = changed {
            tracing::debug!(
                margin_ms = margin.as_millis() as u64,
                "Rate-limit margin follows the CRM's latency."
            );
            self.limiter.set_margin(margin);
            if let Some(budget) = &self.budget {
                budget.set_margin(margin);
            }
        }
    }

    /// Sends `request` and classifies what comes back; also whether the
    /// CRM's rate-limit headers said its window had room.
    async fn exchange(
        &self,
        op: &OpPlan,
        request: reqwest::RequestBuilder,
        sent_at: std::time::Instant,
    ) -> (Verdict, Option<Response>, bool) {
        let (http, request) = request.build_split();
        let request = match request {
            Ok(request) => request,
            Err(err) => {
                let verdict = verdict_of(outcome::classify_transport_error(&err), false);
                return (verdict, None, false);
            }
        };
        let method = request.method().clone();
        let url = request.url().clone();
        let result = http.execute(request).await;
        let response = match result {
            Ok(response) => response,
            Err(mut err) => {
                self.probe.observe_transport(&err, method.as_str(), &url);
                // The error's text names the URL, whose query may carry an
                // `api_key_query` secret; it goes to the logs and the row's error.
                if let Some(url) = err.url_mut() {
                    url.set_query(None);
                }
                // A connection that never opened carried nothing.
                let maybe_applied = !err.is_connect();
                let verdict = verdict_of(outcome::classify_transport_error(&err), maybe_applied);
                return (verdict, None, false);
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let now = self.clock.utc();
        let info = outcome::rate_info(&headers, &self.plan.classify.headers, now);
        let room = info.remaining.is_some_and(|left| left > 0);
        // With a shared budget the other engine processes' requests are
        // accounted for already; learning them again from the CRM's count
        // would hold them a second time, for a whole window from now.
        if self.budget.is_none() {
            self.limiter
                .observe_sent(&op.class, info.remaining, info.reset, sent_at);
        }
        let raw = match body::read_capped(response, self.plan.max_response_bytes).await {
            Ok(raw) => raw,
            Err(err) => return (body_failure(status, err), None, false),
        };
        let response = Response::new(status, &raw, &self.plan.message_pointers);
        if status == 401 {
            self.auth.invalidate().await;
        }
        let ruled = apply_rules(op, &response);
        // A 403 the connector lists as a rate limit is the CRM's throttle.
        let meant = ruled.is_some() || self.plan.classify.rate_limited_statuses.contains(&status);
        self.probe
            .observe_status(status, meant, op.path.is_literal(), method.as_str(), &url);
        if let Some(verdict) = ruled {
            return (verdict, Some(response), room);
        }
        if let Some(verdict) = hostile_answer(&response, &headers) {
            return (verdict, Some(response), room);
        }
        let classified = outcome::classify(
            status,
            &headers,
            &response.message,
            &self.plan.classify,
            now,
        );
        (verdict_of(classified, true), Some(response), room)
    }

    async fn build_request(&self, rendered: &Rendered) -> anyhow::Result<reqwest::RequestBuilder> {
        let token_base = self.auth.base_url(&self.http).await?;
        let base = token_base
            .as_deref()
            .unwrap_or(&self.base_url)
            .trim_end_matches('/');
        let mut request = self
            .http
            .request(rendered.method.clone(), format!("{base}{}", rendered.path));
        if !rendered.query.is_empty() {
            request = request.query(&rendered.query);
        }
        for (name, value) in &rendered.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &rendered.body {
            // As reqwest's `json()` does: a connector's own Content-Type wins.
            let typed = rendered
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
            if !typed {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            request = request.body(body.clone());
        }
        self.auth.apply(&self.http, request).await
    }
}

/// A body that could not be read whole. One over the size cap is final (the
/// same request gets the same answer); one cut off by a timeout or a lost
/// connection is a transport failure, retried like one: the write may or may
/// not have been applied, and an empty success must not be assumed.
fn body_failure(status: u16, err: BodyError) -> Verdict {
    match err {
        BodyError::TooLarge { cap } => Verdict::Done(ReplyAction::permanent(format!(
            "HTTP {status}: the response body is larger than the connector's \
             max_response_bytes ({cap} bytes), so it was not read; raise the limit \
             if the CRM's answers are really this large"
        ))),
        BodyError::Read(mut err) => {
            if let Some(url) = err.url_mut() {
                url.set_query(None);
            }
            let transport = outcome::classify_transport_error(&err);
            let reason = transport.reason().unwrap_or_default();
            Verdict::Retry {
                reason: format!("HTTP {status}, but the body did not arrive whole: {reason}"),
                after: None,
                maybe_applied: true,
            }
        }
    }
}

/// Answers no rule claimed that cannot be what they say: a redirect (never
/// followed to another origin; see `redirect_policy`) and a success whose
/// body is not JSON (an HTML page from a proxy, a cut-off answer).
fn hostile_answer(response: &Response, headers: &reqwest::header::HeaderMap) -> Option<Verdict> {
    let status = response.status;
    if (300..400).contains(&status) {
        let location = headers
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map_or_else(
                || "nowhere (no Location header)".to_string(),
                url_for_display,
            );
        return Some(Verdict::Done(ReplyAction::permanent(format!(
            "{}: redirected to {location}, which is not followed (a connector follows only \
             same-origin redirects, with `redirects = \"same_origin\"`); check base_url",
            response.reason()
        ))));
    }
    if (200..300).contains(&status) && response.not_json {
        return Some(Verdict::Retry {
            reason: format!(
                "HTTP {status}, but the body is not JSON: {}",
                response.message
            ),
            after: None,
            maybe_applied: true,
        });
    }
    None
}

/// Follows no redirect, or only those that stay on the origin the request
/// was sent to: headers such as an `api-key` would otherwise be sent on to
/// wherever the CRM (or someone in between) points.
fn redirect_policy(redirects: Redirects) -> reqwest::redirect::Policy {
    const MOST_HOPS: usize = 5;
    match redirects {
        Redirects::None => reqwest::redirect::Policy::none(),
        Redirects::SameOrigin => reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            if !same_origin {
                attempt.stop()
            } else if attempt.previous().len() > MOST_HOPS {
                attempt.error(format!("more than {MOST_HOPS} redirects"))
            } else {
                attempt.follow()
            }
        }),
    }
}

/// What one attempt's answer means, once the connector's rules are applied:
/// the [`Outcome`] of the response plus what only the attempt knows (whether
/// the request may have taken effect) and what the rules decide (lookup,
/// update, drop fields). The retry loop in `send_rendered` consumes it; what
/// leaves the loop is a [`ReplyAction`].
enum Verdict {
    /// Final for this request: no other attempt would change it.
    Done(ReplyAction),
    Retry {
        reason: String,
        after: Option<Duration>,
        /// The request may have reached the CRM and taken effect (a timeout,
        /// a 5xx): only a repeatable operation is sent again at once.
        maybe_applied: bool,
    },
    RateLimited {
        reason: String,
        after: Option<Duration>,
    },
}

/// Whether an attempt's outcome tells of a CRM under load (see [`super::concurrency`]):
/// rate-limited, or a transient failure that is the CRM's (a timeout, a lost
/// connection, 408, 423, 5xx), not the request's (a 401 before a token refresh).
/// A server error whose answer says the rate window has `room` is a fault
/// rather than load ([`Signal::Faulty`]): one alone does not cut concurrency.
fn load_signal(verdict: &Verdict, status: Option<u16>, room: bool) -> Signal {
    match (verdict, status) {
        (Verdict::RateLimited { .. }, _) => Signal::Overloaded,
        (Verdict::Retry { .. }, None) => Signal::Overloaded,
        (Verdict::Retry { .. }, Some(429)) => Signal::Overloaded,
        (Verdict::Retry { .. }, Some(status)) if status >= 500 || matches!(status, 408 | 423) => {
            if room {
                Signal::Faulty
            } else {
                Signal::Overloaded
            }
        }
        _ => Signal::Fine,
    }
}

/// `maybe_applied`: see [`Verdict::Retry`].
fn verdict_of(outcome: Outcome, maybe_applied: bool) -> Verdict {
    match outcome {
        Outcome::Success => Verdict::Done(ReplyAction::Success),
        Outcome::Permanent { reason } => Verdict::Done(ReplyAction::permanent(reason)),
        Outcome::Retry { reason, after } => Verdict::Retry {
            reason,
            after,
            maybe_applied,
        },
        Outcome::RateLimited { reason, after } => Verdict::RateLimited { reason, after },
    }
}

/// The connector's special cases, in order; the first that matches decides.
fn apply_rules(op: &OpPlan, response: &Response) -> Option<Verdict> {
    let rule = op.rules.iter().find(|rule| {
        rule.status == response.status
            && rule
                .regex
                .as_ref()
                .is_none_or(|regex| regex.is_match(&response.message))
            && rule.body_has.as_ref().is_none_or(|pointer| {
                let found = response.body.pointer(pointer);
                found.is_some() && rule.body_value.as_ref().is_none_or(|v| found == Some(v))
            })
    })?;
    // The body's id first: a pointer names it exactly, a message may be reworded.
    let captured = rule
        .id_pointer
        .as_deref()
        .and_then(|pointer| response.id_at(pointer))
        .or_else(|| {
            rule.regex
                .as_ref()
                .and_then(|regex| regex.captures(&response.message))
                .and_then(|c| c.get(1))
                .map(|m| m.as_str().to_string())
        });
    let reason = response.reason();
    Some(match rule.then {
        RuleAction::Success => Verdict::Done(ReplyAction::Success),
        RuleAction::Lookup => Verdict::Done(ReplyAction::Lookup),
        RuleAction::Update => match captured {
            Some(id) => Verdict::Done(ReplyAction::Update(id)),
            None => Verdict::Done(ReplyAction::permanent(reason)),
        },
        RuleAction::NotFound => Verdict::Done(ReplyAction::NotFound),
        RuleAction::Retry => Verdict::Retry {
            reason,
            after: rule.wait,
            maybe_applied: true,
        },
        RuleAction::RateLimited => Verdict::RateLimited {
            reason,
            after: rule.wait,
        },
        RuleAction::Permanent => Verdict::Done(ReplyAction::permanent(reason)),
        RuleAction::DropFields => {
            Verdict::Done(ReplyAction::DropFields(rule.drop_fields.clone(), reason))
        }
    })
}
