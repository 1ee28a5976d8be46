//! `engine demo`: the seed's scenario on the embedded defaults. SQLite plus the
//! built-in sandbox, no account and no network: create the seed's `contacts` table,
//! queue its three test contacts for both CRMs, run both shipped syncs, print the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::check::check_dir;
use crate::clock::SystemClock;
use crate::diagnostic::summary;
use crate::engine::{RunOptions, run_connector};
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::store::Store;

/// The shipped config files, embedded so the demo works from any directory.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "connectors/hubspot.toml",
        include_str!("../connectors/hubspot.toml"),
    ),
    (
        "connectors/brevo.toml",
        include_str!("../connectors/brevo.toml"),
    ),
    (
        "mappings/hubspot.toml",
        include_str!("../mappings/hubspot.toml"),
    ),
    (
        "mappings/brevo.toml",
        include_str!("../mappings/brevo.toml"),
    ),
];

/// The seed report's three test contacts (Test 2), queued for both CRMs.
pub fn seed_rows() -> Vec<Map<String, Value>> {
    let ids = [
        "4b4be366-da73-4926-83a2-2fddb9a77d95",
        "bbe6872a-f479-4d76-a943-fb6c182963d4",
        "abde1d25-7c5b-4f0c-aada-e0886dd28ab3",
    ];
    let phones = [
        Value::from("+1-555-9001"),
        Value::from("+1-555-9002"),
        Value::Null,
    ];
    ids.iter()
        .zip(phones)
        .enumerate()
        .map(|(i, (id, phone))| {
            let n = i + 1;
            let row = json!({
                "id": id,
                "email": format!("hubspot-scheduler-test-{n}@scrapersky-test.com"),
                "name": format!("Scheduler Test {n}"),
                "phone_number": phone,
                "domain_id": "1ad6264b-a0b6-4551-860a-1326b2bfa28f",
                "page_id": "ddc03eef-2550-46de-aca8-bbdb7cf525cb",
                "hubspot_sync_status": "Queued",
                "hubspot_processing_status": "Queued",
                "brevo_sync_status": "Queued",
                "brevo_processing_status": "Queued",
                "retry_count": 0,
            });
            match row {
                Value::Object(map) => map,
                _ => unreachable!("a JSON object literal"),
            }
        })
        .collect()
}

/// Writes the shipped config files into `dir`.
pub fn write_shipped_config(dir: &Path) -> anyhow::Result<()> {
    for (path, text) in SHIPPED {
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().expect("shipped paths have a folder"))?;
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

/// The demo's environment: the shipped connectors pointed at the sandbox, with
/// placeholder credentials the sandbox accepts.
pub fn sandbox_env(base_url: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("HUBSPOT_BASE_URL".to_string(), base_url.to_string()),
        ("BREVO_BASE_URL".to_string(), format!("{base_url}/v3")),
        ("HUBSPOT_ACCESS_TOKEN".to_string(), "demo-token".to_string()),
        ("BREVO_API_KEY".to_string(), "demo-key".to_string()),
    ])
}

fn demo_dir() -> PathBuf {
    std::env::temp_dir().join(format!("engine-demo-{}", std::process::id()))
}

/// Runs the demo; exit 0 when every row of both syncs is `Complete`.
pub async fn run() -> anyhow::Result<ExitCode> {
    let dir = demo_dir();
    // Start fresh: a directory left by an earlier demo with the same process id
    // (containers reuse pids) would already hold the seed rows.
    let _ = std::fs::remove_dir_all(&dir);
    write_shipped_config(&dir)?;
    let sandbox = Sandbox::start(SandboxOptions {
        port: 0,
        ..SandboxOptions::default()
    })
    .await?;
    let env = sandbox_env(&sandbox.base_url());
    let checked = check_dir(&dir, &env);
    anyhow::ensure!(
        !checked.has_errors(),
        "the shipped config has errors ({})",
        summary(&checked.diagnostics)
    );
    let plan = Arc::new(checked.plan);
    let database = format!("sqlite://{}", dir.join("demo.db").display());
    let store = Store::connect(&database).await?;
    for mapping in plan.mappings.values() {
        store.migrate(&mapping.table).await?;
    }
    store.insert_rows("contacts", &seed_rows()).await?;
    println!(
        "engine demo: SQLite at {}, sandbox at {}\n",
        dir.join("demo.db").display(),
        sandbox.base_url()
    );
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    for connector in ["hubspot", "brevo"] {
        let options = RunOptions {
            progress_every: None,
            ..RunOptions::default()
        };
        run_connector(
            plan.clone(),
            connector,
            store.clone(),
            &env,
            Arc::new(SystemClock),
            options,
            shutdown.clone(),
        )
        .await?;
    }
    let spec = &plan
        .mappings
        .get("hubspot")
        .context("the shipped hubspot mapping")?
        .table;
    let all_complete = print_rows(&store, spec).await?;
    print_sandbox(&sandbox);
    store.close().await;
    sandbox.shutdown().await;
    Ok(if all_complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn print_rows(store: &Store, spec: &crate::store::TableSpec) -> anyhow::Result<bool> {
    let mut rows = Vec::new();
    for seed in seed_rows() {
        let id = seed["id"].as_str().unwrap_or_default();
        rows.extend(store.fetch_row(spec, id).await?);
    }
    println!(
        "{:<46} {:<8} {:<10} {:<14} error",
        "contact", "crm", "status", "crm id"
    );
    let mut all_complete = true;
    for row in &rows {
        for crm in ["hubspot", "brevo"] {
            let text = |column: &str| {
                row.get(&format!("{crm}_{column}"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let status = text("processing_status");
            all_complete &= status == "Complete";
            let email = row.get("email").and_then(Value::as_str).unwrap_or("");
            println!(
                "{email:<46} {crm:<8} {status:<10} {:<14} {}",
                text("contact_id"),
                text("processing_error")
            );
        }
    }
    Ok(all_complete)
}

fn print_sandbox(sandbox: &Sandbox) {
    println!("\nthe sandbox's HubSpot now holds:");
    for contact in sandbox.hubspot_contacts() {
        let p = &contact["properties"];
        let get = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        println!(
            "  {:<14} {:<46} {} {} | phone {} | sync_date {}",
            contact["id"].as_str().unwrap_or("-"),
            get("email"),
            get("firstname"),
            get("lastname"),
            get("phone"),
            get("sync_date")
        );
    }
    println!("the sandbox's Brevo now holds:");
    for contact in sandbox.brevo_contacts() {
        println!(
            "  {:<6} {:<46} {}",
            contact["id"],
            contact["email"].as_str().unwrap_or("-"),
            contact["attributes"]
        );
    }
}
