//! The source's progress watchdog (issue 13, finding 10: after a broker restart the consumer
//! read nothing for 180 s, without an error, with records waiting). Against the real broker, a
//! consumer that can fetch nothing is made on purpose: `fetch.min.bytes` far above the backlog
//! and `fetch.wait.max.ms` at its maximum, so the broker holds every fetch for 5 minutes while
//! the lag stays > 0. With `source.stall_timeout_ms` at its minimum (10 s) the job must notice,
//! recreate its consumer, and, still stuck, stop on its own as transient (exit 1 class:
//! `SourceError::Stalled`) well before the broker would answer — instead of checkpointing
//! nothing forever.

use std::time::{Duration, Instant};

use recon_pipeline::demo;
use recon_pipeline::reconcile::Expected;
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::services_or_skip;
use recon_tests::traffic::{create_topic, default_traffic};

#[test]
fn a_stalled_consumer_is_recreated_then_the_job_stops_as_transient() {
    let Some(s) = services_or_skip("a_stalled_consumer_is_recreated_then_the_job_stops") else {
        return;
    };
    let brokers = s.kafka_bootstrap.clone();
    let setup = JobSetup::new(&s, "watchdog", 1_000);
    create_topic(&brokers, &setup.topic, 3);
    let mut expected = Expected::default();
    demo::publish(
        &brokers,
        &setup.topic,
        &default_traffic(&setup.topic, 50, 11, 3),
        &mut expected,
    )
    .expect("publish");
    // A consumer that can fetch nothing: the broker waits for 100 MB that never come.
    let toml = std::fs::read_to_string(&setup.config).expect("config");
    let toml = toml.replacen(
        "poll_batch_records_max = 500",
        "poll_batch_records_max = 500\nstall_timeout_ms = 10000",
        1,
    ) + "\n[source.properties]\n\"fetch.min.bytes\" = \"100000000\"\n\"fetch.wait.max.ms\" = \"300000\"\n";
    std::fs::write(&setup.config, toml).expect("config");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let started = Instant::now();
    let child = setup.spawn(3_600_000, &[], &log);
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(90));
    let took = started.elapsed();
    assert!(
        !status.success(),
        "a stalled source must stop the job:\n{out}"
    );
    assert!(
        out.contains("source stalled") && out.contains("recreating the Kafka consumer"),
        "the watchdog first recreates the consumer:\n{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("recon-pipeline: error: "))
        .unwrap_or_else(|| panic!("no error line:\n{out}"));
    println!("{line} (after {took:?})");
    for part in [
        "delivered none for",
        "even after the Kafka consumer was recreated",
        "supervisor restarts the job",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    assert!(
        took < Duration::from_secs(75),
        "two stall bounds of 10 s plus the monitor's period, not the broker's 300 s: {took:?}"
    );
}
