//! Change detection in queue mode: whether a claimed row still holds the
//! values the CRM last confirmed (see [`crate::fingerprint`]), and the change
//! triggers that queue a row when a column the mapping reads changes.

use anyhow::bail;
use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, Severity};
use crate::fingerprint::{mapping_fingerprint, row_fingerprint};
use crate::plan::{MappingPlan, Plan, mapping_columns};
use crate::store::{Backend, ChangeTriggers, RowColumns, Store, TriggerState};

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

/// The columns whose change must queue a row: those the templates read and
/// the key, or every column when a template reads the whole row (`None`).
fn watched_columns(plan: &Plan, mapping: &MappingPlan) -> Option<Vec<String>> {
    match plan.row_columns(mapping) {
        RowColumns::All => None,
        RowColumns::Only(mut columns) => {
            columns.push(mapping.table.key_column.clone());
            Some(columns)
        }
    }
}

/// The change triggers of `mapping` over the table as it is; `None` when
/// the table does not exist.
pub async fn change_triggers(
    store: &Store,
    plan: &Plan,
    mapping: &MappingPlan,
) -> anyhow::Result<Option<ChangeTriggers>> {
    let Some(table) = store.columns(&mapping.table.table).await? else {
        return Ok(None);
    };
    let columns = watched_columns(plan, mapping)
        .unwrap_or_else(|| table.iter().map(|c| c.name.clone()).collect());
    Ok(Some(ChangeTriggers::new(&mapping.table, &columns)))
}

/// The SQL that installs `mapping`'s change triggers on a table that has
/// none, for `backend`, without a database (`engine migrate --print
/// --dialect`). Fails when a template reads the whole row: the columns to
/// watch are then the table's, which only the database knows.
pub fn change_trigger_sql_for(
    plan: &Plan,
    mapping: &MappingPlan,
    backend: Backend,
) -> anyhow::Result<Vec<String>> {
    let Some(columns) = watched_columns(plan, mapping) else {
        bail!(
            "mapping `{}` reads the whole row, so its triggers watch every column of the table: \
             give --database to print them",
            mapping.name
        );
    };
    Ok(ChangeTriggers::new(&mapping.table, &columns).install_sql(backend, &[]))
}

/// The statements that bring `mapping`'s change triggers up to date
/// (nothing when `queue_on_change` is off).
pub async fn change_trigger_migration(
    store: &Store,
    plan: &Plan,
    mapping: &MappingPlan,
) -> anyhow::Result<Vec<String>> {
    if !mapping.queue_on_change {
        return Ok(Vec::new());
    }
    let Some(triggers) = change_triggers(store, plan, mapping).await? else {
        // No table yet (`migrate --print` on a fresh database): what the
        // created table will get, when the columns are known without it.
        return Ok(change_trigger_sql_for(plan, mapping, store.backend()).unwrap_or_default());
    };
    let existing = store.trigger_names(&mapping.table.table).await?;
    Ok(triggers.install_sql(store.backend(), &existing))
}

/// `engine check --database`: a mapping with `queue_on_change` whose
/// triggers are missing, or watch columns the mapping no longer reads (or
/// no longer all of them). A warning: rows still sync once queued by hand.
pub async fn check_change_triggers<'a>(
    store: &Store,
    plan: &Plan,
    mappings: impl IntoIterator<Item = &'a MappingPlan>,
) -> anyhow::Result<Vec<Diagnostic>> {
    let mut out = Vec::new();
    for mapping in mappings.into_iter().filter(|m| m.queue_on_change) {
        let Some(triggers) = change_triggers(store, plan, mapping).await? else {
            continue;
        };
        let existing = store.trigger_names(&mapping.table.table).await?;
        let message = match triggers.state(&existing) {
            TriggerState::Installed => continue,
            TriggerState::Missing => format!(
                "the change triggers of table `{}` are not installed: changed rows are not queued",
                mapping.table.table
            ),
            TriggerState::Stale(names) => format!(
                "the change triggers of table `{}` are stale ({}): they do not watch exactly the columns the mapping reads now ({})",
                mapping.table.table,
                names.join(", "),
                triggers.watched().join(", ")
            ),
        };
        out.push(
            mapping
                .source
                .diagnostic_at_value(Severity::Warning, "queue_on_change", message)
                .hint(format!(
                    "`engine migrate --mapping {}` installs them",
                    mapping.name
                )),
        );
    }
    Ok(out)
}
