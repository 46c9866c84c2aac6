//! The fleet: one job run by several worker processes and one committer (`[fleet] tasks = K`).
//!
//! - [`layout`]: partition `p` belongs to task `p mod K`; the job's recorded shape (K and the
//!   topic's partition count) refuses a change at every start.
//! - [`membership`]: which tasks this worker owns, from Kafka's group coordinator (a consumer
//!   subscribed to a topic of K partitions, one per task); callbacks only post a change.
//! - [`worker`]: runs the streaming job once per owned task (its own checkpoint log
//!   `<job>.t<task>`, state, generation claims), committing nothing to Iceberg.
//! - [`gather`]: what the committer's next commit record holds (pure).
//! - [`committer`]: one fenced process makes one guarded append per table per commit sequence
//!   for every task's completed checkpoints; [`progress`]: what it committed, for the workers'
//!   pruning and their start checks.
//! - [`topic_reset`]: `accept-topic-reset` for a fleet (every task log to the next input epoch);
//!   [`rewind`]: `rewind` for a fleet (every task to its checkpoint in one commit sequence).
//!
//! Group membership is not a fence: a task's generation claim on the object store is, and the
//! committer's claim on its own log is.

pub mod committer;
pub mod gather;
pub mod layout;
pub mod membership;
pub mod progress;
pub mod reshard;
pub mod rewind;
pub mod topic_reset;
pub mod worker;

use crate::checkpoint::log::CheckpointLog;
use crate::ids::{CheckpointId, JobId};
use crate::job::StopClass;

/// What a task's run needs to know that it is one task of a fleet.
#[derive(Clone, Debug)]
pub struct FleetTask {
    /// The fleet's job id (owner of the tables, the committer's log).
    pub job: JobId,
    /// This task.
    pub task: u32,
    /// K.
    pub tasks: u32,
    /// The job's shape when this worker started (a reshard since stops the task's start).
    pub shape: layout::Current,
    /// When the group coordinator gave this worker the task (for the handover time).
    pub assigned_at: std::time::Instant,
}

impl FleetTask {
    /// The committer's log (the fleet job's), in the store of `task_log`.
    pub fn log(&self, task_log: &CheckpointLog) -> CheckpointLog {
        task_log.sibling(self.job.clone())
    }
}

/// Why a fleet part stopped; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The job's recorded shape differs from the configuration or the topic.
    #[error("{0}")]
    Shape(#[from] layout::ShapeRefusal),
    /// A task's log is behind what the committer recorded for it.
    #[error(
        "task {task}: its checkpoint log ends at {head} but the committer recorded checkpoint {recorded} of it: the task's log was restored from an older copy or deleted. Restore the newest copy of the checkpoint store; nothing was written"
    )]
    TaskBehindCommitter {
        /// Task.
        task: u32,
        /// The task log's head (0: empty).
        head: CheckpointId,
        /// What the committer's log holds for it.
        recorded: CheckpointId,
    },
    /// The tasks' checkpoints cannot be gathered into one commit.
    #[error("{0}")]
    Gather(#[from] gather::GatherError),
    /// Kafka's group coordinator or the tasks topic.
    #[error("fleet membership: {0}; check the brokers and fleet.tasks_topic")]
    Membership(String),
}

impl FleetError {
    /// The stop class (exit code) of this error.
    pub fn class(&self) -> StopClass {
        match self {
            FleetError::Shape(layout::ShapeRefusal::StoreFailed { .. }) => StopClass::Transient,
            FleetError::Shape(_)
            | FleetError::TaskBehindCommitter { .. }
            | FleetError::Gather(_) => StopClass::OperatorNeeded,
            FleetError::Membership(_) => StopClass::Transient,
        }
    }
}
