//! Newtypes for the identifiers the exactly-once protocol reasons about.
//!
//! One word, one meaning: a *checkpoint* is a durable cut of state, offsets and pending files;
//! a *generation* is one process's right to complete checkpoints and commit.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Position of a checkpoint in the job's checkpoint log. Strictly increasing, never reused.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The id that follows this one in the log.
    pub fn next(self) -> CheckpointId {
        CheckpointId(self.0.checked_add(1).expect("checkpoint id overflow"))
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One run's right to complete checkpoints and commit; claimed at start, higher wins.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation a newly started process claims after this one.
    pub fn next(self) -> Generation {
        Generation(self.0.checked_add(1).expect("generation overflow"))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Kafka partition number of the source topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionId(pub i32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Kafka offset. Offsets have gaps (transaction markers): count records, never subtract offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub i64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The longest job id.
pub const JOB_ID_LEN_MAX: usize = 64;
/// Length of the suffix a fleet task adds to its job's id (`.t0000`).
pub const TASK_SUFFIX_LEN: usize = 6;

/// Identity of a streaming job: names its checkpoint log and stamps its commits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Validates a job id: 1..=64 characters of `[A-Za-z0-9_.-]`, since it becomes part of
    /// object paths and file names.
    pub fn new(id: &str) -> Result<JobId, String> {
        let ok = !id.is_empty()
            && id.len() <= JOB_ID_LEN_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if ok {
            Ok(JobId(id.to_string()))
        } else {
            Err(format!(
                "job id {id:?} must be 1 to 64 characters of letters, digits, '-', '_' or '.'"
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of task `task` of this (fleet) job: `<job>.t<task:04>`, which names the task's
    /// checkpoint log and its data files. `None` when the result would not be a job id
    /// (the configuration refuses such a job id first).
    pub fn task(&self, task: u32) -> Option<JobId> {
        (task < 10_000)
            .then(|| JobId::new(&format!("{}.t{task:04}", self.0)).ok())
            .flatten()
    }

    /// The id of task `task` of this fleet job after a reshard recorded by commit sequence
    /// `sequence` to `tasks` tasks: `<job>.r<sequence>-<tasks>.t<task:04>` (a reshard's task
    /// logs are new logs, never the old tasks'), or [`JobId::task`] before any reshard.
    /// `None` when the result would be longer than a job id may be.
    pub fn task_after_reshard(&self, reshard: Option<(u64, u32)>, task: u32) -> Option<JobId> {
        let Some((sequence, tasks)) = reshard else {
            return self.task(task);
        };
        (task < 10_000)
            .then(|| JobId::new(&format!("{}.r{sequence}-{tasks}.t{task:04}", self.0)).ok())
            .flatten()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
