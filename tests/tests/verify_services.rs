//! Against real services (`infra/local/up && eval "$(infra/local/env)"`): Apache Kafka (the whole
//! log, or from the broker-time lower bound) and the PostgreSQL truth written by the generator's
//! own truth writer, on a clean day, a job stopped with a backlog, and a day the records were
//! published before. Without `RECON_SERVICES=1` the test says loudly that it did not run (and fails
//! when `RECON_REQUIRE_SERVICES=1`, as `infra/local/test` sets).

use std::time::Duration;

use batch_verify::options::{Options, TruthSpec};
use batch_verify::report::{Kind, Status};
use batch_verify::truth::kafka::KafkaScan;
use batch_verify::truth::postgres::scoped_queries;
use batch_verify::{BusinessDay, verify};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use recon_pipeline::generate::config::Ppm;
use recon_pipeline::generate::truth::TruthRecorder;
use recon_pipeline::generate::{TrafficConfig, plan};
use recon_tests::verify_fixture::{Lakehouse, Placed, place, simulate};

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

/// A topic holding one generator run, and the run's truth in PostgreSQL.
struct Published {
    brokers: String,
    pg: String,
    topic: String,
    run_id: String,
    placed: Vec<Placed>,
    admin: AdminClient<DefaultClientContext>,
}

impl Published {
    /// Creates a topic, publishes `head` raw payloads on every partition then `traffic`, and
    /// writes the run's truth through the generator's own writer.
    async fn new(brokers: String, pg: String, traffic: TrafficConfig, head: &[&[u8]]) -> Self {
        let topic = format!("batch-verify-test-{}", traffic.seed);
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for r in admin
            .create_topics(
                [&NewTopic::new(
                    &topic,
                    PARTITIONS,
                    TopicReplication::Fixed(1),
                )],
                &admin_opts(),
            )
            .await
            .unwrap()
        {
            r.unwrap();
        }
        let records: Vec<_> = plan(&traffic).collect();
        let head =
            (0..PARTITIONS).flat_map(|p| head.iter().map(move |x| (Some(p), None, x.to_vec())));
        let placed = place(
            head.chain(
                records
                    .iter()
                    .map(|r| (r.partition_hint, r.key.clone(), r.payload.clone())),
            ),
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
        // The fixture's positions are the broker's: offsets 0.. per partition, no markers.
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "batch-verify-probe")
            .create()
            .unwrap();
        for p in 0..PARTITIONS {
            let (_, high) = probe
                .fetch_watermarks(&topic, p, Duration::from_secs(30))
                .unwrap();
            let placed_here = placed.iter().filter(|r| r.position.partition == p).count();
            assert_eq!(high, placed_here as i64, "partition {p}");
        }

        let run_id = traffic.run_id();
        let (sink, writer) = recon_pipeline::generate::truth::postgres::connect(
            &pg,
            &run_id,
            traffic.seed,
            "batch-verify test",
        )
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
        Published {
            brokers,
            pg,
            topic,
            run_id,
            placed,
            admin,
        }
    }

    /// A lakehouse holding what the job would have committed after reading `consumed`.
    async fn lakehouse(&self, dir: &std::path::Path, consumed: &[Placed]) -> Lakehouse {
        let sim = simulate(consumed);
        let lake = Lakehouse::create(dir, &self.brokers, &self.topic)
            .await
            .unwrap();
        lake.commit(1, &sim.ledger, &sim.rejected, &sim.balances(), &sim.offsets)
            .await
            .unwrap();
        lake
    }

    /// The PostgreSQL truth of this run only (the database is shared with other tests).
    fn postgres_truth(&self) -> TruthSpec {
        let (events_query, rejects_query) = scoped_queries(&self.run_id).unwrap();
        TruthSpec::Postgres {
            url: self.pg.clone(),
            events_query,
            rejects_query,
        }
    }

    /// Kafka from the log start, Kafka from the broker-time bound, PostgreSQL: in this order.
    fn every_truth(&self) -> [TruthSpec; 3] {
        [
            TruthSpec::Kafka {
                scan: KafkaScan::Full,
            },
            TruthSpec::Kafka {
                scan: KafkaScan::Timestamps,
            },
            self.postgres_truth(),
        ]
    }

    async fn delete(self) {
        self.admin
            .delete_topics(&[&self.topic], &admin_opts())
            .await
            .ok();
    }
}

fn admin_opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

fn options(date: &str, truth: TruthSpec) -> Options {
    let day = BusinessDay::new(date.parse().unwrap(), "UTC").unwrap();
    let mut o = Options::new(day, truth);
    o.progress = false;
    o.buckets = 4;
    o.kafka_timeout = Duration::from_secs(120);
    o
}

/// `trips` trips of traffic without re-sends, conflicts or bad records (every record is one
/// event), on a fresh seed.
fn quiet(trips: u64) -> TrafficConfig {
    TrafficConfig {
        trips,
        seed: rand::random::<u64>() >> 1,
        partitions: PARTITIONS,
        duplicate: Ppm::new(0).unwrap(),
        conflict: Ppm::new(0).unwrap(),
        poison: Ppm::new(0).unwrap(),
        ..TrafficConfig::default()
    }
}

fn noisy(seed: u64, trips: u64) -> TrafficConfig {
    TrafficConfig {
        trips,
        seed,
        partitions: PARTITIONS,
        duplicate: Ppm::new(30_000).unwrap(),
        conflict: Ppm::new(20_000).unwrap(),
        poison: Ppm::new(20_000).unwrap(),
        ..TrafficConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kafka_by_timestamps_and_postgres_truth_are_clean() {
    let Some((brokers, pg)) = services() else {
        return;
    };
    let seed: u64 = rand::random::<u64>() >> 1;
    let run = Published::new(brokers, pg, noisy(seed, 250), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = run.lakehouse(dir.path(), &run.placed).await;
    let mut o = options(
        "2025-03-03",
        TruthSpec::Kafka {
            scan: KafkaScan::Timestamps,
        },
    );
    let k = verify(&lake.cfg, lake.catalog.clone(), &o).await.unwrap();
    println!("{k}");
    assert_eq!(k.status, Status::Clean, "{k}");
    assert!(
        k.truth_events > 500 && k.ledger_events == k.truth_events,
        "{k}"
    );
    assert_eq!(k.job_lag_offsets, Some(0), "{k}");

    o.truth = run.postgres_truth();
    let p = verify(&lake.cfg, lake.catalog.clone(), &o).await.unwrap();
    println!("{p}");
    assert_eq!(p.status, Status::Clean, "{p}");
    assert_eq!(
        (p.truth_events, p.ledger_events),
        (k.truth_events, k.ledger_events)
    );
    assert_eq!(p.rejected_events, p.truth_rejects);
    assert!(p.truth_rejects > 5, "{p}");
    run.delete().await;
}

/// Found on 2026-12-05: with the job stopped on a backlog, the PostgreSQL truth reported
/// `missing 16100` and the Kafka truth `missing 0` (its window ended at a broker-time lookup, so
/// the unconsumed tail was never read). Both truths must report the same loss, and the Kafka
/// truth names it as the job's lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_the_job_never_consumed_is_missing_in_both_truths() {
    let Some((brokers, pg)) = services() else {
        return;
    };
    let run = Published::new(brokers, pg, quiet(200), &[]).await;
    // The job consumed the first 60 % of every partition, then stopped.
    let cut = |p: i32| {
        let n = run
            .placed
            .iter()
            .filter(|r| r.position.partition == p)
            .count();
        (n * 6 / 10) as i64
    };
    let (consumed, backlog): (Vec<Placed>, Vec<Placed>) = run
        .placed
        .iter()
        .cloned()
        .partition(|r| r.position.offset < cut(r.position.partition));
    let day = BusinessDay::new("2025-03-03".parse().unwrap(), "UTC").unwrap();
    let lost = backlog
        .iter()
        .filter(|r| batch_verify::day::payload_time(&r.payload).is_some_and(|t| day.contains(t)))
        .count() as u64;
    assert!(lost > 100, "the backlog holds {lost} events of the day");
    let dir = tempfile::tempdir().unwrap();
    let lake = run.lakehouse(dir.path(), &consumed).await;

    let mut reports = Vec::new();
    for truth in run.every_truth() {
        let r = verify(
            &lake.cfg,
            lake.catalog.clone(),
            &options("2025-03-03", truth),
        )
        .await
        .unwrap();
        println!("{r}");
        reports.push(r);
    }
    let [k, t, p] = &reports[..] else {
        unreachable!("three truths")
    };
    for r in &reports {
        assert_eq!(r.status, Status::Discrepancies, "{r}");
        assert_eq!(r.missing, lost, "{r}");
        assert_eq!(r.duplicates + r.phantom, 0, "{r}");
    }
    assert_eq!(k.truth_events, p.truth_events);
    assert_eq!(t.truth_events, p.truth_events);
    for r in [t, k] {
        assert_eq!(r.job_lag_offsets, Some(backlog.len() as u64), "{r}");
        assert_eq!(r.missing_not_consumed, lost, "{r}");
    }
    let example = k
        .discrepancies
        .iter()
        .find(|d| d.kind == batch_verify::report::Kind::Missing)
        .unwrap();
    assert!(
        example.detail.contains("not consumed by the job yet"),
        "{example:?}"
    );
    run.delete().await;
}

/// Found on 2026-12-05: `phantom_reject` false alarms on undated dead letters. Records are
/// published long after their business day, so the broker-time lookups of the day's start and
/// end both gave offset 0: an empty window, which joined to the lakehouse's rows claimed the
/// offsets before the day's first row without reading them; undated dead letters there looked
/// phantom. Both windows must read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undated_dead_letters_before_the_days_rows_are_read_not_phantom() {
    let Some((brokers, pg)) = services() else {
        return;
    };
    let undated: [&[u8]; 2] = [b"not json at all", b"{\"event_id\": 7}"];
    let run = Published::new(brokers, pg, quiet(60), &undated).await;
    let dir = tempfile::tempdir().unwrap();
    let lake = run.lakehouse(dir.path(), &run.placed).await;
    for scan in [KafkaScan::Timestamps, KafkaScan::Full] {
        let r = verify(
            &lake.cfg,
            lake.catalog.clone(),
            &options("2025-03-03", TruthSpec::Kafka { scan }),
        )
        .await
        .unwrap();
        println!("{scan:?}: {r}");
        assert_eq!(r.status, Status::Clean, "{scan:?}: {r}");
        assert!(r.truth_events > 100, "{r}");
        assert_eq!(r.phantom, 0, "{r}");
    }
    run.delete().await;
}

/// Found on 2026-12-05: check (g) panicked (exit 101) on a value the job never writes. Every bad
/// value is "could not verify" naming the trip and the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_current_balance_value_is_an_error_not_a_panic() {
    use sqlx::Connection;
    let Some((_, pg)) = services() else {
        return;
    };
    let table = format!("bv_current_{}", rand::random::<u32>());
    let mut c = sqlx::PgConnection::connect(&pg).await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {table} (job_id text, trip_id text, charged text, collected text, \
         refunded text, paid_out text, fees text, adjusted text, status text, checkpoint_id bigint, \
         kafka_partition integer)"
    ))
    .execute(&mut c)
    .await
    .unwrap();
    let good = "'1.000', '1.000', '0', '0.800', '0.200', '0'";
    for (job, row) in [
        ("good", format!("'t1', {good}, 'BALANCED', 7")),
        (
            "null",
            "'t2', NULL, '1', '0', '0', '0', '0', 'OPEN', 7".to_string(),
        ),
        (
            "text",
            "'t3', 'abc', '1', '0', '0', '0', '0', 'OPEN', 7".to_string(),
        ),
        ("status", format!("'t4', {good}, NULL, 7")),
        (
            "precise",
            "'t5', '1.0005', '1', '0', '0', '0', '0', 'OPEN', 7".to_string(),
        ),
    ] {
        sqlx::query(&format!("INSERT INTO {table} VALUES ('{job}', {row}, 3)"))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let read = |job: &'static str, max: u64| {
        let (pg, table) = (pg.clone(), table.clone());
        async move {
            let mut rows = Vec::new();
            batch_verify::outputs::current_balances(&pg, &table, job, max, |r| {
                rows.push(r);
                Ok(())
            })
            .await
            .map(|()| rows)
        }
    };
    let good_rows = read("good", 10).await.unwrap();
    assert_eq!(good_rows.len(), 1);
    assert_eq!(good_rows[0].trip_id, "t1");
    assert_eq!(good_rows[0].status, "BALANCED");
    assert_eq!(good_rows[0].checkpoint_id, 7);
    assert_eq!(good_rows[0].kafka_partition, 3);
    assert_eq!(good_rows[0].sums, [1_000, 1_000, 0, 800, 200, 0]);
    for (job, want) in [
        ("null", "column charged: NULL"),
        ("text", "column charged: \"abc\""),
        ("status", "column status"),
        (
            "precise",
            "column charged: \"1.0005\": more than 3 decimal places",
        ),
    ] {
        // Every VerifyError is "could not verify", exit 2 (main.rs).
        let text = read(job, 10).await.unwrap_err().to_string();
        assert!(
            text.contains(want) && text.contains("--skip-outputs"),
            "{job}: {text}"
        );
        assert!(!text.contains(&pg), "the URL is redacted: {text}");
    }
    let e = read("good", 0).await.unwrap_err().to_string();
    assert!(e.contains("--truth-records-max"), "{e}");
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&mut c)
        .await
        .unwrap();
}

/// Planted discrepancies (a lost event, a changed amount, an event written twice) are found
/// alike by the Kafka truth (both windows) and the PostgreSQL truth: the same counts by kind and
/// the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_discrepancies_are_found_alike_by_both_truths() {
    let Some((brokers, pg)) = services() else {
        return;
    };
    let run = Published::new(brokers, pg, quiet(120), &[]).await;
    let mut sim = simulate(&run.placed);
    let day = BusinessDay::new("2025-03-03".parse().unwrap(), "UTC").unwrap();
    let of_day: Vec<usize> = (0..sim.ledger.len())
        .filter(|i| day.contains(sim.ledger[*i].0.occurred_at))
        .collect();
    let (lost, changed, twice) = (of_day[3], of_day[40], of_day[80]);
    let ids = [lost, changed, twice].map(|i| sim.ledger[i].0.event_id.to_string());
    sim.ledger[changed].0.amount += rust_decimal::Decimal::new(1, 2);
    let copy = sim.ledger[twice].clone();
    sim.ledger.push(copy);
    sim.ledger.remove(lost);
    let dir = tempfile::tempdir().unwrap();
    let lake = Lakehouse::create(dir.path(), &run.brokers, &run.topic)
        .await
        .unwrap();
    lake.commit(1, &sim.ledger, &sim.rejected, &sim.balances(), &sim.offsets)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for truth in run.every_truth() {
        let name = format!("{truth:?}");
        let r = verify(
            &lake.cfg,
            lake.catalog.clone(),
            &options("2025-03-03", truth),
        )
        .await
        .unwrap();
        println!("{r}");
        assert_eq!(r.status, Status::Discrepancies, "{r}");
        let by_event = |kind: Kind| -> Vec<String> {
            let mut v: Vec<String> = r
                .discrepancies
                .iter()
                .filter(|d| d.kind == kind)
                .filter_map(|d| d.event_id.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        assert_eq!(by_event(Kind::Missing), vec![ids[0].clone()], "{name}: {r}");
        assert_eq!(
            by_event(Kind::AmountMismatch),
            vec![ids[1].clone()],
            "{name}: {r}"
        );
        assert_eq!(
            by_event(Kind::DuplicateEventId),
            vec![ids[2].clone()],
            "{name}: {r}"
        );
        seen.push((
            name,
            r.discrepancies_by_kind.clone(),
            r.truth_events,
            r.ledger_events,
        ));
    }
    for (name, kinds, truth_events, ledger_events) in &seen[1..] {
        assert_eq!(
            (kinds, truth_events, ledger_events),
            (&seen[0].1, &seen[0].2, &seen[0].3),
            "{name} vs {}",
            seen[0].0
        );
    }
    run.delete().await;
}
