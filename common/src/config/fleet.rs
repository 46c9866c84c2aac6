//! `[fleet]`: one job run by several worker processes and one committer (issue 16).
//!
//! Off by default (`tasks = 0`): one process owns every partition and commits its own
//! checkpoints. With `tasks = K`, partition `p` belongs to task `p mod K`; each task has its own
//! checkpoint log, state and generation claims; workers get tasks from Kafka's group coordinator
//! and one fenced committer makes one append per table per commit sequence.

use serde::{Deserialize, Serialize};

/// The Kafka consumer group protocol the workers use to share tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupProtocol {
    /// KIP-848 (`group.protocol=consumer`, brokers 4.0+): the broker computes incremental
    /// assignments; no stop-the-world rebalance.
    Consumer,
    /// The classic protocol with the `cooperative-sticky` assignor (KIP-429).
    Classic,
}

/// `[fleet]` as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// Number of tasks K, fixed when the job is created (0: no fleet, one process does all);
    /// `recon-pipeline reshard` changes it offline.
    pub tasks: u32,
    /// The topic whose K partitions stand for the K tasks in the workers' consumer group
    /// (created with K partitions if missing); empty: `recon-tasks.<job_id>`.
    pub tasks_topic: String,
    /// The group protocol the workers use.
    pub group_protocol: GroupProtocol,
    /// How often the committer gathers the tasks' completed checkpoints into one commit; 0:
    /// `checkpoint.interval_ms`.
    pub commit_interval_ms: u64,
    /// A worker whose membership is lost longer than this (no poll answered) is out of the
    /// group and its tasks move (`session.timeout.ms` of the classic protocol).
    pub session_timeout_ms: u64,
}

impl Default for RawFleet {
    fn default() -> Self {
        RawFleet {
            tasks: 0,
            tasks_topic: String::new(),
            group_protocol: GroupProtocol::Consumer,
            commit_interval_ms: 0,
            session_timeout_ms: 10_000,
        }
    }
}

impl RawFleet {
    /// Whether the job runs as a fleet.
    pub fn enabled(&self) -> bool {
        self.tasks > 0
    }
}
