//! `/v3/contacts` endpoints: create (or upsert), get, update, delete, batch update.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::super::state::App;
use super::errors::{BvError, parse};
use super::store::{Changes, Ident};
use super::validate::{check_attributes, check_email, ident};

/// The fields that create, update and batch update share.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Fields {
    #[serde(rename = "ext_id")]
    ext_id: Option<String>,
    #[serde(default)]
    attributes: Map<String, Value>,
    #[serde(default)]
    list_ids: Vec<u64>,
    #[serde(default)]
    unlink_list_ids: Vec<u64>,
    email_blacklisted: Option<bool>,
    sms_blacklisted: Option<bool>,
}

impl Fields {
    fn changes(self) -> Result<Changes, BvError> {
        let mut changes = Changes {
            ext_id: self.ext_id.filter(|e| !e.is_empty()),
            list_ids: self.list_ids,
            unlink_list_ids: self.unlink_list_ids,
            email_blacklisted: self.email_blacklisted,
            sms_blacklisted: self.sms_blacklisted,
            ..Changes::default()
        };
        check_attributes(&self.attributes, &mut changes)?;
        Ok(changes)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    email: Option<String>,
    #[serde(default)]
    update_enabled: bool,
    #[serde(flatten)]
    fields: Fields,
}

/// `POST /v3/contacts`: 201 `{id}`; 204 when `updateEnabled` updates an
/// existing contact; 400 `duplicate_parameter` when it does not.
pub(crate) async fn create(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, BvError> {
    let body: CreateBody = parse(&body)?;
    let mut changes = body.fields.changes()?;
    if let Some(email) = body.email.as_deref().filter(|e| !e.is_empty()) {
        changes.email = Some(check_email(email)?);
    }
    if changes.email.is_none() && changes.sms().is_none() && changes.ext_id.is_none() {
        return Err(BvError::missing(
            "Please provide Email or SMS attribute value to create user",
        ));
    }
    let now = app.clock.wall();
    let mut store = app.brevo_settled();
    let target = store.existing(&changes);
    if let Some((_, what)) = target.filter(|_| !body.update_enabled) {
        return Err(BvError::duplicate("create", what));
    }
    let target = target.map(|(id, _)| id);
    store.check_unique(
        &changes,
        target,
        if target.is_some() { "update" } else { "create" },
    )?;
    Ok(match target {
        Some(id) => {
            store.update(id, changes, now);
            StatusCode::NO_CONTENT.into_response()
        }
        None => {
            let id = store.create(changes, now);
            (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
        }
    })
}

/// `GET /v3/contacts/{identifier}`: the contact, or 404 `document_not_found`.
pub(crate) async fn read(
    State(app): State<Arc<App>>,
    Path(identifier): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, BvError> {
    let ident = path_ident(&identifier, query.as_deref())?;
    let store = app.brevo_settled();
    let contact = store
        .find(&ident)
        .and_then(|id| store.get(id))
        .ok_or_else(BvError::not_found)?;
    Ok(Json(contact.json()))
}

/// `PUT /v3/contacts/{identifier}`: 204; `attributes.EMAIL` changes the email.
pub(crate) async fn update(
    State(app): State<Arc<App>>,
    Path(identifier): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<StatusCode, BvError> {
    let ident = path_ident(&identifier, query.as_deref())?;
    let fields: Fields = parse(&body)?;
    let changes = fields.changes()?;
    let now = app.clock.wall();
    let mut store = app.brevo_settled();
    let id = store.find(&ident).ok_or_else(BvError::not_found)?;
    store.check_unique(&changes, Some(id), "update")?;
    store.update(id, changes, now);
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v3/contacts/{identifier}`: 204 with no body; 404
/// `document_not_found` when no contact has that identifier.
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Path(identifier): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, BvError> {
    let ident = path_ident(&identifier, query.as_deref())?;
    let mut store = app.brevo_settled();
    let id = store.find(&ident).ok_or_else(BvError::not_found)?;
    store.delete(id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct BatchBody {
    contacts: Vec<BatchContact>,
}

#[derive(Deserialize)]
struct BatchContact {
    email: Option<String>,
    id: Option<u64>,
    sms: Option<String>,
    #[serde(flatten)]
    fields: Fields,
}

impl BatchContact {
    fn ident(&self) -> Result<Ident, BvError> {
        match (&self.email, self.id, &self.sms) {
            (Some(email), None, None) => Ok(Ident::Email(email.to_lowercase())),
            (None, Some(id), None) => Ok(Ident::Id(id)),
            (None, None, Some(sms)) => ident(sms, Some("phone_id")),
            (None, None, None) => Err(BvError::missing(
                "Please provide email, id or sms for each contact",
            )),
            _ => Err(BvError::invalid(
                "Provide only one of email, id or sms for each contact",
            )),
        }
    }
}

/// `POST /v3/contacts/batch`: updates existing contacts only, all or none; 204.
pub(crate) async fn batch(State(app): State<Arc<App>>, body: Bytes) -> Result<StatusCode, BvError> {
    let BatchBody { contacts } = parse(&body)?;
    let now = app.clock.wall();
    let mut store = app.brevo_settled();
    let mut writes = Vec::with_capacity(contacts.len());
    for contact in contacts {
        let ident = contact.ident()?;
        let changes = contact.fields.changes()?;
        let id = store
            .find(&ident)
            .ok_or_else(|| BvError::not_found().into_bad_request())?;
        store.check_unique(&changes, Some(id), "update")?;
        writes.push((id, changes));
    }
    for (id, changes) in writes {
        store.update(id, changes, now);
    }
    Ok(StatusCode::NO_CONTENT)
}

fn path_ident(identifier: &str, query: Option<&str>) -> Result<Ident, BvError> {
    let kind = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(key, _)| key == "identifierType")
        .map(|(_, value)| value.into_owned());
    ident(identifier, kind.as_deref())
}
