//! TOML → JSON with a span for every key and value, so that schema and plan
//! errors found on the JSON can point back at the TOML line and column.

use serde_json::{Map, Number, Value};

use crate::source_file::SpanIndex;
use toml::de::{DeTable, DeValue};

/// Appends one segment to a key path: `a` + `b` = `a.b`; keys that are not
/// bare TOML keys are quoted, so every path is unambiguous.
pub fn join_key(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// Appends an array index: `a` + 0 = `a[0]`.
pub fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Turns a JSON pointer (`/rate_limits/0/requests`) into a key path
/// (`rate_limits[0].requests`), using the document to tell indexes from keys.
pub fn pointer_to_path(doc: &Value, pointer: &str) -> String {
    let mut path = String::new();
    let mut node = Some(doc);
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        match node {
            Some(Value::Array(items)) => {
                let index: usize = segment.parse().unwrap_or(0);
                path = join_index(&path, index);
                node = items.get(index);
            }
            Some(Value::Object(map)) => {
                path = join_key(&path, &segment);
                node = map.get(&segment);
            }
            _ => {
                path = join_key(&path, &segment);
                node = None;
            }
        }
    }
    path
}

/// Converts a parsed document, recording spans.
pub fn convert(table: &DeTable<'_>, spans: &mut SpanIndex) -> Value {
    convert_table(table, "", spans)
}

fn convert_table(table: &DeTable<'_>, path: &str, spans: &mut SpanIndex) -> Value {
    let mut map = Map::new();
    for (key, value) in table {
        let child = join_key(path, key.get_ref());
        spans.record_key(&child, key.span());
        spans.record_value(&child, value.span());
        map.insert(
            key.get_ref().to_string(),
            convert_value(value.get_ref(), &child, spans),
        );
    }
    Value::Object(map)
}

fn convert_value(value: &DeValue<'_>, path: &str, spans: &mut SpanIndex) -> Value {
    match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            i64::from_str_radix(&digits, i.radix()).map_or(Value::Null, Value::from)
        }
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or(Value::Null, Value::Number),
        DeValue::Boolean(b) => Value::Bool(*b),
        // TOML datetimes become plain strings: serde's private datetime wrapper would
        // otherwise fail every type check (rust-deps.md pitfall 8).
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let child = join_index(path, index);
                    spans.record_value(&child, item.span());
                    convert_value(item.get_ref(), &child, spans)
                })
                .collect(),
        ),
        DeValue::Table(table) => convert_table(table, path, spans),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_keys_and_values_of_nested_tables_and_arrays() {
        let text = "a = 1\n[b]\nc = \"x\"\n[[d]]\ne = 2\n";
        let doc = DeTable::parse(text).unwrap();
        let mut spans = SpanIndex::default();
        let json = convert(doc.get_ref(), &mut spans);
        assert_eq!(json["b"]["c"], "x");
        assert_eq!(&text[spans.key_span("b.c").unwrap()], "c");
        assert_eq!(&text[spans.value_span("d[0].e").unwrap()], "2");
        assert_eq!(pointer_to_path(&json, "/d/0/e"), "d[0].e");
        assert_eq!(join_key("fields", "a.b"), "fields.\"a.b\"");
    }
}
