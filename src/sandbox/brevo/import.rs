//! Brevo's asynchronous import (`POST /v3/contacts/import`), its processes
//! (`GET /v3/processes/{id}`) and the paged contact listing (`GET
//! /v3/contacts?limit&offset&modifiedSince&sort`).
//!
//! An import answers 202 `{processId}` at once and is applied later: its
//! process is `in_process` until a processing delay has passed on the
//! sandbox clock, then `completed` (how its rows are applied is in `apply`).
//! Only `jsonBody` is imitated (not `fileBody` or `fileUrl`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::common::lock;
use super::super::state::App;
use super::errors::{BvError, parse};
use super::process::{ImportContact, ImportRows, Process};

/// Brevo's documented ceiling for `jsonBody` (8 MB recommended).
pub(crate) const MAX_IMPORT_BYTES: usize = 10 * 1024 * 1024;

/// The most contacts one listing page returns.
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportBody {
    #[serde(default)]
    json_body: Option<Vec<ImportContact>>,
    #[serde(default)]
    file_body: Option<String>,
    #[serde(default)]
    file_url: Option<String>,
    #[serde(default)]
    list_ids: Vec<u64>,
    #[serde(default)]
    new_list: Option<Value>,
    #[serde(default = "yes")]
    update_existing_contacts: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v3/contacts/import`: 202 `{processId}`; 400 without contacts,
/// without a list, or over 10 MB.
pub(crate) async fn import(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, BvError> {
    if body.len() > MAX_IMPORT_BYTES {
        return Err(BvError::invalid(
            "Maximum allowed json body size is 10MB, please use fileUrl instead",
        ));
    }
    let body: ImportBody = parse(&body)?;
    if body.file_body.is_some() || body.file_url.is_some() {
        return Err(BvError::invalid(
            "the sandbox imitates jsonBody imports only",
        ));
    }
    let Some(contacts) = body.json_body.filter(|c| !c.is_empty()) else {
        return Err(BvError::missing(
            "Please provide one of fileUrl, fileBody or jsonBody",
        ));
    };
    if body.list_ids.is_empty() && body.new_list.is_none() {
        return Err(BvError::missing("listIds or newList is mandatory"));
    }
    let delay = Duration::from_millis(
        app.opts.brevo_import_delay_ms
            + contacts.len() as u64 * app.opts.brevo_import_us_per_row / 1000,
    );
    let mut store = lock(&app.brevo);
    let id = store.next_process_id();
    let rows = ImportRows {
        contacts,
        list_ids: body.list_ids,
        update_existing: body.update_existing_contacts,
    };
    store
        .processes
        .push(Process::new(id, app.clock.instant() + delay, rows));
    Ok((StatusCode::ACCEPTED, Json(json!({ "processId": id }))).into_response())
}

/// `GET /v3/processes/{processId}`: `in_process`, then `completed`; 404
/// for an unknown id.
pub(crate) async fn process(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, BvError> {
    let id: u64 = id
        .parse()
        .map_err(|_| BvError::invalid("processId should be an integer"))?;
    let store = app.brevo_settled();
    let process = store
        .processes
        .iter()
        .find(|p| p.id() == id)
        .ok_or_else(|| {
            BvError::new(
                StatusCode::NOT_FOUND,
                "document_not_found",
                "Process does not exist",
            )
        })?;
    let status = if process.done() {
        "completed"
    } else {
        "in_process"
    };
    Ok(Json(
        json!({ "id": id, "status": status, "name": "IMPORTUSER" }),
    ))
}

/// `GET /v3/contacts?limit&offset&modifiedSince&createdSince&sort`: one
/// page (at most 1000) of the contacts changed (created) after the given
/// instant, newest first unless `sort=asc`, and how many match in all.
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, BvError> {
    let mut limit = 50usize;
    let mut offset = 0usize;
    let mut modified_since = None;
    let mut created_since = None;
    let mut ascending = false;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_PAGE)
                    .ok_or_else(|| BvError::invalid("limit should be between 0 and 1000"))?;
            }
            "offset" => {
                offset = value
                    .parse()
                    .map_err(|_| BvError::invalid("offset should be an integer"))?;
            }
            "modifiedSince" => modified_since = Some(instant(&value)?),
            "createdSince" => created_since = Some(instant(&value)?),
            "sort" => ascending = value == "asc",
            _ => {}
        }
    }
    let store = app.brevo_settled();
    let mut matching = store.changed_since(modified_since, created_since);
    if !ascending {
        matching.reverse();
    }
    let count = matching.len();
    // Only the page is rendered: a listing of 20,000 changed contacts read
    // 1,000 at a time must not render all of them for every page.
    let contacts: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|c| c.json())
        .collect();
    Ok(Json(json!({ "contacts": contacts, "count": count })))
}

/// A `modifiedSince`/`createdSince` value: a date-time with a zone.
fn instant(raw: &str) -> Result<DateTime<Utc>, BvError> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| BvError::invalid("date-time should be in YYYY-MM-DDTHH:mm:ss.SSSZ format"))
}
