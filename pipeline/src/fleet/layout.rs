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
        "fleet.tasks = {configured} but job {job} was created with {recorded} tasks: each task's state and log hold its partitions (p mod K), so K cannot change in place. Set fleet.tasks = {recorded}; a new K needs a reshard (not in this build: a new job id on new tables)"
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

/// A single-process start refuses a job created as a fleet.
pub async fn refuse_if_fleet(log: &CheckpointLog) -> Result<(), ShapeRefusal> {
    let path = log.path_of(SHAPE);
    let (unreadable, failed) = refusals(&path);
    let Some(bytes) = log
        .store()
        .get(&path)
        .await
        .map_err(|e| failed(e.to_string()))?
    else {
        return Ok(());
    };
    let shape: Shape =
        serde_json::from_slice(&bytes).map_err(|e| unreadable(format!("does not parse: {e}")))?;
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
pub async fn ensure(log: &CheckpointLog, topic: &str, now: &Shape) -> Result<(), ShapeRefusal> {
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
    let entries = !log
        .ids_after(None)
        .await
        .map_err(|e| failed(e.to_string()))?
        .is_empty();
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
    let recorded = match log
        .store()
        .create(&path, Bytes::from(bytes))
        .await
        .map_err(|e| failed(e.to_string()))?
    {
        Created::Created => return Ok(()),
        Created::AlreadyExists(theirs) => serde_json::from_slice::<Shape>(&theirs)
            .map_err(|e| unreadable(format!("does not parse: {e}")))?,
    };
    judge(job, topic, &recorded, now)
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
    ensure(&committer_log, &cfg.source.topic, &shape).await?;
    Ok((store, prefix, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_task() {
        let all: Vec<_> = (0..16).map(PartitionId).collect();
        let mut seen = Vec::new();
        for t in 0..8 {
            let mine = partitions_of(t, 8, &all);
            assert_eq!(mine.len(), 2, "task {t}");
            seen.extend(mine);
        }
        seen.sort();
        assert_eq!(seen, all);
        assert_eq!(task_of(PartitionId(13), 8), 5);
    }

    #[test]
    fn a_changed_shape_is_refused() {
        let job = JobId::new("j").unwrap();
        let rec = Shape {
            tasks: 8,
            partitions: 16,
        };
        assert!(judge(&job, "t", &rec, &rec.clone()).is_ok());
        let k = Shape {
            tasks: 4,
            ..rec.clone()
        };
        assert!(matches!(
            judge(&job, "t", &rec, &k),
            Err(ShapeRefusal::TasksChanged {
                recorded: 8,
                configured: 4,
                ..
            })
        ));
        let p = Shape {
            partitions: 32,
            ..rec.clone()
        };
        let e = judge(&job, "t", &rec, &p).unwrap_err();
        assert!(e.to_string().contains("32 partitions"), "{e}");
    }

    #[tokio::test]
    async fn the_first_start_records_and_later_ones_compare() {
        let store: std::sync::Arc<dyn crate::checkpoint::store::CheckpointStore> =
            std::sync::Arc::new(crate::checkpoint::store::ObjectCheckpointStore::new(
                std::sync::Arc::new(object_store::memory::InMemory::new()),
            ));
        let log = CheckpointLog::new(store, "p", JobId::new("j").unwrap());
        let s = Shape {
            tasks: 4,
            partitions: 8,
        };
        ensure(&log, "t", &s).await.unwrap();
        ensure(&log, "t", &s).await.unwrap();
        let other = Shape {
            tasks: 2,
            ..s.clone()
        };
        assert!(ensure(&log, "t", &other).await.is_err());
        let many = Shape {
            tasks: 9,
            partitions: 8,
        };
        assert!(matches!(
            ensure(&log, "t", &many).await,
            Err(ShapeRefusal::TooManyTasks { .. })
        ));
        // A single process refuses the fleet's job.
        assert!(matches!(
            refuse_if_fleet(&log).await,
            Err(ShapeRefusal::WasFleet { tasks: 4, .. })
        ));
    }

    #[tokio::test]
    async fn a_single_process_job_is_not_switched_to_a_fleet_in_place() {
        let store: std::sync::Arc<dyn crate::checkpoint::store::CheckpointStore> =
            std::sync::Arc::new(crate::checkpoint::store::ObjectCheckpointStore::new(
                std::sync::Arc::new(object_store::memory::InMemory::new()),
            ));
        let job = JobId::new("j").unwrap();
        let log = CheckpointLog::new(store, "p", job.clone());
        refuse_if_fleet(&log).await.unwrap();
        let m = crate::checkpoint::manifest::Manifest::empty(
            job,
            crate::ids::CheckpointId(1),
            crate::ids::Generation(1),
        );
        let e = log
            .write_manifest(&m, crate::checkpoint::manifest::EntryKind::Checkpoint)
            .await
            .unwrap();
        log.complete(&e).await.unwrap();
        let s = Shape {
            tasks: 2,
            partitions: 4,
        };
        let refused = ensure(&log, "t", &s).await.unwrap_err();
        assert!(
            matches!(refused, ShapeRefusal::WasSingle { .. }),
            "{refused}"
        );
        // Nothing was recorded: the single process still starts.
        refuse_if_fleet(&log).await.unwrap();
    }
}
