//! `engine check`: the first half of `run`. Loads and plans every file, and with a
//! database also checks that tables, state columns and template columns exist.

use std::path::Path;

use crate::config::{self, ConfigSet};
use crate::diagnostic::{Diagnostic, Severity};
use crate::plan::{
    self, Env, MAPPING_EXTRA_VARIABLES, MappingPlan, Plan, WHOLE_CONTEXT, mapping_columns,
};
use crate::store::Store;

/// Everything `check` found, and the plan (usable only when there is no error).
pub struct Checked {
    /// The loaded files.
    pub set: ConfigSet,
    /// The plan `run` would execute (see the struct: only without errors).
    pub plan: Plan,
    /// Every problem, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// `true` when some problem is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads and plans `dir`, without touching any database.
pub fn check_dir(dir: &Path, env: &dyn Env) -> Checked {
    let (set, mut diagnostics) = config::load_dir(dir);
    let (plan, mut planned) = plan::build(&set, env);
    diagnostics.append(&mut planned);
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    Checked {
        set,
        plan,
        diagnostics,
    }
}

/// The mappings named in `only` (every mapping when it is empty), or an
/// error naming one that does not exist.
pub fn selected_mappings<'a>(
    plan: &'a Plan,
    only: &[String],
) -> anyhow::Result<Vec<&'a MappingPlan>> {
    if only.is_empty() {
        return Ok(plan.mappings.values().map(|m| m.as_ref()).collect());
    }
    only.iter()
        .map(|name| {
            plan.mappings.get(name).map(|m| m.as_ref()).ok_or_else(|| {
                let known: Vec<&str> = plan.mappings.keys().map(String::as_str).collect();
                anyhow::anyhow!(
                    "no mapping `{name}` in mappings/ (mappings: {})",
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// Checks mappings against the database's tables: the table, its state columns,
/// and every column the field templates read.
pub async fn check_database<'a>(
    mappings: impl IntoIterator<Item = &'a MappingPlan>,
    store: &Store,
) -> anyhow::Result<Vec<Diagnostic>> {
    let mut out = Vec::new();
    for mapping in mappings {
        if mapping.snapshot.is_some() {
            out.extend(crate::snapshot::check_source(store, mapping).await?);
            continue;
        }
        let source = &mapping.source;
        let Some(columns) = store.columns(&mapping.table.table).await? else {
            out.push(
                source
                    .diagnostic_at_value(
                        Severity::Error,
                        "source.table",
                        format!(
                            "table `{}` does not exist in the database",
                            mapping.table.table
                        ),
                    )
                    .hint(format!(
                        "create it with `engine migrate --mapping {}`",
                        mapping.name
                    )),
            );
            continue;
        };
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        for (path, column) in mapping_columns(&mapping.table) {
            if !names.contains(&column) {
                out.push(
                    source
                        .diagnostic_at_value(
                            Severity::Error,
                            path,
                            format!(
                                "column `{column}` is not in table `{}`",
                                mapping.table.table
                            ),
                        )
                        .hint(format!(
                            "`engine migrate --mapping {}` adds missing state columns",
                            mapping.name
                        )),
                );
            }
        }
        for used in &mapping.variables {
            if !MAPPING_EXTRA_VARIABLES.contains(&used.name.as_str())
                && used.name != WHOLE_CONTEXT
                && !names.contains(&used.name.as_str())
            {
                let best = names
                    .iter()
                    .map(|n| (strsim::jaro_winkler(&used.name, n), *n))
                    .filter(|(s, _)| *s > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                let diagnostic = source.diagnostic_at_value(
                    Severity::Error,
                    &used.at,
                    format!(
                        "template `{}` uses `{}`, which is not a column of `{}`",
                        used.at, used.name, mapping.table.table
                    ),
                );
                out.push(match best {
                    Some((_, best)) => diagnostic.hint(format!("did you mean `{best}`?")),
                    None => diagnostic.hint(format!("columns: {}", names.join(", "))),
                });
            }
        }
    }
    Ok(out)
}
