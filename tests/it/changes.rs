//! Change detection in queue mode: fingerprints (unchanged rows are not sent),
//! change triggers, and sync modes, against the sandbox on both backends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use engine::clock::{Clock, ManualClock};
use engine::engine::RunSummary;
use engine::sandbox::{Sandbox, SandboxOptions};
use engine::store::{Backend, ClaimedRow, RowResult, RowUpdate, TableSpec};
use serde_json::{Map, Value, json};

use crate::on_both_backends;
use crate::support::{ConfigDir, Harness, SandboxHarness, TestDb, check_errors, execute};

const IDS: [&str; 3] = [
    "4b4be366-da73-4926-83a2-2fddb9a77d95",
    "bbe6872a-f479-4d76-a943-fb6c182963d4",
    "abde1d25-7c5b-4f0c-aada-e0886dd28ab3",
];

/// A mapping of `connector` over `table` with a fingerprint column; `extra`
/// goes at the top (e.g. `mode = "update_only"`).
fn mapping(connector: &str, table: &str, extra: &str) -> String {
    let fields = match connector {
        "hubspot" => {
            "email = \"{{lower (trim email)}}\"\nfirstname = \"{{first_name name}}\"\nlastname = \"{{last_name name}}\"\nsync_date = \"{{today}}\""
        }
        _ => "FIRSTNAME = \"{{first_name name}}\"\nLASTNAME = \"{{last_name name}}\"",
    };
    format!(
        "connector = \"{connector}\"\n{extra}\n\
         [source]\ntable = \"{table}\"\n\
         [state]\nfingerprint = \"{connector}_fingerprint\"\n\
         [schedule]\nbatch_size = 100\nlease_secs = 60\n\
         [fields]\n{fields}\n"
    )
}

/// The sandbox, a database, and one mapping of a shipped connector, run on a
/// manual clock.
struct Fingerprinted {
    inner: SandboxHarness,
    clock: ManualClock,
}

crate::wraps!(Fingerprinted => inner: SandboxHarness);

impl Fingerprinted {
    async fn new(backend: Backend, connector: &'static str, extra: &str) -> Option<Fingerprinted> {
        let inner = SandboxHarness::around(SandboxOptions::default(), |base_url| async move {
            let env = engine::demo::sandbox_env(&base_url);
            let write = |config: &ConfigDir, db: &TestDb| {
                config.write(
                    &format!("mappings/{connector}.toml"),
                    &mapping(connector, &db.table, extra),
                );
                let other = if connector == "hubspot" {
                    "brevo"
                } else {
                    "hubspot"
                };
                std::fs::remove_file(config.path().join(format!("mappings/{other}.toml"))).unwrap();
            };
            Harness::start(backend, ConfigDir::shipped(), env, &[connector], write).await
        })
        .await?;
        Some(Fingerprinted {
            inner,
            clock: ManualClock::new(chrono::Utc::now()),
        })
    }

    /// Queues rows with these ids, emails `person<n>@example.com`.
    async fn queue_ids(&self, ids: &[&str]) {
        let rows = ids.iter().enumerate().map(|(n, id)| {
            json!({
                "id": id,
                "email": format!("person{n}@example.com"),
                "name": format!("Ann Person{n}"),
            })
        });
        self.harness.queue(rows).await;
    }

    async fn queue_all(&self) {
        self.db.store.queue_all(self.table()).await.unwrap();
    }

    /// The mapping's state columns.
    fn table(&self) -> &TableSpec {
        self.spec(&self.mapping)
    }

    /// `UPDATE <table> SET <set> WHERE id = '<id>'`, as the application would.
    async fn update_row(&self, id: &str, set: &str) {
        let table = &self.db.table;
        execute(
            &self.db.store,
            format!("UPDATE \"{table}\" SET {set} WHERE id = '{id}'"),
        )
        .await;
    }

    /// Claims the queued rows on the manual clock, as a run would (the
    /// mapping's 60 s lease), without sending them.
    async fn claim_now(&self) -> Vec<ClaimedRow> {
        let now = self.clock.utc();
        let lease = now + chrono::Duration::seconds(60);
        self.db
            .store
            .claim(self.table(), 10, now, lease)
            .await
            .unwrap()
    }

    /// Records `claimed` as synced (some CRM id and fingerprint), as the run
    /// that claimed it would; returns how many rows the write changed.
    async fn record_synced(&self, claimed: &ClaimedRow) -> u64 {
        let complete = RowUpdate::Complete {
            crm_id: Some("1".into()),
            fingerprint: Some("f".repeat(32)),
        };
        let results = [RowResult::of(claimed, complete)];
        self.db.store.record(self.table(), &results).await.unwrap()
    }

    /// Runs on the harness's manual clock.
    async fn run(&self) -> Arc<RunSummary> {
        self.harness.run(Arc::new(self.clock.clone())).await
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

fn text(row: &Map<String, Value>, column: &str) -> Option<String> {
    row.get(column).and_then(Value::as_str).map(str::to_string)
}

/// The first name HubSpot holds for `email`.
fn hubspot_firstname(sandbox: &Sandbox, email: &str) -> Option<String> {
    sandbox
        .hubspot_contacts()
        .iter()
        .find(|c| c["properties"]["email"] == email)
        .and_then(|c| c["properties"]["firstname"].as_str().map(str::to_string))
}

on_both_backends!(
    a_queued_row_whose_values_did_not_change_is_not_sent_again,
    editing_the_mapping_sends_every_row_once_more,
    a_crash_between_send_and_record_resends_the_row_and_stores_no_fingerprint,
    a_row_updated_while_in_flight_is_sent_again_afterwards,
);

async fn a_queued_row_whose_values_did_not_change_is_not_sent_again(backend: Backend) {
    let Some(h) = Fingerprinted::new(backend, "hubspot", "").await else {
        return;
    };
    h.queue_ids(&IDS).await;
    let first = h.run().await;
    assert_eq!(count(&first.complete), 3);
    let sent = h.all_requests();
    assert_eq!(sent, 1, "one batch upsert of three rows");
    let fingerprint = text(&h.row(IDS[0]).await, "hubspot_fingerprint").unwrap();
    assert_eq!(fingerprint.len(), 32);

    // A day later ({{today}} renders another date, but reads no column) the
    // application queues every row again without changing them.
    h.clock.advance(Duration::from_secs(86_400));
    h.queue_all().await;
    let again = h.run().await;
    assert_eq!(h.all_requests(), sent, "no request for unchanged rows");
    assert_eq!(count(&again.unchanged), 3);
    assert_eq!(count(&again.complete), 0);
    let row = h.row(IDS[0]).await;
    assert_eq!(text(&row, "hubspot_processing_status").unwrap(), "Complete");
    assert!(
        text(&row, "hubspot_contact_id").is_some(),
        "the CRM id is kept"
    );

    // One row's name changes: only it is sent.
    h.update_row(IDS[0], "name = 'Bea Person0'").await;
    h.queue_all().await;
    let changed = h.run().await;
    assert_eq!(h.all_requests(), sent + 1);
    assert_eq!(
        (count(&changed.complete), count(&changed.unchanged)),
        (1, 2)
    );
    assert_eq!(
        hubspot_firstname(&h.sandbox, "person0@example.com").as_deref(),
        Some("Bea")
    );
    assert_ne!(
        text(&h.row(IDS[0]).await, "hubspot_fingerprint").unwrap(),
        fingerprint
    );
    // `engine status` keeps the outcomes: totals and the last cycle's.
    let counts =
        h.db.store
            .sync_counts("hubspot", &h.db.table)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        counts.total.to_string(),
        "created 3, updated 1, unchanged 5, skipped 0, failed 0"
    );
    assert_eq!(
        counts.last_cycle.to_string(),
        "created 0, updated 1, unchanged 2, skipped 0, failed 0"
    );
    let status = crate::support::run_engine(
        h.config.path(),
        &["status", "--connector", "hubspot", "--database", &h.db.url],
        &[],
    );
    assert!(
        status.contains("outcomes     created 3, updated 1, unchanged 5, skipped 0, failed 0"),
        "{status}"
    );
}

async fn editing_the_mapping_sends_every_row_once_more(backend: Backend) {
    let Some(mut h) = Fingerprinted::new(backend, "hubspot", "").await else {
        return;
    };
    h.queue_ids(&IDS).await;
    h.run().await;
    let before = text(&h.row(IDS[1]).await, "hubspot_fingerprint").unwrap();

    h.config.edit(
        "mappings/hubspot.toml",
        "firstname = \"{{first_name name}}\"",
        "firstname = \"{{upper (first_name name)}}\"",
    );
    h.replan().await;
    h.queue_all().await;
    let edited = h.run().await;
    assert_eq!((count(&edited.complete), count(&edited.unchanged)), (3, 0));
    assert_eq!(
        hubspot_firstname(&h.sandbox, "person1@example.com").as_deref(),
        Some("ANN")
    );
    assert_ne!(
        text(&h.row(IDS[1]).await, "hubspot_fingerprint").unwrap(),
        before
    );

    // Sent once: queued again, they are unchanged under the edited mapping.
    h.queue_all().await;
    let again = h.run().await;
    assert_eq!((count(&again.complete), count(&again.unchanged)), (0, 3));
}

async fn a_crash_between_send_and_record_resends_the_row_and_stores_no_fingerprint(
    backend: Backend,
) {
    let Some(h) = Fingerprinted::new(backend, "hubspot", "").await else {
        return;
    };
    h.queue_ids(&IDS[..1]).await;
    // A run claims the row and sends it, then dies before recording.
    let claimed = h.claim_now().await;
    assert_eq!(claimed.len(), 1);
    let sent = reqwest::Client::new()
        .post(format!(
            "{}/crm/v3/objects/contacts/batch/upsert",
            h.sandbox.base_url()
        ))
        .bearer_auth("demo-token")
        .json(
            &json!({"inputs": [{"idProperty": "email", "id": "person0@example.com",
            "properties": {"email": "person0@example.com", "firstname": "Ann"}}]}),
        )
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success());
    let row = h.row(IDS[0]).await;
    assert_eq!(
        text(&row, "hubspot_processing_status").unwrap(),
        "Processing"
    );
    assert_eq!(text(&row, "hubspot_fingerprint"), None, "not confirmed yet");

    // The next run after the lease reclaims and re-sends it: still one record.
    h.clock.advance(Duration::from_secs(61));
    let requests = h.all_requests();
    let rerun = h.run().await;
    assert_eq!(count(&rerun.complete), 1);
    assert_eq!(h.all_requests(), requests + 1, "sent again, not skipped");
    assert_eq!(h.sandbox.hubspot_contacts().len(), 1);
    let row = h.row(IDS[0]).await;
    assert_eq!(text(&row, "hubspot_processing_status").unwrap(), "Complete");
    assert!(text(&row, "hubspot_fingerprint").is_some());
}

async fn a_row_updated_while_in_flight_is_sent_again_afterwards(backend: Backend) {
    let Some(h) = Fingerprinted::new(backend, "hubspot", "").await else {
        return;
    };
    h.queue_ids(&IDS[..1]).await;
    let claimed = h.claim_now().await;
    // While the first version is in flight, the application changes the
    // name and queues the row again (as a change trigger would).
    h.update_row(
        IDS[0],
        "name = 'Bea Person0', hubspot_processing_status = 'Queued'",
    )
    .await;
    // The first version's result arrives: it must not mark the new one done.
    assert_eq!(h.record_synced(&claimed[0]).await, 0);
    let row = h.row(IDS[0]).await;
    assert_eq!(text(&row, "hubspot_processing_status").unwrap(), "Queued");
    assert_eq!(text(&row, "hubspot_fingerprint"), None);
    assert_eq!(
        row["hubspot_next_retry_at"],
        Value::Null,
        "due now, not at the lease"
    );

    let rerun = h.run().await;
    assert_eq!(count(&rerun.complete), 1);
    assert_eq!(
        hubspot_firstname(&h.sandbox, "person0@example.com").as_deref(),
        Some("Bea")
    );
}

impl Fingerprinted {
    /// What `engine migrate` adds for the change triggers, run.
    async fn install_triggers(&self) -> Vec<String> {
        let mapping = &self.plan.mappings[&self.mapping];
        let sql = engine::change::change_trigger_migration(&self.db.store, &self.plan, mapping)
            .await
            .unwrap();
        self.db.store.run_statements(&sql).await.unwrap();
        sql
    }

    async fn trigger_warnings(&self) -> Vec<String> {
        let mapping = self.plan.mappings[&self.mapping].as_ref();
        engine::change::check_change_triggers(&self.db.store, &self.plan, [mapping])
            .await
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    async fn status_of(&self, id: &str) -> Option<String> {
        text(&self.row(id).await, &self.table().processing_status)
    }

    async fn insert_unqueued(&self, id: &str, email: &str) {
        let row = json!({"id": id, "email": email, "name": "Cy Unqueued"});
        self.harness
            .insert(&[row.as_object().unwrap().clone()])
            .await;
    }
}

on_both_backends!(
    change_triggers_queue_a_row_when_a_column_the_mapping_reads_changes_and_only_then,
    engine_check_says_when_change_triggers_are_missing_or_stale_and_migrate_replaces_them,
    a_row_the_trigger_queues_while_in_flight_is_sent_again_afterwards,
);

async fn change_triggers_queue_a_row_when_a_column_the_mapping_reads_changes_and_only_then(
    backend: Backend,
) {
    let Some(h) = Fingerprinted::new(backend, "hubspot", "queue_on_change = true").await else {
        return;
    };
    assert_eq!(
        h.install_triggers().await.len(),
        match backend {
            Backend::Sqlite => 2,
            Backend::Postgres => 3,
        }
    );
    // An insert queues the row, whatever status it was given.
    h.insert_unqueued(IDS[0], "cy@example.com").await;
    assert_eq!(h.status_of(IDS[0]).await.as_deref(), Some("Queued"));
    // The engine's own writes (claim, record) do not queue it again.
    let first = h.run().await;
    assert_eq!(count(&first.complete), 1);
    assert_eq!(h.status_of(IDS[0]).await.as_deref(), Some("Complete"));

    let id = IDS[0];
    // A column the mapping does not read, and a read column set to its own value.
    h.update_row(id, "phone_number = '+33612345678'").await;
    h.update_row(id, "name = 'Cy Unqueued'").await;
    assert_eq!(h.status_of(id).await.as_deref(), Some("Complete"));
    let idle = h.run().await;
    assert_eq!(count(&idle.complete) + count(&idle.unchanged), 0);

    // A read column that changes queues it, and the new value reaches the CRM.
    h.update_row(id, "name = 'Dee Changed'").await;
    assert_eq!(h.status_of(id).await.as_deref(), Some("Queued"));
    let changed = h.run().await;
    assert_eq!(count(&changed.complete), 1);
    assert_eq!(
        hubspot_firstname(&h.sandbox, "cy@example.com").as_deref(),
        Some("Dee")
    );
    assert_eq!(h.status_of(id).await.as_deref(), Some("Complete"));
}

async fn engine_check_says_when_change_triggers_are_missing_or_stale_and_migrate_replaces_them(
    backend: Backend,
) {
    let Some(mut h) = Fingerprinted::new(backend, "hubspot", "queue_on_change = true").await else {
        return;
    };
    let missing = h.trigger_warnings().await;
    assert_eq!(missing.len(), 1);
    assert!(missing[0].contains("are not installed"), "{missing:?}");
    h.install_triggers().await;
    assert!(h.trigger_warnings().await.is_empty());
    let installed = h.db.store.trigger_names(&h.db.table).await.unwrap();
    assert_eq!(installed.len(), 2);

    // The mapping now reads phone_number too: the triggers are stale.
    h.config.edit(
        "mappings/hubspot.toml",
        "[fields]\n",
        "[fields]\nphone = \"{{phone_number}}\"\n",
    );
    h.replan().await;
    let stale = h.trigger_warnings().await;
    assert_eq!(stale.len(), 1);
    assert!(stale[0].contains("are stale"), "{stale:?}");
    assert!(stale[0].contains("phone_number"), "{stale:?}");
    h.install_triggers().await;
    assert!(h.trigger_warnings().await.is_empty());
    let replaced = h.db.store.trigger_names(&h.db.table).await.unwrap();
    assert_eq!(replaced.len(), 2);
    assert!(replaced.iter().all(|n| !installed.contains(n)));
    // And they watch the new column.
    h.insert_unqueued(IDS[0], "cy@example.com").await;
    h.run().await;
    h.update_row(IDS[0], "phone_number = '+33612345678'").await;
    assert_eq!(h.status_of(IDS[0]).await.as_deref(), Some("Queued"));
}

async fn a_row_the_trigger_queues_while_in_flight_is_sent_again_afterwards(backend: Backend) {
    let Some(h) = Fingerprinted::new(backend, "hubspot", "queue_on_change = true").await else {
        return;
    };
    h.install_triggers().await;
    h.insert_unqueued(IDS[0], "cy@example.com").await;
    let claimed = h.claim_now().await;
    assert_eq!(claimed.len(), 1);
    h.update_row(IDS[0], "name = 'Dee Changed'").await;
    assert_eq!(h.status_of(IDS[0]).await.as_deref(), Some("Queued"));
    assert_eq!(
        h.record_synced(&claimed[0]).await,
        0,
        "the older version does not mark the row done"
    );
    let rerun = h.run().await;
    assert_eq!(count(&rerun.complete), 1);
    assert_eq!(
        hubspot_firstname(&h.sandbox, "cy@example.com").as_deref(),
        Some("Dee")
    );
}

#[test]
fn migrate_print_shows_the_change_triggers_for_either_database_kind() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "connector = \"hubspot\"\n",
        "connector = \"hubspot\"\nqueue_on_change = true\n",
    );
    let print = |dialect: &str| {
        crate::support::run_engine(
            config.path(),
            &[
                "migrate",
                "--mapping",
                "hubspot",
                "--print",
                "--dialect",
                dialect,
            ],
            &[],
        )
    };
    insta::assert_snapshot!("change_triggers_postgres", print("postgres"));
    insta::assert_snapshot!("change_triggers_sqlite", print("sqlite"));
}

/// The first names the CRM holds, by email.
fn crm_first_names(h: &Fingerprinted) -> BTreeMap<String, String> {
    let (contacts, email, first) = match h.connector.as_str() {
        "hubspot" => (
            h.sandbox.hubspot_contacts(),
            "/properties/email",
            "/properties/firstname",
        ),
        _ => (
            h.sandbox.brevo_contacts(),
            "/email",
            "/attributes/FIRSTNAME",
        ),
    };
    contacts
        .iter()
        .map(|c| {
            let get = |p: &str| {
                c.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            (get(email), get(first))
        })
        .collect()
}

/// Creates `person0@example.com` named "Old" in the CRM, as someone else did.
async fn seed_crm_contact(h: &Fingerprinted) {
    let client = reqwest::Client::new();
    let base = h.sandbox.base_url();
    let sent = match h.connector.as_str() {
        "hubspot" => client
            .post(format!("{base}/crm/v3/objects/contacts"))
            .bearer_auth("demo-token")
            .json(&json!({"properties": {"email": "person0@example.com", "firstname": "Old"}})),
        _ => client
            .post(format!("{base}/v3/contacts"))
            .header("api-key", "demo-key")
            .json(&json!({"email": "person0@example.com", "attributes": {"FIRSTNAME": "Old"}})),
    }
    .send()
    .await
    .unwrap();
    assert!(sent.status().is_success(), "{:?}", sent.text().await);
}

async fn run_in_mode(
    backend: Backend,
    connector: &'static str,
    mode: &str,
) -> Option<Fingerprinted> {
    let h = Fingerprinted::new(backend, connector, &format!("mode = \"{mode}\"")).await?;
    seed_crm_contact(&h).await;
    h.queue_ids(&IDS).await;
    let summary = h.run().await;
    let expected = match mode {
        "update_only" => (1, 2),
        _ => (2, 1),
    };
    assert_eq!(
        (count(&summary.complete), count(&summary.skipped)),
        expected,
        "{connector} {mode}"
    );
    Some(h)
}

fn sync_status(h: &Fingerprinted, row: &Map<String, Value>) -> String {
    text(row, &format!("{}_sync_status", h.connector)).unwrap_or_default()
}

async fn update_only_updates_existing_records_and_creates_none(backend: Backend) {
    for connector in ["hubspot", "brevo"] {
        let Some(h) = run_in_mode(backend, connector, "update_only").await else {
            return;
        };
        assert_eq!(
            crm_first_names(&h),
            BTreeMap::from([("person0@example.com".into(), "Ann".into())]),
            "{connector}: the existing record updated, no other created"
        );
        let skipped = h.row(IDS[1]).await;
        assert_eq!(sync_status(&h, &skipped), "Skipped");
        let error = text(&skipped, &format!("{connector}_processing_error")).unwrap();
        assert!(error.contains("does not create"), "{error}");
        assert_eq!(sync_status(&h, &h.row(IDS[0]).await), "Complete");
    }
}

async fn create_only_creates_new_records_and_leaves_existing_ones_untouched(backend: Backend) {
    for connector in ["hubspot", "brevo"] {
        let Some(h) = run_in_mode(backend, connector, "create_only").await else {
            return;
        };
        assert_eq!(
            crm_first_names(&h),
            BTreeMap::from([
                ("person0@example.com".into(), "Old".into()),
                ("person1@example.com".into(), "Ann".into()),
                ("person2@example.com".into(), "Ann".into()),
            ]),
            "{connector}: the existing record untouched, the new ones created"
        );
        let skipped = h.row(IDS[0]).await;
        assert_eq!(sync_status(&h, &skipped), "Skipped");
        assert!(
            text(&skipped, &format!("{connector}_contact_id")).is_some(),
            "{connector}: the existing record's id is kept"
        );
        // Queued again, a skipped row is checked again (its fingerprint was
        // cleared), and still left alone.
        h.queue_all().await;
        let again = h.run().await;
        assert_eq!((count(&again.skipped), count(&again.unchanged)), (1, 2));
    }
}

on_both_backends!(
    update_only_updates_existing_records_and_creates_none,
    create_only_creates_new_records_and_leaves_existing_ones_untouched,
);

#[test]
fn engine_check_refuses_a_sync_mode_the_connector_cannot_tell_apart() {
    let config = ConfigDir::shipped();
    config
        .write(
            "connectors/crm.toml",
            "base_url = \"http://127.0.0.1:9\"\n[auth]\nkind = \"none\"\n[upsert]\nmode = \"single\"\n\
             [upsert.single]\nmethod = \"POST\"\npath = \"/contacts\"\nbody = { email = \"{{key}}\" }\n",
        )
        .write(
            "mappings/crm.toml",
            "connector = \"crm\"\nmode = \"update_only\"\n[source]\ntable = \"contacts\"\n\
             [fields]\nname = \"{{name}}\"\n",
        );
    let errors = check_errors(&config, &BTreeMap::new());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("mode `update_only` needs to know whether a record exists"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("mappings/crm.toml"), "{}", errors[0]);
}

#[test]
fn engine_run_warns_when_the_change_triggers_are_stale() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "connector = \"hubspot\"\n",
        "connector = \"hubspot\"\nqueue_on_change = true\n",
    );
    let env = [
        ("HUBSPOT_ACCESS_TOKEN", "t"),
        ("HUBSPOT_BASE_URL", "http://127.0.0.1:9"),
    ];
    let run = |args: &[&str]| crate::support::run_engine(config.path(), args, &env);
    let migrated = run(&["migrate", "--mapping", "hubspot"]);
    assert!(migrated.contains("CREATE TRIGGER"), "{migrated}");
    let fresh = run(&["run", "--connector", "hubspot"]);
    assert!(fresh.starts_with("exit code: 0"), "{fresh}");
    assert!(!fresh.contains("stale"), "{fresh}");

    config.edit(
        "mappings/hubspot.toml",
        "domain_id = \"{{domain_id}}\"\n",
        "",
    );
    let stale = run(&["run", "--connector", "hubspot"]);
    assert!(stale.starts_with("exit code: 0"), "{stale}");
    assert!(
        stale.contains("the change triggers of table `contacts` are stale"),
        "{stale}"
    );
    assert!(
        stale.contains("engine migrate --mapping hubspot"),
        "{stale}"
    );
}

#[test]
fn engine_check_refuses_a_fingerprint_column_the_mapping_reads() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "[state]\n",
        "[state]\nfingerprint = \"name\"\n",
    );
    let errors = check_errors(&config, &BTreeMap::new());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("the engine would overwrite it"),
        "{}",
        errors[0]
    );
}
