//! What a run did ([`RunReport`]) and where its loop's time went ([`LoopTimes`]): the CLI
//! summary, the demo, the bench and the tests read them.

use std::time::Duration;

use crate::checkpoint::manifest::Counts;
use crate::ids::{CheckpointId, Generation};

/// What a run did, for the CLI summary, the demo and tests.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Generation this run claimed.
    pub generation: Generation,
    /// Checkpoint it resumed from (the claim entry).
    pub resumed_at: CheckpointId,
    /// Checkpoints completed by this run (the claim entry excluded).
    pub checkpoints: u64,
    /// Table commits that landed.
    pub commits: u64,
    /// Totals of this run.
    pub counts: Counts,
    /// Trips in state at the end.
    pub trips: usize,
    /// Last completed checkpoint.
    pub last_checkpoint: CheckpointId,
    /// Time from start to the end of recovery (claim, publish of pending, state restore).
    pub recovery: Duration,
    /// Duration of every checkpoint of this run, from its cut until it is durable (files
    /// closed, state and manifest written, log entry created).
    pub checkpoint_durations: Vec<Duration>,
    /// How long the input stood still for each checkpoint: the cut only, exactly-once (the
    /// rest completes beside the next interval); the whole checkpoint in other modes.
    pub checkpoint_pauses: Vec<Duration>,
    /// Duration of every publish (all tables) of this run.
    pub commit_durations: Vec<Duration>,
    /// Time from start to the first commit that carried new data.
    pub first_data_commit: Option<Duration>,
    /// Trips in state after recovery.
    pub trips_restored: usize,
    /// Records replayed into state only, after a rewind.
    pub replayed: u64,
    /// Trips that left memory for the cold tier.
    pub evicted: u64,
    /// State chains folded into one full file in the background.
    pub compactions: u64,
    /// Trips brought back from the cold tier (an event for them, or for an id they hold).
    pub brought_back: u64,
    /// Time from start until the newest batch arrived (`None`: none did).
    pub last_input: Option<Duration>,
    /// Time from start until the first batch arrived (`None`: none did).
    pub first_input: Option<Duration>,
    /// Time from the stop decision (shutdown, idle) until `run` returned: final checkpoint,
    /// commit, and the consumer's close.
    pub stop: Duration,
    /// Where the loop's wall time went (the bench reports it; the rest of the loop's time
    /// waited for input).
    pub loop_times: LoopTimes,
}

/// Where the job loop's wall time went: what it did and what it waited on.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopTimes {
    /// Decoding, applying and buffering batches, the writers' back-pressure excluded.
    pub process: Duration,
    /// Waiting for a writer's queue to take a full batch (back-pressure).
    pub sink_wait: Duration,
    /// Barrier cuts (and whole checkpoints in the modes that complete inside the barrier).
    pub barrier: Duration,
    /// Landing completed checkpoints and publishes.
    pub landing: Duration,
    /// The source thread waiting for the loop to take a batch (the loop was the slow side).
    pub source_blocked: Duration,
    /// The source thread taking and decoding records, beside the loop.
    pub source_busy: Duration,
    /// Batches the loop took from the source.
    pub batches: u64,
}
