//! Files the tables need are never lost by recovery (issue 13, findings 1 and 3), against the
//! real services: Kafka (KRaft), the SQL catalog on PostgreSQL, warehouse and checkpoints on S3.
//!
//! `a_missing_pending_file_stops_the_job`: the job completes checkpoints without committing
//! them and is SIGKILLed; one of their pending files is deleted. The restart must stop with an
//! error naming the file (operator needed), commit nothing to any table (same snapshots),
//! delete no file (a planted orphan is still there) and claim no generation, at every restart.
//!
//! `recovery_keeps_every_referenced_file`: an older copy of the checkpoint store is restored
//! and a crash loop's claims move the head up to the tables' mark (what restarts of the
//! previous release did), so the log names the committed files' checkpoints as another
//! generation's: their names look like orphans'. A restart must delete none of the files the
//! tables reference.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use iceberg::Catalog;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use recon_pipeline::checkpoint::commit::marks_of;
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::config::Config;
use recon_pipeline::maintain::references::{self, object_key};
use recon_pipeline::reconcile::Expected;
use recon_pipeline::{checkpoint, demo, lakehouse, orphans};
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::services_or_skip;
use recon_tests::traffic::{create_topic, default_traffic};

const TABLES: [&str; 3] = ["ledger_events", "trip_balances", "rejected_events"];

/// Runs the job binary until it stops by itself; returns its status and log.
fn run_job(
    setup: &JobSetup,
    dir: &std::path::Path,
    name: &str,
    env: &[(&str, String)],
) -> (std::process::ExitStatus, String) {
    let log = dir.join(format!("{name}.log"));
    let child = setup.spawn(3_000, env, &log);
    wait_with_deadline(child, &log, Duration::from_secs(120))
}

async fn exists(store: &dyn ObjectStore, key: &Path) -> bool {
    match store.head(key).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head {key}: {e}"),
    }
}

/// Every object under `prefix`.
async fn list(store: &dyn ObjectStore, prefix: &str) -> Vec<Path> {
    let prefix = Path::from(prefix);
    let mut keys: Vec<Path> = store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Per table: the current snapshot id.
async fn snapshots(cfg: &Config, catalog: &dyn Catalog) -> BTreeMap<&'static str, Option<i64>> {
    let mut out = BTreeMap::new();
    for t in TABLES {
        let table = catalog
            .load_table(&lakehouse::table_ident(cfg, t))
            .await
            .unwrap();
        out.insert(t, table.metadata().current_snapshot_id());
    }
    out
}

#[test]
fn a_missing_pending_file_stops_the_job() {
    let Some(s) = services_or_skip("a_missing_pending_file_stops_the_job") else {
        return;
    };
    let setup = JobSetup::new(&s, "pending_gone", 200);
    create_topic(&s.kafka_bootstrap, &setup.topic, 2);
    let records = default_traffic(&setup.topic, 800, 31, 2);
    let (first, second) = records.split_at(records.len() / 2);
    let mut expected = Expected::default();
    let logs = tempfile::tempdir().unwrap();
    demo::publish(&s.kafka_bootstrap, &setup.topic, first, &mut expected).unwrap();
    let (status, out) = run_job(&setup, logs.path(), "first", &[]);
    assert!(status.success(), "{out}");
    // Checkpoints completed, none committed (cadence pushed out), then SIGKILL.
    demo::publish(&s.kafka_bootstrap, &setup.topic, second, &mut expected).unwrap();
    let (status, out) = run_job(
        &setup,
        logs.path(),
        "crash",
        &[
            ("RECON_CRASH_AT", "after-checkpoint-durable:2".into()),
            ("RECON__COMMIT__EVERY_CHECKPOINTS", "1000".into()),
            ("RECON__COMMIT__INTERVAL_MS_MAX", "600000".into()),
        ],
    );
    assert_eq!(status.signal(), Some(9), "{out}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = Config::load(Some(&setup.config)).unwrap();
    let catalog = rt.block_on(lakehouse::open_catalog(&cfg)).unwrap();
    let wh = s.s3.object_store(&s.s3.warehouse_bucket).unwrap();
    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let entries = rt.block_on(log.ids_after(None)).unwrap();
    let (gone, planted, before, listed) = rt.block_on(async {
        let ledger = catalog
            .load_table(&lakehouse::table_ident(&cfg, "ledger_events"))
            .await
            .unwrap();
        let committed = marks_of(&cfg.job_id, &ledger).unwrap().committed;
        let mut pending = Vec::new();
        for id in log.ids_after(committed).await.unwrap() {
            let c = log.completed(id).await.unwrap().unwrap();
            if let Some(p) = c.manifest.pending.get("ledger_events") {
                for j in &p.files {
                    let v: serde_json::Value = serde_json::from_str(j).unwrap();
                    pending.push(object_key(v["file_path"].as_str().unwrap()).unwrap());
                }
            }
        }
        assert!(
            !pending.is_empty(),
            "uncommitted checkpoints with data files"
        );
        let gone = Path::from(pending[0].as_str());
        wh.delete(&gone).await.unwrap();
        // An orphan by every rule (an older generation, a checkpoint the log never saw): a
        // recovery that got as far as the cleanup would delete it.
        let root = orphans::table_root(&ledger).unwrap();
        let name = format!(
            "{}-g1-c{:020}-0123456789abcdef0123456789abcdef-00000.parquet",
            cfg.job_id, 999_999
        );
        let planted = root.clone().join("data").join(name.as_str());
        wh.put(&planted, PutPayload::from(Bytes::from_static(b"x")))
            .await
            .unwrap();
        let listed = list(&wh, root.as_ref()).await;
        (
            gone,
            planted,
            snapshots(&cfg, catalog.as_ref()).await,
            listed,
        )
    });

    // Twice: the stop is found again at every restart, identically.
    for run in ["restart1", "restart2"] {
        let (status, out) = run_job(&setup, logs.path(), run, &[]);
        assert!(
            !status.success(),
            "the job must refuse to commit a missing file:\n{out}"
        );
        assert!(
            out.contains(&format!(
                "pending data file s3://{}/{gone}",
                s.s3.warehouse_bucket
            )) && out.contains("is missing")
                && out.contains("nothing was committed to any table"),
            "{out}"
        );
        rt.block_on(async {
            assert_eq!(
                snapshots(&cfg, catalog.as_ref()).await,
                before,
                "no table changed"
            );
            assert!(exists(&wh, &planted).await, "no orphan deleted");
            assert_eq!(
                log.ids_after(None).await.unwrap(),
                entries,
                "nothing written to the log (no generation claimed)"
            );
            let root = planted.as_ref().split("/data/").next().unwrap();
            assert_eq!(list(&wh, root).await, listed, "no file deleted");
        });
    }
}

#[test]
fn recovery_keeps_every_referenced_file() {
    let Some(s) = services_or_skip("recovery_keeps_every_referenced_file") else {
        return;
    };
    let setup = JobSetup::new(&s, "restored_log", 200);
    create_topic(&s.kafka_bootstrap, &setup.topic, 2);
    let records = default_traffic(&setup.topic, 800, 32, 2);
    let (first, second) = records.split_at(records.len() / 2);
    let mut expected = Expected::default();
    let logs = tempfile::tempdir().unwrap();
    let ck = s.s3.object_store(&s.s3.checkpoint_bucket).unwrap();
    let wh = s.s3.object_store(&s.s3.warehouse_bucket).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Log entries are kept (as within `keep_last` in the trial, where the crash loop was two
    // claims long), so the log names the committed checkpoints as the claims' generations.
    let keep = [("RECON__CHECKPOINT__KEEP_LAST", "1000".to_string())];

    demo::publish(&s.kafka_bootstrap, &setup.topic, first, &mut expected).unwrap();
    let (status, out) = run_job(&setup, logs.path(), "first", &keep);
    assert!(status.success(), "{out}");
    // The operator's "backup" of the checkpoint store.
    let copy: Vec<(Path, Bytes)> = rt.block_on(async {
        let mut copy = Vec::new();
        for key in list(&ck, &setup.name).await {
            let bytes = ck.get(&key).await.unwrap().bytes().await.unwrap();
            copy.push((key, bytes));
        }
        copy
    });
    demo::publish(&s.kafka_bootstrap, &setup.topic, second, &mut expected).unwrap();
    let (status, out) = run_job(&setup, logs.path(), "second", &keep);
    assert!(status.success(), "{out}");

    let cfg = Config::load(Some(&setup.config)).unwrap();
    let catalog = rt.block_on(lakehouse::open_catalog(&cfg)).unwrap();
    let needed = rt.block_on(async {
        // Restore the old copy.
        for key in list(&ck, &setup.name).await {
            ck.delete(&key).await.unwrap();
        }
        for (key, bytes) in &copy {
            ck.put(key, PutPayload::from(bytes.clone())).await.unwrap();
        }
        // A crash loop's claims (each failed start of the previous release wrote one) until
        // the head reaches the tables' mark.
        let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
        let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
        let ledger = catalog
            .load_table(&lakehouse::table_ident(&cfg, "ledger_events"))
            .await
            .unwrap();
        let mark = marks_of(&cfg.job_id, &ledger).unwrap().committed.unwrap();
        let restored = log.head().await.unwrap().unwrap().entry.checkpoint_id;
        assert!(restored < mark, "the restored log is behind the table");
        for _ in 0..100 {
            let head = log.head().await.unwrap().unwrap().entry.checkpoint_id;
            if head >= mark {
                break;
            }
            log.claim(None).await.unwrap();
        }
        // Every data file a snapshot references, and how many of them the log alone would
        // call orphans (named by this job, at a checkpoint now held by another generation).
        let mut needed = Vec::new();
        let mut look_orphaned = 0;
        for t in TABLES {
            let table = catalog
                .load_table(&lakehouse::table_ident(&cfg, t))
                .await
                .unwrap();
            let refs =
                references::collect(&table, &Default::default(), references::MAINTAIN_LIMITS)
                    .await
                    .unwrap();
            for key in refs.keys.iter().filter(|k| k.ends_with(".parquet")) {
                let name = key.rsplit('/').next().unwrap();
                if let Some((g, c)) = orphans::parse_name(&cfg.job_id, name)
                    && c > restored
                    && log.entry(c).await.unwrap().unwrap().generation != g
                {
                    look_orphaned += 1;
                }
                needed.push(Path::from(key.as_str()));
            }
        }
        assert!(
            look_orphaned > 0,
            "the scenario must have referenced files whose names look orphaned"
        );
        needed
    });

    // The restart: whatever it decides about the log, it must not delete a referenced file.
    let (_status, out) = run_job(&setup, logs.path(), "restart", &keep);
    rt.block_on(async {
        for key in &needed {
            assert!(
                exists(&wh, key).await,
                "referenced file {key} was deleted by recovery:\n{out}"
            );
        }
        let ledger = lakehouse::table_ident(&cfg, "ledger_events");
        let rows = lakehouse::scan(catalog.as_ref(), &ledger, &["event_id"])
            .await
            .expect("the table stays readable");
        assert!(!rows.is_empty());
    });
}
