//! The generator's knobs: the command-line form ([`GenerateArgs`]) and the resolved form
//! ([`TrafficConfig`], [`PublishConfig`], [`TruthConfig`]) that alone reaches the planning and
//! publishing code.
//!
//! Rates are given as fractions on the command line (`--duplicate-rate 0.01`) and resolved to
//! whole parts per million ([`Ppm`]), so the planner draws integers only and a seed gives the
//! same stream on every machine. Money never passes through here.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use clap::Args;

pub use super::currency_mix::CurrencyMix;

/// `recon-pipeline generate`: publish realistic, seeded ride-hailing money traffic to Kafka and
/// record what was meant to be published (the truth) for verification.
#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    /// Kafka bootstrap servers (host:port, comma-separated).
    #[arg(long, env = "RECON_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// Topic to publish to; created with `--partitions` if missing.
    #[arg(long, default_value = "recon.trip-events")]
    pub topic: String,
    /// Partitions of the topic when this command creates it (an existing topic is kept as is).
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Replication factor of the topic when this command creates it.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Do not create the topic; fail if it does not exist.
    #[arg(long)]
    pub no_create_topic: bool,
    /// Number of trips to simulate (each emits 3 to 7 events).
    #[arg(long, default_value_t = 100_000)]
    pub trips: u64,
    /// Stop after this many records (valid, duplicate and bad ones alike); default: no limit.
    #[arg(long)]
    pub events_max: Option<u64>,
    /// Records per second to publish at (token bucket); 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// First business day of the simulated traffic (UTC, YYYY-MM-DD).
    #[arg(long, default_value = "2025-03-03")]
    pub start_date: NaiveDate,
    /// Number of business days the trips are spread over.
    #[arg(long, default_value_t = 1)]
    pub days: u32,
    /// Seed of the deterministic generator: the same seed and knobs give byte-identical records.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of events re-sent with identical bytes (an at-least-once upstream).
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_rate: f64,
    /// Fraction of events re-sent with the same event_id and a different amount.
    #[arg(long, default_value_t = 0.001)]
    pub conflict_rate: f64,
    /// Fraction of events emitted before an earlier event of the same trip.
    #[arg(long, default_value_t = 0.02)]
    pub out_of_order_rate: f64,
    /// Fraction of events held back and emitted much later in the stream (20k-200k records).
    #[arg(long, default_value_t = 0.001)]
    pub late_rate: f64,
    /// Fraction of records that are bad input; cycles through every rejection class.
    #[arg(long, default_value_t = 0.001)]
    pub poison_rate: f64,
    /// Fraction of trips with a partial refund (still balanced).
    #[arg(long, default_value_t = 0.05)]
    pub refund_rate: f64,
    /// Fraction of trips with a post-trip adjustment such as a toll or tip (still balanced).
    #[arg(long, default_value_t = 0.05)]
    pub adjustment_rate: f64,
    /// Fraction of trips that never settle (payout or payment missing: OPEN).
    #[arg(long, default_value_t = 0.03)]
    pub open_rate: f64,
    /// Fraction of trips whose driver is paid more than the net fare (DISCREPANCY).
    #[arg(long, default_value_t = 0.01)]
    pub overpay_rate: f64,
    /// Currency mix as CODE=WEIGHT pairs, e.g. USD=85,EUR=8,JPY=4,KWD=3.
    #[arg(long, default_value = "USD=85,EUR=8,JPY=4,KWD=3")]
    pub currencies: String,
    /// Trips in flight at once; their events interleave in the stream.
    #[arg(long, default_value_t = 256)]
    pub concurrent_trips: u32,
    /// Write the truth to this PostgreSQL URL (tables truth_runs, truth_events, truth_rejects),
    /// e.g. "$RECON_PG_TRUTH_URL" from infra/local/env.
    #[arg(long)]
    pub truth_postgres: Option<String>,
    /// Write the truth as Parquet into this directory (truth_events.parquet, truth_rejects.parquet).
    #[arg(long)]
    pub truth_parquet: Option<PathBuf>,
    /// Write the truth as JSON Lines to this file; its sha256 is the truth checksum.
    #[arg(long)]
    pub truth_jsonl: Option<PathBuf>,
    /// Producer linger.ms: how long librdkafka waits to fill a batch.
    #[arg(long, default_value_t = 10)]
    pub linger_ms: u64,
    /// Producer batch.size in bytes (per partition).
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_size_bytes: u64,
    /// Producer compression.type: none, lz4, zstd, snappy or gzip.
    #[arg(long, default_value = "lz4")]
    pub compression: String,
    /// Producer queue.buffering.max.messages: records in flight before send waits for acks.
    #[arg(long, default_value_t = 200_000)]
    pub queue_messages_max: u64,
    /// How long to wait at the end for every record to be acknowledged, in seconds.
    #[arg(long, default_value_t = 120)]
    pub flush_timeout_s: u64,
    /// Never draw a progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// A probability in whole parts per million: 0 ..= 1,000,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Ppm(u32);

impl Ppm {
    /// One million parts per million: certainty.
    pub const ONE: u32 = 1_000_000;
    /// Never.
    pub const ZERO: Ppm = Ppm(0);
    /// One in two.
    pub const HALF: Ppm = Ppm(500_000);

    /// `ppm` parts per million; `None` above [`Ppm::ONE`].
    pub fn new(ppm: u32) -> Option<Ppm> {
        (ppm <= Self::ONE).then_some(Ppm(ppm))
    }

    /// Resolves a command-line fraction (0.0 ..= 1.0), rounding to the nearest ppm.
    pub fn from_fraction(name: &str, fraction: f64) -> anyhow::Result<Ppm> {
        ensure!(
            fraction.is_finite() && (0.0..=1.0).contains(&fraction),
            "--{name} must be a fraction between 0 and 1, got {fraction}"
        );
        // In range by the check above, so the cast neither truncates nor wraps.
        Ok(Ppm((fraction * f64::from(Self::ONE)).round() as u32))
    }

    /// The raw parts per million.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Everything that decides the planned records. Same config, same bytes.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Seed of the ChaCha8 generator.
    pub seed: u64,
    /// Trips to simulate.
    pub trips: u64,
    /// Stop after this many records, if set.
    pub events_max: Option<NonZeroU64>,
    /// Partitions of the topic: keyless records get a seeded partition in `0..partitions`.
    pub partitions: i32,
    /// Start of the first business day (midnight UTC).
    pub start: DateTime<Utc>,
    /// Business days the trips spread over, at least 1.
    pub days: u32,
    /// Currency of each new trip.
    pub currencies: CurrencyMix,
    /// Trips in flight at once, at least 1.
    pub concurrent_trips: u32,
    /// Exact re-sends, per valid event.
    pub duplicate: Ppm,
    /// Same id, different amount, per valid event.
    pub conflict: Ppm,
    /// Emitted ahead of an earlier event of its trip, per event.
    pub out_of_order: Ppm,
    /// Held back far into the stream, per event.
    pub late: Ppm,
    /// Bad input, per record; the plan applies at most [`Ppm::HALF`].
    pub poison: Ppm,
    /// Trips with a partial refund.
    pub refund: Ppm,
    /// Trips with an adjustment.
    pub adjustment: Ppm,
    /// Trips that never settle.
    pub open: Ppm,
    /// Trips with an overpaid driver.
    pub overpay: Ppm,
}

impl Default for TrafficConfig {
    /// The command-line defaults, with 1,000 trips.
    fn default() -> Self {
        TrafficConfig {
            seed: 42,
            trips: 1_000,
            events_max: None,
            partitions: 8,
            start: NaiveDate::from_ymd_opt(2025, 3, 3)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
                .unwrap_or_default(),
            days: 1,
            currencies: CurrencyMix::parse("USD=85,EUR=8,JPY=4,KWD=3")
                .unwrap_or_else(|e| unreachable!("default mix parses: {e}")),
            concurrent_trips: 256,
            duplicate: Ppm(10_000),
            conflict: Ppm(1_000),
            out_of_order: Ppm(20_000),
            late: Ppm(1_000),
            poison: Ppm(1_000),
            refund: Ppm(50_000),
            adjustment: Ppm(50_000),
            open: Ppm(30_000),
            overpay: Ppm(10_000),
        }
    }
}

impl TrafficConfig {
    /// Every knob that shapes the records, as `name=value` pairs in a fixed order.
    pub fn describe(&self) -> String {
        format!(
            "seed={} trips={} events_max={} partitions={} start={} days={} currencies={} \
             concurrent_trips={} duplicate_ppm={} conflict_ppm={} out_of_order_ppm={} late_ppm={} \
             poison_ppm={} refund_ppm={} adjustment_ppm={} open_ppm={} overpay_ppm={}",
            self.seed,
            self.trips,
            self.events_max.map_or(0, NonZeroU64::get),
            self.partitions,
            self.start.to_rfc3339(),
            self.days,
            self.currencies,
            self.concurrent_trips,
            self.duplicate.0,
            self.conflict.0,
            self.out_of_order.0,
            self.late.0,
            self.poison.0,
            self.refund.0,
            self.adjustment.0,
            self.open.0,
            self.overpay.0,
        )
    }

    /// Identifies the run in the truth: `s<seed>-` and 12 hex digits of the SHA-256 of
    /// [`TrafficConfig::describe`]. The same knobs give the same id, so a re-run is recognised.
    pub fn run_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.describe().as_bytes());
        format!("s{}-{}", self.seed, &hex::encode(digest)[..12])
    }
}

/// How records are published.
#[derive(Clone, Debug)]
pub struct PublishConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Target topic.
    pub topic: String,
    /// Partitions to create the topic with.
    pub partitions: i32,
    /// Replication factor to create the topic with.
    pub replication_factor: i32,
    /// Create the topic when missing.
    pub create_topic: bool,
    /// Records per second, if limited.
    pub rate_per_s: Option<NonZeroU64>,
    /// librdkafka linger.ms.
    pub linger: Duration,
    /// librdkafka batch.size.
    pub batch_size_bytes: u64,
    /// librdkafka compression.type.
    pub compression: String,
    /// librdkafka queue.buffering.max.messages.
    pub queue_messages_max: u64,
    /// Deadline for the final flush.
    pub flush_timeout: Duration,
}

/// Where the truth goes; any combination, or nowhere.
#[derive(Clone, Debug, Default)]
pub struct TruthConfig {
    /// PostgreSQL connection URL.
    pub postgres_url: Option<String>,
    /// Directory for the Parquet files.
    pub parquet_dir: Option<PathBuf>,
    /// JSON Lines file.
    pub jsonl_path: Option<PathBuf>,
}

impl GenerateArgs {
    /// Validates the arguments and splits them into the three resolved configs.
    pub fn resolve(&self) -> anyhow::Result<(TrafficConfig, PublishConfig, TruthConfig)> {
        ensure!(
            self.partitions >= 1,
            "--partitions must be at least 1, got {}",
            self.partitions
        );
        ensure!(
            self.replication_factor >= 1,
            "--replication-factor must be at least 1, got {}",
            self.replication_factor
        );
        ensure!(self.days >= 1, "--days must be at least 1");
        ensure!(
            (1..=100_000).contains(&self.concurrent_trips),
            "--concurrent-trips must be 1..=100000, got {}",
            self.concurrent_trips
        );
        ensure!(!self.topic.is_empty(), "--topic must not be empty");
        ensure!(
            matches!(
                self.compression.as_str(),
                "none" | "lz4" | "zstd" | "snappy" | "gzip"
            ),
            "--compression must be one of none, lz4, zstd, snappy, gzip; got {:?}",
            self.compression
        );
        ensure!(
            (1..=10_000_000).contains(&self.queue_messages_max),
            "--queue-messages-max must be 1..=10000000 (librdkafka's limit)"
        );
        let start = self
            .start_date
            .and_hms_opt(0, 0, 0)
            .context("--start-date midnight")?
            .and_utc();
        // One spare day: refunds and payouts land hours after the last trip starts.
        let end = start
            .date_naive()
            .checked_add_days(chrono::Days::new(u64::from(self.days) + 1));
        ensure!(
            start.year() >= 2000 && end.is_some_and(|d| d.year() < 2100),
            "--start-date and --days must keep the traffic within 2000..2100 (the decoder's range)"
        );
        let traffic = TrafficConfig {
            seed: self.seed,
            trips: self.trips,
            events_max: self.events_max.and_then(NonZeroU64::new),
            partitions: self.partitions,
            start,
            days: self.days,
            currencies: CurrencyMix::parse(&self.currencies)?,
            concurrent_trips: self.concurrent_trips,
            duplicate: Ppm::from_fraction("duplicate-rate", self.duplicate_rate)?,
            conflict: Ppm::from_fraction("conflict-rate", self.conflict_rate)?,
            out_of_order: Ppm::from_fraction("out-of-order-rate", self.out_of_order_rate)?,
            late: Ppm::from_fraction("late-rate", self.late_rate)?,
            poison: Ppm::from_fraction("poison-rate", self.poison_rate)?,
            refund: Ppm::from_fraction("refund-rate", self.refund_rate)?,
            adjustment: Ppm::from_fraction("adjustment-rate", self.adjustment_rate)?,
            open: Ppm::from_fraction("open-rate", self.open_rate)?,
            overpay: Ppm::from_fraction("overpay-rate", self.overpay_rate)?,
        };
        ensure!(
            traffic.poison <= Ppm::HALF,
            "--poison-rate must not exceed 0.5: trips must make progress"
        );
        ensure!(
            u64::from(traffic.open.get()) + u64::from(traffic.overpay.get()) <= u64::from(Ppm::ONE),
            "--open-rate plus --overpay-rate must not exceed 1"
        );
        let publish = PublishConfig {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            create_topic: !self.no_create_topic,
            rate_per_s: NonZeroU64::new(self.rate),
            linger: Duration::from_millis(self.linger_ms),
            batch_size_bytes: self.batch_size_bytes,
            compression: self.compression.clone(),
            queue_messages_max: self.queue_messages_max,
            flush_timeout: Duration::from_secs(self.flush_timeout_s),
        };
        let truth = TruthConfig {
            postgres_url: self.truth_postgres.clone(),
            parquet_dir: self.truth_parquet.clone(),
            jsonl_path: self.truth_jsonl.clone(),
        };
        Ok((traffic, publish, truth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GenerateArgs,
    }

    fn parse(argv: &[&str]) -> anyhow::Result<(TrafficConfig, PublishConfig, TruthConfig)> {
        let mut full = vec!["generate"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full)?.args.resolve()
    }

    #[test]
    fn defaults_resolve() {
        let (t, p, truth) = parse(&[]).unwrap();
        assert_eq!(t.seed, 42);
        assert_eq!(t.duplicate, Ppm(10_000));
        assert_eq!(p.rate_per_s, None);
        assert!(p.create_topic);
        assert!(truth.jsonl_path.is_none());
        assert_eq!(t.start, TrafficConfig::default().start);
        assert_eq!(t.currencies, TrafficConfig::default().currencies);
    }

    #[test]
    fn rejects_bad_knobs() {
        for argv in [
            &["--duplicate-rate", "1.5"][..],
            &["--poison-rate", "-0.1"],
            &["--currencies", "USD=1,XYZ=2"],
            &["--currencies", "usd"],
            &["--currencies", "USD=0"],
            &["--partitions", "0"],
            &["--start-date", "1999-12-31"],
            &["--start-date", "2099-12-31", "--days", "5"],
            &["--compression", "brotli"],
            &["--open-rate", "0.6", "--overpay-rate", "0.6"],
        ] {
            assert!(parse(argv).is_err(), "{argv:?} should be rejected");
        }
    }

    #[test]
    fn ppm_rounds() {
        assert_eq!(Ppm::from_fraction("x", 0.001).unwrap(), Ppm(1_000));
        assert_eq!(Ppm::from_fraction("x", 1.0).unwrap(), Ppm(Ppm::ONE));
        assert!(Ppm::from_fraction("x", f64::NAN).is_err());
        assert_eq!(Ppm::new(Ppm::ONE + 1), None);
    }
}
