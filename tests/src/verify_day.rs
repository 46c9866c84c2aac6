//! batch-verify of one business day as the end-to-end tests run it, and the PostgreSQL truth of
//! a test's records written through the generator's own writer.

use std::sync::Arc;
use std::time::Duration;

use batch_verify::options::{Options, TruthSpec};
use batch_verify::report::Report;
use batch_verify::truth::kafka::KafkaScan;
use recon_pipeline::config::Config;
use recon_pipeline::generate::{self, Record};

/// Verifies `date` (UTC) of `cfg`'s job against `truth`, in `buckets` spill buckets; panics
/// when it cannot verify (exit 2).
pub async fn day(
    cfg: &Config,
    catalog: Arc<dyn iceberg::Catalog>,
    date: &str,
    truth: TruthSpec,
    buckets: usize,
) -> Report {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("a date");
    let mut o = Options::new(
        batch_verify::BusinessDay::new(day, "UTC").expect("UTC"),
        truth,
    );
    o.progress = false;
    o.buckets = buckets;
    o.kafka_timeout = Duration::from_secs(120);
    batch_verify::verify(cfg, catalog, &o)
        .await
        .expect("batch-verify")
}

/// [`day`] against the Kafka topic read with `scan`.
pub async fn kafka_day(
    cfg: &Config,
    catalog: Arc<dyn iceberg::Catalog>,
    date: &str,
    scan: KafkaScan,
    buckets: usize,
) -> Report {
    day(cfg, catalog, date, TruthSpec::Kafka { scan }, buckets).await
}

/// Writes `records` as generator run `run_id` to the truth database at `url` (events, dead
/// letters; exact re-sends are not truth rows) and returns the truth that reads that run only.
pub async fn postgres_truth(url: &str, run_id: &str, seed: u64, records: Vec<Record>) -> TruthSpec {
    let (sink, writer) = generate::truth::postgres::connect(url, run_id, seed, "recon-tests")
        .await
        .expect("truth database");
    let recorder = generate::truth::TruthRecorder::new(run_id).with_postgres(sink);
    let summary = tokio::task::spawn_blocking(move || {
        let mut recorder = recorder;
        for r in &records {
            recorder.observe(r).expect("truth row");
        }
        recorder.finish().expect("truth finish")
    })
    .await
    .expect("truth writer");
    writer.finish(&summary).await.expect("truth commit");
    let (events_query, rejects_query) =
        batch_verify::truth::postgres::scoped_queries(run_id).expect("run id");
    TruthSpec::Postgres {
        url: url.to_string(),
        events_query,
        rejects_query,
    }
}
