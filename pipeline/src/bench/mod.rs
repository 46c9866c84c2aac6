//! `recon-pipeline bench`: throughput, checkpoint cost, recovery time and memory per trip,
//! measured on the real broker, printed as one JSON document and a human summary.
//!
//! 1. The generator publishes `--events` clean events to a fresh topic.
//! 2. For each delivery mode, a fresh job (own job id and namespace) drains the topic in
//!    process; throughput = records / (time until idle - idle wait).
//! 3. Recovery: a job is crashed right after a checkpoint became durable, then restarted; the
//!    restart's recovery time covers claim, committing the pending checkpoint, and state restore.
//! 4. State: `--state-trips` open trips are loaded into state; resident memory per trip, and
//!    the cost of a barrier's state work (a delta of 1% of trips; a full file) are measured.
//!
//! `--partition-scaling` measures only the drain of one backlog over a few and over many
//! partitions ([`partitions`]).

mod bounded;
mod partitions;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser};
use serde_json::json;
use tokio::sync::watch;

use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::store::ObjectCheckpointStore;
use crate::config::{Config, DeliveryMode, RawConfig};
use crate::crash::CrashPoint;
use crate::generate::{self, GenerateArgs};
use crate::ids::{Generation, JobId};
use crate::job::{self, CrashPlan, JobEnv, JobError, RunReport};
use crate::lakehouse;
use crate::state::{State, codec};

/// Options of the benchmark.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Kafka bootstrap servers of a real broker.
    #[arg(long, env = "RECON_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// Events to publish and consume per mode.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Checkpoint interval of the measured jobs.
    #[arg(long, default_value_t = 10_000)]
    pub checkpoint_interval_ms: u64,
    /// Open trips loaded for the state measurements.
    #[arg(long, default_value_t = 1_000_000)]
    pub state_trips: u64,
    /// Catalog URI (default: SQLite in the bench directory).
    #[arg(long)]
    pub catalog_uri: Option<String>,
    /// Directory for the warehouse, catalog and checkpoints (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Write the JSON result here as well as to stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Skip the Kafka parts (state measurements only).
    #[arg(long)]
    pub state_only: bool,
    /// Measure only bounded state: this many trips over `--bounded-days` simulated days with
    /// about `--bounded-open` open at any time (eviction, cold runs, recovery; no Kafka).
    #[arg(long)]
    pub bounded_trips: Option<u64>,
    /// Open trips at any time of `--bounded-trips`.
    #[arg(long, default_value_t = 1_000_000)]
    pub bounded_open: u64,
    /// Simulated days of `--bounded-trips`.
    #[arg(long, default_value_t = 60)]
    pub bounded_days: u64,
    /// Also measure exactly-once with each optional output on: the alerts topic, and (given a
    /// PostgreSQL URL with `--current-balances-url`) the current-balance table.
    #[arg(long)]
    pub outputs: bool,
    /// PostgreSQL database of the current-balance output for `--outputs`.
    #[arg(long)]
    pub current_balances_url: Option<String>,
    /// Measure only how the drain of `--events` scales with the partition count: one topic per
    /// count in `--scaling-partitions`.
    #[arg(long)]
    pub partition_scaling: bool,
    /// Publish the generator's default noise (1 % exact re-sends, 0.1 % conflicting ones, 0.1 %
    /// poison records) instead of none; out-of-order and late events are on either way.
    #[arg(long)]
    pub noisy: bool,
    /// Partition counts of `--partition-scaling`, fewest first.
    #[arg(long, value_delimiter = ',', default_values_t = [12, 1000])]
    pub scaling_partitions: Vec<i32>,
}

#[derive(Parser)]
struct GenWrap {
    #[command(flatten)]
    args: GenerateArgs,
}

/// The generator's arguments for a bench topic: `args.events` records of `args.events / 3`
/// trips, with the generator's default noise under `--noisy`, else none.
fn generator_args(args: &BenchArgs, topic: &str, partitions: i32) -> GenerateArgs {
    let (partitions, trips, events) = (
        partitions.to_string(),
        (args.events / 3).max(1).to_string(),
        args.events.to_string(),
    );
    let mut gen_args = vec![
        "generate",
        "--brokers",
        &args.brokers,
        "--topic",
        topic,
        "--partitions",
        &partitions,
        "--trips",
        &trips,
        "--events-max",
        &events,
        "--no-progress",
    ];
    if !args.noisy {
        gen_args.extend([
            "--duplicate-rate",
            "0",
            "--conflict-rate",
            "0",
            "--poison-rate",
            "0",
        ]);
    }
    GenWrap::parse_from(gen_args).args
}

fn percentile(mut v: Vec<Duration>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Runs the benchmark and prints JSON + a summary.
pub async fn run(args: BenchArgs) -> anyhow::Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let mut result = json!({ "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) }, "noisy": args.noisy });

    if let Some(trips) = args.bounded_trips {
        result["bounded_state"] =
            bounded::run(&dir, trips, args.bounded_open, args.bounded_days).await?;
        let text = serde_json::to_string_pretty(&result)?;
        println!("{text}");
        if let Some(p) = &args.json {
            std::fs::write(p, &text)?;
        }
        return Ok(result);
    }
    if args.partition_scaling {
        result["partition_scaling"] = partitions::run(&args, &dir).await?;
        let text = serde_json::to_string_pretty(&result)?;
        println!("{text}");
        if let Some(p) = &args.json {
            std::fs::write(p, &text)?;
        }
        return Ok(result);
    }
    result["state"] = state_bench(&dir, args.state_trips).await?;
    if !args.state_only {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let topic = format!("recon.bench.{run_id}");
        let generator = generator_args(&args, &topic, args.partitions);
        let t = Instant::now();
        let summary = generate::run(generator)
            .await
            .context("publishing the bench events")?;
        let produce_s = t.elapsed().as_secs_f64();
        println!("bench: published to {topic} in {produce_s:.1} s");
        result["produce"] = json!({ "seconds": produce_s, "summary": summary.to_string() });

        let mut modes = serde_json::Map::new();
        let mut runs = vec![
            ("exactlyonce", DeliveryMode::ExactlyOnce, false, false),
            ("atleastonce", DeliveryMode::AtLeastOnce, false, false),
        ];
        if args.outputs {
            runs.push(("exactlyonce_alerts", DeliveryMode::ExactlyOnce, true, false));
            if args.current_balances_url.is_some() {
                runs.push((
                    "exactlyonce_current_balances",
                    DeliveryMode::ExactlyOnce,
                    false,
                    true,
                ));
            }
        }
        for (name, mode, alerts, balances) in runs {
            let name = name.to_string();
            let job = format!("bench-{}-{run_id}", name.replace('_', "-"));
            let mut cfg = bench_config(&args, &dir, &topic, &job, mode)?;
            if alerts || balances {
                cfg = with_outputs(&args, &topic, &job, alerts, balances, cfg)?;
            }
            let idle = Duration::from_secs(3);
            let t = Instant::now();
            let report = run_job(&cfg, CrashPlan::default(), idle).await?;
            let busy = t.elapsed().saturating_sub(idle).as_secs_f64();
            let eps = report.counts.records as f64 / busy.max(1e-9);
            // The steady state: from the first batch to the last (start and stop excluded).
            let drain = match (report.first_input, report.last_input) {
                (Some(a), Some(b)) if b > a => report.counts.records as f64 / (b - a).as_secs_f64(),
                _ => 0.0,
            };
            println!(
                "bench: {name}: {} records in {busy:.1} s = {eps:.0} events/s ({drain:.0} events/s from the first batch to the last)",
                report.counts.records
            );
            modes.insert(
                name,
                json!({
                    "records": report.counts.records,
                    "seconds": busy,
                    "events_per_s": eps,
                    "drain_events_per_s": drain,
                    "checkpoints": report.checkpoints,
                    "checkpoint_ms_p50": percentile(report.checkpoint_durations.clone(), 0.5),
                    "checkpoint_ms_p99": percentile(report.checkpoint_durations.clone(), 0.99),
                    "pause_ms_p50": percentile(report.checkpoint_pauses.clone(), 0.5),
                    "pause_ms_p99": percentile(report.checkpoint_pauses.clone(), 0.99),
                    "commit_ms_p50": percentile(report.commit_durations.clone(), 0.5),
                    "commit_ms_p99": percentile(report.commit_durations.clone(), 0.99),
                    "trips_at_end": report.trips,
                    "recovery_s": report.recovery.as_secs_f64(),
                    "first_input_s": report.first_input.map(|d| d.as_secs_f64()),
                    "last_input_s": report.last_input.map(|d| d.as_secs_f64()),
                    "stop_s": report.stop.as_secs_f64(),
                    "loop_s": {
                        "process": report.loop_times.process.as_secs_f64(),
                        "sink_wait": report.loop_times.sink_wait.as_secs_f64(),
                        "barrier": report.loop_times.barrier.as_secs_f64(),
                        "landing": report.loop_times.landing.as_secs_f64(),
                        "source_blocked": report.loop_times.source_blocked.as_secs_f64(),
                        "source_busy": report.loop_times.source_busy.as_secs_f64(),
                        "batches": report.loop_times.batches as f64,
                    },
                }),
            );
        }
        // Each ratio twice: start to stop, and the steady state (first batch to last; the
        // outputs' producers and connections start before the first batch).
        for (field, prefix) in [("events_per_s", ""), ("drain_events_per_s", "drain_")] {
            let eps = |m: &str| modes.get(m).and_then(|v| v[field].as_f64());
            let eo = eps("exactlyonce").unwrap_or(0.0);
            let alo = eps("atleastonce").unwrap_or(0.0);
            result[format!("{prefix}exactly_once_vs_at_least_once")] = json!(eo / alo.max(1e-9));
            for (m, key) in [
                ("exactlyonce_alerts", "alerts_vs_exactly_once"),
                (
                    "exactlyonce_current_balances",
                    "current_balances_vs_exactly_once",
                ),
            ] {
                if let Some(v) = eps(m) {
                    result[format!("{prefix}{key}")] = json!(v / eo.max(1e-9));
                    println!("bench: {prefix}{m} / exactlyonce = {:.2}", v / eo.max(1e-9));
                }
            }
        }
        result["modes"] = serde_json::Value::Object(modes);

        // Recovery: crash right after a durable checkpoint, restart, time the recovery.
        let cfg = bench_config(
            &args,
            &dir,
            &topic,
            &format!("bench-recovery-{run_id}"),
            DeliveryMode::ExactlyOnce,
        )?;
        match run_job(
            &cfg,
            CrashPlan::at(CrashPoint::AfterCheckpointDurable, 2),
            Duration::from_secs(3),
        )
        .await
        {
            Err(e)
                if e.downcast_ref::<JobError>()
                    .is_some_and(|j| matches!(j, JobError::SimulatedCrash(_))) => {}
            other => anyhow::bail!("the recovery bench expected a crash, got {other:?}"),
        }
        let t = Instant::now();
        let report = run_job(&cfg, CrashPlan::default(), Duration::from_secs(3)).await?;
        println!(
            "bench: recovery {} ms ({} trips restored), restart to drained {:.1} s",
            report.recovery.as_millis(),
            report.trips_restored,
            t.elapsed().as_secs_f64() - 3.0
        );
        result["recovery"] = json!({
            "recovery_ms": report.recovery.as_secs_f64() * 1000.0,
            "trips_restored": report.trips_restored,
            "first_data_commit_ms": report.first_data_commit.map(|d| d.as_secs_f64() * 1000.0),
        });
    }
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    if let Some(p) = &args.json {
        std::fs::write(p, &text)?;
    }
    Ok(result)
}

fn bench_config(
    args: &BenchArgs,
    dir: &std::path::Path,
    topic: &str,
    job: &str,
    mode: DeliveryMode,
) -> anyhow::Result<Config> {
    let d = RawConfig::default();
    let raw = RawConfig {
        job_id: job.into(),
        delivery: mode,
        source: crate::config::RawSource {
            brokers: args.brokers.clone(),
            topic: topic.into(),
            ..d.source
        },
        catalog: crate::config::RawCatalog {
            uri: args
                .catalog_uri
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}/catalog.db?mode=rwc", dir.display())),
            warehouse: format!("file://{}/warehouse", dir.display()),
            namespace: job.replace('-', "_"),
            ..d.catalog
        },
        checkpoint: crate::config::RawCheckpoint {
            store: dir.join("checkpoints").display().to_string(),
            interval_ms: args.checkpoint_interval_ms,
            ..d.checkpoint
        },
        ..d
    };
    Ok(Config::resolve(raw)?)
}

/// `cfg` with the alerts topic and/or the current-balance table on.
fn with_outputs(
    args: &BenchArgs,
    topic: &str,
    job: &str,
    alerts: bool,
    balances: bool,
    cfg: Config,
) -> anyhow::Result<Config> {
    let mut raw = RawConfig {
        job_id: cfg.job_id.to_string(),
        delivery: cfg.delivery,
        source: cfg.source.clone(),
        catalog: cfg.catalog.clone(),
        ..RawConfig::default()
    };
    raw.checkpoint.store = match &cfg.checkpoint_store {
        crate::config::StoreLocation::Local(p) => p.display().to_string(),
        crate::config::StoreLocation::Url(u) => u.clone(),
    };
    raw.checkpoint.interval_ms = cfg.checkpoint_interval.as_millis() as u64;
    raw.alerts.enabled = alerts;
    raw.alerts.topic = format!("{topic}.alerts.{job}");
    raw.current_balances.enabled = balances;
    raw.current_balances.url = args.current_balances_url.clone().unwrap_or_default();
    Ok(Config::resolve(raw)?)
}

async fn run_job(cfg: &Config, crash: CrashPlan, idle: Duration) -> anyhow::Result<RunReport> {
    let catalog = lakehouse::open_catalog(cfg).await?;
    let (store, prefix) = crate::checkpoint::store::open(cfg)?;
    let (_tx, rx) = watch::channel(false);
    let env = JobEnv {
        catalog,
        store,
        store_prefix: prefix,
        crash,
        shutdown: rx,
        idle_exit: Some(idle),
        fleet: None,
    };
    Ok(job::run(cfg, env).await?)
}

/// Memory per open trip and the state work of a barrier with `trips` open trips.
async fn state_bench(dir: &std::path::Path, trips: u64) -> anyhow::Result<serde_json::Value> {
    use recon_schemas::currency::Currency;
    use recon_schemas::event::{Event, EventType};
    let base = chrono::DateTime::from_timestamp(1_764_000_000, 0).expect("time");
    let event = |trip: u64, n: u128, kind: EventType| Event {
        event_id: uuid::Uuid::from_u128((u128::from(trip) << 8) | n),
        event_type: kind,
        trip_id: format!("trip-{trip}"),
        amount: rust_decimal::Decimal::new(1234 + (trip % 5000) as i64, 2),
        currency: Currency::USD,
        occurred_at: base + chrono::Duration::seconds((trip % 86_400) as i64),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: 1,
    };
    let rss0 = rss_bytes();
    let mut state = State::default();
    for t in 0..trips {
        state.apply(&event(t, 1, EventType::TripCharge), (t % 4) as i32)?;
        state.apply(&event(t, 2, EventType::RiderPayment), (t % 4) as i32)?;
    }
    let rss1 = rss_bytes();
    let per_trip = (rss1.saturating_sub(rss0)) as f64 / trips.max(1) as f64;
    state.take_changed();

    let store_dir = dir.join("state-bench");
    std::fs::create_dir_all(&store_dir)?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&store_dir)?.with_fsync(true);
    let log = CheckpointLog::new(
        std::sync::Arc::new(ObjectCheckpointStore::new(std::sync::Arc::new(fs))),
        "",
        JobId::new("state-bench").expect("job id"),
    );
    // Barriers touching 1% of the trips each: the delta path.
    let changed_per_barrier = (trips / 100).max(1);
    let mut deltas = Vec::new();
    let mut delta_bytes = 0;
    for b in 0..20u64 {
        for k in 0..changed_per_barrier {
            let t = (b * changed_per_barrier + k) % trips.max(1);
            state.apply(
                &event(t, 3 + u128::from(b), EventType::DriverPayout),
                (t % 4) as i32,
            )?;
        }
        let t0 = Instant::now();
        let changed = state.take_changed();
        let bytes = codec::encode_delta(changed.iter().map(|c| state.trip(*c)), []);
        delta_bytes = bytes.len();
        log.write_state(crate::ids::CheckpointId(b + 1), Generation(1), bytes)
            .await?;
        deltas.push(t0.elapsed());
    }
    let t0 = Instant::now();
    let full = codec::encode_full(&state);
    let full_bytes = full.len();
    log.write_state(crate::ids::CheckpointId(100), Generation(1), full)
        .await?;
    let full_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let t0 = Instant::now();
    let bytes = log
        .read_state("ckpt/00000000000000000100-g1/state.bin")
        .await?;
    let mut restored = State::default();
    codec::apply_file(&mut restored, "full", &bytes, true)?;
    let restore_ms = t0.elapsed().as_secs_f64() * 1000.0;
    println!(
        "bench: state: {trips} open trips, {per_trip:.0} B resident per trip; delta of {changed_per_barrier} trips p50 {:.1} ms p99 {:.1} ms; full {full_ms:.0} ms ({full_bytes} B); restore {restore_ms:.0} ms",
        percentile(deltas.clone(), 0.5),
        percentile(deltas.clone(), 0.99)
    );
    Ok(json!({
        "open_trips": trips,
        "resident_bytes_per_trip": per_trip,
        "delta_trips": changed_per_barrier,
        "delta_bytes": delta_bytes,
        "delta_ms_p50": percentile(deltas.clone(), 0.5),
        "delta_ms_p99": percentile(deltas, 0.99),
        "full_ms": full_ms,
        "full_bytes": full_bytes,
        "restore_full_ms": restore_ms,
    }))
}
