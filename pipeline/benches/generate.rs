//! Throughput of the traffic generator: planning alone (records/s, no I/O), planning plus the
//! truth checksum, and, when `RECON_KAFKA_BOOTSTRAP` is set, publishing 1,000,000 records to
//! that broker.
//!
//! ```text
//! cargo bench -p recon-pipeline --bench generate
//! RECON_KAFKA_BOOTSTRAP=127.0.0.1:9092 cargo bench -p recon-pipeline --bench generate
//! ```
//!
//! Prints one JSON line (for scripts) and a human summary. `RECON_BENCH_RECORDS` changes the
//! record count (default 1,000,000); `RECON_BENCH_COMPRESSION` (lz4), `RECON_BENCH_LINGER_MS` (10)
//! and `RECON_BENCH_BATCH_BYTES` (1,000,000) tune the producer. The topic is deleted afterwards.

use std::time::{Duration, Instant};

use recon_pipeline::generate::config::{PublishConfig, TrafficConfig};
use recon_pipeline::generate::truth::TruthRecorder;
use recon_pipeline::generate::{kafka, plan, publish_plan};

fn main() -> anyhow::Result<()> {
    let records: u64 = env_or("RECON_BENCH_RECORDS", 1_000_000)?;
    // About 4.3 records per trip with the default mix: enough trips that the cap is reached.
    let traffic = TrafficConfig {
        trips: records / 3,
        events_max: std::num::NonZeroU64::new(records),
        ..TrafficConfig::default()
    };

    let (n, bytes, plan_s) = timed(|| {
        let mut n = 0u64;
        let mut bytes = 0u64;
        for r in plan(&traffic) {
            n += 1;
            bytes += r.payload.len() as u64;
        }
        (n, bytes)
    });
    let (_, _, truth_s) = timed(|| {
        let mut truth = TruthRecorder::new("bench");
        for r in plan(&traffic) {
            truth.observe(&r).expect("checksum-only truth cannot fail");
        }
        (0, 0)
    });

    let mut kafka_rate = None;
    if let Ok(brokers) = std::env::var("RECON_KAFKA_BOOTSTRAP") {
        let publish = PublishConfig {
            brokers,
            topic: format!("recon.bench-generate-{}", std::process::id()),
            partitions: 8,
            replication_factor: 1,
            create_topic: true,
            rate_per_s: None,
            linger: Duration::from_millis(env_or("RECON_BENCH_LINGER_MS", 10)?),
            batch_size_bytes: env_or("RECON_BENCH_BATCH_BYTES", 1_000_000)?,
            compression: std::env::var("RECON_BENCH_COMPRESSION").unwrap_or_else(|_| "lz4".into()),
            queue_messages_max: 200_000,
            flush_timeout: Duration::from_secs(120),
        };
        let runtime = tokio::runtime::Runtime::new()?;
        let partitions = runtime.block_on(kafka::ensure_topic(&publish))?;
        let traffic = TrafficConfig {
            partitions,
            ..traffic.clone()
        };
        let published = publish_plan(&traffic, &publish, TruthRecorder::new("bench"), false)?;
        kafka_rate = Some((
            published.delivery.delivered,
            published.elapsed.as_secs_f64(),
            publish.topic.clone(),
        ));
        // Leave the shared broker as we found it.
        runtime.block_on(delete_topic(&publish))?;
    }

    let per_s = |n: u64, s: f64| n as f64 / s;
    let json = serde_json::json!({
        "bench": "generate",
        "records": n,
        "payload_bytes_avg": bytes / n.max(1),
        "plan_records_per_s": per_s(n, plan_s).round(),
        "plan_truth_records_per_s": per_s(n, truth_s).round(),
        "kafka_records_per_s": kafka_rate.as_ref().map(|(d, s, _)| per_s(*d, *s).round()),
        "kafka_delivered": kafka_rate.as_ref().map(|(d, _, _)| *d),
    });
    println!("{json}");
    println!(
        "plan:         {n} records ({} B avg) in {plan_s:.2} s = {:.0} records/s",
        bytes / n.max(1),
        per_s(n, plan_s)
    );
    println!(
        "plan + truth: {:.0} records/s (sha256 of canonical lines)",
        per_s(n, truth_s)
    );
    match kafka_rate {
        Some((d, s, topic)) => println!(
            "kafka:        {d} records acknowledged in {s:.2} s = {:.0} records/s (topic {topic})",
            per_s(d, s)
        ),
        None => {
            println!("kafka:        skipped (set RECON_KAFKA_BOOTSTRAP to publish to a broker)")
        }
    }
    Ok(())
}

/// The number in environment variable `name`, or `default`.
fn env_or(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}"))?),
        Err(_) => Ok(default),
    }
}

/// Deletes the benchmark's topic.
async fn delete_topic(publish: &PublishConfig) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &publish.brokers)
        .create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.delete_topics(&[&publish.topic], &opts).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("deleting topic {t}: {e}"))?;
    }
    Ok(())
}

/// Runs `f` and returns its two counts and the seconds it took.
fn timed(f: impl FnOnce() -> (u64, u64)) -> (u64, u64, f64) {
    let start = Instant::now();
    let (a, b) = f();
    (a, b, start.elapsed().as_secs_f64())
}
