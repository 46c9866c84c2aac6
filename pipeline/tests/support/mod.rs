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

/// Runs the job until 1.5 s without input (its idle exit).
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
