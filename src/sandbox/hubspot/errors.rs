//! HubSpot's error bodies: `{status:"error", message, correlationId, ..., category}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::super::limits::Policy;

pub(crate) const CORRELATION_HEADER: &str = "x-hubspot-correlation-id";

/// One invalid property value, as listed in a VALIDATION_ERROR.
#[derive(Debug, Clone)]
pub(crate) struct PropError {
    pub(crate) name: String,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl PropError {
    pub(crate) fn invalid_email(name: &str, value: &str) -> Self {
        PropError {
            name: name.into(),
            code: "INVALID_EMAIL",
            message: format!("Email address {value} is invalid"),
        }
    }
}

/// One HubSpot error: a whole-request answer or, via [`HsError::item`], one
/// entry of a 207's `errors[]`. Boxed: it travels in many `Result`s.
#[derive(Debug, Clone)]
pub(crate) struct HsError(Box<Detail>);

#[derive(Debug, Clone)]
struct Detail {
    status: StatusCode,
    category: &'static str,
    message: String,
    errors: Option<Value>,
    context: Option<Value>,
}

impl HsError {
    pub(crate) fn new(status: StatusCode, category: &'static str, message: String) -> Self {
        HsError(Box::new(Detail {
            status,
            category,
            message,
            errors: None,
            context: None,
        }))
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message.into())
    }

    pub(crate) fn with_context(mut self, context: Value) -> Self {
        self.0.context = Some(context);
        self
    }

    /// `Property values were not valid: [...]`, the detail JSON inside the message.
    pub(crate) fn properties(problems: &[PropError]) -> Self {
        let detail: Vec<Value> = problems
            .iter()
            .map(|p| json!({"isValid": false, "message": p.message, "error": p.code, "name": p.name}))
            .collect();
        let errors: Vec<Value> = problems
            .iter()
            .map(|p| json!({"message": p.message, "code": p.code, "context": {"propertyName": [p.name]}}))
            .collect();
        let mut error = Self::validation(format!(
            "Property values were not valid: {}",
            Value::Array(detail)
        ));
        error.0.errors = Some(Value::Array(errors));
        error
    }

    pub(crate) fn conflict(existing_id: u64) -> Self {
        let message = format!("Contact already exists. Existing ID: {existing_id}");
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }

    pub(crate) fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            "resource not found".into(),
        )
    }

    pub(crate) fn duplicate_ids(ids: &[String]) -> Self {
        Self::validation(format!(
            "Duplicate IDs found in batch input: [{}]. IDs must be unique",
            ids.join(", ")
        ))
        .with_context(json!({ "ids": ids }))
    }

    pub(crate) fn too_many_inputs(count: usize) -> Self {
        Self::validation(format!(
            "The maximum number of inputs supported in a batch request is 100, got {count}. \
             Please reduce the number of items and try again"
        ))
    }

    pub(crate) fn non_unique_id_property(name: &str) -> Self {
        Self::validation(format!(
            "Unable to perform update/upsert by non-unique 0-1 property {name}"
        ))
    }

    /// A body that does not parse into the request schema.
    pub(crate) fn bad_json(err: &serde_json::Error) -> Self {
        Self::validation(format!(
            "Invalid input JSON on line {}, column {}: {err}",
            err.line(),
            err.column()
        ))
    }

    /// This error as one entry of a batch answer's `errors[]`.
    pub(crate) fn item(&self, context: Value) -> Value {
        let mut item = Map::new();
        item.insert("status".into(), "error".into());
        item.insert("category".into(), self.0.category.into());
        item.insert("message".into(), self.0.message.clone().into());
        if let Some(errors) = &self.0.errors {
            item.insert("errors".into(), errors.clone());
        }
        item.insert("context".into(), context);
        Value::Object(item)
    }

    fn body(&self, correlation_id: &str) -> Value {
        let mut body = Map::new();
        body.insert("status".into(), "error".into());
        body.insert("message".into(), self.0.message.clone().into());
        body.insert("correlationId".into(), correlation_id.into());
        if let Some(errors) = &self.0.errors {
            body.insert("errors".into(), errors.clone());
        }
        if let Some(context) = &self.0.context {
            body.insert("context".into(), context.clone());
        }
        body.insert("category".into(), self.0.category.into());
        Value::Object(body)
    }
}

impl IntoResponse for HsError {
    fn into_response(self) -> Response {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        respond(self.0.status, self.body(&correlation_id), &correlation_id)
    }
}

/// A JSON answer carrying `X-HubSpot-Correlation-Id`.
fn respond(status: StatusCode, body: Value, correlation_id: &str) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    response
}

pub(crate) fn unauthorized() -> Response {
    HsError::new(
        StatusCode::UNAUTHORIZED,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found. This API supports OAuth 2.0 authentication \
         and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
            .into(),
    )
    .into_response()
}

/// The 429 body: `errorType` and `policyName` instead of `category`.
pub(crate) fn rate_limited(policy: Policy) -> Response {
    let (name, limit) = match policy {
        Policy::Daily => ("DAILY", "daily"),
        Policy::Secondly | Policy::BrevoPerSecond => ("SECONDLY", "secondly"),
        Policy::TenSecondlyRolling => ("TEN_SECONDLY_ROLLING", "ten_secondly_rolling"),
    };
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "status": "error",
        "message": format!("You have reached your {limit} limit."),
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id,
        "policyName": name,
    });
    respond(StatusCode::TOO_MANY_REQUESTS, body, &correlation_id)
}

/// An injected 502/503, before anything is written.
pub(crate) fn failure(status: StatusCode) -> Response {
    let message = match status {
        StatusCode::BAD_GATEWAY => "Bad Gateway: the request could not be processed, try again",
        _ => "Service Unavailable: the service is temporarily unavailable, try again",
    };
    HsError::new(status, "INTERNAL_ERROR", message.into()).into_response()
}

/// Parses a request body into its schema, or a HubSpot 400.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, HsError> {
    serde_json::from_slice(body).map_err(|err| HsError::bad_json(&err))
}
