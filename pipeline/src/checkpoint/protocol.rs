//! The exactly-once protocol's decisions, as pure functions over plain data.
//!
//! Nothing here does I/O: the caller reads the checkpoint log and the tables' snapshot
//! summaries, asks these functions what to do, and does it. That is what lets the seeded
//! simulation in `checkpoint::simulation` drive the protocol through every crash interleaving.
//!
//! Caller sequence for one process:
//! 0. Before writing anything, [`preflight`] (read-only: tables first, then the log head); only
//!    on [`PreflightVerdict::Proceed`] go on, and run it again right after step 1.
//! 1. [`claim`] a generation from the log head; write a `GenerationStart` entry at the claimed
//!    id with create-if-absent; on `AlreadyExists`, re-read the head and claim again.
//! 2. Per checkpoint: before creating log entry `n`, list entries after `n - 1`: any entry there
//!    means a newer generation took over ([`judge_completion`] says so); then create it and let
//!    [`judge_completion`] read the outcome.
//! 3. Per table and commit: [`table_marks`] over the table's ancestry (newest first) ->
//!    [`plan_commit`] -> build the append of files of checkpoints in `(after, through]` -> on
//!    *every* attempt, against the exact base the attempt lands on, [`ownership`] and
//!    [`check_attempt`] -> after
//!    the catalog answers (or fails, or times out), reload and ask [`table_marks`] again: the
//!    commit happened iff `committed >= through`.

use std::collections::HashMap;

pub mod attempt;
pub mod preflight;

pub use preflight::{
    AncestryEnd, MarksVerdict, Ownership, PROP_CHECKPOINT_SHA256, PROP_OWNER, PreflightVerdict,
    Refusal, Stage, TableFindings, judge_marks, ownership, preflight,
};

use crate::checkpoint::manifest::LogEntry;
use crate::ids::{CheckpointId, Generation, JobId};

pub use recon_common::stamps::{
    PROP_CHECKPOINT_FIRST, PROP_CHECKPOINT_ID, PROP_GENERATION, PROP_INPUT_EPOCH, PROP_JOB_ID,
    PROP_OFFSETS, stamp_properties,
};

/// The job's marker in one snapshot summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Generation that committed.
    pub generation: Generation,
    /// Lowest checkpoint included.
    pub first: CheckpointId,
    /// Highest checkpoint included.
    pub through: CheckpointId,
}

/// Reads this job's stamp from a snapshot summary; `None` when the snapshot is not this job's.
/// A summary that names this job but cannot be parsed is an error: guessing could commit twice.
pub fn parse_stamp(job: &JobId, props: &HashMap<String, String>) -> Result<Option<Stamp>, String> {
    if props.get(PROP_JOB_ID).map(String::as_str) != Some(job.as_str()) {
        return Ok(None);
    }
    let num = |key: &str| -> Result<u64, String> {
        props
            .get(key)
            .ok_or_else(|| format!("snapshot of job {job} lacks {key}"))?
            .parse::<u64>()
            .map_err(|e| format!("snapshot of job {job} has a bad {key}: {e}"))
    };
    Ok(Some(Stamp {
        generation: Generation(num(PROP_GENERATION)?),
        first: CheckpointId(num(PROP_CHECKPOINT_FIRST)?),
        through: CheckpointId(num(PROP_CHECKPOINT_ID)?),
    }))
}

/// What a table's history says about this job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableMarks {
    /// Highest checkpoint of this job committed to the table.
    pub committed: Option<CheckpointId>,
    /// Generation of the newest commit of this job.
    pub generation: Option<Generation>,
}

/// Reads the job's marks from a table's ancestry, newest snapshot first.
///
/// The newest stamp of the job is enough: [`check_attempt`] only lets a commit land on a base
/// whose newest stamp is the plan's starting point and of a generation not above the
/// committer's, so along the ancestry both checkpoint ids and generations only grow.
pub fn table_marks<'a>(
    job: &JobId,
    ancestry_newest_first: impl IntoIterator<Item = &'a HashMap<String, String>>,
) -> Result<TableMarks, String> {
    for props in ancestry_newest_first {
        if let Some(stamp) = parse_stamp(job, props)? {
            return Ok(TableMarks {
                committed: Some(stamp.through),
                generation: Some(stamp.generation),
            });
        }
    }
    Ok(TableMarks::default())
}

/// Table property that repeats the job's newest stamp, set in the same transaction as each
/// append. Snapshot expiration can remove the stamped snapshot from the ancestry (a compaction
/// committed after it, then `expire_snapshots`); table properties survive it
/// (apache/iceberg#5846).
pub fn marker_property(job: &JobId) -> String {
    format!("recon.marker.{job}")
}

/// The marker property's value: `<generation>:<through>`.
pub fn marker_value(generation: Generation, through: CheckpointId) -> String {
    format!("{generation}:{through}")
}

/// Parses a marker property value.
pub fn parse_marker(v: &str) -> Result<TableMarks, String> {
    let (g, c) = v
        .split_once(':')
        .ok_or_else(|| format!("marker {v:?} is not <generation>:<checkpoint>"))?;
    let num = |x: &str| x.parse::<u64>().map_err(|e| format!("marker {v:?}: {e}"));
    Ok(TableMarks {
        committed: Some(CheckpointId(num(c)?)),
        generation: Some(Generation(num(g)?)),
    })
}

/// The newer of the ancestry's marks and the marker property's (both are written by the same
/// commits, so they agree unless expiration removed the stamped snapshot). Recovery and the
/// commit guard use [`judge_marks`] instead, which also tells a rolled-back table apart.
pub fn merge_marks(ancestry: TableMarks, property: Option<TableMarks>) -> TableMarks {
    match property {
        Some(p) if p.committed > ancestry.committed => p,
        _ => ancestry,
    }
}

/// What to commit to one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitPlan {
    /// The table already holds everything up to the log head.
    UpToDate,
    /// Append the files of checkpoints `(after, through]`, stamped `through`.
    Commit {
        /// Highest checkpoint already committed (exclusive start).
        after: Option<CheckpointId>,
        /// Highest checkpoint to commit.
        through: CheckpointId,
    },
    /// A newer generation has committed: this process is a zombie and must stop.
    Fenced {
        /// This process's generation.
        ours: Generation,
        /// The generation found in the table.
        theirs: Generation,
    },
    /// The table holds a checkpoint beyond the log's head: the log was lost or replaced.
    /// Continuing would commit twice; an operator must look.
    TableAhead {
        /// Committed in the table.
        committed: CheckpointId,
        /// Head of the log.
        head: CheckpointId,
    },
}

/// Decides what one table needs, given the log head this process completed.
pub fn plan_commit(ours: Generation, head: CheckpointId, marks: &TableMarks) -> CommitPlan {
    if let Some(theirs) = marks.generation
        && theirs > ours
    {
        return CommitPlan::Fenced { ours, theirs };
    }
    match marks.committed {
        Some(c) if c > head => CommitPlan::TableAhead { committed: c, head },
        Some(c) if c == head => CommitPlan::UpToDate,
        after => CommitPlan::Commit {
            after,
            through: head,
        },
    }
}

/// What an exactly-once output (the alerts topic, the current-balance table) needs at a start,
/// from the checkpoint its own progress record holds and the log head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputPlan {
    /// The output holds a checkpoint the log does not reach: the log was lost or replaced, and
    /// emitting now could emit twice. Stop for an operator.
    Ahead {
        /// What the output holds.
        held: CheckpointId,
    },
    /// It holds the head: nothing to emit.
    UpToDate,
    /// It lacks the checkpoints after `held` through the head: emit them, with the progress
    /// record, in one transaction.
    Behind {
        /// What the output holds (`None`: nothing yet).
        held: Option<CheckpointId>,
    },
}

/// Decides what an output needs, as [`plan_commit`] does for a table.
pub fn plan_output(held: Option<CheckpointId>, head: CheckpointId) -> OutputPlan {
    match held {
        Some(h) if h > head => OutputPlan::Ahead { held: h },
        Some(h) if h == head => OutputPlan::UpToDate,
        held => OutputPlan::Behind { held },
    }
}

/// The verdict on one commit attempt against the exact base it would land on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptVerdict {
    /// The base is what the plan assumed: append.
    Proceed,
    /// The base already holds `through` (a lost reply, or another process of this job did it).
    AlreadyCommitted,
    /// The base moved in a way the plan did not assume: re-plan from `committed`.
    Stale {
        /// What the base holds.
        committed: Option<CheckpointId>,
    },
    /// A newer generation committed: stop.
    Fenced {
        /// The generation found.
        theirs: Generation,
    },
}

/// Checks a planned commit `(after, through]` against the marks of the base it would land on.
pub fn check_attempt(
    ours: Generation,
    after: Option<CheckpointId>,
    through: CheckpointId,
    base: &TableMarks,
) -> AttemptVerdict {
    assert!(
        after < Some(through),
        "commit plan ({after:?}, {through}] is empty"
    );
    if let Some(theirs) = base.generation
        && theirs > ours
    {
        return AttemptVerdict::Fenced { theirs };
    }
    if base.committed >= Some(through) {
        return AttemptVerdict::AlreadyCommitted;
    }
    if base.committed != after {
        return AttemptVerdict::Stale {
            committed: base.committed,
        };
    }
    AttemptVerdict::Proceed
}

/// The id and generation a starting process claims after the log head.
pub fn claim(head: Option<&LogEntry>) -> (CheckpointId, Generation) {
    match head {
        Some(e) => (e.checkpoint_id.next(), e.generation.next()),
        None => (CheckpointId(1), Generation(1)),
    }
}

/// Outcome of trying to complete (create) a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// This process completed the checkpoint.
    Completed,
    /// The entry exists and is this process's own (a retry after an ambiguous write).
    AlreadyOurs,
    /// Another process completed an entry at or after this id: this process is fenced.
    Fenced {
        /// Generation of the entry found.
        by: Generation,
    },
}

/// Judges a completion attempt. `later` are entries found after our previous one (checked
/// before creating); `existing` is what a create-if-absent found at our id, if anything.
pub fn judge_completion(
    ours: &LogEntry,
    later: &[LogEntry],
    existing: Option<&LogEntry>,
) -> Completion {
    if let Some(e) = existing {
        if e == ours {
            return Completion::AlreadyOurs;
        }
        return Completion::Fenced { by: e.generation };
    }
    if let Some(e) = later.iter().find(|e| e.generation != ours.generation) {
        return Completion::Fenced { by: e.generation };
    }
    Completion::Completed
}

/// Which checkpoints may be deleted. Keeps: the head, every checkpoint whose state file the
/// head's chain reads, every checkpoint not yet committed to *all* tables, and the newest
/// `keep_last` for operators and rewinds.
pub fn prunable(
    present: &[CheckpointId],
    head: CheckpointId,
    chain: &[CheckpointId],
    committed_everywhere: Option<CheckpointId>,
    keep_last: usize,
) -> Vec<CheckpointId> {
    let Some(committed) = committed_everywhere else {
        return Vec::new();
    };
    let mut sorted: Vec<CheckpointId> = present.to_vec();
    sorted.sort();
    sorted.dedup();
    let keep_from = sorted.len().saturating_sub(keep_last);
    sorted[..keep_from]
        .iter()
        .copied()
        .filter(|id| *id < head && *id <= committed && !chain.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output ahead of the log stops; at the head it waits; behind it emits the rest.
    #[test]
    fn an_output_is_planned_like_a_table() {
        let head = CheckpointId(7);
        let held = CheckpointId(8);
        assert_eq!(plan_output(Some(held), head), OutputPlan::Ahead { held });
        assert_eq!(plan_output(Some(head), head), OutputPlan::UpToDate);
        let held = Some(CheckpointId(3));
        assert_eq!(plan_output(held, head), OutputPlan::Behind { held });
        let held = None;
        assert_eq!(plan_output(held, head), OutputPlan::Behind { held });
    }

    fn job() -> JobId {
        JobId::new("job").unwrap()
    }

    fn stamp(generation: u64, first: u64, through: u64) -> HashMap<String, String> {
        stamp_properties(
            &job(),
            Generation(generation),
            CheckpointId(first),
            CheckpointId(through),
            "{}".into(),
        )
    }

    #[test]
    fn marks_take_the_newest_stamp_of_this_job_only() {
        let other = HashMap::from([(PROP_JOB_ID.to_string(), "other".to_string())]);
        let spark = HashMap::new();
        let history = [spark.clone(), other, stamp(2, 5, 7), stamp(1, 1, 4), spark];
        let marks = table_marks(&job(), &history).unwrap();
        assert_eq!(marks.committed, Some(CheckpointId(7)));
        assert_eq!(marks.generation, Some(Generation(2)));
        assert_eq!(table_marks(&job(), &[]).unwrap(), TableMarks::default());
    }

    #[test]
    fn a_malformed_stamp_of_this_job_is_an_error() {
        let mut bad = stamp(1, 1, 1);
        bad.insert(PROP_CHECKPOINT_ID.into(), "seven".into());
        assert!(table_marks(&job(), &[bad]).is_err());
    }

    #[test]
    fn plan_covers_exactly_what_the_table_lacks() {
        let g = Generation(3);
        let marks = |c: Option<u64>, g: u64| TableMarks {
            committed: c.map(CheckpointId),
            generation: c.map(|_| Generation(g)),
        };
        assert_eq!(
            plan_commit(g, CheckpointId(9), &marks(None, 0)),
            CommitPlan::Commit {
                after: None,
                through: CheckpointId(9)
            }
        );
        assert_eq!(
            plan_commit(g, CheckpointId(9), &marks(Some(6), 2)),
            CommitPlan::Commit {
                after: Some(CheckpointId(6)),
                through: CheckpointId(9)
            }
        );
        assert_eq!(
            plan_commit(g, CheckpointId(9), &marks(Some(9), 3)),
            CommitPlan::UpToDate
        );
        assert_eq!(
            plan_commit(g, CheckpointId(9), &marks(Some(10), 3)),
            CommitPlan::TableAhead {
                committed: CheckpointId(10),
                head: CheckpointId(9)
            }
        );
        assert_eq!(
            plan_commit(g, CheckpointId(9), &marks(Some(8), 4)),
            CommitPlan::Fenced {
                ours: g,
                theirs: Generation(4)
            }
        );
    }

    #[test]
    fn attempts_are_checked_against_their_own_base() {
        let g = Generation(2);
        let base = |c: Option<u64>, g: u64| TableMarks {
            committed: c.map(CheckpointId),
            generation: Some(Generation(g)),
        };
        let (after, through) = (Some(CheckpointId(4)), CheckpointId(6));
        assert_eq!(
            check_attempt(g, after, through, &base(Some(4), 2)),
            AttemptVerdict::Proceed
        );
        assert_eq!(
            check_attempt(g, after, through, &base(Some(6), 2)),
            AttemptVerdict::AlreadyCommitted
        );
        assert_eq!(
            check_attempt(g, after, through, &base(Some(5), 1)),
            AttemptVerdict::Stale {
                committed: Some(CheckpointId(5))
            }
        );
        assert_eq!(
            check_attempt(g, after, through, &base(Some(4), 3)),
            AttemptVerdict::Fenced {
                theirs: Generation(3)
            }
        );
    }

    #[test]
    fn the_marker_property_survives_expired_stamps() {
        let p = parse_marker(&marker_value(Generation(3), CheckpointId(41))).unwrap();
        assert_eq!(p.committed, Some(CheckpointId(41)));
        assert_eq!(p.generation, Some(Generation(3)));
        // Stamp expired: ancestry shows nothing, the property still knows.
        assert_eq!(merge_marks(TableMarks::default(), Some(p)), p);
        // Both present and equal, or ancestry newer: ancestry stands.
        let a = TableMarks {
            committed: Some(CheckpointId(41)),
            generation: Some(Generation(3)),
        };
        assert_eq!(merge_marks(a, Some(p)), a);
        assert_eq!(merge_marks(a, None), a);
        assert!(parse_marker("41").is_err());
        assert!(parse_marker("x:1").is_err());
    }

    #[test]
    fn pruning_keeps_chain_uncommitted_and_recent() {
        let ids: Vec<_> = (1..=10).map(CheckpointId).collect();
        let chain = [CheckpointId(2), CheckpointId(5)];
        let out = prunable(&ids, CheckpointId(10), &chain, Some(CheckpointId(8)), 2);
        assert_eq!(
            out,
            [1, 3, 4, 6, 7, 8].map(CheckpointId).to_vec(),
            "9 and 10 are the newest two, 2 and 5 are in the chain"
        );
        assert!(prunable(&ids, CheckpointId(10), &chain, None, 0).is_empty());
    }
}
