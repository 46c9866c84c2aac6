//! Running one scenario: publish in chunks, inject each fault while the job works, bring the job
//! back like an orchestrator would (restart on exit, with backoff), measure recovery, drain, then
//! verify with reconcile and batch-verify.
//!
//! Every wait polls a condition with a deadline. The only plain sleeps are fault *durations* (how
//! long the broker stays down, when a SIGKILL lands): they shape the fault, they never stand in
//! for a condition.

//!
//! The module by domain: `orch` (the orchestrator that restarts the job, the background
//! publisher, tmpfs mounts), `faults` (injecting each fault and measuring recovery), `takeover`
//! (zombies, rewinds, added partitions), `terminal` (scenarios that end with the job stopped on
//! purpose).

mod bounded;
mod faults;
mod finish;
mod fleet;
mod fleet_procs;
mod fleet_reshard;
mod operator;
mod operator_conditions;
mod orch;
mod takeover;
mod terminal;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use chrono::{DateTime, NaiveDate, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recon_pipeline::generate::Record;
use recon_pipeline::reconcile::Expected;

use crate::job::{ChaosJob, JobKnobs, Run, Storage};
use crate::plan::{Bounded, DiskTarget, Fault, Plan, Terminal};
use crate::proxy::pg::PgProxy;
use crate::proxy::s3::S3Proxy;
use crate::services::ServiceSet;
use crate::traffic::{self, TrafficSpec};
use crate::verify::{Truth, Verdict};

pub use orch::tmpfs_available;
use orch::{BACKOFF_MIN, Orch, Publisher, Tmpfs};

/// Everything scenarios share.
pub struct Ctx {
    /// Async runtime (proxies, admin calls, verification).
    pub rt: tokio::runtime::Runtime,
    /// The services.
    pub services: Arc<ServiceSet>,
    /// S3 proxy.
    pub s3: S3Proxy,
    /// PostgreSQL proxy.
    pub pg: PgProxy,
    /// The `recon-pipeline` binary (a private copy).
    pub binary: PathBuf,
    /// Working directory of the run.
    pub work: PathBuf,
    /// Whether tmpfs mounts work here (disk-full faults).
    pub tmpfs: bool,
    /// Keep logs of clean scenarios too.
    pub keep_all: bool,
}

/// How one run of the job ended.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Exit {
    /// Run number within the scenario.
    pub run: u32,
    /// `killed` (SIGKILL by the harness or a crash point), `clean` (exit 0), `loud` (non-zero
    /// with a message), `silent` (non-zero without a message: a defect).
    pub class: &'static str,
    /// Exit code or signal.
    pub status: String,
    /// The job's error message, for `loud`.
    pub message: Option<String>,
    /// The fault active when it ended.
    pub during: String,
}

/// One recovery measurement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Recovery {
    /// Fault kind.
    pub fault: String,
    /// Fault cleared -> first checkpoint holding new records.
    pub ms: u64,
    /// Runs started between the two.
    pub restarts: u32,
}

/// What a scenario did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// The plan.
    pub plan: Option<Plan>,
    /// `clean`, `failed` (the pipeline misbehaved) or `void` (the harness or a service failed).
    pub result: String,
    /// Faults injected (kind names; storage faults by sub-kind too).
    pub faults: Vec<String>,
    /// Object-store faults by sub-kind.
    pub storage_faults: BTreeMap<String, u64>,
    /// Runs of the job.
    pub runs: u32,
    /// Restarts by the harness's orchestrator after an exit.
    pub restarts: u32,
    /// How runs ended.
    pub exits: Vec<Exit>,
    /// Recovery times.
    pub recoveries: Vec<Recovery>,
    /// Things seen that are worth reporting.
    pub observations: Vec<String>,
    /// Notable lines in the job's logs, by message (e.g. `already committed (verified)`).
    pub log_events: BTreeMap<String, u64>,
    /// The verification.
    pub verdict: Verdict,
    /// Traffic counts.
    pub traffic: traffic::TrafficCounts,
    /// Why it failed.
    pub error: Option<String>,
    /// Where its logs are (kept when it failed).
    pub logs: Option<String>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Wall time by phase (`setup`, `faults`, `drain`, `verify`, `cleanup`), to see where a
    /// scenario's time goes.
    pub phases_ms: BTreeMap<String, u64>,
    /// Records of a deleted topic the job had not consumed when it was deleted: lost with the
    /// topic, excluded from the oracle explicitly (and counted here, never silently).
    pub lost_with_topic: u64,
    /// Bounded state on: what left memory, what had to come back, what restarts did.
    pub bounded: Option<bounded::BoundedOutcome>,
    /// A fleet scenario: its processes, handovers and commit sequences.
    pub fleet: Option<fleet::FleetOutcome>,
}

/// Log messages of the job counted in the report: evidence of which recovery paths ran.
const NOTABLE: [&str; 9] = [
    "already committed (verified)",
    "table moved under the commit; re-planning",
    "commit attempt not verified; retrying",
    "catalog reported a commit that is not in the table; retrying",
    "orphan data files removed",
    "orphan cleanup failed; garbage stays until the next start",
    "Kafka consumer error (librdkafka retries)",
    "opening the catalog failed",
    "generation claimed",
];

/// Runs one scenario; never panics on a pipeline failure (the outcome says so).
pub fn run(ctx: &Ctx, plan: &Plan) -> Outcome {
    let started = Instant::now();
    let name = format!("chaos{:03}_{:08x}", plan.index, plan.seed as u32);
    let dir = ctx.work.join(&name);
    let mut out = Outcome {
        plan: Some(plan.clone()),
        faults: plan
            .faults
            .iter()
            .map(Fault::kind)
            .chain(plan.terminal.map(|t| t.kind().to_string()))
            .chain(plan.bounded.as_ref().map(|_| Bounded::KIND.to_string()))
            .chain(plan.fleet.iter().flat_map(|f| {
                std::iter::once(crate::plan::fleet::FleetPlan::KIND.to_string())
                    .chain(f.faults.iter().map(|f| f.kind()))
            }))
            .chain(plan.operator.iter().flat_map(|o| {
                let mut v = vec![o.kind().to_string()];
                if let crate::operator::OperatorFault::CrashLoop { condition, .. } = o {
                    v.push(format!("{}/{}", o.kind(), condition.kind()));
                }
                v
            }))
            .collect(),
        ..Outcome::default()
    };
    let storage_before = ctx.s3.faults.injected();
    let result = Scenario::new(ctx, plan, &name, &dir).and_then(|mut s| {
        out.phases_ms
            .insert("setup".into(), started.elapsed().as_millis() as u64);
        let r = s.execute(&mut out);
        out.runs = s.orch.job.runs();
        out.restarts = s.orch.restarts;
        s.bounded_outcome(&mut out);
        out.exits = s.orch.exits.clone();
        for run in s.orch.all_runs() {
            for l in run.lines() {
                if NOTABLE.contains(&l.message.as_str()) {
                    *out.log_events.entry(l.message.clone()).or_default() += 1;
                }
            }
        }
        // No run may panic, whatever happened.
        for run in s.orch.all_runs() {
            if run.text().contains("panicked at") {
                out.observations.push(format!("run {} panicked", run.n));
                if r.is_ok() {
                    return Err(Failure::Pipeline(format!(
                        "run {} of the job panicked:\n{}",
                        run.n,
                        run.tail(30)
                    )));
                }
            }
        }
        r
    });
    let after = ctx.s3.faults.injected();
    for (k, v) in after {
        let d = v - storage_before.get(k).copied().unwrap_or(0);
        if d > 0 {
            out.storage_faults.insert(k.to_string(), d);
        }
    }
    match result {
        Ok(()) if out.verdict.clean() => out.result = "clean".into(),
        Ok(()) => {
            out.result = "failed".into();
            out.error = Some(out.verdict.problems.join("\n"));
        }
        Err(Failure::Pipeline(e)) => {
            out.result = "failed".into();
            out.error = Some(e);
        }
        Err(Failure::Harness(e)) => {
            out.result = "void".into();
            out.error = Some(format!("{e:#}"));
        }
    }
    if out.result == "clean" && !ctx.keep_all {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        out.logs = Some(dir.display().to_string());
    }
    // Leave the broker, catalog and store healthy for the next scenario, whatever happened.
    ctx.s3.faults.disable();
    ctx.pg.disarm();
    ctx.pg.accept();
    // (`infra/local/up` only when a service was stopped on purpose or the scenario went wrong: it
    // costs seconds per scenario.)
    let stopped_a_service = plan.faults.iter().any(Fault::needs_service_control)
        || plan.fleet.as_ref().is_some_and(|f| {
            f.faults
                .iter()
                .any(|f| matches!(f, crate::plan::fleet::FleetFault::BrokerRestart { .. }))
        });
    if ctx.services.controllable()
        && (stopped_a_service || out.result != "clean")
        && let Err(e) = ctx.services.ensure_up()
    {
        out.observations
            .push(format!("services did not come back: {e:#}"));
    }
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    out
}

/// Why a scenario did not finish clean.
enum Failure {
    /// The pipeline misbehaved: a wrong exit, no recovery, a discrepancy.
    Pipeline(String),
    /// The harness or a service failed (the scenario proves nothing either way).
    Harness(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Harness(e)
    }
}

fn pipeline<T>(r: anyhow::Result<T>) -> Result<T, Failure> {
    r.map_err(|e| Failure::Pipeline(format!("{e:#}")))
}

struct Scenario<'a> {
    ctx: &'a Ctx,
    plan: &'a Plan,
    rng: ChaCha8Rng,
    orch: Orch,
    expected: Expected,
    sent: Vec<Record>,
    published_on: BTreeSet<NaiveDate>,
    partitions: i32,
    tmpfs: Option<Tmpfs>,
    dir: PathBuf,
    chunks: std::vec::IntoIter<Vec<Record>>,
    /// Verify against the sent records only (the topic no longer holds all of them).
    files_truth_only: bool,
    /// `(partition, offset)` of every record `publish_now` sent, in order.
    positions: Vec<(i32, i64)>,
    /// Records lost with a topic recreated while the job ran: the job never saw them, so a later
    /// re-send or conflicting version of one of them is the first version it sees.
    lost: Vec<Record>,
    /// Bounded state: what the late phase saw and sent.
    late: bounded::BoundedOutcome,
}

impl<'a> Scenario<'a> {
    fn new(ctx: &'a Ctx, plan: &'a Plan, name: &str, dir: &Path) -> Result<Scenario<'a>, Failure> {
        std::fs::create_dir_all(dir).map_err(anyhow::Error::from)?;
        let mut rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0x5ce0_a210);
        let disk = plan.faults.iter().find_map(|f| match f {
            Fault::DiskFull { target, .. } => Some(*target),
            _ => None,
        });
        let (storage, tmpfs) = match disk {
            Some(t) if ctx.tmpfs => {
                let fs = Tmpfs::mount(&dir.join("tmpfs"), 96)?;
                let storage = match t {
                    DiskTarget::Checkpoints => Storage::LocalCheckpoints(fs.0.clone()),
                    DiskTarget::Warehouse => Storage::LocalWarehouse(fs.0.clone()),
                };
                (storage, Some(fs))
            }
            _ => (Storage::S3, None),
        };
        let k = &plan.knobs;
        let cold_dir = dir.join("cold");
        let job = ChaosJob::new(
            dir,
            name,
            &ctx.binary,
            &ctx.services.endpoints,
            ctx.s3.port,
            ctx.pg.port,
            &storage,
            &JobKnobs {
                checkpoint_interval_ms: k.checkpoint_interval_ms,
                commit_attempts_max: k.commit_attempts_max,
                commit_timeout_ms: 5_000,
                full_state_every: k.full_state_every,
                commit_every_checkpoints: k.commit_every_checkpoints,
                poll_batch_records_max: k.poll_batch_records_max,
                state: plan.bounded.as_ref().map(|b| b.state_toml(&cold_dir)),
            },
        )?;
        let brokers = ctx.services.endpoints.kafka.clone();
        // Leftovers of an earlier run with the same seed on shared services (a failed scenario
        // keeps its topic and tables for inspection).
        finish::purge(ctx, &job, true);
        ctx.rt.block_on(crate::kafka::create_topic(
            &brokers,
            &job.topic,
            plan.partitions,
        ))?;
        let order_safe = plan
            .faults
            .iter()
            .any(|f| matches!(f, Fault::PartitionAdded { .. }));
        let t = traffic::build(&TrafficSpec {
            seed: plan.seed,
            trips: plan.trips,
            partitions: plan.partitions,
            hostile: plan.hostile.clone(),
            order_safe,
            concurrent_trips: plan.bounded.as_ref().map(|b| b.concurrent_trips),
        })?;
        // Chunks: a load and a probe per fault, and a tail.
        let parts = if plan.terminal.is_some() {
            2
        } else if let Some(f) = &plan.fleet {
            f.faults.len() * 2 + 2
        } else {
            plan.faults.len() * 2 + 1
        };
        let mut ranges = traffic::split_points(&mut rng, t.records.len(), parts);
        if plan.operator.is_some() {
            // A first life, a load, the operator's part, a tail; a recreated topic gets most
            // of the records (the new topic must outgrow the old offsets).
            let n = t.records.len();
            ranges = vec![0..n / 10, n / 10..n / 5, n / 5..n * 19 / 20, n * 19 / 20..n];
        }
        if plan.terminal == Some(Terminal::TopicRecreated) {
            // A short first life, a long second one: the new topic outgrows the saved offsets.
            let cut = t.records.len() / 5;
            ranges = vec![0..cut, cut..t.records.len()];
        }
        let chunks: Vec<Vec<Record>> = ranges.into_iter().map(|r| t.records[r].to_vec()).collect();
        let orch = Orch {
            job,
            current: None,
            ended: Vec::new(),
            exits: Vec::new(),
            restarts: 0,
            expected_end: None,
            during: "start".into(),
            last_spawn: None,
            backoff: BACKOFF_MIN,
            cold: plan
                .bounded
                .as_ref()
                .map(|b| orch::ColdDir::new(cold_dir.clone(), b.cold_dir_on_restart)),
        };
        let counts = t.counts.clone();
        let s = Scenario {
            ctx,
            plan,
            rng,
            orch,
            expected: Expected::default(),
            sent: Vec::new(),
            published_on: BTreeSet::new(),
            partitions: plan.partitions,
            tmpfs,
            dir: dir.to_path_buf(),
            chunks: chunks.into_iter(),
            files_truth_only: false,
            positions: Vec::new(),
            lost: Vec::new(),
            late: bounded::BoundedOutcome::default(),
        };
        let _ = counts;
        Ok(s)
    }

    fn brokers(&self) -> String {
        self.ctx.services.endpoints.kafka.clone()
    }

    fn topic(&self) -> String {
        self.orch.job.topic.clone()
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.plan.knobs.checkpoint_interval_ms)
    }

    fn next_chunk(&mut self) -> Vec<Record> {
        let c = self.chunks.next().unwrap_or_default();
        self.sent.extend(c.iter().cloned());
        if self.lost.is_empty() {
            traffic::expect(&mut self.expected, &c);
        } else {
            // Later traffic re-sends events whose first version went with the old topic
            // (soak seed 311 #29, `--replay 3182823901819297879`): classify it as the job
            // sees it.
            self.sent = operator::reclassify(&self.sent, &self.lost);
            self.expected = Expected::default();
            traffic::expect(&mut self.expected, &self.sent);
        }
        self.published_on.insert(Utc::now().date_naive());
        c
    }

    fn publish_now(&mut self, records: &[Record]) -> anyhow::Result<traffic::Published> {
        let p = traffic::publish(
            &self.brokers(),
            &self.topic(),
            records,
            Duration::from_secs(300),
        )?;
        self.published_on.insert(Utc::now().date_naive());
        self.positions.extend(p.positions.iter().copied());
        Ok(p)
    }

    fn publish_bg(&self, records: Vec<Record>, slices: usize) -> Publisher {
        Publisher::start(
            self.brokers(),
            self.topic(),
            records,
            slices,
            self.interval().mul_f64(1.5),
        )
    }

    fn execute(&mut self, out: &mut Outcome) -> Result<(), Failure> {
        if self.plan.fleet.is_some() {
            return self.fleet(out);
        }
        if let Some(t) = self.plan.terminal {
            return self.terminal(t, out);
        }
        let phase = Instant::now();
        let first = self.next_chunk();
        self.publish_now(&first)?;
        self.orch.spawn(&[])?;
        if let Some(op) = self.plan.operator {
            self.operator(op, out)?;
        }
        let faults = self.plan.faults.clone();
        for f in &faults {
            self.orch.during = f.kind();
            let load = self.next_chunk();
            let probe = self.next_chunk();
            if let Some(r) = self.inject(f, load, probe, out)? {
                out.recoveries.push(r);
            }
        }
        self.orch.during = "drain".into();
        let tail = self.next_chunk();
        self.publish_now(&tail)?;
        let plan = self.plan;
        if let Some(b) = plan.bounded.as_ref().filter(|b| b.late_phase) {
            self.late_phase(b, out)?;
            self.orch.during = "drain".into();
        }
        out.phases_ms
            .insert("faults".into(), phase.elapsed().as_millis() as u64);
        let mut t = Instant::now();
        self.drain()?;
        self.bounded_end()?;
        out.phases_ms
            .insert("drain".into(), t.elapsed().as_millis() as u64);
        t = Instant::now();
        out.traffic = self.counts();
        if self.files_truth_only {
            out.verdict = self.verify_files()?;
        } else {
            out.verdict = self.verify(&Truth::Kafka)?;
            if self.rng.random_bool(0.25) {
                // Also against the generator-style files truth.
                let v = self.verify_files()?;
                out.verdict.problems.extend(v.problems);
            }
        }
        out.phases_ms
            .insert("verify".into(), t.elapsed().as_millis() as u64);
        t = Instant::now();
        self.cleanup();
        out.phases_ms
            .insert("cleanup".into(), t.elapsed().as_millis() as u64);
        Ok(())
    }

    fn counts(&self) -> traffic::TrafficCounts {
        let mut c = traffic::TrafficCounts::default();
        for r in &self.sent {
            c.records += 1;
            c.largest_payload = c.largest_payload.max(r.payload.len());
            match &r.kind {
                recon_pipeline::generate::RecordKind::Valid(_) => c.events += 1,
                recon_pipeline::generate::RecordKind::Duplicate(_) => c.duplicates += 1,
                recon_pipeline::generate::RecordKind::ConflictingDuplicate(_) => c.conflicts += 1,
                recon_pipeline::generate::RecordKind::Poison(_) => c.poison += 1,
            }
        }
        c
    }
}

impl Run {
    /// Polls until this run completes a checkpoint with records at or after `since`.
    pub fn wait_for_records(
        &mut self,
        since: DateTime<Utc>,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self
                .find("checkpoint complete", since)
                .iter()
                .any(|l| l.num("records").unwrap_or(0) > 0)
            {
                return Ok(());
            }
            if let Some(s) = self.poll()? {
                bail!(
                    "run {} exited ({s}) before checkpointing records:\n{}",
                    self.n,
                    self.tail(20)
                );
            }
            ensure!(
                start.elapsed() < deadline,
                "run {} checkpointed no records within {deadline:?}:\n{}",
                self.n,
                self.tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// First line of a message, clipped, with ids and numbers kept (for grouping in the report).
pub fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.len() > 220 {
        format!(
            "{}…",
            &line[..line
                .char_indices()
                .take_while(|(i, _)| *i < 220)
                .last()
                .map_or(0, |(i, c)| i + c.len_utf8())]
        )
    } else {
        line.to_string()
    }
}
