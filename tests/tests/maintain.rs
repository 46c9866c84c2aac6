//! `recon-pipeline maintain` against the real services: Kafka (KRaft), the SQL catalog on
//! PostgreSQL, warehouse and checkpoints on the S3 server.
//!
//! `maintain_keeps_what_the_job_needs`: the job commits a history, then is SIGKILLed with
//! complete checkpoints uncommitted and a newer generation claimed; maintain (in process, its
//! clock two days ahead so every file counts as old) expires snapshots and deletes an orphan,
//! keeping the marker, the pending files and another job's file; the CLI (dry run, real run,
//! a refused short age) keeps a young orphan; the restarted job commits the pending
//! checkpoints once and the tables reconcile exactly.
//!
//! `maintain_while_the_job_commits`: maintain runs again and again while the job consumes and
//! commits; the job keeps committing and stays up, nothing fails, and after SIGTERM the tables
//! reconcile exactly.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use recon_pipeline::checkpoint::commit::marks_of;
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::config::Config;
use recon_pipeline::maintain::references::object_key;
use recon_pipeline::maintain::{self, Options};
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{checkpoint, demo, lakehouse, orphans};
use recon_tests::pipeline::{JobSetup, binary, wait_with_deadline};
use recon_tests::services_or_skip;
use recon_tests::traffic::{create_topic, default_traffic};

/// Runs the job binary until it stops by itself (idle); returns its log.
fn run_job(
    setup: &JobSetup,
    dir: &std::path::Path,
    name: &str,
    env: &[(&str, String)],
) -> (std::process::ExitStatus, String) {
    let log = dir.join(format!("{name}.log"));
    let child = setup.spawn(3_000, env, &log);
    wait_with_deadline(child, &log, Duration::from_secs(180))
}

/// Runs `recon-pipeline maintain` with `args`; returns the exit status and stdout + stderr.
fn maintain_cli(setup: &JobSetup, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(binary())
        .arg("maintain")
        .arg("--config")
        .arg(&setup.config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run recon-pipeline maintain");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

async fn exists(store: &dyn ObjectStore, key: &Path) -> bool {
    match store.head(key).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head {key}: {e}"),
    }
}

#[test]
fn maintain_keeps_what_the_job_needs() {
    let Some(s) = services_or_skip("maintain_keeps_what_the_job_needs") else {
        return;
    };
    let setup = JobSetup::new(&s, "maint", 200);
    create_topic(&s.kafka_bootstrap, &setup.topic, 2);
    let records = default_traffic(&setup.topic, 1200, 21, 2);
    let third = records.len() / 3;
    let mut expected = Expected::default();
    let logs = tempfile::tempdir().unwrap();

    for (i, part) in [&records[..third], &records[third..2 * third]]
        .into_iter()
        .enumerate()
    {
        demo::publish(&s.kafka_bootstrap, &setup.topic, part, &mut expected).unwrap();
        let (status, out) = run_job(&setup, logs.path(), &format!("run{i}"), &[]);
        assert!(status.success(), "{out}");
    }
    // Killed after its third durable checkpoint, none committed (cadence pushed out).
    demo::publish(
        &s.kafka_bootstrap,
        &setup.topic,
        &records[2 * third..],
        &mut expected,
    )
    .unwrap();
    let (status, out) = run_job(
        &setup,
        logs.path(),
        "crash",
        &[
            ("RECON_CRASH_AT", "after-checkpoint-durable:3".into()),
            ("RECON__COMMIT__EVERY_CHECKPOINTS", "1000".into()),
            ("RECON__COMMIT__INTERVAL_MS_MAX", "600000".into()),
        ],
    );
    assert_eq!(status.signal(), Some(9), "{out}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = Config::load(Some(&setup.config)).unwrap();
        let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
        let (store, prefix) = checkpoint::store::open(&cfg).unwrap();
        let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
        let ledger = lakehouse::table_ident(&cfg, "ledger_events");
        let table = catalog.load_table(&ledger).await.unwrap();
        let marks = marks_of(&cfg.job_id, &table).unwrap();
        let mut pending = Vec::new();
        for id in log.ids_after(marks.committed).await.unwrap() {
            let c = log.completed(id).await.unwrap().unwrap();
            for j in c
                .manifest
                .pending
                .get("ledger_events")
                .map_or(&[][..], |p| &p.files)
            {
                let v: serde_json::Value = serde_json::from_str(j).unwrap();
                let key = object_key(v["file_path"].as_str().unwrap()).unwrap();
                pending.push(Path::from(key.as_str()));
            }
        }
        assert!(
            !pending.is_empty(),
            "uncommitted checkpoints with data files"
        );
        // A process claimed a newer generation and died before publishing.
        log.claim(None).await.unwrap();

        let wh = s.s3.object_store(&s.s3.warehouse_bucket).unwrap();
        let root = orphans::table_root(&table).unwrap();
        let hex = "0123456789abcdef0123456789abcdef";
        let stray = root.clone().join("data").join("stray-00000.parquet");
        let theirs = root
            .clone()
            .join("data")
            .join(format!("other-g1-c00000000000000000001-{hex}-00000.parquet").as_str());
        for key in [&stray, &theirs] {
            wh.put(key, Bytes::from_static(b"x").into()).await.unwrap();
        }
        let before = table.metadata().snapshots().len();

        // Two days from now, every file is old: only the rules keep what the job needs.
        let opts = Options {
            expire_older_than: Duration::ZERO,
            retain_last: std::num::NonZeroUsize::MIN,
            orphan_older_than: Duration::from_secs(3600),
            force_min_age: false,
            dry_run: false,
            now: Utc::now() + chrono::Duration::days(2),
        };
        let report = maintain::run(&cfg, catalog.clone(), &opts).await.unwrap();
        println!("{report}");
        assert!(!report.failed(), "{report}");
        let t = &report.tables[0];
        let (plan, sweep) = (t.expiry.as_ref().unwrap(), t.sweep.as_ref().unwrap());
        let after = catalog.load_table(&ledger).await.unwrap();
        assert_eq!(plan.kept + plan.expire.len(), before);
        assert!(plan.expire.len() >= 2, "{report}");
        assert_eq!(after.metadata().snapshots().len(), plan.kept);
        assert_eq!(
            marks_of(&cfg.job_id, &after).unwrap(),
            marks,
            "marks untouched"
        );
        assert!(!exists(&wh, &stray).await, "the old orphan is deleted");
        assert!(exists(&wh, &theirs).await, "another job's file is kept");
        for p in &pending {
            assert!(exists(&wh, p).await, "pending file {p} must survive");
        }
        assert_eq!(sweep.pending as usize, pending.len(), "{report}");
        assert!(sweep.deleted >= 1 && sweep.referenced > 0, "{report}");
        let rows = lakehouse::scan(catalog.as_ref(), &ledger, &["event_id"])
            .await
            .unwrap();
        assert!(!rows.is_empty(), "every referenced file is still readable");

        // The CLI: a young orphan survives a dry run and a real run; a short age is refused.
        let young = root.clone().join("data").join("young-00000.parquet");
        wh.put(&young, Bytes::from_static(b"y").into())
            .await
            .unwrap();
        let (status, out) = maintain_cli(&setup, &["--older-than", "0s", "--dry-run"]);
        assert!(status.success(), "{out}");
        assert!(out.contains("dry run: nothing is changed"), "{out}");
        let (status, out) = maintain_cli(&setup, &["--older-than", "0s", "--retain-last", "1"]);
        assert!(status.success(), "{out}");
        for table in maintain::TABLES {
            let line = format!("{}.{table}: snapshots expired", cfg.catalog.namespace);
            assert!(out.contains(&line), "no summary line for {table}:\n{out}");
        }
        assert!(exists(&wh, &young).await, "a young orphan is kept:\n{out}");
        let (status, out) = maintain_cli(&setup, &["--orphan-older-than", "10m"]);
        assert_eq!(status.code(), Some(1), "{out}");
        assert!(out.contains("--force-min-age"), "{out}");
    });

    // The restart commits the pending checkpoints once; everything is exact.
    let (status, out) = run_job(&setup, logs.path(), "restart", &[]);
    assert!(status.success(), "{out}");
    let rec = rt.block_on(async {
        let cfg = Config::load(Some(&setup.config)).unwrap();
        let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
        reconcile::check(catalog.as_ref(), &cfg, &expected)
            .await
            .unwrap()
    });
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(rec.ledger_rows, expected.events.len() as u64);
}

#[test]
fn maintain_while_the_job_commits() {
    let Some(s) = services_or_skip("maintain_while_the_job_commits") else {
        return;
    };
    let setup = JobSetup::new(&s, "maint_live", 150);
    create_topic(&s.kafka_bootstrap, &setup.topic, 2);
    let records = default_traffic(&setup.topic, 1600, 22, 2);
    let mut chunks = records.chunks(records.len().div_ceil(8));
    let mut expected = Expected::default();
    demo::publish(
        &s.kafka_bootstrap,
        &setup.topic,
        chunks.next().unwrap(),
        &mut expected,
    )
    .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let job_log = logs.path().join("job.log");
    // Idle exit far away: the job is stopped by SIGTERM once the tables hold everything.
    let mut job = setup.spawn(600_000, &[], &job_log);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = Config::load(Some(&setup.config)).unwrap();
    let catalog = rt.block_on(lakehouse::open_catalog(&cfg)).unwrap();
    let ledger = lakehouse::table_ident(&cfg, "ledger_events");
    rt.block_on(recon_tests::wait_until(
        "the job's first commit",
        Duration::from_secs(60),
        || async {
            let t = catalog.load_table(&ledger).await.ok()?;
            marks_of(&cfg.job_id, &t).ok()?.committed
        },
    ));
    let opts = Options {
        expire_older_than: Duration::ZERO,
        retain_last: std::num::NonZeroUsize::MIN,
        orphan_older_than: Duration::from_secs(3600),
        ..Options::from_config(&cfg)
    };
    let (mut expired, mut attempts, mut runs) = (0, 0, 0);
    let mut marks_seen = Vec::new();
    for chunk in chunks {
        demo::publish(&s.kafka_bootstrap, &setup.topic, chunk, &mut expected).unwrap();
        for _ in 0..3 {
            let report = rt
                .block_on(maintain::run(
                    &cfg,
                    catalog.clone(),
                    &Options {
                        now: Utc::now(),
                        ..opts.clone()
                    },
                ))
                .unwrap();
            assert!(!report.failed(), "{report}");
            runs += 1;
            for t in &report.tables {
                expired += t.expiry.as_ref().unwrap().expire.len();
                attempts += t.expire_attempts;
            }
            marks_seen.push(report.tables[0].expiry.as_ref().unwrap().marks.committed);
        }
    }
    assert!(
        job.try_wait().unwrap().is_none(),
        "the job ran through every maintenance run:\n{}",
        std::fs::read_to_string(&job_log).unwrap_or_default()
    );
    let events = expected.events.len() as u64;
    rt.block_on(recon_tests::wait_until(
        "the job to commit every event",
        Duration::from_secs(120),
        || async {
            let rec = reconcile::check(catalog.as_ref(), &cfg, &expected)
                .await
                .ok()?;
            (rec.ledger_rows >= events).then_some(())
        },
    ));
    let term = Command::new("kill")
        .args(["-TERM", &job.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let (status, out) = wait_with_deadline(job, &job_log, Duration::from_secs(60));
    assert!(out.contains("stopped cleanly"), "{out}");
    assert!(
        status.success(),
        "the job must not notice maintenance:\n{out}"
    );
    println!(
        "maintain runs {runs}, snapshots expired {expired}, expiry attempts {attempts} (over 3 tables per run)"
    );
    assert!(expired > 0, "maintenance expired nothing");
    let distinct: std::collections::BTreeSet<_> = marks_seen.iter().collect();
    assert!(
        distinct.len() >= 3,
        "the job kept committing between maintenance runs: {marks_seen:?}"
    );

    let rec = rt
        .block_on(reconcile::check(catalog.as_ref(), &cfg, &expected))
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    // A restart with nothing new after all this re-commits nothing.
    let rows = rec.ledger_rows;
    let (status, out) = run_job(&setup, logs.path(), "restart", &[]);
    assert!(status.success(), "{out}");
    let rec = rt
        .block_on(reconcile::check(catalog.as_ref(), &cfg, &expected))
        .unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(rec.ledger_rows, rows);
}
