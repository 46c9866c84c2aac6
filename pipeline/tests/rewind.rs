//! An explicit rewind to an older checkpoint rebuilds state by replay and writes nothing twice,
//! and gives every replayed record the decision its checkpoint committed (an event id reused
//! across partitions stays with the trip the tables gave it, whatever order the replay reads).

mod support;

use std::str::FromStr;

use rdkafka::mocking::MockCluster;
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::checkpoint::manifest::EntryKind;
use recon_pipeline::config::{Config, RawCatalog, RawCheckpoint, RawConfig, RawSource};
use recon_pipeline::generate::RecordKind;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{checkpoint, demo, generate, lakehouse};
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType, SCHEMA_VERSION};
use rust_decimal::Decimal;
use support::run_until_idle;

/// A job on `topic` of the mock cluster, its catalog and checkpoints under `dir`.
fn config(brokers: &str, topic: &str, dir: &std::path::Path) -> Config {
    let d = RawConfig::default();
    Config::resolve(RawConfig {
        job_id: topic.into(),
        source: RawSource {
            brokers: brokers.to_string(),
            topic: topic.into(),
            poll_batch_records_max: 200,
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
            // The rewind target must survive the later runs' pruning.
            keep_last: 1_000,
            ..d.checkpoint
        },
        ..d
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_replays_state_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, records) = support::mock_topic("rw", 2, 1500, 3);
    let brokers = cluster.bootstrap_servers();
    let (first, second) = records.split_at(records.len() / 2);
    // Two runs over the first half, so the rewind target (the head after the first run) is
    // behind the head whatever the checkpoint timing: one run can read a half in one interval.
    let (first_a, first_b) = first.split_at(first.len() / 2);
    let mut expected = Expected::default();
    demo::publish(&brokers, "rw", first_a, &mut expected).unwrap();

    let cfg = config(&brokers, "rw", dir.path());
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    run_until_idle(&cfg, catalog.clone()).await.unwrap();
    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let after_a = log.head().await.unwrap().expect("a checkpoint");
    assert!(
        !after_a.manifest.partitions.is_empty(),
        "the first run read"
    );
    demo::publish(&brokers, "rw", first_b, &mut expected).unwrap();
    run_until_idle(&cfg, catalog.clone()).await.unwrap();

    // Rewind to where the first run stopped: the second run's records are replayed.
    let target = after_a.entry.checkpoint_id;
    let claimed = log
        .claim(Some((target, "test rewind".into())))
        .await
        .unwrap();
    assert!(matches!(claimed.entry.kind, EntryKind::Rewind { to, .. } if to == target));
    assert!(!claimed.manifest.replay_until.is_empty());

    demo::publish(&brokers, "rw", second, &mut expected).unwrap();
    let report = run_until_idle(&cfg, catalog.clone()).await.unwrap();
    assert!(
        report.replayed > 0,
        "the rewind must replay records into state"
    );
    let rec = reconcile::check(catalog.as_ref(), &cfg, &expected)
        .await
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    drop(cluster);
}

/// A charge of `cents` on `trip`, published to `partition`.
fn charge(
    id: u128,
    trip: &str,
    cents: i64,
    partition: i32,
    kind: fn(Event) -> RecordKind,
) -> generate::Record {
    let ev = Event {
        event_id: uuid::Uuid::from_u128(id),
        event_type: EventType::TripCharge,
        trip_id: trip.to_string(),
        amount: Decimal::new(cents, 2),
        currency: Currency::EUR,
        occurred_at: chrono::DateTime::from_str("2025-03-03T12:00:00Z").unwrap(),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: SCHEMA_VERSION,
    };
    generate::Record {
        partition_hint: Some(partition),
        key: Some(trip.as_bytes().to_vec()),
        payload: ev.to_json(),
        kind: kind(ev),
    }
}

/// The job read id 7 on trip A (partition 0) first and dead-lettered its copy on trip B
/// (partition 1) as `event_id_reused`. A rewind to before both replays them in another order
/// (20,000 partition-0 records stand before A, the copy is partition 1's first new
/// record): the replay must still leave the id with A, so that the rows written after the
/// rewind hold A's charge on A and nothing of it on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_keeps_each_reused_id_where_the_tables_put_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("rr", 2, 1).unwrap();
    let cfg = config(&brokers, "rr", dir.path());
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    let mut expected = Expected::default();
    let mut id = 1_000u128;
    let mut next = || {
        id += 1;
        id
    };
    let valid = RecordKind::Valid;
    let first = [
        charge(next(), "trip-a", 100, 0, valid),
        charge(next(), "trip-b", 200, 1, valid),
    ];
    demo::publish(&brokers, "rr", &first, &mut expected).unwrap();
    run_until_idle(&cfg, catalog.clone()).await.unwrap();
    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let target = log
        .head()
        .await
        .unwrap()
        .expect("a checkpoint")
        .entry
        .checkpoint_id;

    let mut second: Vec<generate::Record> = (0..20_000)
        .map(|i| charge(next(), &format!("filler-{i}"), 1, 0, valid))
        .collect();
    second.push(charge(7, "trip-a", 1_234, 0, valid));
    demo::publish(&brokers, "rr", &second, &mut expected).unwrap();
    run_until_idle(&cfg, catalog.clone()).await.unwrap();
    let third = [charge(
        7,
        "trip-b",
        1_234,
        1,
        RecordKind::ConflictingDuplicate,
    )];
    demo::publish(&brokers, "rr", &third, &mut expected).unwrap();
    run_until_idle(&cfg, catalog.clone()).await.unwrap();

    log.claim(Some((target, "test rewind".into())))
        .await
        .unwrap();
    // New events on both trips: the rows written after the replay show its state.
    let fourth = [
        charge(next(), "trip-a", 1, 0, valid),
        charge(next(), "trip-b", 1, 1, valid),
    ];
    demo::publish(&brokers, "rr", &fourth, &mut expected).unwrap();
    let report = run_until_idle(&cfg, catalog.clone()).await.unwrap();
    assert!(report.replayed > 20_000, "replayed {}", report.replayed);
    let latest = reconcile::latest_balances(catalog.as_ref(), &cfg)
        .await
        .unwrap();
    let charged = |trip: &str| latest[trip].1[0];
    assert_eq!(
        charged("trip-a"),
        Decimal::new(1_335, 2),
        "A: 1.00 + 12.34 + 0.01"
    );
    assert_eq!(
        charged("trip-b"),
        Decimal::new(201, 2),
        "B: 2.00 + 0.01, never the copy"
    );
    let rec = reconcile::check(catalog.as_ref(), &cfg, &expected)
        .await
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    drop(cluster);
}
