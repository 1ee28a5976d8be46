//! What the plan decides before anything runs: which columns a claim returns.

use engine::demo::sandbox_env;
use engine::plan::Plan;
use engine::store::RowColumns;

use crate::support::ConfigDir;

fn plan_of(config: &ConfigDir) -> Plan {
    let checked = engine::check::check_dir(config.path(), &sandbox_env("http://127.0.0.1:9"));
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.plan
}

fn only(names: &[&str]) -> RowColumns {
    RowColumns::Only(names.iter().map(|n| n.to_string()).collect())
}

#[test]
fn claims_return_only_the_columns_the_shipped_mappings_read() {
    let plan = plan_of(&ConfigDir::shipped());

    let hubspot = plan.row_columns(&plan.mappings["hubspot"]);
    let brevo = plan.row_columns(&plan.mappings["brevo"]);

    // The key column (email) comes with every claim, read or not.
    let read = only(&["email", "name", "phone_number", "domain_id", "page_id"]);
    assert_eq!(hubspot, read);
    assert_eq!(brevo, only(&["name", "phone_number"]));
}

#[test]
fn a_mapping_reading_this_gets_every_column() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "sync_date = \"{{today}}\"",
        "sync_date = \"{{today}}\"\nsnapshot = \"{{json this}}\"",
    );
    let plan = plan_of(&config);

    assert_eq!(plan.row_columns(&plan.mappings["hubspot"]), RowColumns::All);
    assert_ne!(plan.row_columns(&plan.mappings["brevo"]), RowColumns::All);
}

#[test]
fn a_connector_reading_row_gets_every_column_for_its_mappings() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/hubspot.toml",
        "objectWriteTraceId = \"{{trace_id}}\"",
        "objectWriteTraceId = \"{{row.id}}\"",
    );
    let plan = plan_of(&config);

    assert_eq!(plan.row_columns(&plan.mappings["hubspot"]), RowColumns::All);
    assert_ne!(plan.row_columns(&plan.mappings["brevo"]), RowColumns::All);
}

#[test]
fn block_items_are_not_the_whole_context_but_each_this_is() {
    let whole = |t: &str| engine::template::analyse(t).reads_whole_context;
    assert!(whole("{{json this}}"));
    assert!(whole("{{this}}"));
    assert!(whole("{{#each this}}{{@key}}{{/each}}"));
    assert!(whole("{{#with params}}{{json @root}}{{/with}}"));
    assert!(whole("{{#each params}}{{json ../this}}{{/each}}"));
    assert!(!whole("{{#each params}}{{this}}{{/each}}"));
    assert!(!whole("{{#with params}}{{json this}}{{/with}}"));
    assert!(!whole("{{lower (trim email)}} {{params.list_id}}"));
}

#[test]
fn a_window_the_in_flight_ceiling_can_send_whole_is_a_burst_of_its_requests_times_the_batch() {
    use engine::choices::SyncMode;
    let plan = plan_of(&ConfigDir::shipped());
    // HubSpot: 100 per 10 s, 100 in flight, batches of 100 contacts.
    assert_eq!(
        plan.connectors["hubspot"].burst_rows(SyncMode::Upsert),
        Some(10_000)
    );
    // The lookup-first modes send one record per request.
    assert_eq!(
        plan.connectors["hubspot"].burst_rows(SyncMode::UpdateOnly),
        Some(100)
    );
    // Brevo: 10 per second but 4 in flight: the ceiling paces, no burst.
    assert_eq!(plan.connectors["brevo"].burst_rows(SyncMode::Upsert), None);
}

#[test]
fn a_window_larger_than_the_in_flight_ceiling_is_no_burst() {
    use engine::choices::SyncMode;
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/hubspot.toml",
        "max_in_flight = 100",
        "max_in_flight = 99",
    );
    let plan = plan_of(&config);
    assert_eq!(
        plan.connectors["hubspot"].burst_rows(SyncMode::Upsert),
        None
    );
}
