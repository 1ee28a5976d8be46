//! Fingerprints: short hashes that tell whether a row would be sent differently
//! than the last time the CRM confirmed it.
//!
//! A row's fingerprint hashes the mapping's own fingerprint and the values of
//! the columns the mapping's templates read. Editing anything in the mapping
//! that shapes the request (fields, params, key, `on_empty`, sync mode...)
//! changes the mapping fingerprint, hence every row's, so each row is sent
//! once after such an edit. Settings that only shape *when* rows are sent
//! (schedule, state column names) are left out: tuning `batch_size` must not
//! re-send a whole table.
//!
//! Pure: no database, no clock. Helpers such as `{{today}}` read no column,
//! so a template over the clock alone never makes a row "changed".

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::plan::MappingPlan;

/// Bytes of SHA-256 kept (32 hex characters): collisions between two versions
/// of the same row stay out of reach while the state column stays short.
const FINGERPRINT_BYTES: usize = 16;

/// Keys of the mapping file that shape what is sent, besides those the plan
/// resolves (fields, params, key, on_empty). Read from the file's JSON so a
/// key the plan does not model yet still counts once it is set.
const REQUEST_SHAPING_KEYS: &[&str] = &["mode", "on_removed"];

/// The mapping's own fingerprint: a hash of everything in it that shapes what
/// is sent (connector name, key, fields templates, params, on_empty, sync
/// mode...), so editing the mapping changes every row's fingerprint.
pub fn mapping_fingerprint(mapping: &MappingPlan) -> String {
    let mut shaping = Map::new();
    shaping.insert("connector".into(), Value::from(mapping.connector.as_str()));
    shaping.insert("key".into(), Value::from(mapping.table.key_column.as_str()));
    shaping.insert(
        "fields".into(),
        mapping
            .source
            .json
            .get("fields")
            .cloned()
            .unwrap_or(Value::Null),
    );
    shaping.insert("params".into(), Value::Object(mapping.params.clone()));
    shaping.insert(
        "on_empty".into(),
        serde_json::to_value(mapping.on_empty).unwrap_or(Value::Null),
    );
    for key in REQUEST_SHAPING_KEYS {
        if let Some(value) = mapping.source.json.get(*key) {
            shaping.insert((*key).into(), value.clone());
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(b"mapping-fingerprint-v1\0");
    hasher.update(canonical_json(&Value::Object(shaping)).as_bytes());
    finish(hasher)
}

/// A row's fingerprint: a hash of the mapping fingerprint and the values of
/// `columns` (the columns the mapping's templates read, `Plan::row_columns`),
/// in a stable, unambiguous encoding (NULL differs from "", column order
/// fixed). Clock helpers such as {{today}} read no column, so they do not
/// change it.
pub fn row_fingerprint(
    mapping_fingerprint: &str,
    row: &Map<String, Value>,
    columns: &[String],
) -> String {
    let mut sorted: Vec<&String> = columns.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut hasher = Sha256::new();
    hasher.update(b"row-fingerprint-v1\0");
    write_framed(&mut hasher, mapping_fingerprint.as_bytes());
    for column in sorted {
        write_framed(&mut hasher, column.as_bytes());
        match row.get(column.as_str()) {
            // A column the row lacks and a NULL are different inputs: the
            // first fails to render, the second renders empty.
            None => hasher.update(b"m"),
            Some(Value::Null) => hasher.update(b"n"),
            Some(value) => {
                hasher.update(b"v");
                write_framed(&mut hasher, canonical_json(value).as_bytes());
            }
        }
    }
    finish(hasher)
}

/// Length-prefixed bytes, so no two sequences of parts hash the same input.
fn write_framed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// JSON with object keys sorted at every level, so the same data always
/// encodes to the same text whatever order it was written or read in.
fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

fn finish(hasher: Sha256) -> String {
    let digest = hasher.finalize();
    crate::hex::encode(&digest.as_slice()[..FINGERPRINT_BYTES])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_same_values_give_the_same_fingerprint_whatever_the_column_order() {
        let a = row_fingerprint(
            "m",
            &row(json!({"name": "Ann", "email": "a@x.io"})),
            &columns(&["name", "email"]),
        );
        let b = row_fingerprint(
            "m",
            &row(json!({"email": "a@x.io", "name": "Ann"})),
            &columns(&["email", "name"]),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), FINGERPRINT_BYTES * 2);
    }

    #[test]
    fn null_empty_and_missing_values_fingerprint_differently() {
        let cols = columns(&["name"]);
        let null = row_fingerprint("m", &row(json!({"name": null})), &cols);
        let empty = row_fingerprint("m", &row(json!({"name": ""})), &cols);
        let missing = row_fingerprint("m", &row(json!({})), &cols);
        assert_ne!(null, empty);
        assert_ne!(null, missing);
        assert_ne!(empty, missing);
    }

    #[test]
    fn values_cannot_slide_between_columns() {
        let cols = columns(&["a", "b"]);
        let one = row_fingerprint("m", &row(json!({"a": "xy", "b": "z"})), &cols);
        let two = row_fingerprint("m", &row(json!({"a": "x", "b": "yz"})), &cols);
        assert_ne!(one, two);
    }

    #[test]
    fn columns_the_mapping_does_not_read_do_not_change_the_fingerprint() {
        let cols = columns(&["name"]);
        let before = row_fingerprint("m", &row(json!({"name": "Ann", "notes": 1})), &cols);
        let after = row_fingerprint("m", &row(json!({"name": "Ann", "notes": 2})), &cols);
        assert_eq!(before, after);
    }

    #[test]
    fn another_mapping_fingerprint_changes_the_row_fingerprint() {
        let cols = columns(&["name"]);
        let r = row(json!({"name": "Ann"}));
        assert_ne!(
            row_fingerprint("m1", &r, &cols),
            row_fingerprint("m2", &r, &cols)
        );
    }

    #[test]
    fn a_number_and_its_text_fingerprint_differently() {
        let cols = columns(&["n"]);
        assert_ne!(
            row_fingerprint("m", &row(json!({"n": 1})), &cols),
            row_fingerprint("m", &row(json!({"n": "1"})), &cols)
        );
    }
}
