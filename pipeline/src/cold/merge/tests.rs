//! Merges run off the barrier and lose nothing; merged-away runs are deleted only once no
//! retained checkpoint lists them.

use std::sync::Arc;

use super::super::ColdLookup;
use super::super::runs::ColdTier;
use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::store::ObjectCheckpointStore;
use crate::ids::{CheckpointId, Generation, JobId};
use crate::state::evict::{EvictPolicy, trip_key};
use crate::state::{State, event_key};

fn event(trip: u32, id: u128) -> recon_schemas::event::Event {
    charge(trip, id, 1_234)
}

/// A `trip_charge` of `cents` on `trip-<trip>` with event id `id` (tests of the cold tier).
pub(crate) fn charge(trip: u32, id: u128, cents: i64) -> recon_schemas::event::Event {
    recon_schemas::event::Event {
        event_id: uuid::Uuid::from_u128(id),
        event_type: recon_schemas::event::EventType::TripCharge,
        trip_id: format!("trip-{trip}"),
        amount: rust_decimal::Decimal::new(cents, 2),
        currency: recon_schemas::currency::Currency::USD,
        occurred_at: chrono::DateTime::from_timestamp(1_764_000_000, 0).unwrap(),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: 1,
    }
}

/// A cold tier with no run, on a local checkpoint store in a temporary directory.
async fn empty_tier(job: &str) -> (tempfile::TempDir, CheckpointLog, ColdTier) {
    let root = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(root.path()).unwrap();
    let store = Arc::new(ObjectCheckpointStore::new(Arc::new(fs)));
    let log = CheckpointLog::new(store, "", JobId::new(job).unwrap());
    let tier = ColdTier::open(&log, &root.path().join("local"), &[], &[], 1 << 30)
        .await
        .unwrap();
    (root, log, tier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_runs_keep_every_trip_and_are_deleted_only_when_unlisted() {
    let root = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(root.path()).unwrap();
    let store = Arc::new(ObjectCheckpointStore::new(Arc::new(fs)));
    let log = CheckpointLog::new(store, "", JobId::new("merge").unwrap());
    let cold_dir = root.path().join("local");
    let mut tier = ColdTier::open(&log, &cold_dir, &[], &[], 1 << 30)
        .await
        .unwrap();
    let policy = EvictPolicy {
        settled_after_us: None,
        idle_after_us: Some(0),
        horizon_us: None,
        scan_per_barrier: 1_000,
    };
    let mut state = State::default();
    let (mut id, mut trip) = (0u64, 0u32);
    // 12 barriers, each evicting 50 new trips: runs of equal size, so merges are due.
    for _ in 0..12 {
        for _ in 0..50 {
            state.apply(&event(trip, u128::from(trip) + 1), 0).unwrap();
            trip += 1;
        }
        state.take_changed();
        id += 1;
        let out = state.evict(i64::MAX, &policy);
        assert_eq!(out.len(), 50);
        tier.add(&log, CheckpointId(id), Generation(1), &out)
            .await
            .unwrap();
        tier.maintain(&log, (CheckpointId(id), Generation(1)), None)
            .await
            .unwrap();
        tier.finish_merge(CheckpointId(id + 1)).await.unwrap();
    }
    assert!(
        tier.refs().len() < 12,
        "runs were merged: {}",
        tier.refs().len()
    );
    assert!(!tier.retired().is_empty());
    assert_eq!(tier.records(), 600, "a merge keeps every trip once");
    // Every trip and every id is still found.
    for t in 0..trip {
        let recs = tier
            .trip_records(trip_key(&format!("trip-{t}")))
            .await
            .unwrap();
        assert_eq!(recs.len(), 1, "trip {t}");
        let holders = tier
            .id_holders(event_key(&uuid::Uuid::from_u128(u128::from(t) + 1)))
            .await
            .unwrap();
        assert!(
            holders.contains(&trip_key(&format!("trip-{t}"))),
            "id of trip {t}"
        );
    }

    let exists = |rel: &str| root.path().join("merge").join(rel).exists();
    let retired = tier.retired().to_vec();
    let first_at = retired.iter().map(|r| r.at).min().unwrap();
    assert!(retired.iter().all(|r| exists(&r.path)));
    // A retained checkpoint before the first retirement still lists them: nothing goes.
    let kept = CheckpointId(first_at.0 - 1);
    assert_eq!(tier.collect(&log, kept).await.unwrap(), 0);
    assert!(retired.iter().all(|r| exists(&r.path)));
    // Once the oldest retained checkpoint is the newest: every retired run goes, store and
    // local copy; the listed runs stay and still answer.
    assert_eq!(
        tier.collect(&log, CheckpointId(id + 1)).await.unwrap(),
        retired.len()
    );
    assert!(tier.retired().is_empty());
    for r in &retired {
        assert!(!exists(&r.path), "{} deleted", r.path);
        assert!(!cold_dir.join(format!("{}.run", r.sha256)).exists());
    }
    for r in tier.refs() {
        assert!(exists(&r.path), "{} listed and kept", r.path);
    }
    // A restart from the listed runs alone (local copies gone) finds every trip.
    std::fs::remove_dir_all(&cold_dir).unwrap();
    let mut reopened = ColdTier::open(&log, &cold_dir, &tier.refs(), &[], 1 << 30)
        .await
        .unwrap();
    for t in (0..trip).step_by(7) {
        let recs = reopened
            .trip_records(trip_key(&format!("trip-{t}")))
            .await
            .unwrap();
        assert_eq!(recs.len(), 1, "trip {t} after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_beyond_the_horizon_is_rewritten_without_event_ids() {
    let (_root, log, mut tier) = empty_tier("expire").await;
    let mut state = State::default();
    for t in 0..40u32 {
        state.apply(&event(t, u128::from(t) + 1), 0).unwrap();
    }
    state.take_changed();
    let policy = EvictPolicy {
        settled_after_us: None,
        idle_after_us: Some(0),
        horizon_us: None,
        scan_per_barrier: 100,
    };
    let out = state.evict(i64::MAX, &policy);
    tier.add(&log, CheckpointId(1), Generation(1), &out)
        .await
        .unwrap();
    assert_eq!(tier.refs()[0].ids, 40);
    let last = tier.refs()[0]
        .last_us_max
        .expect("the run knows its newest event");
    // Before the horizon passes the run's newest event: nothing to do.
    tier.maintain(&log, (CheckpointId(2), Generation(1)), Some(last))
        .await
        .unwrap();
    tier.finish_merge(CheckpointId(3)).await.unwrap();
    assert_eq!(tier.refs()[0].ids, 40);
    // After: the run is rewritten, every trip kept, every id gone; the old run retires.
    tier.maintain(&log, (CheckpointId(3), Generation(1)), Some(last + 1))
        .await
        .unwrap();
    tier.finish_merge(CheckpointId(4)).await.unwrap();
    let r = &tier.refs()[0];
    assert_eq!((r.trips, r.ids), (40, 0));
    assert_eq!(tier.retired().len(), 1);
    for t in 0..40u32 {
        let recs = tier
            .trip_records(trip_key(&format!("trip-{t}")))
            .await
            .unwrap();
        assert_eq!(recs.len(), 1);
        let (_, b, seen, _) = crate::state::codec::decode_trip("cold", &recs[0].1).unwrap();
        assert!(
            seen.is_empty() && b.events == 1,
            "trip {t} closed with its balance"
        );
        assert!(
            tier.id_holders(event_key(&uuid::Uuid::from_u128(u128::from(t) + 1)))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// What left memory after a checkpoint: the trips of the runs written since, newest record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_written_after_a_checkpoint_are_listed_newest_first() {
    let (_root, log, mut tier) = empty_tier("after").await;
    let policy = EvictPolicy {
        settled_after_us: None,
        idle_after_us: Some(0),
        horizon_us: None,
        scan_per_barrier: 1_000,
    };
    let mut state = State::default();
    // Checkpoint 1: trips 0-9 leave; checkpoint 2: trips 5-14 (5-9 again, newer).
    for (id, trips, cents) in [(1u64, 0..10u32, 100i64), (2, 5..15, 700)] {
        for t in trips {
            state
                .apply(&charge(t, u128::from(t) * 10 + u128::from(id), cents), 0)
                .unwrap();
        }
        state.take_changed();
        let out = state.evict(i64::MAX, &policy);
        tier.add(&log, CheckpointId(id), Generation(1), &out)
            .await
            .unwrap();
    }
    let all = tier.trips_written_after(None).unwrap();
    assert_eq!(all.len(), 15);
    let newest = all.iter().find(|(id, ..)| id == "trip-7").unwrap();
    assert_eq!(newest.1.charged, rust_decimal::Decimal::new(700, 2));
    let since = tier.trips_written_after(Some(CheckpointId(1))).unwrap();
    let mut ids: Vec<&str> = since.iter().map(|(id, ..)| id.as_str()).collect();
    ids.sort();
    assert_eq!(ids.len(), 10, "{ids:?}");
    assert!(!ids.contains(&"trip-0") && ids.contains(&"trip-14"));
    assert!(
        tier.trips_written_after(Some(CheckpointId(2)))
            .unwrap()
            .is_empty()
    );
}
