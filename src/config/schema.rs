//! JSON Schemas of both file kinds, generated from the config structs (so they can
//! never drift from what serde accepts), and the schema gate of `engine check`.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::toml_json::{join_key, pointer_to_path};
use crate::diagnostic::{Diagnostic, Severity};
use crate::source_file::SourceFile;

/// Which kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `connectors/*.toml`
    Connector,
    /// `mappings/*.toml`
    Mapping,
}

/// The schema of a file kind, as committed in `schemas/`.
pub fn schema_json(kind: Kind) -> Value {
    let schema = match kind {
        Kind::Connector => schemars::schema_for!(super::ConnectorFile),
        Kind::Mapping => schemars::schema_for!(super::MappingFile),
    };
    let mut value = serde_json::to_value(schema).expect("a generated schema is valid JSON");
    let (id, title) = match kind {
        Kind::Connector => ("connector.schema.json", "engine connector"),
        Kind::Mapping => ("mapping.schema.json", "engine mapping"),
    };
    value["$id"] = Value::from(format!("https://engine.invalid/schemas/{id}"));
    value["title"] = Value::from(title);
    value
}

/// The schema text written to `schemas/<kind>.schema.json`.
pub fn schema_text(kind: Kind) -> String {
    serde_json::to_string_pretty(&schema_json(kind)).expect("schema serialises") + "\n"
}

fn compiled(kind: Kind) -> &'static (Validator, Value) {
    static CONNECTOR: OnceLock<(Validator, Value)> = OnceLock::new();
    static MAPPING: OnceLock<(Validator, Value)> = OnceLock::new();
    let cell = match kind {
        Kind::Connector => &CONNECTOR,
        Kind::Mapping => &MAPPING,
    };
    cell.get_or_init(|| {
        let schema = schema_json(kind);
        let validator = jsonschema::validator_for(&schema).expect("the generated schema compiles");
        (validator, schema)
    })
}

/// Every schema violation of `source`, each at its key with a hint.
pub fn validate(kind: Kind, source: &SourceFile) -> Vec<Diagnostic> {
    let (validator, schema) = compiled(kind);
    let mut out = Vec::new();
    for error in validator.iter_errors(&source.json) {
        explain(&error, source, schema, &mut out);
    }
    out.dedup();
    // A pasted secret also leaves its `*_env` key missing; the secret is the news.
    let secret_tables: Vec<String> = out
        .iter()
        .filter(|d| d.message.starts_with("literal secret"))
        .map(|d| {
            d.key_path
                .rsplit_once('.')
                .map_or(String::new(), |(parent, _)| parent.to_string())
        })
        .collect();
    out.retain(|d| !(d.message.starts_with("missing key") && secret_tables.contains(&d.key_path)));
    out
}

fn explain(
    error: &ValidationError<'_>,
    source: &SourceFile,
    schema: &Value,
    out: &mut Vec<Diagnostic>,
) {
    let path = pointer_to_path(&source.json, error.instance_path().as_str());
    let node = schema_node(schema, error.schema_path().as_str());
    let shown = if path.is_empty() {
        "the file".to_string()
    } else {
        format!("`{path}`")
    };
    let diagnostic = match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for key in unexpected {
                out.push(unknown_key(source, schema, &node, &path, key));
            }
            return;
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            explain_union(error, context, source, schema, &path, out);
            return;
        }
        ValidationErrorKind::Required { property } => {
            let key = property.as_str().unwrap_or_default();
            let hint = property_description(schema, &node, key);
            let diagnostic = source.diagnostic_at_key(
                Severity::Error,
                &path,
                format!("missing key `{}` in {shown}", join_key(&path, key)),
            );
            match hint {
                Some(hint) => diagnostic.hint(format!("add `{key} = ...`: {hint}")),
                None => diagnostic.hint(format!("add `{key} = ...`")),
            }
        }
        ValidationErrorKind::Type { kind } => source
            .diagnostic_at_value(
                Severity::Error,
                &path,
                format!(
                    "{shown} must be {}, found {}",
                    type_name(kind),
                    describe(error.instance())
                ),
            )
            .hint(
                description(schema, &node).unwrap_or_else(|| "see the schema in schemas/".into()),
            ),
        ValidationErrorKind::Enum { options } => source
            .diagnostic_at_value(
                Severity::Error,
                &path,
                format!("{shown} has an unknown value {}", error.instance()),
            )
            .hint(format!("expected one of {}", list(options))),
        ValidationErrorKind::Constant { expected_value } => source
            .diagnostic_at_value(
                Severity::Error,
                &path,
                format!("{shown} must be {expected_value}"),
            )
            .hint(description(schema, &node).unwrap_or_default()),
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => source
            .diagnostic_at_value(
                Severity::Error,
                &path,
                format!("{shown} is {}, below the minimum {limit}", error.instance()),
            )
            .hint(description(schema, &node).unwrap_or_else(|| range_hint(&node))),
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => source
            .diagnostic_at_value(
                Severity::Error,
                &path,
                format!("{shown} is {}, above the maximum {limit}", error.instance()),
            )
            .hint(description(schema, &node).unwrap_or_else(|| range_hint(&node))),
        _ => source.diagnostic_at_value(Severity::Error, &path, format!("{shown}: {error}")),
    };
    out.push(diagnostic);
}

/// Names that would put a secret in the file; the engine only takes secrets by
/// environment-variable name.
const SECRET_KEYS: &[&str] = &[
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
    "client_secret",
    "client_id",
    "refresh_token",
    "username_password",
];

fn unknown_key(
    source: &SourceFile,
    schema: &Value,
    node: &Value,
    path: &str,
    key: &str,
) -> Diagnostic {
    let full = join_key(path, key);
    if SECRET_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
        let value = source
            .json
            .pointer(&pointer_of(&full))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return source
            .diagnostic_at_key(Severity::Error, &full, format!("literal secret `{full}`: config files never hold secrets"))
            .redact(&value)
            .hint(format!(
                "name the environment variable that holds it instead, e.g. `{key}_env = \"HUBSPOT_ACCESS_TOKEN\"` (see the auth kinds in schemas/connector.schema.json)"
            ));
    }
    let known = known_properties(schema, node);
    let diagnostic =
        source.diagnostic_at_key(Severity::Error, &full, format!("unknown key `{full}`"));
    match closest(key, &known) {
        Some(best) => diagnostic.hint(format!("did you mean `{best}`?")),
        None if known.is_empty() => diagnostic.hint("remove it"),
        None => diagnostic.hint(format!("expected one of: {}", known.join(", "))),
    }
}

/// The JSON pointer of a simple dotted key path (`auth.token` -> `/auth/token`).
fn pointer_of(path: &str) -> String {
    path.split('.').fold(String::new(), |mut pointer, segment| {
        pointer.push('/');
        pointer.push_str(segment.trim_matches('"'));
        pointer
    })
}

/// A tagged union (`kind = "..."`) or other `oneOf`: report the errors of the
/// variant the user picked, or that the tag itself is unknown.
fn explain_union(
    error: &ValidationError<'_>,
    context: &[Vec<ValidationError<'static>>],
    source: &SourceFile,
    schema: &Value,
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    let expected: Vec<String> = context
        .iter()
        .flatten()
        .filter_map(|e| match e.kind() {
            ValidationErrorKind::Constant { expected_value } => {
                expected_value.as_str().map(String::from)
            }
            _ => None,
        })
        .collect();
    if let Value::String(given) = error.instance().as_ref() {
        // A plain enum of strings: name the valid values.
        let shown = if path.is_empty() {
            "the file".to_string()
        } else {
            format!("`{path}`")
        };
        let diagnostic = source.diagnostic_at_value(
            Severity::Error,
            path,
            format!("{shown} has an unknown value \"{given}\""),
        );
        let list = expected
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(match closest(given, &expected) {
            Some(best) => {
                diagnostic.hint(format!("did you mean \"{best}\"? expected one of {list}"))
            }
            None => diagnostic.hint(format!("expected one of {list}")),
        });
        return;
    }
    let tag_path = format!("{}/kind", error.instance_path().as_str());
    let tag_failed = |branch: &Vec<ValidationError<'static>>| {
        branch
            .iter()
            .any(|e| e.instance_path().as_str() == tag_path)
    };
    if let Some(branch) = context.iter().find(|branch| !tag_failed(branch)) {
        if let Some(diagnostic) = wrong_tag(error, branch, source, schema, path) {
            out.push(diagnostic);
            return;
        }
        for inner in branch {
            explain(inner, source, schema, out);
        }
        return;
    }
    let tag = error.instance().get("kind").cloned();
    let (at, message) = match &tag {
        Some(value) => (
            join_key(path, "kind"),
            format!("unknown `{}` value {value}", join_key(path, "kind")),
        ),
        None => (path.to_string(), format!("`{path}` needs a `kind`")),
    };
    let mut diagnostic = source.diagnostic_at_value(Severity::Error, &at, message);
    if !expected.is_empty() {
        let suggestion = tag
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|t| closest(t, &expected));
        diagnostic = match suggestion {
            Some(best) => diagnostic.hint(format!(
                "did you mean \"{best}\"? expected one of {}",
                expected.join(", ")
            )),
            None => diagnostic.hint(format!("expected one of {}", expected.join(", "))),
        };
    }
    out.push(diagnostic);
}

/// When the keys the chosen variant does not know all belong to another
/// variant, the tag is the mistake (`kind = "bearer"` written with `header` and
/// `key_env`): one error naming the kind those keys belong to, instead of a
/// missing key and an unknown key for each of them.
fn wrong_tag(
    error: &ValidationError<'_>,
    branch: &[ValidationError<'static>],
    source: &SourceFile,
    schema: &Value,
    path: &str,
) -> Option<Diagnostic> {
    let unknown: Vec<String> = branch
        .iter()
        .flat_map(|e| match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => unexpected.clone(),
            _ => Vec::new(),
        })
        .collect();
    if unknown.is_empty() {
        return None;
    }
    let given = error.instance().get("kind")?.as_str()?;
    let keys: Vec<&String> = error
        .instance()
        .as_object()?
        .keys()
        .filter(|k| *k != "kind")
        .collect();
    let union = schema_node(schema, error.schema_path().as_str());
    let variants = union
        .get("oneOf")
        .or_else(|| union.get("anyOf"))?
        .as_array()?;
    let fitting = variants
        .iter()
        .map(|v| resolve(schema, v))
        .find(|variant| {
            let known = known_properties(schema, variant);
            keys.iter().all(|k| known.contains(k))
        })?;
    let kind = fitting.pointer("/properties/kind/const")?.as_str()?;
    let names: Vec<String> = unknown.iter().map(|k| format!("`{k}`")).collect();
    let message = format!(
        "{} belong to `kind = \"{kind}\"`, not `kind = \"{given}\"`",
        names.join(" and ")
    );
    let diagnostic = source.diagnostic_at_value(Severity::Error, &join_key(path, "kind"), message);
    Some(match description(schema, &fitting) {
        Some(what) => diagnostic.hint(format!("kind = \"{kind}\": {what}")),
        None => diagnostic.hint(format!("write kind = \"{kind}\"")),
    })
}

/// Follows a schema keyword location (`/properties/retry/$ref/additionalProperties`)
/// to the schema object that holds the failing keyword.
fn schema_node(schema: &Value, location: &str) -> Value {
    let mut segments: Vec<String> = location
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    segments.pop(); // the keyword itself
    let mut node = schema.clone();
    for segment in segments {
        node = resolve(schema, &node);
        node = match &node {
            Value::Object(map) => map.get(&segment).cloned().unwrap_or(Value::Null),
            Value::Array(items) => segment
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i).cloned())
                .unwrap_or(Value::Null),
            _ => Value::Null,
        };
    }
    resolve(schema, &node)
}

/// Resolves a local `$ref` (`#/$defs/Retry`).
fn resolve(schema: &Value, node: &Value) -> Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => schema
            .pointer(reference.trim_start_matches('#'))
            .cloned()
            .unwrap_or(Value::Null),
        None => node.clone(),
    }
}

fn known_properties(schema: &Value, node: &Value) -> Vec<String> {
    let node = resolve(schema, node);
    node.get("properties")
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

fn property_description(schema: &Value, node: &Value, key: &str) -> Option<String> {
    let node = resolve(schema, node);
    let property = resolve(schema, node.get("properties")?.get(key)?);
    description(schema, &property)
}

fn description(schema: &Value, node: &Value) -> Option<String> {
    let node = resolve(schema, node);
    let text = node.get("description")?.as_str()?;
    Some(text.split("\n\n").next().unwrap_or(text).replace('\n', " "))
}

/// "from 100 to 599", for a bound on a value the schema does not describe
/// (an element of a list).
fn range_hint(node: &Value) -> String {
    match (node.get("minimum"), node.get("maximum")) {
        (Some(min), Some(max)) => format!("a value from {min} to {max}"),
        (Some(min), None) => format!("a value of at least {min}"),
        (None, Some(max)) => format!("a value of at most {max}"),
        (None, None) => "see the schema in schemas/".into(),
    }
}

fn closest(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}

fn type_name(kind: &jsonschema::error::TypeKind) -> String {
    let name = |t: &jsonschema::JsonType| match t.to_string().as_str() {
        "object" => "a table".to_string(),
        "array" => "an array".to_string(),
        "integer" => "an integer".to_string(),
        other => format!("a {other}"),
    };
    match kind {
        jsonschema::error::TypeKind::Single(t) => name(t),
        jsonschema::error::TypeKind::Multiple(types) => types
            .iter()
            .map(|t| name(&t))
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "a table".into(),
    }
}

fn list(options: &Value) -> String {
    options.as_array().map_or_else(
        || options.to_string(),
        |items| {
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Editors read the committed files; they must be exactly what the engine checks
    /// against. Regenerate with `UPDATE_SCHEMAS=1 cargo test --lib schema`.
    #[test]
    fn committed_schemas_match_the_config_structs() {
        for (kind, file) in [
            (Kind::Connector, "connector.schema.json"),
            (Kind::Mapping, "mapping.schema.json"),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas")
                .join(file);
            let generated = schema_text(kind);
            if std::env::var_os("UPDATE_SCHEMAS").is_some() {
                std::fs::write(&path, &generated).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{file} is stale: run UPDATE_SCHEMAS=1 cargo test --lib schema"
            );
        }
    }
}
