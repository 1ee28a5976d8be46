//! `max_instances` across processes: two `engine run` processes share one queue
//! without sending a row twice, and a process beyond the limit is turned away.
//! Within one process, its claim loops do not split a backlog that one claim
//! holds.

use std::time::Duration;

use engine::store::Backend;
use serde_json::Value;

use super::{Fixture, assert_each_row_synced_once, generated_rows, ids_of, sandbox_options};
use crate::on_both_backends;

on_both_backends!(
    two_processes_with_max_instances_2_share_the_queue_and_send_each_row_once,
    a_second_process_beyond_max_instances_1_exits_2_naming_max_instances,
    a_backlog_one_claim_holds_goes_as_one_claim_however_many_claim_loops_the_burst_asks_for,
);

const ROWS: usize = 200;

async fn two_processes_with_max_instances_2_share_the_queue_and_send_each_row_once(
    backend: Backend,
) {
    let Some(f) = Fixture::new(backend, sandbox_options(20), |config| {
        config.edit(
            "mappings/brevo.toml",
            "max_instances = 1",
            "max_instances = 2",
        );
        config.edit("mappings/brevo.toml", "batch_size = 50", "batch_size = 10");
        // 50 contacts per second per process: the 200 rows take one process ~4 s
        // and two ~2 s, so both processes get rows even if one starts late.
        config.edit(
            "connectors/brevo.toml",
            "requests = 10\n",
            "requests = 50\n",
        );
    })
    .await
    else {
        return;
    };
    let rows = generated_rows(ROWS);
    let ids = ids_of(&rows);
    f.insert(&rows).await;

    let mut first = f.spawn(&["run", "--connector", "brevo"]);
    let mut second = f.spawn(&["run", "--connector", "brevo"]);
    let first_code = first.exit_code(Duration::from_secs(15)).await;
    let second_code = second.exit_code(Duration::from_secs(15)).await;
    assert_eq!(
        (first_code, second_code),
        (0, 0),
        "first:\n{}\nsecond:\n{}",
        first.stderr(),
        second.stderr()
    );

    assert_eq!(
        f.counts("brevo").await,
        [("Complete".to_string(), ROWS as i64)].into()
    );
    // Brevo's single mode sends one POST per row; a row sent twice would be a
    // second POST (answered 204) and a lookup.
    let stats = f.sandbox.stats();
    assert_eq!(f.requests("POST /v3/contacts"), ROWS as u64, "{stats}");
    let all: u64 = stats["requests"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(all, ROWS as u64, "no request but the creates: {stats}");
    assert_eq!(f.sandbox.brevo_contacts().len(), ROWS);
    assert_each_row_synced_once(&f, "brevo", &ids).await;

    // Each row was synced by exactly one of the two, and both took part.
    // Each batch's info line counts its rows: "Synced a batch. … complete=N".
    let synced = |stderr: String| -> usize {
        stderr
            .lines()
            .filter(|l| l.contains("Synced a batch."))
            .filter_map(|l| {
                l.split("complete=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum()
    };
    let (by_first, by_second) = (synced(first.stderr()), synced(second.stderr()));
    assert_eq!(
        by_first + by_second,
        ROWS,
        "first synced {by_first}, second {by_second}"
    );
    assert!(
        by_first > 0 && by_second > 0,
        "both processes synced rows: first {by_first}, second {by_second}"
    );
}

async fn a_second_process_beyond_max_instances_1_exits_2_naming_max_instances(backend: Backend) {
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    f.insert(&generated_rows(3)).await;

    // A watching run holds its slot until it is stopped.
    let mut first = f.spawn(&["run", "--connector", "brevo", "--watch"]);
    super::wait_for(
        "the first run to finish a cycle",
        Duration::from_secs(10),
        || async { first.stderr().contains("Finished sync cycle.") },
    )
    .await;

    let mut second = f.spawn(&["run", "--connector", "brevo"]);
    assert_eq!(second.exit_code(Duration::from_secs(10)).await, 2);
    assert_snapshot!(
        "second_instance_refused",
        format!("stdout:\n{}stderr:\n{}", second.stdout(), second.stderr())
    );

    first.stop_with(0).await;
    assert_eq!(f.count("brevo", "Complete").await, 3);
}

/// HubSpot's window lets 100 batches of 100 out at once, so a run starts 20
/// claim loops of 500 rows. A backlog of 300 is one claim, so three full
/// batches: loops racing for the same rows would split it (`SKIP LOCKED` on
/// PostgreSQL hands each loop a part) into more, smaller batches.
async fn a_backlog_one_claim_holds_goes_as_one_claim_however_many_claim_loops_the_burst_asks_for(
    backend: Backend,
) {
    const UPSERT: &str = "POST /crm/v3/objects/contacts/batch/upsert";
    let Some(f) = Fixture::new(backend, sandbox_options(0), |_| {}).await else {
        return;
    };
    let rows = generated_rows(1_800);
    for (round, backlog) in rows.chunks(300).enumerate() {
        f.insert(backlog).await;
        let before = f.requests(UPSERT);

        let summary = f.run_now("hubspot").await;

        assert!(summary.all_complete(), "round {round}");
        assert_eq!(
            f.requests(UPSERT) - before,
            3,
            "round {round}: 300 rows in batches of 100"
        );
    }
    assert_each_row_synced_once(&f, "hubspot", &ids_of(&rows)).await;
}
