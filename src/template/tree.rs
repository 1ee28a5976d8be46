//! Compiled template trees and their rendering.

use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
use handlebars::{Context, Handlebars, Path, PathSeg, Template};
use serde_json::{Map, Value};

use super::analyse::is_helper_path;
use super::helpers::{self, Call, HelperFn, is_empty};
use super::{
    OnEmpty, RenderError, TemplateError, compile_checked, missing_variable, render_template,
};

/// A template tree compiled once at load, rendered once per row.
#[derive(Debug, Clone)]
pub struct CompiledTree {
    root: Node,
    /// Every leaf is a typed insertion (`{{items}}`) of a path no other leaf
    /// overlaps: rendering a context the caller is done with can move each
    /// value into the result instead of copying it.
    moves_values: bool,
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
    /// For a leaf that is exactly one engine helper call: evaluated without
    /// handlebars.
    direct: Option<DirectCall>,
}

/// A lone call of an engine helper whose arguments are variables, literals
/// or such calls (`{{lower (trim email)}}`, `{{e164 phone_number "1"}}`).
/// It runs the same helper functions and fails with the same messages as
/// handlebars would, without its render machinery, which cost more than the
/// helpers themselves (a third of a row's rendering).
#[derive(Debug, Clone)]
struct DirectCall {
    name: &'static str,
    function: HelperFn,
    args: Vec<DirectArg>,
}

#[derive(Debug, Clone)]
enum DirectArg {
    /// A variable: its path as written (for errors) and its segments.
    Variable {
        raw: String,
        segments: Vec<String>,
    },
    Literal(Value),
    Call(Box<DirectCall>),
}

impl DirectCall {
    /// The call of `expression`, when it is one we can evaluate directly.
    fn of(expression: &HelperTemplate) -> Option<DirectCall> {
        if expression.block || !expression.hash.is_empty() || expression.template.is_some() {
            return None;
        }
        let name = match &expression.name {
            Parameter::Name(name) => name.as_str(),
            Parameter::Path(path @ Path::Relative((_, raw))) if is_helper_path(path) => {
                raw.as_str()
            }
            _ => return None,
        };
        let (name, function) = helpers::function(name)?;
        let args = expression
            .params
            .iter()
            .map(DirectArg::of)
            .collect::<Option<Vec<_>>>()?;
        Some(DirectCall {
            name,
            function,
            args,
        })
    }

    /// The helper's value, or the message handlebars would give.
    fn eval(&self, root: &Value) -> Result<Value, String> {
        // Calls in arguments first: their values must outlive `args`.
        let mut derived = Vec::new();
        for arg in &self.args {
            if let DirectArg::Call(call) = arg {
                derived.push(call.eval(root)?);
            }
        }
        let mut derived = derived.iter();
        let mut args = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            args.push(match arg {
                DirectArg::Variable { raw, segments } => {
                    lookup(root, segments).ok_or_else(|| missing_variable(raw))?
                }
                DirectArg::Literal(value) => value,
                DirectArg::Call(_) => derived.next().unwrap_or(&Value::Null),
            });
        }
        (self.function)(&Call::new(args, root)).map_err(|m| helpers::helper_failed(self.name, &m))
    }
}

impl DirectArg {
    fn of(param: &Parameter) -> Option<DirectArg> {
        match param {
            Parameter::Literal(value) => Some(DirectArg::Literal(value.clone())),
            Parameter::Path(Path::Relative((segments, raw))) => {
                let names = segments
                    .iter()
                    .map(|s| match s {
                        PathSeg::Named(name) => Some(name.clone()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(DirectArg::Variable {
                    raw: raw.clone(),
                    segments: names,
                })
            }
            Parameter::Subexpression(sub) => match sub.as_element() {
                TemplateElement::Expression(expression) => {
                    DirectCall::of(expression).map(|call| DirectArg::Call(Box::new(call)))
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// A helper's value as handlebars writes it into a template.
fn rendered_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(rendered_text).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(_) => "[object]".to_owned(),
    }
}

impl CompiledTree {
    pub(super) fn compile(name: &str, tree: &Value) -> Result<Self, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let root = compile_node(name, tree, String::new(), &mut errors);
        if errors.is_empty() {
            let moves_values = typed_paths(&root).is_some_and(|paths| disjoint(&paths));
            Ok(CompiledTree { root, moves_values })
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

    /// Renders for a context the caller will not use again (a batch body
    /// over its `items`): when [`CompiledTree::moves_values`] holds, each
    /// value moves out of `ctx` into the result, so a batch of 100 records
    /// is not copied once more; otherwise as [`CompiledTree::render_owned`].
    pub(super) fn render_consuming(
        &self,
        hb: &Handlebars<'static>,
        mut ctx: Value,
        on_empty: OnEmpty,
    ) -> Result<Value, RenderError> {
        if !self.moves_values {
            return self.render_owned(hb, ctx, on_empty).0;
        }
        // Every leaf is a typed path no other leaf overlaps: take its value.
        let take = &mut |leaf: &Leaf| {
            let path = leaf.typed.as_deref().unwrap_or_default();
            lookup_mut(&mut ctx, path)
                .map(std::mem::take)
                .ok_or_else(|| RenderError {
                    leaf: leaf.path.clone(),
                    message: missing_variable(&path.join(".")),
                })
        };
        walk(&self.root, on_empty, take).map(|v| v.unwrap_or(Value::Null))
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
            Node::Value(Value::String(text)) => Ok(text.clone()),
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
            let compiled = compile_checked(&full_name, source);
            // Plain text renders to itself: no handlebars, no context. (An
            // empty leaf stays a leaf: it follows `OnEmpty`.)
            let literal = compiled.as_ref().ok().and_then(literal_text);
            match compiled {
                Ok(_) if literal.as_ref().is_some_and(|t| !t.is_empty()) => {
                    Node::Value(Value::String(literal.unwrap_or_default()))
                }
                Ok(template) => {
                    let typed = typed_path(&template);
                    let direct = match template.elements.as_slice() {
                        [
                            TemplateElement::Expression(expression)
                            | TemplateElement::HtmlExpression(expression),
                        ] if typed.is_none() => DirectCall::of(expression),
                        _ => None,
                    };
                    Node::Leaf(Box::new(Leaf {
                        path,
                        template,
                        typed,
                        direct,
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

/// The text of a template with no expressions (`"email"`, `"\\{{x}}"`):
/// what it always renders to.
pub(super) fn literal_text(template: &Template) -> Option<String> {
    template
        .elements
        .iter()
        .map(|e| match e {
            TemplateElement::RawString(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
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
        let on_empty = self.on_empty;
        walk(node, on_empty, &mut |leaf| self.leaf(leaf))
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
        if let Some(call) = &leaf.direct {
            return match call.eval(self.ctx.data()) {
                Ok(value) => Ok(Value::String(rendered_text(&value))),
                Err(message) => Err(RenderError {
                    leaf: leaf.path.clone(),
                    message,
                }),
            };
        }
        let hb_ctx = self.ctx.handlebars();
        render_template(self.hb, &leaf.template, hb_ctx, &leaf.path).map(Value::String)
    }
}

/// The typed paths of every leaf, or `None` if some leaf is not a typed
/// insertion (handlebars and helper calls may read anything).
fn typed_paths(node: &Node) -> Option<Vec<&[String]>> {
    let mut paths = Vec::new();
    let mut pending = vec![node];
    while let Some(node) = pending.pop() {
        match node {
            Node::Value(_) => {}
            Node::Leaf(leaf) => paths.push(leaf.typed.as_deref()?),
            Node::Array(items) => pending.extend(items),
            Node::Object(entries) => pending.extend(entries.iter().map(|(_, v)| v)),
        }
    }
    Some(paths)
}

/// No path equals another or lies inside it (`items` and `items.0` overlap).
fn disjoint(paths: &[&[String]]) -> bool {
    paths.iter().enumerate().all(|(i, a)| {
        paths[i + 1..]
            .iter()
            .all(|b| !a.starts_with(b) && !b.starts_with(a))
    })
}

/// Builds the value of `node`, asking `leaf` for each leaf's value; `None`
/// means "omit me" (an empty leaf under [`OnEmpty::Omit`]).
fn walk(
    node: &Node,
    on_empty: OnEmpty,
    leaf: &mut impl FnMut(&Leaf) -> Result<Value, RenderError>,
) -> Result<Option<Value>, RenderError> {
    match node {
        Node::Value(v) => Ok(Some(v.clone())),
        Node::Leaf(l) => {
            let value = leaf(l)?;
            Ok(if is_empty(&value) {
                match on_empty {
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
                out.extend(walk(item, on_empty, leaf)?);
            }
            Ok(Some(Value::Array(out)))
        }
        Node::Object(entries) => {
            let mut out = Map::with_capacity(entries.len());
            for (k, v) in entries {
                if let Some(v) = walk(v, on_empty, leaf)? {
                    out.insert(k.clone(), v);
                }
            }
            Ok(Some(Value::Object(out)))
        }
    }
}

/// [`lookup`], for a value to take.
fn lookup_mut<'v>(mut value: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    for seg in path {
        value = match value {
            Value::Object(map) => map.get_mut(seg)?,
            Value::Array(items) => items.get_mut(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
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
    fn only_trees_of_disjoint_typed_insertions_move_values() {
        let moves = |tree: Value| CompiledTree::compile("t", &tree).unwrap().moves_values;
        assert!(moves(json!({"inputs": "{{items}}"})));
        assert!(moves(
            json!({"a": "{{x.y}}", "b": "{{x.z}}", "c": "text", "d": 1})
        ));
        assert!(
            !moves(json!({"a": "{{x}}", "b": "{{x.z}}"})),
            "overlapping paths"
        );
        assert!(
            !moves(json!({"a": "{{x}}", "b": "{{x}}"})),
            "one value used twice"
        );
        assert!(
            !moves(json!({"a": "{{x}}", "b": "id {{y}}"})),
            "handlebars may read anything"
        );
        assert!(!moves(json!({"a": "{{lower x}}"})), "so may a helper");
    }

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
