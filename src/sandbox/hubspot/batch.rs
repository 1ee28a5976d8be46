//! Batch endpoints: create, update (by record id) and read, plus the pieces
//! they share with batch/upsert (input limits, duplicate ids, 207 answers).

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::super::common::{iso, lock};
use super::super::state::App;
use super::errors::{HsError, parse};
use super::single::{check_email_change, id_property_is_email};
use super::store::{Projection, Store};
use super::validate::{Props, check_properties};

const MAX_INPUTS: usize = 100;

#[derive(Deserialize)]
pub(crate) struct Inputs<T> {
    pub(crate) inputs: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    properties: Map<String, Value>,
    object_write_trace_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInput {
    id: String,
    id_property: Option<String>,
    properties: Map<String, Value>,
    object_write_trace_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadBody {
    id_property: Option<String>,
    inputs: Vec<ReadInput>,
    properties: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ReadInput {
    id: String,
}

/// `POST .../batch/create`: 201; a 409 naming only the first existing email;
/// 207 per invalid input when every input carries an `objectWriteTraceId`.
pub(crate) async fn create(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, HsError> {
    let started = app.clock.wall();
    let Inputs { inputs } = parse::<Inputs<CreateInput>>(&body)?;
    check_count(inputs.len())?;
    let multi_status = inputs.iter().all(|i| i.object_write_trace_id.is_some());
    let (valid, errors) = split(
        inputs,
        multi_status,
        |input| check_properties(&app.hubspot_known, &input.properties),
        |input| item_context(input.object_write_trace_id.as_deref(), None),
    )?;
    let now = app.now();
    let mut store = lock(&app.hubspot);
    check_create_conflicts(&store, &valid)?;
    let results = valid
        .into_iter()
        .map(|(input, props)| {
            let object = store.create(props, &now).json(&Projection::All);
            with_trace(object, input.object_write_trace_id)
        })
        .collect();
    Ok(answer(
        StatusCode::CREATED,
        results,
        errors,
        started,
        app.clock.wall(),
    ))
}

#[derive(Deserialize)]
struct ArchiveInput {
    id: String,
}

/// `POST .../batch/archive`: 204 with no body. Ids that name no contact (or
/// one already archived) are passed over, as HubSpot does; more than 100
/// inputs, or a malformed body, is a 400.
pub(crate) async fn archive(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<StatusCode, HsError> {
    let Inputs { inputs } = parse::<Inputs<ArchiveInput>>(&body)?;
    check_count(inputs.len())?;
    let mut store = lock(&app.hubspot);
    for input in inputs {
        if let Some(id) = store.find(&input.id, false) {
            store.archive(id);
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The whole request fails on the first email that exists or repeats.
fn check_create_conflicts<T>(store: &Store, valid: &[(T, Props)]) -> Result<(), HsError> {
    let mut seen = HashSet::new();
    for email in valid.iter().filter_map(|(_, props)| props.get("email")) {
        if email.is_empty() {
            continue;
        }
        if let Some(existing) = store.id_by_email(email) {
            return Err(HsError::conflict(existing));
        }
        if !seen.insert(email.clone()) {
            let message = format!("Duplicate email found in batch input: {email}");
            return Err(HsError::new(StatusCode::CONFLICT, "CONFLICT", message));
        }
    }
    Ok(())
}

/// `POST .../batch/update`: by record id; unknown ids come back as a 207.
pub(crate) async fn update(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, HsError> {
    let started = app.clock.wall();
    let Inputs { inputs } = parse::<Inputs<UpdateInput>>(&body)?;
    check_count(inputs.len())?;
    for input in &inputs {
        match input.id_property.as_deref() {
            None | Some("hs_object_id") => {}
            Some(other) => return Err(HsError::non_unique_id_property(other)),
        }
    }
    check_unique(inputs.iter().map(|i| i.id.clone()))?;
    let multi_status = inputs.iter().all(|i| i.object_write_trace_id.is_some());
    let (valid, mut errors) = split(
        inputs,
        multi_status,
        |input| check_properties(&app.hubspot_known, &input.properties),
        |input| item_context(input.object_write_trace_id.as_deref(), Some(&input.id)),
    )?;
    let now = app.now();
    let mut store = lock(&app.hubspot);
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (input, props) in valid {
        match store.find(&input.id, false) {
            Some(id) => found.push((id, input, props)),
            None => missing.push(input.id),
        }
    }
    errors.extend(not_found(missing));
    for (id, _, props) in &found {
        check_email_change(&store, *id, props)?;
    }
    let results = found
        .into_iter()
        .filter_map(|(id, input, props)| {
            let object = store.update(id, props, &now)?.json(&Projection::All);
            Some(with_trace(object, input.object_write_trace_id))
        })
        .collect();
    Ok(answer(
        StatusCode::OK,
        results,
        errors,
        started,
        app.clock.wall(),
    ))
}

/// `POST .../batch/read`: reads the primary store; missing ids give a 207.
pub(crate) async fn read(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, HsError> {
    let started = app.clock.wall();
    let body: ReadBody = parse(&body)?;
    check_count(body.inputs.len())?;
    let by_email = id_property_is_email(body.id_property.as_deref())?;
    let fold = |id: &str| {
        if by_email {
            id.to_lowercase()
        } else {
            id.to_owned()
        }
    };
    check_unique(body.inputs.iter().map(|i| fold(&i.id)))?;
    let projection = Projection::requested(body.properties);
    let store = lock(&app.hubspot);
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in body.inputs {
        match store.find(&input.id, by_email).and_then(|id| store.get(id)) {
            Some(contact) => results.push(contact.json(&projection)),
            None => missing.push(input.id),
        }
    }
    let errors = not_found(missing).into_iter().collect();
    Ok(answer(
        StatusCode::OK,
        results,
        errors,
        started,
        app.clock.wall(),
    ))
}

/// More than 100 inputs is a whole-request 400.
pub(crate) fn check_count(count: usize) -> Result<(), HsError> {
    if count > MAX_INPUTS {
        return Err(HsError::too_many_inputs(count));
    }
    Ok(())
}

/// The same id twice in one request is a whole-request 400.
pub(crate) fn check_unique(ids: impl Iterator<Item = String>) -> Result<(), HsError> {
    let mut seen = HashSet::new();
    let mut duplicates: Vec<String> = Vec::new();
    for id in ids {
        if !seen.insert(id.clone()) && !duplicates.contains(&id) {
            duplicates.push(id);
        }
    }
    if duplicates.is_empty() {
        Ok(())
    } else {
        Err(HsError::duplicate_ids(&duplicates))
    }
}

/// Valid inputs with their checked properties, and 207 `errors[]` entries.
pub(crate) type Split<T> = (Vec<(T, Props)>, Vec<Value>);

/// Validates every input. With `multi_status`, invalid inputs become 207
/// `errors[]` entries; without, the first one fails the whole request.
pub(crate) fn split<T>(
    inputs: Vec<T>,
    multi_status: bool,
    validate: impl Fn(&T) -> Result<Props, HsError>,
    context: impl Fn(&T) -> Option<Value>,
) -> Result<Split<T>, HsError> {
    let mut valid = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        match validate(&input) {
            Ok(props) => valid.push((input, props)),
            Err(err) => {
                let context = context(&input).unwrap_or_else(|| json!({}));
                if !multi_status {
                    return Err(err.with_context(context));
                }
                errors.push(err.item(context));
            }
        }
    }
    Ok((valid, errors))
}

/// `{objectWriteTraceId:[trace]}` when the input has one, else `{ids:[id]}`.
pub(crate) fn item_context(trace: Option<&str>, id: Option<&str>) -> Option<Value> {
    match (trace, id) {
        (Some(trace), _) => Some(json!({ "objectWriteTraceId": [trace] })),
        (None, Some(id)) => Some(json!({ "ids": [id] })),
        (None, None) => None,
    }
}

pub(crate) fn with_trace(mut object: Value, trace: Option<String>) -> Value {
    if let (Some(trace), Some(map)) = (trace, object.as_object_mut()) {
        map.insert("objectWriteTraceId".into(), trace.into());
    }
    object
}

fn not_found(ids: Vec<String>) -> Option<Value> {
    if ids.is_empty() {
        return None;
    }
    let error = HsError::new(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid."
            .into(),
    );
    Some(error.item(json!({ "ids": ids })))
}

/// `{status:"COMPLETE", results, startedAt, completedAt}`, or a 207 with
/// `numErrors` and `errors`. Results come back in reverse input order: the
/// real API does not promise any order.
pub(crate) fn answer(
    ok: StatusCode,
    mut results: Vec<Value>,
    errors: Vec<Value>,
    started: DateTime<Utc>,
    completed: DateTime<Utc>,
) -> Response {
    results.reverse();
    let mut body = Map::new();
    body.insert("status".into(), "COMPLETE".into());
    body.insert("results".into(), results.into());
    let status = if errors.is_empty() {
        ok
    } else {
        body.insert("numErrors".into(), errors.len().into());
        body.insert("errors".into(), errors.into());
        StatusCode::MULTI_STATUS
    };
    body.insert("startedAt".into(), iso(started).into());
    body.insert("completedAt".into(), iso(completed).into());
    (status, Json(Value::Object(body))).into_response()
}
