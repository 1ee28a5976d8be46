//! The `engine` command line as an operator meets it: status, retry and migrate
//! on a fresh database, exit codes of `run`, and logs that are JSON when asked
//! and never carry a secret.

use std::time::Duration;

use engine::sandbox::SandboxOptions;
use engine::store::Backend;
use serde_json::{Map, Value, json};

use super::{Fixture, generated_rows, ids_of, sandbox_options, text};
use crate::on_both_backends;
use crate::support::{ConfigDir, replacing, run_engine};

// On a fresh SQLite database (the default `sqlite://engine.db` in the working
// directory), before anything was migrated.

#[test]
fn status_where_no_database_exists_says_so_and_creates_none() {
    let config = ConfigDir::shipped();
    assert_snapshot!(
        "status_on_a_fresh_database",
        run_engine(config.path(), &["status", "--connector", "hubspot"], &[])
    );
    assert!(!config.path().join("engine.db").exists());
}

#[test]
fn retry_on_a_fresh_database_says_to_migrate() {
    let config = ConfigDir::shipped();
    assert_snapshot!(
        "retry_on_a_fresh_database",
        run_engine(config.path(), &["retry", "--connector", "hubspot"], &[])
    );
}

#[test]
fn run_on_a_fresh_database_says_to_migrate() {
    let config = ConfigDir::shipped();
    let env = [("HUBSPOT_ACCESS_TOKEN", "x")];
    assert_snapshot!(
        "run_on_a_fresh_database",
        run_engine(config.path(), &["run", "--connector", "hubspot"], &env)
    );
}

#[test]
fn migrate_print_on_a_fresh_database_shows_the_seed_table_and_changes_nothing() {
    let config = ConfigDir::shipped();
    assert_snapshot!(
        "migrate_print_on_a_fresh_database",
        run_engine(
            config.path(),
            &["migrate", "--mapping", "hubspot", "--print"],
            &[]
        )
    );
    // Printing ran nothing: the table is still missing.
    let status = run_engine(config.path(), &["status", "--connector", "hubspot"], &[]);
    assert!(status.starts_with("exit code: 2"), "{status}");
}

#[test]
fn status_and_retry_after_migrate_show_an_empty_table() {
    let config = ConfigDir::shipped();
    let migrated = run_engine(config.path(), &["migrate", "--mapping", "hubspot"], &[]);
    assert!(migrated.starts_with("exit code: 0"), "{migrated}");
    let status = run_engine(config.path(), &["status", "--connector", "hubspot"], &[]);
    let retry = run_engine(config.path(), &["retry", "--connector", "hubspot"], &[]);
    assert_snapshot!(
        "status_and_retry_on_an_empty_table",
        format!("{status}\n{retry}")
    );
}

#[test]
fn text_logs_written_to_a_file_carry_no_terminal_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().display().to_string();
    let transcript = run_engine(dir.path(), &["demo"], &[("TMPDIR", &tmp)]);
    assert!(
        transcript.contains(" INFO Synced a batch. mapping=hubspot"),
        "{transcript}"
    );
    assert!(!transcript.contains('\x1b'), "{transcript}");
}

on_both_backends!(
    run_exits_0_when_every_row_syncs_and_1_when_a_bad_row_is_isolated_in_error,
    run_exits_1_when_the_crm_rejects_a_delete_and_the_row_ends_in_error_with_the_reason,
    json_logs_parse_and_never_carry_the_token_even_at_trace,
    a_key_sent_in_the_query_string_never_shows_in_logs_errors_or_status,
);

fn row(id: &str, email: &str) -> Map<String, Value> {
    let row = json!({"id": id, "email": email, "name": "Bad Address", "hubspot_processing_status": "Queued", "brevo_processing_status": "Queued"});
    row.as_object().unwrap().clone()
}

const BAD_ID: &str = "00000000-0000-4000-8000-0000000000ff";

async fn run_exits_0_when_every_row_syncs_and_1_when_a_bad_row_is_isolated_in_error(
    backend: Backend,
) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    let rows = generated_rows(14);
    let (first, second) = rows.split_at(7);
    f.insert(first).await;
    let mut run = f.spawn(&["run", "--connector", "hubspot"]);
    run.assert_exits_with(0, Duration::from_secs(10)).await;
    assert_eq!(f.count("hubspot", "Complete").await, 7);

    // Eight more rows, one with an address HubSpot rejects. Batch upsert by email is
    // all or nothing, so the batch is split until the bad row is alone.
    f.insert(second).await;
    f.insert(&[row(BAD_ID, "not-an-email")]).await;
    let upserts_before = f.requests("POST /crm/v3/objects/contacts/batch/upsert");
    let mut run = f.spawn(&["run", "--connector", "hubspot"]);
    run.assert_exits_with(1, Duration::from_secs(10)).await;
    assert!(
        run.stderr()
            .contains("Batch rejected as a whole; splitting it"),
        "{}",
        run.stderr()
    );
    // 8 rows -> 4 + 4 -> 2 + 2 -> 1 + 1: one request per level and half.
    assert_eq!(
        f.requests("POST /crm/v3/objects/contacts/batch/upsert") - upserts_before,
        7
    );

    let bad = f.row(BAD_ID).await;
    assert_eq!(text(&bad, "hubspot_processing_status"), "Error");
    assert_eq!(text(&bad, "hubspot_sync_status"), "Error");
    assert!(
        text(&bad, "hubspot_processing_error").contains("Email address not-an-email is invalid"),
        "{bad:?}"
    );
    assert_eq!(
        f.counts("hubspot").await,
        [("Complete".to_string(), 14), ("Error".to_string(), 1)].into()
    );
    super::assert_each_row_synced_once(&f, "hubspot", &ids_of(&rows)).await;

    // What an operator sees next.
    let location = f.location();
    let location: Vec<&str> = location.iter().map(String::as_str).collect();
    let status = run_engine(
        f.config.path(),
        &[&["status", "--connector", "hubspot"], &location[..]].concat(),
        &[],
    );
    let retry = run_engine(
        f.config.path(),
        &[&["retry", "--connector", "hubspot"], &location[..]].concat(),
        &[],
    );
    let mut settings = replacing(&[(&f.db.table, "[TABLE]")]);
    settings.add_filter(
        r"last tried \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
        "last tried [TIME]",
    );
    settings.add_filter(r"\(ended [^)]+\)", "(ended [TIME])");
    settings.bind(|| {
        assert_snapshot!(
            "status_and_retry_after_a_row_failed",
            format!("{status}\n{retry}")
        );
    });
    assert_eq!(
        text(&f.row(BAD_ID).await, "hubspot_processing_status"),
        "Queued"
    );
}

/// A delete the CRM refuses for good fails its row as an upsert would: the
/// row ends in `Error` with the CRM's reason, and the run exits 1 although
/// the other delete went through.
async fn run_exits_1_when_the_crm_rejects_a_delete_and_the_row_ends_in_error_with_the_reason(
    backend: Backend,
) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), super::brevo_deletes_records).await
    else {
        return;
    };
    let rows = generated_rows(2);
    let (kept, refused) = (super::generated_id(1), super::generated_id(2));
    f.insert(&rows).await;
    f.run_now("brevo").await;
    assert_eq!(f.sandbox.brevo_contacts().len(), 2);
    // Brevo answers 400 "Invalid contact id" to an id that is not a number.
    let crm_id = &f.spec("brevo").crm_id;
    f.db.execute(format!(
        "UPDATE \"{}\" SET \"{crm_id}\" = 'not-a-contact-id' WHERE id = '{refused}'",
        f.db.table
    ))
    .await;
    for id in [&kept, &refused] {
        f.ask_to_delete("brevo", id).await;
    }

    let mut run = f.spawn(&["run", "--connector", "brevo"]);
    run.assert_exits_with(1, Duration::from_secs(10)).await;

    assert_eq!(
        text(&f.row(&kept).await, "brevo_processing_status"),
        "Deleted"
    );
    let failed = f.row(&refused).await;
    assert_eq!(
        text(&failed, "brevo_processing_status"),
        "Error",
        "{failed:?}"
    );
    assert_eq!(text(&failed, "brevo_sync_status"), "Error", "{failed:?}");
    let reason = text(&failed, "brevo_processing_error");
    assert!(reason.contains("Invalid contact id"), "{failed:?}");
    // Refused for good: sent once, not retried; its contact is still there.
    assert_eq!(f.requests("DELETE /v3/contacts/{identifier}"), 2);
    assert_eq!(f.sandbox.brevo_contacts().len(), 1);
}

const TOKEN: &str = "pat-na1-E2E-SECRET-7f3c9a1d";

async fn json_logs_parse_and_never_carry_the_token_even_at_trace(backend: Backend) {
    // The sandbox accepts this token only, so the runs below did send it.
    let sandbox = SandboxOptions {
        hubspot_token: Some(TOKEN.into()),
        ..sandbox_options(0)
    };
    let Some(mut f) = Fixture::new(backend, sandbox, |_| {}).await else {
        return;
    };
    f.env.insert("HUBSPOT_ACCESS_TOKEN".into(), TOKEN.into());
    let rows = generated_rows(4);
    f.insert(&rows).await;
    f.insert(&[row(BAD_ID, "not-an-email")]).await;

    for level in ["info", "trace"] {
        f.db.store.queue_all(f.spec("hubspot")).await.unwrap();
        let mut run = f.spawn(&[
            "--log-format",
            "json",
            "--log-level",
            level,
            "run",
            "--connector",
            "hubspot",
        ]);
        assert_eq!(
            run.exit_code(Duration::from_secs(10)).await,
            1,
            "{}",
            run.stderr()
        );
        let (stdout, stderr) = (run.stdout(), run.stderr());
        assert!(
            !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
            "the token leaked at {level}"
        );
        let (mut messages, mut synced) = (Vec::new(), 0);
        for line in stderr.lines() {
            let event: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(
                event["level"].is_string() && event["timestamp"].is_string(),
                "{line}"
            );
            let message = event["fields"]["message"].as_str().unwrap_or_default();
            if message == "Synced a batch." {
                synced += event["fields"]["complete"].as_u64().unwrap();
            }
            messages.push(message.to_string());
        }
        assert_eq!(synced, 4, "at {level}: {messages:?}");
        let per_row = messages.iter().filter(|m| *m == "Synced row.").count();
        let expected = if level == "trace" { 4 } else { 0 };
        assert_eq!(per_row, expected, "each synced row at debug, at {level}");
        assert!(
            messages.iter().any(|m| m == "Row failed permanently."),
            "at {level}: {messages:?}"
        );
    }
    assert_eq!(f.count("hubspot", "Complete").await, 4);
}

/// Connectors with `api_key_query` auth carry the key in the URL, and a
/// transport error names the URL it failed on.
async fn a_key_sent_in_the_query_string_never_shows_in_logs_errors_or_status(backend: Backend) {
    const KEY: &str = "xkeysib-E2E-SECRET-51d0c2e8";
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let Some(mut f) = Fixture::new(backend, sandbox_options(0), |config| {
        config.edit(
            "connectors/brevo.toml",
            "kind = \"api_key_header\"\nheader = \"api-key\"",
            "kind = \"api_key_query\"\nparam = \"api_key\"",
        );
        super::brevo_tries_once(config);
    })
    .await
    else {
        return;
    };
    f.env.insert(
        "BREVO_BASE_URL".into(),
        format!("http://127.0.0.1:{closed_port}/v3"),
    );
    f.env.insert("BREVO_API_KEY".into(), KEY.into());
    f.insert(&generated_rows(2)).await;

    let mut run = f.spawn(&["--log-level", "trace", "run", "--connector", "brevo"]);
    // An unreachable host is the config's fault, not the rows': the run
    // stops (exit 2) naming the URL, and hands the rows back untouched.
    run.assert_exits_with(2, Duration::from_secs(10)).await;
    let stderr = run.stderr();
    assert!(stderr.contains("could not connect"), "{stderr}");
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{closed_port}/v3/contacts")),
        "{stderr}"
    );
    assert!(
        !stderr.contains(KEY) && !run.stdout().contains(KEY),
        "the key leaked into the logs:\n{stderr}"
    );

    for row in f
        .rows(&[super::generated_id(1), super::generated_id(2)])
        .await
    {
        assert_eq!(text(&row, "brevo_processing_status"), "Queued", "{row:?}");
        assert_eq!(row["brevo_processing_error"], Value::Null, "{row:?}");
        assert_eq!(row["retry_count"], 0, "{row:?}");
    }
    let location = f.location();
    let location: Vec<&str> = location.iter().map(String::as_str).collect();
    let status = run_engine(
        f.config.path(),
        &[&["status", "--connector", "brevo"], &location[..]].concat(),
        &[],
    );
    assert!(
        status.starts_with("exit code: 0") && !status.contains(KEY),
        "{status}"
    );
}
