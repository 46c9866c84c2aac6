//! `generate`: realistic, seeded ride-hailing money traffic for Kafka, and its truth.
//!
//! The data's way, top to bottom:
//!
//! - [`config`]: the command line ([`GenerateArgs`]) resolved into [`TrafficConfig`] (what to
//!   generate), [`config::PublishConfig`] (where to) and [`config::TruthConfig`] (what to record).
//! - [`currency_mix`]: which currency a new trip uses.
//! - [`trips`]: one trip's money movements, balanced to the cent or deliberately not.
//! - [`poison`]: bad input, one record per rejection class of [`recon_schemas::decode`].
//! - [`plan`]: the pure core, a deterministic iterator of [`Record`]s: trips interleaved, with
//!   duplicates, conflicting duplicates, out-of-order and late events, and poison mixed in.
//! - [`truth`]: what was meant to be published, to JSON Lines, Parquet and/or PostgreSQL, with a
//!   checksum.
//! - [`kafka`] and [`rate`]: the idempotent producer and the pacing.
//! - [`summary`]: the counts and rate of a run.
//!
//! Architecture invariant: [`plan()`] does no I/O and draws only from the seed, so the same
//! [`TrafficConfig`] gives byte-identical records on every machine; everything else consumes it.

pub mod config;
pub mod currency_mix;
pub mod kafka;
pub mod plan;
pub mod poison;
pub mod rate;
pub mod summary;
pub mod trips;
pub mod truth;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

pub use config::{GenerateArgs, TrafficConfig};
pub use plan::{Plan, Record, RecordKind, plan};
pub use summary::GenerateSummary;

use config::PublishConfig;
use kafka::{DeliveryStats, Publisher};
use plan::IntendedStatuses;
use rate::TokenBucket;
use summary::Tally;
use truth::{TruthRecorder, TruthSummary};

/// Records between progress-bar updates.
const PROGRESS_EVERY: u64 = 8_192;
/// Most waits for one rate-limiter token (each wait is as long as the bucket asks).
const RATE_WAITS_MAX: u32 = 1_000;

/// Runs `generate`: makes sure the topic exists, publishes the plan, records the truth, and
/// returns the summary (also printed by the caller). Fails if any record was not acknowledged.
pub async fn run(args: GenerateArgs) -> anyhow::Result<GenerateSummary> {
    let (mut traffic, publish, truth_cfg) = args.resolve()?;
    traffic.partitions = kafka::ensure_topic(&publish).await?;
    let run_id = traffic.run_id();
    tracing::info!(run_id, topic = %publish.topic, partitions = traffic.partitions, "generating");

    let mut recorder = TruthRecorder::new(&run_id);
    if let Some(path) = &truth_cfg.jsonl_path {
        recorder = recorder.with_jsonl(path)?;
    }
    if let Some(dir) = &truth_cfg.parquet_dir {
        recorder = recorder.with_parquet(dir)?;
    }
    let mut pg_writer = None;
    if let Some(url) = &truth_cfg.postgres_url {
        let (sink, writer) =
            truth::postgres::connect(url, &run_id, traffic.seed, &traffic.describe()).await?;
        recorder = recorder.with_postgres(sink);
        pg_writer = Some(writer);
    }

    let show_progress = !args.no_progress;
    let (traffic_c, publish_c) = (traffic.clone(), publish.clone());
    let published = tokio::task::spawn_blocking(move || {
        publish_plan(&traffic_c, &publish_c, recorder, show_progress)
    })
    .await
    .context("the publishing thread panicked")?;
    let published = match published {
        Ok(p) => p,
        Err(e) => {
            // The writer's own error, if it had one, is the likelier cause: report both.
            if let Some(w) = pg_writer
                && let Err(pg) = w.abandon().await
            {
                return Err(e.context(format!("truth database writer failed: {pg:#}")));
            }
            return Err(e);
        }
    };
    let postgres = match pg_writer {
        Some(w) => Some(w.finish(&published.truth).await?),
        None => None,
    };
    Ok(GenerateSummary::new(
        traffic.seed,
        &publish.topic,
        traffic.partitions,
        &published.tally,
        published.intended,
        published.delivery,
        published.elapsed,
        published.truth,
        postgres,
    ))
}

/// What [`publish_plan`] did.
pub struct Published {
    /// Records by kind.
    pub tally: Tally,
    /// Trips by planned status.
    pub intended: IntendedStatuses,
    /// Broker acknowledgements.
    pub delivery: DeliveryStats,
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// The truth's counts and checksum.
    pub truth: TruthSummary,
}

/// Publishes the plan of `traffic` and records its truth; blocking (run it on a blocking
/// thread). The topic must exist. Waits for every acknowledgement before returning.
pub fn publish_plan(
    traffic: &TrafficConfig,
    publish: &PublishConfig,
    mut truth: TruthRecorder,
    show_progress: bool,
) -> anyhow::Result<Published> {
    let mut publisher = Publisher::connect(publish)?;
    let mut records = plan(traffic);
    let bar = progress_bar(records.estimated_len(), show_progress);
    let mut bucket = publish
        .rate_per_s
        .map(|r| TokenBucket::new(r, Instant::now()));
    let mut tally = Tally::default();
    let start = Instant::now();
    // Bounded: the plan ends after its trips, or after `events_max` records.
    for record in records.by_ref() {
        if let Some(bucket) = &mut bucket {
            for _ in 0..RATE_WAITS_MAX {
                match bucket.take(Instant::now()) {
                    Ok(()) => break,
                    // Waiting serves delivery reports.
                    Err(wait) => publisher.poll(wait),
                }
            }
        }
        truth.observe(&record)?;
        tally.observe(&record);
        publisher.send(&record)?;
        if tally.records().is_multiple_of(PROGRESS_EVERY) {
            bar.set_position(tally.records());
        }
    }
    bar.set_message("waiting for acknowledgements");
    let delivery = publisher.flush(publish.flush_timeout)?;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let truth = truth.finish()?;
    Ok(Published {
        tally,
        intended: records.intended(),
        delivery,
        elapsed,
        truth,
    })
}

/// A progress bar on stderr, hidden when asked or when stderr is not a terminal.
fn progress_bar(len: u64, show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {human_pos}/{human_len} records {rate} eta {eta} {msg}",
    ) {
        let rate = |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", s.per_sec());
        };
        bar.set_style(style.with_key("rate", rate));
    }
    bar
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod service_tests;
