//! Copies of accepted events under another trip's id and key (hostile class
//! `event_id_reused_on_another_trip`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::ensure;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use recon_pipeline::generate::{Record, RecordKind};

use super::insert_after;

/// The partition librdkafka's default partitioner (`consistent_random`: CRC-32 of the key)
/// gives a keyed record; the publisher sets no partitioner.
pub fn key_partition(key: &[u8], partitions: i32) -> i32 {
    (crc32fast::hash(key) % partitions.max(1) as u32) as i32
}

/// Adds copies of up to three accepted events under another trip's id and key, each after its
/// original and on the same partition (the other trip is chosen by its key's partition), so
/// the job reads the original first whatever the order it reads partitions in. Returns the
/// records added.
pub(super) fn reused_ids(
    records: &mut Vec<Record>,
    rng: &mut ChaCha8Rng,
    partitions: i32,
) -> anyhow::Result<u64> {
    let mut trips_by_partition: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
    for r in records.iter() {
        if let (RecordKind::Valid(ev), Some(k), None) = (&r.kind, &r.key, r.partition_hint) {
            trips_by_partition
                .entry(key_partition(k, partitions))
                .or_default()
                .insert(ev.trip_id.clone());
        }
    }
    let mut added = 0;
    for _ in 0..3 {
        let valid_at: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches!(r.kind, RecordKind::Valid(_))
                    && r.key.is_some()
                    && r.partition_hint.is_none()
            })
            .map(|(i, _)| i)
            .collect();
        ensure!(valid_at.len() > 10, "too little traffic for reused ids");
        let i = valid_at[rng.random_range(0..valid_at.len())];
        let RecordKind::Valid(ev) = &records[i].kind else {
            unreachable!()
        };
        let p = key_partition(records[i].key.as_deref().unwrap_or_default(), partitions);
        let others: Vec<&String> = trips_by_partition
            .get(&p)
            .into_iter()
            .flatten()
            .filter(|t| **t != ev.trip_id)
            .collect();
        let Some(other) = others.get(rng.random_range(0..others.len().max(1))) else {
            continue;
        };
        let mut copy = ev.clone();
        copy.trip_id = (*other).clone();
        let rec = Record {
            partition_hint: None,
            key: Some(other.as_bytes().to_vec()),
            payload: copy.to_json(),
            kind: RecordKind::ConflictingDuplicate(copy),
        };
        insert_after(records, rng, i, rec);
        added += 1;
    }
    Ok(added)
}
