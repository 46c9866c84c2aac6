//! Scenarios that end with the job stopped on purpose: the saved offsets truncated away, or the
//! topic recreated (then accepted by the operator).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use recon_pipeline::generate::Record;
use recon_pipeline::reconcile::Expected;

use super::{Failure, Outcome, Scenario, pipeline, short};
use crate::plan::Terminal;
use crate::traffic;
use crate::verify::Verdict;

impl Scenario<'_> {
    /// Log truncated past the saved offsets, or the topic recreated: the job must stop with a
    /// message and the tables must hold exactly what was read before. A recreated topic must be
    /// refused for its identity; then the operator accepts it (`accept-topic-reset`) and a
    /// draining run must bring the tables to both topics' input exactly once.
    pub(super) fn terminal(&mut self, t: Terminal, out: &mut Outcome) -> Result<(), Failure> {
        let (brokers, topic) = (self.brokers(), self.topic());
        self.orch.during = t.kind().into();
        let a = self.next_chunk();
        self.publish_now(&a)?;
        let mut run = self.orch.job.spawn(Some(3_000), &[])?;
        let s = pipeline(run.wait(Duration::from_secs(240)))?;
        self.orch.record_exit(&run, s, None);
        self.orch.ended.push(run);
        if !s.success() {
            return Err(Failure::Pipeline(format!(
                "the first life of the job failed: {:?}",
                self.orch.exits.last()
            )));
        }
        let before_expected = self.expected.clone();
        let before_sent = self.sent.clone();
        let b = self.chunks.next().unwrap_or_default();
        match t {
            Terminal::LogTruncated => {
                self.publish_now(&b)?;
                let hw = crate::kafka::watermarks(&brokers, &topic)?;
                let cut = self.head_cut()?;
                // Delete past the saved offset wherever the log grew.
                let before: BTreeMap<i32, i64> = hw
                    .iter()
                    .filter(|(p, (_, hi))| *hi > cut.get(p).copied().unwrap_or(0))
                    .map(|(p, (_, hi))| {
                        let saved = cut.get(p).copied().unwrap_or(0);
                        (*p, saved + (hi - saved + 1) / 2)
                    })
                    .collect();
                if before.is_empty() {
                    return Err(Failure::Harness(anyhow::anyhow!("no partition grew")));
                }
                self.ctx
                    .rt
                    .block_on(crate::kafka::delete_records(&brokers, &topic, &before))?;
            }
            Terminal::TopicRecreated => {
                self.ctx
                    .rt
                    .block_on(crate::kafka::delete_topic(&brokers, &topic))?;
                let start = Instant::now();
                while crate::kafka::exists(&brokers, &topic)? {
                    if start.elapsed() > Duration::from_secs(60) {
                        return Err(Failure::Harness(anyhow::anyhow!(
                            "topic {topic} still exists 60 s after deletion"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                let start = Instant::now();
                loop {
                    match self.ctx.rt.block_on(crate::kafka::create_topic(
                        &brokers,
                        &topic,
                        self.partitions,
                    )) {
                        Ok(()) => break,
                        Err(e) if start.elapsed() < Duration::from_secs(60) => {
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(300));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                self.publish_now(&b)?;
            }
        }
        // What a correct job would have had to read (for the report, if it does not stop).
        traffic::expect(&mut self.expected, &b);
        self.sent.extend(b.iter().cloned());
        // An operator-needed stop: exit 3, and nothing written.
        let before = self.footprint()?;
        let mut run = self.orch.job.spawn(Some(4_000), &[])?;
        let status = pipeline(run.wait(Duration::from_secs(180)))?;
        self.orch.record_exit(&run, status, Some("must stop"));
        let msg = run.error_message();
        let text = run.text();
        self.orch.ended.push(run);
        out.traffic = self.counts();
        if status.success() {
            // It carried on: find out what it did with the records it could not have read.
            out.verdict = self.verify_files_against(&self.expected.clone(), &self.sent.clone())?;
            out.observations.push(format!(
                "{}: the job did NOT stop; it continued silently",
                t.kind()
            ));
            return Err(Failure::Pipeline(format!(
                "{}: the job exited 0 instead of stopping with a message (log tail: {}); verification: {}",
                t.kind(),
                text.lines().rev().take(3).collect::<Vec<_>>().join(" | "),
                out.verdict.problems.join("; ")
            )));
        }
        let Some(msg) = msg else {
            return Err(Failure::Pipeline(format!(
                "{}: the job stopped ({status}) without a message",
                t.kind()
            )));
        };
        let diff = self.footprint()?.diff(&before);
        if status.code() != Some(3) || !diff.is_empty() {
            return Err(Failure::Pipeline(format!(
                "{}: the stop must be exit 3 (operator needed) and write nothing; it ended {status} ({}): {msg}",
                t.kind(),
                if diff.is_empty() {
                    "nothing written".to_string()
                } else {
                    format!("it wrote: {diff}")
                }
            )));
        }
        out.observations
            .push(format!("{}: job stopped loudly: {}", t.kind(), short(&msg)));
        if t == Terminal::TopicRecreated && self.orch.job.has_subcommand("accept-topic-reset") {
            if !msg.contains("is not the input checkpoint") {
                return Err(Failure::Pipeline(format!(
                    "{}: the job stopped, but not because the topic is not its input: {msg}",
                    t.kind()
                )));
            }
            out.verdict = self.accept_topic_reset(out)?;
        } else {
            // The tables hold exactly the first life's records (the Kafka truth is gone: files
            // truth).
            self.expected = before_expected;
            self.sent = before_sent;
            out.traffic = self.counts();
            out.verdict = self.verify_files()?;
        }
        self.cleanup();
        Ok(())
    }

    /// The operator's way on after a refused recreated topic: `accept-topic-reset`, then a
    /// draining run; the tables must hold the old topic's records and the new one's, each once
    /// (files truth: the old topic is gone).
    pub(super) fn accept_topic_reset(&mut self, out: &mut Outcome) -> Result<Verdict, Failure> {
        let (status, text) = self.orch.job.operator(
            &[
                "accept-topic-reset",
                "--reason",
                "recon-chaos: topic deleted and recreated",
                "--yes",
            ],
            Duration::from_secs(90),
        )?;
        if !status.success() || !text.contains("topic reset written") {
            return Err(Failure::Pipeline(format!(
                "`accept-topic-reset` after a recreated topic failed ({status}):\n{text}"
            )));
        }
        out.observations.push(format!(
            "topic_deleted_and_recreated: operator accepted the reset ({})",
            short(
                text.lines()
                    .find(|l| l.starts_with("topic reset written"))
                    .unwrap_or("")
            )
        ));
        self.orch.restarts += 1;
        let mut run = self.orch.job.spawn(Some(4_000), &[])?;
        let status = pipeline(run.wait(Duration::from_secs(180)))?;
        self.orch.record_exit(&run, status, None);
        let drained = status.success();
        let tail = run.tail(5);
        self.orch.ended.push(run);
        if !drained {
            return Err(Failure::Pipeline(format!(
                "the run after `accept-topic-reset` failed ({status}): {tail}"
            )));
        }
        out.traffic = self.counts();
        self.verify_files()
    }

    pub(super) fn verify_files_against(
        &mut self,
        expected: &Expected,
        sent: &[Record],
    ) -> Result<Verdict, Failure> {
        self.expected = expected.clone();
        self.sent = sent.to_vec();
        self.verify_files()
    }
}
