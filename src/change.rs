//! Change detection in queue mode: whether a claimed row still holds the
//! values the CRM last confirmed (see [`crate::fingerprint`]).

use serde_json::{Map, Value};

use crate::fingerprint::{mapping_fingerprint, row_fingerprint};
use crate::plan::{MappingPlan, Plan, mapping_columns};
use crate::store::RowColumns;

/// How one mapping's rows are fingerprinted; built once per run.
#[derive(Debug, Clone)]
pub struct ChangeCheck {
    mapping_fingerprint: String,
    /// The state column holding the last confirmed fingerprint.
    stored_column: String,
    /// The columns hashed; `None`: every column but the state columns
    /// (a template reads the whole row).
    columns: Option<Vec<String>>,
    /// Columns the engine writes, left out of a whole-row hash.
    state_columns: Vec<String>,
}

/// A claimed row's fingerprint, and whether it matches the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowCheck {
    pub fingerprint: String,
    pub unchanged: bool,
}

impl ChangeCheck {
    /// `None` when the mapping keeps no fingerprint column.
    pub fn new(plan: &Plan, mapping: &MappingPlan) -> Option<ChangeCheck> {
        let stored_column = mapping.table.fingerprint.clone()?;
        let columns = match plan.row_columns(mapping) {
            RowColumns::All => None,
            RowColumns::Only(mut columns) => {
                // The key is sent whatever the fields read.
                if !columns.contains(&mapping.table.key_column) {
                    columns.push(mapping.table.key_column.clone());
                }
                Some(columns)
            }
        };
        let state_columns = mapping_columns(&mapping.table)
            .into_iter()
            .filter(|(path, _)| path.starts_with("state."))
            .map(|(_, name)| name.to_string())
            .collect();
        Some(ChangeCheck {
            mapping_fingerprint: mapping_fingerprint(mapping),
            stored_column,
            columns,
            state_columns,
        })
    }

    /// The row's fingerprint, compared with the stored one, which is taken
    /// out of the row (templates never see it).
    pub fn check(&self, row: &mut Map<String, Value>) -> RowCheck {
        let stored = row.remove(&self.stored_column);
        let fingerprint = match &self.columns {
            Some(columns) => row_fingerprint(&self.mapping_fingerprint, row, columns),
            None => {
                let columns: Vec<String> = row
                    .keys()
                    .filter(|name| !self.state_columns.contains(name))
                    .cloned()
                    .collect();
                row_fingerprint(&self.mapping_fingerprint, row, &columns)
            }
        };
        let unchanged = stored.as_ref().and_then(Value::as_str) == Some(fingerprint.as_str());
        RowCheck {
            fingerprint,
            unchanged,
        }
    }
}
