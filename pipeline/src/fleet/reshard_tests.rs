//! A reshard's share of each new task: offsets and marks of its partitions only, and every
//! cold trip in exactly the new task of its partition, newest record kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::share;
use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::manifest::{Manifest, PartitionCut};
use crate::checkpoint::store::ObjectCheckpointStore;
use crate::cold::ColdLookup;
use crate::cold::merge::tests::charge as event;
use crate::cold::runs::ColdTier;
use crate::ids::{CheckpointId, Generation, JobId, Offset, PartitionId};
use crate::state::codec;
use crate::state::evict::{EvictPolicy, trip_key};
use crate::state::{State, event_key};

fn cut(end: i64) -> PartitionCut {
    PartitionCut {
        start: Offset(end - 10),
        end: Offset(end),
        records: 10,
        last: None,
    }
}

#[test]
fn a_share_holds_its_partitions_and_the_lowest_contributing_watermark() {
    let job = JobId::new("j").unwrap();
    // K = 2 over 6 partitions: task 0 has 0, 2, 4; task 1 has 1, 3, 5.
    let mut a = Manifest::empty(job.clone(), CheckpointId(7), Generation(2));
    let mut b = Manifest::empty(job.clone(), CheckpointId(9), Generation(1));
    for p in [0, 2, 4] {
        a.partitions.insert(PartitionId(p), cut(100 + i64::from(p)));
        a.partition_event_time_us.insert(p, 1_000 + i64::from(p));
    }
    for p in [1, 3, 5] {
        b.partitions.insert(PartitionId(p), cut(200 + i64::from(p)));
        b.partition_event_time_us.insert(p, 2_000 + i64::from(p));
    }
    a.replay_until.insert(PartitionId(2), Offset(90));
    (a.high_water_us, a.watermark_us) = (Some(5_000), Some(1_000));
    (b.high_water_us, b.watermark_us) = (Some(6_000), Some(2_001));
    let mut record = Manifest::empty(job.clone(), CheckpointId(30), Generation(3));
    record.input_epoch = 2;
    let heads = [&a, &b];
    // K' = 3: task 2 has partitions 2 and 5, one from each old task.
    let m = share(
        job.task(2).unwrap(),
        (CheckpointId(10), Generation(1)),
        (2, 3),
        &heads,
        &record,
    );
    assert_eq!(
        m.partitions.keys().map(|p| p.0).collect::<Vec<_>>(),
        vec![2, 5]
    );
    assert_eq!(
        m.partitions[&PartitionId(2)].start,
        Offset(102),
        "continued"
    );
    assert_eq!(m.partitions[&PartitionId(2)].end, Offset(102));
    assert_eq!(m.partitions[&PartitionId(5)].records, 0);
    assert_eq!(
        m.partition_event_time_us,
        BTreeMap::from([(2, 1_002), (5, 2_005)])
    );
    assert_eq!(
        m.replay_until,
        BTreeMap::from([(PartitionId(2), Offset(90))])
    );
    assert_eq!(m.high_water_us, Some(6_000));
    assert_eq!(m.watermark_us, Some(1_000), "never later than a source's");
    assert_eq!((m.checkpoint_id, m.input_epoch), (CheckpointId(10), 2));
    assert!(m.pending.is_empty() && m.state_chain.is_empty() && m.fleet_tasks.is_empty());
    // A source without a watermark: none.
    b.watermark_us = None;
    let m = share(
        job.clone(),
        (CheckpointId(10), Generation(1)),
        (2, 3),
        &[&a, &b],
        &record,
    );
    assert_eq!(m.watermark_us, None);
    // Task 0 of 3 (partitions 0 and 3).
    let m = share(
        job,
        (CheckpointId(10), Generation(1)),
        (0, 3),
        &[&a, &b],
        &record,
    );
    assert_eq!(
        m.partitions.keys().map(|p| p.0).collect::<Vec<_>>(),
        vec![0, 3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cold_tier_is_split_by_partition_keeping_the_newest_record() {
    let root = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(root.path()).unwrap();
    let store = Arc::new(ObjectCheckpointStore::new(Arc::new(fs)));
    let policy = EvictPolicy {
        settled_after_us: None,
        idle_after_us: Some(0),
        horizon_us: None,
        scan_per_barrier: 10_000,
    };
    // Old K = 2 over 6 partitions; trip t lives on partition t mod 6.
    let mut sources = Vec::new();
    for old in 0..2u32 {
        let log = CheckpointLog::new(
            store.clone(),
            "",
            JobId::new("j").unwrap().task(old).unwrap(),
        );
        let mut tier = ColdTier::open(
            &log,
            &root.path().join(format!("o{old}")),
            &[],
            &[],
            1 << 30,
        )
        .await
        .unwrap();
        let mut state = State::default();
        let trips: Vec<u32> = (0..60).filter(|t| (t % 6) % 2 == old).collect();
        for (round, cents) in [(1u64, 100i64), (2, 250)] {
            // Round 2 sends every third trip again: its newer record must win.
            for t in trips.iter().filter(|t| round == 1 || *t % 3 == 0) {
                let id = u128::from(*t) * 10 + u128::from(round);
                state.apply(&event(*t, id, cents), (*t % 6) as i32).unwrap();
            }
            state.take_changed();
            let out = state.evict(i64::MAX, &policy);
            tier.add(&log, CheckpointId(round), Generation(1), &out)
                .await
                .unwrap();
        }
        assert_eq!(tier.refs().len(), 2);
        sources.push((log, tier.refs()));
    }
    let targets: Vec<CheckpointLog> = (0..3u32)
        .map(|t| {
            CheckpointLog::new(
                store.clone(),
                "",
                JobId::new("j.r5-3").unwrap().task(t).unwrap(),
            )
        })
        .collect();
    let src: Vec<(&CheckpointLog, &[crate::cold::runs::RunRef])> =
        sources.iter().map(|(l, r)| (l, r.as_slice())).collect();
    // Target 1's share was written by an earlier attempt: nothing is written for it.
    let to: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, l)| (i != 1).then_some((l, CheckpointId(3), Generation(1))))
        .collect();
    let refs =
        crate::cold::split::split(&src, &root.path().join("split"), &to, |p| (p % 3) as usize)
            .await
            .unwrap();
    assert!(refs[1].is_empty(), "a target already written is skipped");
    for new in [0usize, 2] {
        assert_eq!(refs[new].len(), 1);
        let mut tier = ColdTier::open(
            &targets[new],
            &root.path().join(format!("n{new}")),
            &refs[new],
            &[],
            1 << 30,
        )
        .await
        .unwrap();
        assert_eq!(
            tier.records(),
            20,
            "the 20 trips of partitions {new} and {}",
            new + 3
        );
        for t in 0..60u32 {
            let recs = tier
                .trip_records(trip_key(&format!("trip-{t}")))
                .await
                .unwrap();
            let mine = (t % 6) as usize % 3 == new;
            assert_eq!(recs.len(), usize::from(mine), "trip {t} in new task {new}");
            if mine {
                let (_, balance, seen, partition) = codec::decode_trip("x", &recs[0].1).unwrap();
                assert_eq!(partition as u32, t % 6);
                let again = t % 3 == 0;
                assert_eq!(balance.events, 1, "trip {t}: one event per record");
                let want = if again { 250 } else { 100 };
                assert_eq!(
                    balance.charged,
                    rust_decimal::Decimal::new(want, 2),
                    "trip {t}: the newest record"
                );
                let id = u128::from(t) * 10 + if again { 2 } else { 1 };
                assert!(
                    seen.iter()
                        .any(|(k, _)| *k == event_key(&uuid::Uuid::from_u128(id)))
                );
                let holders = tier
                    .id_holders(event_key(&uuid::Uuid::from_u128(id)))
                    .await
                    .unwrap();
                assert!(
                    holders.contains(&trip_key(&format!("trip-{t}"))),
                    "trip {t}: its id"
                );
            }
        }
    }
}

/// The log entry of a reshard reads back (its kind is flattened into the entry: a map with
/// integer keys would not).
#[test]
fn a_reshard_entry_round_trips() {
    use crate::checkpoint::manifest::{EntryKind, FORMAT_VERSION, LogEntry};
    let entry = LogEntry {
        format: FORMAT_VERSION,
        job_id: JobId::new("j").unwrap(),
        checkpoint_id: CheckpointId(5),
        generation: Generation(3),
        kind: EntryKind::Reshard {
            from_tasks: 8,
            to_tasks: 3,
            sources: vec![(0, CheckpointId(4)), (7, CheckpointId(2))],
            reason: "r".into(),
        },
        manifest: "ckpt/x/manifest.json".into(),
        manifest_sha256: "0".repeat(64),
        completed_at: chrono::Utc::now(),
    };
    let text = serde_json::to_string(&entry).unwrap();
    assert!(text.contains(r#""kind":"reshard""#), "{text}");
    let back: LogEntry = serde_json::from_str(&text).unwrap();
    assert_eq!(back, entry);
}
