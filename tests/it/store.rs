//! The store, against SQLite and PostgreSQL: every test below is written once
//! and runs on both (`<test>::on_sqlite`, `<test>::on_postgres`).
//!
//! PostgreSQL comes from `ENGINE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test works in its own
//! table, dropped afterwards, so tests run in parallel. When the server is
//! not reachable the PostgreSQL tests print "skipped" and pass, except under
//! `CI`, where they fail.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use engine::store::{Backend, ClaimedRow, RowColumns, RowResult, RowUpdate, Store, TableSpec};
use serde_json::{Map, Value, json};

use crate::on_both_backends;
use crate::support::{TestDb, seed_spec};

on_both_backends!(
    with_db:
    migrate_creates_the_seed_table_which_accepts_the_seed_rows,
    migrate_adds_only_missing_state_columns_and_migration_sql_shows_the_sql,
    columns_of_a_missing_table_are_none,
    claim_marks_rows_processing_with_the_lease_and_returns_all_columns,
    a_queue_opened_for_some_columns_returns_those_the_key_and_the_crm_id,
    a_table_of_our_own_shape_with_integer_ids_is_claimed_and_recorded,
    migrate_adds_the_claim_index_and_a_table_without_it_is_reported,
    rows_due_in_the_future_are_not_claimed,
    claims_take_rows_by_due_time_nulls_first,
    a_claim_is_exclusive_under_eight_concurrent_claimers,
    an_expired_lease_is_reclaimed_and_a_live_one_is_not,
    record_is_fenced_so_a_stale_lease_writes_nothing,
    record_writes_a_mixed_slice_in_one_call,
    status_counts_and_latest_errors_describe_the_table,
    requeue_errors_queues_failed_rows_with_a_fresh_retry_budget,
    queue_all_queues_every_row_not_processing,
    instance_slots_admit_max_instances_across_connections_and_free_on_drop,
    ten_thousand_rows_claim_and_record_in_batches_of_500,
);

const SEED_IDS: [&str; 3] = [
    "4b4be366-da73-4926-83a2-2fddb9a77d95",
    "bbe6872a-f479-4d76-a943-fb6c182963d4",
    "abde1d25-7c5b-4f0c-aada-e0886dd28ab3",
];

/// The seed's three queued contacts (seed Test 2), with the ids it got back.
fn seed_rows() -> Vec<Map<String, Value>> {
    let phones = [json!("+1-555-9001"), json!("+1-555-9002"), Value::Null];
    SEED_IDS
        .iter()
        .zip(phones)
        .enumerate()
        .map(|(i, (id, phone))| {
            object(json!({
                "id": id,
                "email": format!("hubspot-scheduler-test-{}@scrapersky-test.com", i + 1),
                "name": format!("Scheduler Test {}", i + 1),
                "phone_number": phone,
                "domain_id": "1ad6264b-a0b6-4551-860a-1326b2bfa28f",
                "page_id": "ddc03eef-2550-46de-aca8-bbdb7cf525cb",
                "hubspot_sync_status": "Queued",
                "hubspot_processing_status": "Queued",
            }))
        })
        .collect()
}

/// A contact numbered `n` with the given processing status and extra columns.
fn contact(n: usize, status: Option<&str>, extra: Value) -> Map<String, Value> {
    let mut row = object(json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "email": format!("contact-{n}@example.com"),
        "name": format!("Contact {n}"),
        "hubspot_processing_status": status,
    }));
    row.extend(object(extra));
    row
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn id_of(row: &Map<String, Value>) -> String {
    row["id"].as_str().unwrap().to_owned()
}

/// A time as rows are loaded with: UTC text both backends read.
fn at(t: DateTime<Utc>) -> Value {
    json!(t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
}

/// Reads a time back from row JSON (PostgreSQL writes RFC 3339, SQLite its
/// own text shape).
fn time_of(value: &Value) -> Option<DateTime<Utc>> {
    let text = value.as_str()?;
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|t| t.and_utc())
        });
    Some(parsed.unwrap_or_else(|e| panic!("not a time: {text}: {e}")))
}

fn minutes(n: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::minutes(n)
}

fn ids(claimed: &[ClaimedRow]) -> HashSet<String> {
    claimed.iter().map(|c| c.id.clone()).collect()
}

fn complete(claimed: &ClaimedRow) -> RowResult {
    let crm_id = Some(format!("crm-{}", claimed.id));
    RowResult::of(
        claimed,
        RowUpdate::Complete {
            crm_id,
            fingerprint: None,
        },
    )
}

async fn migrate_creates_the_seed_table_which_accepts_the_seed_rows(db: TestDb) {
    let ran = db.store.migrate(&db.spec).await.unwrap();
    assert_eq!(ran.len(), 2, "CREATE TABLE and the claim index: {ran:#?}");
    assert!(ran[0].starts_with(&format!("CREATE TABLE \"{}\"", db.spec.table)));

    let columns = db.store.columns(&db.spec.table).await.unwrap().unwrap();
    // The seed's 6 data columns and this mapping's 6 state columns: no other
    // CRM's columns (its own `migrate` adds them).
    assert_eq!(columns.len(), 12);
    let id_type = &columns[0].sql_type;
    match db.store.backend() {
        Backend::Postgres => assert_eq!(id_type, "uuid"),
        Backend::Sqlite => assert_eq!(id_type, "TEXT"),
    }

    let db = db.with_rows(&seed_rows()).await;
    let third = db.row(SEED_IDS[2]).await;
    assert_eq!(third["id"], SEED_IDS[2]);
    assert_eq!(third["phone_number"], Value::Null);
    assert_eq!(third["retry_count"], 0);
    assert_eq!(third["hubspot_processing_status"], "Queued");

    // The seed inserts without ids: the table makes up a uuid.
    let no_id = object(json!({"email": "no-id@example.com"}));
    db.store
        .insert_rows(&db.spec.table, &[no_id])
        .await
        .unwrap();
    let counts = db.store.status_counts(&db.spec).await.unwrap();
    assert_eq!(counts, [(None, 1), (Some("Queued".into()), 3)]);
    let made_up = made_up_id(&db).await;
    assert!(
        uuid::Uuid::parse_str(&made_up).is_ok(),
        "not a uuid: {made_up}"
    );

    assert!(db.store.migration_sql(&db.spec).await.unwrap().is_empty());
}

/// The id of the one row with no processing status (claims never see it).
async fn made_up_id(db: &TestDb) -> String {
    db.store.queue_all(&db.spec).await.unwrap();
    let claimed = db.claim(10, Utc::now(), Utc::now() + minutes(5)).await;
    let seed: HashSet<String> = SEED_IDS.iter().map(|s| s.to_string()).collect();
    let others: Vec<String> = ids(&claimed).difference(&seed).cloned().collect();
    assert_eq!(others.len(), 1);
    others[0].clone()
}

async fn migrate_adds_only_missing_state_columns_and_migration_sql_shows_the_sql(db: TestDb) {
    let table = &db.spec.table;
    db.execute(format!(
        "CREATE TABLE \"{table}\" (id uuid PRIMARY KEY, email text NOT NULL, \
         hubspot_processing_status text, hubspot_contact_id text)"
    ))
    .await;
    // A mapping with its own retry columns, as the seed's shared ones are a flaw.
    let spec = TableSpec {
        retry_count: "hubspot_retry_count".into(),
        next_retry_at: "hubspot_next_retry_at".into(),
        ..db.spec.clone()
    };

    let planned = db.store.migration_sql(&spec).await.unwrap();
    let (count_type, time_type) = match db.store.backend() {
        Backend::Postgres => ("integer NOT NULL DEFAULT 0", "timestamptz"),
        Backend::Sqlite => ("INTEGER NOT NULL DEFAULT 0", "TEXT"),
    };
    let text = match db.store.backend() {
        Backend::Postgres => "text",
        Backend::Sqlite => "TEXT",
    };
    let add = |column: &str, sql_type: &str| {
        format!("ALTER TABLE \"{table}\" ADD COLUMN \"{column}\" {sql_type}")
    };
    assert_eq!(
        planned[..4],
        [
            add("hubspot_sync_status", text),
            add("hubspot_processing_error", text),
            add("hubspot_retry_count", count_type),
            add("hubspot_next_retry_at", time_type),
        ]
    );
    assert_eq!(planned.len(), 5);
    assert!(planned[4].starts_with("CREATE INDEX"), "{}", planned[4]);
    assert!(planned[4].contains("(\"hubspot_processing_status\", \"hubspot_next_retry_at\""));

    assert_eq!(db.store.migrate(&spec).await.unwrap(), planned);
    let columns = db.store.columns(table).await.unwrap().unwrap();
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "email",
            "hubspot_processing_status",
            "hubspot_contact_id",
            "hubspot_sync_status",
            "hubspot_processing_error",
            "hubspot_retry_count",
            "hubspot_next_retry_at",
        ]
    );
    assert!(db.store.migration_sql(&spec).await.unwrap().is_empty());
}

async fn columns_of_a_missing_table_are_none(db: TestDb) {
    assert_eq!(db.store.columns(&db.spec.table).await.unwrap(), None);
}

async fn claim_marks_rows_processing_with_the_lease_and_returns_all_columns(db: TestDb) {
    let db = db.with_rows(&seed_rows()).await;
    let now = Utc::now();
    let lease = now + minutes(5);

    let claimed = db.claim(10, now, lease).await;

    let expected: HashSet<String> = SEED_IDS.iter().map(|s| s.to_string()).collect();
    assert_eq!(ids(&claimed), expected);
    for row in &claimed {
        assert_eq!(row.lease, lease.trunc_subsecs(3));
        assert_eq!(row.retry_count, 0);
        let has_rowid = db.store.backend() == Backend::Sqlite;
        assert_eq!(row.handle.is_some(), has_rowid, "{:?}", row.handle);
        assert_eq!(row.row.len(), 12, "all columns: {:?}", row.row.keys());
        assert_eq!(row.row["id"], row.id.as_str());
        assert_eq!(row.row["hubspot_processing_status"], "Processing");
        assert_eq!(time_of(&row.row["next_retry_at"]), Some(row.lease));
        assert_eq!(db.row(&row.id).await, row.row);
    }
    let third = claimed.iter().find(|c| c.id == SEED_IDS[2]).unwrap();
    assert_eq!(third.row["phone_number"], Value::Null);
    assert_eq!(
        third.row["email"],
        "hubspot-scheduler-test-3@scrapersky-test.com"
    );

    assert!(
        db.claim(10, now, lease).await.is_empty(),
        "claimed rows are not due"
    );
}

async fn a_queue_opened_for_some_columns_returns_those_the_key_and_the_crm_id(db: TestDb) {
    let db = db.with_rows(&seed_rows()).await;
    let wanted = RowColumns::Only(vec!["name".into(), "phone_number".into(), "nope".into()]);
    let queue = db
        .store
        .open_queue(&db.spec, &wanted)
        .await
        .unwrap()
        .unwrap();
    let now = Utc::now();

    let claimed = queue.claim(10, now, now + minutes(5)).await.unwrap();

    assert_eq!(claimed.len(), 3);
    for row in &claimed {
        let keys: Vec<&str> = row.row.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["email", "name", "phone_number", "hubspot_contact_id"],
            "in table order, with the CRM id (created or updated)"
        );
    }
    let results: Vec<RowResult> = claimed.iter().map(complete).collect();
    assert_eq!(queue.record(&results).await.unwrap(), 3);
    assert_eq!(
        db.row(SEED_IDS[0]).await["hubspot_processing_status"],
        "Complete"
    );
}

/// Not the seed's table: integer ids, and on SQLite `WITHOUT ROWID`, so
/// claims cannot go by rowid and take rows by id instead.
async fn a_table_of_our_own_shape_with_integer_ids_is_claimed_and_recorded(db: TestDb) {
    let table = &db.spec.table;
    let without_rowid = match db.store.backend() {
        Backend::Sqlite => " WITHOUT ROWID",
        Backend::Postgres => "",
    };
    db.execute(format!(
        "CREATE TABLE \"{table}\" (id BIGINT PRIMARY KEY, email TEXT NOT NULL, name TEXT, \
         hubspot_sync_status TEXT, hubspot_processing_status TEXT, hubspot_contact_id TEXT, \
         hubspot_processing_error TEXT, retry_count INTEGER NOT NULL DEFAULT 0, next_retry_at {time}){without_rowid}",
        time = match db.store.backend() {
            Backend::Sqlite => "TEXT",
            Backend::Postgres => "timestamptz",
        }
    ))
    .await;
    assert_eq!(
        db.store.migrate(&db.spec).await.unwrap().len(),
        1,
        "only the claim index"
    );
    let rows: Vec<_> = [3, 1, 2]
        .iter()
        .map(|n| {
            object(json!({"id": n, "email": format!("c{n}@example.com"), "hubspot_processing_status": "Queued"}))
        })
        .collect();
    db.store.insert_rows(table, &rows).await.unwrap();
    let now = Utc::now();

    let first = db.claim(2, now, now + minutes(5)).await;
    let rest = db.claim(2, now, now + minutes(5)).await;

    assert_eq!(
        ids(&first),
        HashSet::from(["1".to_string(), "2".to_string()])
    );
    assert_eq!(ids(&rest), HashSet::from(["3".to_string()]));
    assert_eq!(rest[0].row["id"], 3);
    assert_eq!(rest[0].handle, None, "no rowid to hand out");
    let results: Vec<RowResult> = first.iter().chain(&rest).map(complete).collect();
    assert_eq!(db.store.record(&db.spec, &results).await.unwrap(), 3);
    let counts = db.store.status_counts(&db.spec).await.unwrap();
    assert_eq!(counts, [(Some("Complete".into()), 3)]);
}

async fn migrate_adds_the_claim_index_and_a_table_without_it_is_reported(db: TestDb) {
    let table = &db.spec.table;
    db.execute(format!(
        "CREATE TABLE \"{table}\" (id TEXT PRIMARY KEY, email TEXT NOT NULL, \
         hubspot_processing_status TEXT, next_retry_at TEXT)"
    ))
    .await;
    db.execute(format!(
        "CREATE INDEX \"{table}_other\" ON \"{table}\" (hubspot_processing_status, next_retry_at, email)"
    ))
    .await;
    assert!(
        !db.store.has_claim_index(&db.spec).await.unwrap(),
        "an index with other columns is not the claim index"
    );

    let ran = db.store.migrate(&db.spec).await.unwrap();

    assert!(ran.last().unwrap().starts_with("CREATE INDEX"), "{ran:#?}");
    assert!(db.store.has_claim_index(&db.spec).await.unwrap());
}

async fn rows_due_in_the_future_are_not_claimed(db: TestDb) {
    let now = Utc::now();
    let never_tried = contact(1, Some("Queued"), json!({}));
    let due = contact(
        2,
        Some("Queued"),
        json!({"next_retry_at": at(now - minutes(1))}),
    );
    let due_now = contact(3, Some("Queued"), json!({"next_retry_at": at(now)}));
    let later = contact(
        4,
        Some("Queued"),
        json!({"next_retry_at": at(now + minutes(1))}),
    );
    let done = contact(5, Some("Complete"), json!({}));
    let failed = contact(6, Some("Error"), json!({}));
    let unqueued = contact(7, None, json!({}));
    let rows = [never_tried, due, due_now, later, done, failed, unqueued];
    let db = db.with_rows(&rows).await;
    let due_count = db.store.count_due(&db.spec, now).await.unwrap();

    let claimed = db.claim(100, now, now + minutes(5)).await;

    let expected: HashSet<String> = rows[..3].iter().map(id_of).collect();
    assert_eq!(ids(&claimed), expected);
    assert_eq!(due_count, 3, "the count of due rows agrees with the claim");
    // Now Processing under a live lease: none is due until it expires.
    assert_eq!(db.store.count_due(&db.spec, now).await.unwrap(), 0);
    let expired = now + minutes(6);
    assert_eq!(db.store.count_due(&db.spec, expired).await.unwrap(), 4);
}

async fn claims_take_rows_by_due_time_nulls_first(db: TestDb) {
    let now = Utc::now();
    let row = |id: &str, due: Option<DateTime<Utc>>| {
        let mut row = contact(0, Some("Queued"), json!({"next_retry_at": due.map(at)}));
        row.insert("id".into(), json!(id));
        row.insert("email".into(), json!(format!("{id}@example.com")));
        row
    };
    let uuid = |n: u8| format!("00000000-0000-4000-8000-00000000000{n}");
    let rows = [
        row(&uuid(4), Some(now - minutes(1))),
        row(&uuid(3), Some(now - minutes(2))),
        row(&uuid(2), None),
        row(&uuid(1), None),
    ];
    let db = db.with_rows(&rows).await;

    let mut order = Vec::new();
    for _ in 0..rows.len() {
        let claimed = db.claim(1, now, now + minutes(5)).await;
        order.push(claimed[0].id.clone());
    }
    // Rows due at the same time (the two never tried) come in the claim
    // index's own order: insertion order on SQLite, id on PostgreSQL.
    let never_tried: HashSet<&String> = order[..2].iter().collect();
    assert_eq!(never_tried, HashSet::from([&uuid(1), &uuid(2)]));
    assert_eq!(order[2..], [uuid(3), uuid(4)]);
}

async fn a_claim_is_exclusive_under_eight_concurrent_claimers(db: TestDb) {
    let rows: Vec<_> = (0..400)
        .map(|n| contact(n, Some("Queued"), json!({})))
        .collect();
    let db = db.with_rows(&rows).await;
    // Half the claimers use a second connection pool, as another process would.
    let other = Store::connect(&db.url).await.unwrap();

    let claimers = (0..8).map(|n| {
        let store = if n % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        let spec = db.spec.clone();
        tokio::spawn(async move {
            let mut taken = Vec::new();
            loop {
                let now = Utc::now();
                let claimed = store.claim(&spec, 7, now, now + minutes(5)).await.unwrap();
                if claimed.is_empty() {
                    return taken;
                }
                taken.extend(claimed.into_iter().map(|c| c.id));
            }
        })
    });
    let mut all = Vec::new();
    for claimer in claimers.collect::<Vec<_>>() {
        all.extend(claimer.await.unwrap());
    }

    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 400, "every row claimed once");
    assert_eq!(unique.len(), 400, "no row claimed twice");
    let counts = db.store.status_counts(&db.spec).await.unwrap();
    assert_eq!(counts, [(Some("Processing".into()), 400)]);
    other.close().await;
}

async fn an_expired_lease_is_reclaimed_and_a_live_one_is_not(db: TestDb) {
    let rows = [
        contact(1, Some("Queued"), json!({})),
        contact(2, Some("Queued"), json!({})),
    ];
    let db = db.with_rows(&rows).await;
    let now = Utc::now();
    let short = db.claim(1, now, now + minutes(1)).await;
    let long = db.claim(1, now, now + minutes(10)).await;
    assert_eq!(short.len() + long.len(), 2);

    // The first claimer crashed: five minutes on, its lease has run out.
    let later = now + minutes(5);
    let reclaimed = db.claim(10, later, later + minutes(5)).await;

    assert_eq!(ids(&reclaimed), ids(&short));
    assert_eq!(reclaimed[0].lease, (later + minutes(5)).trunc_subsecs(3));
    assert_eq!(reclaimed[0].row["hubspot_processing_status"], "Processing");
}

async fn record_is_fenced_so_a_stale_lease_writes_nothing(db: TestDb) {
    let db = db.with_rows(&seed_rows()[..1]).await;
    let now = Utc::now();
    let stale = db.claim(1, now, now + minutes(1)).await.remove(0);
    let later = now + minutes(2);
    let current = db.claim(1, later, later + minutes(5)).await.remove(0);
    assert_eq!(stale.id, current.id);

    let written = db
        .store
        .record(&db.spec, &[complete(&stale)])
        .await
        .unwrap();

    assert_eq!(written, 0, "the stale lease writes nothing");
    let row = db.row(&current.id).await;
    assert_eq!(row["hubspot_processing_status"], "Processing");
    assert_eq!(time_of(&row["next_retry_at"]), Some(current.lease));
    assert_eq!(row["hubspot_contact_id"], Value::Null);

    let written = db
        .store
        .record(&db.spec, &[complete(&current)])
        .await
        .unwrap();
    assert_eq!(written, 1, "the current lease writes");
    assert_eq!(
        db.row(&current.id).await["hubspot_processing_status"],
        "Complete"
    );
}

async fn record_writes_a_mixed_slice_in_one_call(db: TestDb) {
    let earlier = json!({"hubspot_contact_id": "176498856077",
                         "hubspot_processing_error": "earlier error", "retry_count": 1});
    let rows: Vec<_> = (0..5)
        .map(|n| contact(n, Some("Queued"), earlier.clone()))
        .collect();
    let db = db.with_rows(&rows).await;
    let now = Utc::now();
    let claimed = db.claim(5, now, now + minutes(5)).await;
    assert_eq!(claimed.len(), 5);
    let retry_at = now + minutes(10);
    let release_at = now + minutes(1);
    let updates = [
        RowUpdate::Complete {
            crm_id: Some("176559342616".into()),
            fingerprint: None,
        },
        RowUpdate::Complete {
            crm_id: None,
            fingerprint: None,
        },
        RowUpdate::RetryLater {
            error: "HTTP 500".into(),
            retry_count: 2,
            next_retry_at: retry_at,
        },
        RowUpdate::Release {
            next_retry_at: Some(release_at),
        },
        RowUpdate::Failed {
            error: "HTTP 400: invalid email".into(),
            retry_count: 3,
        },
    ];
    let results: Vec<RowResult> = claimed
        .iter()
        .zip(updates)
        .enumerate()
        .map(|(n, (c, update))| RowResult {
            id: c.id.clone(),
            // Every other result without the claim's handle: found by id.
            handle: c.handle.filter(|_| n % 2 == 0),
            lease: c.lease,
            shares_lease: c.shares_lease,
            update,
        })
        .collect();

    assert_eq!(db.store.record(&db.spec, &results).await.unwrap(), 5);

    let state = |row: &Map<String, Value>| {
        (
            row["hubspot_processing_status"].clone(),
            row["hubspot_sync_status"].clone(),
            row["hubspot_contact_id"].clone(),
            row["hubspot_processing_error"].clone(),
            row["retry_count"].clone(),
            time_of(&row["next_retry_at"]),
        )
    };
    let ms = |t: DateTime<Utc>| Some(t.trunc_subsecs(3));
    let expected = [
        (
            json!("Complete"),
            json!("Complete"),
            json!("176559342616"),
            Value::Null,
            json!(0),
            None,
        ),
        (
            json!("Complete"),
            json!("Complete"),
            json!("176498856077"),
            Value::Null,
            json!(0),
            None,
        ),
        (
            json!("Queued"),
            Value::Null,
            json!("176498856077"),
            json!("HTTP 500"),
            json!(2),
            ms(retry_at),
        ),
        (
            json!("Queued"),
            Value::Null,
            json!("176498856077"),
            json!("earlier error"),
            json!(1),
            ms(release_at),
        ),
        (
            json!("Error"),
            json!("Error"),
            json!("176498856077"),
            json!("HTTP 400: invalid email"),
            json!(3),
            None,
        ),
    ];
    for (result, expected) in results.iter().zip(expected) {
        assert_eq!(
            state(&db.row(&result.id).await),
            expected,
            "{:?}",
            result.update
        );
    }
}

async fn status_counts_and_latest_errors_describe_the_table(db: TestDb) {
    let failed = |n, error: &str, retries| {
        contact(
            n,
            Some("Error"),
            json!({"hubspot_processing_error": error, "retry_count": retries}),
        )
    };
    let rows = [
        contact(1, Some("Complete"), json!({})),
        contact(2, Some("Complete"), json!({})),
        failed(3, "HTTP 400: invalid email", 3),
        contact(
            4,
            Some("Queued"),
            json!({"hubspot_processing_error": "HTTP 429", "retry_count": 1}),
        ),
        contact(5, Some("Queued"), json!({})),
        contact(6, None, json!({})),
    ];
    let db = db.with_rows(&rows).await;

    let counts = db.store.status_counts(&db.spec).await.unwrap();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        counts,
        [
            (None, 1),
            (some("Complete"), 2),
            (some("Error"), 1),
            (some("Queued"), 2)
        ]
    );

    let mut errors = db.store.latest_errors(&db.spec, 10).await.unwrap();
    errors.sort();
    assert_eq!(
        errors,
        [
            (
                "contact-3@example.com".into(),
                "HTTP 400: invalid email".into(),
                3
            ),
            ("contact-4@example.com".into(), "HTTP 429".into(), 1),
        ]
    );
    assert_eq!(db.store.latest_errors(&db.spec, 1).await.unwrap().len(), 1);
}

async fn requeue_errors_queues_failed_rows_with_a_fresh_retry_budget(db: TestDb) {
    let failed = |n| {
        contact(
            n,
            Some("Error"),
            json!({"hubspot_processing_error": "HTTP 500", "retry_count": 3}),
        )
    };
    let rows = [
        failed(1),
        failed(2),
        contact(3, Some("Complete"), json!({})),
    ];
    let db = db.with_rows(&rows).await;

    assert_eq!(db.store.requeue_errors(&db.spec).await.unwrap(), 2);

    for row in &rows[..2] {
        let row = db.row(&id_of(row)).await;
        assert_eq!(row["hubspot_processing_status"], "Queued");
        assert_eq!(row["retry_count"], 0);
        assert_eq!(row["next_retry_at"], Value::Null);
        assert_eq!(
            row["hubspot_processing_error"], "HTTP 500",
            "kept until the next outcome"
        );
    }
    assert_eq!(
        db.row(&id_of(&rows[2])).await["hubspot_processing_status"],
        "Complete"
    );
    let now = Utc::now();
    assert_eq!(db.claim(10, now, now + minutes(5)).await.len(), 2);
}

async fn queue_all_queues_every_row_not_processing(db: TestDb) {
    let rows = [
        contact(1, Some("Complete"), json!({})),
        contact(2, Some("Error"), json!({"retry_count": 3})),
        contact(3, None, json!({})),
        contact(
            4,
            Some("Queued"),
            json!({"next_retry_at": at(Utc::now() + minutes(60))}),
        ),
        contact(5, Some("Queued"), json!({})),
    ];
    let db = db.with_rows(&rows).await;
    let now = Utc::now();
    let processing = db.claim(1, now, now + minutes(5)).await.remove(0);
    assert_eq!(processing.id, id_of(&rows[4]));

    assert_eq!(db.store.queue_all(&db.spec).await.unwrap(), 4);

    let counts = db.store.status_counts(&db.spec).await.unwrap();
    assert_eq!(
        counts,
        [(Some("Processing".into()), 1), (Some("Queued".into()), 4)]
    );
    let claimed = db.claim(10, now, now + minutes(5)).await;
    assert_eq!(claimed.len(), 4, "all due now");
    assert!(claimed.iter().all(|c| c.retry_count == 0));
}

async fn instance_slots_admit_max_instances_across_connections_and_free_on_drop(db: TestDb) {
    // Unique per test: PostgreSQL advisory locks are shared by the database.
    let name = format!("mapping:{}", db.spec.table);
    let other = Store::connect(&db.url).await.unwrap();

    let first = db
        .store
        .acquire_instance_slot(&name, 2)
        .await
        .unwrap()
        .expect("slot 0");
    let second = other
        .acquire_instance_slot(&name, 2)
        .await
        .unwrap()
        .expect("slot 1");
    assert_eq!((first.slot(), second.slot()), (0, 1));
    assert!(
        db.store
            .acquire_instance_slot(&name, 2)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        other
            .acquire_instance_slot(&name, 2)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.store
            .acquire_instance_slot("another-mapping", 2)
            .await
            .unwrap()
            .is_some()
    );

    drop(first);
    // A dropped PostgreSQL connection is noticed by the server a moment later.
    let again = eventually(|| db.store.acquire_instance_slot(&name, 2)).await;
    assert_eq!(again.slot(), 0);

    second.release().await.unwrap();
    let third = other
        .acquire_instance_slot(&name, 2)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(third.slot(), 1);
    other.close().await;
}

/// Retries `acquire` for up to five seconds until it yields a guard.
async fn eventually<F, Fut, T>(mut acquire: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    for _ in 0..100 {
        if let Some(guard) = acquire().await.unwrap() {
            return guard;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the slot was not freed within five seconds");
}

async fn ten_thousand_rows_claim_and_record_in_batches_of_500(db: TestDb) {
    let rows: Vec<_> = (0..10_000)
        .map(|n| contact(n, Some("Queued"), json!({})))
        .collect();
    let db = db.with_rows(&rows).await;

    let mut batches = 0;
    loop {
        let now = Utc::now();
        let claimed = db.claim(500, now, now + minutes(5)).await;
        if claimed.is_empty() {
            break;
        }
        assert_eq!(claimed.len(), 500);
        let results: Vec<RowResult> = claimed.iter().map(complete).collect();
        assert_eq!(db.store.record(&db.spec, &results).await.unwrap(), 500);
        batches += 1;
    }

    assert_eq!(batches, 20);
    let counts = db.store.status_counts(&db.spec).await.unwrap();
    assert_eq!(counts, [(Some("Complete".into()), 10_000)]);
}

#[tokio::test]
async fn an_in_memory_sqlite_store_claims_and_grants_every_slot() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let spec = seed_spec("contacts");
    store.migrate(&spec).await.unwrap();
    store.insert_rows(&spec.table, &seed_rows()).await.unwrap();
    let now = Utc::now();
    assert_eq!(
        store
            .claim(&spec, 10, now, now + minutes(5))
            .await
            .unwrap()
            .len(),
        3
    );
    let _one = store
        .acquire_instance_slot("mapping:hubspot", 1)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .acquire_instance_slot("mapping:hubspot", 1)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn connect_rejects_an_unknown_url_scheme() {
    let error = Store::connect("mysql://localhost/db").await.unwrap_err();
    assert!(
        error.to_string().contains("unsupported database URL"),
        "{error}"
    );
}
