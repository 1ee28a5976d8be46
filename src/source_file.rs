//! One config file as it was loaded: its text, where each key and value is
//! written in it, and the JSON the schema validated. Config loading builds
//! it, the plan keeps it for problems found later (a database check), and
//! every located diagnostic points into it.

use std::collections::HashMap;
use std::ops::Range;

use serde_json::Value;

use crate::diagnostic::{Diagnostic, Severity};

/// One config file's text and where each key is in it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path shown to the user, relative to the config dir (`connectors/hubspot.toml`).
    pub display: String,
    /// The file's text.
    pub text: String,
    /// Spans by key path.
    pub spans: SpanIndex,
    /// The file as JSON (what the schema validated).
    pub json: Value,
}

impl SourceFile {
    /// A diagnostic pointing at the key `path` (or its nearest parent).
    pub fn diagnostic_at_key(
        &self,
        severity: Severity,
        path: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        self.diagnostic_at(self.spans.key_span(path), severity, path, message)
    }

    /// A diagnostic pointing at the value of `path` (or its nearest parent).
    pub fn diagnostic_at_value(
        &self,
        severity: Severity,
        path: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        self.diagnostic_at(self.spans.value_span(path), severity, path, message)
    }

    fn diagnostic_at(
        &self,
        span: Option<std::ops::Range<usize>>,
        severity: Severity,
        path: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let span = span.or_else(|| self.spans.nearest(path));
        Diagnostic::at(severity, &self.display, &self.text, span, path, message)
    }

    /// A diagnostic at a byte offset inside the value of `path` (for template errors).
    pub fn diagnostic_inside_value(
        &self,
        severity: Severity,
        path: &str,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Diagnostic {
        let span = self.spans.value_span(path).map(|value| {
            let offset = offset_in_string_literal(&self.text[value.clone()], line, column);
            let start = value.start + offset;
            start..start + 1
        });
        Diagnostic::at(severity, &self.display, &self.text, span, path, message)
    }
}

/// Maps a (line, column) inside a string's content to a byte offset inside its TOML
/// literal, skipping the opening quotes. Escapes make this approximate, which is fine
/// for pointing a caret.
fn offset_in_string_literal(literal: &str, line: usize, column: usize) -> usize {
    let quote = if literal.starts_with("\"\"\"") || literal.starts_with("'''") {
        3
    } else {
        1
    };
    let mut quote_len = quote.min(literal.len());
    if quote == 3 && literal[quote_len..].starts_with('\n') {
        quote_len += 1;
    }
    let content = &literal[quote_len..];
    let mut offset = 0;
    for (index, text_line) in content.split('\n').enumerate() {
        if index + 1 == line {
            let col: usize = text_line
                .chars()
                .take(column.saturating_sub(1))
                .map(char::len_utf8)
                .sum();
            return quote_len + offset + col;
        }
        offset += text_line.len() + 1;
    }
    quote_len
}

/// Spans of one parsed file, by key path (`retry.max_attempts`, `rate_limits[0].requests`).
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    values: HashMap<String, Range<usize>>,
    keys: HashMap<String, Range<usize>>,
}

impl SpanIndex {
    /// Notes where the key at `path` is written.
    pub(crate) fn record_key(&mut self, path: &str, span: Range<usize>) {
        self.keys.insert(path.to_string(), span);
    }

    /// Notes where the value at `path` is written.
    pub(crate) fn record_value(&mut self, path: &str, span: Range<usize>) {
        self.values.insert(path.to_string(), span);
    }

    /// Span of the key itself when known, else of its value.
    pub fn key_span(&self, path: &str) -> Option<Range<usize>> {
        self.keys
            .get(path)
            .or_else(|| self.values.get(path))
            .cloned()
    }

    /// Span of the value at `path`.
    pub fn value_span(&self, path: &str) -> Option<Range<usize>> {
        self.values
            .get(path)
            .or_else(|| self.keys.get(path))
            .cloned()
    }

    /// The nearest span at `path` or one of its parents, for errors on keys that are absent.
    pub fn nearest(&self, path: &str) -> Option<Range<usize>> {
        let mut current = path.to_string();
        loop {
            if let Some(span) = self.value_span(&current) {
                return Some(span);
            }
            let cut = current.rfind(['.', '['])?;
            current.truncate(cut);
        }
    }
}
