//! Running one scenario: publish in chunks, inject each fault while the job works, bring the job
//! back like an orchestrator would (restart on exit, with backoff), measure recovery, drain, then
//! verify with reconcile and batch-verify.
//!
//! Every wait polls a condition with a deadline. The only plain sleeps are fault *durations* (how
//! long the broker stays down, when a SIGKILL lands): they shape the fault, they never stand in
//! for a condition.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, NaiveDate, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recon_pipeline::generate::Record;
use recon_pipeline::reconcile::Expected;

use crate::job::{ChaosJob, JobKnobs, Run, Storage};
use crate::plan::{Ambiguity, DiskTarget, Fault, Plan, Terminal};
use crate::proxy::pg::{CommitAction, PgProxy};
use crate::proxy::s3::S3Proxy;
use crate::services::ServiceSet;
use crate::traffic::{self, TrafficSpec};
use crate::verify::{self, Truth, Verdict};

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

/// A tmpfs mounted for the scenario, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_mb: u32) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir)
            .output()?;
        ensure!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Fills the file system until ENOSPC; returns bytes written.
    fn fill(&self) -> anyhow::Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("ballast"))?;
        let block = vec![0xAAu8; 64 * 1024];
        let mut n = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Tail bytes too, so not even a small manifest fits.
        let _ = f.write_all(&[0u8; 4096]);
        let _ = f.sync_all();
        Ok(n)
    }

    fn free(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.0.join("ballast"))?;
        Ok(())
    }
}

/// Whether mounting a tmpfs works here (root, and mounts permitted).
pub fn tmpfs_available(work: &Path) -> bool {
    let probe = work.join("tmpfs-probe");
    match Tmpfs::mount(&probe, 1) {
        Ok(t) => {
            drop(t);
            true
        }
        Err(_) => false,
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

/// The orchestrator: keeps one instance of the job running, restarting it when it exits.
struct Orch {
    job: ChaosJob,
    current: Option<Run>,
    /// Runs that ended (kept for their logs).
    ended: Vec<Run>,
    exits: Vec<Exit>,
    restarts: u32,
    /// A SIGTERM or SIGKILL the harness sent to the current run (so its exit is expected).
    expected_end: Option<&'static str>,
    during: String,
    last_spawn: Option<Instant>,
    backoff: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

impl Orch {
    fn spawn(&mut self, env: &[(&str, String)]) -> anyhow::Result<()> {
        ensure!(self.current.is_none(), "a run is already current");
        let run = self.job.spawn(None, env)?;
        self.current = Some(run);
        self.expected_end = None;
        self.last_spawn = Some(Instant::now());
        Ok(())
    }

    fn cur(&mut self) -> anyhow::Result<&mut Run> {
        self.current.as_mut().context("no current run")
    }

    /// Records the current run's exit if it ended; returns whether it did.
    fn reap(&mut self) -> anyhow::Result<bool> {
        let Some(run) = self.current.as_mut() else {
            return Ok(false);
        };
        let Some(status) = run.poll()? else {
            return Ok(false);
        };
        let run = self.current.take().expect("current");
        self.record_exit(&run, status, self.expected_end);
        self.ended.push(run);
        Ok(true)
    }

    fn record_exit(
        &mut self,
        run: &Run,
        status: std::process::ExitStatus,
        expected: Option<&'static str>,
    ) {
        let message = run.error_message();
        let class = if status.signal().is_some() {
            "killed"
        } else if status.success() {
            "clean"
        } else if message.is_some() {
            "loud"
        } else {
            "silent"
        };
        self.exits.push(Exit {
            run: run.n,
            class,
            status: match (status.code(), status.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (_, Some(s)) => format!("signal {s}"),
                _ => status.to_string(),
            },
            message,
            during: match expected {
                Some(e) => format!("{} ({e})", self.during),
                None => self.during.clone(),
            },
        });
    }

    /// Restart when the current run ended (with backoff after quick failures). Returns true when
    /// a run is current and alive.
    fn supervise(&mut self) -> anyhow::Result<bool> {
        self.reap()?;
        if self.current.is_some() {
            return Ok(true);
        }
        let quick = self
            .last_spawn
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
        if let Some(t) = self.last_spawn
            && quick
            && t.elapsed() < self.backoff
        {
            return Ok(false);
        }
        self.backoff = if quick {
            (self.backoff * 2).min(BACKOFF_MAX)
        } else {
            BACKOFF_MIN
        };
        self.restarts += 1;
        self.spawn(&[])?;
        Ok(true)
    }

    /// Supervises for `d` (an outage window): dead runs are restarted as an orchestrator would.
    fn supervise_for(&mut self, d: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.supervise()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits (restarting as needed) until a run completes a checkpoint holding new records at or
    /// after `since`; returns the delay and the restarts it took.
    fn wait_recovered(
        &mut self,
        since: DateTime<Utc>,
        deadline: Duration,
    ) -> anyhow::Result<(Duration, u32)> {
        let start = Instant::now();
        let restarts_before = self.restarts;
        loop {
            self.supervise()?;
            if let Some(run) = self.current.as_ref() {
                let hit = run
                    .find("checkpoint complete", since)
                    .into_iter()
                    .find(|l| l.num("records").unwrap_or(0) > 0);
                if let Some(l) = hit {
                    let d = (l.at - since).to_std().unwrap_or_default();
                    return Ok((d, self.restarts - restarts_before));
                }
            }
            if start.elapsed() > deadline {
                let tail = self
                    .current
                    .as_ref()
                    .map(|r| r.tail(25))
                    .unwrap_or_default();
                bail!(
                    "the job did not come back within {deadline:?} after {} ({} restarts); exits: {:?}\nlast lines:\n{tail}",
                    self.during,
                    self.restarts - restarts_before,
                    self.exits.iter().rev().take(3).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM the current run and wait for its exit; returns its status.
    fn stop_graceful(&mut self, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.reap()?;
        let Some(run) = self.current.as_mut() else {
            bail!("no run to stop");
        };
        // SIGTERM is handled once the job has recovered; before that it kills the process (the
        // default action), which is not what this step tests.
        let epoch = DateTime::<Utc>::from(run.started_at);
        if run
            .wait_for("recovered", 1, epoch, Duration::from_secs(120))
            .is_err()
        {
            // It exited by itself (the caller sees how), or hangs in recovery.
            if let Some(s) = run.poll()? {
                self.reap()?;
                return Ok(s);
            }
            bail!(
                "run {} did not recover within 120 s:\n{}",
                run.n,
                run.tail(20)
            );
        }
        let run = self.current.as_mut().expect("current");
        run.signal(libc::SIGTERM)?;
        self.expected_end = Some("sigterm");
        let status = self.current.as_mut().expect("current").wait(deadline)?;
        self.reap()?;
        Ok(status)
    }

    /// SIGKILL the current run.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.expected_end = Some("sigkill");
        if let Some(run) = self.current.as_mut() {
            run.kill()?;
        }
        self.reap()?;
        Ok(())
    }

    fn all_runs(&self) -> impl Iterator<Item = &Run> {
        self.ended.iter().chain(self.current.iter())
    }
}

/// A background publisher.
struct Publisher(Option<std::thread::JoinHandle<anyhow::Result<()>>>);

impl Publisher {
    /// Publishes `records` in `slices` slices, `pause` apart (load shape, not a wait).
    fn start(
        brokers: String,
        topic: String,
        records: Vec<Record>,
        slices: usize,
        pause: Duration,
    ) -> Publisher {
        Publisher(Some(std::thread::spawn(move || {
            let n = records.len();
            let per = n.div_ceil(slices.max(1)).max(1);
            for (i, chunk) in records.chunks(per).enumerate() {
                if i > 0 {
                    std::thread::sleep(pause);
                }
                traffic::publish(&brokers, &topic, chunk, Duration::from_secs(300))?;
            }
            Ok(())
        })))
    }

    fn finished(&self) -> bool {
        self.0.as_ref().is_none_or(|h| h.is_finished())
    }

    fn join(&mut self) -> anyhow::Result<()> {
        match self.0.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("publisher thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

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
            .collect(),
        ..Outcome::default()
    };
    let storage_before = ctx.s3.faults.injected();
    let result = Scenario::new(ctx, plan, &name, &dir).and_then(|mut s| {
        let r = s.execute(&mut out);
        out.runs = s.orch.job.runs();
        out.restarts = s.orch.restarts;
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
    if ctx.services.controllable()
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
            },
        )?;
        let brokers = ctx.services.endpoints.kafka.clone();
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
        })?;
        // Chunks: a load and a probe per fault, and a tail.
        let parts = if plan.terminal.is_some() {
            2
        } else {
            plan.faults.len() * 2 + 1
        };
        let mut ranges = traffic::split_points(&mut rng, t.records.len(), parts);
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
        traffic::expect(&mut self.expected, &c);
        self.sent.extend(c.iter().cloned());
        self.published_on.insert(Utc::now().date_naive());
        c
    }

    fn publish_now(&mut self, records: &[Record]) -> anyhow::Result<()> {
        traffic::publish(
            &self.brokers(),
            &self.topic(),
            records,
            Duration::from_secs(300),
        )?;
        self.published_on.insert(Utc::now().date_naive());
        Ok(())
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
        if let Some(t) = self.plan.terminal {
            return self.terminal(t, out);
        }
        let first = self.next_chunk();
        self.publish_now(&first)?;
        self.orch.spawn(&[])?;
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
        self.drain()?;
        out.traffic = self.counts();
        out.verdict = self.verify(&Truth::Kafka)?;
        if self.rng.random_bool(0.25) {
            // Also against the generator-style files truth.
            let v = self.verify_files()?;
            out.verdict.problems.extend(v.problems);
        }
        self.cleanup();
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

    /// Stops the last run gracefully, then drains with an idle-exit run (restarting if it fails).
    fn drain(&mut self) -> Result<(), Failure> {
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

    fn verify(&self, truth: &Truth) -> Result<Verdict, Failure> {
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

    fn verify_files(&self) -> Result<Verdict, Failure> {
        let path = self.dir.join("truth.jsonl");
        std::fs::write(&path, traffic::truth_jsonl(&self.sent)).map_err(anyhow::Error::from)?;
        self.verify(&Truth::Files(path))
    }

    fn cleanup(&mut self) {
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

    /// Injects one fault; returns the recovery measured after it.
    fn inject(
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
    fn after(
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
    fn ensure_recovered(&mut self) -> Result<(), Failure> {
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

    fn ensure_running(&mut self) -> Result<(), Failure> {
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

    fn zombie(
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
    fn rewind(
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
    fn partition_added(
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
    fn head_cut(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        self.ctx
            .rt
            .block_on(crate::storage::head_cut(&self.orch.job.verify_config))
    }

    /// Polls the checkpoint log until the cut reaches `hw` on every listed partition.
    fn wait_cut(&mut self, hw: &BTreeMap<i32, i64>, deadline: Duration) -> anyhow::Result<()> {
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

    /// Log truncated past the saved offsets, or the topic recreated: the job must stop with a
    /// message and the tables must hold exactly what was read before. A recreated topic must be
    /// refused for its identity; then the operator accepts it (`accept-topic-reset`) and a
    /// draining run must bring the tables to both topics' input exactly once.
    fn terminal(&mut self, t: Terminal, out: &mut Outcome) -> Result<(), Failure> {
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
    fn accept_topic_reset(&mut self, out: &mut Outcome) -> Result<Verdict, Failure> {
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

    fn verify_files_against(
        &mut self,
        expected: &Expected,
        sent: &[Record],
    ) -> Result<Verdict, Failure> {
        self.expected = expected.clone();
        self.sent = sent.to_vec();
        self.verify_files()
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
