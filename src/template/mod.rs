//! Templates: compile, analyse and render the handlebars templates of
//! mappings and connectors.
//!
//! # Template trees
//! A *template tree* is a `serde_json::Value` read from TOML whose every
//! string leaf is a handlebars template; numbers, booleans, arrays and tables
//! keep their shape. Rendering builds a `serde_json::Value` leaf by leaf, so
//! quotes, backslashes, newlines or emoji in the data can never break a
//! payload: no JSON text is ever concatenated.
//!
//! - **Typed insertion.** A leaf that is exactly one simple expression
//!   (`"{{fields}}"`, `"{{params.list_ids}}"`, `"{{retry_count}}"`) inserts the
//!   value at that path as it is: object, array, number, bool or string. Any
//!   other leaf (helpers, surrounding text, several expressions) renders to a
//!   string.
//! - **Empty values.** A leaf that renders to `""`, or whose typed insertion is
//!   `null` or `""`, follows [`OnEmpty`]. Empty arrays and tables are values,
//!   and a table whose keys were all omitted stays as `{}`.
//! - **Strict.** A variable that is not in the render context (a misspelt
//!   column) is a [`RenderError`] naming it, never an empty value. A column
//!   that is present but NULL is empty.
//! - **No HTML escaping** in trees. [Path templates](Templates::compile_path)
//!   percent-encode what they interpolate instead.
//!
//! # The render context
//! A JSON object, usually the row's columns plus whatever the caller adds
//! (`params`, `items`, …). The reserved root key `__now` ([`NOW_KEY`]), an
//! RFC 3339 string, pins the clock of `today` and `today_epoch_ms`.
//!
//! # Helpers
//! See [`all_helpers`] and the `helpers` module: `lower`, `upper`, `trim`,
//! `first_name`, `last_name`, `today`, `today_epoch_ms`, `e164`, `md5`,
//! `sha256`, `urlencode`, `default`, `coalesce`, `json`, `date_ymd`,
//! `epoch_ms`, plus handlebars' own (`if`, `each`, `eq`, …).

mod analyse;
mod helpers;
mod tree;

use std::fmt;

use handlebars::{Handlebars, RenderErrorReason, Template};

pub use analyse::{Analysis, analyse, suggest_helper};
pub use helpers::{BUILTIN_HELPERS, ENGINE_HELPERS, NOW_KEY, all_helpers, is_helper, now_rfc3339};
pub use tree::CompiledTree;

/// What to send for a leaf that renders empty (`""`, or a typed `null`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnEmpty {
    /// Leave the key out of its table (an array drops the element).
    #[default]
    Omit,
    /// Send `""`.
    EmptyString,
    /// Send JSON `null`.
    Null,
}

/// A template that does not compile, or calls something that doesn't exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Key path of the leaf in its tree (`fields.firstname`, `list_ids[0]`);
    /// empty for a path template or a tree that is one string.
    pub leaf: String,
    /// 1-based line inside the template text.
    pub line: usize,
    /// 1-based column (in characters) inside the template text.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.leaf.is_empty() {
            write!(f, "`{}` ", self.leaf)?;
        }
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for TemplateError {}

/// A template that could not be rendered for one render context (one row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    /// Key path of the leaf that failed; empty for a path template.
    pub leaf: String,
    /// What went wrong, naming the variable or helper, e.g.
    /// "variable `phone_numbr` is not a column of the row".
    pub message: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.leaf.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "`{}`: {}", self.leaf, self.message)
        }
    }
}

impl std::error::Error for RenderError {}

impl RenderError {
    fn from_handlebars(leaf: &str, e: &handlebars::RenderError) -> Self {
        let message = match e.reason() {
            RenderErrorReason::MissingVariable(Some(path)) => missing_variable(path),
            RenderErrorReason::MissingVariable(None) => "a variable is missing".to_owned(),
            RenderErrorReason::HelperNotFound(name) => format!("unknown helper `{name}`"),
            RenderErrorReason::Other(message) => message.clone(),
            other => other.to_string(),
        };
        RenderError {
            leaf: leaf.to_owned(),
            message,
        }
    }
}

/// The message for a variable that is not in the render context.
fn missing_variable(path: &str) -> String {
    if path.contains(['.', '/', '[']) {
        format!("variable `{path}` is not in the render context")
    } else {
        format!("variable `{path}` is not a column of the row")
    }
}

/// A compiled URL path template such as `/v3/contacts/{{key}}`.
#[derive(Debug, Clone)]
pub struct CompiledPath {
    template: Template,
    /// The path itself when it interpolates nothing (a batch endpoint).
    literal: Option<String>,
}

impl CompiledPath {
    /// Whether the path interpolates nothing: the same endpoint for every row.
    pub fn is_literal(&self) -> bool {
        self.literal.is_some()
    }
}

/// The handlebars registries, with every helper, strict mode on.
///
/// Compiled templates live in the [`CompiledTree`]/[`CompiledPath`] values,
/// not in the registry: two trees compiled under the same name can never
/// replace each other, and rendering never re-parses. `Templates` is
/// `Send + Sync`: share it behind an `Arc` and render from many tasks.
pub struct Templates {
    /// Trees: no escaping at all.
    fields: Handlebars<'static>,
    /// Paths: `{{…}}` output is percent-encoded as one path segment.
    paths: Handlebars<'static>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// Marks a `{{…}}` that rendered empty in a path template. Interpolated
/// output is percent-encoded, so a raw NUL can only come from here.
const EMPTY_SEGMENT: &str = "\u{0}";

impl Templates {
    /// Registries with every helper, strict mode on, no HTML escaping.
    #[must_use]
    pub fn new() -> Self {
        let mut fields = Handlebars::new();
        fields.set_strict_mode(true);
        fields.register_escape_fn(handlebars::no_escape);
        helpers::register(&mut fields);

        let mut paths = Handlebars::new();
        paths.set_strict_mode(true);
        paths.register_escape_fn(|s: &str| {
            if s.is_empty() {
                EMPTY_SEGMENT.to_owned()
            } else {
                helpers::percent_encode(s)
            }
        });
        helpers::register(&mut paths);

        Templates { fields, paths }
    }

    /// Compiles every string leaf of `tree`. Each template is named
    /// `{name}:{leaf}` (e.g. `mappings/hubspot.toml:fields.firstname`), or
    /// just `{name}` when the tree is one string. Returns every error: syntax
    /// errors, unknown helpers, wrong argument counts.
    ///
    /// # Errors
    /// Every leaf that does not compile, each with its key path, line and
    /// column.
    pub fn compile_tree(
        &mut self,
        name: &str,
        tree: &serde_json::Value,
    ) -> Result<CompiledTree, Vec<TemplateError>> {
        CompiledTree::compile(name, tree)
    }

    /// Compiles a URL path template. What `{{…}}` interpolates is
    /// percent-encoded as one path segment (`/` → `%2F`, `@` → `%40`), the
    /// literal text is not; `{{{raw}}}` opts out of encoding.
    ///
    /// # Errors
    /// The first syntax error, unknown helper or wrong argument count.
    pub fn compile_path(
        &mut self,
        name: &str,
        template: &str,
    ) -> Result<CompiledPath, TemplateError> {
        if template.contains(EMPTY_SEGMENT) {
            return Err(TemplateError {
                leaf: String::new(),
                line: 1,
                column: 1,
                message: "a path template cannot contain a NUL character".to_owned(),
            });
        }
        let template = compile_checked(name, template).map_err(|mut errors| errors.remove(0))?;
        let literal = tree::literal_text(&template);
        Ok(CompiledPath { template, literal })
    }

    /// Renders `tree` for one render context (usually a row). Empty leaves
    /// follow `on_empty`; a tree that is one string leaf rendering empty with
    /// [`OnEmpty::Omit`] gives `null`.
    ///
    /// # Errors
    /// The first leaf that fails: a variable missing from `ctx`, or a helper
    /// given something it cannot convert.
    pub fn render_tree(
        &self,
        tree: &CompiledTree,
        ctx: &serde_json::Value,
        on_empty: OnEmpty,
    ) -> Result<serde_json::Value, RenderError> {
        tree.render(&self.fields, ctx, on_empty)
    }

    /// As [`Templates::render_tree`], for a context the caller no longer
    /// needs as it is: rendering takes no copy of it (handlebars needs one of
    /// its own otherwise). The context is handed back, unchanged.
    pub fn render_tree_owned(
        &self,
        tree: &CompiledTree,
        ctx: serde_json::Value,
        on_empty: OnEmpty,
    ) -> (Result<serde_json::Value, RenderError>, serde_json::Value) {
        tree.render_owned(&self.fields, ctx, on_empty)
    }

    /// As [`Templates::render_tree`], for a context the caller is done with:
    /// a tree of typed insertions (a batch body, `{ inputs = "{{items}}" }`)
    /// moves the values out of it instead of copying them.
    pub fn render_tree_consuming(
        &self,
        tree: &CompiledTree,
        ctx: serde_json::Value,
        on_empty: OnEmpty,
    ) -> Result<serde_json::Value, RenderError> {
        tree.render_consuming(&self.fields, ctx, on_empty)
    }

    /// Renders a path template. A `{{…}}` that renders empty (a NULL or
    /// empty value) is an error: `/contacts/` would address the collection,
    /// not the record.
    ///
    /// # Errors
    /// As [`Templates::render_tree`], plus an interpolation that renders empty.
    pub fn render_path(
        &self,
        path: &CompiledPath,
        ctx: &serde_json::Value,
    ) -> Result<String, RenderError> {
        if let Some(literal) = &path.literal {
            return Ok(literal.clone());
        }
        let hb_ctx = handlebars::Context::from(ctx.clone());
        let rendered = render_template(&self.paths, &path.template, &hb_ctx, "")?;
        if rendered.contains(EMPTY_SEGMENT) {
            return Err(RenderError {
                leaf: String::new(),
                message: format!(
                    "a value in the path rendered empty (NULL or \"\"): {}",
                    rendered.replace(EMPTY_SEGMENT, "{empty}")
                ),
            });
        }
        Ok(rendered)
    }

    /// Renders a tree that is one string leaf (a query or header value) to
    /// its text, with no omission: an empty value gives `""`.
    ///
    /// # Errors
    /// As [`Templates::render_tree`], plus a tree that is an array or table.
    pub fn render_str(
        &self,
        tree: &CompiledTree,
        ctx: &serde_json::Value,
    ) -> Result<String, RenderError> {
        tree.render_str(&self.fields, ctx)
    }
}

/// Compiles one template and runs the analysis on it: unknown helpers and
/// wrong argument counts are compile errors too.
fn compile_checked(name: &str, source: &str) -> Result<Template, Vec<TemplateError>> {
    let template = Template::compile_with_name(source, name.to_owned())
        .map_err(|e| vec![analyse::compile_error(source, &e)])?;
    let analysis = analyse::analyse_compiled(source, &template);
    if analysis.errors.is_empty() {
        Ok(template)
    } else {
        Err(analysis.errors)
    }
}

/// Renders one compiled template to text.
fn render_template(
    hb: &Handlebars<'static>,
    template: &Template,
    ctx: &handlebars::Context,
    leaf: &str,
) -> Result<String, RenderError> {
    use handlebars::Renderable;
    let mut rc = handlebars::RenderContext::new(None);
    let mut out = TextOutput(String::new());
    template
        .render(hb, ctx, &mut rc, &mut out)
        .map_err(|e| RenderError::from_handlebars(leaf, &e))?;
    Ok(out.0)
}

/// Rendered text. Handlebars' own `StringOutput` reserves 8 KiB for every
/// render; a field value is a few bytes, rendered a few times per row.
struct TextOutput(String);

impl handlebars::Output for TextOutput {
    fn write(&mut self, segment: &str) -> std::io::Result<()> {
        self.0.push_str(segment);
        Ok(())
    }

    fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> std::io::Result<()> {
        fmt::Write::write_fmt(&mut self.0, args).map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Templates>();
        assert_send_sync::<CompiledTree>();
        assert_send_sync::<CompiledPath>();
    }

    #[test]
    fn missing_variables_are_named_in_the_message() {
        assert_eq!(
            missing_variable("phone_numbr"),
            "variable `phone_numbr` is not a column of the row"
        );
        assert_eq!(
            missing_variable("params.list_id"),
            "variable `params.list_id` is not in the render context"
        );
    }
}
