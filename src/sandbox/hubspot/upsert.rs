//! `POST /crm/v3/objects/contacts/batch/upsert` keyed on `email`.
//!
//! "Partial upserts are not supported when using email as the idProperty":
//! one invalid input makes the whole request a 400 and nothing is written,
//! unless the sandbox runs with `hubspot_upsert_partial` (then a 207).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::super::clock::Now;
use super::super::common::{is_valid_email, lock};
use super::super::state::App;
use super::batch::{Inputs, answer, check_count, check_unique, item_context, split, with_trace};
use super::errors::{HsError, PropError, parse};
use super::store::{Projection, Store};
use super::validate::{Props, check_properties};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpsertInput {
    id: String,
    id_property: Option<String>,
    properties: Map<String, Value>,
    object_write_trace_id: Option<String>,
}

pub(crate) async fn upsert(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, HsError> {
    let started = app.clock.wall();
    let Inputs { inputs } = parse::<Inputs<UpsertInput>>(&body)?;
    check_count(inputs.len())?;
    for input in &inputs {
        check_id_property(input.id_property.as_deref())?;
    }
    check_unique(inputs.iter().map(|i| i.id.to_lowercase()))?;
    let (valid, errors) = split(
        inputs,
        app.opts.hubspot_upsert_partial,
        |input| validate(&app, input),
        |input| item_context(input.object_write_trace_id.as_deref(), Some(&input.id)),
    )?;
    let now = app.now();
    let mut store = lock(&app.hubspot);
    let results = valid
        .into_iter()
        .map(|(input, props)| write(&mut store, input, props, &now))
        .collect();
    Ok(answer(
        StatusCode::OK,
        results,
        errors,
        started,
        app.clock.wall(),
    ))
}

fn check_id_property(id_property: Option<&str>) -> Result<(), HsError> {
    match id_property {
        Some("email") => Ok(()),
        Some(other) => Err(HsError::non_unique_id_property(other)),
        None => Err(HsError::validation(
            "The sandbox's batch/upsert needs idProperty \"email\" on every input",
        )),
    }
}

/// The id must be a valid email; a `properties.email` must be the same one.
fn validate(app: &App, input: &UpsertInput) -> Result<Props, HsError> {
    if !is_valid_email(&input.id) {
        return Err(HsError::properties(&[PropError::invalid_email(
            "email", &input.id,
        )]));
    }
    let props = check_properties(&app.hubspot_known, &input.properties)?;
    match props.get("email") {
        Some(email) if !email.eq_ignore_ascii_case(&input.id) => Err(HsError::validation(format!(
            "properties.email ({email}) differs from the upsert id ({}); \
             change a contact's email with PATCH",
            input.id
        ))),
        _ => Ok(props),
    }
}

/// Updates the contact with this email, or creates it; `new` tells which.
fn write(store: &mut Store, input: UpsertInput, mut props: Props, now: &Now) -> Value {
    let email = input.id.to_lowercase();
    let (contact, new) = match store.id_by_email(&email) {
        Some(id) => (store.update(id, props, now), false),
        None => {
            props.insert("email".into(), email);
            (Some(store.create(props, now)), true)
        }
    };
    let mut object = contact.map_or(Value::Null, |c| c.json(&Projection::All));
    if let Some(map) = object.as_object_mut() {
        map.insert("new".into(), new.into());
    }
    with_trace(object, input.object_write_trace_id)
}
