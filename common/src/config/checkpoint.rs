//! `[checkpoint]` (the checkpoint store and cadence) and `[commit]` (when checkpoints are
//! published to Iceberg).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secrets::RedactedMap;

/// `[checkpoint]`: the checkpoint store and cadence.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    /// Store root: a directory path, `file:///abs/path` or `s3://bucket/prefix`.
    pub store: String,
    /// Options for an S3 store (`aws_endpoint`, `aws_allow_http`, `aws_region`...); credentials
    /// come from the standard AWS environment when not given here.
    pub store_options: BTreeMap<String, String>,
    /// Time between barriers.
    pub interval_ms: u64,
    /// Fold the state chain (a full file, then one delta per checkpoint) into one full file in
    /// the background once it holds this many deltas; a checkpoint itself writes only a delta.
    pub full_state_every: u32,
    /// Completed checkpoints kept beyond what recovery needs (for operators and rewinds).
    pub keep_last: usize,
}

impl std::fmt::Debug for RawCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCheckpoint")
            .field("store", &self.store)
            .field("store_options", &RedactedMap(&self.store_options))
            .field("interval_ms", &self.interval_ms)
            .field("full_state_every", &self.full_state_every)
            .field("keep_last", &self.keep_last)
            .finish()
    }
}

/// `[commit]`: when checkpoints are published to Iceberg.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommit {
    /// Commit after this many completed checkpoints...
    pub every_checkpoints: u32,
    /// ...or as soon as pending files reach this many bytes...
    pub pending_bytes_max: u64,
    /// ...or when the oldest uncommitted checkpoint is this old.
    pub interval_ms_max: u64,
    /// Attempts per table commit before the job stops (conflicts and unknown outcomes).
    pub attempts_max: u32,
    /// Time allowed for one catalog call before its outcome is treated as unknown.
    pub timeout_ms: u64,
}

impl Default for RawCheckpoint {
    fn default() -> Self {
        RawCheckpoint {
            store: "lakehouse/checkpoints".into(),
            store_options: BTreeMap::new(),
            interval_ms: 10_000,
            full_state_every: 50,
            keep_last: 10,
        }
    }
}

impl Default for RawCommit {
    fn default() -> Self {
        RawCommit {
            every_checkpoints: 1,
            pending_bytes_max: 512 * 1024 * 1024,
            interval_ms_max: 60_000,
            attempts_max: 10,
            timeout_ms: 30_000,
        }
    }
}
