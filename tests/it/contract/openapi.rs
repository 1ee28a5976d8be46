//! Checks recorded requests against an OpenAPI 3.0 document.
//!
//! For each request: find the operation by method and path template (concrete
//! paths before templated ones, as OpenAPI says), then check
//! - the security requirement (an `apiKey` header or query parameter, or HTTP bearer),
//! - every path, query and header parameter against its schema (values from the
//!   URL are read as the schema's type first: `"7"` against `integer` is `7`),
//!   required ones being present, and no query parameter the operation lacks,
//! - the body: present when `requestBody.required`, absent when there is no
//!   `requestBody`, a declared content type, and valid against its schema.
//!
//! Schemas are compiled as JSON Schema draft 4 (OpenAPI 3.0's schema object is an
//! extended subset of draft 4/5: boolean `exclusiveMinimum`, `$ref` siblings
//! ignored), with formats checked. Each compiled schema is a root document that
//! carries the spec's `components`, so `#/components/schemas/...` references
//! resolve as they are. `nullable: true` (OpenAPI 3.0 only) is rewritten into
//! draft 4 before compiling.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use jsonschema::{Draft, Validator};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};

use super::recorder::Recorded;

/// A loaded spec.
pub struct OpenApi {
    doc: Value,
    /// The path of `servers[0].url` (`/v3`), which request paths start with.
    base_path: String,
    compiled: Mutex<HashMap<String, Arc<Validator>>>,
}

/// The outcome for one request.
#[derive(Debug, Default)]
pub struct Check {
    /// The operation's `operationId`, once one was found.
    pub operation: Option<String>,
    /// What the request got wrong; empty when it conforms.
    pub violations: Vec<String>,
    /// A body was validated against a schema.
    pub body_checked: bool,
    /// Names of the parameters whose values were validated.
    pub parameters_checked: Vec<String>,
}

impl OpenApi {
    /// Reads a YAML (or JSON) OpenAPI 3.0 document.
    pub fn load(path: &Path) -> anyhow::Result<OpenApi> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut doc: Value =
            yaml_serde::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let version = doc["openapi"].as_str().unwrap_or_default();
        anyhow::ensure!(
            version.starts_with("3.0"),
            "{} is OpenAPI {version:?}, not 3.0",
            path.display()
        );
        nullable_to_draft4(&mut doc);
        let server = doc["servers"][0]["url"].as_str().unwrap_or("/");
        let base_path =
            url::Url::parse(server).map_or_else(|_| server.to_owned(), |u| u.path().to_owned());
        Ok(OpenApi {
            doc,
            base_path: base_path.trim_end_matches('/').to_owned(),
            compiled: Mutex::default(),
        })
    }

    /// Checks one request against its operation.
    pub fn check(&self, request: &Recorded) -> Check {
        let mut check = Check::default();
        let Some(rest) = request
            .path
            .strip_prefix(&self.base_path)
            .filter(|r| r.starts_with('/'))
        else {
            check.violations.push(format!(
                "the path is outside the server's base path {}",
                self.base_path
            ));
            return check;
        };
        let Some((template, captures)) = self.match_path(rest) else {
            check
                .violations
                .push(format!("no path in the spec matches {rest}"));
            return check;
        };
        let item = &self.doc["paths"][template.as_str()];
        let method = request.method.to_ascii_lowercase();
        let Some(operation) = item.get(&method) else {
            check
                .violations
                .push(format!("{template} has no {} operation", request.method));
            return check;
        };
        check.operation = Some(
            operation["operationId"]
                .as_str()
                .unwrap_or("(no operationId)")
                .to_owned(),
        );
        let query = query_pairs(request.query.as_deref());
        let api_key_query = self.check_security(operation, request, &query, &mut check);
        self.check_parameters(
            item,
            operation,
            &captures,
            &query,
            api_key_query.as_deref(),
            request,
            &mut check,
        );
        self.check_body(operation, request, &mut check);
        check
    }

    /// The most concrete template matching `path`, and its captured (still encoded) segments.
    fn match_path(&self, path: &str) -> Option<(String, HashMap<String, String>)> {
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let paths = self.doc["paths"].as_object()?;
        let mut best: Option<(usize, String, HashMap<String, String>)> = None;
        for template in paths.keys() {
            let parts: Vec<&str> = template.split('/').skip(1).collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut captures = HashMap::new();
            let mut literal = 0;
            let matched = parts.iter().zip(&segments).all(|(part, segment)| {
                match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(name) => {
                        captures.insert(name.to_owned(), (*segment).to_owned());
                        !segment.is_empty()
                    }
                    None => {
                        literal += 1;
                        part == segment
                    }
                }
            });
            if matched && best.as_ref().is_none_or(|(n, _, _)| literal > *n) {
                best = Some((literal, template.clone(), captures));
            }
        }
        best.map(|(_, template, captures)| (template, captures))
    }

    /// Checks the operation's (or the document's) security requirement; answers
    /// the name of an `apiKey` query parameter it uses, which is then declared.
    fn check_security(
        &self,
        operation: &Value,
        request: &Recorded,
        query: &[(String, String)],
        check: &mut Check,
    ) -> Option<String> {
        let requirements = operation
            .get("security")
            .or_else(|| self.doc.get("security"));
        // No requirement (or `security: []`) asks for nothing.
        let requirements = requirements
            .and_then(Value::as_array)
            .filter(|r| !r.is_empty())?;
        let schemes = &self.doc["components"]["securitySchemes"];
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let mut query_key = None;
        let met = requirements.iter().any(|requirement| {
            requirement.as_object().is_some_and(|names| {
                names.keys().all(|scheme_name| {
                    let scheme = &schemes[scheme_name.as_str()];
                    let name = scheme["name"].as_str().unwrap_or_default();
                    match (scheme["type"].as_str(), scheme["in"].as_str()) {
                        (Some("apiKey"), Some("header")) => header(name).is_some(),
                        (Some("apiKey"), Some("query")) => {
                            query_key = Some(name.to_owned());
                            query.iter().any(|(k, v)| k == name && !v.is_empty())
                        }
                        (Some("http"), _) => {
                            let prefix =
                                format!("{} ", scheme["scheme"].as_str().unwrap_or("bearer"));
                            header("authorization").is_some_and(|v| {
                                v.len() > prefix.len()
                                    && v[..prefix.len()].eq_ignore_ascii_case(&prefix)
                            })
                        }
                        _ => false,
                    }
                })
            })
        });
        if !met {
            check.violations.push(format!(
                "no security requirement is met: the spec asks for one of {}",
                Value::from(requirements.clone())
            ));
        }
        query_key
    }

    #[allow(clippy::too_many_arguments)]
    fn check_parameters(
        &self,
        item: &Value,
        operation: &Value,
        captures: &HashMap<String, String>,
        query: &[(String, String)],
        api_key_query: Option<&str>,
        request: &Recorded,
        check: &mut Check,
    ) {
        // Operation-level parameters override path-level ones with the same name and location.
        let mut declared: Vec<Value> = Vec::new();
        for list in [&item["parameters"], &operation["parameters"]] {
            for parameter in list.as_array().into_iter().flatten() {
                let parameter = self.resolve(parameter).clone();
                declared
                    .retain(|d| (&d["name"], &d["in"]) != (&parameter["name"], &parameter["in"]));
                declared.push(parameter);
            }
        }
        for (key, _) in query {
            let known = declared
                .iter()
                .any(|d| d["in"] == "query" && d["name"] == key.as_str());
            if !known && Some(key.as_str()) != api_key_query {
                check.violations.push(format!(
                    "query parameter `{key}` is not declared by the operation"
                ));
            }
        }
        for parameter in &declared {
            let name = parameter["name"].as_str().unwrap_or_default();
            let location = parameter["in"].as_str().unwrap_or_default();
            let required = parameter["required"] == true || location == "path";
            let schema = self.resolve(&parameter["schema"]);
            let raw: Vec<String> = match location {
                "path" => {
                    match captures.get(name) {
                        Some(encoded) => match percent_decode_str(encoded).decode_utf8() {
                            Ok(text) => vec![text.into_owned()],
                            Err(_) => {
                                check.violations.push(format!("path parameter `{name}` is not percent-encoded UTF-8: {encoded}"));
                                continue;
                            }
                        },
                        None => {
                            check.violations.push(format!(
                                "path parameter `{name}` is declared but not in the path template"
                            ));
                            continue;
                        }
                    }
                }
                "query" => query
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                "header" => request
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .collect(),
                _ => continue, // cookies: the engine sends none
            };
            if raw.is_empty() {
                if required {
                    check
                        .violations
                        .push(format!("required {location} parameter `{name}` is missing"));
                }
                continue;
            }
            let explode = parameter["explode"]
                .as_bool()
                .unwrap_or(location == "query");
            let value = typed(schema, &raw, explode);
            check.parameters_checked.push(name.to_owned());
            for error in self.validate(schema, &value) {
                check
                    .violations
                    .push(format!("{location} parameter `{name}` = {value}: {error}"));
            }
        }
    }

    fn check_body(&self, operation: &Value, request: &Recorded, check: &mut Check) {
        let Some(request_body) = operation.get("requestBody").map(|b| self.resolve(b)) else {
            if !request.body.is_empty() {
                check
                    .violations
                    .push("the operation takes no request body, but one was sent".to_owned());
            }
            return;
        };
        if request.body.is_empty() {
            if request_body["required"] == true {
                check
                    .violations
                    .push("the request body is required, but none was sent".to_owned());
            }
            return;
        }
        let content_type = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let Some(media) = request_body["content"].get(&content_type) else {
            let declared: Vec<&String> = request_body["content"]
                .as_object()
                .map(|c| c.keys().collect())
                .unwrap_or_default();
            check.violations.push(format!(
                "content type {content_type:?} is not one the operation takes ({declared:?})"
            ));
            return;
        };
        if !content_type.ends_with("json") {
            return;
        }
        let body: Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(err) => {
                check
                    .violations
                    .push(format!("the body is not JSON: {err}"));
                return;
            }
        };
        let Some(schema) = media.get("schema") else {
            return;
        };
        check.body_checked = true;
        for error in self.validate(schema, &body) {
            check.violations.push(format!("body: {error}"));
        }
    }

    /// Follows a local `$ref` (parameters, request bodies, schemas).
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            Some(pointer) => self
                .doc
                .pointer(pointer)
                .map_or(value, |target| self.resolve(target)),
            None => value,
        }
    }

    /// Validates `instance` against a schema of this spec; one line per error,
    /// each naming where in the instance it is (`/listIds`).
    pub fn validate(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let validator = match self.compile(schema) {
            Ok(validator) => validator,
            Err(err) => {
                return vec![format!(
                    "the spec's schema {schema} does not compile: {err}"
                )];
            }
        };
        validator
            .iter_errors(instance)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("{}: {e}", if at.is_empty() { "/" } else { &at })
            })
            .collect()
    }

    fn compile(&self, schema: &Value) -> Result<Arc<Validator>, String> {
        let key = schema.to_string();
        if let Some(validator) = self.compiled.lock().unwrap().get(&key) {
            return Ok(validator.clone());
        }
        let mut root = match schema {
            Value::Object(map) => map.clone(),
            other => return Err(format!("not a schema object: {other}")),
        };
        root.insert(
            "components".to_owned(),
            json!({ "schemas": self.doc["components"]["schemas"].clone() }),
        );
        let validator = jsonschema::options()
            .with_draft(Draft::Draft4)
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .map_err(|e| e.to_string())?;
        let validator = Arc::new(validator);
        self.compiled.lock().unwrap().insert(key, validator.clone());
        Ok(validator)
    }
}

/// The query's `(name, value)` pairs, decoded as `application/x-www-form-urlencoded`.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// URL text as the JSON value the schema describes: `integer`, `number` and
/// `boolean` are parsed (left as text when they don't parse, so the schema
/// reports them), `array` collects repeated (`explode`) or comma-separated values.
fn typed(schema: &Value, raw: &[String], explode: bool) -> Value {
    let scalar = |schema: &Value, text: &str| -> Value {
        let parsed = match schema["type"].as_str() {
            Some("integer") => text.parse::<i64>().ok().map(Value::from),
            Some("number") => text.parse::<f64>().ok().map(Value::from),
            Some("boolean") => text.parse::<bool>().ok().map(Value::from),
            _ => None,
        };
        parsed.unwrap_or_else(|| Value::String(text.to_owned()))
    };
    if schema["type"] == "array" {
        let items: Vec<&str> = if explode {
            raw.iter().map(String::as_str).collect()
        } else {
            raw.iter().flat_map(|r| r.split(',')).collect()
        };
        return Value::Array(
            items
                .into_iter()
                .map(|text| scalar(&schema["items"], text))
                .collect(),
        );
    }
    // A repeated scalar parameter: validate the first, and let the rest show up as an array error.
    match raw {
        [one] => scalar(schema, one),
        many => Value::Array(many.iter().map(|text| scalar(schema, text)).collect()),
    }
}

/// Rewrites OpenAPI 3.0's `nullable: true` as draft 4 says it: `null` joins
/// `type` (and `enum`), or the schema becomes `anyOf: [null, schema]`.
fn nullable_to_draft4(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(nullable_to_draft4),
        Value::Object(map) => {
            map.values_mut().for_each(nullable_to_draft4);
            match map.remove("nullable") {
                Some(Value::Bool(true)) => {}
                Some(other) if !other.is_boolean() => {
                    // A property called `nullable`, not the keyword: put it back.
                    map.insert("nullable".to_owned(), other);
                    return;
                }
                _ => return,
            }
            if let Some(Value::String(t)) = map.get("type").cloned() {
                map.insert("type".to_owned(), json!([t, "null"]));
                if let Some(Value::Array(values)) = map.get_mut("enum") {
                    values.push(Value::Null);
                }
            } else {
                let inner = std::mem::take(map);
                let inner = match inner.get("$ref") {
                    // Draft 4 ignores `$ref` siblings, as OpenAPI 3.0 does.
                    Some(r) => Map::from_iter([("$ref".to_owned(), r.clone())]),
                    None => inner,
                };
                map.insert("anyOf".to_owned(), json!([{ "type": "null" }, inner]));
            }
        }
        _ => {}
    }
}
