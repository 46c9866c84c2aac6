//! A fleet worker: runs the streaming job once per task the group coordinator gives it.
//!
//! On assignment a task claims its generation in its own log (`<job>.t<task>`), restores its
//! state and reads its partitions from the checkpointed offsets; on revocation (or a lost
//! membership) the supervisor aborts it: uncommitted work is dropped, nothing is written (the
//! callback itself only posted the change). A task that stops with a transient error or
//! fenced is restarted while this worker still owns it, with a growing delay; a stop that
//! needs an operator (or a configuration fix) stops the whole worker with that class, and
//! every restart finds the same refusal before writing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::log::CheckpointLog;
use crate::config::Config;
use crate::ids::CheckpointId;
use crate::job::{self, JobEnv, JobError, RunReport, StopClass};

use super::layout::{self, Shape};
use super::membership::{Change, Membership};
use super::{FleetError, FleetTask};

/// What a worker run did.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    /// Task runs started (assignments and restarts).
    pub task_starts: u64,
    /// Task runs aborted by a revocation.
    pub revoked: u64,
    /// Checkpoints completed by task runs that ended (graceful or aborted runs excluded).
    pub checkpoints: u64,
    /// Records consumed by task runs that ended gracefully.
    pub records: u64,
    /// Of those, records replayed into state only (after a rewind).
    pub replayed: u64,
}

impl WorkerReport {
    /// Adds a task run that ended gracefully.
    fn add_run(&mut self, r: &crate::job::RunReport) {
        self.checkpoints += r.checkpoints;
        self.records += r.counts.records;
        self.replayed += r.replayed;
    }
}

/// A task's pre-flight, before its claim: its log must reach what the committer recorded for
/// it (an older copy of the task's log would re-read and re-commit what the tables hold).
pub async fn before_claim(task: &FleetTask, log: &CheckpointLog) -> Result<(), JobError> {
    let committer = task.log(log);
    layout::still(&committer, &task.shape)
        .await
        .map_err(FleetError::from)?;
    let recorded = match committer.head().await? {
        Some(h) => h.manifest.fleet_tasks.get(&task.task).copied(),
        None => None,
    };
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let head = log
        .ids_after(None)
        .await?
        .last()
        .copied()
        .unwrap_or(CheckpointId(0));
    if head < recorded {
        return Err(FleetError::TaskBehindCommitter {
            task: task.task,
            head,
            recorded,
        }
        .into());
    }
    Ok(())
}

struct Running {
    /// Graceful stop (final checkpoint).
    stop: watch::Sender<bool>,
    /// Drop the run where it stands (a revocation).
    abort: Option<oneshot::Sender<()>>,
    /// Which start of the task this is (a late report of an older one is ignored).
    run: u64,
}

impl Running {
    fn abort(&mut self) {
        if let Some(a) = self.abort.take() {
            let _ = a.send(());
        }
    }
}

/// How a task run ended: `None` when aborted.
type Ended = (u32, u64, Option<Result<RunReport, JobError>>);

/// Starts task `t`'s run on a thread with its own runtime, catalog and store clients (so an
/// aborted run takes its connections with it and shares none with another run). The result
/// comes back on `done`.
fn spawn_task(
    t: u32,
    run: u64,
    cfg: Config,
    fleet: FleetTask,
    crash: job::CrashPlan,
    stop: watch::Receiver<bool>,
    done: mpsc::UnboundedSender<Ended>,
) -> Result<oneshot::Sender<()>, JobError> {
    let (abort_tx, abort_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("recon-task-{t}"))
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(format!("recon-task-{t}-rt"))
                    .enable_all()
                    .build()
                    .map_err(|e| JobError::Spawn {
                        what: format!("task {t}'s runtime"),
                        message: e.to_string(),
                    });
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => return Some(Err(e)),
                };
                let out = rt.block_on(async move {
                    tokio::select! {
                        r = run_task(&cfg, fleet, crash, stop) => Some(r),
                        _ = abort_rx => None,
                    }
                });
                rt.shutdown_background();
                out
            }));
            let out = outcome.unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Some(Err(JobError::Panicked {
                    what: format!("fleet task {t}"),
                    message: what,
                }))
            });
            let _ = done.send((t, run, out));
        })
        .map_err(|e| JobError::Spawn {
            what: format!("task {t}'s thread"),
            message: e.to_string(),
        })?;
    Ok(abort_tx)
}

/// One run of a task: its own store and catalog clients, then the job.
async fn run_task(
    cfg: &Config,
    fleet: FleetTask,
    crash: job::CrashPlan,
    shutdown: watch::Receiver<bool>,
) -> Result<RunReport, JobError> {
    let (store, store_prefix) =
        crate::checkpoint::store::open(cfg).map_err(crate::checkpoint::log::LogError::from)?;
    let catalog = crate::lakehouse::open_catalog(cfg).await?;
    let env = JobEnv {
        catalog,
        store,
        store_prefix,
        crash,
        shutdown,
        idle_exit: None,
        fleet: Some(fleet),
    };
    job::run(cfg, env).await
}

/// Delay before restarting a task that stopped on its own, by consecutive failures.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis((500u64 << failures.min(6)).min(30_000))
}

/// Runs the worker until shutdown (every task stops gracefully, then it leaves the group) or a
/// task's stop that a restart cannot fix.
pub async fn run(cfg: &Config, mut env: JobEnv) -> Result<WorkerReport, JobError> {
    let k = cfg.fleet.tasks;
    let all = crate::source::topic_partitions(&cfg.source)?;
    let fleet_log = CheckpointLog::new(env.store.clone(), &env.store_prefix, cfg.job_id.clone());
    let shape = layout::ensure(
        &fleet_log,
        &cfg.source.topic,
        &Shape {
            tasks: k,
            partitions: all.len() as u32,
        },
    )
    .await
    .map_err(FleetError::from)?;
    crate::lakehouse::ensure_tables(env.catalog.as_ref(), &cfg.catalog.namespace).await?;
    let (tx, mut changes) = mpsc::unbounded_channel();
    let mut membership = Membership::start(cfg, &shape, tx).await?;
    tracing::info!(tasks = k, partitions = all.len(), protocol = ?cfg.fleet.group_protocol, "worker joined the fleet");
    let mut owned: BTreeSet<u32> = BTreeSet::new();
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    let (done_tx, mut done) = mpsc::unbounded_channel::<Ended>();
    let mut runs = 0u64;
    // Runs stopped (aborted or asked to stop) whose thread has not reported yet.
    let mut stopping = 0usize;
    let mut due: BTreeMap<u32, (Instant, u32)> = BTreeMap::new();
    let mut assigned: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut report = WorkerReport::default();
    let tick = Duration::from_millis(100);
    let result = loop {
        // Start every owned task that is not running and whose restart is due.
        let now = Instant::now();
        for t in owned.iter().copied().collect::<Vec<_>>() {
            if running.contains_key(&t) || due.get(&t).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let fleet = FleetTask {
                job: cfg.job_id.clone(),
                task: t,
                tasks: k,
                shape: shape.clone(),
                assigned_at: assigned.get(&t).copied().unwrap_or_else(Instant::now),
            };
            runs += 1;
            let abort = spawn_task(
                t,
                runs,
                task_config(cfg, &shape, t, &all),
                fleet,
                env.crash.clone(),
                stop_rx,
                done_tx.clone(),
            )?;
            running.insert(
                t,
                Running {
                    stop,
                    abort: Some(abort),
                    run: runs,
                },
            );
            report.task_starts += 1;
            tracing::info!(task = t, "task started");
        }
        crate::telemetry::worker_tasks(running.len());
        tokio::select! {
            biased;
            _ = env.shutdown.changed() => {
                tracing::info!(tasks = running.len(), "shutdown requested: every task's final checkpoint, then leaving the group");
                break Ok(());
            }
            change = changes.recv() => match change {
                Some(Change::Assigned(ts)) => {
                    crate::telemetry::worker_rebalance("assigned", ts.len());
                    tracing::info!(tasks = ?ts, "tasks assigned");
                    for t in ts {
                        if t < k {
                            owned.insert(t);
                            due.remove(&t);
                            assigned.insert(t, Instant::now());
                        }
                    }
                }
                Some(Change::Revoked(ts)) => {
                    crate::telemetry::worker_rebalance("revoked", ts.len());
                    tracing::info!(tasks = ?ts, "tasks revoked: their uncommitted work is dropped");
                    for t in ts {
                        owned.remove(&t);
                        due.remove(&t);
                        if let Some(mut r) = running.remove(&t) {
                            r.abort();
                            stopping += 1;
                            report.revoked += 1;
                        }
                        // Its partitions' lag is the new owner's to report.
                        for p in layout::partitions_of(t, k, &all) {
                            crate::telemetry::lag(p.0, 0);
                        }
                    }
                }
                None => break Err(FleetError::Membership("the membership thread stopped".into()).into()),
            },
            Some((t, run, outcome)) = done.recv() => {
                if running.get(&t).is_some_and(|r| r.run == run) {
                    running.remove(&t);
                } else {
                    // A run stopped earlier (revoked) reporting its end.
                    stopping = stopping.saturating_sub(1);
                }
                match outcome {
                    // Aborted by a revocation: nothing to do.
                    None => {}
                    Some(Ok(r)) => report.add_run(&r),
                    Some(Err(e)) => {
                        let class = e.class();
                        match class {
                            StopClass::Transient | StopClass::Fenced => {
                                let failures = due.get(&t).map_or(0, |(_, n)| n + 1);
                                let wait = backoff(failures);
                                tracing::warn!(task = t, class = class.name(), error = %e, retry_ms = wait.as_millis() as u64, "task stopped; restarting it while this worker owns it");
                                due.insert(t, (Instant::now() + wait, failures));
                            }
                            StopClass::Config | StopClass::OperatorNeeded => {
                                tracing::error!(task = t, class = class.name(), error = %e, "task stopped for an operator: the worker stops every task");
                                break Err(e);
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep(tick) => {}
        }
    };
    // Every running task stops: gracefully on shutdown (final checkpoint), aborted otherwise.
    for r in running.values_mut() {
        if result.is_ok() {
            let _ = r.stop.send(true);
        } else {
            r.abort();
        }
    }
    let mut waiting = running.len() + stopping;
    drop(done_tx);
    while waiting > 0 {
        let Some((t, _, outcome)) = done.recv().await else {
            break;
        };
        waiting -= 1;
        match outcome {
            Some(Ok(r)) => report.add_run(&r),
            Some(Err(e)) => tracing::warn!(task = t, error = %e, "a task did not stop cleanly"),
            None => {}
        }
    }
    membership.stop();
    crate::telemetry::worker_tasks(0);
    result.map(|()| report)
}

/// The configuration of task `t`'s run: its own job id (log, data file names, consumer group)
/// and its partitions.
pub fn task_config(
    cfg: &Config,
    shape: &layout::Current,
    t: u32,
    all: &[crate::ids::PartitionId],
) -> Config {
    let mut c = cfg.clone();
    c.job_id = shape
        .task_job(&cfg.job_id, t)
        .expect("the configuration and the reshard command bound the job id");
    // Each task fences its own alerts producers: a transactional id per task.
    if !c.alerts.transactional_id.trim().is_empty() {
        c.alerts.transactional_id = format!("{}.t{t:04}", c.alerts.transactional_id.trim());
    }
    c.source.partitions = layout::partitions_of(t, shape.shape.tasks, all)
        .into_iter()
        .map(|p| p.0)
        .collect();
    // librdkafka prefetches up to this much per consumer, and a worker may run every task: a
    // worker running all K prefetches at most 256 MiB together (the single process: 64 MiB),
    // each task at least 4 MiB (unless source.properties sets it).
    c.source
        .properties
        .entry("queued.max.messages.kbytes".into())
        .or_insert_with(|| {
            (TASK_PREFETCH_KIB_TOTAL / cfg.fleet.tasks.max(1))
                .max(4_096)
                .to_string()
        });
    c
}

/// The prefetch budget of all of a worker's tasks together, when it runs every task (KiB).
const TASK_PREFETCH_KIB_TOTAL: u32 = 256 * 1024;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::checkpoint::manifest::{EntryKind, Manifest};
    use crate::checkpoint::store::{CheckpointStore, ObjectCheckpointStore};
    use crate::ids::{Generation, JobId};

    async fn complete(log: &CheckpointLog, m: &Manifest) {
        let e = log.write_manifest(m, EntryKind::Checkpoint).await.unwrap();
        log.complete(&e).await.unwrap();
    }

    /// An operator restores an older copy of one task's log: the task refuses to start
    /// (exit 3) before claiming, and a task whose log is complete starts.
    #[tokio::test]
    async fn a_task_log_behind_the_committer_is_refused() {
        let store: Arc<dyn CheckpointStore> = Arc::new(ObjectCheckpointStore::new(Arc::new(
            object_store::memory::InMemory::new(),
        )));
        let job = JobId::new("j").unwrap();
        let committer = CheckpointLog::new(store.clone(), "p", job.clone());
        let mut record = Manifest::empty(job.clone(), CheckpointId(1), Generation(1));
        record.fleet_tasks.insert(3, CheckpointId(2));
        complete(&committer, &record).await;
        let task_log = committer.sibling(job.task(3).unwrap());
        let task = FleetTask {
            job: job.clone(),
            task: 3,
            tasks: 8,
            shape: layout::Current {
                shape: Shape {
                    tasks: 8,
                    partitions: 16,
                },
                reshard: None,
            },
            assigned_at: Instant::now(),
        };
        // Nothing in the task's log (deleted, or an empty copy restored).
        let e = before_claim(&task, &task_log).await.unwrap_err();
        assert_eq!(e.class(), StopClass::OperatorNeeded, "{e}");
        assert!(e.to_string().contains("restored from an older copy"), "{e}");
        complete(
            &task_log,
            &Manifest::empty(task_log.job().clone(), CheckpointId(1), Generation(1)),
        )
        .await;
        assert!(before_claim(&task, &task_log).await.is_err());
        complete(
            &task_log,
            &Manifest::empty(task_log.job().clone(), CheckpointId(2), Generation(1)),
        )
        .await;
        before_claim(&task, &task_log).await.unwrap();
        // Another task the committer holds nothing of starts.
        let other = FleetTask { task: 4, ..task };
        before_claim(&other, &committer.sibling(job.task(4).unwrap()))
            .await
            .unwrap();
    }

    #[test]
    fn a_task_config_owns_its_partitions_under_its_own_id() {
        let mut raw = crate::config::RawConfig {
            job_id: "pay".into(),
            ..Default::default()
        };
        raw.source.brokers = "127.0.0.1:1".into();
        raw.source.topic = "t".into();
        raw.fleet.tasks = 4;
        let cfg = Config::resolve(raw).unwrap();
        let all: Vec<_> = (0..10).map(crate::ids::PartitionId).collect();
        let shape = layout::Current {
            shape: Shape {
                tasks: 4,
                partitions: 10,
            },
            reshard: None,
        };
        let t = task_config(&cfg, &shape, 1, &all);
        assert_eq!(t.job_id.as_str(), "pay.t0001");
        assert_eq!(t.source.partitions, vec![1, 5, 9]);
        assert_eq!(t.source.properties["queued.max.messages.kbytes"], "65536");
        // A configured alerts transactional id is made the task's own: one task's producer
        // must not fence another's.
        assert_eq!(
            crate::outputs::alerts_kafka::AlertsProducer::transactional_id(&t),
            "recon-pay.t0001-alerts"
        );
        let mut named = cfg.clone();
        named.alerts.transactional_id = "payments-alerts".into();
        let t = task_config(&named, &shape, 3, &all);
        assert_eq!(t.alerts.transactional_id, "payments-alerts.t0003");
        // After a reshard to 3 tasks recorded by commit sequence 42: new logs, new partitions.
        let resharded = layout::Current {
            shape: Shape {
                tasks: 3,
                partitions: 10,
            },
            reshard: Some(layout::Reshard {
                sequence: 42,
                from_tasks: 4,
                shape: Shape {
                    tasks: 3,
                    partitions: 10,
                },
                reason: "r".into(),
            }),
        };
        let t = task_config(&cfg, &resharded, 1, &all);
        assert_eq!(t.job_id.as_str(), "pay.r42-3.t0001");
        assert_eq!(t.source.partitions, vec![1, 4, 7]);
    }
}
