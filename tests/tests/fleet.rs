//! The fleet against the real services: 16 partitions, K = 8 tasks, three workers and one
//! committer as separate processes (Apache Kafka's group coordinator hands out the tasks,
//! PostgreSQL holds the catalog, the S3 server the warehouse and checkpoints), while traffic
//! with duplicates, conflicts and poison keeps arriving:
//!
//! - a worker dies by SIGKILL at each named crash point a task reaches, and comes back;
//! - a worker is added mid-stream, and one is removed (SIGTERM: final checkpoints, leaves);
//! - a worker is paused (SIGSTOP) past the group's session timeout, then resumed: its tasks
//!   moved, so whatever it still tries to complete is fenced;
//! - a second committer starts while the first runs: the first stops fenced (exit 4);
//! - the committer dies by SIGKILL at each of its crash points, and comes back;
//! - the topic is deleted and recreated under the fleet: a worker refuses it (exit 3, nothing
//!   written) until the operator's `accept-topic-reset` moves every task log to the next input
//!   epoch; then both topics' events are in the tables exactly once;
//! - the operator rewinds the fleet to an earlier commit sequence: every task restarts from its
//!   checkpoint in it and replays what it had read since into state only.
//!
//! The workers' test runs the optional outputs too (alerts topic, current balances: per task,
//! each task's own Kafka transactional id and PostgreSQL progress rows), and kills a worker at
//! their two crash points.
//!
//! Then: every event exactly once in `ledger_events`, every poison record and conflict once in
//! `rejected_events`, every balance the fold of its events, every commit sequence in exactly
//! one snapshot per table, batch-verify clean on every business day against the topic (with
//! its output checks where on), and, with the outputs on, every alert the input implies once in
//! the alerts topic and every trip's current balance equal to its latest `trip_balances` row.

use std::time::Duration;

use recon_pipeline::config::Config;
use recon_pipeline::crash::CrashPoint;
use recon_tests::fleet::{
    Fleet, MINUTE, PARTITIONS, died_at, sequence_holding_every_task_head, signal, stop, wait_for,
};
use recon_tests::pipeline::wait_with_deadline;
use recon_tests::services_or_skip;

#[test]
fn workers_killed_added_removed_and_paused() {
    let Some(s) = services_or_skip("workers_killed_added_removed_and_paused") else {
        return;
    };
    let mut fleet = Fleet::new(&s, "e2e_fleet_w", 3000, 12, true);
    fleet.publish();
    let committer = fleet.start("committer", None);
    let (w2, w2_log) = fleet.start("worker", None);
    let w3 = fleet.start("worker", None);
    wait_for(&committer.1, "commit record durable", 1, 2 * MINUTE);

    // Worker 1 dies at each named point a task reaches (the outputs' two included), then comes
    // back for good.
    for point in [
        CrashPoint::MidBatch,
        CrashPoint::AfterFilesWritten,
        CrashPoint::BeforeCheckpointComplete,
        CrashPoint::AfterCheckpointDurable,
        CrashPoint::BeforeAlertsCommit,
        CrashPoint::BeforeBalancesCommit,
    ] {
        // Mid-batch at the first batch and an output transaction at its first (one may come
        // once per chunk); the barrier points at the fourth barrier, after the records
        // published once the worker runs tasks have arrived.
        let nth = if point == CrashPoint::MidBatch || CrashPoint::OUTPUTS.contains(&point) {
            1
        } else {
            4
        };
        let (w1, w1_log) = fleet.start("worker", Some(format!("{}:{nth}", point.name())));
        wait_for(&w1_log, "task started", 1, 2 * MINUTE);
        fleet.publish();
        died_at(point, (w1, w1_log));
    }
    let w1 = fleet.start("worker", None);
    wait_for(
        &w1.1,
        "task's first checkpoint on this worker",
        1,
        2 * MINUTE,
    );

    // A fourth worker joins and gets tasks; worker 2 leaves gracefully.
    fleet.publish();
    let w4 = fleet.start("worker", None);
    wait_for(
        &w4.1,
        "task's first checkpoint on this worker",
        1,
        2 * MINUTE,
    );
    stop(&w2);
    let (status, out) = wait_with_deadline(w2, &w2_log, 2 * MINUTE);
    assert!(
        status.success(),
        "worker 2 must leave cleanly: {status:?}\n{out}"
    );
    assert!(out.contains("worker stopped cleanly"), "{out}");

    // Worker 3 is paused past the session timeout (10 s in infra/local), then resumed: its
    // tasks moved meanwhile.
    signal(&w3.0, "-STOP");
    fleet.publish();
    std::thread::sleep(Duration::from_secs(16));
    signal(&w3.0, "-CONT");
    fleet.publish();
    wait_for(&w3.1, "tasks revoked", 1, 2 * MINUTE);
    fleet.drain_and_check(vec![w1, w3, w4], committer);
}

#[test]
fn two_committers_and_committer_kills() {
    let Some(s) = services_or_skip("two_committers_and_committer_kills") else {
        return;
    };
    let mut fleet = Fleet::new(&s, "e2e_fleet_c", 2000, 8, false);
    fleet.publish();
    let (c1, c1_log) = fleet.start("committer", None);
    let w1 = fleet.start("worker", None);
    let w2 = fleet.start("worker", None);
    wait_for(&c1_log, "commit record durable", 1, 2 * MINUTE);

    // A second committer: the first is fenced and stops with exit 4.
    let (c2, c2_log) = fleet.start("committer", None);
    wait_for(&c2_log, "committer claimed", 1, MINUTE);
    fleet.publish();
    let (status, out) = wait_with_deadline(c1, &c1_log, 2 * MINUTE);
    assert_eq!(
        status.code(),
        Some(4),
        "the first committer must stop fenced:\n{out}"
    );

    // The committer dies at each of its points, and comes back.
    let mut committer = (c2, c2_log);
    for point in CrashPoint::COMMITTER {
        signal(&committer.0, "-KILL");
        let _ = committer.0.wait();
        fleet.publish();
        let (c, log) = fleet.start("committer", Some(format!("{}:2", point.name())));
        died_at(point, (c, log));
        committer = fleet.start("committer", None);
        wait_for(&committer.1, "committer claimed", 1, MINUTE);
    }
    fleet.drain_and_check(vec![w1, w2], committer);
}

#[test]
fn a_recreated_topic_is_accepted_by_every_task() {
    let Some(s) = services_or_skip("a_recreated_topic_is_accepted_by_every_task") else {
        return;
    };
    let mut fleet = Fleet::new(&s, "e2e_fleet_r", 1200, 3, false);
    // The first topic's events are deleted with it: batch-verify's truth is gone for them
    // (the tables are checked against what was published instead).
    fleet.kafka_is_truth = false;
    fleet.publish();
    let committer = fleet.start("committer", None);
    let (w1, w1_log) = fleet.start("worker", None);
    fleet.wait_committed();
    stop(&w1);
    let (status, out) = wait_with_deadline(w1, &w1_log, 2 * MINUTE);
    assert!(status.success(), "worker: {status:?}\n{out}");

    // The topic is deleted and recreated; the new one gets traffic of its own.
    let (brokers, topic) = (fleet.brokers.clone(), fleet.setup.topic.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(recon_tests::topics::delete_topic(&brokers, &topic));
    rt.block_on(recon_tests::topics::create_topic_retrying(
        &brokers, &topic, PARTITIONS, MINUTE,
    ));
    fleet.publish();

    // A worker refuses it, stopping for an operator; a restart refuses again.
    for _ in 0..2 {
        let (w, log) = fleet.start("worker", None);
        let (status, out) = wait_with_deadline(w, &log, 2 * MINUTE);
        assert_eq!(
            status.code(),
            Some(3),
            "the worker must stop for an operator:\n{out}"
        );
        assert!(
            out.contains("is not the input checkpoint") && out.contains("accept-topic-reset"),
            "{out}"
        );
    }

    // The operator accepts it: every task log moves to epoch 1.
    let reason = ["--reason", "topic recreated by the fleet test"];
    let (ok, out) = fleet.setup.operate("accept-topic-reset", &reason);
    assert!(!ok && out.contains("re-run with --yes"), "{out}");
    let (ok, out) = fleet
        .setup
        .operate("accept-topic-reset", &[reason[0], reason[1], "--yes"]);
    assert!(
        ok && out.contains("topic reset written for 8 task(s)"),
        "{out}"
    );
    println!("{}", out.lines().last().unwrap_or_default());

    // Both topics' events exactly once, every balance exact across them, the commit sequences
    // unbroken (the old topic's checkpoints are committed before the new topic's).
    let w2 = fleet.start("worker", None);
    let w3 = fleet.start("worker", None);
    fleet.drain_and_check(vec![w2, w3], committer);
    let (ok, out) = fleet
        .setup
        .operate("accept-topic-reset", &[reason[0], reason[1], "--yes"]);
    assert!(!ok && out.contains("no topic reset to accept"), "{out}");
}

/// The committer's newest commit sequence once it holds every task log's head (polled).

#[test]
fn a_rewind_restarts_every_task_from_one_commit() {
    let Some(s) = services_or_skip("a_rewind_restarts_every_task_from_one_commit") else {
        return;
    };
    let mut fleet = Fleet::new(&s, "e2e_fleet_b", 1200, 3, false);
    // Keep the rewind target (the logs otherwise keep the newest 10 beyond what is committed).
    let toml = std::fs::read_to_string(&fleet.setup.config).unwrap();
    std::fs::write(
        &fleet.setup.config,
        toml.replacen("[checkpoint]\n", "[checkpoint]\nkeep_last = 100\n", 1),
    )
    .unwrap();
    let cfg = Config::load(Some(&fleet.setup.config)).expect("config");
    fleet.publish();
    let committer = fleet.start("committer", None);
    let run_until_committed = |fleet: &mut Fleet| {
        let (w, log) = fleet.start("worker", None);
        fleet.wait_committed();
        stop(&w);
        let (status, out) = wait_with_deadline(w, &log, 2 * MINUTE);
        assert!(status.success(), "worker: {status:?}\n{out}");
        out
    };
    run_until_committed(&mut fleet);
    let sequence = sequence_holding_every_task_head(&cfg);
    fleet.publish();
    run_until_committed(&mut fleet);
    assert!(sequence_holding_every_task_head(&cfg) > sequence);

    // The operator rewinds the fleet to the commit that held the first chunk.
    let args = |yes: bool| {
        let mut a = vec![
            "--to-checkpoint".to_string(),
            sequence.to_string(),
            "--reason".into(),
            "rewound by the fleet test".into(),
        ];
        if yes {
            a.push("--yes".into());
        }
        a
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fleet.setup.operate("rewind", &a)
    };
    let (ok, out) = run(args(false));
    assert!(!ok && out.contains("re-run with --yes"), "{out}");
    let (ok, out) = run(args(true));
    assert!(ok && out.contains("rewind written for 8 task(s)"), "{out}");

    // One worker replays the second chunk into state only, then reads the third.
    let (w, log) = fleet.start("worker", None);
    fleet.publish();
    fleet.wait_committed();
    stop(&w);
    let (status, out) = wait_with_deadline(w, &log, 2 * MINUTE);
    assert!(status.success(), "worker: {status:?}\n{out}");
    let replayed: u64 = out
        .lines()
        .find_map(|l| l.split("replayed ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no replay count:\n{out}"));
    assert!(replayed > 0, "the second chunk must be replayed:\n{out}");
    println!("rewind: {replayed} records replayed into state only");
    let w2 = fleet.start("worker", None);
    fleet.drain_and_check(vec![w2], committer);
}
