//! A fleet resharded offline from K = 8 to K = 3 tasks, then to K = 5, against the real services (Kafka,
//! PostgreSQL, S3), with both optional outputs on and trips that leave memory for the cold
//! tier: the operator stops the fleet, `reshard --tasks 3` splits every old task's state
//! (in memory and cold) and offsets among three new task logs, a worker still configured
//! with the old K refuses to start (exit 3, nothing written), and the fleet restarted with
//! K = 3 carries on: every event exactly once, every balance the fold of its events (trips
//! whose events straddle the reshard included), one snapshot per table per commit sequence,
//! batch-verify clean on every day, every alert once and every current balance exact.

use recon_pipeline::config::Config;
use recon_pipeline::crash::CrashPoint;
use recon_tests::fleet::{Fleet, MINUTE, sequence_holding_every_task_head, stop};
use recon_tests::pipeline::wait_with_deadline;
use recon_tests::services_or_skip;

/// Runs one worker through two chunks (trips of the first leave memory at the barriers of the
/// second), then stops it gracefully.
fn run_two_chunks(fleet: &mut Fleet) {
    let (w, log) = fleet.start("worker", None);
    for _ in 0..2 {
        assert!(fleet.publish());
        fleet.wait_committed();
    }
    stop(&w);
    let (status, out) = wait_with_deadline(w, &log, 2 * MINUTE);
    assert!(status.success(), "worker: {status:?}\n{out}");
}

/// Changes `fleet.tasks` in the test's configuration, as the operator does after a reshard.
fn set_tasks(fleet: &Fleet, from: u32, to: u32) {
    let toml = std::fs::read_to_string(&fleet.setup.config).unwrap();
    let old = format!("tasks = {from}\n");
    assert!(toml.contains(&old), "{toml}");
    std::fs::write(
        &fleet.setup.config,
        toml.replacen(&old, &format!("tasks = {to}\n"), 1),
    )
    .unwrap();
}

#[test]
fn a_fleet_resharded_from_8_to_3_to_5_tasks_carries_on_exactly() {
    let Some(s) = services_or_skip("a_fleet_resharded_from_8_to_3_to_5_tasks_carries_on_exactly")
    else {
        return;
    };
    let mut fleet = Fleet::new(&s, "e2e_fleet_r", 1500, 5, true);
    // Trips leave memory a minute of event time after their last event (the traffic spans a
    // day), so the old tasks' cold tiers hold trips the reshard must split too.
    let toml = std::fs::read_to_string(&fleet.setup.config).unwrap();
    let toml = if toml.contains("[state]\n") {
        toml.replacen(
            "[state]\n",
            "[state]\nevict_idle_after_ms = 60000\nevict_settled_after_ms = 60000\n",
            1,
        )
    } else {
        format!(
            "{toml}\n[state]\npayload_bytes_max = 65536\nevict_idle_after_ms = 60000\nevict_settled_after_ms = 60000\n"
        )
    };
    std::fs::write(&fleet.setup.config, &toml).unwrap();
    let cfg = Config::load(Some(&fleet.setup.config)).expect("config");

    // Two chunks through K = 8; then the operator stops the fleet, the committer last.
    let committer = fleet.start("committer", None);
    run_two_chunks(&mut fleet);
    sequence_holding_every_task_head(&cfg);
    stop(&committer.0);
    let (status, out) = wait_with_deadline(committer.0, &committer.1, 2 * MINUTE);
    assert!(status.success(), "committer: {status:?}\n{out}");

    let reshard_to = |fleet: &Fleet, tasks: &str, yes: bool, crash: Option<CrashPoint>| {
        let mut a = vec!["--tasks", tasks, "--reason", "resharded by the fleet test"];
        if yes {
            a.push("--yes");
        }
        let env: Vec<(&str, &str)> = crash
            .map(|c| ("RECON_CRASH_AT", c.name()))
            .into_iter()
            .collect();
        fleet.setup.operate_with("reshard", &a, &env)
    };
    let reshard =
        |fleet: &Fleet, yes: bool, crash: Option<CrashPoint>| reshard_to(fleet, "3", yes, crash);
    let worker_refuses = |fleet: &mut Fleet, why: &str| {
        let (w, log) = fleet.start("worker", None);
        let (status, out) = wait_with_deadline(w, &log, 2 * MINUTE);
        assert_eq!(status.code(), Some(3), "{out}");
        assert!(out.contains(why), "{out}");
    };
    let (ok, out) = reshard(&fleet, false, None);
    assert!(!ok && out.contains("re-run with --yes"), "{out}");
    // Killed after the new logs are written, before the point of no return: the fleet is
    // still the old one, and running the command again reuses the shares.
    let (ok, out) = reshard(&fleet, true, Some(CrashPoint::ReshardAfterShares));
    assert!(
        !ok && out.contains("crash point reshard-after-shares reached"),
        "{out}"
    );
    println!("{out}");
    let cold_runs: usize = out
        .lines()
        .filter_map(|l| l.split(" trips in memory, ").nth(1))
        .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(cold_runs > 0, "no cold trips to split:\n{out}");
    // Killed after the committer's reshard record: every start refuses until the command is
    // run again, which only records the shape.
    let (ok, out) = reshard(&fleet, true, Some(CrashPoint::ReshardAfterRecord));
    assert!(
        !ok && out.contains("crash point reshard-after-record reached"),
        "{out}"
    );
    assert_eq!(
        out.matches("its share is already written").count(),
        3,
        "{out}"
    );
    worker_refuses(&mut fleet, "a reshard to 3 tasks was interrupted");
    let (ok, out) = reshard(&fleet, true, None);
    assert!(ok && out.contains("reshard to 3 tasks finished"), "{out}");
    // Once done, the same command has nothing to do.
    let (ok, out) = reshard(&fleet, true, None);
    assert!(!ok && out.contains("the job has 3 tasks"), "{out}");
    // A worker still configured with K = 8 refuses (exit 3) and writes nothing.
    worker_refuses(&mut fleet, "fleet.tasks = 8 but job");

    // The fleet restarted with K = 3 reads the third chunk.
    set_tasks(&fleet, 8, 3);
    // A rewind to a commit of the old tasks is refused: they are not the job's any more.
    let (ok, out) = fleet.setup.operate(
        "rewind",
        &[
            "--to-checkpoint",
            "1",
            "--reason",
            "before the reshard",
            "--yes",
        ],
    );
    assert!(
        !ok && out.contains("before the reshard to 3 tasks"),
        "{out}"
    );
    let committer = fleet.start("committer", None);
    let (w, log) = fleet.start("worker", None);
    assert!(fleet.publish());
    fleet.wait_committed();
    stop(&w);
    let (status, out) = wait_with_deadline(w, &log, 2 * MINUTE);
    assert!(status.success(), "worker: {status:?}\n{out}");
    stop(&committer.0);
    let (status, out) = wait_with_deadline(committer.0, &committer.1, 2 * MINUTE);
    assert!(status.success(), "committer: {status:?}\n{out}");

    // Resharded again, growing to K = 5 (the last round's stop committed everything: no wait).
    let took = std::time::Instant::now();
    let (ok, out) = reshard_to(&fleet, "5", true, None);
    println!("reshard 3 -> 5 tasks took {:?}", took.elapsed());
    assert!(ok && out.contains("reshard written"), "{out}");
    println!("{out}");
    set_tasks(&fleet, 3, 5);
    let committer = fleet.start("committer", None);
    let w1 = fleet.start("worker", None);
    fleet.publish();
    let w2 = fleet.start("worker", None);
    fleet.drain_and_check(vec![w1, w2], committer);
}
