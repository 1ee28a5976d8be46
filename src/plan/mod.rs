//! Raw config → a validated [`Plan`]: pure (no network, no database), collecting
//! every problem. `engine check` stops here; `engine run` executes the same plan,
//! so what was checked is exactly what runs.

mod auth;
mod connector;
mod mapping;
mod pacing;
mod templates;
mod tiers;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use auth::{AuthPlan, OAuthPlan, UserName, secret_env_names};
pub use connector::{
    BULK_JOB_VARIABLES, BatchPlan, BatchResultsPlan, BulkPlan, ConnectorPlan, DeletePlan, Flow,
    KeyedOps, OpPlan, PollSchedule, RulePlan, base_url_credentials, base_url_problem,
};
pub use mapping::{
    MAPPING_EXTRA_VARIABLES, MappingPlan, SchedulePlan, SnapshotPlan, SnapshotSource,
    spec_columns as mapping_columns, table_spec,
};
// Closed choices whose file spelling already is the runtime value: the
// runtime takes them from the plan, so no code past the plan step imports
// `config`.
pub use crate::choices::{OnRemoved, Redirects, ResetUnit, RuleAction, SyncMode};
pub use pacing::{
    Backoff, ClassifyPolicy, HeaderPolicy, Jitter, LimitsInForce, PacingPlan, RetryPlan, WindowPlan,
};
pub use templates::WHOLE_CONTEXT;
pub use tiers::{tier_env, window_env};

use crate::config::ConfigSet;
use crate::diagnostic::Diagnostic;
use crate::store::RowColumns;
use crate::template::Templates;

/// Everything `run` needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// By connector name.
    pub connectors: BTreeMap<String, Arc<ConnectorPlan>>,
    /// By mapping name.
    pub mappings: BTreeMap<String, Arc<MappingPlan>>,
    /// Every compiled template.
    pub templates: Arc<Templates>,
}

impl Plan {
    /// The columns a claim must return for `mapping`: those its field
    /// templates read and its key, unless a template reads the whole row
    /// (a mapping's `{{json this}}`, a connector's `{{row.x}}`).
    pub fn row_columns(&self, mapping: &MappingPlan) -> RowColumns {
        let connector_reads_row = self
            .connectors
            .get(&mapping.connector)
            .is_none_or(|c| c.reads_row);
        let names = mapping.variables.iter().map(|u| u.name.as_str());
        if connector_reads_row || names.clone().any(|n| n == templates::WHOLE_CONTEXT) {
            return RowColumns::All;
        }
        let mut columns: Vec<String> = Vec::new();
        for name in names.filter(|n| !MAPPING_EXTRA_VARIABLES.contains(n)) {
            if !columns.iter().any(|c| c == name) {
                columns.push(name.to_string());
            }
        }
        RowColumns::Only(columns)
    }

    /// The mappings that sync to `connector`.
    pub fn mappings_of(&self, connector: &str) -> Vec<Arc<MappingPlan>> {
        self.mappings
            .values()
            .filter(|m| m.connector == connector)
            .cloned()
            .collect()
    }
}

/// Where environment values come from; a trait so `check` and tests can pass a map.
pub trait Env {
    /// The value of variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment (after `.env` was loaded).
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Validates every loaded file and builds the plan. Returns the plan (possibly
/// partial) and all diagnostics; callers refuse to run when any is an error.
pub fn build(set: &ConfigSet, env: &dyn Env) -> (Plan, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut templates = Templates::new();
    let mut connectors = BTreeMap::new();
    for loaded in set.connectors.values() {
        // Secrets matter only for connectors some mapping runs; example connectors
        // without a mapping are checked but not nagged about.
        let used = set
            .mappings
            .values()
            .any(|m| m.raw.connector == loaded.name);
        if let Some(plan) = connector::build(loaded, env, used, &mut templates, &mut diagnostics) {
            connectors.insert(loaded.name.clone(), Arc::new(plan));
        }
    }
    let mut mappings = BTreeMap::new();
    for loaded in set.mappings.values() {
        let connector = set.connectors.get(&loaded.raw.connector);
        if let Some(plan) = mapping::build(loaded, connector, set, &mut templates, &mut diagnostics)
        {
            mappings.insert(loaded.name.clone(), Arc::new(plan));
        }
    }
    link_table_mates(&mut mappings);
    let plan = Plan {
        connectors,
        mappings,
        templates: Arc::new(templates),
    };
    (plan, diagnostics)
}

/// Tells each mapping about the other mappings of its table: `migrate`
/// creates their state columns with its own, and a claim must not wait on
/// the leases of those sharing its `next_retry_at` (the seed's table shares
/// it between CRMs).
fn link_table_mates(mappings: &mut BTreeMap<String, Arc<MappingPlan>>) {
    // A snapshot mapping keeps its state in its own table, not on the rows
    // it reads: it is nobody's table mate, and has none.
    let specs: Vec<(String, crate::store::TableSpec)> = mappings
        .iter()
        .filter(|(_, m)| m.snapshot.is_none())
        .map(|(name, m)| (name.clone(), m.table.clone()))
        .collect();
    for (name, mapping) in mappings.iter_mut() {
        if mapping.snapshot.is_some() {
            continue;
        }
        let mates: Vec<crate::store::TableSpec> = specs
            .iter()
            .filter(|(other, spec)| other != name && spec.table == mapping.table.table)
            .map(|(_, spec)| spec.clone())
            .collect();
        // Just built: no other handle to the plan exists yet.
        if let (false, Some(mapping)) = (mates.is_empty(), Arc::get_mut(mapping)) {
            mapping.table.table_mates = mates;
        }
    }
}

/// `true` when `name` can be used unquoted as an SQL identifier (we still quote it).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

/// `true` when `name` looks like an environment-variable name rather than a secret.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}
