//! `engine check --live`: one harmless read per connector in use (its
//! `live_check`), to learn before a run whether the base URL answers and the
//! credentials are accepted. A failure is reported as a run would stop on it
//! (see [`crate::send::probe`]): method, URL without secrets, likely cause.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::clock::Clock;
use crate::plan::{Env, Plan};
use crate::send::{CrmClient, ReplyAction};

/// What the live check of one connector found.
#[derive(Debug, Clone)]
pub struct LiveCheck {
    pub connector: String,
    /// `Some(true)` ok, `Some(false)` failed, `None` skipped (no `live_check`).
    pub ok: Option<bool>,
    /// One line for the operator.
    pub line: String,
}

/// Checks every connector some mapping uses, one after the other.
pub async fn check_all(plan: &Plan, env: &dyn Env, clock: Arc<dyn Clock>) -> Vec<LiveCheck> {
    let mut checks = Vec::new();
    for connector in crate::service::connectors_in_use(plan) {
        checks.push(check_one(plan, &connector, env, clock.clone()).await);
    }
    checks
}

async fn check_one(
    plan: &Plan,
    connector: &str,
    env: &dyn Env,
    clock: Arc<dyn Clock>,
) -> LiveCheck {
    let result = |ok: Option<bool>, line: String| LiveCheck {
        connector: connector.to_string(),
        ok,
        line,
    };
    let Some(connector_plan) = plan.connectors.get(connector).cloned() else {
        return result(Some(false), format!("live: {connector}: no such connector"));
    };
    let Some(op) = connector_plan.live_check.as_ref() else {
        return result(
            None,
            format!(
                "live: {connector}: skipped (connectors/{connector}.toml declares no live_check)"
            ),
        );
    };
    let ctx = json!({ "params": Value::Object(connector_plan.params.clone()) });
    let client = match CrmClient::new(connector_plan.clone(), plan.templates.clone(), env, clock) {
        Ok(client) => client,
        Err(err) => return result(Some(false), format!("live: {connector}: {err:#}")),
    };
    let shown = match client.preview(op, &ctx) {
        Ok(request) => format!("{} {}", request.method, without_query(&request.url)),
        Err(err) => {
            return result(
                Some(false),
                format!("live: {connector}: live_check: {err:#}"),
            );
        }
    };
    let reply = client.send(op, &ctx).await;
    let status = reply.response.as_ref().map(|r| r.status);
    if reply.action == ReplyAction::Success {
        let status = status.map(|s| s.to_string()).unwrap_or_default();
        return result(
            Some(true),
            format!(
                "live: {connector}: {shown} answered {status}: the base URL and the credentials work"
            ),
        );
    }
    let line = match client.config_fault() {
        Some(paused) => format!(
            "live: {connector}: {} {} {}. Likely cause: {}",
            paused.fault.method,
            paused.fault.url,
            paused.fault.answer(),
            paused.hint
        ),
        None => format!(
            "live: {connector}: {shown} failed: {}",
            reason(&reply.action)
        ),
    };
    result(Some(false), line)
}

/// The URL without its query, which may carry a key.
fn without_query(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

fn reason(action: &ReplyAction) -> String {
    match action {
        ReplyAction::Failed(failure) => failure.reason().to_owned(),
        ReplyAction::NotFound => "not found".into(),
        other => format!("{other:?}"),
    }
}
