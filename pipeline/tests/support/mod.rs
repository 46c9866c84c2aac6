//! What the mock-cluster tests of this crate share.

use std::time::Duration;

use clap::Parser;
use recon_pipeline::checkpoint;
use recon_pipeline::config::Config;
use recon_pipeline::generate::GenerateArgs;
use recon_pipeline::job::{self, CrashPlan, JobEnv, JobError};

/// The generator's arguments, parsed as its CLI would.
#[derive(Parser)]
pub struct Wrap {
    /// The arguments.
    #[command(flatten)]
    pub args: GenerateArgs,
}

/// A mock cluster holding `topic` (`partitions` partitions, nothing published yet) and the
/// generator's default traffic of `trips` trips for it (`seed`).
#[allow(
    dead_code,
    reason = "each test crate includes this module; not all of them use it"
)]
pub fn mock_topic(
    topic: &str,
    partitions: i32,
    trips: u64,
    seed: u64,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Vec<recon_pipeline::generate::Record>,
) {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic(topic, partitions, 1).unwrap();
    let (trips, partitions, seed) = (trips.to_string(), partitions.to_string(), seed.to_string());
    let args = Wrap::parse_from([
        "g",
        "--topic",
        topic,
        "--trips",
        &trips,
        "--partitions",
        &partitions,
        "--seed",
        &seed,
    ])
    .args;
    let (traffic, _, _) = args.resolve().unwrap();
    let records = recon_pipeline::generate::plan(&traffic).collect();
    (cluster, records)
}

/// Runs the job until 1.5 s without input (its idle exit).
#[allow(
    dead_code,
    reason = "each test crate includes this module; not all of them use it"
)]
pub async fn run_until_idle(
    cfg: &Config,
    catalog: std::sync::Arc<dyn iceberg::Catalog>,
) -> Result<job::RunReport, JobError> {
    let (store, prefix) = checkpoint::store::open(cfg).unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let env = JobEnv {
        catalog,
        store,
        store_prefix: prefix,
        crash: CrashPlan::default(),
        shutdown: rx,
        idle_exit: Some(Duration::from_millis(1500)),
        fleet: None,
    };
    job::run(cfg, env).await
}
