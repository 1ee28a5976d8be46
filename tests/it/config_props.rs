//! A property test over config loading and planning: the shipped connector and
//! mapping files, mutated at random (lines dropped or repeated, values replaced
//! by absurd numbers and strange strings, text cut or spliced anywhere), never
//! panic the loader, the planner or the printing of their diagnostics.
//!
//! Bounded (a few hundred cases, in memory) so it runs in every `cargo test`.

use std::collections::BTreeMap;

use engine::config::schema::Kind;
use engine::config::{ConfigSet, ConnectorFile, MappingFile, parse_source};
use proptest::prelude::*;

/// One edit to a file's text.
#[derive(Debug, Clone)]
enum Mutation {
    DropLine(usize),
    RepeatLine(usize),
    /// Replaces the value after the `=` of a line.
    ReplaceValue(usize, String),
    /// Cuts the text at a byte offset (rounded down to a character boundary).
    Truncate(usize),
    /// Inserts text at a byte offset (rounded down to a character boundary).
    Insert(usize, String),
}

/// Values `run` could choke on, and text the parsers could.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("1e308".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"\"".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"{{\"".to_string()),
        Just("\"{{#each x}}{{/if}}\"".to_string()),
        Just("\"http://u:p@h/?hapikey=k\"".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        "\"[ -~]{0,12}\"",
        "[^\n]{0,8}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<usize>().prop_map(Mutation::DropLine),
        1 => any::<usize>().prop_map(Mutation::RepeatLine),
        3 => (any::<usize>(), hostile_value()).prop_map(|(at, v)| Mutation::ReplaceValue(at, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), "[\\[\\]{}=\"'.#\n a-z0-9]{0,10}")
            .prop_map(|(at, text)| Mutation::Insert(at, text)),
    ]
}

fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let line = |at: usize| at % lines.len().max(1);
    match mutation {
        Mutation::DropLine(at) => {
            let drop = line(*at);
            let kept: Vec<&str> = (0..lines.len())
                .filter(|i| *i != drop)
                .map(|i| lines[i])
                .collect();
            kept.join("\n")
        }
        Mutation::RepeatLine(at) => {
            let mut out = lines.clone();
            if !lines.is_empty() {
                out.insert(line(*at), lines[line(*at)]);
            }
            out.join("\n")
        }
        Mutation::ReplaceValue(at, value) => {
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|i| lines[*i].contains(" = ") && !lines[*i].trim_start().starts_with('#'))
                .collect();
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            if !assignments.is_empty() {
                let target = assignments[at % assignments.len()];
                let key = lines[target].split(" = ").next().unwrap_or_default();
                out[target] = format!("{key} = {value}");
            }
            out.join("\n")
        }
        Mutation::Truncate(at) => text[..floor_boundary(text, *at)].to_string(),
        Mutation::Insert(at, inserted) => {
            let at = floor_boundary(text, *at);
            format!("{}{inserted}{}", &text[..at], &text[at..])
        }
    }
}

fn shipped(path: &str) -> &'static str {
    engine::demo::SHIPPED
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, text)| *text)
        .expect("a shipped file")
}

/// Loads, plans and prints one connector and one mapping; panics are the failure.
fn load_plan_and_print(connector: String, mapping: String) {
    let mut set = ConfigSet::default();
    let mut diagnostics = Vec::new();
    match parse_source::<ConnectorFile>("connectors/crm.toml", "crm", connector, Kind::Connector) {
        Ok(loaded) => {
            set.connectors.insert(loaded.name.clone(), loaded);
        }
        Err(mut problems) => {
            set.broken.push("connectors/crm".into());
            diagnostics.append(&mut problems);
        }
    }
    match parse_source::<MappingFile>("mappings/crm.toml", "crm", mapping, Kind::Mapping) {
        Ok(loaded) => {
            set.mappings.insert(loaded.name.clone(), loaded);
        }
        Err(mut problems) => diagnostics.append(&mut problems),
    }
    let env = BTreeMap::from([
        ("HUBSPOT_ACCESS_TOKEN".to_string(), "t".to_string()),
        ("BREVO_API_KEY".to_string(), "k".to_string()),
    ]);
    let (_plan, mut planned) = engine::plan::build(&set, &env);
    diagnostics.append(&mut planned);
    for diagnostic in &diagnostics {
        let _ = diagnostic.to_string();
    }
    let _ = engine::diagnostic::summary(&diagnostics);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_connectors_and_mappings_never_panic_the_loader_or_planner(
        which in 0..2usize,
        connector_edits in proptest::collection::vec(mutation(), 0..4),
        mapping_edits in proptest::collection::vec(mutation(), 0..4),
    ) {
        let name = ["hubspot", "brevo"][which];
        let mut connector = shipped(&format!("connectors/{name}.toml")).to_string();
        for edit in &connector_edits {
            connector = apply(&connector, edit);
        }
        let mut mapping = shipped(&format!("mappings/{name}.toml"))
            .replace(&format!("connector = \"{name}\""), "connector = \"crm\"");
        for edit in &mapping_edits {
            mapping = apply(&mapping, edit);
        }
        load_plan_and_print(connector, mapping);
    }
}
