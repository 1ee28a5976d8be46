//! Brevo's error bodies: `{code, message}` plus `metadata` on contact errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone)]
pub(crate) struct BvError {
    status: StatusCode,
    code: &'static str,
    message: String,
    metadata: Option<Value>,
}

impl BvError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        BvError {
            status,
            code,
            message: message.into(),
            metadata: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }

    pub(crate) fn missing(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "missing_parameter", message)
    }

    /// `what` (`email`, `SMS` or `ext_id`) belongs to another contact.
    pub(crate) fn duplicate(action: &str, what: &str) -> Self {
        let message = format!(
            "Unable to {action} contact, {what} is already associated with another Contact"
        );
        BvError {
            metadata: Some(json!({ "duplicate_identifiers": [what] })),
            ..Self::new(StatusCode::BAD_REQUEST, "duplicate_parameter", message)
        }
    }

    pub(crate) fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "document_not_found",
            "Contact does not exist",
        )
    }

    /// The same error answered as a 400 (batch update knows no 404).
    pub(crate) fn into_bad_request(self) -> Self {
        BvError {
            status: StatusCode::BAD_REQUEST,
            ..self
        }
    }
}

impl IntoResponse for BvError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("code".into(), self.code.into());
        body.insert("message".into(), self.message.into());
        if let Some(metadata) = self.metadata {
            body.insert("metadata".into(), metadata);
        }
        (self.status, Json(Value::Object(body))).into_response()
    }
}

pub(crate) fn unauthorized() -> Response {
    BvError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Key not found").into_response()
}

pub(crate) fn rate_limited() -> Response {
    BvError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "Too many requests",
    )
    .into_response()
}

/// An injected 502/503, before anything is written.
pub(crate) fn failure(status: StatusCode) -> Response {
    let (code, message) = match status {
        StatusCode::BAD_GATEWAY => ("bad_gateway", "Bad Gateway"),
        _ => ("service_unavailable", "Service temporarily unavailable"),
    };
    BvError::new(status, code, message).into_response()
}

/// Parses a request body: broken JSON is `bad_request`, a wrong shape
/// `invalid_parameter`.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, BvError> {
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => BvError::invalid(err.to_string()),
        _ => BvError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Input must be a valid JSON object",
        ),
    })
}
