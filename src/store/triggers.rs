//! Change triggers (`queue_on_change = true`): an insert, or an update that
//! changes a column the mapping reads, sets the row's processing status to
//! `Queued`. Pure SQL text, so `engine migrate --print` can show it for
//! either backend.
//!
//! The engine's own writes (claim, record) touch only state columns, which
//! are never watched, so they never queue a row. A row updated while
//! `Processing` becomes `Queued` with its lease left in `next_retry_at`: the
//! record of its older version then leaves it queued and makes it due (see
//! `sql::requeued_in_flight`), so the newer values are sent afterwards.
//!
//! # Names
//! `engine_q_<table+status hash>_<columns hash>_{ins,upd}`: the first hash
//! says which mapping's triggers they are (two mappings on one table each
//! have their own), the second which columns they watch. Triggers of the
//! same mapping with another column hash are stale: `engine check --database`
//! says so, and `engine migrate` replaces them.

use super::sql::{QUEUED, fnv1a, quote};
use super::{Backend, TableSpec};

/// Version of the trigger bodies, part of the columns hash: a change to
/// the generated SQL makes installed triggers stale.
const TRIGGER_VERSION: &str = "1";

/// The triggers one mapping needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeTriggers {
    table: String,
    id_column: String,
    status_column: String,
    /// Watched columns, sorted, without state columns.
    watched: Vec<String>,
}

/// What the database holds of a mapping's triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerState {
    /// Both triggers, watching the mapping's current columns.
    Installed,
    /// None of this mapping's triggers.
    Missing,
    /// Triggers of this mapping watching other columns (their names).
    Stale(Vec<String>),
}

impl ChangeTriggers {
    /// The triggers for `spec`, watching `columns` (the columns the mapping's
    /// templates read and its key). State columns are never watched: the
    /// engine writes them.
    pub fn new(spec: &TableSpec, columns: &[String]) -> ChangeTriggers {
        let state = [
            &spec.processing_status,
            &spec.sync_status,
            &spec.crm_id,
            &spec.error,
            &spec.retry_count,
            &spec.next_retry_at,
        ];
        let mut watched: Vec<String> = columns
            .iter()
            .filter(|c| !state.contains(c) && spec.fingerprint.as_ref() != Some(*c))
            .cloned()
            .collect();
        watched.sort();
        watched.dedup();
        ChangeTriggers {
            table: spec.table.clone(),
            id_column: spec.id_column.clone(),
            status_column: spec.processing_status.clone(),
            watched,
        }
    }

    /// The columns an update must change to queue the row.
    pub fn watched(&self) -> &[String] {
        &self.watched
    }

    /// `engine_q_<mapping hash>_`: every trigger of this mapping starts so.
    fn prefix(&self) -> String {
        let owner = format!("{}\0{}", self.table, self.status_column);
        format!("engine_q_{:08x}_", fnv1a(owner.as_bytes()))
    }

    /// The prefix plus the hash of what the triggers do.
    fn base_name(&self) -> String {
        let what = format!(
            "{TRIGGER_VERSION}\0{}\0{}",
            self.id_column,
            self.watched.join("\0")
        );
        format!("{}{:08x}", self.prefix(), fnv1a(what.as_bytes()))
    }

    fn insert_name(&self) -> String {
        format!("{}_ins", self.base_name())
    }

    fn update_name(&self) -> String {
        format!("{}_upd", self.base_name())
    }

    /// Compares with the names of the triggers the table has.
    pub fn state(&self, existing: &[String]) -> TriggerState {
        let prefix = self.prefix();
        let ours: Vec<&String> = existing.iter().filter(|n| n.starts_with(&prefix)).collect();
        let wanted = [self.insert_name(), self.update_name()];
        if wanted.iter().all(|w| ours.contains(&w)) && ours.len() == wanted.len() {
            return TriggerState::Installed;
        }
        let stale: Vec<String> = ours
            .into_iter()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        if stale.is_empty() {
            TriggerState::Missing
        } else {
            TriggerState::Stale(stale)
        }
    }

    /// The statements that leave exactly this mapping's current triggers:
    /// drop the stale ones, create the missing ones. Empty when installed.
    pub fn install_sql(&self, backend: Backend, existing: &[String]) -> Vec<String> {
        let prefix = self.prefix();
        let wanted = [self.insert_name(), self.update_name()];
        let ours: Vec<&String> = existing.iter().filter(|n| n.starts_with(&prefix)).collect();
        let mut statements = Vec::new();
        for stale in ours.iter().filter(|n| !wanted.contains(n)) {
            statements.push(self.drop_sql(backend, stale));
        }
        if backend == Backend::Postgres {
            let functions: Vec<String> = ours
                .iter()
                .filter(|n| !wanted.contains(n))
                .filter_map(|n| function_of(n))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|f| *f != self.base_name())
                .collect();
            for function in functions {
                statements.push(format!("DROP FUNCTION IF EXISTS {}()", quote(&function)));
            }
        }
        if wanted.iter().all(|w| ours.contains(&w)) {
            return statements;
        }
        // Created afresh: drop ours first, in case only one of the two exists.
        for name in wanted.iter().filter(|w| ours.contains(w)) {
            statements.push(self.drop_sql(backend, name));
        }
        statements.extend(match backend {
            Backend::Sqlite => self.sqlite_sql(),
            Backend::Postgres => self.postgres_sql(),
        });
        statements
    }

    fn drop_sql(&self, backend: Backend, name: &str) -> String {
        match backend {
            Backend::Sqlite => format!("DROP TRIGGER IF EXISTS {}", quote(name)),
            Backend::Postgres => format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                quote(name),
                quote(&self.table)
            ),
        }
    }

    /// AFTER triggers that set the status with a second UPDATE (SQLite
    /// triggers cannot assign NEW). That UPDATE sets the status only, which
    /// no trigger watches, so it fires nothing further.
    fn sqlite_sql(&self) -> Vec<String> {
        let (table, id, status) = (
            quote(&self.table),
            quote(&self.id_column),
            quote(&self.status_column),
        );
        let queue =
            format!("BEGIN UPDATE {table} SET {status} = '{QUEUED}' WHERE {id} = NEW.{id}; END");
        let changed: Vec<String> = self
            .watched
            .iter()
            .map(|c| format!("OLD.{c} IS NOT NEW.{c}", c = quote(c)))
            .collect();
        vec![
            format!(
                "CREATE TRIGGER {name} AFTER INSERT ON {table} FOR EACH ROW \
                 WHEN NEW.{status} IS NOT '{QUEUED}' {queue}",
                name = quote(&self.insert_name()),
            ),
            format!(
                "CREATE TRIGGER {name} AFTER UPDATE OF {columns} ON {table} FOR EACH ROW \
                 WHEN {changed} {queue}",
                name = quote(&self.update_name()),
                columns = self.watched_list(),
                changed = changed.join(" OR "),
            ),
        ]
    }

    /// BEFORE triggers that set the status in the row being written: no
    /// second UPDATE.
    fn postgres_sql(&self) -> Vec<String> {
        let (table, status) = (quote(&self.table), quote(&self.status_column));
        let function = quote(&self.base_name());
        let changed: Vec<String> = self
            .watched
            .iter()
            .map(|c| format!("OLD.{c} IS DISTINCT FROM NEW.{c}", c = quote(c)))
            .collect();
        vec![
            format!(
                "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN NEW.{status} := '{QUEUED}'; RETURN NEW; END $$"
            ),
            format!(
                "CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW \
                 EXECUTE FUNCTION {function}()",
                name = quote(&self.insert_name()),
            ),
            format!(
                "CREATE TRIGGER {name} BEFORE UPDATE OF {columns} ON {table} FOR EACH ROW \
                 WHEN ({changed}) EXECUTE FUNCTION {function}()",
                name = quote(&self.update_name()),
                columns = self.watched_list(),
                changed = changed.join(" OR "),
            ),
        ]
    }

    fn watched_list(&self) -> String {
        let quoted: Vec<String> = self.watched.iter().map(|c| quote(c)).collect();
        quoted.join(", ")
    }
}

/// The PostgreSQL function a trigger named `<base>_ins|_upd` calls.
fn function_of(trigger: &str) -> Option<String> {
    trigger
        .strip_suffix("_ins")
        .or_else(|| trigger.strip_suffix("_upd"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            table: "contacts".into(),
            id_column: "id".into(),
            key_column: "email".into(),
            processing_status: "crm_processing_status".into(),
            sync_status: "crm_sync_status".into(),
            crm_id: "crm_contact_id".into(),
            error: "crm_processing_error".into(),
            retry_count: "retry_count".into(),
            next_retry_at: "next_retry_at".into(),
            fingerprint: Some("crm_fingerprint".into()),
            table_mates: Vec::new(),
        }
    }

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn state_columns_are_never_watched_and_the_order_of_columns_does_not_matter() {
        let a = ChangeTriggers::new(
            &spec(),
            &columns(&["name", "email", "crm_contact_id", "crm_fingerprint"]),
        );
        let b = ChangeTriggers::new(&spec(), &columns(&["email", "name"]));
        assert_eq!(a.watched(), ["email", "name"]);
        assert_eq!(a, b);
    }

    #[test]
    fn triggers_watching_other_columns_are_stale_and_replaced() {
        let old = ChangeTriggers::new(&spec(), &columns(&["email"]));
        let new = ChangeTriggers::new(&spec(), &columns(&["email", "name"]));
        let installed = vec![
            old.insert_name(),
            old.update_name(),
            "users_own".to_string(),
        ];
        assert_eq!(old.state(&installed), TriggerState::Installed);
        assert_eq!(
            new.state(&installed),
            TriggerState::Stale(vec![old.insert_name(), old.update_name()])
        );
        assert_eq!(new.state(&["users_own".to_string()]), TriggerState::Missing);
        let sql = new.install_sql(Backend::Postgres, &installed).join(";\n");
        assert!(sql.contains(&format!("DROP TRIGGER IF EXISTS \"{}\"", old.update_name())));
        assert!(sql.contains(&format!(
            "DROP FUNCTION IF EXISTS \"{}\"()",
            old.base_name()
        )));
        assert!(!sql.contains("users_own"), "{sql}");
        assert!(sql.contains("OLD.\"name\" IS DISTINCT FROM NEW.\"name\""));
        let current = vec![new.insert_name(), new.update_name()];
        assert!(new.install_sql(Backend::Sqlite, &current).is_empty());
    }

    #[test]
    fn another_mapping_on_the_same_table_has_its_own_triggers() {
        let other = TableSpec {
            processing_status: "other_processing_status".into(),
            ..spec()
        };
        let a = ChangeTriggers::new(&spec(), &columns(&["email"]));
        let b = ChangeTriggers::new(&other, &columns(&["email"]));
        assert_eq!(
            b.state(&[a.insert_name(), a.update_name()]),
            TriggerState::Missing
        );
    }
}
