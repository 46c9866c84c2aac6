//! Bounded state in a scenario (`plan::bounded`): the late phase, and what the checkpoint store
//! says left memory.
//!
//! The job does not log how many trips it evicted or brought back, so the harness reads it
//! from the checkpoint store itself: at the newest completed checkpoint, the trips in memory
//! are those its state chain restores; every other trip it checkpointed left for the cold runs
//! its manifest lists. Before the late phase at least one must have left (else eviction
//! silently did nothing) and the manifest must list runs; every late record then needs a trip that left, so the job must bring each of
//! those trips back at least once (`brought_back` is that lower bound: the late phase runs
//! after that checkpoint and nothing rewinds behind it), and the exact verification proves it
//! did so without changing any result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::config::Config;
use recon_pipeline::state::{State, codec};

use super::{Failure, Outcome, Scenario, pipeline};
use crate::plan::Bounded;
use crate::plan::bounded::COLD_RUN_POINT;
use crate::traffic::{self, late::LateCounts};

/// What a bounded-state scenario saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BoundedOutcome {
    /// The late phase ran.
    pub late_phase: bool,
    /// The checkpoint the late phase's targets were chosen at.
    pub checkpoint: u64,
    /// Trips looked at (the generator's, in one currency).
    pub trips_looked_at: u64,
    /// Of those, out of memory and in the cold tier at `checkpoint`.
    pub evicted: u64,
    /// Of those, in memory at `checkpoint`.
    pub in_memory: u64,
    /// Trips out of memory that a late record needs: each must come back at least once.
    pub brought_back: u64,
    /// The late records by class.
    pub late: LateCounts,
    /// Cold runs the newest checkpoint lists after the drain.
    pub cold_runs_at_end: u64,
    /// Trip records in them.
    pub cold_records_at_end: u64,
    /// Restarts that found the local cold dir deleted.
    pub restarts_cold_dir_wiped: u32,
    /// ... of which it had held runs (the start had to download them).
    pub restarts_cold_dir_wiped_with_runs: u32,
    /// Restarts that found it as it was.
    pub restarts_cold_dir_kept: u32,
    /// Starts that opened a cold tier with runs (`cold tier opened`, `runs > 0`).
    pub starts_with_cold_runs: u64,
    /// Runs killed at `after-cold-run-written`.
    pub killed_at_cold_run: u64,
}

/// The trips of interest at the newest completed checkpoint.
pub struct ColdView {
    /// That checkpoint.
    pub checkpoint: u64,
    /// In memory.
    pub hot: BTreeSet<String>,
    /// Out of memory (checkpointed, so in the cold tier: a late record for one that is in
    /// neither would fold differently, which the verification finds).
    pub cold: BTreeSet<String>,
    /// Runs the manifest lists.
    pub runs: u64,
    /// Trip records in them.
    pub records: u64,
}

/// Reads the newest completed checkpoint of the job (`None`: none yet) and places `trips`.
pub async fn cold_view(
    verify_config: &Path,
    trips: &BTreeSet<String>,
) -> anyhow::Result<Option<ColdView>> {
    let cfg = Config::load(Some(verify_config))?;
    let (store, prefix) = recon_pipeline::checkpoint::store::open(&cfg)?;
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let mut head = None;
    for id in log.ids_after(None).await?.iter().rev() {
        if let Some(c) = log.completed(*id).await? {
            head = Some(c);
            break;
        }
    }
    let Some(head) = head else {
        return Ok(None);
    };
    let mut state = State::default();
    let chain = log.read_state_chain(&head.manifest).await?;
    for (i, (rel, bytes)) in chain.iter().enumerate() {
        codec::apply_file(&mut state, rel, bytes, i == 0)?;
    }
    let refs = &head.manifest.cold_runs;
    let mut v = ColdView {
        checkpoint: head.entry.checkpoint_id.0,
        hot: BTreeSet::new(),
        cold: BTreeSet::new(),
        runs: refs.len() as u64,
        records: refs.iter().map(|r| r.trips).sum(),
    };
    for t in trips {
        if state.get(t).is_some() {
            v.hot.insert(t.clone());
        } else {
            v.cold.insert(t.clone());
        }
    }
    Ok(Some(v))
}

impl Scenario<'_> {
    /// After the faults: once every record is checkpointed and trips have left memory, send
    /// records that need them, with the plan's late fault while they flow.
    pub(super) fn late_phase(&mut self, b: &Bounded, out: &mut Outcome) -> Result<(), Failure> {
        self.orch.during = "bounded_late_phase".into();
        self.late.late_phase = true;
        self.ensure_recovered()?;
        let hw: BTreeMap<i32, i64> = crate::kafka::watermarks(&self.brokers(), &self.topic())?
            .into_iter()
            .map(|(p, (_, hi))| (p, hi))
            .collect();
        pipeline(self.wait_cut(&hw, Duration::from_secs(180)).context(
            "bounded state: the job did not checkpoint every record before the late phase",
        ))?;
        let trips = traffic::late::candidates(&self.sent);
        let want = (b.late_records as usize).min(trips.len() / 2).max(1);
        let start = Instant::now();
        // Barriers keep evicting while the input is idle: wait (bounded) until enough left.
        let view = loop {
            self.orch.supervise()?;
            let looked = self
                .ctx
                .rt
                .block_on(cold_view(&self.orch.job.verify_config, &trips));
            match looked {
                Ok(Some(v)) => {
                    if !v.cold.is_empty() && v.runs == 0 {
                        return Err(Failure::Pipeline(format!(
                            "bounded state: at checkpoint {} {} checkpointed trips are out of memory and the manifest lists no cold run, e.g. {:?}",
                            v.checkpoint,
                            v.cold.len(),
                            v.cold.iter().take(5).collect::<Vec<_>>()
                        )));
                    }
                    if v.cold.len() >= want
                        || (!v.cold.is_empty() && start.elapsed() > Duration::from_secs(20))
                    {
                        break v;
                    }
                    if start.elapsed() > Duration::from_secs(60) {
                        return Err(Failure::Pipeline(format!(
                            "bounded state on (settled after {} ms, idle after {} ms of event time) but after 60 s only {} of {} trips had left memory at checkpoint {} (wanted {want}): eviction did not happen",
                            b.settled_after_ms,
                            b.idle_after_ms,
                            v.cold.len(),
                            trips.len(),
                            v.checkpoint
                        )));
                    }
                }
                Ok(None) => {}
                // The job prunes old checkpoints while this reads: look again.
                Err(e) if start.elapsed() > Duration::from_secs(60) => {
                    return Err(Failure::Harness(
                        e.context("reading the cold tier for 60 s failed"),
                    ));
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let (late, counts) = traffic::late::build(
            &self.sent,
            &view.cold,
            &view.hot,
            b.late_records as usize,
            &mut self.rng,
            self.plan.seed,
        )?;
        if late.is_empty() {
            return Err(Failure::Harness(anyhow::anyhow!(
                "no late record could be planned for {} trips out of memory",
                view.cold.len()
            )));
        }
        self.late.checkpoint = view.checkpoint;
        self.late.trips_looked_at = trips.len() as u64;
        self.late.evicted = view.cold.len() as u64;
        self.late.in_memory = view.hot.len() as u64;
        self.late.brought_back = counts.cold_trips_needed;
        self.late.late = counts;
        // The truth first, as for every chunk.
        self.sent.extend(late.iter().cloned());
        traffic::expect(&mut self.expected, &late);
        self.published_on.insert(Utc::now().date_naive());
        let mid = late.len() / 2;
        let (load, probe) = (late[..mid].to_vec(), late[mid..].to_vec());
        match &b.late_fault {
            Some(f) => {
                self.orch.during = format!("bounded_late_phase/{}", f.kind());
                out.faults.push(f.kind());
                if let Some(r) = self.inject(f, load, probe, out)? {
                    out.recoveries.push(r);
                }
            }
            None => {
                let t = Utc::now();
                self.publish_now(&late)?;
                pipeline(self.orch.wait_recovered(t, Duration::from_secs(180)))?;
            }
        }
        Ok(())
    }

    /// After the drain: the newest checkpoint must list cold runs (trips left memory and stay
    /// in the cold tier), with a late phase.
    pub(super) fn bounded_end(&mut self) -> Result<(), Failure> {
        if self.plan.bounded.is_none() {
            return Ok(());
        }
        let v = self
            .ctx
            .rt
            .block_on(cold_view(&self.orch.job.verify_config, &BTreeSet::new()))?;
        let (runs, records) = v.map(|v| (v.runs, v.records)).unwrap_or_default();
        self.late.cold_runs_at_end = runs;
        self.late.cold_records_at_end = records;
        if self.late.late_phase && (runs == 0 || records == 0) {
            return Err(Failure::Pipeline(format!(
                "bounded state: after the drain the newest checkpoint lists {runs} cold runs with {records} trips; {} trips had left memory before the late phase",
                self.late.evicted
            )));
        }
        Ok(())
    }

    /// Fills `out.bounded` from what the late phase saw, the orchestrator's cold dir and the
    /// runs' logs (whatever happened to the scenario).
    pub(super) fn bounded_outcome(&self, out: &mut Outcome) {
        if self.plan.bounded.is_none() {
            return;
        }
        let mut o = self.late.clone();
        if let Some(c) = &self.orch.cold {
            o.restarts_cold_dir_wiped = c.wiped;
            o.restarts_cold_dir_wiped_with_runs = c.wiped_with_runs;
            o.restarts_cold_dir_kept = c.kept;
        }
        let reached = format!("crash point {COLD_RUN_POINT} reached");
        for run in self.orch.all_runs() {
            let epoch = DateTime::<Utc>::from(run.started_at);
            o.starts_with_cold_runs += run
                .find("cold tier opened", epoch)
                .iter()
                .filter(|l| l.num("runs").unwrap_or(0) > 0)
                .count() as u64;
            if run.text().contains(&reached) {
                o.killed_at_cold_run += 1;
            }
        }
        out.bounded = Some(o);
    }
}
