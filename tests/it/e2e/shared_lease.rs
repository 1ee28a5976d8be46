//! The seed's table shares `retry_count` / `next_retry_at` between HubSpot and
//! Brevo, and a claim stamps its lease in `next_retry_at`. One CRM's sync must
//! not wait for the other's claimed rows, and neither may lose the other's
//! write-back or leave a row stuck after a crash.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use engine::clock::{Clock, ManualClock};
use engine::store::{Backend, ClaimedRow, RowResult, RowUpdate};

use super::{Fixture, generated_rows, ids_of, parse_time, sandbox_options, text};
use crate::on_both_backends;

on_both_backends!(
    a_sync_does_not_wait_for_the_rows_the_other_crm_has_claimed,
    both_write_backs_land_whichever_mapping_finishes_first,
    a_shared_lease_left_by_a_crash_is_reclaimed_when_it_expires,
    a_row_handed_back_under_a_shared_lease_is_not_claimed_again_at_once,
    a_claim_in_the_same_millisecond_as_the_other_crms_leaves_both_write_backs_fenced_on_one_lease,
);

const LEASE_SECS: i64 = 600;

async fn claim(f: &Fixture, mapping: &str, now: DateTime<Utc>, lease_secs: i64) -> Vec<ClaimedRow> {
    f.db.store
        .claim(
            f.spec(mapping),
            10,
            now,
            now + chrono::Duration::seconds(lease_secs),
        )
        .await
        .unwrap()
}

async fn complete(f: &Fixture, mapping: &str, claimed: &[ClaimedRow]) -> u64 {
    let results: Vec<RowResult> = claimed
        .iter()
        .map(|row| {
            let crm_id = Some(format!("{mapping}-{}", row.id));
            RowResult::of(
                row,
                RowUpdate::Complete {
                    crm_id,
                    fingerprint: None,
                },
            )
        })
        .collect();
    f.db.store.record(f.spec(mapping), &results).await.unwrap()
}

async fn seeded(backend: Backend) -> Option<(Fixture, Vec<String>)> {
    let f = Fixture::new(backend, sandbox_options(0), |_| {}).await?;
    let rows = generated_rows(3);
    f.insert(&rows).await;
    Some((f, ids_of(&rows)))
}

async fn a_sync_does_not_wait_for_the_rows_the_other_crm_has_claimed(backend: Backend) {
    let Some((f, ids)) = seeded(backend).await else {
        return;
    };
    assert_eq!(
        f.spec("hubspot").shares_due_with(),
        ["brevo_processing_status"],
        "the plan sees the shared column"
    );
    // Brevo (another process, mid-batch) holds every row under its lease.
    let brevo = claim(&f, "brevo", Utc::now(), LEASE_SECS).await;
    assert_eq!(brevo.len(), 3);

    // HubSpot's run syncs them now instead of waiting for Brevo's batch.
    let summary = tokio::time::timeout(Duration::from_secs(30), f.run_now("hubspot"))
        .await
        .expect("the run ends");
    assert_eq!(
        summary.complete.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert_eq!(f.count("hubspot", "Complete").await, 3);
    for row in f.rows(&ids).await {
        // Brevo's lease is still on the row: its write-back is fenced on it.
        assert_eq!(
            parse_time(&text(&row, "next_retry_at")),
            brevo[0].lease,
            "{row:?}"
        );
    }
    assert_eq!(
        complete(&f, "brevo", &brevo).await,
        3,
        "Brevo's write-back lands"
    );
    for row in f.rows(&ids).await {
        assert_eq!(text(&row, "brevo_processing_status"), "Complete");
        assert_eq!(text(&row, "hubspot_processing_status"), "Complete");
        assert_eq!(text(&row, "next_retry_at"), "", "{row:?}");
    }
}

async fn both_write_backs_land_whichever_mapping_finishes_first(backend: Backend) {
    let Some((f, ids)) = seeded(backend).await else {
        return;
    };
    let now = Utc::now();
    let brevo = claim(&f, "brevo", now, LEASE_SECS).await;
    // HubSpot claims a moment later with a lease of its own, and shares Brevo's.
    let hubspot = claim(
        &f,
        "hubspot",
        now + chrono::Duration::seconds(1),
        LEASE_SECS,
    )
    .await;
    assert_eq!(hubspot.len(), 3);
    for row in &hubspot {
        assert_eq!(row.lease, brevo[0].lease, "the live lease is shared");
    }

    // Brevo first this time; HubSpot's fence still holds.
    assert_eq!(complete(&f, "brevo", &brevo).await, 3);
    assert_eq!(f.count("hubspot", "Processing").await, 3);
    assert_eq!(complete(&f, "hubspot", &hubspot).await, 3);
    for row in f.rows(&ids).await {
        assert_eq!(
            text(&row, "brevo_contact_id"),
            format!("brevo-{}", text(&row, "id"))
        );
        assert_eq!(
            text(&row, "hubspot_contact_id"),
            format!("hubspot-{}", text(&row, "id"))
        );
        assert_eq!(text(&row, "next_retry_at"), "", "{row:?}");
    }
}

async fn a_shared_lease_left_by_a_crash_is_reclaimed_when_it_expires(backend: Backend) {
    let Some((f, ids)) = seeded(backend).await else {
        return;
    };
    let clock = ManualClock::new(Utc::now());
    let brevo = claim(&f, "brevo", clock.utc(), LEASE_SECS).await;
    // HubSpot shares the lease, then dies without a write-back.
    clock.advance(Duration::from_secs(1));
    let hubspot = claim(&f, "hubspot", clock.utc(), LEASE_SECS).await;
    assert_eq!(hubspot.len(), 3);
    // Brevo finishes: the lease stays, since HubSpot's claim is still on it.
    assert_eq!(complete(&f, "brevo", &brevo).await, 3);
    assert!(
        claim(&f, "hubspot", clock.utc(), LEASE_SECS)
            .await
            .is_empty()
    );

    // Once the lease has expired, HubSpot's next run takes the rows again.
    clock.advance(Duration::from_secs(LEASE_SECS as u64 + 1));
    f.run("hubspot", Arc::new(clock.clone())).await;
    assert_eq!(
        f.counts("hubspot").await,
        [("Complete".to_string(), 3)].into()
    );
    for row in f.rows(&ids).await {
        assert_eq!(text(&row, "brevo_processing_status"), "Complete");
        assert_eq!(text(&row, "next_retry_at"), "", "{row:?}");
    }
}

async fn a_row_handed_back_under_a_shared_lease_is_not_claimed_again_at_once(backend: Backend) {
    let Some((f, ids)) = seeded(backend).await else {
        return;
    };
    let now = Utc::now();
    let brevo = claim(&f, "brevo", now, LEASE_SECS).await;
    let now = now + chrono::Duration::seconds(1);
    let hubspot = claim(&f, "hubspot", now, LEASE_SECS).await;
    assert_eq!(hubspot.len(), 3);
    // HubSpot is rate-limited for an hour and hands its rows back.
    let later = now + chrono::Duration::hours(1);
    let results: Vec<RowResult> = hubspot
        .iter()
        .map(|row| {
            let update = RowUpdate::Release {
                next_retry_at: Some(later),
            };
            RowResult::of(row, update)
        })
        .collect();
    assert_eq!(
        f.db.store
            .record(f.spec("hubspot"), &results)
            .await
            .unwrap(),
        3
    );
    for row in f.rows(&ids).await {
        assert_eq!(text(&row, "hubspot_processing_status"), "Queued");
        assert!(
            text(&row, "hubspot_processing_error").starts_with("not sent yet: handed back until"),
            "{row:?}"
        );
    }
    // Its own schedule now: not taken again while Brevo still holds the rows
    // (a hot loop of claims and hand-backs otherwise).
    assert!(claim(&f, "hubspot", now, LEASE_SECS).await.is_empty());
    assert_eq!(complete(&f, "brevo", &brevo).await, 3);
}

async fn a_claim_in_the_same_millisecond_as_the_other_crms_leaves_both_write_backs_fenced_on_one_lease(
    backend: Backend,
) {
    let Some((f, ids)) = seeded(backend).await else {
        return;
    };
    // `run --all` starts both mappings at once: their first claims can fall
    // in the same millisecond, so HubSpot's own lease equals Brevo's live one.
    let now = Utc::now();
    let brevo = claim(&f, "brevo", now, LEASE_SECS).await;
    assert_eq!(brevo.len(), 3);
    // Taking the rows now would look like finding Brevo's dead claim (the
    // row holds this claim's own lease), and HubSpot's write-back would then
    // clear Brevo's lease and fence Brevo out: its rows stuck `Processing`.
    assert!(claim(&f, "hubspot", now, LEASE_SECS).await.is_empty());
    // A millisecond later the lease is told apart, and shared.
    let hubspot = claim(
        &f,
        "hubspot",
        now + chrono::Duration::milliseconds(1),
        LEASE_SECS,
    )
    .await;
    assert_eq!(hubspot.len(), 3);
    for row in &hubspot {
        assert_eq!(row.lease, brevo[0].lease, "the live lease is shared");
        assert!(row.shares_lease);
    }
    assert_eq!(complete(&f, "hubspot", &hubspot).await, 3);
    assert_eq!(
        complete(&f, "brevo", &brevo).await,
        3,
        "Brevo's write-back lands"
    );
    for row in f.rows(&ids).await {
        assert_eq!(text(&row, "brevo_processing_status"), "Complete");
        assert_eq!(text(&row, "hubspot_processing_status"), "Complete");
        assert_eq!(text(&row, "next_retry_at"), "", "{row:?}");
    }
}
