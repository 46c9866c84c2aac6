//! `recon-pipeline`: the streaming job and its operator commands.

use std::path::PathBuf;

/// mimalloc instead of glibc malloc: with glibc, the large buffers background tasks allocate
/// and free on tokio's worker threads (cold-run merges, state-chain folds) stayed in per-thread
/// arenas, and resident memory grew with every simulated day of the bounded-state bench.
/// Its options: `recon_pipeline::alloc`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::config::Config;
use recon_pipeline::ids::CheckpointId;
use recon_pipeline::job::{self, CrashPlan, JobEnv, StopClass};
use recon_pipeline::{bench, checkpoint, demo, generate, lakehouse, maintain, refuse};
use tokio::sync::watch;

/// recon: Kafka money events -> Iceberg, exactly once, balances exact to the cent.
#[derive(Parser, Debug)]
#[command(name = "recon-pipeline", version, about, long_about = None)]
struct Cli {
    /// Log format: `human` or `json`.
    #[arg(long, global = true, env = "RECON_LOG_FORMAT", default_value = "human")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

/// What a `run` process does in a fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    /// Worker and committer (a fleet), or the single-process job.
    All,
    /// Tasks only.
    Worker,
    /// The committer only.
    Committer,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the streaming job until SIGTERM/SIGINT (final checkpoint and commit, exit 0).
    ///
    /// Configuration: a TOML file; every key can be overridden by `RECON__<SECTION>__<KEY>`,
    /// e.g. `RECON__SOURCE__BROKERS=host:9092`. See docs/CONFIGURATION.md for every key.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Stop gracefully after this many milliseconds without input (backfills, tests).
        #[arg(long)]
        exit_when_idle_ms: Option<u64>,
        /// On a stop that restarting cannot fix (configuration, operator needed, fenced), stay
        /// alive instead of exiting: write nothing, answer /healthz 200 and /readyz 503 with the
        /// reason, set `recon_stopped{class=...} 1`, repeat the message once a minute, and exit
        /// with the class's code on SIGTERM. For supervisors that restart unconditionally
        /// (Kubernetes, compose).
        #[arg(long, env = "RECON_HOLD_ON_STOP")]
        hold_on_stop: bool,
        /// With `[fleet] tasks = K`: `worker` (runs the tasks Kafka's group coordinator gives
        /// it), `committer` (one per job: commits every task's checkpoints), or `all` (both in
        /// this process). Without a fleet only `all` (the default) is accepted.
        #[arg(long, value_enum, default_value = "all", env = "RECON_ROLE")]
        role: Role,
    },
    /// The zero-setup demo: in-process Kafka mock cluster, SQLite catalog and a local
    /// warehouse under `./lakehouse`; crashes and restarts the job mid-stream, then reconciles.
    Demo(demo::DemoArgs),
    /// Measure throughput per delivery mode, checkpoint cost, recovery and memory per trip.
    Bench(bench::BenchArgs),
    /// Publish realistic, seeded trip-finance traffic to Kafka and record the truth.
    Generate(Box<generate::GenerateArgs>),
    /// Restart the job from an older checkpoint on purpose: rebuilds state by replaying from that
    /// checkpoint's offsets; records the tables already hold are replayed into state only, never
    /// written twice. Writes a `rewind` entry with a new generation (fencing any running
    /// instance: stop the job first), then exits; the next `run` resumes from it.
    Rewind {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The checkpoint to restart from (see `checkpoints list`); for a fleet, the
        /// committer's commit sequence (every task restarts from its checkpoint in it).
        #[arg(long)]
        to_checkpoint: u64,
        /// Why, recorded in the log entry.
        #[arg(long)]
        reason: String,
        /// Confirm: without it, nothing is written.
        #[arg(long)]
        yes: bool,
    },
    /// Change a fleet's number of tasks (`[fleet] tasks`), offline: with every worker and the
    /// committer stopped and everything committed, writes new task logs holding each new
    /// task's share of the old tasks' state and offsets, then the committer's record of the
    /// new shape (fencing a committer still running). Refuses, with nothing written, when a
    /// task's checkpoint or an alert is not committed yet. Run it again to finish an
    /// interrupted run; then set `fleet.tasks` to the new K and start the fleet.
    Reshard {
        /// Configuration file (TOML) of the fleet (its `fleet.tasks` may be the old or new K).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The new number of tasks K (1 to the topic's partition count).
        #[arg(long)]
        tasks: u32,
        /// Why, recorded in the log entries.
        #[arg(long)]
        reason: String,
        /// Confirm: without it, nothing is written.
        #[arg(long)]
        yes: bool,
    },
    /// Expire old snapshots and delete orphan files of the job's tables; safe while the job runs.
    ///
    /// Keeps the newest `--retain-last` snapshots, everything younger than `--older-than`, and
    /// always the job's newest commit marker; deletes files under the table locations that no
    /// retained snapshot and no retained checkpoint references and that are older than
    /// `--orphan-older-than`. Prints one summary line per table; exit 1 if any table failed.
    Maintain {
        /// Configuration file (TOML); `[maintenance]` holds the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Expire snapshots older than this, e.g. `7d`, `36h` [default: maintenance.expire_older_than_ms].
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Newest snapshots kept per table whatever their age, at least 1 [default: maintenance.retain_last].
        #[arg(long)]
        retain_last: Option<usize>,
        /// Delete unreferenced files only when older than this, e.g. `3d` (at least 1h) [default: maintenance.orphan_older_than_ms].
        #[arg(long, value_parser = humantime::parse_duration)]
        orphan_older_than: Option<Duration>,
        /// Allow --orphan-older-than below 1h. Only with every writer of the tables stopped.
        #[arg(long)]
        force_min_age: bool,
        /// Print what would be expired and deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Accept that the topic was deleted and recreated (or truncated) after the job stopped
    /// saying so: keeps the job's state, reads every partition whose last consumed record is
    /// gone from the topic's earliest offset. Writes a `topic_reset` entry with a new
    /// generation (fencing any running instance), then exits; the next `run` resumes from it.
    AcceptTopicReset {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Why, recorded in the log entry.
        #[arg(long)]
        reason: String,
        /// Confirm: without it, nothing is written.
        #[arg(long)]
        yes: bool,
    },
    /// Inspect the checkpoint log.
    Checkpoints {
        /// Configuration file (TOML).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        what: CheckpointsCmd,
    },
}

#[derive(Subcommand, Debug)]
enum CheckpointsCmd {
    /// One line per retained checkpoint.
    List,
    /// The full manifest of one checkpoint.
    Show {
        /// Checkpoint id.
        id: u64,
    },
}

/// Filter, format, and the guards that keep credentials out of every line (capped targets,
/// redaction of every known secret): `recon_pipeline::logging`.
fn init_logs(format: &str, default_level: &str) {
    recon_pipeline::logging::init(format, default_level);
}

#[tokio::main]
async fn main() -> ExitCode {
    recon_pipeline::alloc::tune();
    let cli = Cli::parse();
    // The demo prints its own story; its logs stay quiet unless RUST_LOG asks.
    let level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    init_logs(&cli.log_format, level);
    let hold = matches!(
        cli.command,
        Command::Run {
            hold_on_stop: true,
            ..
        }
    );
    match dispatch(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let class = classify(&e);
            recon_pipeline::telemetry::stopped(class.name());
            // Printed outside the log writer: redacted here (a library's error text may quote a
            // credential).
            let message = recon_pipeline::redactor::redact_str(&format!("{e:#}"));
            eprintln!("recon-pipeline: error: {message}");
            if hold && !class.restart() {
                hold_stopped(class, &message).await;
            }
            eprintln!(
                "recon-pipeline: stopped: class {class} (exit {}): {}",
                class.exit_code(),
                class.advice()
            );
            ExitCode::from(class.exit_code())
        }
    }
}

/// The stop class of an error of any command: the first classified error in its chain.
/// Anything unclassified (e.g. the metrics address cannot be bound) counts as transient.
fn classify(e: &anyhow::Error) -> StopClass {
    for cause in e.chain() {
        if let Some(j) = cause.downcast_ref::<job::JobError>() {
            return j.class();
        }
        if cause
            .downcast_ref::<recon_pipeline::config::ConfigError>()
            .is_some()
        {
            return StopClass::Config;
        }
        if cause
            .downcast_ref::<recon_pipeline::refusal::Refused>()
            .is_some()
        {
            return StopClass::OperatorNeeded;
        }
        if let Some(s) = cause.downcast_ref::<recon_pipeline::fleet::layout::ShapeRefusal>() {
            // A fleet command judged the job's recorded shape.
            return recon_pipeline::fleet::FleetError::Shape(s.clone()).class();
        }
        if let Some(l) = cause.downcast_ref::<recon_pipeline::checkpoint::log::LogError>() {
            // Operator commands (rewind, accept-topic-reset, checkpoints) fail on the log.
            return job::log_class(l);
        }
    }
    StopClass::Transient
}

/// `run --hold-on-stop`: stays alive after a stop that restarting cannot fix, writing nothing,
/// until SIGTERM/SIGINT. /readyz answers 503 with the reason; the message repeats once a minute.
async fn hold_stopped(class: StopClass, message: &str) {
    recon_pipeline::telemetry::hold(class.name(), message);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = tick.tick() => {
                tracing::error!(class = class.name(), exit_code = class.exit_code(),
                    "held after a stop (--hold-on-stop; nothing is written; SIGTERM exits): {message}");
            }
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run {
            config,
            exit_when_idle_ms,
            hold_on_stop: _,
            role,
        } => run(config, exit_when_idle_ms, role).await,
        Command::Demo(args) => demo::run(args).await.map(|_| ()),
        Command::Bench(args) => bench::run(args).await.map(|_| ()),
        Command::Generate(args) => {
            let summary = generate::run(*args).await?;
            println!("{summary}");
            Ok(())
        }
        Command::Checkpoints { config, what } => checkpoints(config, what).await,
        Command::Maintain {
            config,
            older_than,
            retain_last,
            orphan_older_than,
            force_min_age,
            dry_run,
        } => {
            let cfg = Config::load(config.as_deref())?;
            let mut opts = maintain::Options::from_config(&cfg);
            if let Some(age) = older_than {
                opts.expire_older_than = age;
            }
            if let Some(n) = retain_last {
                opts.retain_last = std::num::NonZeroUsize::new(n)
                    .context("--retain-last must be at least 1 (the current snapshot)")?;
            }
            if let Some(age) = orphan_older_than {
                opts.orphan_older_than = age;
            }
            opts.force_min_age = force_min_age;
            opts.dry_run = dry_run;
            maintain(&cfg, &opts).await
        }
        Command::Rewind {
            config,
            to_checkpoint,
            reason,
            yes,
        } => rewind(config, CheckpointId(to_checkpoint), reason, yes).await,
        Command::Reshard {
            config,
            tasks,
            reason,
            yes,
        } => {
            let cfg = Config::load(config.as_deref())?;
            if !cfg.fleet.enabled() {
                refuse!(
                    "reshard changes a fleet's number of tasks: set [fleet] tasks to the job's current K in the configuration"
                );
            }
            recon_pipeline::fleet::reshard::run(&cfg, tasks, &reason, yes).await
        }
        Command::AcceptTopicReset {
            config,
            reason,
            yes,
        } => {
            let cfg = Config::load(config.as_deref())?;
            recon_pipeline::topic_reset::run(&cfg, &reason, yes).await
        }
    }
}

/// A fleet process: a worker, the committer, or both (the committer stops after the worker's
/// tasks made their final checkpoints, so that it commits them).
async fn run_fleet(cfg: &Config, env: JobEnv, role: Role) -> anyhow::Result<()> {
    use recon_pipeline::fleet::{committer, worker};
    match role {
        Role::Worker => {
            let r = worker::run(cfg, env).await?;
            println!(
                "worker stopped cleanly: task starts {} revoked {} checkpoints {} records {} replayed {}",
                r.task_starts, r.revoked, r.checkpoints, r.records, r.replayed
            );
        }
        Role::Committer => {
            let r = committer::run(cfg, env).await?;
            println!(
                "committer stopped cleanly: generation {} records {} commits {} last sequence {}",
                r.generation, r.records, r.commits, r.last
            );
        }
        Role::All => {
            // The worker stops on SIGTERM or when the committer failed; the committer stops
            // after the worker (its tasks' final checkpoints are then durable: a last commit).
            let (ctx, crx) = watch::channel(false);
            let (wtx, wrx) = watch::channel(false);
            let wtx = std::sync::Arc::new(wtx);
            let mut outer = env.shutdown.clone();
            let forward = wtx.clone();
            tokio::spawn(async move {
                if outer.changed().await.is_ok() {
                    let _ = forward.send(true);
                }
            });
            let committer_env = JobEnv {
                catalog: env.catalog.clone(),
                store: env.store.clone(),
                store_prefix: env.store_prefix.clone(),
                crash: CrashPlan::default(),
                shutdown: crx,
                idle_exit: None,
                fleet: None,
            };
            let worker_env = JobEnv {
                shutdown: wrx,
                ..env
            };
            let working = async {
                let r = worker::run(cfg, worker_env).await;
                let _ = ctx.send(true);
                r
            };
            let committing = async {
                let r = committer::run(cfg, committer_env).await;
                if r.is_err() {
                    let _ = wtx.send(true);
                }
                r
            };
            let (worked, committed) = tokio::join!(working, committing);
            let w = worked?;
            let c = committed?;
            println!(
                "fleet stopped cleanly: task starts {} checkpoints {} records {}; committer generation {} commits {} last sequence {}",
                w.task_starts, w.checkpoints, w.records, c.generation, c.commits, c.last
            );
        }
    }
    Ok(())
}

async fn run(config: Option<PathBuf>, idle_ms: Option<u64>, role: Role) -> anyhow::Result<()> {
    let cfg = Config::load(config.as_deref())?;
    if !cfg.fleet.enabled() && role != Role::All {
        return Err(recon_pipeline::config::ConfigError(format!(
            "--role {role:?} needs [fleet] tasks > 0; without a fleet the job runs as one process (drop --role)"
        ))
        .into());
    }
    let (store, prefix) = checkpoint::store::open(&cfg).context("opening the checkpoint store")?;
    if let Some(listen) = cfg.metrics_listen {
        recon_pipeline::telemetry::serve(listen).await?;
        for class in StopClass::ALL {
            recon_pipeline::telemetry::running(class.name());
        }
    }
    let catalog = lakehouse::open_catalog(&cfg).await?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    let env = JobEnv {
        catalog,
        store,
        store_prefix: prefix,
        crash: CrashPlan::default(),
        shutdown: rx,
        idle_exit: idle_ms.map(Duration::from_millis),
        fleet: None,
    };
    if cfg.fleet.enabled() {
        return run_fleet(&cfg, env, role).await;
    }
    let report = job::run(&cfg, env).await?;
    println!(
        "stopped cleanly: generation {} checkpoints {} commits {} records {} events {} duplicates {} rejected {} trips {} last checkpoint {} evicted {} brought back {} state folds {}",
        report.generation,
        report.checkpoints,
        report.commits,
        report.counts.records,
        report.counts.events,
        report.counts.duplicates,
        report.counts.rejected,
        report.trips,
        report.last_checkpoint,
        report.evicted,
        report.brought_back,
        report.compactions
    );
    Ok(())
}

async fn maintain(cfg: &Config, opts: &maintain::Options) -> anyhow::Result<()> {
    let catalog = lakehouse::open_catalog(cfg).await?;
    let report = maintain::run(cfg, catalog, opts).await?;
    if report.dry_run {
        println!("dry run: nothing is changed");
        for t in &report.tables {
            if let Some(p) = &t.expiry {
                for id in &p.expire {
                    println!("{}: would expire snapshot {id}", t.table);
                }
            }
            for (key, bytes) in &t.orphans {
                println!("{}: would delete {key} ({bytes} bytes)", t.table);
            }
        }
    }
    print!("{report}");
    anyhow::ensure!(
        !report.failed(),
        "maintenance failed for {} of {} tables (see the FAILED lines above); what was done stays done, nothing the job needs was touched",
        report.tables.iter().filter(|t| t.error.is_some()).count(),
        report.tables.len()
    );
    Ok(())
}

async fn rewind(
    config: Option<PathBuf>,
    to: CheckpointId,
    reason: String,
    yes: bool,
) -> anyhow::Result<()> {
    let cfg = Config::load(config.as_deref())?;
    if cfg.fleet.enabled() {
        return recon_pipeline::fleet::rewind::run(&cfg, to, &reason, yes).await;
    }
    let (store, prefix) = checkpoint::store::open(&cfg)?;
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let Some(head) = log.head().await? else {
        refuse!("the checkpoint log is empty: nothing to rewind");
    };
    let Some(target) = log.completed(to).await? else {
        refuse!(
            "checkpoint {to} is not in the log of job {} (pruned? `checkpoints list` shows what is left)",
            cfg.job_id
        );
    };
    if to >= head.entry.checkpoint_id {
        refuse!(
            "checkpoint {to} is not older than the head ({}); nothing to rewind",
            head.entry.checkpoint_id
        );
    }
    if reason.trim().is_empty() {
        refuse!("--reason must say why");
    }
    // The target's state must be intact: a rewind onto an edited state file would restore it.
    log.read_state_chain(&target.manifest)
        .await
        .with_context(|| format!("cannot rewind to checkpoint {to}: its state does not verify"))?;
    println!(
        "rewind job {}: head is checkpoint {} (generation {}); restart from checkpoint {to} (offsets {:?})",
        cfg.job_id,
        head.entry.checkpoint_id,
        head.entry.generation,
        target.manifest.resume_offsets()
    );
    println!(
        "records up to the head's offsets {:?} are replayed into state only (no duplicates)",
        head.manifest.resume_offsets()
    );
    if !yes {
        refuse!("not confirmed: re-run with --yes to write the rewind entry");
    }
    let claimed = log.claim(Some((to, reason.clone()))).await?;
    tracing::warn!(job = %cfg.job_id, to = %to, generation = %claimed.entry.generation, checkpoint = %claimed.entry.checkpoint_id, reason, "REWIND written");
    println!(
        "rewind written: checkpoint {} generation {}; start the job to resume",
        claimed.entry.checkpoint_id, claimed.entry.generation
    );
    Ok(())
}

/// `ok` when every state file of `m` matches its checksum, `unchecked` when `m` recorded none
/// (an older build), `BAD` when a file differs or is missing.
async fn state_verdict(log: &CheckpointLog, m: &checkpoint::manifest::Manifest) -> &'static str {
    match log.read_state_chain(m).await {
        Ok(_) if m.state_chain.iter().all(|p| m.state_sha256.contains_key(p)) => "ok",
        Ok(_) => "unchecked",
        Err(
            checkpoint::log::LogError::StateChecksum { .. }
            | checkpoint::log::LogError::Corrupt { .. },
        ) => "BAD",
        Err(_) => "unreadable",
    }
}

async fn checkpoints(config: Option<PathBuf>, what: CheckpointsCmd) -> anyhow::Result<()> {
    let cfg = Config::load(config.as_deref())?;
    let (store, prefix) = checkpoint::store::open(&cfg)?;
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    match what {
        CheckpointsCmd::List => {
            println!(
                "{:>10} {:>6} {:>10} {:>10} {:>8} {:>6} {:>9}  kind",
                "id", "gen", "records", "events", "rejected", "files", "state"
            );
            for id in log.ids_after(None).await? {
                let Some(c) = log.completed(id).await? else {
                    continue;
                };
                let files: usize = c.manifest.pending.values().map(|p| p.files.len()).sum();
                println!(
                    "{:>10} {:>6} {:>10} {:>10} {:>8} {:>6} {:>9}  {:?}",
                    id,
                    c.entry.generation,
                    c.manifest.counts.records,
                    c.manifest.counts.events,
                    c.manifest.counts.rejected,
                    files,
                    state_verdict(&log, &c.manifest).await,
                    c.entry.kind
                );
            }
        }
        CheckpointsCmd::Show { id } => {
            let c = log.completed(CheckpointId(id)).await?.with_context(|| {
                format!("checkpoint {id} is not in the log of job {}", cfg.job_id)
            })?;
            if let Err(e) = log.read_state_chain(&c.manifest).await {
                eprintln!("state of checkpoint {id} does not verify: {e}");
            }
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"entry": c.entry, "manifest": c.manifest})
                )?
            );
        }
    }
    Ok(())
}
