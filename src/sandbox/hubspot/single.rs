//! Single-record endpoints: create, read, update and archive one contact.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::super::common::{limit_of, lock};
use super::super::state::App;
use super::errors::{HsError, parse};
use super::store::{Projection, Store};
use super::validate::{Props, check_properties};

#[derive(Deserialize)]
struct WriteBody {
    properties: Map<String, Value>,
}

/// `POST /crm/v3/objects/contacts`: 201, or 409 when the email exists.
pub(crate) async fn create(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, HsError> {
    let body: WriteBody = parse(&body)?;
    let props = check_properties(&app.hubspot_known, &body.properties)?;
    let now = app.now();
    let mut store = lock(&app.hubspot);
    if let Some(existing) = props.get("email").and_then(|e| store.id_by_email(e)) {
        return Err(HsError::conflict(existing));
    }
    let contact = store.create(props, &now);
    Ok((StatusCode::CREATED, Json(contact.json(&Projection::All))).into_response())
}

/// `GET /crm/v3/objects/contacts?limit=N`: the first N contacts (10 by
/// default); a harmless read for `engine check --live`.
pub(crate) async fn list(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Json<Value> {
    let limit = limit_of(query.as_deref()).unwrap_or(10);
    let store = lock(&app.hubspot);
    let results: Vec<Value> = store
        .contacts()
        .take(limit)
        .map(|c| c.json(&Projection::requested(None)))
        .collect();
    Json(serde_json::json!({ "results": results }))
}

/// `GET /crm/v3/objects/contacts/{id}`: reads the primary store (no lag).
pub(crate) async fn read(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, HsError> {
    let lookup = Lookup::from_query(query.as_deref())?;
    let store = lock(&app.hubspot);
    let contact = lookup.find(&store, &id)?;
    let contact = store.get(contact).ok_or_else(HsError::not_found)?;
    Ok(Json(
        contact.json(&Projection::requested(lookup.properties)),
    ))
}

/// `PATCH /crm/v3/objects/contacts/{id}`: overwrites the given values.
pub(crate) async fn update(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, HsError> {
    let lookup = Lookup::from_query(query.as_deref())?;
    let body: WriteBody = parse(&body)?;
    let props = check_properties(&app.hubspot_known, &body.properties)?;
    let now = app.now();
    let mut store = lock(&app.hubspot);
    let id = lookup.find(&store, &id)?;
    check_email_change(&store, id, &props)?;
    let contact = store
        .update(id, props, &now)
        .ok_or_else(HsError::not_found)?;
    Ok(Json(contact.json(&Projection::All)))
}

/// `DELETE /crm/v3/objects/contacts/{id}`: 204; 404 for an unknown id.
pub(crate) async fn archive(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, HsError> {
    let mut store = lock(&app.hubspot);
    let id = store.find(&id, false).ok_or_else(HsError::not_found)?;
    store.archive(id);
    Ok(StatusCode::NO_CONTENT)
}

/// 409 when `props` would give contact `id` an email another contact has.
pub(crate) fn check_email_change(store: &Store, id: u64, props: &Props) -> Result<(), HsError> {
    match props.get("email").and_then(|e| store.id_by_email(e)) {
        Some(other) if other != id => Err(HsError::conflict(other)),
        _ => Ok(()),
    }
}

/// Whether `idProperty` is `email`, and which properties to answer with.
pub(crate) struct Lookup {
    pub(crate) by_email: bool,
    pub(crate) properties: Option<Vec<String>>,
}

impl Lookup {
    fn from_query(query: Option<&str>) -> Result<Self, HsError> {
        let mut id_property = None;
        let mut properties: Option<Vec<String>> = None;
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "idProperty" => id_property = Some(value.into_owned()),
                "properties" => properties.get_or_insert_with(Vec::new).extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(String::from),
                ),
                _ => {}
            }
        }
        Ok(Lookup {
            by_email: id_property_is_email(id_property.as_deref())?,
            properties,
        })
    }

    fn find(&self, store: &Store, id: &str) -> Result<u64, HsError> {
        store.find(id, self.by_email).ok_or_else(HsError::not_found)
    }
}

/// `idProperty` may be absent, `hs_object_id` (record ids) or `email`.
pub(crate) fn id_property_is_email(id_property: Option<&str>) -> Result<bool, HsError> {
    match id_property {
        None | Some("hs_object_id") => Ok(false),
        Some("email") => Ok(true),
        Some(other) => Err(HsError::non_unique_id_property(other)),
    }
}
