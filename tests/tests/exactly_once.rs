//! End-to-end exactly-once against the real services: Apache Kafka (KRaft), the SQL catalog on
//! PostgreSQL, the warehouse and checkpoints on the S3 server.
//!
//! `crash_at_every_named_point`: the real binary is SIGKILLed at each named crash point in turn
//! (input keeps arriving between runs), then drains; the tables must hold every event exactly
//! once, every poison record once in `rejected_events`, and every trip's latest balance must
//! equal the fold of its events.
//!
//! It ends with batch-verify clean for every business day against the Kafka topic and against
//! the upstream ledger in PostgreSQL.
//!
//! `a_zombie_cannot_commit`: two instances of one job run at once; the older one is fenced
//! (exits non-zero saying so) and the tables stay exact.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use recon_pipeline::config::Config;
use recon_pipeline::crash::CrashPoint;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{demo, generate, lakehouse};
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::services_or_skip;
use recon_tests::traffic::{create_topic, traffic};

async fn reconcile(setup: &JobSetup, expected: &Expected) -> reconcile::Reconciliation {
    let cfg = Config::load(Some(&setup.config)).expect("config");
    let catalog = lakehouse::open_catalog(&cfg).await.expect("catalog");
    reconcile::check(catalog.as_ref(), &cfg, expected)
        .await
        .expect("reconcile")
}

#[test]
fn crash_at_every_named_point() {
    let Some(s) = services_or_skip("crash_at_every_named_point") else {
        return;
    };
    let setup = JobSetup::new(&s, "e2e_crash", 300);
    create_topic(&s.kafka_bootstrap, &setup.topic, 3);
    // A fresh seed per run: the truth database keeps every run, keyed by event id.
    let seed = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
    let records = traffic(&setup.topic, 3000, seed, 3);
    let runs = CrashPoint::ALL.len() + 1;
    let mut chunks = records.chunks(records.len().div_ceil(runs));
    let mut expected = Expected::default();
    let logdir = tempfile::tempdir().unwrap();
    for (i, point) in CrashPoint::ALL.iter().enumerate() {
        if let Some(c) = chunks.next() {
            demo::publish(&s.kafka_bootstrap, &setup.topic, c, &mut expected).expect("publish");
        }
        // Visit 2 of each point: past recovery, inside the steady state.
        let log = logdir.path().join(format!("run{i}.log"));
        let child = setup.spawn(
            5_000,
            &[("RECON_CRASH_AT", format!("{}:2", point.name()))],
            &log,
        );
        let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(120));
        assert_eq!(
            status.signal(),
            Some(9),
            "run {i} should die by SIGKILL at {}; status {status:?}; log:\n{out}",
            point.name()
        );
        assert!(
            out.contains(&format!("crash point {} reached", point.name())),
            "{out}"
        );
    }
    for c in chunks {
        demo::publish(&s.kafka_bootstrap, &setup.topic, c, &mut expected).expect("publish");
    }
    let log = logdir.path().join("final.log");
    let child = setup.spawn(4_000, &[], &log);
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(180));
    assert!(status.success(), "final run failed: {status:?}\n{out}");
    assert!(out.contains("stopped cleanly"), "{out}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let rec = rt.block_on(reconcile(&setup, &expected));
    println!("{rec}");
    assert!(
        expected.poison > 0 && expected.duplicates > 0 && expected.conflicts > 0,
        "traffic must be noisy"
    );
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(rec.ledger_rows, expected.events.len() as u64);
    assert_eq!(rec.rejected_rows, expected.poison + expected.conflicts);

    // The nightly proof agrees, against both sources of truth.
    rt.block_on(batch_verify_clean(&setup, &s, &records, &expected, seed));
}

/// Runs batch-verify for every business day of the traffic against the Kafka topic and against
/// the upstream ledger in PostgreSQL (written here by the generator's own truth writer).
async fn batch_verify_clean(
    setup: &JobSetup,
    s: &recon_tests::Services,
    records: &[generate::Record],
    expected: &Expected,
    seed: u64,
) {
    use batch_verify::options::{Options, TruthSpec};
    use batch_verify::report::Status;
    use batch_verify::truth::kafka::KafkaScan;
    use batch_verify::{BusinessDay, verify};

    let run_id = format!("{}-truth", setup.name);
    let postgres =
        recon_tests::verify_day::postgres_truth(&s.pg_truth_url, &run_id, seed, records.to_vec())
            .await;

    let cfg = Config::load(Some(&setup.config)).expect("config");
    let catalog = lakehouse::open_catalog(&cfg).await.expect("catalog");
    // Every business day of the traffic, the spill-over day of the trips that run past midnight
    // included (its dead letters were false `phantom_reject`s until 2026-12-06: the broker-time
    // window was joined to the lakehouse's rows over offsets it never read).
    let mut days: std::collections::BTreeMap<chrono::NaiveDate, u64> = Default::default();
    for e in expected.events.values() {
        *days.entry(e.occurred_at.date_naive()).or_default() += 1;
    }
    assert!(
        days.values().any(|n| *n > 10_000),
        "most events fall on one business day: {days:?}"
    );
    for (day, on_day) in days {
        let mut o = Options::new(
            BusinessDay::new(day, "UTC").unwrap(),
            TruthSpec::Kafka {
                scan: KafkaScan::Full,
            },
        );
        o.progress = false;
        o.buckets = 4;
        o.kafka_timeout = Duration::from_secs(120);
        let mut reports = Vec::new();
        for truth in [
            TruthSpec::Kafka {
                scan: KafkaScan::Full,
            },
            TruthSpec::Kafka {
                scan: KafkaScan::Timestamps,
            },
            postgres.clone(),
        ] {
            o.truth = truth;
            let r = verify(&cfg, catalog.clone(), &o)
                .await
                .expect("batch-verify");
            assert_eq!(r.status, Status::Clean, "{:?}, {day}:\n{r}", o.truth);
            assert_eq!(r.truth_events, on_day, "{:?}, {day}:\n{r}", o.truth);
            assert_eq!(r.ledger_events, on_day, "{:?}, {day}", o.truth);
            reports.push(r);
        }
        // The two Kafka windows see the same dead letters of the day.
        assert_eq!(reports[0].truth_rejects, reports[1].truth_rejects, "{day}");
        assert_eq!(reports[0].rejected_events, reports[1].rejected_events);
    }
}

#[test]
fn a_zombie_cannot_commit() {
    let Some(s) = services_or_skip("a_zombie_cannot_commit") else {
        return;
    };
    let setup = JobSetup::new(&s, "e2e_zombie", 200);
    create_topic(&s.kafka_bootstrap, &setup.topic, 2);
    let records = traffic(&setup.topic, 1500, 12, 2);
    let (first, second) = records.split_at(records.len() / 2);
    let mut expected = Expected::default();
    demo::publish(&s.kafka_bootstrap, &setup.topic, first, &mut expected).expect("publish");
    let logdir = tempfile::tempdir().unwrap();
    let old_log = logdir.path().join("old.log");
    // The old instance would idle for a long time; it must be stopped by fencing, not by idling.
    let old = setup.spawn(60_000, &[], &old_log);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(recon_tests::wait_until(
        "the old instance to commit",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&old_log).unwrap_or_default();
            text.contains("commit landed").then_some(())
        },
    ));
    let new_log = logdir.path().join("new.log");
    let new = setup.spawn(4_000, &[], &new_log);
    let (old_status, old_out) = wait_with_deadline(old, &old_log, Duration::from_secs(90));
    assert!(
        !old_status.success(),
        "the zombie must stop with an error:\n{old_out}"
    );
    assert!(
        old_out.contains("has taken over") || old_out.contains("is stale and stops"),
        "the zombie must say it was fenced:\n{old_out}"
    );
    demo::publish(&s.kafka_bootstrap, &setup.topic, second, &mut expected).expect("publish");
    let (new_status, new_out) = wait_with_deadline(new, &new_log, Duration::from_secs(120));
    assert!(new_status.success(), "{new_out}");
    let rec = rt.block_on(reconcile(&setup, &expected));
    assert!(rec.is_clean(), "{rec}");
}
