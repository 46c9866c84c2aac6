//! The fleet's committer: gathers every task's completed checkpoints into one commit record
//! in its own checkpoint log (the fleet job's, claimed and fenced by generation like a job's),
//! then makes one guarded append per table for it with the job's [`Publisher`].
//!
//! Sequence of one commit (crash points in order):
//! 1. per task, the checkpoints completed after what the previous record holds
//!    ([`super::gather::next_record`]); nothing new: no record, no snapshot;
//! 2. the record's manifest — `committer-before-record` — then its log entry (create-if-absent:
//!    a second committer's claim fences this one here);
//! 3. per table, one guarded `fast_append` of the record's files, stamped with the job id, the
//!    committer's generation and the commit sequence — `committer-during-commit` after the first;
//! 4. `commits/latest.json` and the per-task progress the workers prune by —
//!    `committer-after-commit` before it — then the committer's own log is pruned.
//!
//! A crash anywhere resumes from the log: a record without entry is rewritten from the tasks'
//! logs (their checkpoints are kept until the progress names them), a durable record is
//! published by the next committer, exactly once thanks to the tables' marks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::checkpoint::commit::Committer;
use crate::checkpoint::log::{CheckpointLog, LogError};
use crate::checkpoint::manifest::{EntryKind, Manifest};
use crate::checkpoint::presence::ObjectStoreSizes;
use crate::checkpoint::protocol;
use crate::checkpoint::publish::{PublishError, Publisher};
use crate::config::Config;
use crate::crash::CrashPoint;
use crate::ids::{CheckpointId, Generation};
use crate::job::publish::publish_tables;
use crate::job::{JobEnv, JobError};
use crate::lakehouse;
use crate::sink::Output;

use super::FleetError;
use super::layout::{self, Shape};
use super::progress::{self, Committed};

/// Task logs read at once while gathering.
const GATHER_TASKS_AT_ONCE: usize = 8;
/// Manifests of one task read at once while gathering.
const GATHER_READS_AT_ONCE: usize = 8;
/// Checkpoints of one task gathered per round (a longer backlog takes several rounds).
const GATHER_PER_TASK_MAX: usize = 2_000;

/// What a committer run did.
#[derive(Clone, Debug, Default)]
pub struct CommitterReport {
    /// Generation claimed.
    pub generation: Generation,
    /// Commit sequences recorded by this run.
    pub records: u64,
    /// Table appends that landed.
    pub commits: u64,
    /// The last commit sequence every table holds.
    pub last: CheckpointId,
    /// Duration of every commit (gather -> every table holds it).
    pub commit_durations: Vec<Duration>,
}

/// A claimed committer.
struct Run {
    cfg: Config,
    log: CheckpointLog,
    committer: Committer,
    generation: Generation,
    tables: Vec<iceberg::table::Table>,
    files: ObjectStoreSizes,
    /// The newest record (the claim's continuation at start).
    head: Manifest,
    last: CheckpointId,
    /// Records not yet known committed everywhere.
    uncommitted: BTreeMap<CheckpointId, Manifest>,
    tasks: Vec<CheckpointLog>,
    crash: crate::job::CrashPlan,
    report: CommitterReport,
    /// Per task, the completed checkpoints read since the newest record.
    gathered: BTreeMap<u32, Vec<Manifest>>,
    /// When the newest record was written (idle tasks get one per `commit.interval_ms_max`).
    last_record: Instant,
}

/// Runs the committer until shutdown, idle exit (nothing new for that long), or an error.
pub async fn run(cfg: &Config, mut env: JobEnv) -> Result<CommitterReport, JobError> {
    let k = cfg.fleet.tasks;
    let all = crate::source::topic_partitions(&cfg.source)?;
    let shape = Shape {
        tasks: k,
        partitions: all.len() as u32,
    };
    let log = CheckpointLog::new(env.store.clone(), &env.store_prefix, cfg.job_id.clone());
    let current = layout::ensure(&log, &cfg.source.topic, &shape)
        .await
        .map_err(FleetError::from)?;
    lakehouse::ensure_tables(env.catalog.as_ref(), &cfg.catalog.namespace).await?;
    // The same read-only checks as a job's start, on the committer's log: a table ahead of
    // it, rolled back, or owned by another job stops here before anything is written.
    crate::job::preflight::before_claim(cfg, env.catalog.as_ref(), &log).await?;
    crate::job::recovery::verify_pending_files(cfg, &env).await?;
    let claimed = log.claim(None).await?;
    let generation = claimed.entry.generation;
    let resumed = match claimed.entry.kind {
        EntryKind::GenerationStart { resumes } => resumes,
        _ => None,
    };
    crate::job::preflight::after_claim(cfg, env.catalog.as_ref(), &log, generation, resumed)
        .await?;
    tracing::info!(%generation, checkpoint = %claimed.entry.checkpoint_id, tasks = k, "committer claimed");
    let committer = Committer::new(
        env.catalog.clone(),
        &claimed.permit,
        cfg.commit.attempts_max,
        Duration::from_millis(cfg.commit.timeout_ms),
    );
    let mut tables = Vec::new();
    for output in Output::ALL {
        let ident = lakehouse::table_ident(cfg, output.table());
        tables.push(lakehouse::load_table(env.catalog.as_ref(), &ident).await?);
    }
    let warehouse = crate::orphans::warehouse_store(cfg).map_err(|e| {
        JobError::Config(format!(
            "cannot open the warehouse {}: {e}",
            cfg.catalog.warehouse
        ))
    })?;
    let tasks = (0..k)
        .map(|t| {
            let id = current
                .task_job(&cfg.job_id, t)
                .expect("the configuration and the reshard command bound the job id");
            log.sibling(id)
        })
        .collect();
    let mut run = Run {
        cfg: cfg.clone(),
        committer,
        generation,
        tables,
        files: ObjectStoreSizes(warehouse),
        head: claimed.manifest.clone(),
        last: claimed.entry.checkpoint_id,
        uncommitted: BTreeMap::new(),
        tasks,
        crash: env.crash.clone(),
        report: CommitterReport {
            generation,
            ..Default::default()
        },
        last_record: Instant::now(),
        gathered: BTreeMap::new(),
        log,
    };
    // Whatever the previous committer recorded but did not publish.
    run.publish().await?;
    let interval = if cfg.fleet.commit_interval_ms > 0 {
        Duration::from_millis(cfg.fleet.commit_interval_ms)
    } else {
        cfg.checkpoint_interval
    };
    let mut last_new = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = env.shutdown.changed() => {
                tracing::info!("shutdown requested: a last commit of what the tasks completed");
                // Empty task checkpoints too (their first on a worker, a final one): a fleet
                // stopped workers first, committer last, has nothing left uncommitted, which
                // `reshard` requires.
                run.round(&all, true).await?;
                return Ok(run.report);
            }
            _ = tokio::time::sleep(interval) => {
                if run.round(&all, false).await? {
                    last_new = Instant::now();
                } else if env.idle_exit.is_some_and(|idle| last_new.elapsed() >= idle) {
                    tracing::info!("nothing new from any task: committer stops (idle exit)");
                    return Ok(run.report);
                }
            }
        }
    }
}

impl Run {
    /// One commit interval: gather, record, publish. Returns whether anything was new.
    /// `everything`: also when the tasks' new checkpoints carry nothing (the last round).
    async fn round(
        &mut self,
        partitions_at_start: &[crate::ids::PartitionId],
        everything: bool,
    ) -> Result<bool, JobError> {
        // A partition added while running belongs to no task: stop before committing around it.
        let now = crate::source::topic_partitions(&self.cfg.source)?;
        if now.len() != partitions_at_start.len() {
            return Err(FleetError::Shape(layout::ShapeRefusal::PartitionsChanged {
                job: self.cfg.job_id.to_string(),
                topic: self.cfg.source.topic.clone(),
                now: now.len() as u32,
                recorded: partitions_at_start.len() as u32,
            })
            .into());
        }
        let started = Instant::now();
        self.gather().await?;
        let new = &self.gathered;
        // Only empty checkpoints (idle tasks): no snapshot, except now and then so that the
        // tasks can prune and the tables' marks stay fresh (`commit.interval_ms_max`).
        let carries = new
            .values()
            .flatten()
            .any(|m| m.counts.records > 0 || m.pending.values().any(|p| !p.files.is_empty()));
        let aged = self.last_record.elapsed().as_millis() as u64 >= self.cfg.commit.interval_ms_max;
        if !carries && !aged && !everything {
            return Ok(false);
        }
        let id = self.last.next();
        let Some(record) =
            super::gather::next_record(&self.head, id, self.generation, self.cfg.fleet.tasks, new)
                .map_err(FleetError::from)?
        else {
            return Ok(false);
        };
        let entry = self
            .log
            .write_manifest(&record, EntryKind::Checkpoint)
            .await?;
        self.crash.hit(CrashPoint::CommitterBeforeRecord)?;
        self.log.complete(&entry).await?;
        tracing::info!(sequence = %id, generation = %self.generation, tasks = new.values().filter(|v| !v.is_empty()).count(), records = record.counts.records, "commit record durable");
        self.last = id;
        self.head = record.clone();
        self.uncommitted.insert(id, record);
        self.report.records += 1;
        self.last_record = Instant::now();
        self.gathered.clear();
        self.publish().await?;
        self.report.commit_durations.push(started.elapsed());
        crate::telemetry::committer_commit(id.0, started.elapsed());
        tracing::info!(sequence = %id, duration_ms = started.elapsed().as_millis() as u64, "commit sequence in every table");
        Ok(true)
    }

    /// Adds to `gathered`, per task, its completed checkpoints after what the newest record
    /// and the earlier gatherings hold, in log order (each manifest is read once). Task logs
    /// are read [`GATHER_TASKS_AT_ONCE`] at a time, each one's manifests
    /// [`GATHER_READS_AT_ONCE`] at a time: a committer that was down finds minutes of
    /// checkpoints of every task (found in the fleet test: 480 manifests one by one held a
    /// commit back two minutes), at most [`GATHER_PER_TASK_MAX`] per task per round.
    async fn gather(&mut self) -> Result<(), JobError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let afters: Vec<(u32, Option<CheckpointId>)> = (0..self.tasks.len() as u32)
            .map(|t| {
                let after = match self.gathered.get(&t).and_then(|m| m.last()) {
                    Some(m) => Some(m.checkpoint_id),
                    None => self.head.fleet_tasks.get(&t).copied(),
                };
                (t, after)
            })
            .collect();
        let tasks = &self.tasks;
        let found: Vec<(u32, Vec<Manifest>)> = stream::iter(afters)
            .map(|(t, after)| async move {
                let log = &tasks[t as usize];
                let ids = log.ids_after(after).await?;
                let mut expected = after.map_or(CheckpointId(1), CheckpointId::next);
                for id in ids.iter().take(GATHER_PER_TASK_MAX) {
                    if *id != expected {
                        return Err(JobError::from(PublishError::CheckpointGone {
                            id: expected,
                        }));
                    }
                    expected = id.next();
                }
                let manifests: Vec<Manifest> =
                    stream::iter(ids.into_iter().take(GATHER_PER_TASK_MAX))
                        .map(|id| async move {
                            match log.completed(id).await? {
                                Some(c) => Ok(c.manifest),
                                None => Err(JobError::from(PublishError::CheckpointGone { id })),
                            }
                        })
                        .buffered(GATHER_READS_AT_ONCE)
                        .try_collect()
                        .await?;
                Ok((t, manifests))
            })
            .buffer_unordered(GATHER_TASKS_AT_ONCE)
            .try_collect()
            .await?;
        for (t, manifests) in found {
            let all = self.gathered.entry(t).or_default();
            all.extend(manifests);
            crate::telemetry::committer_task_lag(t, all.len() as u64);
        }
        Ok(())
    }

    /// Publishes every record up to `self.last` to every table that lacks it, then records the
    /// progress and prunes the committer's log.
    async fn publish(&mut self) -> Result<(), JobError> {
        let through = self.last;
        let publisher = Publisher::new(
            &self.committer,
            &self.log,
            &self.uncommitted,
            Some(&self.files),
        );
        let landed = publish_tables(
            &publisher,
            &self.tables,
            through,
            &mut self.crash,
            CrashPoint::CommitterDuringCommit,
        )
        .await?;
        self.report.commits += landed;
        self.crash.hit(CrashPoint::CommitterAfterCommit)?;
        self.log.record_commit(through, self.generation).await?;
        // The newest record is `through`'s: its progress is what every table now holds.
        let tasks = self.head.fleet_tasks.clone();
        progress::write(
            &self.log,
            &Committed {
                sequence: through,
                generation: self.generation,
                tasks,
            },
        )
        .await?;
        self.uncommitted.retain(|id, _| *id > through);
        self.report.last = through;
        self.prune(through).await
    }

    /// The committer's own records beyond `checkpoint.keep_last` that every table holds.
    async fn prune(&self, committed: CheckpointId) -> Result<(), JobError> {
        let present = self.log.ids_after(None).await?;
        let doomed = protocol::prunable(
            &present,
            self.last,
            &[],
            Some(committed),
            self.cfg.keep_last,
        );
        if !doomed.is_empty() {
            match self.log.prune(&doomed).await {
                Ok(n) => tracing::debug!(pruned = n, "old commit records pruned"),
                Err(e @ LogError::Store(_)) => tracing::warn!(error = %e, "pruning waits"),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
