//! Loading the config directory: `connectors/*.toml` and `mappings/*.toml`.
//!
//! Each file goes through three gates, and every problem of every gate is kept:
//! 1. TOML syntax (with the parser's own position);
//! 2. the JSON Schema generated from the structs below (`schemas/*.json`), so unknown
//!    keys, wrong types and bad enum values all point at their line;
//! 3. serde into the typed structs (`deny_unknown_fields`), which cannot fail once
//!    the schema passed, but is kept as a safety net.
//!
//! Cross-file and semantic checks happen in `plan`.

pub mod connector;
pub mod mapping;
pub mod schema;
pub mod toml_json;

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::diagnostic::{Diagnostic, Severity};
use crate::source_file::{SourceFile, SpanIndex};
pub use connector::ConnectorFile;
pub use mapping::MappingFile;

/// A file that passed all three gates.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// File stem: the connector's or mapping's name.
    pub name: String,
    /// Where it came from.
    pub source: SourceFile,
    /// Its typed content.
    pub raw: T,
}

/// Every file of a config dir that loaded, by name.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    /// `connectors/<name>.toml`.
    pub connectors: BTreeMap<String, Loaded<ConnectorFile>>,
    /// `mappings/<name>.toml`.
    pub mappings: BTreeMap<String, Loaded<MappingFile>>,
    /// Names of files that exist but failed to load (so a mapping naming one is not
    /// also reported as naming a missing connector).
    pub broken: Vec<String>,
}

/// Loads `dir/connectors/*.toml` and `dir/mappings/*.toml`, collecting every problem.
pub fn load_dir(dir: &Path) -> (ConfigSet, Vec<Diagnostic>) {
    let mut set = ConfigSet::default();
    let mut diagnostics = Vec::new();
    for path in toml_files(&dir.join("connectors"), "connectors", &mut diagnostics) {
        match load_file::<ConnectorFile>(dir, &path, schema::Kind::Connector) {
            Ok(loaded) => {
                set.connectors.insert(loaded.name.clone(), loaded);
            }
            Err(mut problems) => {
                set.broken.push(format!("connectors/{}", stem(&path)));
                diagnostics.append(&mut problems);
            }
        }
    }
    for path in toml_files(&dir.join("mappings"), "mappings", &mut diagnostics) {
        match load_file::<MappingFile>(dir, &path, schema::Kind::Mapping) {
            Ok(loaded) => {
                set.mappings.insert(loaded.name.clone(), loaded);
            }
            Err(mut problems) => {
                set.broken.push(format!("mappings/{}", stem(&path)));
                diagnostics.append(&mut problems);
            }
        }
    }
    (set, diagnostics)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn toml_files(
    dir: &Path,
    label: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        diagnostics.push(
            Diagnostic::at(Severity::Error, label, "", None, "", format!("directory `{label}/` not found"))
                .hint("run from the directory holding connectors/ and mappings/, or pass --config-dir DIR"),
        );
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// Reads one file through the three gates.
pub fn load_file<T: DeserializeOwned>(
    dir: &Path,
    path: &Path,
    kind: schema::Kind,
) -> Result<Loaded<T>, Vec<Diagnostic>> {
    let display = path
        .strip_prefix(dir)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/");
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![Diagnostic::at(
            Severity::Error,
            &display,
            "",
            None,
            "",
            format!("cannot read file: {err}"),
        )]
    })?;
    parse_source::<T>(&display, &stem(path), text, kind)
}

/// Parses one file's text through the three gates.
pub fn parse_source<T: DeserializeOwned>(
    display: &str,
    name: &str,
    text: String,
    kind: schema::Kind,
) -> Result<Loaded<T>, Vec<Diagnostic>> {
    let (document, errors) = toml::de::DeTable::parse_recoverable(&text);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|err| {
                Diagnostic::at(
                    Severity::Error,
                    display,
                    &text,
                    err.span(),
                    "",
                    syntax_message(err.message()),
                )
                .hint("fix the TOML syntax; see https://toml.io")
            })
            .collect());
    }
    let mut spans = SpanIndex::default();
    let json = toml_json::convert(document.get_ref(), &mut spans);
    let source = SourceFile {
        display: display.to_string(),
        text: text.clone(),
        spans,
        json,
    };
    let problems = schema::validate(kind, &source);
    if !problems.is_empty() {
        return Err(problems);
    }
    match serde_json::from_value::<T>(source.json.clone()) {
        Ok(raw) => Ok(Loaded {
            name: name.to_string(),
            source,
            raw,
        }),
        Err(err) => Err(vec![source.diagnostic_at_key(
            Severity::Error,
            "",
            err.to_string(),
        )]),
    }
}

fn syntax_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    if first.starts_with("duplicate key") {
        format!("{first}: each key may appear once in a table")
    } else {
        format!("invalid TOML: {first}")
    }
}
