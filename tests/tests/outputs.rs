//! The optional exactly-once outputs against the real services: the transactional alerts
//! topic (Apache Kafka, KRaft) and the current-balance table (PostgreSQL).
//!
//! `alerts_and_current_balances_exact_at_every_crash_point`: the real binary, with both outputs
//! on, is SIGKILLed at every named crash point (the Iceberg ones and the two output ones,
//! `before-alerts-commit` = checkpoint durable, Kafka transaction open), input arriving between
//! runs. Then a `read_committed` consumer of the alerts topic must see exactly one alert per
//! transition derived from the input, and the PostgreSQL table must equal every trip's latest
//! `trip_balances` row.
//!
//! `a_zombie_alerts_transaction_is_fenced`: an older producer's open transaction is aborted
//! when a newer instance starts; its commit fails with the fencing error; a `read_committed`
//! consumer sees none of its records.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use recon_pipeline::config::Config;
use recon_pipeline::crash::CrashPoint;
use recon_pipeline::ids::{CheckpointId, JobId, Offset, PartitionId};
use recon_pipeline::outputs::OutputError;
use recon_pipeline::outputs::alerts::{self, InputRecord, Watch};
use recon_pipeline::outputs::alerts_kafka::AlertsProducer;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{demo, lakehouse};
use recon_schemas::decode::Limits;
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::services_or_skip;
use recon_tests::traffic::{create_topic, traffic};

#[test]
fn alerts_and_current_balances_exact_at_every_crash_point() {
    let Some(s) = services_or_skip("alerts_and_current_balances_exact_at_every_crash_point") else {
        return;
    };
    let setup = JobSetup::new(&s, "e2e_outputs", 300);
    let alerts_topic = recon_tests::outputs::enable(&setup.config, &setup.name);
    // Trips leave memory a minute of event time after their last event: a trip whose current
    // balance was still in the backlog at a crash may be cold at the recovery, which must
    // upsert it all the same.
    setup.append_config("[state]\nevict_idle_after_ms = 60000\nevict_settled_after_ms = 60000\n");
    create_topic(&s.kafka_bootstrap, &setup.topic, 3);
    let seed = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
    let records = traffic(&setup.topic, 2000, seed, 3);
    let points: Vec<CrashPoint> = CrashPoint::ALL
        .into_iter()
        .chain(CrashPoint::OUTPUTS)
        .collect();
    let mut chunks = records.chunks(records.len().div_ceil(points.len() + 1));
    let mut expected = Expected::default();
    let logdir = tempfile::tempdir().unwrap();
    for (i, point) in points.iter().enumerate() {
        if let Some(c) = chunks.next() {
            demo::publish(&s.kafka_bootstrap, &setup.topic, c, &mut expected).expect("publish");
        }
        let log = logdir.path().join(format!("run{i}.log"));
        // Visit 2 of a sink point (past recovery); visit 1 of an output point: an input chunk
        // may fit in one checkpoint, so an output transaction can come only once per run.
        let visit = if CrashPoint::OUTPUTS.contains(point) {
            1
        } else {
            2
        };
        let child = setup.spawn(
            5_000,
            &[("RECON_CRASH_AT", format!("{}:{visit}", point.name()))],
            &log,
        );
        let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(120));
        assert_eq!(
            status.signal(),
            Some(9),
            "run {i} should die by SIGKILL at {}; status {status:?}; log:\n{out}",
            point.name()
        );
    }
    for c in chunks {
        demo::publish(&s.kafka_bootstrap, &setup.topic, c, &mut expected).expect("publish");
    }
    let log = logdir.path().join("final.log");
    let child = setup.spawn(4_000, &[], &log);
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(180));
    assert!(status.success(), "final run failed: {status:?}\n{out}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = Config::load(Some(&setup.config)).expect("config");
    let catalog = rt.block_on(lakehouse::open_catalog(&cfg)).expect("catalog");
    let rec = rt
        .block_on(reconcile::check(catalog.as_ref(), &cfg, &expected))
        .expect("reconcile");
    assert!(rec.is_clean(), "{rec}");

    // Alerts: exactly the transitions the input implies, each once; current balances: equal
    // to every trip's latest trip_balances row.
    let (alerts_n, trips) = rt.block_on(recon_tests::outputs::check_exact(
        &cfg,
        catalog.as_ref(),
        &s.kafka_bootstrap,
        &setup.topic,
        &alerts_topic,
        &s.pg_catalog_url,
        expected.records,
    ));
    println!(
        "alerts: {alerts_n} in the topic, 0 duplicates; current balances: {trips} trips equal to trip_balances"
    );
    let latest = rt
        .block_on(reconcile::latest_balances(catalog.as_ref(), &cfg))
        .expect("latest balances");

    // batch-verify's checks (g) and (h), with its own readers and spilled in 4 buckets, agree;
    // then one current balance off by one thousandth is found, by trip, and nothing else.
    let verify = |buckets: usize| {
        rt.block_on(recon_tests::verify_day::kafka_day(
            &cfg,
            catalog.clone(),
            "2025-03-03",
            batch_verify::truth::kafka::KafkaScan::Full,
            buckets,
        ))
    };
    let report = verify(4);
    let checked = report.outputs.clone().expect("outputs checked");
    assert_eq!(checked.current_balances_checked, latest.len() as u64);
    assert_eq!(checked.alerts_checked, alerts_n as u64);
    assert_eq!(
        (checked.current_balances_in_flight, checked.alerts_in_flight),
        (0, 0),
        "the job stopped idle: nothing is in flight"
    );
    let outputs_findings = |r: &batch_verify::report::Report| {
        ["current_balance_mismatch", "alert_mismatch"]
            .map(|k| r.discrepancies_by_kind.get(k).copied().unwrap_or(0))
    };
    assert_eq!(outputs_findings(&report), [0, 0], "{report}");
    let tampered = latest.keys().min().unwrap().clone();
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&s.pg_catalog_url)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE recon_current_balances SET charged = charged + 0.001 \
             WHERE job_id = $1 AND trip_id = $2",
        )
        .bind(&setup.name)
        .bind(&tampered)
        .execute(&mut c)
        .await
        .unwrap();
    });
    let report = verify(3);
    assert_eq!(outputs_findings(&report), [1, 0], "{report}");
    let found = report
        .discrepancies
        .iter()
        .find(|d| d.kind == batch_verify::report::Kind::CurrentBalanceMismatch)
        .expect("kept");
    assert_eq!(
        found.trip_id.as_deref(),
        Some(tampered.as_str()),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_alerts_transaction_is_fenced() {
    let Some(s) = services_or_skip("a_zombie_alerts_transaction_is_fenced") else {
        return;
    };
    let name = recon_tests::unique_name("alerts_fence");
    let input = format!("{name}.events");
    let topic = format!("{name}.alerts");
    let brokers = s.kafka_bootstrap.clone();
    tokio::task::spawn_blocking({
        let (b, i) = (brokers.clone(), input.clone());
        move || create_topic(&b, &i, 1)
    })
    .await
    .unwrap();
    let mut raw = recon_pipeline::config::RawConfig {
        job_id: name.clone(),
        ..Default::default()
    };
    raw.source.brokers = brokers.clone();
    raw.source.topic = input.clone();
    raw.alerts.enabled = true;
    raw.alerts.topic = topic.clone();
    raw.alerts.call_timeout_ms = 20_000;
    let cfg = Config::resolve(raw).expect("config");
    let parts = [PartitionId(0)];
    let alert = |offset: i64| {
        let job = JobId::new(&name).unwrap();
        let mut a = alerts::derive(
            &job,
            &Watch::new(vec!["DISCREPANCY"]),
            [InputRecord {
                partition: 0,
                offset,
                key: Some(b"t-1"),
                payload: br#"{"schema_version":1,"event_id":"00000000-0000-0000-0000-000000000001","event_type":"rider_payment","trip_id":"t-1","amount":"5.00","currency":"EUR","occurred_at":"2025-03-03T10:00:00Z"}"#,
            }],
            &Limits::default(),
        );
        assert_eq!(a.len(), 1, "a payment before its charge enters DISCREPANCY");
        a.remove(0)
    };
    let offsets = BTreeMap::from([(PartitionId(0), Offset(1))]);

    let old = AlertsProducer::connect(&cfg, &parts).await.expect("old");
    old.stage(&[alert(0)], CheckpointId(1), &offsets)
        .expect("old stages");
    // A newer instance starts: init_transactions fences the old producer.
    let new = AlertsProducer::connect(&cfg, &parts).await.expect("new");
    let err = old.commit().expect_err("the zombie's commit must fail");
    println!("zombie commit: {err}");
    assert!(
        matches!(err, OutputError::Fenced { .. }),
        "fencing error expected, got: {err}"
    );
    assert_eq!(new.committed().expect("progress"), None);
    new.stage(&[alert(7)], CheckpointId(2), &offsets)
        .expect("new stages");
    new.commit().expect("new commits");
    assert_eq!(new.committed().expect("progress"), Some(CheckpointId(2)));

    let got = tokio::task::spawn_blocking(move || {
        recon_tests::outputs::alerts_in_topic(&brokers, &topic)
    })
    .await
    .unwrap();
    let offsets: Vec<i64> = got.values().map(|a| a.kafka_offset).collect();
    assert_eq!(
        offsets,
        vec![7],
        "only the new instance's alert is visible: {got:?}"
    );
}
