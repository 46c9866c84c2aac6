//! The late phase of a bounded-state scenario: records that need trips which have left memory,
//! sent once the job has checkpointed everything before them (so their order against the
//! originals is defined whatever partition they land on).
//!
//! Cycled over the trips that left: a late refund and a late adjustment (new events, dated a
//! little after the trip's last event, so the trip leaves again at a later barrier), an exact
//! re-send of one of its events (dropped as a duplicate), a conflicting re-send (same id, another
//! amount: dead-lettered), and its event id copied onto a brand-new trip and onto a trip still in
//! memory (`event_id_reused` dead letters: the holder must come back to be recognised). Every
//! record is classified like the rest of the traffic (`RecordKind`), so `expect` and the files
//! truth model them without a special case; new events are checked by the pipeline's decoder.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::ensure;
use chrono::Duration;
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use recon_pipeline::generate::{Record, RecordKind};
use recon_schemas::event::{Event, EventType};
use rust_decimal::Decimal;

use super::valid;

/// What the late phase holds, by class.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LateCounts {
    /// New events for trips that left memory (late refunds and adjustments).
    pub late_events: u64,
    /// Exact re-sends of their events.
    pub exact_resends: u64,
    /// Conflicting re-sends (same id, another amount).
    pub conflicting_resends: u64,
    /// Their event ids copied onto a new trip.
    pub reused_on_new_trip: u64,
    /// Their event ids copied onto a trip in memory.
    pub reused_on_hot_trip: u64,
    /// Distinct trips that had left memory and are needed by a record.
    pub cold_trips_needed: u64,
}

impl LateCounts {
    /// Records in the phase.
    pub fn records(&self) -> u64 {
        self.late_events
            + self.exact_resends
            + self.conflicting_resends
            + self.reused_on_new_trip
            + self.reused_on_hot_trip
    }
}

/// Trips the late phase may address: the generator's own (`trip-...`), in one currency, whose
/// events lie within a day (no hand-made hostile trip, no clock-skewed event).
pub fn candidates(sent: &[Record]) -> BTreeSet<String> {
    let mut seen: BTreeMap<&str, (recon_schemas::currency::Currency, i64, i64, bool)> =
        BTreeMap::new();
    for r in sent {
        if let RecordKind::Valid(ev) = &r.kind {
            let t = ev.occurred_at.timestamp();
            let e = seen
                .entry(&ev.trip_id)
                .or_insert((ev.currency, t, t, r.key.is_some()));
            e.3 &= ev.currency == e.0 && r.key.is_some();
            e.1 = e.1.min(t);
            e.2 = e.2.max(t);
        }
    }
    seen.into_iter()
        .filter(|(t, (_, lo, hi, ok))| *ok && t.starts_with("trip-") && hi - lo <= 86_400)
        .map(|(t, _)| t.to_string())
        .collect()
}

/// Builds up to `n` late records for the trips in `cold` (which left memory), copying ids onto
/// trips in `hot` too; `tag` makes new trip ids unique to the scenario. Fails when a new event
/// is not accepted by the decoder or an event id would be planned twice.
pub fn build(
    sent: &[Record],
    cold: &BTreeSet<String>,
    hot: &BTreeSet<String>,
    n: usize,
    rng: &mut ChaCha8Rng,
    tag: u64,
) -> anyhow::Result<(Vec<Record>, LateCounts)> {
    let mut by_trip: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    let mut ids: HashSet<uuid::Uuid> = HashSet::new();
    for r in sent {
        if let RecordKind::Valid(ev) = &r.kind {
            by_trip.entry(&ev.trip_id).or_default().push(r);
            ids.insert(ev.event_id);
        }
    }
    let mut trips: Vec<&String> = cold
        .iter()
        .filter(|t| by_trip.contains_key(t.as_str()))
        .collect();
    trips.shuffle(rng);
    let hot: Vec<&String> = hot.iter().collect();
    let mut out = Vec::new();
    let mut c = LateCounts::default();
    let mut needed = BTreeSet::new();
    if trips.is_empty() {
        return Ok((out, c));
    }
    for i in 0..n {
        let trip = trips[i % trips.len()];
        let records = &by_trip[trip.as_str()];
        let orig = records[rng.random_range(0..records.len())];
        let RecordKind::Valid(ev) = &orig.kind else {
            unreachable!("by_trip holds valid records")
        };
        let last = records
            .iter()
            .filter_map(|r| match &r.kind {
                RecordKind::Valid(e) => Some(e.occurred_at),
                _ => None,
            })
            .max()
            .expect("a trip has an event");
        let rec = match i % 6 {
            0 | 2 => {
                let mut late = ev.clone();
                late.event_id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
                late.occurred_at = last + Duration::seconds(rng.random_range(60..=1_800));
                late.amount = Decimal::new(rng.random_range(1..=500), ev.currency.minor_units());
                if i % 6 == 0 {
                    late.event_type = EventType::Refund;
                    late.driver_id = None;
                    late.payout_id = None;
                    late.payment_id = Some(format!("late-refund-{tag}-{i}"));
                } else {
                    late.event_type = EventType::Adjustment;
                    late.payment_id = None;
                    late.payout_id = None;
                }
                ensure!(ids.insert(late.event_id), "late event id planned twice");
                c.late_events += 1;
                valid(trip, late.to_json())?
            }
            1 => {
                c.exact_resends += 1;
                Record {
                    kind: RecordKind::Duplicate(ev.event_id),
                    ..orig.clone()
                }
            }
            3 => {
                let mut v = ev.clone();
                v.amount += Decimal::new(1, ev.currency.minor_units());
                c.conflicting_resends += 1;
                conflicting(orig.key.clone(), v)
            }
            4 => {
                let mut copy = ev.clone();
                copy.trip_id = format!("late-{tag}-{i}");
                c.reused_on_new_trip += 1;
                conflicting(Some(copy.trip_id.clone().into_bytes()), copy)
            }
            _ => {
                let Some(other) = hot
                    .get(rng.random_range(0..hot.len().max(1)))
                    .filter(|h| **h != trip)
                else {
                    continue;
                };
                let mut copy = ev.clone();
                copy.trip_id = (*other).clone();
                c.reused_on_hot_trip += 1;
                conflicting(Some(other.as_bytes().to_vec()), copy)
            }
        };
        needed.insert(trip.clone());
        out.push(rec);
    }
    c.cold_trips_needed = needed.len() as u64;
    Ok((out, c))
}

fn conflicting(key: Option<Vec<u8>>, ev: Event) -> Record {
    Record {
        partition_hint: None,
        key,
        payload: ev.to_json(),
        kind: RecordKind::ConflictingDuplicate(ev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{TrafficSpec, build as plan, truth_jsonl};
    use rand::SeedableRng;

    #[test]
    fn late_records_are_modelled_like_the_rest_of_the_traffic() {
        let t = plan(&TrafficSpec {
            seed: 3,
            trips: 200,
            partitions: 2,
            hostile: vec![],
            order_safe: false,
            concurrent_trips: Some(16),
        })
        .unwrap();
        let all = candidates(&t.records);
        assert!(all.len() > 150, "{}", all.len());
        let cold: BTreeSet<String> = all.iter().take(40).cloned().collect();
        let hot: BTreeSet<String> = all.iter().skip(40).cloned().collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (late, c) = build(&t.records, &cold, &hot, 36, &mut rng, 7).unwrap();
        assert_eq!(late.len() as u64, c.records());
        assert_eq!(c.late_events, 12);
        assert_eq!((c.exact_resends, c.conflicting_resends), (6, 6));
        assert_eq!((c.reused_on_new_trip, c.reused_on_hot_trip), (6, 6));
        assert!(c.cold_trips_needed >= 30, "{c:?}");
        // Every copy's original holder left memory; a conflicting re-send stays on its trip.
        for r in &late {
            match &r.kind {
                RecordKind::Valid(ev) => {
                    assert!(cold.contains(&ev.trip_id));
                    assert_eq!(r.key.as_deref(), Some(ev.trip_id.as_bytes()));
                }
                RecordKind::Duplicate(_) => {}
                RecordKind::ConflictingDuplicate(ev) => {
                    assert!(
                        !ev.trip_id.starts_with("trip-")
                            || hot.contains(&ev.trip_id)
                            || cold.contains(&ev.trip_id)
                    );
                }
                RecordKind::Poison(_) => panic!("no bad record in the late phase"),
            }
        }
        // The files truth names the copies on other trips as event_id_reused.
        let mut all_records = t.records.clone();
        all_records.extend(late);
        let truth = String::from_utf8(truth_jsonl(&all_records)).unwrap();
        let reused = truth
            .lines()
            .filter(|l| l.contains(recon_schemas::decode::EVENT_ID_REUSED))
            .count();
        assert_eq!(reused, 12, "6 on new trips, 6 on trips in memory");
    }

    #[test]
    fn no_trip_left_memory_no_late_record() {
        let t = plan(&TrafficSpec {
            seed: 4,
            trips: 20,
            partitions: 1,
            hostile: vec![],
            order_safe: false,
            concurrent_trips: None,
        })
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (late, c) = build(
            &t.records,
            &BTreeSet::new(),
            &candidates(&t.records),
            20,
            &mut rng,
            1,
        )
        .unwrap();
        assert!(late.is_empty() && c.records() == 0);
    }
}
