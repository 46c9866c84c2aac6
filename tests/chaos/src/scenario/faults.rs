//! Injecting each fault while the job works, and measuring how long the job takes to checkpoint
//! new records again.

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::Rng;
use recon_pipeline::generate::Record;

use super::orch::Publisher;
use super::{Failure, Outcome, Recovery, Scenario, pipeline, short};
use crate::plan::{Ambiguity, Fault};
use crate::proxy::pg::CommitAction;

impl Scenario<'_> {
    /// Injects one fault; returns the recovery measured after it.
    pub(super) fn inject(
        &mut self,
        f: &Fault,
        load: Vec<Record>,
        probe: Vec<Record>,
        out: &mut Outcome,
    ) -> Result<Option<Recovery>, Failure> {
        // Make sure a job runs before the fault (the previous fault may have left it dead).
        let since = Utc::now();
        let _ = since;
        let kind = f.kind();
        let mut publisher = None;
        let t_end: DateTime<Utc> = match f {
            Fault::KillRandom { delay_ms } => {
                self.ensure_running()?;
                publisher = Some(self.publish_bg(load, 4));
                std::thread::sleep(Duration::from_millis(*delay_ms));
                self.orch.kill()?;
                Utc::now()
            }
            Fault::CrashPoint { point, nth } => {
                self.ensure_recovered()?;
                let s = self.orch.stop_graceful(Duration::from_secs(120))?;
                if !s.success() {
                    return Err(Failure::Pipeline(format!(
                        "SIGTERM should stop the job cleanly, got {s}: {:?}",
                        self.orch.exits.last()
                    )));
                }
                self.orch
                    .spawn(&[("RECON_CRASH_AT", format!("{point}:{nth}"))])?;
                self.orch.expected_end = Some("crash point");
                // The load trickles in only once the armed run has recovered: published during
                // a long recovery, it arrives as one batch and a crash point that needs its
                // `nth` batch or barrier with input never fires.
                self.wait_armed_recovered()?;
                publisher = Some(self.publish_bg(load, 8));
                let run = self.orch.cur()?;
                let status = pipeline(
                    run.wait(Duration::from_secs(150))
                        .context(format!("waiting for crash point {point}:{nth}")),
                )?;
                let text = run.text();
                self.orch.reap()?;
                if status.signal() != Some(libc::SIGKILL)
                    || !text.contains(&format!("crash point {point} reached"))
                {
                    return Err(Failure::Pipeline(format!(
                        "the run armed with {point}:{nth} should die by SIGKILL there; it ended with {status}"
                    )));
                }
                Utc::now()
            }
            Fault::AmbiguousCommit { how } => {
                self.ensure_recovered()?;
                let pid = self.orch.cur()?.pid();
                let fired_before = self.ctx.pg.control.fired.load(Ordering::SeqCst);
                self.ctx.pg.arm(match how {
                    Ambiguity::KillJob => CommitAction::KillJob(pid),
                    Ambiguity::LoseReply => CommitAction::LoseReply,
                    Ambiguity::DropCommit => CommitAction::DropCommit,
                });
                if *how == Ambiguity::KillJob {
                    self.orch.expected_end = Some("sigkill before the commit reply");
                }
                publisher = Some(self.publish_bg(load, 6));
                let deadline = Instant::now() + Duration::from_secs(120);
                while self.ctx.pg.control.fired.load(Ordering::SeqCst) == fired_before {
                    if Instant::now() > deadline {
                        self.ctx.pg.disarm();
                        return Err(Failure::Pipeline(
                            "no catalog commit within 120 s while records were flowing".into(),
                        ));
                    }
                    if *how != Ambiguity::KillJob {
                        self.orch.supervise()?;
                    } else if !self.orch.cur()?.running() {
                        self.ctx.pg.disarm();
                        return Err(Failure::Pipeline(format!(
                            "the job exited before its commit could be intercepted: {}",
                            self.orch.cur()?.tail(15)
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if *how == Ambiguity::KillJob {
                    let status = self.orch.cur()?.wait(Duration::from_secs(30))?;
                    if status.signal() != Some(libc::SIGKILL) {
                        return Err(Failure::Pipeline(format!(
                            "the job should have been SIGKILLed, got {status}"
                        )));
                    }
                    self.orch.reap()?;
                    out.observations
                        .push("catalog commit landed, job SIGKILLed before the reply".into());
                }
                Utc::now()
            }
            Fault::BrokerStop {
                hard,
                delay_ms,
                down_ms,
            } => {
                self.ensure_recovered()?;
                publisher = Some(self.publish_bg(load, 6));
                std::thread::sleep(Duration::from_millis(*delay_ms));
                self.ctx.services.kafka_stop(*hard)?;
                self.orch.supervise_for(Duration::from_millis(*down_ms))?;
                self.ctx.services.ensure_up()?;
                Utc::now()
            }
            Fault::PartitionAdded { add } => {
                self.ensure_recovered()?;
                return self.partition_added(*add, load, probe, out).map(Some);
            }
            Fault::PgRestart {
                immediate,
                mid_commit,
                delay_ms,
            } => {
                self.ensure_recovered()?;
                publisher = Some(self.publish_bg(load, 6));
                if *mid_commit {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let services = self.ctx.services.clone();
                    let imm = *immediate;
                    self.ctx.pg.arm(CommitAction::Hook(Box::new(move || {
                        let _ = tx.send(services.pg_restart(imm));
                    })));
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        match rx.try_recv() {
                            Ok(r) => {
                                r?;
                                break;
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => {}
                            Err(e) => {
                                return Err(Failure::Harness(anyhow::anyhow!("restart hook: {e}")));
                            }
                        }
                        if Instant::now() > deadline {
                            self.ctx.pg.disarm();
                            return Err(Failure::Pipeline(
                                "no catalog commit within 120 s while records were flowing".into(),
                            ));
                        }
                        self.orch.supervise()?;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(*delay_ms));
                    self.ctx.services.pg_restart(*immediate)?;
                }
                Utc::now()
            }
            Fault::CatalogRefuse { delay_ms, down_ms } => {
                self.ensure_recovered()?;
                publisher = Some(self.publish_bg(load, 6));
                std::thread::sleep(Duration::from_millis(*delay_ms));
                self.ctx.pg.refuse();
                self.orch.supervise_for(Duration::from_millis(*down_ms))?;
                self.ctx.pg.accept();
                Utc::now()
            }
            Fault::Zombie { paused } => {
                self.ensure_recovered()?;
                self.zombie(*paused, load, out)?
            }
            Fault::StorageFaults { rate, for_ms } => {
                self.ensure_recovered()?;
                publisher = Some(self.publish_bg(load, 6));
                self.ctx.s3.faults.enable(*rate);
                self.orch.supervise_for(Duration::from_millis(*for_ms))?;
                self.ctx.s3.faults.disable();
                Utc::now()
            }
            Fault::DiskFull { hold_ms, .. } => {
                self.ensure_recovered()?;
                let Some(fs) = self.tmpfs.as_ref() else {
                    out.observations
                        .push("disk full skipped: tmpfs mounts are not permitted here".into());
                    publisher = Some(self.publish_bg(load, 2));
                    return self.after(&kind, publisher, probe, Utc::now());
                };
                publisher = Some(self.publish_bg(load, 6));
                let filled = fs.fill()?;
                let run = self.orch.cur()?;
                let status = match run.wait(Duration::from_secs(90)) {
                    Ok(s) => s,
                    Err(e) => {
                        return Err(Failure::Pipeline(format!(
                            "the job kept running for 90 s on a full disk ({filled} bytes of ballast): {e:#}"
                        )));
                    }
                };
                self.orch.reap()?;
                let exit = self.orch.exits.last().cloned();
                if status.success()
                    || status.signal().is_some()
                    || exit.as_ref().and_then(|e| e.message.clone()).is_none()
                {
                    return Err(Failure::Pipeline(format!(
                        "on a full disk the job must stop with an error and a message; it ended {status}: {exit:?}"
                    )));
                }
                out.observations.push(format!(
                    "disk full: job stopped loudly: {}",
                    short(exit.and_then(|e| e.message).as_deref().unwrap_or(""))
                ));
                // The orchestrator keeps restarting while the disk is full.
                self.orch.supervise_for(Duration::from_millis(*hold_ms))?;
                fs.free()?;
                Utc::now()
            }
            Fault::Rewind { back, running } => {
                self.ensure_recovered()?;
                if !self.orch.job.has_subcommand("rewind") {
                    out.observations
                        .push("rewind skipped: this recon-pipeline has no `rewind` command".into());
                    publisher = Some(self.publish_bg(load, 2));
                    return self.after(&kind, publisher, probe, Utc::now());
                }
                return self.rewind(*back, *running, load, probe, out).map(Some);
            }
            Fault::GracefulRestart => {
                self.ensure_recovered()?;
                publisher = Some(self.publish_bg(load, 4));
                std::thread::sleep(Duration::from_millis(self.rng.random_range(200..2_000)));
                let s = self.orch.stop_graceful(Duration::from_secs(120))?;
                if !s.success() {
                    return Err(Failure::Pipeline(format!(
                        "SIGTERM should stop the job cleanly (exit 0), got {s}: {:?}",
                        self.orch.exits.last()
                    )));
                }
                Utc::now()
            }
        };
        self.after(&kind, publisher, probe, t_end)
    }

    /// After a fault: finish the load, publish the probe, wait until the job checkpoints new records.
    pub(super) fn after(
        &mut self,
        kind: &str,
        publisher: Option<Publisher>,
        probe: Vec<Record>,
        t_end: DateTime<Utc>,
    ) -> Result<Option<Recovery>, Failure> {
        if let Some(mut p) = publisher {
            // The orchestrator keeps restarting while the rest of the load trickles in.
            let restarts_before = self.orch.restarts;
            while !p.finished() {
                self.orch.supervise()?;
                std::thread::sleep(Duration::from_millis(50));
            }
            p.join()?;
            // Probe records go after the load (per-partition order is part of the truth).
            self.publish_now(&probe)?;
            let (d, _) = pipeline(self.orch.wait_recovered(t_end, Duration::from_secs(180)))?;
            return Ok(Some(Recovery {
                fault: kind.to_string(),
                ms: d.as_millis() as u64,
                restarts: self.orch.restarts - restarts_before,
            }));
        }
        self.publish_now(&probe)?;
        let (d, restarts) = pipeline(self.orch.wait_recovered(t_end, Duration::from_secs(180)))?;
        Ok(Some(Recovery {
            fault: kind.to_string(),
            ms: d.as_millis() as u64,
            restarts,
        }))
    }

    /// A run is current and has finished its recovery (holds its generation), restarting as
    /// needed.
    pub(super) fn ensure_recovered(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if self.orch.supervise()? {
                let run = self.orch.cur()?;
                let epoch = DateTime::<Utc>::from(run.started_at);
                if !run.find("recovered", epoch).is_empty() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(Failure::Pipeline(format!(
                    "no run of the job recovered within 180 s; exits: {:?}",
                    self.orch.exits.iter().rev().take(3).collect::<Vec<_>>()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the current run logged "recovered" or exited (a crash point may fire during
    /// recovery's own publish); bounded.
    fn wait_armed_recovered(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let run = self.orch.cur()?;
            let epoch = DateTime::<Utc>::from(run.started_at);
            if !run.find("recovered", epoch).is_empty() || !run.running() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Failure::Pipeline(
                    "the run armed with a crash point neither recovered nor exited within 120 s"
                        .into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(super) fn ensure_running(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.orch.supervise()? && self.orch.cur()?.running() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Failure::Pipeline(format!(
                    "the job could not be kept running for 120 s; exits: {:?}",
                    self.orch.exits.iter().rev().take(3).collect::<Vec<_>>()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
