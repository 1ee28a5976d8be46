//! What `engine migrate` runs: pure functions of the table's current
//! columns, so `migration_sql` can show the SQL without running it.

use anyhow::ensure;

use super::sql::{claim_index_name, quote};
use super::{Backend, Column, TableSpec};

/// A column's role, which decides its type on each backend.
#[derive(Clone, Copy)]
enum Kind {
    /// The seed's primary key: a uuid the database makes up when omitted
    /// (the seed inserts rows without ids).
    Id,
    Text,
    RequiredText,
    Uuid,
    /// A retry counter: never NULL, starts at 0.
    Count,
    Time,
}

impl Kind {
    fn sql_type(self, backend: Backend) -> &'static str {
        match (self, backend) {
            (Kind::Id, Backend::Postgres) => "uuid PRIMARY KEY DEFAULT gen_random_uuid()",
            (Kind::Id, Backend::Sqlite) => SQLITE_UUID_PRIMARY_KEY,
            (Kind::Text, Backend::Postgres) => "text",
            (Kind::RequiredText, Backend::Postgres) => "text NOT NULL",
            (Kind::Uuid, Backend::Postgres) => "uuid",
            (Kind::Count, Backend::Postgres) => "integer NOT NULL DEFAULT 0",
            (Kind::Time, Backend::Postgres) => "timestamptz",
            (Kind::Text | Kind::Uuid | Kind::Time, Backend::Sqlite) => "TEXT",
            (Kind::RequiredText, Backend::Sqlite) => "TEXT NOT NULL",
            (Kind::Count, Backend::Sqlite) => "INTEGER NOT NULL DEFAULT 0",
        }
    }
}

/// A random (version 4) uuid in its usual text form, SQLite's counterpart
/// of `gen_random_uuid()`.
const SQLITE_UUID_PRIMARY_KEY: &str = "TEXT PRIMARY KEY NOT NULL DEFAULT (lower(\
    hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) \
    || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) \
    || '-' || hex(randomblob(6))))";

/// The data columns of the seed's `contacts` table (docs:
/// shared/seed/contacts-schema.md). The state columns a new table gets are
/// those the mappings over it declare (see `all_state_columns`): the engine
/// names no CRM here.
const SEED_COLUMNS: [(&str, Kind); 6] = [
    ("id", Kind::Id),
    ("email", Kind::RequiredText),
    ("name", Kind::Text),
    ("phone_number", Kind::Text),
    ("domain_id", Kind::Uuid),
    ("page_id", Kind::Uuid),
];

/// The columns the engine writes for one mapping, without repeats.
fn state_columns(spec: &TableSpec) -> Vec<(&str, Kind)> {
    let mut columns: Vec<(&str, Kind)> = Vec::new();
    push_state_columns(&mut columns, spec);
    columns
}

/// The state columns of `spec` and then of its table mates, without repeats:
/// what a table `engine migrate` creates holds besides the data columns.
fn all_state_columns(spec: &TableSpec) -> Vec<(&str, Kind)> {
    let mut columns: Vec<(&str, Kind)> = Vec::new();
    push_state_columns(&mut columns, spec);
    for mate in &spec.table_mates {
        push_state_columns(&mut columns, mate);
    }
    columns
}

fn push_state_columns<'a>(columns: &mut Vec<(&'a str, Kind)>, spec: &'a TableSpec) {
    let all = [
        (spec.sync_status.as_str(), Kind::Text),
        (spec.processing_status.as_str(), Kind::Text),
        (spec.crm_id.as_str(), Kind::Text),
        (spec.error.as_str(), Kind::Text),
        (spec.retry_count.as_str(), Kind::Count),
        (spec.next_retry_at.as_str(), Kind::Time),
    ];
    let fingerprint = spec.fingerprint.as_deref().map(|name| (name, Kind::Text));
    for (name, kind) in all.into_iter().chain(fingerprint) {
        if !columns.iter().any(|(seen, _)| *seen == name) {
            columns.push((name, kind));
        }
    }
}

/// The statements that bring the table up to what `spec` needs.
/// `current` is `None` when the table does not exist.
pub(super) fn migration_sql(
    backend: Backend,
    spec: &TableSpec,
    current: Option<&[Column]>,
    has_claim_index: bool,
) -> anyhow::Result<Vec<String>> {
    let mut statements = match current {
        None => vec![create_seed_table(backend, spec)?],
        Some(columns) => add_missing_columns(backend, spec, columns)?,
    };
    if !has_claim_index {
        statements.push(create_claim_index(backend, spec));
    }
    Ok(statements)
}

/// The seed's data columns, then the state columns of `spec` and its table mates.
fn create_seed_table(backend: Backend, spec: &TableSpec) -> anyhow::Result<String> {
    for (role, name) in [("id", &spec.id_column), ("key", &spec.key_column)] {
        ensure!(
            SEED_COLUMNS.iter().any(|(seed, _)| seed == name),
            "table {} does not exist, and migrate only creates the seed's contacts table, \
             which has no {role} column {name}",
            spec.table
        );
    }
    let extra = all_state_columns(spec)
        .into_iter()
        .filter(|(name, _)| !SEED_COLUMNS.iter().any(|(seed, _)| seed == name));
    let definitions: Vec<String> = SEED_COLUMNS
        .into_iter()
        .chain(extra)
        .map(|(name, kind)| format!("    {} {}", quote(name), kind.sql_type(backend)))
        .collect();
    Ok(format!(
        "CREATE TABLE {} (\n{}\n)",
        quote(&spec.table),
        definitions.join(",\n")
    ))
}

fn add_missing_columns(
    backend: Backend,
    spec: &TableSpec,
    columns: &[Column],
) -> anyhow::Result<Vec<String>> {
    let has = |name: &str| columns.iter().any(|c| c.name == name);
    for (role, name) in [("id", &spec.id_column), ("key", &spec.key_column)] {
        ensure!(
            has(name),
            "table {} has no {role} column {name}",
            spec.table
        );
    }
    let missing = state_columns(spec)
        .into_iter()
        .filter(|(name, _)| !has(name));
    let statements = missing.map(|(name, kind)| {
        format!(
            "ALTER TABLE {} ADD COLUMN {} {}",
            quote(&spec.table),
            quote(name),
            kind.sql_type(backend)
        )
    });
    Ok(statements.collect())
}

/// The columns of the index claims walk, in order: status first, then due
/// time (NULLs first, the order claims take), so each claim reads only the
/// rows it takes.
///
/// Rows due at the same time are taken in the index's own order. On SQLite
/// that is the rowid, which an index entry ends with: rows next to each
/// other in the index are next to each other in the table, so a claim of 500
/// rows touches a few dozen pages. (Ending the index with a random uuid id
/// instead scattered every claim over the whole table: 3 times slower on
/// 100,000 rows.) PostgreSQL's heap has no such order; its index ends with
/// the id.
pub(super) fn claim_index_columns(backend: Backend, spec: &TableSpec) -> Vec<String> {
    let mut columns = vec![spec.processing_status.clone(), spec.next_retry_at.clone()];
    if backend == Backend::Postgres {
        columns.push(spec.id_column.clone());
    }
    columns
}

fn create_claim_index(backend: Backend, spec: &TableSpec) -> String {
    let mut columns: Vec<String> = claim_index_columns(backend, spec)
        .iter()
        .map(|c| quote(c))
        .collect();
    if backend == Backend::Postgres {
        // SQLite sorts NULLs first already.
        columns[1].push_str(" NULLS FIRST");
    }
    format!(
        "CREATE INDEX {} ON {} ({})",
        quote(&claim_index_name(spec)),
        quote(&spec.table),
        columns.join(", "),
    )
}
