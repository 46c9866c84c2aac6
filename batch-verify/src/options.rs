//! The resolved options of a run: what `main` builds from the command line, and what tests
//! and the benchmark build directly.

use std::path::PathBuf;
use std::time::Duration;

use crate::day::BusinessDay;
use crate::truth::kafka::KafkaScan;

/// The source of truth.
#[derive(Clone, Debug)]
pub enum TruthSpec {
    /// The pipeline's own topic (`[source]` of the configuration).
    Kafka {
        /// How the window is found.
        scan: KafkaScan,
    },
    /// The upstream ledger in PostgreSQL.
    Postgres {
        /// Connection URL.
        url: String,
        /// Events query (see [`crate::truth::postgres`]).
        events_query: String,
        /// Dead letters query.
        rejects_query: String,
    },
    /// Parquet / JSON Lines exports.
    Files {
        /// A path, `file://` or `s3://` URL.
        url: String,
    },
}

impl TruthSpec {
    /// `kafka`, `postgres` or `files`.
    pub fn name(&self) -> &'static str {
        match self {
            TruthSpec::Kafka { .. } => "kafka",
            TruthSpec::Postgres { .. } => "postgres",
            TruthSpec::Files { .. } => "files",
        }
    }
}

/// Everything a run needs besides the pipeline's configuration.
#[derive(Clone, Debug)]
pub struct Options {
    /// The business day.
    pub day: BusinessDay,
    /// The source of truth.
    pub truth: TruthSpec,
    /// Safety margin around the day for the Kafka window and the dead-letter scan.
    pub margin: Duration,
    /// Days either side searched for the events of trips that cross the day.
    pub trip_span_days: u32,
    /// Spill buckets per family (memory is about rows / buckets).
    pub buckets: usize,
    /// Where spill files go (a fresh temporary directory inside it, removed at the end).
    pub spill_dir: Option<PathBuf>,
    /// Threads checking buckets.
    pub threads: usize,
    /// Discrepancies kept in the report and written to the table (all are counted).
    pub discrepancies_max: usize,
    /// Append the run to `verification_runs` / `verification_discrepancies`.
    pub record: bool,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Most time reading Kafka may take.
    pub kafka_timeout: Duration,
    /// Most truth records read.
    pub truth_records_max: u64,
    /// Most trips re-checked with neighbouring days (held in memory).
    pub incomplete_trips_max: usize,
    /// Run checks (g)/(h) on the job's optional outputs when its configuration has them on.
    pub check_outputs: bool,
}

impl Options {
    /// Defaults for `day` and `truth`.
    pub fn new(day: BusinessDay, truth: TruthSpec) -> Options {
        Options {
            day,
            truth,
            margin: Duration::from_secs(3600),
            trip_span_days: 2,
            buckets: 64,
            spill_dir: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            discrepancies_max: 100_000,
            record: true,
            progress: true,
            kafka_timeout: Duration::from_secs(3600),
            truth_records_max: 2_000_000_000,
            incomplete_trips_max: 1_000_000,
            check_outputs: true,
        }
    }
}
