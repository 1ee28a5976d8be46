//! Problems found in config files, each pointing at file, line, column and key
//! path, with a one-line hint. `engine check` collects all of them before printing.

use std::fmt;
use std::ops::Range;

/// How bad a problem is: errors stop `run`; warnings are printed and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something is wrong but the engine can run.
    Warning,
    /// The config cannot run.
    Error,
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// File as given to the user (relative to the config dir).
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// TOML key path, e.g. `retry.max_attempts`; empty for the whole file.
    pub key_path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The source line and the width of the caret under it.
    pub excerpt: Option<(String, usize)>,
}

impl Diagnostic {
    /// A problem at byte range `span` of `text` (or the whole file when `None`).
    pub fn at(
        severity: Severity,
        file: &str,
        text: &str,
        span: Option<Range<usize>>,
        key_path: &str,
        message: impl Into<String>,
    ) -> Self {
        let (line, column, excerpt) = match span {
            Some(span) => locate(text, span),
            None => (0, 0, None),
        };
        Self {
            severity,
            file: file.to_string(),
            line,
            column,
            key_path: key_path.to_string(),
            message: message.into(),
            hint: None,
            excerpt,
        }
    }

    /// Adds a hint.
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Hides `secret` wherever the excerpt shows it: a diagnostic about a pasted
    /// secret must not print it again.
    #[must_use]
    pub fn redact(mut self, secret: &str) -> Self {
        if let Some((line, width)) = &mut self.excerpt
            && !secret.is_empty()
            && line.contains(secret)
        {
            *line = line.replace(secret, "***");
            *width = (*width).min(5);
        }
        self
    }

    /// `true` for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Line, column and the excerpt of a byte span.
fn locate(text: &str, span: Range<usize>) -> (usize, usize, Option<(String, usize)>) {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let source_line = text[line_start..line_end]
        .trim_end_matches('\r')
        .to_string();
    let width = text[start..span.end.clamp(start, line_end)]
        .chars()
        .count()
        .max(1);
    (line, column, Some((source_line, width)))
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{label}: {}", self.message)?;
        let key = if self.key_path.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.key_path)
        };
        if self.line == 0 {
            writeln!(f, "  --> {}{key}", self.file)?;
        } else {
            writeln!(f, "  --> {}:{}:{}{key}", self.file, self.line, self.column)?;
        }
        if let Some((source, width)) = &self.excerpt {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            writeln!(f, "{pad} |")?;
            writeln!(f, "{number} | {source}")?;
            writeln!(
                f,
                "{pad} | {}{}",
                " ".repeat(self.column - 1),
                "^".repeat(*width)
            )?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// Prints every diagnostic and a closing count line; returns that line.
pub fn summary(diagnostics: &[Diagnostic]) -> String {
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}
