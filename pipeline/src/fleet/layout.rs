//! Which task owns which partition, and the job's recorded shape.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::store::Created;
use crate::ids::{JobId, PartitionId};

/// The task of a partition: `p mod K`.
pub fn task_of(partition: PartitionId, tasks: u32) -> u32 {
    (partition.0.unsigned_abs()) % tasks.max(1)
}

/// The partitions of `task` among `all`.
pub fn partitions_of(task: u32, tasks: u32, all: &[PartitionId]) -> Vec<PartitionId> {
    all.iter()
        .copied()
        .filter(|p| task_of(*p, tasks) == task)
        .collect()
}

/// What a fleet job was created with (`<prefix>/<job>/fleet.json`, create-if-absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// K.
    pub tasks: u32,
    /// The input topic's partition count.
    pub partitions: u32,
}

/// Why a start refuses the recorded shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeRefusal {
    /// `fleet.tasks` differs from the job's.
    #[error(
        "fleet.tasks = {configured} but job {job} was created with {recorded} tasks: each task's state and log hold its partitions (p mod K), so K cannot change in place. Set fleet.tasks = {recorded}; a new K needs `recon-pipeline reshard --tasks <K>` with the fleet stopped"
    )]
    TasksChanged {
        /// Job.
        job: String,
        /// Configured K.
        configured: u32,
        /// Recorded K.
        recorded: u32,
    },
    /// The topic's partition count changed.
    #[error(
        "topic {topic} has {now} partitions but job {job} was created when it had {recorded}: a new partition's records belong to no task's checkpoint, and keys now hash to other partitions (a trip's events would be split). Stopping with nothing written; restore the partition count, or start a new job id on new tables"
    )]
    PartitionsChanged {
        /// Job.
        job: String,
        /// Topic.
        topic: String,
        /// Partitions now.
        now: u32,
        /// Partitions at creation.
        recorded: u32,
    },
    /// More tasks than partitions: some tasks would own nothing.
    #[error(
        "fleet.tasks = {tasks} but topic {topic} has only {partitions} partitions: every task must own at least one partition; set fleet.tasks to at most {partitions}"
    )]
    TooManyTasks {
        /// Topic.
        topic: String,
        /// K.
        tasks: u32,
        /// Partitions.
        partitions: u32,
    },
    /// The job's log holds a single-process job's checkpoints: switching it to a fleet in place
    /// would re-read the topic into tasks that start empty.
    #[error(
        "job {job} ran as one process ([fleet] tasks = 0): its checkpoint log and tables hold its progress, which tasks cannot take over in place (they would re-read the topic from source.start_from and write every event twice). Keep fleet.tasks = 0 for this job, or start the fleet under a new job id on new tables (a new namespace)"
    )]
    WasSingle {
        /// Job.
        job: String,
    },
    /// The job was created as a fleet; a single process must not take it over.
    #[error(
        "job {job} was created as a fleet of {tasks} tasks ({path}): its progress is in the tasks' logs, which one process does not read. Set [fleet] tasks = {tasks} and run workers and a committer (or `run` alone: both in one process)"
    )]
    WasFleet {
        /// Job.
        job: String,
        /// Its K.
        tasks: u32,
        /// The record.
        path: String,
    },
    /// A reshard wrote its record into the committer's log but not yet its shape record
    /// (the command was interrupted): nothing may run until it is finished.
    #[error(
        "job {job}: a reshard to {tasks} tasks was interrupted after its commit record {sequence}: run `recon-pipeline reshard --tasks {tasks}` again to finish it (it writes nothing else), then start the fleet with fleet.tasks = {tasks}"
    )]
    ReshardInterrupted {
        /// Job.
        job: String,
        /// The new K.
        tasks: u32,
        /// The committer's record of the reshard.
        sequence: u64,
    },
    /// The committer's log ends before the reshard its shape records name: an older copy of the
    /// checkpoint store was restored; its records name the old tasks.
    #[error(
        "job {job}: the committer's log ends at commit sequence {head} but the job was resharded to {tasks} tasks by commit sequence {sequence}: the checkpoint store was restored from an older copy. Restore the newest copy (nothing was written)"
    )]
    LogBeforeReshard {
        /// Job.
        job: String,
        /// The log's head (0: empty).
        head: u64,
        /// The reshard's K.
        tasks: u32,
        /// The reshard's commit sequence.
        sequence: u64,
    },
    /// The job was resharded while this process ran: its tasks are not the job's any more.
    #[error(
        "job {job} was resharded to {tasks} tasks (commit sequence {sequence}) while this process ran with the old shape: stop it, set fleet.tasks = {tasks} and start again; nothing was written"
    )]
    Resharded {
        /// Job.
        job: String,
        /// The new K.
        tasks: u32,
        /// The reshard's commit sequence.
        sequence: u64,
    },
    /// The store did not answer (transient).
    #[error("the fleet's shape record {path}: the checkpoint store failed: {message}")]
    StoreFailed {
        /// Path.
        path: String,
        /// What failed.
        message: String,
    },
    /// The shape record is unreadable.
    #[error("the fleet's shape record {path}: {message}")]
    Unreadable {
        /// Path.
        path: String,
        /// What failed.
        message: String,
    },
}

/// The shape record beside the fleet job's log.
const SHAPE: &str = "fleet.json";

/// The folder of reshard records beside the fleet job's log: `reshards/<sequence:020>.json`,
/// one per reshard, named by the committer's record that made it (create-if-absent).
const RESHARDS: &str = "reshards";

/// At most this many reshard records are read (a bound on a listing of external input).
const RESHARDS_MAX: usize = 10_000;

/// A reshard record: the shape from commit sequence `sequence` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reshard {
    /// The committer's record that made this shape the job's.
    pub sequence: u64,
    /// K before.
    pub from_tasks: u32,
    /// The shape after.
    pub shape: Shape,
    /// Why, as the operator said it.
    pub reason: String,
}

/// Path of the record of the reshard made by commit sequence `sequence` (relative to the job).
pub fn reshard_path(sequence: u64) -> String {
    format!("{RESHARDS}/{sequence:020}.json")
}

/// The job's shape now: as created, or as its newest reshard made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    /// K and the partition count.
    pub shape: Shape,
    /// The newest reshard, if any.
    pub reshard: Option<Reshard>,
}

impl Current {
    /// The job id of task `t` in this shape (names its log, data files, groups).
    pub fn task_job(&self, job: &JobId, t: u32) -> Option<JobId> {
        job.task_after_reshard(
            self.reshard.as_ref().map(|r| (r.sequence, r.shape.tasks)),
            t,
        )
    }

    /// What names of this shape carry after the job's (tasks topic, group): `.r<S>-<K>` after
    /// a reshard, nothing before.
    pub fn suffix(&self) -> String {
        self.reshard
            .as_ref()
            .map(|r| format!(".r{}-{}", r.sequence, r.shape.tasks))
            .unwrap_or_default()
    }

    /// The commit sequence of the newest reshard (0: never resharded).
    pub fn sequence(&self) -> u64 {
        self.reshard.as_ref().map_or(0, |r| r.sequence)
    }
}

/// The newest reshard record of the job, if any.
pub async fn newest_reshard(log: &CheckpointLog) -> Result<Option<Reshard>, ShapeRefusal> {
    let dir = log.path_of(RESHARDS);
    let (unreadable, failed) = refusals(&dir);
    let mut names = log
        .files_under(RESHARDS)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if names.len() > RESHARDS_MAX {
        return Err(unreadable(format!(
            "holds {} records, more than {RESHARDS_MAX}: not a reshard history this build reads",
            names.len()
        )));
    }
    names.sort();
    let Some(newest) = names.pop() else {
        return Ok(None);
    };
    let bytes = log
        .store()
        .get(&log.path_of(&newest))
        .await
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed(format!("{newest} was listed but is gone")))?;
    let r: Reshard = serde_json::from_slice(&bytes)
        .map_err(|e| unreadable(format!("{newest} does not parse: {e}")))?;
    if newest != reshard_path(r.sequence) {
        return Err(unreadable(format!(
            "{newest} records commit sequence {}: renamed or edited",
            r.sequence
        )));
    }
    Ok(Some(r))
}

/// Records a reshard (create-if-absent: a second run of the command writes the same record).
pub async fn record_reshard(log: &CheckpointLog, r: &Reshard) -> Result<(), ShapeRefusal> {
    let path = log.path_of(&reshard_path(r.sequence));
    let (unreadable, failed) = refusals(&path);
    let bytes = serde_json::to_vec(r).expect("the record serialises");
    match log
        .store()
        .create(&path, Bytes::from(bytes))
        .await
        .map_err(|e| failed(e.to_string()))?
    {
        Created::Created => Ok(()),
        Created::AlreadyExists(theirs) => {
            let theirs: Reshard = serde_json::from_slice(&theirs)
                .map_err(|e| unreadable(format!("does not parse: {e}")))?;
            if theirs.shape == r.shape && theirs.from_tasks == r.from_tasks {
                Ok(())
            } else {
                Err(unreadable(format!(
                    "already records a reshard to {} tasks, not {}",
                    theirs.shape.tasks, r.shape.tasks
                )))
            }
        }
    }
}

/// How reading the record at `path` fails: unreadable (operator), or the store failed
/// (transient).
fn refusals(
    path: &str,
) -> (
    impl Fn(String) -> ShapeRefusal + '_,
    impl Fn(String) -> ShapeRefusal + '_,
) {
    (
        move |message| ShapeRefusal::Unreadable {
            path: path.to_string(),
            message,
        },
        move |message| ShapeRefusal::StoreFailed {
            path: path.to_string(),
            message,
        },
    )
}

/// The shape the job was created with (`fleet.json`; `None`: never started as a fleet).
async fn created(log: &CheckpointLog) -> Result<Option<Shape>, ShapeRefusal> {
    let path = log.path_of(SHAPE);
    let (unreadable, failed) = refusals(&path);
    let Some(bytes) = log
        .store()
        .get(&path)
        .await
        .map_err(|e| failed(e.to_string()))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| unreadable(format!("does not parse: {e}")))
}

/// The shape now of a job created with `created`: its newest reshard's, if any.
async fn after_reshards(log: &CheckpointLog, created: Shape) -> Result<Current, ShapeRefusal> {
    Ok(match newest_reshard(log).await? {
        Some(r) => Current {
            shape: r.shape.clone(),
            reshard: Some(r),
        },
        None => Current {
            shape: created,
            reshard: None,
        },
    })
}

/// The job's shape as recorded (`None`: never started as a fleet), without judging it.
pub async fn current(log: &CheckpointLog) -> Result<Option<Current>, ShapeRefusal> {
    match created(log).await? {
        Some(shape) => after_reshards(log, shape).await.map(Some),
        None => Ok(None),
    }
}

/// A single-process start refuses a job created as a fleet.
pub async fn refuse_if_fleet(log: &CheckpointLog) -> Result<(), ShapeRefusal> {
    let path = log.path_of(SHAPE);
    let Some(shape) = created(log).await? else {
        return Ok(());
    };
    Err(ShapeRefusal::WasFleet {
        job: log.job().to_string(),
        tasks: shape.tasks,
        path: path.clone(),
    })
}

/// Judges a start: the configured K and the topic's partition count against the record.
pub fn judge(job: &JobId, topic: &str, recorded: &Shape, now: &Shape) -> Result<(), ShapeRefusal> {
    if now.tasks != recorded.tasks {
        return Err(ShapeRefusal::TasksChanged {
            job: job.to_string(),
            configured: now.tasks,
            recorded: recorded.tasks,
        });
    }
    if now.partitions != recorded.partitions {
        return Err(ShapeRefusal::PartitionsChanged {
            job: job.to_string(),
            topic: topic.to_string(),
            now: now.partitions,
            recorded: recorded.partitions,
        });
    }
    Ok(())
}

/// Records the shape at the job's first start (create-if-absent: two first starts agree on
/// one) and judges every start against it.
pub async fn ensure(
    log: &CheckpointLog,
    topic: &str,
    now: &Shape,
) -> Result<Current, ShapeRefusal> {
    let job = log.job();
    if now.tasks > now.partitions {
        return Err(ShapeRefusal::TooManyTasks {
            topic: topic.to_string(),
            tasks: now.tasks,
            partitions: now.partitions,
        });
    }
    let path = log.path_of(SHAPE);
    let (unreadable, failed) = refusals(&path);
    let bytes = serde_json::to_vec(now).expect("the shape serialises");
    // A job that checkpointed as one process before: refuse before recording anything. The log
    // is read before the record: a fleet records its shape before its committer's first claim,
    // so entries without a record are a single process's.
    let ids = log
        .ids_after(None)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let entries = !ids.is_empty();
    if entries
        && log
            .store()
            .get(&path)
            .await
            .map_err(|e| failed(e.to_string()))?
            .is_none()
    {
        return Err(ShapeRefusal::WasSingle {
            job: job.to_string(),
        });
    }
    let created = match log
        .store()
        .create(&path, Bytes::from(bytes))
        .await
        .map_err(|e| failed(e.to_string()))?
    {
        Created::Created => now.clone(),
        Created::AlreadyExists(theirs) => serde_json::from_slice::<Shape>(&theirs)
            .map_err(|e| unreadable(format!("does not parse: {e}")))?,
    };
    let current = after_reshards(log, created).await?;
    interrupted(log, ids.last().copied(), &current).await?;
    judge(job, topic, &current.shape, now)?;
    Ok(current)
}

/// Refuses when the committer's newest record is a reshard the shape records do not hold yet
/// (the command stopped between the two writes), or when the log ends before the recorded
/// reshard (an older copy of the store restored).
async fn interrupted(
    log: &CheckpointLog,
    head: Option<crate::ids::CheckpointId>,
    current: &Current,
) -> Result<(), ShapeRefusal> {
    if let Some(r) = &current.reshard
        && head.map_or(0, |h| h.0) < r.sequence
    {
        return Err(ShapeRefusal::LogBeforeReshard {
            job: log.job().to_string(),
            head: head.map_or(0, |h| h.0),
            tasks: r.shape.tasks,
            sequence: r.sequence,
        });
    }
    let Some(head) = head else {
        return Ok(());
    };
    let failed = |e: crate::checkpoint::log::LogError| ShapeRefusal::StoreFailed {
        path: log.path_of("log"),
        message: e.to_string(),
    };
    if let Some(e) = log.entry(head).await.map_err(failed)?
        && let crate::checkpoint::manifest::EntryKind::Reshard { to_tasks, .. } = e.kind
        && current.sequence() != head.0
    {
        return Err(ShapeRefusal::ReshardInterrupted {
            job: log.job().to_string(),
            tasks: to_tasks,
            sequence: head.0,
        });
    }
    Ok(())
}

/// Judges, before a task's claim or a committer's round, that the job was not resharded
/// since `started` was read.
pub async fn still(log: &CheckpointLog, started: &Current) -> Result<(), ShapeRefusal> {
    match newest_reshard(log).await? {
        Some(r) if Some(&r) != started.reshard.as_ref() => Err(ShapeRefusal::Resharded {
            job: log.job().to_string(),
            tasks: r.shape.tasks,
            sequence: r.sequence,
        }),
        _ => Ok(()),
    }
}

/// For an operator command on a fleet: the checkpoint store, its prefix and the topic's
/// partitions, with the job's recorded shape judged first (a changed K or partition count is
/// refused, nothing written).
pub async fn for_command(
    cfg: &crate::config::Config,
) -> anyhow::Result<(
    std::sync::Arc<dyn crate::checkpoint::store::CheckpointStore>,
    String,
    Vec<PartitionId>,
    Current,
)> {
    let (store, prefix) = crate::checkpoint::store::open(cfg)?;
    let source_cfg = cfg.source.clone();
    let all =
        tokio::task::spawn_blocking(move || crate::source::topic_partitions(&source_cfg)).await??;
    let committer_log = CheckpointLog::new(store.clone(), &prefix, cfg.job_id.clone());
    let shape = Shape {
        tasks: cfg.fleet.tasks,
        partitions: all.len() as u32,
    };
    let current = ensure(&committer_log, &cfg.source.topic, &shape).await?;
    Ok((store, prefix, all, current))
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
