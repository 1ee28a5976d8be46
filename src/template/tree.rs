//! Compiled template trees and their rendering.

use handlebars::template::{Parameter, TemplateElement};
use handlebars::{Context, Handlebars, Path, PathSeg, Template};
use serde_json::{Map, Value};

use super::analyse::is_helper_path;
use super::helpers::is_empty;
use super::{
    OnEmpty, RenderError, TemplateError, compile_checked, missing_variable, render_template,
};

/// A template tree compiled once at load, rendered once per row.
#[derive(Debug, Clone)]
pub struct CompiledTree {
    root: Node,
}

#[derive(Debug, Clone)]
enum Node {
    /// A number, bool or null: kept as it is.
    Value(Value),
    Leaf(Box<Leaf>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

#[derive(Debug, Clone)]
struct Leaf {
    /// Key path in the tree, for errors: `fields.firstname`, `ids[0]`.
    path: String,
    template: Template,
    /// For a leaf that is exactly `{{a.b}}`: the path whose value is inserted
    /// as it is (typed insertion).
    typed: Option<Vec<String>>,
}

impl CompiledTree {
    pub(super) fn compile(name: &str, tree: &Value) -> Result<Self, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let root = compile_node(name, tree, String::new(), &mut errors);
        if errors.is_empty() {
            Ok(CompiledTree { root })
        } else {
            Err(errors)
        }
    }

    pub(super) fn render(
        &self,
        hb: &Handlebars<'static>,
        ctx: &Value,
        on_empty: OnEmpty,
    ) -> Result<Value, RenderError> {
        let mut r = Renderer {
            hb,
            ctx: RenderCtx::Borrowed {
                data: ctx,
                hb_ctx: None,
            },
            on_empty,
        };
        Ok(r.node(&self.root)?.unwrap_or(Value::Null))
    }

    /// As [`CompiledTree::render`], for a context the caller gives away
    /// (handlebars needs its own); it is handed back after rendering.
    pub(super) fn render_owned(
        &self,
        hb: &Handlebars<'static>,
        ctx: Value,
        on_empty: OnEmpty,
    ) -> (Result<Value, RenderError>, Value) {
        let mut r = Renderer {
            hb,
            ctx: RenderCtx::Owned(Context::from(ctx)),
            on_empty,
        };
        let rendered = r.node(&self.root).map(|v| v.unwrap_or(Value::Null));
        let ctx = match r.ctx {
            RenderCtx::Owned(mut hb_ctx) => std::mem::take(hb_ctx.data_mut()),
            RenderCtx::Borrowed { data, .. } => data.clone(),
        };
        (rendered, ctx)
    }

    pub(super) fn render_str(
        &self,
        hb: &Handlebars<'static>,
        ctx: &Value,
    ) -> Result<String, RenderError> {
        match &self.root {
            Node::Leaf(leaf) => {
                let hb_ctx = Context::from(ctx.clone());
                render_template(hb, &leaf.template, &hb_ctx, &leaf.path)
            }
            Node::Value(Value::Null) => Ok(String::new()),
            Node::Value(Value::Number(n)) => Ok(n.to_string()),
            Node::Value(Value::Bool(b)) => Ok(b.to_string()),
            _ => Err(RenderError {
                leaf: String::new(),
                message: "expected a single string template, got an array or table".to_owned(),
            }),
        }
    }
}

fn compile_node(name: &str, value: &Value, path: String, errors: &mut Vec<TemplateError>) -> Node {
    match value {
        Value::String(source) => {
            let full_name = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{name}:{path}")
            };
            match compile_checked(&full_name, source) {
                Ok(template) => {
                    let typed = typed_path(&template);
                    Node::Leaf(Box::new(Leaf {
                        path,
                        template,
                        typed,
                    }))
                }
                Err(leaf_errors) => {
                    errors.extend(leaf_errors.into_iter().map(|e| TemplateError {
                        leaf: path.clone(),
                        ..e
                    }));
                    Node::Value(Value::Null)
                }
            }
        }
        Value::Array(items) => Node::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| compile_node(name, v, format!("{path}[{i}]"), errors))
                .collect(),
        ),
        Value::Object(map) => Node::Object(
            map.iter()
                .map(|(k, v)| {
                    let child = if path.is_empty() {
                        key_segment(k)
                    } else {
                        format!("{path}.{}", key_segment(k))
                    };
                    (k.clone(), compile_node(name, v, child, errors))
                })
                .collect(),
        ),
        other => Node::Value(other.clone()),
    }
}

/// A key as written in a TOML dotted key: bare when it can be, else quoted.
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        serde_json::to_string(key).unwrap_or_else(|_| key.to_owned())
    }
}

/// `Some(path)` when the template is exactly one simple `{{a.b.c}}` (or
/// `{{this}}`) that is not a helper call: its value is inserted as it is.
fn typed_path(template: &Template) -> Option<Vec<String>> {
    let [TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht)] =
        template.elements.as_slice()
    else {
        return None;
    };
    if ht.block || !ht.params.is_empty() || !ht.hash.is_empty() {
        return None;
    }
    let Parameter::Path(path) = &ht.name else {
        return None;
    };
    if is_helper_path(path) {
        return None;
    }
    let Path::Relative((segs, _)) = path else {
        return None; // @index and friends: let handlebars say what they are
    };
    let mut names = Vec::with_capacity(segs.len());
    for seg in segs {
        match seg {
            PathSeg::Named(n) => names.push(n.clone()),
            // `@root.x` is `x` at the top level; `../x` is not ours to interpret.
            PathSeg::Ruled(rule) if format!("{rule:?}") == "path_root" => {}
            _ => return None,
        }
    }
    Some(names)
}

struct Renderer<'a> {
    hb: &'a Handlebars<'static>,
    ctx: RenderCtx<'a>,
    on_empty: OnEmpty,
}

/// The render context, and the handlebars context made of it.
enum RenderCtx<'a> {
    /// Handlebars needs a copy, made on first use: a tree of literals and
    /// typed leaves never needs it.
    Borrowed {
        data: &'a Value,
        hb_ctx: Option<Context>,
    },
    /// Given away by the caller: no copy.
    Owned(Context),
}

impl RenderCtx<'_> {
    fn data(&self) -> &Value {
        match self {
            RenderCtx::Borrowed { data, .. } => data,
            RenderCtx::Owned(hb_ctx) => hb_ctx.data(),
        }
    }

    fn handlebars(&mut self) -> &Context {
        match self {
            RenderCtx::Borrowed { data, hb_ctx } => {
                hb_ctx.get_or_insert_with(|| Context::from((*data).clone()))
            }
            RenderCtx::Owned(hb_ctx) => hb_ctx,
        }
    }
}

impl Renderer<'_> {
    /// `None` means "omit me".
    fn node(&mut self, node: &Node) -> Result<Option<Value>, RenderError> {
        match node {
            Node::Value(v) => Ok(Some(v.clone())),
            Node::Leaf(leaf) => {
                let value = self.leaf(leaf)?;
                Ok(if is_empty(&value) {
                    match self.on_empty {
                        OnEmpty::Omit => None,
                        OnEmpty::EmptyString => Some(Value::String(String::new())),
                        OnEmpty::Null => Some(Value::Null),
                    }
                } else {
                    Some(value)
                })
            }
            Node::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.extend(self.node(item)?);
                }
                Ok(Some(Value::Array(out)))
            }
            Node::Object(entries) => {
                let mut out = Map::with_capacity(entries.len());
                for (k, v) in entries {
                    if let Some(v) = self.node(v)? {
                        out.insert(k.clone(), v);
                    }
                }
                Ok(Some(Value::Object(out)))
            }
        }
    }

    fn leaf(&mut self, leaf: &Leaf) -> Result<Value, RenderError> {
        if let Some(path) = &leaf.typed {
            return lookup(self.ctx.data(), path)
                .cloned()
                .ok_or_else(|| RenderError {
                    leaf: leaf.path.clone(),
                    message: missing_variable(&path.join(".")),
                });
        }
        let hb_ctx = self.ctx.handlebars();
        render_template(self.hb, &leaf.template, hb_ctx, &leaf.path).map(Value::String)
    }
}

/// The value at `path`, as handlebars would find it (array items by index).
fn lookup<'v>(mut value: &'v Value, path: &[String]) -> Option<&'v Value> {
    for seg in path {
        value = match value {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_written_like_toml_dotted_keys() {
        assert_eq!(key_segment("firstname"), "firstname");
        assert_eq!(key_segment("first-name_2"), "first-name_2");
        assert_eq!(key_segment("first.name"), "\"first.name\"");
        assert_eq!(key_segment(""), "\"\"");
    }

    #[test]
    fn lookup_follows_objects_and_array_indices() {
        let v = json!({"a": {"b": [10, {"c": true}]}});
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(lookup(&v, &path("a.b.1.c")), Some(&json!(true)));
        assert_eq!(lookup(&v, &path("a.b.0")), Some(&json!(10)));
        assert_eq!(lookup(&v, &path("a.x")), None);
        assert_eq!(lookup(&v, &path("a.b.x")), None);
        assert_eq!(lookup(&v, &[]), Some(&v));
    }

    #[test]
    fn only_a_lone_simple_expression_is_typed() {
        let typed = |s: &str| typed_path(&Template::compile(s).unwrap());
        let names = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(typed("{{fields}}"), names(&["fields"]));
        assert_eq!(
            typed("{{ params.list_ids }}"),
            names(&["params", "list_ids"])
        );
        assert_eq!(typed("{{items.[0]}}"), names(&["items", "0"]));
        assert_eq!(typed("{{@root.email}}"), names(&["email"]));
        assert_eq!(typed("{{this}}"), names(&[]));
        assert_eq!(typed("{{{payload}}}"), names(&["payload"]));
        assert_eq!(typed("{{today}}"), None, "a helper, not a variable");
        assert_eq!(typed("{{lower email}}"), None);
        assert_eq!(typed("x{{email}}"), None);
        assert_eq!(typed("{{a}}{{b}}"), None);
        assert_eq!(typed("{{../a}}"), None);
        assert_eq!(typed("{{@index}}"), None);
        assert_eq!(typed("plain"), None);
    }
}
