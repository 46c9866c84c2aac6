//! A topic deleted and recreated under the same name must never be resumed silently
//! (issue #6), against the real broker, catalog and S3.
//!
//! `a_recreated_topic_stops_the_job_loudly`: the real binary consumes, checkpoints and stops;
//! a restart with more input resumes normally (the identity check verifies every partition);
//! then the topic is deleted and recreated with more records than the saved offsets (so the old
//! offsets are valid in the new topic). The restart must exit non-zero naming the topic, the
//! partitions and the expected vs found record, claim no generation and write nothing.
//! Then the operator path: `accept-topic-reset` refuses without `--yes`, with it writes the
//! entry, and the next run reads the new topic from its start; the tables then hold both
//! topics' input exactly, and the offset stamps stay contiguous per input epoch.
//!
//! `a_topic_recreated_while_the_job_runs_stops_it_before_anything_is_durable` (issue 13,
//! finding 2): the same, but the topic is deleted and recreated while the job runs. The job
//! must stop by itself (topic id check of the source's monitor and of the barrier), with the
//! tables holding exactly the first topic's input and no checkpoint holding a record of the
//! new one; a restart refuses again; `accept-topic-reset` then works.

use std::time::{Duration, Instant};

use recon_pipeline::checkpoint::log::{CheckpointLog, Completed};
use recon_pipeline::checkpoint::manifest::EntryKind;
use recon_pipeline::config::Config;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{checkpoint, demo, lakehouse};
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::services_or_skip;
use recon_tests::topics::{create_topic_retrying, delete_topic, partitions_of};
use recon_tests::traffic::default_traffic;

const PARTITIONS: i32 = 3;

async fn head(cfg: &Config) -> Completed {
    let (store, prefix) = checkpoint::store::open(cfg).expect("checkpoint store");
    CheckpointLog::new(store, &prefix, cfg.job_id.clone())
        .head()
        .await
        .expect("log")
        .expect("a checkpoint")
}

/// Current snapshot id of every table.
async fn snapshots(cfg: &Config) -> Vec<Option<i64>> {
    let catalog = lakehouse::open_catalog(cfg).await.expect("catalog");
    let mut out = Vec::new();
    for name in ["ledger_events", "trip_balances", "rejected_events"] {
        let t = catalog
            .load_table(&lakehouse::table_ident(cfg, name))
            .await
            .expect("table");
        out.push(t.metadata().current_snapshot_id());
    }
    out
}

async fn reconcile(cfg: &Config, expected: &Expected) -> reconcile::Reconciliation {
    let catalog = lakehouse::open_catalog(cfg).await.expect("catalog");
    reconcile::check(catalog.as_ref(), cfg, expected)
        .await
        .expect("reconcile")
}

/// Runs the job until it idles out; returns whether it succeeded and its log.
fn run(setup: &JobSetup, logdir: &std::path::Path, name: &str) -> (bool, String) {
    let log = logdir.join(format!("{name}.log"));
    let child = setup.spawn(3_000, &[], &log);
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(180));
    (status.success(), out)
}

#[test]
fn a_recreated_topic_stops_the_job_loudly() {
    let Some(s) = services_or_skip("a_recreated_topic_stops_the_job_loudly") else {
        return;
    };
    let brokers = s.kafka_bootstrap.clone();
    let setup = JobSetup::new(&s, "topic_identity", 300);
    let cfg = Config::load(Some(&setup.config)).expect("config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_topic_retrying(
        &brokers,
        &setup.topic,
        PARTITIONS,
        Duration::from_secs(30),
    ));
    let logdir = tempfile::tempdir().unwrap();
    let seed = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
    let mut expected = Expected::default();

    // First life: consume, checkpoint, commit, stop.
    demo::publish(
        &brokers,
        &setup.topic,
        &default_traffic(&setup.topic, 300, seed, PARTITIONS),
        &mut expected,
    )
    .expect("publish");
    let (ok, out) = run(&setup, logdir.path(), "first");
    assert!(ok && out.contains("stopped cleanly"), "first run:\n{out}");
    let first = rt.block_on(head(&cfg));
    assert_eq!(first.manifest.partitions.len(), PARTITIONS as usize);
    for (p, cut) in &first.manifest.partitions {
        let last = cut
            .last
            .unwrap_or_else(|| panic!("partition {p}: no last record in {cut:?}"));
        assert_eq!(last.offset.0, cut.end.0 - 1, "partition {p}: {cut:?}");
    }

    // The normal restart: more input, the identity check passes on every partition.
    demo::publish(
        &brokers,
        &setup.topic,
        &default_traffic(&setup.topic, 200, seed + 1, PARTITIONS),
        &mut expected,
    )
    .expect("publish");
    let (ok, out) = run(&setup, logdir.path(), "second");
    assert!(ok && out.contains("stopped cleanly"), "second run:\n{out}");
    assert!(
        out.contains("input identity checked") && out.contains("verified=3 unverified=0"),
        "the restart must verify every partition:\n{out}"
    );
    if let Some(l) = out.lines().find(|l| l.contains("input identity checked")) {
        println!("{l}");
    }
    let rec = rt.block_on(reconcile(&cfg, &expected));
    assert!(rec.is_clean(), "{rec}");
    let before = rt.block_on(head(&cfg));
    let saved: Vec<(i32, i64)> = before
        .manifest
        .partitions
        .iter()
        .map(|(p, c)| (p.0, c.end.0))
        .collect();
    let tables_before = rt.block_on(snapshots(&cfg));

    // Recreate the topic with more records than the saved offsets in every partition.
    rt.block_on(delete_topic(&brokers, &setup.topic));
    rt.block_on(create_topic_retrying(
        &brokers,
        &setup.topic,
        PARTITIONS,
        Duration::from_secs(60),
    ));
    let first_topic = expected.clone();
    demo::publish(
        &brokers,
        &setup.topic,
        &default_traffic(&setup.topic, 900, seed + 2, PARTITIONS),
        &mut expected,
    )
    .expect("publish");
    let now = partitions_of(&brokers, &setup.topic);
    for (p, end) in &saved {
        let high = now.iter().find(|(q, _)| q == p).map(|(_, h)| *h);
        assert!(
            high.is_some_and(|h| h > *end),
            "precondition: partition {p} of the new topic must reach past the saved offset {end} (has {high:?})"
        );
    }

    let (ok, out) = run(&setup, logdir.path(), "recreated");
    assert!(!ok, "the job must not resume a recreated topic:\n{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("recon-pipeline: error: "))
        .unwrap_or_else(|| panic!("no error line:\n{out}"));
    println!("{line}");
    for part in [
        format!("topic {:?} is not the input checkpoint", setup.topic),
        "partition 0: expected the consumed record (offset".to_string(),
        "found a different one".to_string(),
        "accept-topic-reset".to_string(),
    ] {
        assert!(line.contains(&part), "{part:?} missing from: {line}");
    }
    assert!(
        !out.contains("generation claimed") && !out.contains("checkpoint complete"),
        "nothing may be claimed or consumed:\n{out}"
    );
    let after = rt.block_on(head(&cfg));
    assert_eq!(
        (after.entry.checkpoint_id, after.entry.generation),
        (before.entry.checkpoint_id, before.entry.generation),
        "the log must not move"
    );
    assert_eq!(rt.block_on(snapshots(&cfg)), tables_before, "no commit");
    let rec = rt.block_on(reconcile(&cfg, &first_topic));
    assert!(
        rec.is_clean(),
        "the tables still hold exactly the first topic's input: {rec}"
    );

    // And it keeps refusing: a restart loop cannot wear it down.
    let (ok, out) = run(&setup, logdir.path(), "recreated-again");
    assert!(!ok && out.contains("is not the input checkpoint"), "{out}");

    // The operator accepts the new topic. Without --yes nothing is written.
    let (ok, out) = operator(&setup, &["--reason", "topic recreated by the test"]);
    assert!(!ok && out.contains("re-run with --yes"), "{out}");
    assert!(out.contains("partition 0: read from offset 0"), "{out}");
    assert_eq!(
        rt.block_on(head(&cfg)).entry.checkpoint_id,
        before.entry.checkpoint_id
    );
    let (ok, out) = operator(
        &setup,
        &["--reason", "topic recreated by the test", "--yes"],
    );
    assert!(ok && out.contains("topic reset written"), "{out}");
    let reset = rt.block_on(head(&cfg));
    assert!(
        matches!(&reset.entry.kind, EntryKind::TopicReset { reason } if reason == "topic recreated by the test"),
        "{:?}",
        reset.entry.kind
    );
    assert_eq!(reset.manifest.input_epoch, 1);
    assert!(
        reset
            .manifest
            .partitions
            .values()
            .all(|c| c.end.0 == 0 && c.last.is_none())
    );

    let (ok, out) = run(&setup, logdir.path(), "after-reset");
    assert!(
        ok && out.contains("stopped cleanly"),
        "run after the reset:\n{out}"
    );
    let rec = rt.block_on(reconcile(&cfg, &expected));
    assert!(rec.is_clean(), "both topics' input exactly once: {rec}");
    assert_eq!(rec.ledger_rows, expected.events.len() as u64);
    rt.block_on(offsets_contiguous_per_epoch(&cfg));

    // A second accept finds nothing to accept.
    let (ok, out) = operator(&setup, &["--reason", "again", "--yes"]);
    assert!(!ok && out.contains("no topic reset to accept"), "{out}");
}

#[test]
fn a_topic_recreated_while_the_job_runs_stops_it_before_anything_is_durable() {
    let Some(s) = services_or_skip("a_topic_recreated_while_the_job_runs_stops_it") else {
        return;
    };
    let brokers = s.kafka_bootstrap.clone();
    let setup = JobSetup::new(&s, "topic_live", 200);
    let cfg = Config::load(Some(&setup.config)).expect("config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_topic_retrying(
        &brokers,
        &setup.topic,
        PARTITIONS,
        Duration::from_secs(30),
    ));
    let logdir = tempfile::tempdir().unwrap();
    let seed = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
    let mut expected = Expected::default();
    demo::publish(
        &brokers,
        &setup.topic,
        &default_traffic(&setup.topic, 300, seed, PARTITIONS),
        &mut expected,
    )
    .expect("publish");
    let first_topic = expected.clone();
    let highs = partitions_of(&brokers, &setup.topic);

    // The job runs with no idle exit; wait until the first topic is consumed and committed.
    let log = logdir.path().join("running.log");
    let child = setup.spawn(3_600_000, &[], &log);
    rt.block_on(recon_tests::wait_until(
        "the first topic checkpointed and committed",
        Duration::from_secs(60),
        || async {
            let (store, prefix) = checkpoint::store::open(&cfg).ok()?;
            let head = CheckpointLog::new(store, &prefix, cfg.job_id.clone())
                .head()
                .await
                .ok()??;
            let all = highs.iter().all(|(p, h)| {
                head.manifest
                    .partitions
                    .get(&recon_pipeline::ids::PartitionId(*p))
                    .is_some_and(|c| c.end.0 == *h)
            });
            (all && reconcile(&cfg, &first_topic).await.is_clean()).then_some(())
        },
    ));
    let consumed = rt.block_on(head(&cfg)).manifest.resume_offsets();

    // Deleted and recreated under the job, with more records than the old offsets. The job is
    // paused meanwhile (SIGSTOP, as a long GC pause or a descheduled pod would): otherwise its
    // consumer may first meet the new, still empty topic and stop on "offset out of range";
    // paused, it resumes fetching at offsets that are valid in the new topic, the case that
    // lost 12,284 events in the trial.
    signal(&child, "-STOP");
    rt.block_on(delete_topic(&brokers, &setup.topic));
    rt.block_on(create_topic_retrying(
        &brokers,
        &setup.topic,
        PARTITIONS,
        Duration::from_secs(60),
    ));
    demo::publish(
        &brokers,
        &setup.topic,
        &default_traffic(&setup.topic, 900, seed + 2, PARTITIONS),
        &mut expected,
    )
    .expect("publish");
    signal(&child, "-CONT");
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(90));
    // Operator-needed class: exit 3, and a supervisor does not restart it.
    assert_eq!(
        status.code(),
        Some(3),
        "the job must stop by itself, operator needed:\n{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("recon-pipeline: error: "))
        .unwrap_or_else(|| panic!("no error line:\n{out}"));
    println!("{line}");
    // Who saw it first: the monitor, the barrier, or the consumer (offset out of range).
    for l in out
        .lines()
        .filter(|l| l.contains("while the job ran") && !l.starts_with("recon-pipeline: error"))
    {
        println!("{}", &l[..l.len().min(200)]);
    }
    for part in [
        format!("topic {:?}", setup.topic),
        "while the job ran".to_string(),
        "accept-topic-reset".to_string(),
    ] {
        assert!(line.contains(&part), "{part:?} missing from: {line}");
    }
    // Nothing of the new topic is durable: no checkpoint moved past the first topic's offsets,
    // and the tables hold exactly the first topic's events.
    let stopped = rt.block_on(head(&cfg));
    assert_eq!(
        stopped.manifest.resume_offsets(),
        consumed,
        "a checkpoint holds records of the new topic"
    );
    let rec = rt.block_on(reconcile(&cfg, &first_topic));
    assert!(
        rec.is_clean(),
        "the tables hold the first topic only: {rec}"
    );

    // A restart refuses too, without writing.
    let (ok, out) = run(&setup, logdir.path(), "restart");
    assert!(!ok && out.contains("is not the input checkpoint"), "{out}");
    let again = rt.block_on(head(&cfg));
    assert_eq!(
        (again.entry.checkpoint_id, again.entry.generation),
        (stopped.entry.checkpoint_id, stopped.entry.generation),
        "the refused restart must not move the log"
    );

    // The operator accepts the new topic; the next run reads all of it.
    let (ok, out) = operator(&setup, &["--reason", "recreated while running", "--yes"]);
    assert!(ok && out.contains("topic reset written"), "{out}");
    let (ok, out) = run(&setup, logdir.path(), "after-reset");
    assert!(ok && out.contains("stopped cleanly"), "{out}");
    let rec = rt.block_on(reconcile(&cfg, &expected));
    assert!(rec.is_clean(), "both topics' input exactly once: {rec}");
}

/// The barrier's own check, without the monitor thread (`Source::open` only): a confirmation
/// for records received after the last one asks the broker, and a recreated or deleted topic
/// is the operator-needed stop.
#[test]
fn the_barrier_confirms_the_topic_id_before_a_checkpoint() {
    use recon_pipeline::config::RawConfig;
    use recon_pipeline::ids::PartitionId;
    use recon_pipeline::source::{Source, SourceError};
    let Some(s) = services_or_skip("the_barrier_confirms_the_topic_id_before_a_checkpoint") else {
        return;
    };
    let brokers = s.kafka_bootstrap.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for recreate in [true, false] {
        let topic = recon_tests::unique_name("topic_guard");
        rt.block_on(create_topic_retrying(
            &brokers,
            &topic,
            PARTITIONS,
            Duration::from_secs(30),
        ));
        let cfg = recon_pipeline::config::RawSource {
            brokers: brokers.clone(),
            topic: topic.clone(),
            ..RawConfig::default().source
        };
        let partitions: Vec<PartitionId> = (0..PARTITIONS).map(PartitionId).collect();
        let source = Source::open(&cfg, &partitions).expect("open");
        let guard = source.guard();
        assert!(
            guard.topic_id().is_some(),
            "the real broker reports topic ids"
        );
        rt.block_on(guard.confirm(Some(Instant::now())))
            .expect("the same topic is confirmed");
        rt.block_on(delete_topic(&brokers, &topic));
        if recreate {
            rt.block_on(create_topic_retrying(
                &brokers,
                &topic,
                PARTITIONS,
                Duration::from_secs(60),
            ));
        }
        let err = rt
            .block_on(guard.confirm(Some(Instant::now())))
            .expect_err("a recreated or deleted topic must not be confirmed");
        let want = if recreate {
            "was deleted and recreated while the job ran"
        } else {
            "was deleted while the job ran"
        };
        assert!(
            matches!(err, SourceError::NotTheSavedInput { .. }) && err.to_string().contains(want),
            "{err}"
        );
        assert!(err.to_string().contains("accept-topic-reset"), "{err}");
        if recreate {
            rt.block_on(delete_topic(&brokers, &topic));
        }
    }
}

/// Sends `sig` (`-STOP`, `-CONT`) to the child.
fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

/// Runs `recon-pipeline accept-topic-reset` with `args`; returns success and output.
fn operator(setup: &JobSetup, args: &[&str]) -> (bool, String) {
    setup.operate("accept-topic-reset", args)
}

/// batch-verify's offset check on every table: no gap, no overlap, and the new topic's
/// commits carry input epoch 1.
async fn offsets_contiguous_per_epoch(cfg: &Config) {
    use batch_verify::offsets;
    use batch_verify::report::Findings;
    let catalog = lakehouse::open_catalog(cfg).await.expect("catalog");
    for name in ["ledger_events", "trip_balances", "rejected_events"] {
        let t = catalog
            .load_table(&lakehouse::table_ident(cfg, name))
            .await
            .expect("table");
        let commits = offsets::commits(&t).expect("commits");
        assert!(
            commits.iter().any(|c| c.input_epoch == 0)
                && commits.iter().any(|c| c.input_epoch == 1),
            "{name}: commits of both epochs: {commits:?}"
        );
        let mut findings = Findings::new(10);
        offsets::check(name, &commits, &Default::default(), &mut findings);
        assert!(findings.kept.is_empty(), "{name}: {:?}", findings.kept);
    }
}
