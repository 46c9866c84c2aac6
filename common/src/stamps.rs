//! The snapshot-summary properties that stamp every commit of the job: an on-disk contract
//! between the job (which writes them), its recovery (which reads them back) and batch-verify
//! (which proves offsets contiguous from them). One spelling, here.

use std::collections::HashMap;

use crate::ids::{CheckpointId, Generation, JobId};

/// Snapshot-summary key: the job that made the commit.
pub const PROP_JOB_ID: &str = "recon.job-id";
/// Snapshot-summary key: the committing process's generation.
pub const PROP_GENERATION: &str = "recon.generation";
/// Snapshot-summary key: the highest checkpoint whose files the commit holds.
pub const PROP_CHECKPOINT_ID: &str = "recon.checkpoint-id";
/// Snapshot-summary key: the lowest checkpoint whose files the commit holds.
pub const PROP_CHECKPOINT_FIRST: &str = "recon.checkpoint-first";
/// Snapshot-summary key: JSON map partition -> `[start, end)` offsets covered by the commit.
pub const PROP_OFFSETS: &str = "recon.offsets";
/// Snapshot-summary key: the input epoch (topic resets accepted before the commit's
/// checkpoints); absent for 0. Offsets of different epochs belong to different topics.
pub const PROP_INPUT_EPOCH: &str = "recon.input-epoch";

/// The summary properties that stamp a commit of checkpoints `first..=through`.
pub fn stamp_properties(
    job: &JobId,
    generation: Generation,
    first: CheckpointId,
    through: CheckpointId,
    offsets_json: String,
) -> HashMap<String, String> {
    assert!(first <= through, "stamp range {first}..={through} is empty");
    HashMap::from([
        (PROP_JOB_ID.to_string(), job.to_string()),
        (PROP_GENERATION.to_string(), generation.to_string()),
        (PROP_CHECKPOINT_FIRST.to_string(), first.to_string()),
        (PROP_CHECKPOINT_ID.to_string(), through.to_string()),
        (PROP_OFFSETS.to_string(), offsets_json),
    ])
}
