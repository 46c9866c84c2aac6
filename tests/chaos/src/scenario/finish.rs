//! The end of a scenario: drain the topic with a final run, verify the tables (reconcile and
//! batch-verify per business day), clean up the topic and the prefixes.

use std::time::Duration;

use super::{Failure, Scenario, pipeline};
use crate::traffic;
use crate::verify::{self, Truth, Verdict};

impl Scenario<'_> {
    /// Stops the last run gracefully, then drains with an idle-exit run (restarting if it fails).
    pub(super) fn drain(&mut self) -> Result<(), Failure> {
        self.orch.reap()?;
        if self.orch.current.is_some() {
            let s = self.orch.stop_graceful(Duration::from_secs(120))?;
            if !s.success() {
                let last = self.orch.exits.last().cloned();
                return Err(Failure::Pipeline(format!(
                    "SIGTERM should stop the job cleanly (exit 0), got {s}: {last:?}"
                )));
            }
        }
        for attempt in 1..=4 {
            let mut run = self.orch.job.spawn(Some(3_000), &[])?;
            let status = pipeline(run.wait(Duration::from_secs(240)))?;
            self.orch.record_exit(&run, status, None);
            let text = run.text();
            self.orch.ended.push(run);
            if status.success() {
                if !text.contains("stopped cleanly") {
                    return Err(Failure::Pipeline(
                        "the draining run exited 0 without \"stopped cleanly\"".into(),
                    ));
                }
                return Ok(());
            }
            if attempt == 4 {
                return Err(Failure::Pipeline(format!(
                    "the draining run failed 4 times; last: {:?}",
                    self.orch.exits.last()
                )));
            }
            self.orch.restarts += 1;
        }
        unreachable!()
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
        let brokers = self.brokers();
        let topic = self.topic();
        let _ = self
            .ctx
            .rt
            .block_on(crate::kafka::delete_topic(&brokers, &topic));
        let ep = &self.ctx.services.endpoints;
        for bucket in [&ep.warehouse_bucket, &ep.checkpoint_bucket] {
            let _ = self.ctx.rt.block_on(crate::storage::delete_prefix(
                ep,
                bucket,
                &self.orch.job.name,
            ));
        }
    }
}
