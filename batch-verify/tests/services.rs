//! Against real services (`infra/local/up && eval "$(infra/local/env)"`): Apache Kafka with the
//! day's window found by timestamps, and the PostgreSQL truth written by the generator's own
//! truth writer. Without `RECON_SERVICES=1` the test says loudly that it did not run (and fails
//! when `RECON_REQUIRE_SERVICES=1`, as `infra/local/test` sets).

use std::time::Duration;

use batch_verify::fixture::{Lakehouse, place, simulate};
use batch_verify::options::{Options, TruthSpec};
use batch_verify::report::Status;
use batch_verify::truth::kafka::KafkaScan;
use batch_verify::truth::postgres::{EVENTS_QUERY, REJECTS_QUERY};
use batch_verify::{BusinessDay, verify};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use recon_pipeline::generate::config::Ppm;
use recon_pipeline::generate::truth::TruthRecorder;
use recon_pipeline::generate::{TrafficConfig, plan};

const PARTITIONS: i32 = 3;

fn services() -> Option<(String, String)> {
    let on = std::env::var("RECON_SERVICES").is_ok_and(|v| v == "1");
    if !on {
        assert!(
            std::env::var("RECON_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "RECON_REQUIRE_SERVICES=1 but RECON_SERVICES is not set: run infra/local/up and eval \"$(infra/local/env)\""
        );
        println!(
            "*** SKIPPED batch-verify services test: RECON_SERVICES is not 1. It did NOT run ***"
        );
        return None;
    }
    Some((
        std::env::var("RECON_KAFKA_BOOTSTRAP").ok()?,
        std::env::var("RECON_PG_TRUTH_URL").ok()?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kafka_by_timestamps_and_postgres_truth_are_clean() {
    let Some((brokers, pg)) = services() else {
        return;
    };
    let seed: u64 = rand::random::<u64>() >> 1;
    let traffic = TrafficConfig {
        trips: 250,
        seed,
        partitions: PARTITIONS,
        duplicate: Ppm::new(30_000).unwrap(),
        conflict: Ppm::new(20_000).unwrap(),
        poison: Ppm::new(20_000).unwrap(),
        ..TrafficConfig::default()
    };
    let topic = format!("batch-verify-test-{seed}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin
        .create_topics(
            [&NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &opts,
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let records: Vec<_> = plan(&traffic).collect();
    let placed = place(
        records
            .iter()
            .map(|r| (r.partition_hint, r.key.clone(), r.payload.clone())),
        PARTITIONS,
    );
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for p in &placed {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic)
            .payload(&p.payload[..])
            .partition(p.position.partition);
        if let Some(k) = &p.key {
            rec = rec.key(&k[..]);
        }
        producer.send(rec).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    // The truth in PostgreSQL, through the generator's own writer.
    let run_id = traffic.run_id();
    let (sink, writer) =
        recon_pipeline::generate::truth::postgres::connect(&pg, &run_id, seed, "batch-verify test")
            .await
            .unwrap();
    let recorder = TruthRecorder::new(&run_id).with_postgres(sink);
    let summary = tokio::task::spawn_blocking(move || {
        let mut recorder = recorder;
        for r in &records {
            recorder.observe(r).unwrap();
        }
        recorder.finish().unwrap()
    })
    .await
    .unwrap();
    writer.finish(&summary).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sim = simulate(&placed);
    let lake = Lakehouse::create(dir.path(), &brokers, &topic)
        .await
        .unwrap();
    lake.commit(1, &sim.ledger, &sim.rejected, &sim.balances(), &sim.offsets)
        .await
        .unwrap();

    let day = BusinessDay::new("2025-03-03".parse().unwrap(), "UTC").unwrap();
    let mut o = Options::new(
        day,
        TruthSpec::Kafka {
            scan: KafkaScan::Timestamps,
        },
    );
    o.progress = false;
    o.buckets = 4;
    o.kafka_timeout = Duration::from_secs(120);
    let k = verify(&lake.cfg, lake.catalog.clone(), &o).await.unwrap();
    println!("{k}");
    assert_eq!(k.status, Status::Clean, "{k}");
    assert!(
        k.truth_events > 500 && k.ledger_events == k.truth_events,
        "{k}"
    );

    // Only this run's rows: the truth database is shared with other tests.
    let filter = format!(" AND run_id = '{run_id}'");
    o.truth = TruthSpec::Postgres {
        url: pg,
        events_query: format!("{EVENTS_QUERY}{filter}"),
        rejects_query: REJECTS_QUERY.replace(
            "FROM truth_rejects",
            &format!("FROM truth_rejects WHERE run_id = '{run_id}'"),
        ),
    };
    let p = verify(&lake.cfg, lake.catalog.clone(), &o).await.unwrap();
    println!("{p}");
    assert_eq!(p.status, Status::Clean, "{p}");
    assert_eq!(
        (p.truth_events, p.ledger_events),
        (k.truth_events, k.ledger_events)
    );
    assert_eq!(p.rejected_events, p.truth_rejects);
    assert!(p.truth_rejects > 5, "{p}");
    admin.delete_topics(&[&topic], &opts).await.ok();
}
