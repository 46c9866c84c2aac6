//! An explicit rewind to an older checkpoint rebuilds state by replay and writes nothing twice.

use std::time::Duration;

use clap::Parser;
use rdkafka::mocking::MockCluster;
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::checkpoint::manifest::EntryKind;
use recon_pipeline::config::{Config, RawCatalog, RawCheckpoint, RawConfig, RawSource};
use recon_pipeline::generate::GenerateArgs;
use recon_pipeline::job::{self, CrashPlan, JobEnv};
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{checkpoint, demo, generate, lakehouse};

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    args: GenerateArgs,
}

async fn run(cfg: &Config, catalog: std::sync::Arc<dyn iceberg::Catalog>) -> job::RunReport {
    let (store, prefix) = checkpoint::store::open(cfg).unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let env = JobEnv {
        catalog,
        store,
        store_prefix: prefix,
        crash: CrashPlan::default(),
        shutdown: rx,
        idle_exit: Some(Duration::from_millis(1500)),
    };
    job::run(cfg, env).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_replays_state_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("rw", 2, 1).unwrap();
    let args = Wrap::parse_from([
        "g",
        "--topic",
        "rw",
        "--trips",
        "1500",
        "--partitions",
        "2",
        "--seed",
        "3",
    ])
    .args;
    let (traffic, _, _) = args.resolve().unwrap();
    let records: Vec<generate::Record> = generate::plan(&traffic).collect();
    let (first, second) = records.split_at(records.len() / 2);
    // Two runs over the first half, so the rewind target (the head after the first run) is
    // behind the head whatever the checkpoint timing: one run can read a half in one interval.
    let (first_a, first_b) = first.split_at(first.len() / 2);
    let mut expected = Expected::default();
    demo::publish(&brokers, "rw", first_a, &mut expected).unwrap();

    let d = RawConfig::default();
    let cfg = Config::resolve(RawConfig {
        job_id: "rw".into(),
        source: RawSource {
            brokers: brokers.clone(),
            topic: "rw".into(),
            poll_batch_records_max: 200,
            ..d.source
        },
        catalog: RawCatalog {
            uri: format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display()),
            warehouse: format!("file://{}/warehouse", dir.path().display()),
            ..d.catalog
        },
        checkpoint: RawCheckpoint {
            store: dir.path().join("ck").display().to_string(),
            interval_ms: 100,
            // The rewind target must survive the second run's pruning.
            keep_last: 1_000,
            ..d.checkpoint
        },
        ..d
    })
    .unwrap();
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    run(&cfg, catalog.clone()).await;
    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let after_a = log.head().await.unwrap().expect("a checkpoint");
    assert!(
        !after_a.manifest.partitions.is_empty(),
        "the first run read"
    );
    demo::publish(&brokers, "rw", first_b, &mut expected).unwrap();
    run(&cfg, catalog.clone()).await;

    // Rewind to where the first run stopped: the second run's records are replayed.
    let target = after_a.entry.checkpoint_id;
    let claimed = log
        .claim(Some((target, "test rewind".into())))
        .await
        .unwrap();
    assert!(matches!(claimed.entry.kind, EntryKind::Rewind { to, .. } if to == target));
    assert!(!claimed.manifest.replay_until.is_empty());

    demo::publish(&brokers, "rw", second, &mut expected).unwrap();
    let report = run(&cfg, catalog.clone()).await;
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
