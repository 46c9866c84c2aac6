//! Bounded state end to end (mock cluster, SQLite catalog, local store): settled and idle trips
//! leave memory into cold runs listed by the checkpoint; after a restart (with the local working
//! copy gone, so the runs come back from the checkpoint store), late events, exact re-sends and
//! a copy of an evicted trip's event id on another trip give exactly the result they would
//! have given had nothing left memory. The state chain is folded in the background meanwhile,
//! and the restart restores from the folded file.

mod support;

use clap::Parser;
use rdkafka::mocking::MockCluster;
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::config::{Config, RawCatalog, RawCheckpoint, RawConfig, RawSource, RawState};
use recon_pipeline::generate::RecordKind;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::state::{State, codec};
use recon_pipeline::{checkpoint, demo, generate, lakehouse};
use support::{Wrap, run_until_idle};

fn config(brokers: &str, dir: &std::path::Path, cold: &std::path::Path) -> Config {
    let d = RawConfig::default();
    Config::resolve(RawConfig {
        job_id: "bounded".into(),
        source: RawSource {
            brokers: brokers.to_string(),
            topic: "bs".into(),
            poll_batch_records_max: 300,
            ..d.source
        },
        catalog: RawCatalog {
            uri: format!("sqlite://{}/catalog.db?mode=rwc", dir.display()),
            warehouse: format!("file://{}/warehouse", dir.display()),
            ..d.catalog
        },
        checkpoint: RawCheckpoint {
            store: dir.join("ck").display().to_string(),
            interval_ms: 100,
            // The chain is folded in the background every 3 deltas (job/compaction.rs).
            full_state_every: 3,
            // Few kept checkpoints: pruning runs often, and a kept checkpoint's chain may start
            // in a directory the head's chain no longer reads.
            keep_last: 2,
            ..d.checkpoint
        },
        state: RawState {
            evict_settled_after_ms: 60_000,
            evict_idle_after_ms: 4 * 3_600_000,
            evict_scan_per_barrier: 500,
            cold_dir: cold.display().to_string(),
            ..d.state
        },
        ..d
    })
    .unwrap()
}

/// The trips in memory at the head checkpoint.
async fn hot_trips(cfg: &Config) -> (State, usize, Vec<String>) {
    let (store, prefix) = checkpoint::store::open(cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let head = log.head().await.unwrap().expect("a checkpoint");
    let mut s = State::default();
    for (i, (rel, bytes)) in log
        .read_state_chain(&head.manifest)
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        codec::apply_file(&mut s, rel, bytes, i == 0).unwrap();
    }
    (
        s,
        head.manifest.cold_runs.len(),
        head.manifest.state_chain.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_trips_come_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cold = dir.path().join("cold-1");
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("bs", 3, 1).unwrap();
    let args = Wrap::parse_from([
        "g",
        "--topic",
        "bs",
        "--trips",
        "2000",
        "--partitions",
        "3",
        "--seed",
        "11",
    ])
    .args;
    let (traffic, _, _) = args.resolve().unwrap();
    let records: Vec<generate::Record> = generate::plan(&traffic).collect();
    let mut expected = Expected::default();
    demo::publish(&brokers, "bs", &records, &mut expected).unwrap();
    let cfg = config(&brokers, dir.path(), &cold);
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    let first = run_until_idle(&cfg, catalog.clone()).await.unwrap();
    assert!(first.evicted > 100, "trips left memory: {}", first.evicted);
    assert!(first.compactions >= 1, "the chain was folded: {first:?}");
    let (hot, runs, chain) = hot_trips(&cfg).await;
    assert!(runs >= 1, "the head lists cold runs");
    assert!(
        chain[0].ends_with("/state-base.bin"),
        "the head's chain starts with a folded file: {chain:?}"
    );

    // Later input for trips that left: an exact re-send, a late refund, and the id of an
    // evicted trip's charge copied onto a new trip.
    // One event each of 40 trips that left memory.
    let mut trips = std::collections::HashSet::new();
    let gone: Vec<&recon_schemas::event::Event> = records
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::Valid(ev) if hot.get(&ev.trip_id).is_none() => Some(ev),
            _ => None,
        })
        .filter(|ev| trips.insert(ev.trip_id.clone()))
        .take(40)
        .collect();
    assert_eq!(gone.len(), 40);
    let mut later = Vec::new();
    for (i, ev) in gone.iter().enumerate() {
        let original = records
            .iter()
            .find(|r| matches!(&r.kind, RecordKind::Valid(e) if e.event_id == ev.event_id))
            .unwrap();
        match i % 3 {
            0 => later.push(generate::Record {
                kind: RecordKind::Duplicate(ev.event_id),
                ..original.clone()
            }),
            1 => {
                let mut late = (*ev).clone();
                late.event_id = uuid::Uuid::from_u128(0x5eed_0000 + i as u128);
                late.event_type = recon_schemas::event::EventType::Refund;
                late.amount = rust_decimal::Decimal::new(123, 2);
                later.push(generate::Record {
                    partition_hint: original.partition_hint,
                    key: original.key.clone(),
                    payload: late.to_json(),
                    kind: RecordKind::Valid(late),
                });
            }
            _ => {
                let mut copy = (*ev).clone();
                copy.trip_id = format!("copy-of-{}", ev.trip_id);
                later.push(generate::Record {
                    partition_hint: None,
                    key: Some(copy.trip_id.as_bytes().to_vec()),
                    payload: copy.to_json(),
                    kind: RecordKind::ConflictingDuplicate(copy),
                });
            }
        }
    }
    demo::publish(&brokers, "bs", &later, &mut expected).unwrap();
    // What crashes leave behind, planted: a merged run never taken in, in the directory of a
    // pruned checkpoint; the delta and run of a barrier whose manifest was never written;
    // local copies no checkpoint lists. And what must stay: a newer generation's files, a
    // file in the local directory that is not the tier's.
    let root = dir.path().join("ck").join("bounded");
    let (_, ckpt_gen) = checkpoint::manifest::parse_checkpoint_dir(&chain[chain.len() - 1])
        .expect("a checkpoint directory");
    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let present = log.ids_after(None).await.unwrap();
    let head_id = *present.last().unwrap();
    assert!(present[0].0 > 1, "checkpoint 1 was pruned: {present:?}");
    let dir_of = |id: u64, g: u64| {
        checkpoint::manifest::checkpoint_dir(
            recon_pipeline::ids::CheckpointId(id),
            recon_pipeline::ids::Generation(g),
        )
    };
    let planted = [
        format!("{}/cold-merge.run", dir_of(1, ckpt_gen.0)),
        format!("{}/state.bin", dir_of(head_id.0 + 1, ckpt_gen.0)),
        format!("{}/cold-0.run", dir_of(head_id.0 + 1, ckpt_gen.0)),
    ];
    let newer = format!("{}/state.bin", dir_of(head_id.0 + 1, 1_000));
    for p in planted.iter().chain([&newer]) {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"left by a crash").unwrap();
    }
    let cold2 = dir.path().join("cold-2");
    std::fs::create_dir_all(&cold2).unwrap();
    let stale_local = [
        format!("{}.run", "ab".repeat(32)),
        format!("{}.tmp", "cd".repeat(32)),
    ];
    for name in stale_local.iter().chain([&"notes.txt".to_string()]) {
        std::fs::write(cold2.join(name), b"x").unwrap();
    }
    // A restart on another machine: the local working copy is gone.
    let cfg2 = config(&brokers, dir.path(), &cold2);
    let second = run_until_idle(&cfg2, catalog.clone()).await.unwrap();
    for p in &planted {
        assert!(
            !root.join(p).exists(),
            "{p} was left by a crash and is still there"
        );
    }
    assert!(
        root.join(&newer).exists(),
        "a newer generation's file was deleted"
    );
    std::fs::remove_file(root.join(&newer)).unwrap();
    for name in &stale_local {
        assert!(
            !cold2.join(name).exists(),
            "stale local copy {name} is still there"
        );
    }
    assert!(
        cold2.join("notes.txt").exists(),
        "a file the tier did not write was deleted"
    );
    let rec = reconcile::check(catalog.as_ref(), &cfg2, &expected)
        .await
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert!(rec.balances_checked > 1_000, "{rec}");
    // Every cold run in the store is one a retained checkpoint lists, or one merged away that
    // waits for the checkpoints listing it to be pruned: nothing leaks.
    let (store, prefix) = checkpoint::store::open(&cfg2).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg2.job_id.clone());
    let mut listed = std::collections::HashSet::new();
    for id in log.ids_after(None).await.unwrap() {
        if let Some(c) = log.completed(id).await.unwrap() {
            listed.extend(c.manifest.cold_runs.iter().map(|r| r.path.clone()));
            listed.extend(c.manifest.cold_retired.iter().map(|r| r.path.clone()));
        }
    }
    // Every checkpoint the log keeps can be restored (a rewind reads its chain).
    for id in log.ids_after(None).await.unwrap() {
        let c = log.completed(id).await.unwrap().unwrap();
        log.read_state_chain(&c.manifest)
            .await
            .unwrap_or_else(|e| panic!("checkpoint {id} is kept but its state is not: {e}"));
    }
    let on_disk: Vec<String> = walk(&dir.path().join("ck").join("bounded"))
        .into_iter()
        .filter(|p| p.ends_with(".run"))
        .collect();
    assert!(!on_disk.is_empty());
    for p in &on_disk {
        assert!(
            listed.contains(p),
            "{p} is in the store but no checkpoint lists it"
        );
    }
    assert!(
        second.brought_back >= 40,
        "every later record needed a trip that had left: {}",
        second.brought_back
    );
    drop(cluster);
}

/// Files under `root`, relative to it.
fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap();
                out.push(rel.display().to_string());
            }
        }
    }
    out
}

/// A valid record of `ev`, keyed by its trip.
fn record(ev: recon_schemas::event::Event) -> generate::Record {
    generate::Record {
        partition_hint: None,
        key: Some(ev.trip_id.as_bytes().to_vec()),
        payload: ev.to_json(),
        kind: RecordKind::Valid(ev),
    }
}

/// Event `n` (0..4: charge, payment, payout, fee; a BALANCED trip) of trip `t`, at `hour`.
fn trip_event(t: u32, n: u8, hour: i64) -> recon_schemas::event::Event {
    use recon_schemas::event::EventType::*;
    let (kind, cents) = [
        (TripCharge, 2_000),
        (RiderPayment, 2_000),
        (DriverPayout, 1_600),
        (PlatformFee, 400),
    ][n as usize];
    recon_schemas::event::Event {
        event_id: uuid::Uuid::from_u128(u128::from(t) << 8 | u128::from(n)),
        event_type: kind,
        trip_id: format!("h-{t}"),
        amount: rust_decimal::Decimal::new(cents, 2),
        currency: recon_schemas::currency::Currency::USD,
        occurred_at: chrono::DateTime::from_timestamp(1_764_000_000, 0).unwrap()
            + chrono::Duration::hours(hour)
            + chrono::Duration::minutes(i64::from(n)),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_beyond_the_horizon_are_dead_lettered_never_summed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("bs", 3, 1).unwrap();
    // 100 balanced trips, one an hour: the high-water mark ends at hour 99.
    let first: Vec<generate::Record> = (0..100u32)
        .flat_map(|t| (0..4).map(move |n| record(trip_event(t, n, i64::from(t)))))
        .collect();
    let mut expected = Expected::default();
    demo::publish(&brokers, "bs", &first, &mut expected).unwrap();
    let mut cfg = config(&brokers, dir.path(), &dir.path().join("cold"));
    cfg.state.late_horizon_ms = 24 * 3_600_000;
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    let run1 = run_until_idle(&cfg, catalog.clone()).await.unwrap();
    assert!(run1.evicted > 50, "closed and settled trips left: {run1:?}");

    // Later: beyond the horizon (hour 75): an event of a closed trip stamped now, an exact
    // re-send of an old event, and a new trip's event from hour 10. Within it: a late refund.
    let mut closed = trip_event(0, 0, 99);
    closed.event_id = uuid::Uuid::from_u128(0xc105ed);
    let resent = trip_event(1, 0, 1);
    let mut old_new_trip = trip_event(500, 0, 10);
    old_new_trip.trip_id = "h-new".into();
    let mut refund = trip_event(98, 0, 99);
    refund.event_id = uuid::Uuid::from_u128(0x4ef0);
    refund.event_type = recon_schemas::event::EventType::Refund;
    let late = [closed, resent, old_new_trip].map(record);
    let mut ignored = Expected::default();
    demo::publish(&brokers, "bs", &late, &mut ignored).unwrap();
    expected.records += late.len() as u64;
    expected.beyond_horizon += late.len() as u64;
    demo::publish(&brokers, "bs", &[record(refund)], &mut expected).unwrap();

    let run2 = run_until_idle(&cfg, catalog.clone()).await.unwrap();
    let rec = reconcile::check(catalog.as_ref(), &cfg, &expected)
        .await
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert!(
        run2.brought_back >= 1,
        "the closed trip came back to be judged"
    );
    let rejected = recon_pipeline::lakehouse::scan(
        catalog.as_ref(),
        &recon_pipeline::lakehouse::table_ident(&cfg, "rejected_events"),
        &["reason", "trip_id"],
    )
    .await
    .unwrap();
    let mut late_trips = Vec::new();
    for b in &rejected {
        use arrow_array::cast::AsArray;
        let (reason, trip) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            assert_eq!(reason.value(i), "beyond_horizon");
            late_trips.push(trip.value(i).to_string());
        }
    }
    late_trips.sort();
    assert_eq!(late_trips, ["h-0", "h-1", "h-new"]);
    drop(cluster);
}
