//! # recon-chaos
//!
//! The fault harness that ships with recon: randomized scenarios against real Kafka, PostgreSQL
//! (the Iceberg SQL catalog) and S3, each a mix of crashes (SIGKILL at random times and at every
//! named crash point), ambiguous catalog commits, broker stops, added partitions, PostgreSQL
//! restarts, a catalog refusing connections, object-store faults, zombies, full disks and hostile
//! input. After each scenario the job is drained and the tables are proven against what was
//! sent, with `recon_pipeline::reconcile` and with `batch_verify::verify` for every business day
//! the records touch. See `tests/chaos/README.md`.
//!
//! Read in this order: [`plan`] (what a scenario is) -> [`scenario`] (running one: `orch`, `faults`,
//! orchestrator, recovery) -> [`verify`] -> [`report`]. The fault machinery: [`services`] (a
//! private service set whose broker and PostgreSQL can be stopped), [`proxy`] (S3 and PostgreSQL
//! proxies that inject storage and catalog faults without any hook in the pipeline), [`traffic`]
//! (generator traffic + hostile records + a publisher that never re-sends).
#![deny(missing_docs)]

pub mod job;
pub mod kafka;
pub mod operator;
pub mod plan;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod services;
pub mod storage;
pub mod tables;
pub mod traffic;
pub mod verify;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::plan::{Plan, Scale};
use crate::report::Report;
use crate::scenario::Ctx;
use crate::services::{ServiceMode, ServiceSet};

/// What to run.
#[derive(Clone, Debug)]
pub enum Mode {
    /// `n` random scenarios from the run seed.
    Random(u32),
    /// The fixed CI list.
    Ci,
    /// One scenario by its own seed (as printed in a report).
    Replay(u64),
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Run seed.
    pub seed: u64,
    /// What to run.
    pub mode: Mode,
    /// Traffic size.
    pub scale: Scale,
    /// Where the services come from.
    pub services: ServiceMode,
    /// Working directory (logs of failed scenarios stay here).
    pub work: PathBuf,
    /// JSON report path.
    pub report: Option<PathBuf>,
    /// Keep logs of clean scenarios.
    pub keep_all: bool,
    /// Leave the private services running at the end.
    pub keep_services: bool,
    /// Stop at the first failing scenario.
    pub fail_fast: bool,
    /// Print a line per scenario.
    pub verbose: bool,
    /// Which fault / terminal kinds random mode draws.
    pub filter: plan::Filter,
}

fn sha256_file(p: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn git_describe() -> String {
    let root = services::repo_root();
    let head = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args([
            "status",
            "--porcelain",
            "--",
            "pipeline",
            "common",
            "schemas",
            "batch-verify",
        ])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    format!(
        "{head}{}",
        if dirty {
            " + local changes in pipeline/common/schemas/batch-verify"
        } else {
            ""
        }
    )
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // A second signal: leave now (the private services stay up; `infra/local/down` with
        // RECON_STATE_DIR=<work>/services stops them).
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// SIGINT / SIGTERM end the run after the current scenario (report written, services stopped);
/// a second one exits at once.
fn stop_after_current_scenario_on_signal() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Runs the harness; returns the report (also written to `opts.report`).
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    stop_after_current_scenario_on_signal();
    std::fs::create_dir_all(&opts.work)
        .with_context(|| format!("creating {}", opts.work.display()))?;
    // A private copy of the binary: a rebuild by someone else mid-soak must not change what runs.
    let original = job::pipeline_binary()?;
    let binary = opts.work.join("recon-pipeline");
    std::fs::copy(&original, &binary).with_context(|| format!("copying {}", original.display()))?;
    let services = Arc::new(match opts.services {
        ServiceMode::Private => ServiceSet::start_private(&opts.work, opts.keep_services)?,
        ServiceMode::Env => ServiceSet::from_env()?,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (s3, pg) = rt.block_on(async {
        anyhow::Ok((
            proxy::s3::S3Proxy::start(services.endpoints.s3_port, opts.seed).await?,
            proxy::pg::PgProxy::start(services.endpoints.pg_port).await?,
        ))
    })?;
    let tmpfs = scenario::tmpfs_available(&opts.work);
    let ctx = Ctx {
        rt,
        services: services.clone(),
        s3,
        pg,
        binary: binary.clone(),
        work: opts.work.clone(),
        tmpfs,
        keep_all: opts.keep_all,
    };
    let controllable = services.controllable();
    let plans: Vec<Plan> = match opts.mode {
        Mode::Random(n) => (0..n)
            .map(|i| {
                plan::random(
                    i,
                    plan::derive_seed(opts.seed, i),
                    opts.scale,
                    controllable,
                    &opts.filter,
                )
            })
            .collect(),
        Mode::Ci => plan::ci(opts.seed, opts.scale, controllable),
        Mode::Replay(s) => vec![plan::random(0, s, opts.scale, controllable, &opts.filter)],
    };
    let mut report = Report {
        seed: opts.seed,
        mode: match opts.mode {
            Mode::Random(_) => "random".into(),
            Mode::Ci => "ci".into(),
            Mode::Replay(s) => format!("replay {s}"),
        } + if opts.filter.fleet { " --fleet" } else { "" },
        scenarios_requested: plans.len() as u32,
        pipeline_binary: original.display().to_string(),
        pipeline_sha256: sha256_file(&binary).unwrap_or_default(),
        git: git_describe(),
        ..Report::default()
    };
    if !tmpfs {
        eprintln!(
            "chaos: tmpfs mounts are not permitted here: disk-full faults are skipped (reported as observations)"
        );
    }
    for p in &plans {
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!(
                "chaos: stop requested: ending after {} scenarios",
                report.scenarios_run
            );
            break;
        }
        let t = Instant::now();
        if opts.verbose {
            eprintln!(
                "chaos: scenario {} seed {} trips {} partitions {} faults {:?} hostile {:?}{}",
                p.index,
                p.seed,
                p.trips,
                p.partitions,
                p.faults
                    .iter()
                    .map(|f| f.kind())
                    .chain(
                        p.fleet
                            .iter()
                            .flat_map(|f| f.faults.iter().map(|f| f.kind()))
                    )
                    .collect::<Vec<_>>(),
                p.hostile.iter().map(|h| h.name()).collect::<Vec<_>>(),
                p.terminal
                    .map(|t| format!(" terminal {}", t.kind()))
                    .unwrap_or_default()
                    + &p.operator
                        .map(|o| format!(" operator {o:?}"))
                        .unwrap_or_default()
                    + &p.bounded
                        .as_ref()
                        .map(|b| format!(
                            " bounded settled {}ms idle {}ms scan {} cold dir {:?} late fault {:?}",
                            b.settled_after_ms,
                            b.idle_after_ms,
                            b.scan_per_barrier,
                            b.cold_dir_on_restart,
                            b.late_fault.as_ref().map(|f| f.kind())
                        ))
                        .unwrap_or_default()
            );
        }
        // A harness bug must not end a soak: it voids its scenario.
        let o = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario::run(&ctx, p)))
            .unwrap_or_else(|panic| scenario::Outcome {
                plan: Some(p.clone()),
                result: "void".into(),
                error: Some(format!(
                    "harness panic: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                )),
                ..scenario::Outcome::default()
            });
        if opts.verbose {
            eprintln!(
                "chaos: scenario {} {} in {:.1}s: {} events, {} runs, {} restarts, recoveries {:?}{}{}",
                p.index,
                o.result.to_uppercase(),
                t.elapsed().as_secs_f64(),
                o.verdict.events_expected,
                o.runs,
                o.restarts,
                o.recoveries.iter().map(|r| r.ms).collect::<Vec<_>>(),
                o.bounded
                    .as_ref()
                    .map(|b| format!(
                        ", bounded: {} of {} trips out of memory, {} brought back, {} late records, cold dir wiped {} kept {}",
                        b.evicted,
                        b.trips_looked_at,
                        b.brought_back,
                        b.late.records(),
                        b.restarts_cold_dir_wiped,
                        b.restarts_cold_dir_kept
                    ))
                    .unwrap_or_default(),
                o.error
                    .as_ref()
                    .map(|e| format!("\n  error: {}", e.replace('\n', "\n    ")))
                    .unwrap_or_default()
            );
        }
        let bad = o.result != "clean";
        report.add(o);
        report.elapsed_s = started.elapsed().as_secs_f64();
        if let Some(path) = &opts.report {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        }
        if bad && opts.fail_fast {
            break;
        }
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(ctx);
    drop(services);
    Ok(report)
}
