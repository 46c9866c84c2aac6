//! `recon-pipeline demo`: the whole product on one machine with nothing installed.
//!
//! librdkafka's in-process mock cluster stands in for Kafka (plain produce/consume; it does not
//! honour transactions, which the job does not need on its input), a SQLite catalog and a
//! local warehouse under `./lakehouse` stand in for the lakehouse. The generator feeds the
//! topic; the job runs, is crashed twice on purpose (once mid-batch, once between "checkpoint
//! durable" and "commit"), restarts each time from its checkpoint, and finally drains the
//! topic. Then the demo reads the tables back and reconciles them against what was sent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Args, Parser};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tokio::sync::watch;

use crate::checkpoint;
use crate::config::{Config, RawConfig};
use crate::crash::CrashPoint;
use crate::generate::{self, GenerateArgs, RecordKind};
use crate::job::{self, CrashPlan, JobEnv, JobError};
use crate::lakehouse;
use crate::reconcile::{self, Expected};

/// Options of the demo.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Directory of the SQLite catalog, warehouse and checkpoints (wiped first).
    #[arg(long, default_value = "lakehouse")]
    pub dir: PathBuf,
    /// Trips to generate (the mock cluster keeps only ~5 MiB per partition: keep
    /// trips / partitions under ~2,500).
    #[arg(long, default_value_t = 10_000)]
    pub trips: u64,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Generator seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Parser)]
struct GenWrap {
    #[command(flatten)]
    args: GenerateArgs,
}

/// What the demo found; every figure is asserted before it is printed.
#[derive(Debug)]
pub struct DemoReport {
    /// Runs of the job (crashes + final).
    pub runs: u32,
    /// The reconciliation.
    pub reconciliation: reconcile::Reconciliation,
}

/// Runs the demo end to end.
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("wiping {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;

    let cluster = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    let topic = "recon.trip-events";
    cluster
        .create_topic(topic, args.partitions, 1)
        .context("creating the demo topic")?;

    let generator = GenWrap::parse_from([
        "generate",
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--trips",
        &args.trips.to_string(),
        "--seed",
        &args.seed.to_string(),
        "--partitions",
        &args.partitions.to_string(),
    ])
    .args;
    let (traffic, _, _) = generator.resolve()?;
    let records: Vec<generate::Record> = generate::plan(&traffic).collect();
    let mut expected = Expected::default();
    let chunk = records.len().div_ceil(4).max(1);
    let mut chunks = records.chunks(chunk);
    println!(
        "demo: {} records planned ({} trips, seed {}); they reach the mock cluster in 4 chunks, one before each run",
        records.len(),
        args.trips,
        args.seed
    );

    let raw = RawConfig {
        job_id: "demo".into(),
        source: crate::config::RawSource {
            brokers: brokers.clone(),
            topic: topic.into(),
            poll_batch_records_max: 256,
            ..RawConfig::default().source
        },
        catalog: crate::config::RawCatalog {
            uri: format!("sqlite://{}/catalog.db?mode=rwc", dir.display()),
            warehouse: format!("file://{}/warehouse", dir.display()),
            ..RawConfig::default().catalog
        },
        checkpoint: crate::config::RawCheckpoint {
            store: dir.join("checkpoints").display().to_string(),
            interval_ms: 200,
            ..RawConfig::default().checkpoint
        },
        ..RawConfig::default()
    };
    let cfg = Config::resolve(raw)?;
    let catalog = lakehouse::open_catalog(&cfg).await?;

    let plans = [
        CrashPlan::at(CrashPoint::MidBatch, 3),
        CrashPlan::at(CrashPoint::AfterCheckpointDurable, 2),
        CrashPlan::at(CrashPoint::DuringCommit, 2),
        CrashPlan::default(),
    ];
    let mut runs = 0;
    for plan in plans {
        runs += 1;
        if let Some(c) = chunks.next() {
            publish(&brokers, topic, c, &mut expected)?;
        }
        let (store, prefix) = checkpoint::store::open(&cfg)?;
        let (_tx, rx) = watch::channel(false);
        let env = JobEnv {
            catalog: catalog.clone(),
            store,
            store_prefix: prefix,
            crash: plan.clone(),
            shutdown: rx,
            idle_exit: Some(Duration::from_millis(1500)),
            fleet: None,
        };
        match job::run(&cfg, env).await {
            Err(JobError::SimulatedCrash(p)) => {
                println!(
                    "demo: run {runs}: crashed on purpose at `{}`; restarting from the last checkpoint",
                    p.name()
                );
            }
            Ok(r) => {
                println!(
                    "demo: run {runs}: generation {} resumed at checkpoint {} and drained the topic: {} checkpoints, {} commits, recovery {} ms",
                    r.generation,
                    r.resumed_at,
                    r.checkpoints,
                    r.commits,
                    r.recovery.as_millis()
                );
                ensure!(
                    plan.at.is_none(),
                    "run {runs} should have crashed at {:?} but finished",
                    plan.at
                );
            }
            Err(e) => return Err(e.into()),
        }
    }

    let rec = reconcile::check(catalog.as_ref(), &cfg, &expected).await?;
    println!("{rec}");
    println!(
        "demo: finished in {:.1} s; tables under {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    ensure!(
        rec.is_clean(),
        "the demo's reconciliation found discrepancies (see above)"
    );
    drop(cluster);
    Ok(DemoReport {
        runs,
        reconciliation: rec,
    })
}

/// Publishes planned records to a Kafka topic (idempotent producer, keyed by trip) and adds
/// them to what the tables must hold. Used by the demo and the end-to-end tests.
pub fn publish(
    brokers: &str,
    topic: &str,
    records: &[generate::Record],
    expected: &mut Expected,
) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    for r in records {
        expected.records += 1;
        match &r.kind {
            RecordKind::Valid(ev) => {
                expected.events.insert(ev.event_id, ev.clone());
            }
            RecordKind::Duplicate(_) => expected.duplicates += 1,
            RecordKind::ConflictingDuplicate(_) => expected.conflicts += 1,
            RecordKind::Poison(_) => expected.poison += 1,
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(&r.payload[..]);
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        if let Some(p) = r.partition_hint {
            rec = rec.partition(p);
        }
        let mut rec = Some(rec);
        for _ in 0..10_000 {
            match producer.send(rec.take().expect("record")) {
                Ok(()) => break,
                Err((e, back)) => {
                    ensure!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "producing to the mock cluster: {e}"
                    );
                    rec = Some(back);
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        ensure!(
            rec.is_none(),
            "the mock cluster's producer queue stayed full"
        );
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}
