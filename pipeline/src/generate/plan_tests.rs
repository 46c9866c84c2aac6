//! Properties of the plan: determinism, decodability, the truth's status mix, and the noise.

use std::collections::{BTreeMap, HashMap, HashSet};

use recon_schemas::balance::{TripStatus, fold};
use recon_schemas::decode::{Limits, RejectReason, decode};
use sha2::{Digest, Sha256};

use super::*;

/// A small, noisy config: every kind of record shows up often enough to test.
fn noisy(seed: u64) -> TrafficConfig {
    TrafficConfig {
        seed,
        trips: 3_000,
        duplicate: Ppm::new(20_000).unwrap(),
        conflict: Ppm::new(5_000).unwrap(),
        out_of_order: Ppm::new(50_000).unwrap(),
        late: Ppm::new(10_000).unwrap(),
        poison: Ppm::new(10_000).unwrap(),
        refund: Ppm::new(100_000).unwrap(),
        adjustment: Ppm::new(100_000).unwrap(),
        open: Ppm::new(50_000).unwrap(),
        overpay: Ppm::new(30_000).unwrap(),
        ..TrafficConfig::default()
    }
}

fn digest(config: &TrafficConfig) -> (String, u64) {
    let mut h = Sha256::new();
    let mut n = 0;
    for r in plan(config) {
        h.update(format!(
            "{:?}|{}|",
            r.partition_hint,
            r.key.as_ref().map_or(0, Vec::len)
        ));
        h.update(r.key.as_deref().unwrap_or_default());
        h.update(&r.payload);
        n += 1;
    }
    (hex::encode(h.finalize()), n)
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (a, n) = digest(&noisy(1));
    let (b, m) = digest(&noisy(1));
    assert_eq!((a.clone(), n), (b, m));
    assert!(n > 10_000, "{n} records");
    let (c, _) = digest(&noisy(2));
    assert_ne!(a, c);
}

#[test]
fn every_record_decodes_as_planned() {
    let limits = Limits::default();
    let mut first: HashMap<uuid::Uuid, Vec<u8>> = HashMap::new();
    let mut poison_seen: HashSet<RejectReason> = HashSet::new();
    let (mut dups, mut conflicts) = (0, 0);
    for r in plan(&noisy(3)) {
        let decoded = decode(r.key.as_deref(), &r.payload, &limits);
        match &r.kind {
            RecordKind::Valid(e) => {
                assert_eq!(decoded.as_ref(), Ok(e));
                assert_eq!(r.key.as_deref(), Some(e.trip_id.as_bytes()));
                assert!(
                    first.insert(e.event_id, r.payload.clone()).is_none(),
                    "valid twice: {}",
                    e.event_id
                );
            }
            RecordKind::Duplicate(id) => {
                assert_eq!(decoded.map(|e| e.event_id), Ok(*id));
                assert_eq!(
                    first.get(id),
                    Some(&r.payload),
                    "a duplicate repeats the first bytes"
                );
                dups += 1;
            }
            RecordKind::ConflictingDuplicate(e) => {
                assert_eq!(decoded.as_ref(), Ok(e));
                let original = first
                    .get(&e.event_id)
                    .expect("the first version comes first");
                assert_ne!(original, &r.payload);
                conflicts += 1;
            }
            RecordKind::Poison(reason) => {
                assert_eq!(decoded.map_err(|e| e.reason()), Err(*reason));
                poison_seen.insert(*reason);
            }
        }
    }
    assert!(
        dups > 100 && conflicts > 20,
        "{dups} duplicates, {conflicts} conflicts"
    );
    assert_eq!(
        poison_seen.len(),
        RejectReason::ALL.len(),
        "every class injected"
    );
}

#[test]
fn truth_folds_to_the_intended_status_mix() {
    let config = noisy(4);
    let mut records = plan(&config);
    let mut trips: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for r in records.by_ref() {
        if let RecordKind::Valid(e) = r.kind {
            trips.entry(e.trip_id.clone()).or_default().push(e);
        }
    }
    assert_eq!(trips.len() as u64, config.trips);
    let mut got = IntendedStatuses::default();
    for events in trips.values() {
        match fold(events.iter()).unwrap().status() {
            TripStatus::Balanced => got.balanced += 1,
            TripStatus::Open => got.open += 1,
            TripStatus::Discrepancy(_) => got.discrepancy += 1,
        }
    }
    assert_eq!(got, records.intended());
    assert!(
        got.balanced > 2_000 && got.open > 50 && got.discrepancy > 30,
        "{got:?}"
    );
}

#[test]
fn noise_shows_up_out_of_order_and_late() {
    let config = noisy(5);
    let mut latest: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    let (mut out_of_order, mut late) = (0, 0);
    for (i, r) in plan(&config).enumerate() {
        if let RecordKind::Valid(e) = r.kind {
            let last = latest.entry(e.trip_id.clone()).or_insert(e.occurred_at);
            if e.occurred_at < *last {
                out_of_order += 1;
            }
            *last = (*last).max(e.occurred_at);
            let prev = position.insert(e.trip_id.clone(), i);
            if prev.is_some_and(|p| i - p > 5_000) {
                late += 1;
            }
        }
    }
    assert!(out_of_order > 100, "{out_of_order} out of order");
    assert!(late > 20, "{late} late");
}

#[test]
fn events_max_cuts_the_stream() {
    let config = TrafficConfig {
        events_max: std::num::NonZeroU64::new(777),
        ..noisy(6)
    };
    assert_eq!(plan(&config).count(), 777);
    assert_eq!(plan(&config).estimated_len(), 777);
}

#[test]
fn clean_config_gives_clean_stream() {
    let config = TrafficConfig {
        duplicate: Ppm::ZERO,
        conflict: Ppm::ZERO,
        poison: Ppm::ZERO,
        late: Ppm::ZERO,
        out_of_order: Ppm::ZERO,
        ..noisy(7)
    };
    assert!(
        plan(&config).all(|r| matches!(r.kind, RecordKind::Valid(_)) && r.partition_hint.is_none())
    );
}

#[test]
fn keyless_poison_gets_a_partition_in_range() {
    let config = TrafficConfig {
        poison: Ppm::new(500_000).unwrap(),
        partitions: 3,
        ..noisy(8)
    };
    let hints: HashSet<i32> = plan(&config).filter_map(|r| r.partition_hint).collect();
    assert_eq!(hints, HashSet::from([0, 1, 2]));
}
