//! A fleet scenario (`plan::fleet`): the job split into K tasks, run by worker processes
//! (`run --role worker`) and one committer (`run --role committer`), each supervised like an
//! orchestrator would (a killed or crashed process comes back, with backoff), under the plan's
//! faults. Then every record is published, the harness polls until the tables hold every event,
//! SIGTERMs the workers and then the committer (each must exit 0), and verifies: reconcile,
//! batch-verify on every business day, and every commit sequence of the committer in exactly
//! one snapshot per table (ranges contiguous from 1, ending at the committer's last sequence).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use recon_pipeline::generate::Record;

use super::fleet_procs::{CLAIMED, End, Fleet, HANDOVER, JOINED, RECORD, REVOKED, Role, owned};
use super::{Failure, Outcome, Recovery, Scenario};
use crate::job::Run;
use crate::plan::fleet::{FleetFault, FleetPlan};
use crate::verify::Truth;

/// What a fleet scenario's processes did (from their logs).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FleetOutcome {
    /// Worker processes started (restarts included).
    pub worker_runs: u32,
    /// Committer processes started (restarts included).
    pub committer_runs: u32,
    /// Workers running at the drain.
    pub workers_at_end: usize,
    /// Task starts over all workers.
    pub task_starts: u64,
    /// Revocations logged (`tasks revoked`).
    pub revocations: u64,
    /// Handovers: a task's first checkpoint on a worker, ms since it was assigned (p50, max).
    pub handovers: u64,
    /// See `handovers`.
    pub handover_p50_ms: u64,
    /// See `handovers`.
    pub handover_max_ms: u64,
    /// `commit record durable` lines over all committers.
    pub commit_records: u64,
    /// The last commit sequence of the committer that stopped at the drain.
    pub last_sequence: u64,
    /// Committer snapshots per table.
    pub snapshots_per_table: BTreeMap<String, usize>,
    /// Committers that stopped fenced (exit 4) after a second one started.
    pub fenced_committers: u32,
}

impl Scenario<'_> {
    /// Runs the fleet scenario.
    pub(super) fn fleet(&mut self, out: &mut Outcome) -> Result<(), Failure> {
        let plan = self.plan.fleet.clone().expect("a fleet plan");
        let mut f = Fleet::default();
        let r = self.fleet_inner(&plan, &mut f, out);
        for s in &mut f.slots {
            if let Some(run) = s.run.take() {
                f.ended.push(run);
            }
        }
        f.out.committer_runs = f.committers;
        f.out.worker_runs = f.workers;
        let mut handovers = Vec::new();
        for run in &f.ended {
            for l in run.lines() {
                match l.message.as_str() {
                    "task started" => f.out.task_starts += 1,
                    REVOKED => f.out.revocations += 1,
                    RECORD => f.out.commit_records += 1,
                    HANDOVER => handovers.push(l.num("handover_ms").unwrap_or(0)),
                    _ => {}
                }
            }
        }
        let p = crate::report::Percentiles::of(handovers);
        (f.out.handovers, f.out.handover_p50_ms) = (p.count as u64, p.p50_ms);
        f.out.handover_max_ms = p.max_ms;
        self.orch.ended.append(&mut f.ended);
        out.fleet = Some(f.out);
        r
    }

    fn fleet_inner(
        &mut self,
        plan: &FleetPlan,
        f: &mut Fleet,
        out: &mut Outcome,
    ) -> Result<(), Failure> {
        let phase = Instant::now();
        for path in [&self.orch.job.config, &self.orch.job.verify_config] {
            let mut text = std::fs::read_to_string(path).map_err(anyhow::Error::from)?;
            text.push_str(&plan.toml());
            std::fs::write(path, text).map_err(anyhow::Error::from)?;
        }
        let first = self.next_chunk();
        self.publish_now(&first)?;
        self.orch.during = "start".into();
        self.add_slot(f, Role::Committer)?;
        for _ in 0..plan.workers {
            self.add_slot(f, Role::Worker)?;
        }
        let t0 = Utc::now() - chrono::Duration::seconds(1);
        self.wait_record(f, t0, "the fleet's first commit")?;
        for fault in &plan.faults {
            self.orch.during = fault.kind();
            let load = self.next_chunk();
            let probe = self.next_chunk();
            let r = self.fleet_fault(f, fault, load, probe, out)?;
            out.recoveries.push(r);
        }
        self.orch.during = "drain".into();
        while !self.chunks.as_slice().is_empty() {
            let c = self.next_chunk();
            self.publish_now(&c)?;
        }
        out.phases_ms
            .insert("faults".into(), phase.elapsed().as_millis() as u64);
        let t = Instant::now();
        self.fleet_drain(f)?;
        out.phases_ms
            .insert("drain".into(), t.elapsed().as_millis() as u64);
        let t = Instant::now();
        out.traffic = self.counts();
        out.verdict = self.verify(&Truth::Kafka)?;
        if self.rng.random_bool(0.25) {
            let v = self.verify_files()?;
            out.verdict.problems.extend(v.problems);
        }
        let (sizes, problems) = self.ctx.rt.block_on(one_snapshot_per_sequence(
            &self.orch.job.verify_config,
            f.out.last_sequence,
        ))?;
        f.out.snapshots_per_table = sizes;
        out.verdict.problems.extend(problems);
        out.phases_ms
            .insert("verify".into(), t.elapsed().as_millis() as u64);
        let t = Instant::now();
        self.cleanup();
        let tasks_topic = format!("recon-tasks.{}", self.orch.job.name);
        let _ = self.ctx.rt.block_on(crate::kafka::delete_topic(
            &self.ctx.services.endpoints.kafka,
            &tasks_topic,
        ));
        out.phases_ms
            .insert("cleanup".into(), t.elapsed().as_millis() as u64);
        Ok(())
    }

    fn fleet_fault(
        &mut self,
        f: &mut Fleet,
        fault: &FleetFault,
        load: Vec<Record>,
        probe: Vec<Record>,
        out: &mut Outcome,
    ) -> Result<Recovery, Failure> {
        let restarts = self.orch.restarts;
        let publisher;
        // What proves recovery: a commit with records, or a task's checkpoint on a new owner.
        let mut handover: Option<Option<usize>> = None;
        let cleared = match fault {
            FleetFault::WorkerKill { delay_ms } => {
                let w = self.pick_worker(f, false)?;
                publisher = Some(self.publish_bg(load, 4));
                self.supervise_for(f, Duration::from_millis(*delay_ms))?;
                self.kill_slot(f, w)?;
                handover = Some(None);
                Utc::now()
            }
            FleetFault::WorkerCrashPoint { point, nth } => {
                let w = self.pick_worker(f, false)?;
                self.rearm(f, w, point, *nth)?;
                let n = f.slots[w].run.as_ref().map_or(0, |r| r.n);
                self.poll_until(f, "the armed worker's first task", |f| {
                    match &f.slots[w].run {
                        Some(r) if r.n == n => {
                            let epoch = DateTime::<Utc>::from(r.started_at);
                            (!r.find("task started", epoch).is_empty()).then_some(())
                        }
                        _ => Some(()),
                    }
                })?;
                publisher = Some(self.publish_bg(load, 8));
                self.expect_crash(f, w, point)?;
                handover = Some(None);
                Utc::now()
            }
            FleetFault::CommitterKill { delay_ms } => {
                let c = self.committer(f)?;
                publisher = Some(self.publish_bg(load, 4));
                self.supervise_for(f, Duration::from_millis(*delay_ms))?;
                self.kill_slot(f, c)?;
                Utc::now()
            }
            FleetFault::CommitterCrashPoint { point, nth } => {
                let c = self.committer(f)?;
                self.rearm(f, c, point, *nth)?;
                publisher = Some(self.publish_bg(load, 8));
                self.expect_crash(f, c, point)?;
                Utc::now()
            }
            FleetFault::WorkerPaused { pause_ms } => {
                let w = self.pick_worker(f, true)?;
                let had = f.slots[w].run.as_ref().map(owned).unwrap_or_default();
                let n = f.slots[w].run.as_ref().map_or(0, |r| r.n);
                publisher = Some(self.publish_bg(load, 6));
                let run = f.slots[w].run.as_ref().expect("run");
                run.signal(libc::SIGSTOP)?;
                let stopped = Utc::now();
                let r = self.supervise_for(f, Duration::from_millis(*pause_ms));
                if let Some(run) = f.slots[w].run.as_ref() {
                    run.signal(libc::SIGCONT)?;
                }
                r?;
                if !had.is_empty() {
                    // It must hear that it lost its tasks (or stop: then it is restarted).
                    let name = f.slots[w].name.clone();
                    self.poll_until(f, &format!("{name} resumed: `tasks revoked`"), |f| {
                        match &f.slots[w].run {
                            Some(r) if r.n == n => {
                                (!r.find(REVOKED, stopped).is_empty()).then_some(())
                            }
                            // It stopped instead (loud, transient) and was restarted.
                            _ => Some(()),
                        }
                    })?;
                } else {
                    out.observations
                        .push("fleet: the paused worker owned no task".into());
                }
                handover = Some(None);
                stopped
            }
            FleetFault::WorkerAdded => {
                publisher = Some(self.publish_bg(load, 6));
                let w = self.add_slot(f, Role::Worker)?;
                handover = Some(Some(w));
                Utc::now()
            }
            FleetFault::WorkerRemoved => {
                let w = self.pick_worker(f, false)?;
                let had = f.slots[w].run.as_ref().map(owned).unwrap_or_default();
                publisher = Some(self.publish_bg(load, 6));
                let run = f.slots[w].run.as_ref().expect("run");
                run.signal(libc::SIGTERM)?;
                f.slots[w].end = Some(End::Removed);
                let t = Utc::now();
                self.poll_until(f, "the removed worker's exit", |f| {
                    f.slots[w].run.is_none().then_some(())
                })?;
                if had.is_empty() {
                    // Nothing moves (e.g. it lost its tasks to a pause and got none back): no
                    // handover to wait for, a commit with records is.
                    out.observations
                        .push("fleet: the removed worker owned no task".into());
                } else {
                    handover = Some(None);
                }
                t
            }
            FleetFault::SecondCommitter => {
                let c1 = self.committer(f)?;
                // Expected before the second starts: the first can be fenced (its next record
                // after the second's claim) before the claim shows in the second's log.
                f.slots[c1].end = Some(End::Fenced);
                let c2 = self.add_slot(f, Role::Committer)?;
                self.poll_until(f, "the second committer's claim", |f| {
                    let r = f.slots[c2].run.as_ref()?;
                    let epoch = DateTime::<Utc>::from(r.started_at);
                    (!r.find(CLAIMED, epoch).is_empty()).then_some(())
                })?;
                publisher = Some(self.publish_bg(load, 6));
                self.poll_until(f, "the first committer stopping fenced", |f| {
                    f.slots[c1].retired.then_some(())
                })?;
                Utc::now()
            }
            FleetFault::Rewind { back } => {
                publisher = Some(self.publish_bg(load, 6));
                self.supervise_for(f, Duration::from_millis(1_500))?;
                let t = Utc::now();
                // Rewound tasks restart on their workers (a first checkpoint of a new run);
                // a documented refusal leaves the fleet as it was.
                if self.fleet_rewind(*back, out)? {
                    handover = Some(None);
                }
                t
            }
            FleetFault::Reshard { to, crash } => {
                publisher = Some(self.publish_bg(load, 4));
                self.supervise_for(f, Duration::from_millis(1_500))?;
                let t = Utc::now();
                self.fleet_reshard(f, *to, *crash, out)?;
                handover = Some(None);
                t
            }
            FleetFault::BrokerRestart {
                hard,
                delay_ms,
                down_ms,
            } => {
                publisher = Some(self.publish_bg(load, 6));
                self.supervise_for(f, Duration::from_millis(*delay_ms))?;
                self.ctx.services.kafka_stop(*hard)?;
                self.supervise_for(f, Duration::from_millis(*down_ms))?;
                self.ctx.services.ensure_up()?;
                Utc::now()
            }
        };
        if let Some(mut p) = publisher {
            while !p.finished() {
                self.supervise_for(f, Duration::from_millis(50))?;
            }
            p.join()?;
        }
        self.publish_now(&probe)?;
        let ms = match handover {
            Some(only) => {
                self.wait_handover(f, cleared, only, "a task's checkpoint on its new worker")?
            }
            None => self.wait_record(f, cleared, "a commit with records after the fault")?,
        };
        self.wait_record(f, cleared, "a commit with records after the fault")?;
        Ok(Recovery {
            fault: fault.kind(),
            ms: ms.as_millis() as u64,
            restarts: self.orch.restarts - restarts,
        })
    }

    /// `rewind --to-checkpoint <newest commit sequence - back> --yes` on the running fleet. A
    /// refusal that says what to do instead (the target pruned, a task without a checkpoint in
    /// it, nothing to rewind) is an observation; any other failure is the pipeline's. True when
    /// the fleet was rewound.
    fn fleet_rewind(&mut self, back: u64, out: &mut Outcome) -> Result<bool, Failure> {
        use recon_pipeline::checkpoint::log::CheckpointLog;
        let cfg = recon_pipeline::config::Config::load(Some(&self.orch.job.config))
            .map_err(anyhow::Error::from)?;
        let head = self.ctx.rt.block_on(async {
            let (store, prefix) = recon_pipeline::checkpoint::store::open(&cfg)?;
            let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
            anyhow::Ok(log.head().await?.map(|h| h.entry.checkpoint_id.0))
        })?;
        let Some(head) = head else {
            out.observations
                .push("fleet rewind skipped: no commit record yet".into());
            return Ok(false);
        };
        let to = head.saturating_sub(back).max(1).to_string();
        let (status, text) = self.orch.job.operator(
            &[
                "rewind",
                "--to-checkpoint",
                &to,
                "--reason",
                "recon-chaos fleet rewind",
                "--yes",
            ],
            Duration::from_secs(90),
        )?;
        let said = text
            .lines()
            .find(|l| {
                l.starts_with("rewind written for") || l.contains("Error") || l.contains("error")
            })
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect::<String>();
        if status.success() && text.contains("rewind written for") {
            out.observations.push(format!(
                "fleet rewind to commit sequence {to} (head {head}): {said}"
            ));
            return Ok(true);
        }
        if [
            "was pruned",
            "had no checkpoint in commit sequence",
            "nothing to rewind",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            out.observations.push(format!(
                "fleet rewind to {to} refused as documented: {said}"
            ));
            return Ok(false);
        }
        Err(Failure::Pipeline(format!(
            "`rewind --to-checkpoint {to}` on the fleet (head {head}) failed ({status}):\n{text}"
        )))
    }

    /// Polls until the tables hold every event and dead letter sent, then SIGTERMs the
    /// workers (each must exit 0) and then the committer (exit 0, its last commit).
    fn fleet_drain(&mut self, f: &mut Fleet) -> Result<(), Failure> {
        let start = Instant::now();
        loop {
            self.supervise_for(f, Duration::from_secs(2))?;
            let rec = self.ctx.rt.block_on(crate::verify::reconcile(
                &self.orch.job.verify_config,
                &self.expected,
            ))?;
            if rec.missing == 0 && rec.rejected_rows >= rec.rejected_expected {
                break;
            }
            if start.elapsed() > Duration::from_secs(300) {
                return Err(Failure::Pipeline(format!(
                    "draining: the tables do not hold every event 300 s after the last publish: {rec}"
                )));
            }
        }
        f.out.workers_at_end = self.live_workers(f).len();
        // SIGTERM is handled once a worker joined (a committer claimed); wait for that.
        for role in [Role::Worker, Role::Committer] {
            let msg = if role == Role::Worker {
                JOINED
            } else {
                CLAIMED
            };
            let ids: Vec<usize> = (0..f.slots.len())
                .filter(|i| f.slots[*i].role == role && !f.slots[*i].retired)
                .collect();
            for &i in &ids {
                self.poll_until(f, &format!("{} ready for SIGTERM", f.slots[i].name), |f| {
                    let r = f.slots[i].run.as_ref()?;
                    let epoch = DateTime::<Utc>::from(r.started_at);
                    (!r.find(msg, epoch).is_empty()).then_some(())
                })?;
                f.slots[i].end = Some(End::Drain);
                f.slots[i]
                    .run
                    .as_ref()
                    .expect("run")
                    .signal(libc::SIGTERM)?;
            }
            self.poll_until(f, "SIGTERMed processes exiting", |f| {
                ids.iter().all(|i| f.slots[*i].retired).then_some(())
            })?;
            if role == Role::Committer {
                let text = f.ended.last().map(Run::text).unwrap_or_default();
                f.out.last_sequence = text
                    .split("last sequence ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
        Ok(())
    }
}

/// Every commit sequence of the committer in exactly one snapshot per table: the stamped
/// ranges `recon.checkpoint-first..recon.checkpoint-id` of the job's snapshots are disjoint and
/// contiguous from 1 and end at `last` (when known). Returns snapshots per table and problems.
async fn one_snapshot_per_sequence(
    verify_config: &std::path::Path,
    last: u64,
) -> anyhow::Result<(BTreeMap<String, usize>, Vec<String>)> {
    use recon_pipeline::checkpoint::protocol::{
        PROP_CHECKPOINT_FIRST, PROP_CHECKPOINT_ID, PROP_JOB_ID,
    };
    use recon_pipeline::config::Config;
    use recon_pipeline::lakehouse;
    let cfg = Config::load(Some(verify_config))?;
    let c = lakehouse::open_catalog(&cfg).await?;
    let (mut sizes, mut problems) = (BTreeMap::new(), Vec::new());
    for name in ["ledger_events", "trip_balances", "rejected_events"] {
        let t = c.load_table(&lakehouse::table_ident(&cfg, name)).await?;
        let mut ranges: Vec<(u64, u64)> = t
            .metadata()
            .snapshots()
            .filter_map(|s| {
                let p = &s.summary().additional_properties;
                (p.get(PROP_JOB_ID)? == cfg.job_id.as_str()).then(|| {
                    (
                        p.get(PROP_CHECKPOINT_FIRST)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                        p.get(PROP_CHECKPOINT_ID)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                    )
                })
            })
            .collect();
        ranges.sort();
        sizes.insert(name.to_string(), ranges.len());
        let mut next = 1;
        for (first, through) in &ranges {
            if *first != next || through < first {
                problems.push(format!(
                    "{name}: commit sequences not each in exactly one snapshot: expected a range from {next}, found {first}..={through} (all: {ranges:?})"
                ));
                break;
            }
            next = through + 1;
        }
        if ranges.is_empty() {
            problems.push(format!("{name}: no snapshot of the committer"));
        } else if last > 0 && next != last + 1 {
            problems.push(format!(
                "{name}: snapshots end at sequence {}, the committer's last sequence is {last}",
                next - 1
            ));
        }
    }
    Ok((sizes, problems))
}
