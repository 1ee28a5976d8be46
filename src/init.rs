//! `engine init [DIR]` and `engine schema KIND`: start anywhere. The shipped
//! connectors and mappings are embedded in the binary; init writes them, the
//! JSON Schemas their `#:schema` lines point at, and a `.env.example` listing
//! the variables the shipped mappings need (read from the config itself).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::config::schema::{Kind, schema_text};
use crate::plan::{Plan, secret_env_names};

/// Every file under `connectors/` and `mappings/`, as shipped.
pub const FILES: &[(&str, &str)] = &[
    (
        "connectors/activecampaign.toml",
        include_str!("../connectors/activecampaign.toml"),
    ),
    (
        "connectors/attio.toml",
        include_str!("../connectors/attio.toml"),
    ),
    (
        "connectors/brevo.toml",
        include_str!("../connectors/brevo.toml"),
    ),
    (
        "connectors/hubspot.toml",
        include_str!("../connectors/hubspot.toml"),
    ),
    (
        "connectors/intercom.toml",
        include_str!("../connectors/intercom.toml"),
    ),
    (
        "connectors/mailchimp.toml",
        include_str!("../connectors/mailchimp.toml"),
    ),
    (
        "connectors/pipedrive.toml",
        include_str!("../connectors/pipedrive.toml"),
    ),
    (
        "connectors/salesforce-collections.toml",
        include_str!("../connectors/salesforce-collections.toml"),
    ),
    (
        "connectors/salesforce.toml",
        include_str!("../connectors/salesforce.toml"),
    ),
    (
        "mappings/brevo.toml",
        include_str!("../mappings/brevo.toml"),
    ),
    (
        "mappings/hubspot.toml",
        include_str!("../mappings/hubspot.toml"),
    ),
];

/// What `init` did with each file.
#[derive(Debug, Default)]
pub struct Written {
    /// Files written (paths relative to the directory).
    pub written: Vec<String>,
    /// Files that existed and were left alone.
    pub kept: Vec<String>,
}

/// Writes the shipped config, the schemas and `.env.example` into `dir`
/// (created if missing). Existing files are kept unless `force`.
pub fn init(dir: &Path, force: bool) -> anyhow::Result<Written> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut files: Vec<(String, String)> = FILES
        .iter()
        .map(|(path, text)| (path.to_string(), text.to_string()))
        .collect();
    files.push((
        "schemas/connector.schema.json".into(),
        schema_text(Kind::Connector),
    ));
    files.push((
        "schemas/mapping.schema.json".into(),
        schema_text(Kind::Mapping),
    ));
    let mut done = Written::default();
    for (path, text) in &files {
        write(dir, path, text, force, &mut done)?;
    }
    // Planned from the files just written: the variables are the config's own.
    let plan = crate::check::check_dir(dir, &BTreeMap::<String, String>::new()).plan;
    write(dir, ".env.example", &env_example(&plan), force, &mut done)?;
    Ok(done)
}

fn write(
    dir: &Path,
    path: &str,
    text: &str,
    force: bool,
    done: &mut Written,
) -> anyhow::Result<()> {
    let target = dir.join(path);
    if target.exists() && !force {
        done.kept.push(path.to_string());
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&target, text).with_context(|| format!("cannot write {}", target.display()))?;
    done.written.push(path.to_string());
    Ok(())
}

/// `.env.example`: the database, then per connector some mapping uses, its
/// secrets (to fill in) and its base-URL override (commented out).
fn env_example(plan: &Plan) -> String {
    let mut text = String::from(
        "# Copy to .env (engine reads it from the working directory) and fill in.\n\
         # Secrets stay in the environment: the config files only name them.\n\n\
         # sqlite://engine.db (the default) or postgres://user@host/db\n\
         DATABASE_URL=sqlite://engine.db\n",
    );
    for connector in crate::service::connectors_in_use(plan) {
        let Some(plan) = plan.connectors.get(&connector) else {
            continue;
        };
        let _ = writeln!(text, "\n# connectors/{connector}.toml");
        for secret in secret_env_names(&plan.auth) {
            let _ = writeln!(text, "{secret}=");
        }
        let _ = writeln!(text, "# {}={}", plan.base_url_env, plan.base_url);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_config_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk = Vec::new();
        for folder in ["connectors", "mappings"] {
            for entry in std::fs::read_dir(root.join(folder)).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if name.ends_with(".toml") {
                    on_disk.push(format!("{folder}/{name}"));
                }
            }
        }
        on_disk.sort();
        let embedded: Vec<String> = FILES.iter().map(|(path, _)| path.to_string()).collect();
        assert_eq!(embedded, on_disk, "add the new file to init::FILES");
    }
}
