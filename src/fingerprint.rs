//! Fingerprints: a hash of what a mapping would send for a row, so a row whose
//! values did not change since the CRM confirmed them is not sent again.
//!
//! A row's fingerprint covers the mapping's own fingerprint (its connector,
//! key, fields, params and `on_empty`) and the row's values of the columns the
//! mapping reads. Editing the mapping therefore changes every row's
//! fingerprint, and every row is sent once more. Values are encoded without
//! ambiguity: each is tagged with its JSON type and length-prefixed, so NULL,
//! `""`, `0` and `"0"` all differ, and no two column lists run together.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::plan::MappingPlan;

/// The hash of everything in a mapping that shapes what is sent for a row.
pub fn mapping_fingerprint(mapping: &MappingPlan) -> String {
    let json = &mapping.source.json;
    let mut hasher = Sha256::new();
    feed_text(&mut hasher, &mapping.connector);
    feed_text(&mut hasher, &mapping.table.key_column);
    feed_value(&mut hasher, json.get("fields").unwrap_or(&Value::Null));
    feed_value(&mut hasher, &Value::Object(mapping.params.clone()));
    feed_text(&mut hasher, &format!("{:?}", mapping.on_empty));
    hex(&hasher.finalize())
}

/// The hash of `row`'s values of `columns` (a missing column counts as NULL),
/// under `mapping_fingerprint`.
pub fn row_fingerprint(
    mapping_fingerprint: &str,
    row: &Map<String, Value>,
    columns: &[String],
) -> String {
    let mut hasher = Sha256::new();
    feed_text(&mut hasher, mapping_fingerprint);
    hasher.update((columns.len() as u64).to_le_bytes());
    for column in columns {
        feed_text(&mut hasher, column);
        feed_value(&mut hasher, row.get(column).unwrap_or(&Value::Null));
    }
    hex(&hasher.finalize())
}

fn feed_text(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

/// A type tag, then the value: text length-prefixed, containers by count.
fn feed_value(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            hasher.update(b"#");
            feed_text(hasher, &n.to_string());
        }
        Value::String(s) => {
            hasher.update(b"s");
            feed_text(hasher, s);
        }
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| feed_value(hasher, item));
        }
        Value::Object(map) => {
            hasher.update(b"{");
            hasher.update((map.len() as u64).to_le_bytes());
            for (key, item) in map {
                feed_text(hasher, key);
                feed_value(hasher, item);
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp(row: Value) -> String {
        let columns = vec!["a".to_string(), "b".to_string()];
        row_fingerprint("m", row.as_object().unwrap(), &columns)
    }

    #[test]
    fn null_empty_text_zero_and_text_zero_all_differ() {
        let prints = [
            fp(json!({"a": null})),
            fp(json!({"a": ""})),
            fp(json!({"a": 0})),
            fp(json!({"a": "0"})),
        ];
        for (i, a) in prints.iter().enumerate() {
            for b in &prints[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn values_cannot_run_into_each_other() {
        assert_ne!(
            fp(json!({"a": "ab", "b": "c"})),
            fp(json!({"a": "a", "b": "bc"}))
        );
    }

    #[test]
    fn columns_the_mapping_does_not_read_do_not_count() {
        assert_eq!(
            fp(json!({"a": 1, "b": 2, "other": 3})),
            fp(json!({"a": 1, "b": 2, "other": 4}))
        );
        assert_ne!(fp(json!({"a": 1, "b": 2})), fp(json!({"a": 1, "b": 3})));
    }

    #[test]
    fn another_mapping_fingerprint_changes_the_row_fingerprint() {
        let row = json!({"a": 1});
        let columns = vec!["a".to_string()];
        assert_ne!(
            row_fingerprint("m1", row.as_object().unwrap(), &columns),
            row_fingerprint("m2", row.as_object().unwrap(), &columns)
        );
    }
}
