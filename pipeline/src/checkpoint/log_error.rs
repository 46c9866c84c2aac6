//! The errors of the checkpoint log ([`super::log::CheckpointLog`]), each saying what is wrong
//! and what to do.

use crate::checkpoint::store::StoreError;
use crate::ids::{CheckpointId, Generation, JobId};

use super::log::CLAIM_ATTEMPTS_MAX;

/// Errors of the checkpoint log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record is unreadable or inconsistent: never guess, stop.
    #[error("checkpoint log of job {job}: {message}")]
    Corrupt {
        /// Job.
        job: JobId,
        /// What is wrong, with the path.
        message: String,
    },
    /// A newer generation took over: this process must stop.
    #[error(
        "job {job}: generation {by} has taken over checkpoint {at}; this process (generation {ours}) stops"
    )]
    Fenced {
        /// Job.
        job: JobId,
        /// Our generation.
        ours: Generation,
        /// The newer one.
        by: Generation,
        /// The id we tried to complete.
        at: CheckpointId,
    },
    /// Another process wrote this checkpoint's manifest first, as the same generation: two
    /// claims computed the same next (id, generation) from one head and raced. The manifest is
    /// never overwritten (the winner's entry records its checksum); the loser stops, or a
    /// claim tries again on the new head.
    #[error(
        "job {job}: another process wrote checkpoint {at} of generation {generation} first (two starts or claims raced for one generation); this process stops without overwriting it"
    )]
    ManifestTaken {
        /// Job.
        job: JobId,
        /// The checkpoint.
        at: CheckpointId,
        /// The generation both computed.
        generation: Generation,
    },
    /// The log moved while an operator's decision was being made on the old head.
    #[error(
        "job {job}: the checkpoint log moved (head {head:?}, the decision was made on checkpoint {judged}); is an instance still running? Stop it and run the command again"
    )]
    Moved {
        /// Job.
        job: JobId,
        /// The head the decision was based on.
        judged: CheckpointId,
        /// The head now.
        head: Option<CheckpointId>,
    },
    /// A state file is not the one its checkpoint recorded (edited, truncated, replaced):
    /// restoring it could accept a re-sent event twice. An operator must act.
    #[error(
        "checkpoint log of job {job}: state file {path} has SHA-256 {found}, but checkpoint {checkpoint} recorded {expected}: \
         the file changed after it was written (edited, truncated or copied from elsewhere), and restoring it could \
         accept a re-sent event twice, so nothing is restored. Either put the original file back (from a backup of the \
         checkpoint store), or restart from an older checkpoint whose state does not use this file: \
         `recon-pipeline checkpoints list` marks each checkpoint's state `ok` or `BAD`; pick an `ok` one older than \
         {written_by}, then `recon-pipeline rewind --to-checkpoint N --reason \"...\" --yes`"
    )]
    StateChecksum {
        /// Job.
        job: JobId,
        /// The checkpoint whose manifest holds the expected checksum.
        checkpoint: CheckpointId,
        /// Path of the state file, relative to the job root.
        path: String,
        /// The checkpoint that wrote the file (from its path), or the path when unparsable.
        written_by: String,
        /// SHA-256 recorded in the manifest.
        expected: String,
        /// SHA-256 of the bytes read.
        found: String,
    },
    /// Too many processes raced for a generation.
    #[error(
        "job {job}: could not claim a generation after {CLAIM_ATTEMPTS_MAX} attempts; is another instance restarting in a loop?"
    )]
    ClaimRace {
        /// Job.
        job: JobId,
    },
}
