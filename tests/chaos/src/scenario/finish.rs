//! The end of a scenario: drain the topic with the running job, verify the tables (reconcile and
//! batch-verify per business day), clean up the topic and the prefixes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use super::{Ctx, Failure, Scenario, pipeline};
use crate::job::ChaosJob;
use crate::traffic;
use crate::verify::{self, Truth, Verdict};

impl Scenario<'_> {
    /// The running job (restarted as an orchestrator would) reads every record published and
    /// checkpoints it; then SIGTERM: final checkpoint and commit, exit 0, "stopped cleanly".
    /// (An extra idle-exit run after the stop cost ~14 s per scenario and proved nothing the
    /// graceful-restart fault does not.)
    pub(super) fn drain(&mut self) -> Result<(), Failure> {
        self.ensure_recovered()?;
        let hw: BTreeMap<i32, i64> = crate::kafka::watermarks(&self.brokers(), &self.topic())?
            .into_iter()
            .map(|(p, (_, hi))| (p, hi))
            .collect();
        pipeline(
            self.wait_cut(&hw, Duration::from_secs(180))
                .context("draining: the job did not checkpoint every published record"),
        )?;
        let s = self.orch.stop_graceful(Duration::from_secs(120))?;
        let text = self.orch.ended.last().map(|r| r.text()).unwrap_or_default();
        if !s.success() || !text.contains("stopped cleanly") {
            return Err(Failure::Pipeline(format!(
                "draining: SIGTERM should stop the job cleanly (exit 0, \"stopped cleanly\"), got {s}: {:?}",
                self.orch.exits.last()
            )));
        }
        Ok(())
    }

    pub(super) fn verify(&self, truth: &Truth) -> Result<Verdict, Failure> {
        let days = traffic::business_days(&self.sent, &self.published_on);
        let spill = self.dir.join("spill");
        std::fs::create_dir_all(&spill).map_err(anyhow::Error::from)?;
        let known = verify::Known {
            published_on: self.published_on.clone(),
            spanning_trips: traffic::spanning_trips(&self.sent, 2),
        };
        let v = self.ctx.rt.block_on(verify::verify(
            &self.orch.job.verify_config,
            &self.expected,
            &days,
            truth,
            &spill,
            &known,
        ))?;
        Ok(v)
    }

    pub(super) fn verify_files(&self) -> Result<Verdict, Failure> {
        let path = self.dir.join("truth.jsonl");
        std::fs::write(&path, traffic::truth_jsonl(&self.sent)).map_err(anyhow::Error::from)?;
        self.verify(&Truth::Files(path))
    }

    pub(super) fn cleanup(&mut self) {
        purge(self.ctx, &self.orch.job, false);
    }
}

/// Deletes the job's topic, its tables from the catalog and its prefixes in both buckets;
/// `wait`: until the topic is really gone (before creating it again). Best effort.
pub(super) fn purge(ctx: &Ctx, job: &ChaosJob, wait: bool) {
    let brokers = &ctx.services.endpoints.kafka;
    if ctx
        .rt
        .block_on(crate::kafka::delete_topic(brokers, &job.topic))
        .is_ok()
        && wait
    {
        let start = std::time::Instant::now();
        while crate::kafka::exists(brokers, &job.topic).unwrap_or(false)
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = ctx
        .rt
        .block_on(crate::tables::drop_namespace(&job.verify_config));
    let ep = &ctx.services.endpoints;
    for bucket in [&ep.warehouse_bucket, &ep.checkpoint_bucket] {
        let _ = ctx
            .rt
            .block_on(crate::storage::delete_prefix(ep, bucket, &job.name));
    }
}
