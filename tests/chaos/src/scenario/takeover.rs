//! Another instance or an operator takes over the job while it works: a zombie (paused or
//! concurrent), a rewind (with the job stopped or running), and partitions added mid-run.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use recon_pipeline::generate::Record;

use super::{Failure, Outcome, Recovery, Scenario, pipeline, short};

impl Scenario<'_> {
    pub(super) fn zombie(
        &mut self,
        paused: bool,
        load: Vec<Record>,
        out: &mut Outcome,
    ) -> Result<DateTime<Utc>, Failure> {
        // The first instance must hold its generation before a second one starts; else the
        // "second" simply claims first and the roles swap.
        self.ensure_recovered()?;
        let mut old = self.orch.current.take().context("no run")?;
        if paused {
            old.signal(libc::SIGSTOP)?;
        }
        let spawned = Utc::now();
        self.orch.spawn(&[])?;
        // The new instance claims its generation; only then comes new input (else a running old
        // instance may read and checkpoint it first, and the new one has nothing left to show).
        let new_took_over = self
            .orch
            .cur()?
            .wait_for("recovered", 1, spawned, Duration::from_secs(120))
            .map(|_| ());
        let new_took_over = match new_took_over {
            Ok(()) => {
                let since = Utc::now();
                self.publish_now(&load)?;
                self.orch
                    .cur()?
                    .wait_for_records(since, Duration::from_secs(120))
            }
            Err(e) => Err(e),
        };
        if paused {
            old.signal(libc::SIGCONT)?;
        }
        if let Err(e) = new_took_over {
            let _ = old.kill();
            return Err(Failure::Pipeline(format!(
                "the new instance did not take over: {e:#}"
            )));
        }
        let status = match old.wait(Duration::from_secs(120)) {
            Ok(s) => s,
            Err(e) => return Err(Failure::Pipeline(format!("the zombie kept running: {e:#}"))),
        };
        self.orch.record_exit(&old, status, Some("zombie"));
        let msg = old.error_message().unwrap_or_default();
        self.orch.ended.push(old);
        if status.success() || status.signal().is_some() {
            return Err(Failure::Pipeline(format!(
                "the zombie must stop with an error; it ended {status}"
            )));
        }
        if !(msg.contains("has taken over") || msg.contains("is stale and stops")) {
            return Err(Failure::Pipeline(format!(
                "the zombie stopped without saying it was fenced: {msg:?}"
            )));
        }
        out.observations
            .push(format!("zombie fenced: {}", short(&msg)));
        Ok(Utc::now())
    }

    /// An operator rewinds the job to an older checkpoint: the command must say what it does,
    /// a running instance must be fenced, the restarted job must log the rewind, and at the end
    /// nothing may be duplicated or lost.
    pub(super) fn rewind(
        &mut self,
        back: u32,
        running: bool,
        load: Vec<Record>,
        probe: Vec<Record>,
        out: &mut Outcome,
    ) -> Result<Recovery, Failure> {
        // Some history to rewind over: the load is read and checkpointed first.
        let since = Utc::now();
        let mut p = self.publish_bg(load, 4);
        p.join()?;
        pipeline(
            self.orch
                .cur()?
                .wait_for_records(since, Duration::from_secs(120)),
        )?;
        let entries = self
            .ctx
            .rt
            .block_on(crate::storage::log_entries(&self.orch.job.verify_config))?;
        let head = entries.last().map(|e| e.0).unwrap_or(0);
        let head_cut = entries.last().map(|e| e.2).unwrap_or(0);
        // Barrier checkpoints that had read something, and less than the head: a real rewind.
        let mut candidates: Vec<u64> = entries
            .iter()
            .filter(|(id, barrier, cut)| *barrier && *id < head && *cut > 0 && *cut < head_cut)
            .map(|(id, _, _)| *id)
            .collect();
        if candidates.is_empty() {
            // Everything was read in one checkpoint: rewind to before it.
            candidates = entries
                .iter()
                .filter(|(id, barrier, _)| *barrier && *id < head)
                .map(|(id, _, _)| *id)
                .collect();
        }
        let Some(to) = candidates
            .iter()
            .rev()
            .nth(back.saturating_sub(1) as usize)
            .or(candidates.first())
            .copied()
        else {
            out.observations
                .push("rewind skipped: no older checkpoint retained".into());
            return Err(Failure::Harness(anyhow::anyhow!(
                "no checkpoint to rewind to"
            )));
        };
        if !running {
            let s = self.orch.stop_graceful(Duration::from_secs(120))?;
            if !s.success() {
                return Err(Failure::Pipeline(format!(
                    "SIGTERM should stop the job cleanly, got {s}"
                )));
            }
        }
        let to_s = to.to_string();
        let (status, text) = self.orch.job.operator(
            &[
                "rewind",
                "--to-checkpoint",
                &to_s,
                "--reason",
                "recon-chaos rewind request",
                "--yes",
            ],
            Duration::from_secs(90),
        )?;
        if !status.success() || !text.contains("rewind written") || !text.contains("REWIND written")
        {
            return Err(Failure::Pipeline(format!(
                "`rewind --to-checkpoint {to}` (head {head}) failed ({status}):\n{text}"
            )));
        }
        out.observations.push(format!(
            "rewind: operator command explicit and logged ({})",
            short(
                text.lines()
                    .find(|l| l.starts_with("rewind job"))
                    .unwrap_or("")
            )
        ));
        if running {
            // The running instance holds an older generation now: it must stop, saying so.
            self.orch.expected_end = Some("fenced by the rewind");
            let run = self.orch.cur()?;
            let status = pipeline(
                run.wait(Duration::from_secs(120))
                    .context("the instance running during the rewind kept running"),
            )?;
            let msg = run.error_message().unwrap_or_default();
            self.orch.reap()?;
            if status.success()
                || status.signal().is_some()
                || !(msg.contains("has taken over") || msg.contains("is stale and stops"))
            {
                return Err(Failure::Pipeline(format!(
                    "the instance running during a rewind must stop saying it was fenced; it ended {status}: {msg:?}"
                )));
            }
        }
        let t_end = Utc::now();
        self.orch.restarts += 1;
        self.orch.spawn(&[])?;
        self.publish_now(&probe)?;
        let (d, restarts) = pipeline(self.orch.wait_recovered(t_end, Duration::from_secs(180)))?;
        // The restarted job: does its own log name the rewind (beyond resuming from the entry)?
        let told = self
            .orch
            .cur()?
            .lines()
            .iter()
            .any(|l| l.raw.to_ascii_lowercase().contains("rewind"));
        out.observations.push(format!(
            "rewind: restarted job's log {} the rewind (it resumes from the rewind entry)",
            if told { "names" } else { "does not name" }
        ));
        Ok(Recovery {
            fault: if running {
                "rewind_request_while_running"
            } else {
                "rewind_request"
            }
            .into(),
            ms: d.as_millis() as u64,
            restarts: restarts + 1,
        })
    }

    /// Partitions added while the job runs: does the running job see them? Then a restart must.
    pub(super) fn partition_added(
        &mut self,
        add: i32,
        load: Vec<Record>,
        probe: Vec<Record>,
        out: &mut Outcome,
    ) -> Result<Recovery, Failure> {
        let (brokers, topic) = (self.brokers(), self.topic());
        self.publish_now(&load)?;
        let old = self.partitions;
        self.partitions += add;
        self.ctx.rt.block_on(crate::kafka::add_partitions(
            &brokers,
            &topic,
            self.partitions as usize,
        ))?;
        // A fresh producer sees the new partitions: keyed records spread over them.
        self.publish_now(&probe)?;
        let hw = crate::kafka::watermarks(&brokers, &topic)?;
        let waiting: i64 = hw
            .iter()
            .filter(|(p, _)| **p >= old)
            .map(|(_, (lo, hi))| hi - lo)
            .sum();
        // Wait until the running job has read every old partition to its end.
        let old_hw: BTreeMap<i32, i64> = hw
            .iter()
            .filter(|(p, _)| **p < old)
            .map(|(p, (_, hi))| (*p, *hi))
            .collect();
        pipeline(
            self.wait_cut(&old_hw, Duration::from_secs(120))
                .context("the running job did not catch up on the old partitions"),
        )?;
        let cut = self.head_cut()?;
        let seen_new: Vec<i32> = (old..self.partitions)
            .filter(|p| cut.get(p).is_some_and(|e| *e > 0))
            .collect();
        out.observations.push(if seen_new.is_empty() {
            format!(
                "partition added mid-run: the running job did not read new partition(s) {old}..{} ({waiting} records waited) until it was restarted",
                self.partitions - 1
            )
        } else {
            format!("partition added mid-run: the running job picked up partition(s) {seen_new:?} without a restart")
        });
        // The restart that discovers them.
        let s = self.orch.stop_graceful(Duration::from_secs(120))?;
        if !s.success() {
            return Err(Failure::Pipeline(format!(
                "SIGTERM should stop the job cleanly, got {s}"
            )));
        }
        let t_end = Utc::now();
        let t0 = Instant::now();
        self.orch.restarts += 1;
        self.orch.spawn(&[])?;
        let all_hw: BTreeMap<i32, i64> = hw.iter().map(|(p, (_, hi))| (*p, *hi)).collect();
        pipeline(
            self.wait_cut(&all_hw, Duration::from_secs(120))
                .context("after a restart the job did not read the added partitions"),
        )?;
        let _ = t_end;
        Ok(Recovery {
            fault: "kafka_partition_added".into(),
            ms: t0.elapsed().as_millis() as u64,
            restarts: 1,
        })
    }

    /// The newest checkpoint's cut: partition -> next offset to read.
    pub(super) fn head_cut(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        self.ctx
            .rt
            .block_on(crate::storage::head_cut(&self.orch.job.verify_config))
    }

    /// Polls the checkpoint log until the cut reaches `hw` on every listed partition.
    pub(super) fn wait_cut(
        &mut self,
        hw: &BTreeMap<i32, i64>,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let cut = self.head_cut().unwrap_or_default();
            if hw
                .iter()
                .all(|(p, h)| *h == 0 || cut.get(p).is_some_and(|e| e >= h))
            {
                return Ok(());
            }
            self.orch.supervise()?;
            ensure!(
                start.elapsed() < deadline,
                "checkpoint cut {cut:?} did not reach {hw:?} within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
