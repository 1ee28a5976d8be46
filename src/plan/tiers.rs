//! Rate-limit tiers: a CRM's limits depend on the customer's plan, so a
//! connector names its plans (`[tiers.<name>]`, counts by window name) and a
//! deployment picks one, or overrides one window, through the environment,
//! without editing the shipped file.

use std::collections::BTreeMap;

use super::Env;
use super::pacing::{LimitsInForce, WindowPlan};
use crate::config::connector::RateLimit;
use crate::config::toml_json::join_key;
use crate::diagnostic::{Diagnostic, Severity};
use crate::source_file::SourceFile;

/// The variable that picks a tier: `<NAME>_TIER`.
pub fn tier_env(connector: &str) -> String {
    format!("{}_TIER", env_stem(connector))
}

/// The variable that overrides one window's count: `<NAME>_RATE_LIMIT_<WINDOW>`.
pub fn window_env(connector: &str, window: &str) -> String {
    format!("{}_RATE_LIMIT_{}", env_stem(connector), env_stem(window))
}

/// `salesforce-collections` -> `SALESFORCE_COLLECTIONS`.
fn env_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// What the checks need to know about one connector file. The windows'
/// `requests` are the counts of `default_tier`; each of `tiers` gives another
/// plan's counts.
pub(super) struct TierInput<'a> {
    /// Connector name (file stem).
    pub connector: &'a str,
    /// The file, for diagnostics.
    pub source: &'a SourceFile,
    /// `rate_limits`.
    pub windows: &'a [RateLimit],
    /// `default_tier`.
    pub default_tier: Option<&'a str>,
    /// `tiers`.
    pub tiers: &'a BTreeMap<String, BTreeMap<String, u32>>,
}

/// Checks the tiers and resolves the limits in force under `env`; problems go
/// to `diagnostics` (and the file's own counts are kept where one is found).
pub(super) fn resolve(
    input: &TierInput<'_>,
    env: &dyn Env,
    diagnostics: &mut Vec<Diagnostic>,
) -> LimitsInForce {
    check_tiers(input, diagnostics);
    let mut windows: Vec<WindowPlan> = input.windows.iter().map(WindowPlan::from_config).collect();
    let (tier, tier_from) = chosen_tier(input, env, diagnostics);
    if let Some(counts) = tier.as_deref().and_then(|name| input.tiers.get(name)) {
        for window in &mut windows {
            if let Some(&count) = counts.get(&window.name) {
                window.requests = count;
            }
        }
    }
    let mut overridden = Vec::new();
    for window in &mut windows {
        let name = window_env(input.connector, &window.name);
        let Some(value) = env.var(&name) else {
            continue;
        };
        match value.trim().parse::<u32>() {
            Ok(count) if count > 0 => {
                window.requests = count;
                overridden.push((window.name.clone(), name));
            }
            _ => diagnostics.push(
                input
                    .source
                    .diagnostic_at_value(
                        Severity::Error,
                        "rate_limits",
                        format!(
                            "{name} is `{value}`, which is not a request count for window `{}`",
                            window.name
                        ),
                    )
                    .hint("a whole number of requests above 0, e.g. 190"),
            ),
        }
    }
    LimitsInForce {
        windows,
        tier,
        tier_from,
        overridden,
    }
}

/// The tier named by `<NAME>_TIER`, else `default_tier` (whose counts are
/// the windows' own `requests`).
fn chosen_tier(
    input: &TierInput<'_>,
    env: &dyn Env,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Option<String>, Option<String>) {
    let variable = tier_env(input.connector);
    let default = input.default_tier.map(String::from);
    let Some(wanted) = env.var(&variable) else {
        let from = default.as_ref().map(|_| "default_tier".to_string());
        return (default, from);
    };
    let wanted = wanted.trim().to_string();
    if input.tiers.contains_key(&wanted) || default.as_deref() == Some(wanted.as_str()) {
        return (Some(wanted), Some(variable));
    }
    let message = if input.tiers.is_empty() {
        format!(
            "{variable} is `{wanted}`, but connector `{}` names no tiers",
            input.connector
        )
    } else {
        format!(
            "{variable} is `{wanted}`, which is not a tier of connector `{}`",
            input.connector
        )
    };
    diagnostics.push(
        input
            .source
            .diagnostic_at_key(Severity::Error, "tiers", message)
            .hint(tier_hint(input, &variable)),
    );
    (default, None)
}

fn tier_hint(input: &TierInput<'_>, variable: &str) -> String {
    if input.tiers.is_empty() {
        return format!("unset {variable}, or add [tiers.<name>] tables to the connector");
    }
    let mut names: Vec<&str> = input.default_tier.into_iter().collect();
    names.extend(input.tiers.keys().map(String::as_str));
    format!("tiers: {}", names.join(", "))
}

/// Every tier names existing windows with counts above 0, and `default_tier`
/// names a tier.
fn check_tiers(input: &TierInput<'_>, diagnostics: &mut Vec<Diagnostic>) {
    let source = input.source;
    let names: Vec<&str> = input.windows.iter().map(|w| w.name.as_str()).collect();
    for (tier, counts) in input.tiers {
        let tier_path = join_key("tiers", tier);
        for (window, &count) in counts {
            let path = join_key(&tier_path, window);
            if !names.contains(&window.as_str()) {
                diagnostics.push(
                    source
                        .diagnostic_at_key(
                            Severity::Error,
                            &path,
                            format!("tier `{tier}` sets window `{window}`, which is not in `rate_limits`"),
                        )
                        .hint(format!("windows: {}", names.join(", "))),
                );
            } else if count == 0 {
                diagnostics.push(
                    source
                        .diagnostic_at_value(
                            Severity::Error,
                            &path,
                            format!("tier `{tier}` allows 0 requests in window `{window}`"),
                        )
                        .hint("a count above 0; leave a window out to keep its `requests`"),
                );
            }
        }
    }
    match input.default_tier {
        Some(name) if input.tiers.contains_key(name) => diagnostics.push(
            source
                .diagnostic_at_key(
                    Severity::Error,
                    &join_key("tiers", name),
                    format!("`[tiers.{name}]` repeats the default tier, whose counts are the `requests` of `rate_limits`"),
                )
                .hint(format!(
                    "remove [tiers.{name}] and keep its counts in `rate_limits`: one place to change them"
                )),
        ),
        None if !input.tiers.is_empty() => diagnostics.push(
            source
                .diagnostic_at_key(
                    Severity::Error,
                    "tiers",
                    "a connector with `tiers` needs `default_tier`",
                )
                .hint(
                    "name the plan whose limits `rate_limits` gives, at the top of the file, e.g. default_tier = \"free\"",
                ),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_are_named_after_the_connector_and_the_window() {
        assert_eq!(tier_env("hubspot"), "HUBSPOT_TIER");
        assert_eq!(
            tier_env("salesforce-collections"),
            "SALESFORCE_COLLECTIONS_TIER"
        );
        assert_eq!(
            window_env("brevo", "contacts_per_second"),
            "BREVO_RATE_LIMIT_CONTACTS_PER_SECOND"
        );
    }
}
