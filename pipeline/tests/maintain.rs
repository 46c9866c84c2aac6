//! `maintain` on the embedded parts (mock Kafka, SQLite catalog, local warehouse): snapshots
//! expire but the job's marker stays, orphans go only when old, unreferenced and not pending,
//! and the restarted job commits its pending checkpoint once and reconciles exactly.
//! (The same against PostgreSQL + S3 + Kafka, and concurrently with a running job, is in
//! `tests/tests/maintain.rs`.)

mod support;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iceberg::Catalog;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use recon_pipeline::checkpoint::commit::marks_of;
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::config::{
    Config, RawCatalog, RawCheckpoint, RawConfig, RawSource, StoreLocation,
};
use recon_pipeline::crash::CrashPoint;
use recon_pipeline::job::{self, CrashPlan, JobEnv, JobError};
use recon_pipeline::maintain::{self, Options};
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{checkpoint, demo, lakehouse};

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn run(
    cfg: &Config,
    catalog: Arc<dyn Catalog>,
    crash: CrashPlan,
) -> Result<job::RunReport, JobError> {
    let (store, prefix) = checkpoint::store::open(cfg).unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let env = JobEnv {
        catalog,
        store,
        store_prefix: prefix,
        crash,
        shutdown: rx,
        idle_exit: Some(Duration::from_millis(1500)),
        fleet: None,
    };
    job::run(cfg, env).await
}

/// Writes `bytes` at `path` with its modification time `age` in the past.
fn file_aged(path: &Path, age: Duration) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"not really parquet").unwrap();
    age_file(path, age);
}

fn age_file(path: &Path, age: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

fn local(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").expect("a local warehouse"))
}

async fn snapshots(catalog: &dyn Catalog, cfg: &Config, table: &str) -> usize {
    let t = catalog
        .load_table(&lakehouse::table_ident(cfg, table))
        .await
        .unwrap();
    t.metadata().snapshots().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_keeps_markers_and_pending_files_and_the_restart_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, records) = support::mock_topic("mt", 2, 1500, 5);
    let brokers = cluster.bootstrap_servers();
    let third = records.len() / 3;
    let mut expected = Expected::default();

    let d = RawConfig::default();
    let cfg = Config::resolve(RawConfig {
        job_id: "mt".into(),
        source: RawSource {
            brokers: brokers.clone(),
            topic: "mt".into(),
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
            ..d.checkpoint
        },
        ..d
    })
    .unwrap();
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();

    // Two runs: a history of commits.
    for part in [&records[..third], &records[third..2 * third]] {
        demo::publish(&brokers, "mt", part, &mut expected).unwrap();
        run(&cfg, catalog.clone(), CrashPlan::default())
            .await
            .unwrap();
    }
    // A third run commits nothing by cadence and dies right after its third checkpoint became
    // durable: everything it read is in complete, uncommitted checkpoints.
    demo::publish(&brokers, "mt", &records[2 * third..], &mut expected).unwrap();
    let mut lazy = cfg.clone();
    lazy.commit.every_checkpoints = 1_000;
    lazy.commit.interval_ms_max = 600_000;
    let crashed = run(
        &lazy,
        catalog.clone(),
        CrashPlan::at(CrashPoint::AfterCheckpointDurable, 3),
    )
    .await;
    assert!(
        matches!(crashed, Err(JobError::SimulatedCrash(_))),
        "{crashed:?}"
    );

    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    // A newer process claimed its generation and died before publishing: the uncommitted
    // files are no longer the newest generation's; only the log protects them.
    log.claim(None).await.unwrap();
    let ledger = lakehouse::table_ident(&cfg, "ledger_events");
    let table = catalog.load_table(&ledger).await.unwrap();
    let marks_before = marks_of(&cfg.job_id, &table).unwrap();
    let mut pending: Vec<PathBuf> = Vec::new();
    for id in log.ids_after(marks_before.committed).await.unwrap() {
        let c = log.completed(id).await.unwrap().unwrap();
        for j in c
            .manifest
            .pending
            .get("ledger_events")
            .map_or(&[][..], |p| &p.files)
        {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            pending.push(local(v["file_path"].as_str().unwrap()));
        }
    }
    assert!(
        !pending.is_empty(),
        "the uncommitted checkpoints have data files"
    );
    // Old enough to go by age: only the log protects them.
    for p in &pending {
        age_file(p, 2 * DAY);
    }

    let root = local(table.metadata().location());
    let hex = "0123456789abcdef0123456789abcdef";
    let old_orphan = root.join("data/occurred_at_day=2025-03-03/stray-00000.parquet");
    let old_metadata = root.join("metadata/00999-stray.metadata.json");
    let old_ours = root.join(format!(
        "data/mt-g1-c00000000000000009999-{hex}-00000.parquet"
    ));
    let old_theirs = root.join(format!(
        "data/other-g1-c00000000000000000001-{hex}-00000.parquet"
    ));
    let young_orphan = root.join("data/young-00000.parquet");
    for p in [&old_orphan, &old_metadata, &old_ours, &old_theirs] {
        file_aged(p, 2 * DAY);
    }
    file_aged(&young_orphan, Duration::ZERO);

    // Another writer (think compaction) commits on top of the job's stamp.
    let stamped = table.metadata().current_snapshot_id();
    let tx = Transaction::new(&table);
    let tx = tx
        .fast_append()
        .set_snapshot_properties(HashMap::from([("writer".into(), "compaction".into())]))
        .apply(tx)
        .unwrap();
    tx.commit(catalog.as_ref()).await.unwrap();
    let before = snapshots(catalog.as_ref(), &cfg, "ledger_events").await;
    assert!(before >= 4, "a history to expire: {before} snapshots");
    let opts = Options {
        expire_older_than: Duration::ZERO,
        retain_last: NonZeroUsize::MIN,
        orphan_older_than: Duration::from_secs(3600),
        force_min_age: false,
        dry_run: true,
        now: chrono::Utc::now(),
    };

    // A dry run changes nothing but says what it would do.
    let dry = maintain::run(&cfg, catalog.clone(), &opts).await.unwrap();
    assert!(!dry.failed(), "{dry}");
    let t = &dry.tables[0];
    assert!(t.expiry.as_ref().unwrap().expire.len() >= 3, "{dry}");
    let would: HashSet<&str> = t.orphans.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        would.iter().any(|k| k.ends_with("stray-00000.parquet")),
        "{dry}"
    );
    assert_eq!(
        snapshots(catalog.as_ref(), &cfg, "ledger_events").await,
        before
    );
    assert!(old_orphan.exists());

    let report = maintain::run(
        &cfg,
        catalog.clone(),
        &Options {
            dry_run: false,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    println!("{report}");
    assert!(!report.failed(), "{report}");
    assert_eq!(report.tables.len(), 3);
    let t = &report.tables[0];
    let plan = t.expiry.as_ref().unwrap();
    let sweep = t.sweep.as_ref().unwrap();
    let after = catalog.load_table(&ledger).await.unwrap();
    assert_eq!(after.metadata().snapshots().len(), plan.kept);
    assert_eq!(plan.kept + plan.expire.len(), before);
    assert_eq!(
        marks_of(&cfg.job_id, &after).unwrap(),
        marks_before,
        "the marks are untouched"
    );
    // The stamp stays below the other writer's snapshot, and so do the job's marks.
    assert_eq!(plan.marker_snapshot, stamped);
    assert_eq!((plan.kept, plan.held_for_markers), (2, 1), "{report}");
    let current = after.metadata().current_snapshot().unwrap();
    assert_eq!(current.parent_snapshot_id(), stamped);
    for gone in [&old_orphan, &old_metadata, &old_ours] {
        assert!(!gone.exists(), "{} should be deleted", gone.display());
    }
    for kept in [&young_orphan, &old_theirs] {
        assert!(kept.exists(), "{} should be kept", kept.display());
    }
    for p in &pending {
        assert!(p.exists(), "pending file {} must survive", p.display());
    }
    assert!(
        sweep.deleted >= 3 && sweep.young >= 1 && sweep.other_job >= 1,
        "{report}"
    );
    assert_eq!(sweep.pending as usize, pending.len(), "{report}");
    assert_eq!(sweep.in_flight, 0, "{report}");
    assert!(sweep.referenced > 0, "{report}");
    // Every file the tables still reference is readable.
    let rows = lakehouse::scan(catalog.as_ref(), &ledger, &["event_id"])
        .await
        .unwrap();
    assert!(rows.iter().map(|b| b.num_rows()).sum::<usize>() > 0);

    // The restart commits the pending checkpoint once; the tables are exact.
    let r = run(&cfg, catalog.clone(), CrashPlan::default())
        .await
        .unwrap();
    assert!(r.commits > 0);
    let rec = reconcile::check(catalog.as_ref(), &cfg, &expected)
        .await
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    let rows = rec.ledger_rows;

    // Maintain again (nothing pending now), restart with no new input: nothing re-committed.
    let again = maintain::run(
        &cfg,
        catalog.clone(),
        &Options {
            dry_run: false,
            now: chrono::Utc::now(),
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert!(!again.failed(), "{again}");
    assert!(
        !again.tables[0].expiry.as_ref().unwrap().expire.is_empty(),
        "{again}"
    );
    run(&cfg, catalog.clone(), CrashPlan::default())
        .await
        .unwrap();
    let rec = reconcile::check(catalog.as_ref(), &cfg, &expected)
        .await
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(
        rec.ledger_rows, rows,
        "a restart after maintenance re-committed nothing"
    );

    // Pointed at the wrong checkpoint store, the sweep refuses: the log it sees is behind.
    let mut wrong = cfg.clone();
    wrong.checkpoint_store = StoreLocation::Local(dir.path().join("elsewhere"));
    file_aged(&old_orphan, 2 * DAY);
    let refused = maintain::run(
        &wrong,
        catalog.clone(),
        &Options {
            dry_run: false,
            ..opts
        },
    )
    .await
    .unwrap();
    assert!(refused.failed(), "{refused}");
    assert!(
        refused.to_string().contains("wrong checkpoint.store"),
        "{refused}"
    );
    assert!(
        old_orphan.exists(),
        "nothing deleted when the log does not match"
    );
    drop(cluster);
}

#[tokio::test]
async fn a_short_orphan_age_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = RawConfig::default();
    let cfg = Config::resolve(RawConfig {
        catalog: RawCatalog {
            uri: format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display()),
            warehouse: format!("file://{}/warehouse", dir.path().display()),
            ..d.catalog
        },
        ..d
    })
    .unwrap();
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    let opts = Options {
        orphan_older_than: Duration::from_secs(60),
        ..Options::from_config(&cfg)
    };
    let e = maintain::run(&cfg, catalog, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--force-min-age") && e.contains("1h"), "{e}");
}
