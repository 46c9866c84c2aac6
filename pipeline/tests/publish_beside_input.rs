//! The exactly-once publish runs beside the input (`job/publish.rs`): while records keep
//! arriving, the tables are committed and the checkpoint log pruned as the job goes, not only
//! when it stops (a publish whose pruning were cancelled by every new batch would leave every
//! checkpoint in the log). Mock cluster, SQLite catalog, local store.

mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::config::{Config, RawCatalog, RawCheckpoint, RawConfig, RawSource};
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{checkpoint, demo, lakehouse};
use support::run_until_idle;

fn config(brokers: &str, dir: &std::path::Path) -> Config {
    let d = RawConfig::default();
    Config::resolve(RawConfig {
        job_id: "beside".into(),
        source: RawSource {
            brokers: brokers.to_string(),
            topic: "pb".into(),
            // Small batches: the loop goes back to its select between them all the time.
            poll_batch_records_max: 100,
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
            keep_last: 2,
            // The chain is folded every 3 deltas: old checkpoints are not read by the head's.
            full_state_every: 3,
            ..d.checkpoint
        },
        ..d
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_prunes_while_input_flows() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, records) = support::mock_topic("pb", 2, 6000, 5);
    let brokers = cluster.bootstrap_servers();
    let mut expected = Expected::default();
    demo::publish(&brokers, "pb", &records, &mut expected).unwrap();
    let cfg = config(&brokers, dir.path());
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();

    // Watch the log while the job runs: how far its start moves.
    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let seen = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (seen, done) = (seen.clone(), done.clone());
        async move {
            // Bounded: the job's idle exit ends it within a minute.
            for _ in 0..6_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                // The log's first and last checkpoints: the first moves only when pruning runs.
                if let Ok(ids) = log.ids_after(None).await
                    && let (Some(first), Some(last)) = (ids.first(), ids.last())
                {
                    seen.lock().unwrap().push((first.0, last.0));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let report = run_until_idle(&cfg, catalog.clone()).await.unwrap();
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    // The furthest the log's start had moved while the head was in the first two thirds of
    // the run (the stop's own last publish prunes too: not counted).
    let until = report.checkpoints * 2 / 3;
    let most = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, last)| *last <= until)
        .map(|(first, _)| *first)
        .max()
        .unwrap_or(0);
    println!(
        "{} checkpoints, {} commits, the log's start moved to checkpoint {most} by checkpoint {until}",
        report.checkpoints, report.commits
    );
    assert!(
        report.checkpoints >= 15,
        "a run of many intervals: {report:?}"
    );
    assert!(report.commits >= 10, "committed as it went: {report:?}");
    // While the input flowed, pruning moved the log's start past the first checkpoints (had
    // every kept checkpoint kept its own chain, it stays at 2: nothing is pruned in a run).
    assert!(
        most > 5,
        "the log still started at checkpoint {most} during the run (of {}): pruning did not run",
        report.checkpoints
    );
    let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let left = log.ids_after(None).await.unwrap();
    assert!(left.len() <= 3, "after the stop: {left:?}");
    // Every checkpoint kept can be restored: the files its chain reads were left in place.
    for id in left {
        let c = log.completed(id).await.unwrap().unwrap();
        log.read_state_chain(&c.manifest)
            .await
            .unwrap_or_else(|e| panic!("checkpoint {id} is kept but its state is not: {e}"));
    }
    let rec = reconcile::check(catalog.as_ref(), &cfg, &expected)
        .await
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(rec.ledger_rows, expected.events.len() as u64);
}

/// A state file stays while a kept chain reads it, and a fold's base while the delta beside it
/// is read (the fold is in flight or not yet taken in).
#[test]
fn a_base_stays_with_the_delta_it_folds() {
    use recon_pipeline::checkpoint::log::still_read;
    let read: std::collections::HashSet<String> =
        ["ckpt/7-g1/state.bin", "ckpt/3-g1/state-base.bin"]
            .into_iter()
            .map(String::from)
            .collect();
    assert!(still_read(&read, "ckpt/7-g1/state.bin"));
    assert!(
        still_read(&read, "ckpt/7-g1/state-base.bin"),
        "beside a read delta"
    );
    assert!(still_read(&read, "ckpt/3-g1/state-base.bin"));
    assert!(!still_read(&read, "ckpt/3-g1/state.bin"));
    assert!(!still_read(&read, "ckpt/5-g1/state-base.bin"));
    assert!(!still_read(&read, "ckpt/7-g1/alerts.jsonl"));
}
