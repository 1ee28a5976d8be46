//! `POST /crm/v3/objects/contacts/search`: EQ and IN filters over the search
//! index, which shows each write only `search_lag_ms` after it happened.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::common::lock;
use super::super::state::App;
use super::errors::{HsError, parse};
use super::store::{Contact, Projection, Version};

const MAX_GROUPS: usize = 5;
const MAX_FILTERS_PER_GROUP: usize = 10;
const MAX_FILTERS: usize = 25;
const MAX_LIMIT: usize = 200;
const DEFAULT_LIMIT: usize = 10;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchBody {
    #[serde(default)]
    filter_groups: Vec<FilterGroup>,
    properties: Option<Vec<String>>,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Deserialize)]
struct FilterGroup {
    #[serde(default)]
    filters: Vec<Filter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    property_name: String,
    operator: String,
    value: Option<Value>,
    values: Option<Vec<Value>>,
}

/// A filter reduced to "this property is one of these (lower-cased) values".
struct Condition {
    property: String,
    any_of: Vec<String>,
}

pub(crate) async fn search(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<Json<Value>, HsError> {
    let body: SearchBody = parse(&body)?;
    let groups = conditions(&body.filter_groups)?;
    let limit = body.limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(HsError::validation(format!(
            "limit must be at most {MAX_LIMIT}, got {limit}"
        )));
    }
    let after: usize = match body.after.as_deref() {
        None | Some("") => 0,
        Some(after) => after
            .parse()
            .map_err(|_| HsError::validation(format!("after must be a number, got {after}")))?,
    };
    let projection = Projection::requested(body.properties);
    let now = app.clock.instant();
    let store = lock(&app.hubspot);
    let hits: Vec<(&Contact, &Version)> = store
        .contacts()
        .filter_map(|c| c.searchable(now).map(|v| (c, v)))
        .filter(|(c, v)| matches(&groups, c.id, v))
        .collect();
    let results: Vec<Value> = hits
        .iter()
        .skip(after)
        .take(limit)
        .map(|(c, v)| c.version_json(v, &projection))
        .collect();
    let mut answer = json!({"total": hits.len(), "results": results});
    if after + limit < hits.len() {
        let next = (after + limit).to_string();
        answer["paging"] = json!({"next": {"after": next, "link": format!("?after={next}")}});
    }
    Ok(Json(answer))
}

fn conditions(groups: &[FilterGroup]) -> Result<Vec<Vec<Condition>>, HsError> {
    let total: usize = groups.iter().map(|g| g.filters.len()).sum();
    if groups.len() > MAX_GROUPS
        || total > MAX_FILTERS
        || groups
            .iter()
            .any(|g| g.filters.len() > MAX_FILTERS_PER_GROUP)
    {
        return Err(HsError::validation(format!(
            "Too many filters: at most {MAX_GROUPS} filterGroups, {MAX_FILTERS_PER_GROUP} filters \
             per group and {MAX_FILTERS} filters in total are allowed"
        )));
    }
    groups
        .iter()
        .map(|g| g.filters.iter().map(condition).collect())
        .collect()
}

fn condition(filter: &Filter) -> Result<Condition, HsError> {
    let missing = |what: &str| {
        HsError::validation(format!(
            "Filter on {} with operator {} needs {what}",
            filter.property_name, filter.operator
        ))
    };
    let any_of = match filter.operator.as_str() {
        "EQ" => vec![filter.value.as_ref().ok_or_else(|| missing("a value"))?],
        "IN" => filter
            .values
            .as_ref()
            .ok_or_else(|| missing("values"))?
            .iter()
            .collect(),
        other => {
            return Err(HsError::validation(format!(
                "The sandbox supports only the EQ and IN search operators, not {other}"
            )));
        }
    };
    Ok(Condition {
        property: filter.property_name.clone(),
        any_of: any_of.into_iter().map(text).collect(),
    })
}

/// A filter value as lower-cased text (values may be JSON strings or numbers).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.to_lowercase(),
        other => other.to_string().to_lowercase(),
    }
}

/// Groups are ORed, the filters in a group ANDed; no groups matches all.
fn matches(groups: &[Vec<Condition>], id: u64, version: &Version) -> bool {
    let holds = |c: &Condition| {
        let value = if c.property == "hs_object_id" {
            Some(id.to_string())
        } else {
            version.props.get(&c.property).map(|v| v.to_lowercase())
        };
        value.is_some_and(|v| c.any_of.contains(&v))
    };
    groups.is_empty() || groups.iter().any(|group| group.iter().all(holds))
}
