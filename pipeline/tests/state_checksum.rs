//! A state file changed after its checkpoint recorded it is never restored (issue 13, finding 9:
//! a state file edited in place was restored, and a re-sent event was accepted again).

mod support;

use clap::Parser;
use rdkafka::mocking::MockCluster;
use recon_pipeline::checkpoint::log::{CheckpointLog, LogError};
use recon_pipeline::config::{Config, RawCatalog, RawCheckpoint, RawConfig, RawSource};
use recon_pipeline::job::JobError;
use recon_pipeline::reconcile::Expected;
use recon_pipeline::state::{State, codec};
use recon_pipeline::{checkpoint, demo, generate, lakehouse};
use support::{Wrap, run_until_idle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_state_file_stops_the_job_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("sc", 1, 1).unwrap();
    let args = Wrap::parse_from(["g", "--topic", "sc", "--trips", "200", "--partitions", "1"]).args;
    let (traffic, _, _) = args.resolve().unwrap();
    let records: Vec<generate::Record> = generate::plan(&traffic).collect();
    demo::publish(&brokers, "sc", &records, &mut Expected::default()).unwrap();

    let d = RawConfig::default();
    let cfg = Config::resolve(RawConfig {
        job_id: "sc".into(),
        source: RawSource {
            brokers: brokers.clone(),
            topic: "sc".into(),
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
            ..d.checkpoint
        },
        ..d
    })
    .unwrap();
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    run_until_idle(&cfg, catalog.clone()).await.unwrap();
    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let head = log.head().await.unwrap().expect("a checkpoint");
    assert_eq!(
        head.manifest.state_sha256.len(),
        head.manifest.state_chain.len(),
        "every state file has a checksum"
    );

    // Edit the largest state file of the chain in place: an empty one of the same kind decodes
    // fine and forgets the event ids it held, so a re-sent event would be accepted again.
    let file = |rel: &str| dir.path().join("ck").join("sc").join(rel);
    let (i, rel) = head
        .manifest
        .state_chain
        .iter()
        .enumerate()
        .max_by_key(|(_, rel)| std::fs::metadata(file(rel)).unwrap().len())
        .map(|(i, rel)| (i, rel.clone()))
        .unwrap();
    let empty = if i == 0 {
        codec::encode_full(&State::default())
    } else {
        codec::encode_delta(std::iter::empty(), std::iter::empty())
    };
    assert_ne!(
        std::fs::read(file(&rel)).unwrap(),
        empty,
        "the edit changes the file"
    );
    std::fs::write(file(&rel), empty).unwrap();

    for _ in 0..2 {
        let e = run_until_idle(&cfg, catalog.clone()).await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, JobError::Log(LogError::StateChecksum { path, .. }) if *path == rel),
            "{text}"
        );
        let expected = &head.manifest.state_sha256[&rel];
        assert!(
            text.contains(&rel)
                && text.contains(expected)
                && text.contains("rewind --to-checkpoint"),
            "{text}"
        );
        // Nothing written: the head is the same at every start.
        let now = log.head().await.unwrap().unwrap();
        assert_eq!(now.entry.checkpoint_id, head.entry.checkpoint_id);
    }
    drop(cluster);
}
