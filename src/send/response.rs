//! Reading a CRM response: JSON body, error message, ids.

use serde_json::Value;

use crate::store::text::stored_text;

/// A response as the flows see it.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// The error message (from the connector's pointers), or a short excerpt
    /// of the body; at most [`crate::store::text::MAX_STORED_CHARS`] characters, without control
    /// characters (it ends up in the row's error column).
    pub message: String,
    /// The body has content that is not JSON (an HTML page, a cut-off answer).
    pub not_json: bool,
}

impl Response {
    /// Builds a response from its status and raw body.
    pub fn new(status: u16, raw: &[u8], message_pointers: &[String]) -> Self {
        let parsed = serde_json::from_slice::<Value>(raw).ok();
        let not_json = parsed.is_none() && !raw.trim_ascii().is_empty();
        let body = parsed.unwrap_or(Value::Null);
        let message = message_pointers
            .iter()
            .find_map(|pointer| {
                body.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(|text| stored_text(text).into_owned())
            })
            .unwrap_or_else(|| stored_text(&excerpt(&String::from_utf8_lossy(raw))).into_owned());
        Self {
            status,
            body,
            message,
            not_json,
        }
    }

    /// `HTTP 409 Conflict: <message>`, the form every stored error takes.
    pub fn reason(&self) -> String {
        let canonical = reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason());
        let head = match canonical {
            Some(text) => format!("HTTP {} {text}", self.status),
            None => format!("HTTP {}", self.status),
        };
        if self.message.is_empty() {
            head
        } else {
            format!("{head}: {}", self.message)
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

/// At most [`EXCERPT_CHARS`] characters of a body, on one line: runs of
/// whitespace become one space, and `…` marks a cut.
///
/// It reads only as far as it keeps: a success's body has no error message,
/// so every batch response (100 records, tens of kilobytes) comes here.
pub fn excerpt(text: &str) -> String {
    let mut flat = String::new();
    let mut chars = 0;
    for word in text.split_whitespace() {
        if chars > 0 {
            flat.push(' ');
            chars += 1;
        }
        flat.push_str(word);
        chars += word.chars().count();
        if chars > EXCERPT_CHARS {
            let cut = flat
                .char_indices()
                .nth(EXCERPT_CHARS)
                .map_or(flat.len(), |(at, _)| at);
            flat.truncate(cut);
            flat.push('…');
            break;
        }
    }
    flat
}

/// The length of [`excerpt`].
pub const EXCERPT_CHARS: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::text::MAX_STORED_CHARS;

    #[test]
    fn an_excerpt_keeps_a_short_body_whole_on_one_line() {
        assert_eq!(
            excerpt("  upstream\n  timed   out \t"),
            "upstream timed out"
        );
        assert_eq!(excerpt(""), "");
    }

    #[test]
    fn an_excerpt_cuts_a_long_body_at_300_characters() {
        let body = format!("{} {}", "é".repeat(299), "x".repeat(50_000));
        let cut = excerpt(&body);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.starts_with(&"é".repeat(299)));
        assert!(cut.ends_with(" …"));
        // Exactly 300 characters is not cut.
        assert_eq!(excerpt(&"y".repeat(300)), "y".repeat(300));
        assert_eq!(excerpt(&"y".repeat(301)), format!("{}…", "y".repeat(300)));
    }

    #[test]
    fn a_response_without_a_message_pointer_match_keeps_an_excerpt() {
        let pointers = vec!["/message".to_string()];
        let with = Response::new(400, br#"{"message": "bad email"}"#, &pointers);
        assert_eq!(with.message, "bad email");
        let without = Response::new(502, b"<html>\n  Bad   Gateway\n</html>", &pointers);
        assert_eq!(without.message, "<html> Bad Gateway </html>");
        assert_eq!(without.body, Value::Null);
        let invalid = Response::new(500, b"oops \xff", &pointers);
        assert_eq!(invalid.message, "oops \u{fffd}");
        assert!(without.not_json && invalid.not_json && !with.not_json);
        assert!(!Response::new(204, b" \n", &pointers).not_json);
        let binary = Response::new(502, b"bad\0gateway\x1b[2J", &pointers);
        assert_eq!(binary.message, "bad\u{fffd}gateway\u{fffd}[2J");
    }

    #[test]
    fn a_huge_or_binary_message_is_cut_and_cleaned_when_read() {
        let pointers = vec!["/message".to_string()];
        let huge = serde_json::json!({"message": format!("bad\u{0}{}", "x".repeat(100_000))});
        let response = Response::new(400, huge.to_string().as_bytes(), &pointers);
        assert!(response.message.starts_with("bad\u{fffd}xxx"));
        assert!(response.message.chars().count() < MAX_STORED_CHARS + 40);
    }
}
