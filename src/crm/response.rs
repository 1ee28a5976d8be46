//! Reading a CRM response: JSON body, error message, ids.

use serde_json::Value;

/// A response as the flows see it.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// The error message (from the connector's pointers), or a short excerpt of the body.
    pub message: String,
}

impl Response {
    /// Builds a response from raw parts.
    pub fn new(status: u16, text: &str, message_pointers: &[String]) -> Self {
        let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let message = message_pointers
            .iter()
            .find_map(|pointer| {
                body.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_else(|| excerpt(text));
        Self {
            status,
            body,
            message,
        }
    }

    /// `HTTP 409 Conflict: <message>`, the form every stored error takes.
    pub fn reason(&self) -> String {
        let canonical = reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason());
        match canonical {
            Some(text) => format!("HTTP {} {text}: {}", self.status, self.message),
            None => format!("HTTP {}: {}", self.status, self.message),
        }
    }

    /// The id at `pointer`, as text (ids may be numbers or strings).
    pub fn id_at(&self, pointer: &str) -> Option<String> {
        id_text(self.body.pointer(pointer)?)
    }
}

/// An id value as text.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// At most 300 characters of a body, on one line.
pub fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 300 {
        flat.chars().take(300).collect::<String>() + "…"
    } else {
        flat
    }
}
