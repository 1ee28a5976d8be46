//! Snapshot mode: a table, view or query the engine only reads, diffed each
//! cycle against the engine's state table; new and changed rows are sent once,
//! removed ones archived (with `on_removed = "archive"`), against the sandbox,
//! on SQLite and PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::clock::{Clock, SystemClock};
use engine::engine::{RunOptions, RunSummary};
use engine::sandbox::SandboxOptions;
use engine::store::{Backend, Store};
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{ConfigDir, Harness, SandboxHarness, check_errors, execute, quiet, replacing};

/// One test's world: a source table, a config dir holding only the shipped
/// connectors and this test's snapshot mapping (named after the table, so
/// states never mix), and a sandbox.
struct World {
    inner: SandboxHarness,
    /// Ids are uuids (PostgreSQL `uuid`, SQLite `TEXT`), which the source
    /// streams in its own order instead of sorting their text.
    uuid_ids: bool,
}

crate::wraps!(World => inner: SandboxHarness);

/// How the mapping reads the source.
#[derive(Clone, Copy)]
enum Read {
    Table,
    View,
    /// `SELECT ... WHERE active = 1`.
    Query,
    /// The table, its ids uuids.
    UuidTable,
}

impl Read {
    /// The mapping's `[source]` line over `table` (its view is `<table>_view`).
    fn source(self, table: &str) -> String {
        match self {
            Read::Table | Read::UuidTable => format!("table = \"{table}\""),
            Read::View => format!("table = \"{table}_view\""),
            Read::Query => {
                format!("query = \"SELECT id, email, name FROM {table} WHERE active = 1\"")
            }
        }
    }
}

/// Puts the snapshot mapping of `connector` over `table` in place of the
/// shipped mappings, and returns its name.
fn write_snapshot_mapping(config: &ConfigDir, table: &str, connector: &str, read: Read) -> String {
    for shipped in ["hubspot", "brevo"] {
        std::fs::remove_file(config.path().join(format!("mappings/{shipped}.toml"))).unwrap();
    }
    let name = format!("snap_{table}");
    let fields = match connector {
        "hubspot" => "email = \"{{lower email}}\"\nfirstname = \"{{first_name name}}\"",
        _ => "FIRSTNAME = \"{{first_name name}}\"",
    };
    let source = read.source(table);
    config.write(
        &format!("mappings/{name}.toml"),
        &format!(
            "connector = \"{connector}\"\non_removed = \"archive\"\n\n[source]\nmode = \"snapshot\"\n{source}\nkey = \"email\"\nid = \"id\"\n\n[schedule]\nbatch_size = 50\n\n[fields]\n{fields}\n"
        ),
    );
    name
}

impl World {
    async fn new(backend: Backend, connector: &'static str, read: Read) -> Option<World> {
        Self::with_latency(backend, connector, read, 0).await
    }

    /// As [`World::new`], with `latency_ms` added to every CRM answer.
    async fn with_latency(
        backend: Backend,
        connector: &'static str,
        read: Read,
        latency_ms: u64,
    ) -> Option<World> {
        let options = SandboxOptions {
            latency_ms,
            ..SandboxOptions::default()
        };
        let inner = SandboxHarness::around(options, |base_url| {
            let env = engine::demo::sandbox_env(&base_url);
            Harness::unmigrated(backend, ConfigDir::shipped(), env, |config, db| {
                write_snapshot_mapping(config, &db.table, connector, read)
            })
        })
        .await?;
        let world = World {
            inner,
            uuid_ids: matches!(read, Read::UuidTable),
        };
        world.create_source(read).await;
        Some(world)
    }

    /// The source table (and its view, read through one).
    async fn create_source(&self, read: Read) {
        let id_type = match (self.db.store.backend(), self.uuid_ids) {
            (Backend::Sqlite, false) => "INTEGER",
            (Backend::Postgres, false) => "BIGINT",
            (Backend::Sqlite, true) => "TEXT",
            (Backend::Postgres, true) => "UUID",
        };
        let table = &self.db.table;
        self.sql(format!(
            "CREATE TABLE {table} (id {id_type} PRIMARY KEY, email TEXT, name TEXT, active INTEGER NOT NULL DEFAULT 1)"
        ))
        .await;
        if let Read::View = read {
            self.sql(format!(
                "CREATE VIEW {table}_view AS SELECT id, email, name FROM {table}"
            ))
            .await;
        }
    }

    /// Replaces `from` by `to` in the mapping file and plans again.
    async fn edit_mapping(&mut self, from: &str, to: &str) {
        let file = format!("mappings/{}.toml", self.mapping);
        self.config.edit(&file, from, to);
        self.replan().await;
    }

    async fn insert(&self, rows: &[(i64, &str, &str)]) {
        let rows: Vec<_> = rows
            .iter()
            .map(|(id, email, name)| {
                let id = if self.uuid_ids {
                    // Not in insertion order: the id's last digits lead.
                    json!(format!("{:08x}-0000-4000-8000-{id:012}", id * 7919 % 1000))
                } else {
                    json!(id)
                };
                json!({"id": id, "email": email, "name": name})
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect();
        self.harness.insert(&rows).await;
    }

    async fn sql(&self, sql: String) {
        execute(&self.db.store, sql).await;
    }

    /// One run over `source`, the state in `state`.
    async fn run_with(
        &self,
        source: &Store,
        state: Option<Store>,
        allow_empty_source: bool,
    ) -> anyhow::Result<Arc<RunSummary>> {
        self.run_at(source, state, allow_empty_source, Arc::new(SystemClock))
            .await
    }

    async fn run_at(
        &self,
        source: &Store,
        state: Option<Store>,
        allow_empty_source: bool,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<RunSummary>> {
        let options = RunOptions {
            state_store: state,
            allow_empty_source,
            ..quiet()
        };
        self.try_run_over(source, clock, options).await
    }

    async fn run(&self) -> Arc<RunSummary> {
        self.run_with(&self.db.store, None, false)
            .await
            .expect("the run finishes")
    }

    /// The CRM's contacts as `(email, first name)`, sorted.
    fn crm(&self) -> Vec<(String, String)> {
        let mut contacts: Vec<(String, String)> = match self.connector.as_str() {
            "hubspot" => self
                .sandbox
                .hubspot_contacts()
                .iter()
                .map(|c| {
                    let p = &c["properties"];
                    (text(&p["email"]), text(&p["firstname"]))
                })
                .collect(),
            _ => self
                .sandbox
                .brevo_contacts()
                .iter()
                .map(|c| (text(&c["email"]), text(&c["attributes"]["FIRSTNAME"])))
                .collect(),
        };
        contacts.sort();
        contacts
    }

    /// The mapping's scope in the engine's snapshot state.
    fn scope(&self) -> String {
        engine::snapshot::scope(&self.plan.mappings[&self.mapping])
    }

    /// State rows by status (a pending delete shown as `Queued (delete)`).
    async fn state_counts(&self, state: &Store) -> BTreeMap<String, i64> {
        engine::snapshot::state::counts(state, &self.scope())
            .await
            .unwrap()
            .into_iter()
            .map(|(status, action, n)| match action.as_str() {
                "delete" if status != "Deleted" => (format!("{status} (delete)"), n),
                _ => (status, n),
            })
            .collect()
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

fn synced(summary: &RunSummary) -> u64 {
    summary.complete.load(std::sync::atomic::Ordering::Relaxed)
}

fn deleted(summary: &RunSummary) -> u64 {
    summary.deleted.load(std::sync::atomic::Ordering::Relaxed)
}

async fn a_snapshot_over_a_table_sends_each_row_once_and_nothing_when_nothing_changed(
    backend: Backend,
) {
    let Some(w) = World::new(backend, "hubspot", Read::Table).await else {
        return;
    };
    w.insert(&[
        (1, "a@x.io", "Ann A"),
        (2, "b@x.io", "Bob B"),
        (3, "c@x.io", "Cy C"),
    ])
    .await;
    let first = w.run().await;
    assert_eq!(synced(&first), 3);
    assert_eq!(
        w.crm(),
        [("a@x.io", "Ann"), ("b@x.io", "Bob"), ("c@x.io", "Cy")]
            .map(|(e, n)| (e.to_string(), n.to_string()))
    );
    let before = w.all_requests();
    let second = w.run().await;
    assert_eq!(synced(&second), 0);
    assert_eq!(
        w.all_requests(),
        before,
        "an unchanged source sends no request"
    );
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", 3)])
    );
}

async fn a_snapshot_over_a_view_sends_a_changed_row_once(backend: Backend) {
    let Some(w) = World::new(backend, "brevo", Read::View).await else {
        return;
    };
    w.insert(&[(1, "a@x.io", "Ann A"), (2, "b@x.io", "Bob B")])
        .await;
    w.run().await;
    w.sql(format!(
        "UPDATE {} SET name = 'Bea B' WHERE id = 2",
        w.db.table
    ))
    .await;
    // A column the mapping does not read changes nothing.
    w.sql(format!("UPDATE {} SET active = 0 WHERE id = 1", w.db.table))
        .await;
    let before = w.requests("POST /v3/contacts");
    let summary = w.run().await;
    assert_eq!(synced(&summary), 1);
    assert_eq!(w.requests("POST /v3/contacts"), before + 1);
    assert_eq!(
        w.crm(),
        [("a@x.io", "Ann"), ("b@x.io", "Bea")].map(|(e, n)| (e.to_string(), n.to_string()))
    );
    let requests = w.all_requests();
    w.run().await;
    assert_eq!(w.all_requests(), requests, "the change was sent once");
}

async fn a_snapshot_over_a_query_archives_a_row_that_left_it_once(backend: Backend) {
    let Some(w) = World::new(backend, "hubspot", Read::Query).await else {
        return;
    };
    w.insert(&[(1, "a@x.io", "Ann A"), (2, "b@x.io", "Bob B")])
        .await;
    w.run().await;
    assert_eq!(w.crm().len(), 2);
    w.sql(format!("UPDATE {} SET active = 0 WHERE id = 2", w.db.table))
        .await;
    let summary = w.run().await;
    assert_eq!(deleted(&summary), 1);
    assert_eq!(w.requests("POST /crm/v3/objects/contacts/batch/archive"), 1);
    assert_eq!(w.crm(), [("a@x.io".to_string(), "Ann".to_string())]);
    let again = w.run().await;
    assert_eq!(deleted(&again), 0);
    assert_eq!(
        w.requests("POST /crm/v3/objects/contacts/batch/archive"),
        1,
        "a second cycle does not delete again"
    );
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", 1), ("Deleted", 1)])
    );
    // Back in the source: sent again.
    w.sql(format!("UPDATE {} SET active = 1 WHERE id = 2", w.db.table))
        .await;
    w.run().await;
    assert_eq!(w.crm().len(), 2);
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", 2)])
    );
}

async fn only_records_this_mapping_synced_are_deleted(backend: Backend) {
    let Some(w) = World::new(backend, "brevo", Read::Table).await else {
        return;
    };
    w.insert(&[(1, "a@x.io", "Ann A"), (2, "b@x.io", "Bob B")])
        .await;
    w.run().await;
    // A contact someone else made in the CRM, and a row that never synced:
    // added and removed before any cycle saw it.
    let client = reqwest::Client::new();
    let made = client
        .post(format!("{}/v3/contacts", w.sandbox.base_url()))
        .header("api-key", "demo-key")
        .json(&json!({"email": "other@x.io"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status().as_u16(), 201);
    w.sql(format!("DELETE FROM {}", w.db.table)).await;
    w.insert(&[(1, "a@x.io", "Ann A")]).await;
    let summary = w.run().await;
    assert_eq!(deleted(&summary), 1);
    assert_eq!(
        w.crm(),
        [("a@x.io", "Ann"), ("other@x.io", "")].map(|(e, n)| (e.to_string(), n.to_string()))
    );
    assert_eq!(w.requests("DELETE /v3/contacts/{identifier}"), 1);
}

async fn a_delete_answered_404_counts_as_done(backend: Backend) {
    let Some(w) = World::new(backend, "brevo", Read::Table).await else {
        return;
    };
    w.insert(&[(1, "a@x.io", "Ann A"), (2, "b@x.io", "Bob B")])
        .await;
    w.run().await;
    // Someone deleted b@x.io in the CRM already.
    let gone = reqwest::Client::new()
        .delete(format!("{}/v3/contacts/b%40x.io", w.sandbox.base_url()))
        .header("api-key", "demo-key")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 204);
    w.sql(format!("DELETE FROM {} WHERE id = 2", w.db.table))
        .await;
    let summary = w.run().await;
    assert_eq!(deleted(&summary), 1);
    assert_eq!(summary.failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", 1), ("Deleted", 1)])
    );
}

async fn an_empty_source_deletes_nothing_unless_the_run_allows_it(backend: Backend) {
    let Some(w) = World::new(backend, "hubspot", Read::Table).await else {
        return;
    };
    w.insert(&[(1, "a@x.io", "Ann A"), (2, "b@x.io", "Bob B")])
        .await;
    w.run().await;
    w.sql(format!("DELETE FROM {}", w.db.table)).await;
    let refused = w
        .run_with(&w.db.store, None, false)
        .await
        .expect_err("the guard stops the cycle");
    let message = format!("{refused:#}");
    assert!(message.contains("returned no rows"), "{message}");
    assert!(message.contains("--allow-empty-source"), "{message}");
    assert_eq!(w.crm().len(), 2, "nothing was deleted");
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", 2)])
    );
    let allowed = w.run_with(&w.db.store, None, true).await.unwrap();
    assert_eq!(deleted(&allowed), 2);
    assert!(w.crm().is_empty());
}

async fn a_read_only_source_works_with_the_state_elsewhere(backend: Backend) {
    let Some(w) = World::new(backend, "hubspot", Read::Table).await else {
        return;
    };
    w.insert(&[(1, "a@x.io", "Ann A"), (2, "b@x.io", "Bob B")])
        .await;
    let (source, state, role) = match backend {
        Backend::Sqlite => {
            let path = w.db.url.trim_start_matches("sqlite://").to_string();
            let source = Store::connect(&format!("sqlite://{path}?mode=ro"))
                .await
                .unwrap();
            let state_path = std::path::Path::new(&path).with_file_name("state.db");
            let state = Store::connect(&format!("sqlite://{}", state_path.display()))
                .await
                .unwrap();
            (source, state, None)
        }
        Backend::Postgres => {
            let role = format!("ro_{}", w.db.table);
            w.sql(format!("CREATE ROLE {role} LOGIN")).await;
            w.sql(format!("GRANT SELECT ON {} TO {role}", w.db.table))
                .await;
            let url = crate::support::pg_url().replacen("postgres@", &format!("{role}@"), 1);
            let source = Store::connect(&url).await.unwrap();
            // The state lives with another role, in another schema.
            let schema = format!("state_{}", w.db.table);
            w.sql(format!("CREATE SCHEMA {schema}")).await;
            let state_url = format!(
                "{}{}options=-csearch_path%3D{schema}",
                crate::support::pg_url(),
                if crate::support::pg_url().contains('?') {
                    "&"
                } else {
                    "?"
                }
            );
            let state = Store::connect(&state_url).await.unwrap();
            (source, state, Some((role, schema)))
        }
    };
    // The source really is read-only.
    let write = match &source {
        Store::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET name = 'x'",
            w.db.table
        )))
        .execute(pool)
        .await
        .map(|_| ()),
        Store::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET name = 'x'",
            w.db.table
        )))
        .execute(pool)
        .await
        .map(|_| ()),
    };
    assert!(write.is_err(), "the source must refuse writes");
    let first = w
        .run_with(&source, Some(state.clone()), false)
        .await
        .unwrap();
    assert_eq!(synced(&first), 2);
    w.sql(format!("DELETE FROM {} WHERE id = 2", w.db.table))
        .await;
    let second = w
        .run_with(&source, Some(state.clone()), false)
        .await
        .unwrap();
    assert_eq!(deleted(&second), 1);
    assert_eq!(
        w.state_counts(&state).await,
        counts(&[("Complete", 1), ("Deleted", 1)])
    );
    assert!(
        w.db.store
            .columns("engine_snapshot_state")
            .await
            .unwrap()
            .is_none()
            || backend == Backend::Postgres,
        "SQLite: nothing was created beside the source"
    );
    source.close().await;
    state.close().await;
    if let Some((role, schema)) = role {
        w.sql(format!("DROP SCHEMA {schema} CASCADE")).await;
        w.sql(format!("DROP OWNED BY {role}")).await;
        w.sql(format!("DROP ROLE {role}")).await;
    }
}

on_both_backends!(
    a_snapshot_over_a_table_sends_each_row_once_and_nothing_when_nothing_changed,
    a_snapshot_over_a_view_sends_a_changed_row_once,
    a_snapshot_over_a_query_archives_a_row_that_left_it_once,
    only_records_this_mapping_synced_are_deleted,
    a_delete_answered_404_counts_as_done,
    an_empty_source_deletes_nothing_unless_the_run_allows_it,
    a_read_only_source_works_with_the_state_elsewhere,
    run_all_syncs_a_snapshot_mapping_once_and_sends_nothing_the_second_time,
    a_snapshot_in_update_only_mode_updates_known_records_and_creates_none,
    a_snapshot_in_create_only_mode_creates_new_records_and_leaves_known_ones,
);

/// The errors `engine check` gives for one mapping file.
fn errors_of_mapping(mapping: &str) -> Vec<String> {
    let config = ConfigDir::shipped();
    config.write("mappings/brevo.toml", mapping);
    // A copy of Brevo without a [delete] operation.
    let brevo = std::fs::read_to_string(config.path().join("connectors/brevo.toml")).unwrap();
    let cut = brevo.find("[delete]").expect("brevo declares [delete]");
    config.write("connectors/nodelete.toml", &brevo[..cut]);
    check_errors(&config, &engine::demo::sandbox_env("http://127.0.0.1:1"))
}

#[test]
fn check_refuses_snapshot_settings_that_cannot_work() {
    let fields = "\n[fields]\nFIRSTNAME = \"{{name}}\"\n";
    let cases = [
        (
            "connector = \"brevo\"\n[source]\nmode = \"snapshot\"\ntable = \"t\"\nquery = \"SELECT 1\"\n",
            "`source.table` and `source.query` are both set",
        ),
        (
            "connector = \"brevo\"\n[source]\nmode = \"snapshot\"\n",
            "needs `source.table` or `source.query`",
        ),
        (
            "connector = \"brevo\"\n[source]\ntable = \"t\"\nquery = \"SELECT 1\"\n",
            "`source.query` needs `mode = \"snapshot\"`",
        ),
        (
            "connector = \"nodelete\"\non_removed = \"archive\"\n[source]\ntable = \"t\"\n",
            "needs a `[delete]` operation in connectors/nodelete.toml",
        ),
        (
            "connector = \"brevo\"\n[source]\nmode = \"snapshot\"\nquery = \"DELETE FROM t\"\n",
            "must be one SELECT statement",
        ),
        (
            "connector = \"brevo\"\n[source]\nmode = \"snapshot\"\ntable = \"t\"\n[state]\ncrm_id = \"x\"\n",
            "has no `[state]` columns",
        ),
        (
            "connector = \"nodelete\"\non_removed = \"archive\"\n[source]\nmode = \"snapshot\"\ntable = \"t\"\n",
            "needs a `[delete]` operation in connectors/nodelete.toml",
        ),
        (
            "connector = \"brevo\"\nqueue_on_change = true\n[source]\nmode = \"snapshot\"\ntable = \"t\"\n",
            "`queue_on_change` needs queue mode",
        ),
    ];
    for (mapping, expected) in cases {
        let errors = errors_of_mapping(&format!("{mapping}{fields}"));
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{mapping}: expected {expected:?} in {errors:?}"
        );
    }
    let errors = errors_of_mapping(&format!(
        "connector = \"brevo\"\n[source]\nmode = \"snapshot\"\ntable = \"t\"\nstate_database_env = \"sqlite://state.db\"\n{fields}"
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("is not an environment variable name")),
        "{errors:?}"
    );
    let good = "connector = \"brevo\"\non_removed = \"archive\"\n[source]\nmode = \"snapshot\"\nquery = \"SELECT id, email, name FROM t;\"\n";
    assert_eq!(
        errors_of_mapping(&format!("{good}{fields}")),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_snapshot_counts_its_state_deleted_included() {
    let w = World::new(Backend::Sqlite, "brevo", Read::Table)
        .await
        .expect("SQLite is always there");
    w.insert(&[
        (1, "a@x.io", "Ann A"),
        (2, "b@x.io", "Bob B"),
        (3, "c@x.io", "Cy C"),
    ])
    .await;
    w.run().await;
    w.sql(format!("DELETE FROM {} WHERE id = 3", w.db.table))
        .await;
    w.sql(format!(
        "UPDATE {} SET email = 'not an email' WHERE id = 2",
        w.db.table
    ))
    .await;
    w.run().await;
    let mut env = w.env_pairs();
    env.push(("DATABASE_URL", &w.db.url));
    let status = crate::support::run_engine(w.config.path(), &["status"], &env);
    replacing(&[(&w.db.table, "[TABLE]")])
        .bind(|| insta::assert_snapshot!("snapshot_status", status));
}

/// Queue mode: a row set to `Delete` has its record deleted once, and a
/// record already gone (404) counts as deleted too.
async fn a_queue_row_set_to_delete_has_its_record_deleted_once(backend: Backend) {
    use crate::e2e::{
        Fixture, brevo_deletes_records, generated_rows, ids_of, sandbox_options, text,
    };
    let Some(f) = Fixture::new(backend, sandbox_options(0), brevo_deletes_records).await else {
        return;
    };
    let rows = generated_rows(3);
    let ids = ids_of(&rows);
    f.insert(&rows).await;
    f.run_now("brevo").await;
    assert_eq!(f.sandbox.brevo_contacts().len(), 3);
    // Row 3's contact is already gone from the CRM: a 404, done all the same.
    let crm_id = text(&f.row(&ids[2]).await, &f.spec("brevo").crm_id);
    let gone = reqwest::Client::new()
        .delete(format!("{}/v3/contacts/{crm_id}", f.sandbox.base_url()))
        .header("api-key", "demo-key")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 204);
    for id in &ids[1..] {
        f.ask_to_delete("brevo", id).await;
    }
    let summary = f.run_now("brevo").await;
    assert_eq!(deleted(&summary), 2);
    assert_eq!(f.requests("DELETE /v3/contacts/{identifier}"), 3);
    let emails: Vec<String> = f
        .sandbox
        .brevo_contacts()
        .iter()
        .map(|c| text(c.as_object().unwrap(), "email"))
        .collect();
    assert_eq!(emails, [text(&rows[0], "email")]);
    assert_eq!(
        f.counts("brevo").await,
        counts(&[("Complete", 1), ("Deleted", 2)])
    );
    assert_eq!(
        text(&f.row(&ids[1]).await, &f.spec("brevo").sync_status),
        "Deleted"
    );
    f.run_now("brevo").await;
    assert_eq!(
        f.requests("DELETE /v3/contacts/{identifier}"),
        3,
        "a second run deletes nothing again"
    );
}

on_both_backends!(a_queue_row_set_to_delete_has_its_record_deleted_once);

/// A run that dies mid-request leaves its rows `Processing` with no
/// fingerprint stored; after the lease the next run sends them again (one CRM
/// record each), and rows edited meanwhile end with their new values.
async fn a_crashed_run_resends_its_rows_and_loses_no_update(backend: Backend) {
    let Some(w) = World::with_latency(backend, "hubspot", Read::Table, 300).await else {
        return;
    };
    let rows: Vec<(i64, String)> = (1..=30).map(|i| (i, format!("r{i}@x.io"))).collect();
    let named: Vec<(i64, &str, &str)> = rows
        .iter()
        .map(|(i, e)| (*i, e.as_str(), "Old Name"))
        .collect();
    w.insert(&named).await;
    // Dropping the run mid-request is a crash: nothing after the send runs.
    let in_flight = async {
        let started = std::time::Instant::now();
        while w.sandbox.stats()["in_flight"].as_u64().unwrap_or(0) == 0 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "no request was sent"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = w.run_with(&w.db.store, None, false) => panic!("the run ended before the crash"),
        () = in_flight => {}
    }
    let processing = w
        .state_counts(&w.db.store)
        .await
        .get("Processing")
        .copied()
        .unwrap_or(0);
    assert!(processing > 0, "the crash left rows Processing");
    let scope = w.scope();
    let confirmed = scalar(
        &w.db.store,
        format!(
            "SELECT count(*) FROM engine_snapshot_state WHERE mapping = '{scope}' \
             AND status = 'Processing' AND fingerprint IS NOT NULL"
        ),
    )
    .await;
    assert_eq!(confirmed, 0, "no fingerprint before the CRM confirmed");
    w.sql(format!("UPDATE {} SET name = 'New Name'", w.db.table))
        .await;
    let clock = engine::clock::ManualClock::new(chrono::Utc::now());
    clock.advance(std::time::Duration::from_secs(700));
    let clock: Arc<dyn engine::clock::Clock> = Arc::new(clock);
    // The first run after the lease resends the crashed batch as it was read;
    // the next one finds those rows changed since.
    w.run_at(&w.db.store, None, false, clock.clone())
        .await
        .unwrap();
    w.run_at(&w.db.store, None, false, clock.clone())
        .await
        .unwrap();
    let crm = w.crm();
    assert_eq!(crm.len(), rows.len(), "one record per row");
    assert!(crm.iter().all(|(_, name)| name == "New"), "{crm:?}");
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", rows.len() as i64)])
    );
}

async fn scalar(store: &Store, sql: String) -> i64 {
    match store {
        Store::Sqlite(pool) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
        }
        Store::Postgres(pool) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await
        }
    }
    .unwrap()
}

on_both_backends!(a_crashed_run_resends_its_rows_and_loses_no_update);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_a_database_names_what_a_snapshot_source_lacks() {
    let w = World::new(Backend::Sqlite, "brevo", Read::Query)
        .await
        .expect("SQLite is always there");
    let file = format!("mappings/{}.toml", w.mapping);
    let env = w.env_pairs();
    let check = |env: &[(&str, &str)]| {
        crate::support::run_engine(w.config.path(), &["check", "--database", &w.db.url], env)
    };
    assert!(check(&env).starts_with("exit code: 0"), "{}", check(&env));
    w.config
        .edit(&file, "{{first_name name}}", "{{first_name nmae}}");
    let out = check(&env);
    assert!(out.starts_with("exit code: 2"), "{out}");
    assert!(
        out.contains("`nmae` is not a column of the snapshot source"),
        "{out}"
    );
    w.config
        .edit(&file, "{{first_name nmae}}", "{{first_name name}}");
    w.config
        .edit(&file, &format!("FROM {}", w.db.table), "FROM no_such_table");
    let out = check(&env);
    assert!(out.starts_with("exit code: 2"), "{out}");
    assert!(out.contains("cannot run `source.query`"), "{out}");
    assert!(out.contains("no_such_table"), "{out}");
    // `migrate --print` shows the state table a snapshot needs, and touches nothing.
    let out = crate::support::run_engine(
        w.config.path(),
        &[
            "migrate",
            "--mapping",
            &w.mapping,
            "--print",
            "--database",
            &w.db.url,
        ],
        &env,
    );
    assert!(
        out.contains("CREATE TABLE IF NOT EXISTS engine_snapshot_state"),
        "{out}"
    );
    assert!(
        w.db.store
            .columns("engine_snapshot_state")
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_snapshot_over_uuid_ids_streams_them_in_order(backend: Backend) {
    let Some(w) = World::new(backend, "hubspot", Read::UuidTable).await else {
        return;
    };
    let emails: Vec<String> = (1..=40).map(|i| format!("u{i}@x.io")).collect();
    let rows: Vec<(i64, &str, &str)> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| (i as i64 + 1, e.as_str(), "Uma U"))
        .collect();
    w.insert(&rows).await;
    let first = w.run().await;
    assert_eq!(synced(&first), 40);
    w.sql(format!(
        "DELETE FROM {} WHERE email IN ('u3@x.io', 'u17@x.io')",
        w.db.table
    ))
    .await;
    w.sql(format!(
        "UPDATE {} SET name = 'Ulf U' WHERE email = 'u5@x.io'",
        w.db.table
    ))
    .await;
    let summary = w.run().await;
    assert_eq!(synced(&summary), 1);
    assert_eq!(deleted(&summary), 2);
    assert_eq!(w.crm().len(), 38);
    let before = w.all_requests();
    w.run().await;
    assert_eq!(w.all_requests(), before);
}

on_both_backends!(a_snapshot_over_uuid_ids_streams_them_in_order);

/// `source.state_database_env` puts the state in another database (here a
/// SQLite file, whatever the source's backend).
async fn a_mapping_can_name_its_state_database_by_environment_variable(backend: Backend) {
    let Some(mut w) = World::new(backend, "hubspot", Read::Table).await else {
        return;
    };
    w.edit_mapping(
        "id = \"id\"",
        "id = \"id\"\nstate_database_env = \"SNAP_STATE_URL\"",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    w.env.insert("SNAP_STATE_URL".into(), url.clone());
    w.insert(&[(1, "a@x.io", "Ann A"), (2, "b@x.io", "Bob B")])
        .await;
    let first = w.run().await;
    assert_eq!(synced(&first), 2);
    let state = Store::connect(&url).await.unwrap();
    assert_eq!(w.state_counts(&state).await, counts(&[("Complete", 2)]));
    if w.db
        .store
        .columns("engine_snapshot_state")
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            w.state_counts(&w.db.store).await.is_empty(),
            "nothing in the source database"
        );
    }
    w.env.remove("SNAP_STATE_URL");
    let err = w
        .run_with(&w.db.store, None, false)
        .await
        .expect_err("the variable is unset");
    assert!(
        format!("{err:#}").contains("SNAP_STATE_URL, which is not set"),
        "{err:#}"
    );
    state.close().await;
}

on_both_backends!(a_mapping_can_name_its_state_database_by_environment_variable);

/// Two runs of one snapshot mapping at once (`max_instances = 2`) send each
/// row once between them: they diff at the same time, and the state's claims
/// and its re-checked writes keep them from sending a row twice.
async fn two_runs_at_once_send_each_row_once(backend: Backend) {
    let Some(mut w) = World::with_latency(backend, "brevo", Read::Table, 20).await else {
        return;
    };
    w.edit_mapping("batch_size = 50", "batch_size = 10\nmax_instances = 2")
        .await;
    let emails: Vec<String> = (1..=120).map(|i| format!("p{i}@x.io")).collect();
    let rows: Vec<(i64, &str, &str)> = emails
        .iter()
        .enumerate()
        .map(|(i, e)| (i as i64 + 1, e.as_str(), "Pat P"))
        .collect();
    w.insert(&rows).await;
    let (a, b) = tokio::join!(w.run_with(&w.db.store, None, false), async {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        w.run_with(&w.db.store, None, false).await
    });
    let sent = synced(&a.unwrap()) + synced(&b.unwrap());
    assert_eq!(sent, 120);
    assert_eq!(w.requests("POST /v3/contacts"), 120, "each row sent once");
    assert_eq!(w.crm().len(), 120);
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", 120)])
    );
    let before = w.all_requests();
    let (a, b) = tokio::join!(
        w.run_with(&w.db.store, None, false),
        w.run_with(&w.db.store, None, false)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(
        w.all_requests(),
        before,
        "nothing changed: no request from either run"
    );
}

on_both_backends!(two_runs_at_once_send_each_row_once);

/// New rows between known ones, across several pages of the state (1,000
/// rows each), are all found new, and no known row looks removed.
async fn new_rows_between_known_ones_across_state_pages_are_found(backend: Backend) {
    let Some(mut w) = World::new(backend, "hubspot", Read::Table).await else {
        return;
    };
    w.edit_mapping("batch_size = 50", "batch_size = 500").await;
    let emails: Vec<String> = (1..=5000).map(|i| format!("m{i}@x.io")).collect();
    let rows = |parity: i64| -> Vec<(i64, &str, &str)> {
        emails
            .iter()
            .enumerate()
            .map(|(i, e)| (i as i64 + 1, e.as_str(), "Max M"))
            .filter(|(id, _, _)| id % 2 == parity)
            .collect()
    };
    w.insert(&rows(0)).await;
    let first = w.run().await;
    assert_eq!(synced(&first), 2500);
    w.insert(&rows(1)).await;
    let second = w.run().await;
    assert_eq!(synced(&second), 2500);
    assert_eq!(deleted(&second), 0);
    assert_eq!(w.crm().len(), 5000);
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", 5000)])
    );
    let before = w.all_requests();
    w.run().await;
    assert_eq!(w.all_requests(), before);
}

on_both_backends!(new_rows_between_known_ones_across_state_pages_are_found);

fn skipped(summary: &RunSummary) -> u64 {
    summary.skipped.load(std::sync::atomic::Ordering::Relaxed)
}

impl World {
    /// Puts `mode = "<mode>"` in the mapping.
    async fn set_mode(&mut self, mode: &str) {
        let archive = "on_removed = \"archive\"\n";
        self.edit_mapping(archive, &format!("{archive}mode = \"{mode}\"\n"))
            .await;
    }

    /// Every connector with a mapping, in one process (`engine run --all`).
    async fn run_all(&self) -> Vec<engine::service::ConnectorRun> {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        engine::service::run_all(
            self.plan.clone(),
            self.db.store.clone(),
            &self.env,
            Arc::new(SystemClock),
            quiet(),
            shutdown,
        )
        .await
    }
}

async fn run_all_syncs_a_snapshot_mapping_once_and_sends_nothing_the_second_time(backend: Backend) {
    let Some(w) = World::new(backend, "hubspot", Read::Table).await else {
        return;
    };
    w.insert(&[(1, "a@x.io", "Ann A"), (2, "b@x.io", "Bob B")])
        .await;
    let runs = w.run_all().await;
    assert_eq!(runs.len(), 1, "only the snapshot's connector runs");
    assert_eq!(runs[0].connector, "hubspot");
    let summary = runs[0].result.as_ref().expect("the run finishes");
    assert_eq!(synced(summary), 2);
    assert_eq!(w.crm().len(), 2);
    let before = w.all_requests();
    let again = w.run_all().await;
    assert_eq!(synced(again[0].result.as_ref().unwrap()), 0);
    assert_eq!(
        w.all_requests(),
        before,
        "an unchanged source sends no request"
    );
    assert_eq!(
        w.state_counts(&w.db.store).await,
        counts(&[("Complete", 2)])
    );
}

/// A snapshot that synced `a@x.io`, then turned to `mode`; `a@x.io` was
/// renamed and `b@x.io` added, and the next run sent one and skipped the
/// other.
async fn after_turning_to_mode(backend: Backend, mode: &str) -> Option<World> {
    let mut w = World::new(backend, "hubspot", Read::Table).await?;
    w.insert(&[(1, "a@x.io", "Ann A")]).await;
    w.run().await;
    w.set_mode(mode).await;
    w.sql(format!(
        "UPDATE {} SET name = 'Anna A' WHERE id = 1",
        w.db.table
    ))
    .await;
    w.insert(&[(2, "b@x.io", "Bob B")]).await;
    let summary = w.run().await;
    assert_eq!((synced(&summary), skipped(&summary)), (1, 1), "{mode}");
    Some(w)
}

async fn a_snapshot_in_update_only_mode_updates_known_records_and_creates_none(backend: Backend) {
    let Some(w) = after_turning_to_mode(backend, "update_only").await else {
        return;
    };
    assert_eq!(
        w.crm(),
        [("a@x.io".to_string(), "Anna".to_string())],
        "a@x.io updated, b@x.io not created"
    );
}

async fn a_snapshot_in_create_only_mode_creates_new_records_and_leaves_known_ones(
    backend: Backend,
) {
    let Some(w) = after_turning_to_mode(backend, "create_only").await else {
        return;
    };
    assert_eq!(
        w.crm(),
        [("a@x.io", "Ann"), ("b@x.io", "Bob")].map(|(e, n)| (e.to_string(), n.to_string())),
        "b@x.io created, a@x.io left as it was"
    );
}
