//! Validating one mapping file into a [`MappingPlan`].

use std::time::Duration;

use serde_json::{Map, Value};

use super::templates::{VariableUse, check_tree};
use super::{OnRemoved, SyncMode, is_identifier};
use crate::config::mapping::{OnEmptyChoice, Schedule, SourceMode};
use crate::config::{ConfigSet, ConnectorFile, Loaded, MappingFile};
use crate::diagnostic::{Diagnostic, Severity};
use crate::source_file::SourceFile;
use crate::store::TableSpec;
use crate::template::{CompiledTree, OnEmpty, Templates};

/// Names mapping templates may use besides the row's columns.
pub const MAPPING_EXTRA_VARIABLES: &[&str] = &["params"];

/// A validated mapping.
#[derive(Debug)]
pub struct MappingPlan {
    /// File stem, e.g. `hubspot`.
    pub name: String,
    /// Connector it syncs to.
    pub connector: String,
    /// Table and state columns.
    pub table: TableSpec,
    /// Schedule and retry settings.
    pub schedule: SchedulePlan,
    /// What empty fields become.
    pub on_empty: OnEmpty,
    /// Connector params overridden by the mapping's.
    pub params: Map<String, Value>,
    /// The fields tree.
    pub fields: CompiledTree,
    /// Variables the field templates use (checked against the table's columns when a database is known).
    pub variables: Vec<VariableUse>,
    /// The file, for diagnostics found later (database checks).
    pub source: SourceFile,
    /// What the sync may do to the CRM's records.
    pub mode: SyncMode,
    /// Whether `engine migrate` installs the change triggers.
    pub queue_on_change: bool,
    /// Set in snapshot mode: what to read; the state lives in the engine's table.
    pub snapshot: Option<SnapshotPlan>,
    /// What happens to the CRM record of a removed row (snapshot mode) or of
    /// a row set to `Delete` (queue mode).
    pub on_removed: OnRemoved,
}

/// A snapshot-mode source.
#[derive(Debug, Clone)]
pub struct SnapshotPlan {
    /// The table, view or query read each cycle.
    pub source: SnapshotSource,
    /// The variable naming the state database's URL, when the mapping sets one.
    pub state_database_env: Option<String>,
}

/// What a snapshot reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotSource {
    /// A table or view, by name.
    Table(String),
    /// A `SELECT` (no trailing semicolon).
    Query(String),
}

/// Validates one mapping; `None` when it has errors.
pub fn build(
    loaded: &Loaded<MappingFile>,
    connector: Option<&Loaded<ConnectorFile>>,
    set: &ConfigSet,
    templates: &mut Templates,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<MappingPlan> {
    let raw = &loaded.raw;
    let source = &loaded.source;
    let before = diagnostics.iter().filter(|d| d.is_error()).count();
    if connector.is_none()
        && !set
            .broken
            .contains(&format!("connectors/{}", raw.connector))
    {
        diagnostics.push(missing_connector(source, &raw.connector, set));
    }
    if let Some(connector) = connector {
        check_mode(source, raw.mode, connector, diagnostics);
    }
    let table = table_spec(raw);
    check_identifiers(source, raw, &table, diagnostics);
    let snapshot = check_source_mode(source, raw, connector, diagnostics);
    if raw.fields.is_empty() {
        diagnostics.push(
            source
                .diagnostic_at_key(
                    Severity::Error,
                    "fields",
                    "`fields` is empty: nothing would be sent",
                )
                .hint("map at least one CRM field, e.g. `email = \"{{email}}\"`"),
        );
    }
    let fields_tree = Value::Object(raw.fields.clone());
    let variables = check_tree(source, "fields", &fields_tree, None, diagnostics);
    check_fingerprint_column(source, &table, &variables, diagnostics);
    check_case_duplicates(source, &raw.fields, diagnostics);
    let fields = templates
        .compile_tree(&format!("{}:fields", source.display), &fields_tree)
        .ok();
    let after = diagnostics.iter().filter(|d| d.is_error()).count();
    if after > before {
        return None;
    }
    let mut params = connector.map(|c| c.raw.params.clone()).unwrap_or_default();
    params.extend(raw.params.clone());
    Some(MappingPlan {
        name: loaded.name.clone(),
        connector: raw.connector.clone(),
        table,
        schedule: SchedulePlan::from_config(&raw.schedule),
        on_empty: match raw.on_empty {
            OnEmptyChoice::Omit => OnEmpty::Omit,
            OnEmptyChoice::EmptyString => OnEmpty::EmptyString,
            OnEmptyChoice::Null => OnEmpty::Null,
        },
        params,
        fields: fields?,
        variables,
        source: source.clone(),
        mode: raw.mode,
        queue_on_change: raw.queue_on_change,
        snapshot,
        on_removed: raw.on_removed,
    })
}

/// Checks the keys that depend on `source.mode`; the snapshot plan in snapshot mode.
fn check_source_mode(
    source: &SourceFile,
    raw: &MappingFile,
    connector: Option<&Loaded<ConnectorFile>>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<SnapshotPlan> {
    let mut error = |path: &str, message: String, hint: &str| {
        diagnostics.push(
            source
                .diagnostic_at_value(Severity::Error, path, message)
                .hint(hint),
        );
    };
    let can_delete = connector.is_none_or(|c| c.raw.delete.is_some());
    if raw.on_removed == OnRemoved::Archive && !can_delete {
        error(
            "on_removed",
            format!(
                "`on_removed = \"archive\"` needs a `[delete]` operation in connectors/{}.toml",
                raw.connector
            ),
            "declare how the CRM deletes a record by id, or set on_removed = \"ignore\"",
        );
    }
    let src = &raw.source;
    if src.mode == SourceMode::Queue {
        if src.table.is_none() {
            error(
                "source",
                "`source.table` is missing".into(),
                "name the table holding the rows, e.g. table = \"contacts\"",
            );
        }
        if src.query.is_some() {
            error(
                "source.query",
                "`source.query` needs `mode = \"snapshot\"`".into(),
                "a queue is a table the engine writes its state to; a query is read-only",
            );
        }
        if src.state_database_env.is_some() {
            error(
                "source.state_database_env",
                "`source.state_database_env` needs `mode = \"snapshot\"`".into(),
                "a queue keeps its state in its own table's columns",
            );
        }
        return None;
    }
    if raw.queue_on_change {
        error(
            "queue_on_change",
            "`queue_on_change` needs queue mode".into(),
            "a snapshot finds changes by reading its source; remove queue_on_change",
        );
    }
    if source.json.get("state").is_some() {
        error(
            "state",
            "a snapshot-mode mapping has no `[state]` columns".into(),
            "its state lives in the engine's own table (engine_snapshot_state); remove [state]",
        );
    }
    let read = match (&src.table, &src.query) {
        (Some(table), None) => SnapshotSource::Table(table.clone()),
        (None, Some(query)) => {
            let query = query.trim().trim_end_matches(';').trim_end().to_string();
            let first = query.split_whitespace().next().unwrap_or("");
            if !first.eq_ignore_ascii_case("select") && !first.eq_ignore_ascii_case("with") {
                error(
                    "source.query",
                    "`source.query` must be one SELECT statement".into(),
                    "e.g. query = \"SELECT id, email, name FROM contacts WHERE active\"",
                );
            }
            SnapshotSource::Query(query)
        }
        (Some(_), Some(_)) => {
            error(
                "source.query",
                "`source.table` and `source.query` are both set".into(),
                "a snapshot reads one of them: keep the table (or view), or the query",
            );
            return None;
        }
        (None, None) => {
            error(
                "source",
                "a snapshot-mode mapping needs `source.table` or `source.query`".into(),
                "e.g. table = \"contacts\" (a table or a view), or query = \"SELECT ...\"",
            );
            return None;
        }
    };
    if let Some(name) = &src.state_database_env
        && !super::is_env_name(name)
    {
        error(
            "source.state_database_env",
            format!("`{name}` is not an environment variable name"),
            "name the variable that holds the URL (e.g. STATE_DATABASE_URL), never the URL itself",
        );
    }
    Some(SnapshotPlan {
        source: read,
        state_database_env: src.state_database_env.clone(),
    })
}

/// The table spec with the default column names: the seed's per-CRM names,
/// and `<connector>_retry_count` / `<connector>_next_retry_at`.
pub fn table_spec(raw: &MappingFile) -> TableSpec {
    let prefix = raw.connector.replace('-', "_");
    let state = &raw.state;
    let or = |value: &Option<String>, default: String| value.clone().unwrap_or(default);
    TableSpec {
        table: raw.source.table.clone().unwrap_or_default(),
        id_column: raw.source.id.clone(),
        key_column: raw.source.key.clone(),
        processing_status: or(
            &state.processing_status,
            format!("{prefix}_processing_status"),
        ),
        sync_status: or(&state.sync_status, format!("{prefix}_sync_status")),
        crm_id: or(&state.crm_id, format!("{prefix}_contact_id")),
        error: or(&state.error, format!("{prefix}_processing_error")),
        // Per-mapping by default: shared retry columns couple the mappings
        // of a table (see README "Shared retry columns"). The seed's table
        // names its shared ones explicitly (the shipped mappings do).
        retry_count: or(&state.retry_count, format!("{prefix}_retry_count")),
        next_retry_at: or(&state.next_retry_at, format!("{prefix}_next_retry_at")),
        fingerprint: state.fingerprint.clone(),
        table_mates: Vec::new(),
    }
}

/// Every column name of a spec with the key path that sets it.
pub fn spec_columns(spec: &TableSpec) -> Vec<(&'static str, &str)> {
    [
        ("source.id", spec.id_column.as_str()),
        ("source.key", spec.key_column.as_str()),
        ("state.processing_status", spec.processing_status.as_str()),
        ("state.sync_status", spec.sync_status.as_str()),
        ("state.crm_id", spec.crm_id.as_str()),
        ("state.error", spec.error.as_str()),
        ("state.retry_count", spec.retry_count.as_str()),
        ("state.next_retry_at", spec.next_retry_at.as_str()),
    ]
    .into_iter()
    .chain(
        spec.fingerprint
            .as_deref()
            .map(|name| ("state.fingerprint", name)),
    )
    .collect()
}

fn check_identifiers(
    source: &SourceFile,
    raw: &MappingFile,
    spec: &TableSpec,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut names: Vec<(&str, &str)> = raw
        .source
        .table
        .as_deref()
        .map(|table| ("source.table", table))
        .into_iter()
        .collect();
    names.extend(spec_columns(spec));
    for (path, name) in names {
        if !is_identifier(name) {
            diagnostics.push(
                source
                    .diagnostic_at_value(
                        Severity::Error,
                        path,
                        format!("`{name}` is not a plain SQL identifier"),
                    )
                    .hint("letters, digits and underscores, starting with a letter or underscore"),
            );
        }
    }
    let state = spec_columns(spec);
    for (i, (path, name)) in state.iter().enumerate().skip(2) {
        if let Some((other, _)) = state.iter().skip(2).take(i - 2).find(|(_, n)| n == name) {
            diagnostics.push(
                source
                    .diagnostic_at_value(
                        Severity::Error,
                        path,
                        format!("`{path}` and `{other}` both use column `{name}`"),
                    )
                    .hint("each state needs its own column"),
            );
        }
    }
}

/// The fingerprint column is the engine's to write: it must not be a column
/// the fields read, nor the key or id.
fn check_fingerprint_column(
    source: &SourceFile,
    table: &TableSpec,
    variables: &[VariableUse],
    diagnostics: &mut Vec<Diagnostic>,
) {
    let Some(column) = &table.fingerprint else {
        return;
    };
    let read = variables.iter().any(|v| &v.name == column);
    if read || column == &table.key_column || column == &table.id_column {
        diagnostics.push(
            source
                .diagnostic_at_value(
                    Severity::Error,
                    "state.fingerprint",
                    format!("`state.fingerprint` names `{column}`, a column the mapping reads: the engine would overwrite it"),
                )
                .hint("name a column of its own, e.g. `<connector>_fingerprint` (engine migrate adds it)"),
        );
    }
}

/// `update_only` looks each key up with the connector's `upsert.lookup`;
/// `create_only` uses its `upsert.create` (a conflict means the record
/// exists), else the lookup.
fn check_mode(
    source: &SourceFile,
    mode: SyncMode,
    connector: &Loaded<ConnectorFile>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let upsert = &connector.raw.upsert;
    let can_tell = match mode {
        SyncMode::Upsert => true,
        SyncMode::UpdateOnly => upsert.lookup.is_some(),
        SyncMode::CreateOnly => upsert.lookup.is_some() || upsert.create.is_some(),
    };
    if !can_tell {
        diagnostics.push(
            source
                .diagnostic_at_value(
                    Severity::Error,
                    "mode",
                    format!(
                        "mode `{}` needs to know whether a record exists, but connector `{}` has no [upsert.lookup]{}",
                        mode.as_str(),
                        connector.name,
                        if mode == SyncMode::CreateOnly { " nor [upsert.create]" } else { "" }
                    ),
                )
                .hint("add an [upsert.lookup] operation (find a record by {{key}}; 404 means none) to the connector, or use mode = \"upsert\""),
        );
    }
}

fn check_case_duplicates(
    source: &SourceFile,
    fields: &Map<String, Value>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    // By lower-cased name, the first key seen: one pass, so a mapping of
    // 100,000 fields loads in linear time.
    let mut seen: std::collections::HashMap<String, &String> =
        std::collections::HashMap::with_capacity(fields.len());
    for key in fields.keys() {
        if let Some(first) = seen.get(&key.to_ascii_lowercase()) {
            diagnostics.push(
                source
                    .diagnostic_at_key(
                        Severity::Error,
                        &crate::config::toml_json::join_key("fields", key),
                        format!("duplicate field: `{key}` and `{first}` differ only in case"),
                    )
                    .hint("CRMs match field names case-insensitively or by exact name; keep one"),
            );
        } else {
            seen.insert(key.to_ascii_lowercase(), key);
        }
    }
}

fn missing_connector(source: &SourceFile, name: &str, set: &ConfigSet) -> Diagnostic {
    let known: Vec<&String> = set.connectors.keys().collect();
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let diagnostic = source.diagnostic_at_value(
        Severity::Error,
        "connector",
        format!("connector `{name}` not found: there is no connectors/{name}.toml"),
    );
    match best {
        Some((_, best)) => diagnostic.hint(format!("did you mean `{best}`?")),
        None => diagnostic.hint(format!(
            "known connectors: {}",
            known
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// When and how a mapping's rows are claimed and retried, durations as
/// `Duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulePlan {
    /// Between cycles with `run --watch`.
    pub interval: Duration,
    /// Rows claimed per claim statement.
    pub batch_size: u32,
    /// Processes allowed to run this mapping at once.
    pub max_instances: u32,
    /// Retries after the first failure before a row ends in `Error`.
    pub max_retries: u32,
    /// Before the first retry.
    pub retry_delay: Duration,
    /// Whether the delay doubles at each retry.
    pub retry_exponential: bool,
    /// How long a claimed row may stay `Processing` before another run may reclaim it.
    pub lease: Duration,
}

impl SchedulePlan {
    fn from_config(raw: &Schedule) -> Self {
        Self {
            interval: Duration::from_secs(raw.interval_secs),
            batch_size: raw.batch_size,
            max_instances: raw.max_instances,
            max_retries: raw.max_retries,
            retry_delay: Duration::from_secs(raw.retry_delay_secs),
            retry_exponential: raw.retry_exponential,
            lease: Duration::from_secs(raw.lease_secs),
        }
    }
}
