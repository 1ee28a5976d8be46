//! Template checks shared by connectors and mappings: syntax (at the line and
//! column inside the TOML string), unknown helpers, and the variables used.

use serde_json::Value;

use crate::config::toml_json::{join_index, join_key};
use crate::diagnostic::{Diagnostic, Severity};
use crate::source_file::SourceFile;
use crate::template::{self, ENGINE_HELPERS};

/// The [`VariableUse::name`] of a template that reads its whole render
/// context (`{{json this}}`): every column, for a mapping.
pub const WHOLE_CONTEXT: &str = "this";

/// A variable a template uses, and where.
#[derive(Debug, Clone)]
pub struct VariableUse {
    /// Key path of the template.
    pub at: String,
    /// Root variable name.
    pub name: String,
}

/// Checks every string leaf of `tree` (found at key path `path` in `source`).
/// Variables outside `allowed` (when given) are reported; all uses are returned.
pub fn check_tree(
    source: &SourceFile,
    path: &str,
    tree: &Value,
    allowed: Option<&[&str]>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<VariableUse> {
    let mut uses = Vec::new();
    walk(source, path, tree, allowed, diagnostics, &mut uses);
    uses
}

fn walk(
    source: &SourceFile,
    path: &str,
    tree: &Value,
    allowed: Option<&[&str]>,
    diagnostics: &mut Vec<Diagnostic>,
    uses: &mut Vec<VariableUse>,
) {
    match tree {
        Value::String(text) => check_leaf(source, path, text, allowed, diagnostics, uses),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                walk(
                    source,
                    &join_index(path, index),
                    item,
                    allowed,
                    diagnostics,
                    uses,
                );
            }
        }
        Value::Object(map) => {
            for (key, value) in map {
                walk(
                    source,
                    &join_key(path, key),
                    value,
                    allowed,
                    diagnostics,
                    uses,
                );
            }
        }
        _ => {}
    }
}

/// Checks one template string.
pub fn check_leaf(
    source: &SourceFile,
    path: &str,
    text: &str,
    allowed: Option<&[&str]>,
    diagnostics: &mut Vec<Diagnostic>,
    uses: &mut Vec<VariableUse>,
) {
    let analysis = template::analyse(text);
    for error in &analysis.errors {
        let hint = if error.message.starts_with("unknown helper") {
            format!("helpers: {}", ENGINE_HELPERS.join(", "))
        } else {
            "handlebars syntax: `{{column}}`, `{{helper column}}`, `{{#if column}}...{{/if}}`"
                .to_string()
        };
        let message = format!("template `{path}` does not compile: {}", error.message);
        diagnostics.push(
            source
                .diagnostic_inside_value(Severity::Error, path, error.line, error.column, message)
                .hint(hint),
        );
    }
    for name in &analysis.variables {
        if allowed.is_none()
            && let Some(helper) = looks_like_helper(name)
        {
            diagnostics.push(
                source
                    .diagnostic_at_value(
                        Severity::Warning,
                        path,
                        format!("template `{path}` reads a column `{name}`; did you mean the helper `{helper}`?"),
                    )
                    .hint("`engine check --database URL` tells whether it is a column"),
            );
        }
        if let Some(allowed) = allowed
            && !allowed.contains(&name.as_str())
        {
            diagnostics.push(
                source
                    .diagnostic_at_value(
                        Severity::Error,
                        path,
                        format!("template `{path}` uses `{name}`, which is not available here"),
                    )
                    .hint(format!("connector templates see: {}", allowed.join(", "))),
            );
        }
        uses.push(VariableUse {
            at: path.to_string(),
            name: name.clone(),
        });
    }
    if analysis.reads_whole_context {
        uses.push(VariableUse {
            at: path.to_string(),
            name: WHOLE_CONTEXT.to_string(),
        });
    }
}

/// A variable spelt almost like one of our helpers (`todya` for `today`) is
/// probably a typo rather than a column.
fn looks_like_helper(name: &str) -> Option<&'static str> {
    if ENGINE_HELPERS.contains(&name) {
        return None;
    }
    ENGINE_HELPERS
        .iter()
        .map(|h| (strsim::jaro_winkler(name, h), *h))
        .filter(|(score, _)| *score > 0.9)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, h)| h)
}
