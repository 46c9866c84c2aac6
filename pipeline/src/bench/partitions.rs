//! `recon-pipeline bench --partition-scaling`: does the job drain a backlog spread over many
//! partitions as fast as one over a few? (issue 13, finding 8: at 1,000 partitions the
//! consumer delivered one batch every 7-10 s and the idle exit left records unread.)
//!
//! For each partition count, the generator publishes the same `--events` to a fresh topic;
//! then a fresh exactly-once job drains it in process with an idle exit. Measured: records
//! read, time from start to the last batch (drain), throughput, the time from the stop
//! decision to the end of `run` (final checkpoint, commit, consumer close), and whether every
//! published record was read before the idle exit.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::{BenchArgs, bench_config, generator_args, run_job};
use crate::config::DeliveryMode;
use crate::generate;
use crate::job::CrashPlan;

/// Idle span of the measured jobs.
const IDLE: Duration = Duration::from_secs(3);

/// Runs the scaling measurement for every count in `args.scaling_partitions`.
pub async fn run(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut rows = Vec::new();
    for &partitions in &args.scaling_partitions {
        let topic = format!("recon.bench.{run_id}.p{partitions}");
        let generator = generator_args(args, &topic, partitions);
        let t = Instant::now();
        let summary = generate::run(generator)
            .await
            .with_context(|| format!("publishing the bench events to {partitions} partitions"))?;
        let published = summary.records;
        println!(
            "bench: published {published} records to {topic} ({partitions} partitions) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let job = format!("bench-p{partitions}-{run_id}");
        let cfg = bench_config(args, dir, &topic, &job, DeliveryMode::ExactlyOnce)?;
        let t = Instant::now();
        let report = run_job(&cfg, CrashPlan::default(), IDLE).await?;
        let total = t.elapsed();
        let drain = report.last_input.unwrap_or(total);
        let eps = report.counts.records as f64 / drain.as_secs_f64().max(1e-9);
        let stop = report.stop;
        println!(
            "bench: {partitions} partitions: {} of {published} records in {:.1} s = {eps:.0} records/s; stop (final checkpoint, commit, consumer close) {:.1} s",
            report.counts.records,
            drain.as_secs_f64(),
            stop.as_secs_f64()
        );
        rows.push(json!({
            "partitions": partitions,
            "published": published,
            "records": report.counts.records,
            "unread_at_exit": published.saturating_sub(report.counts.records),
            "drain_seconds": drain.as_secs_f64(),
            "records_per_s": eps,
            "stop_seconds": stop.as_secs_f64(),
            "total_seconds": total.as_secs_f64(),
            "checkpoints": report.checkpoints,
        }));
    }
    let eps: Vec<f64> = rows
        .iter()
        .filter_map(|r| r["records_per_s"].as_f64())
        .collect();
    let ratio = match (eps.first(), eps.last()) {
        (Some(few), Some(many)) if *many > 0.0 => few / many,
        _ => f64::NAN,
    };
    println!(
        "bench: partition scaling: the fewest partitions drain {ratio:.2}x as fast as the most (issue 13's bar: at most 2x)"
    );
    Ok(json!({ "runs": rows, "slowdown_fewest_to_most": ratio }))
}
