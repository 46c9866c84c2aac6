//! What a generation claim writes, decided without I/O.
//!
//! [`CheckpointLog::claim_as`](super::log::CheckpointLog::claim_as) reads the head (and, for a
//! rewind, the target checkpoint), asks [`plan`] for the manifest and log entry kind of the
//! claim, and writes them with the conditional create that fences other claimants. Every rule
//! of a claim lives here: which manifest a claim continues, how far a rewind replays into state
//! only, what a topic reset moves, and when a claim must refuse.

use std::collections::BTreeMap;

use super::log::Completed;
use super::manifest::{EntryKind, Manifest, PartitionCut};
use crate::ids::{CheckpointId, Generation, JobId, Offset, PartitionId};

/// Why a process claims a generation ([`CheckpointLog::claim_as`](super::log::CheckpointLog::claim_as)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimKind {
    /// Resume from the head (every start of the job).
    Resume,
    /// Restart from an older checkpoint's state and offsets (`recon-pipeline rewind`).
    Rewind {
        /// The checkpoint to restart from.
        to: CheckpointId,
        /// Why, as the operator said it.
        reason: String,
    },
    /// Accept a recreated or truncated topic (`recon-pipeline accept-topic-reset`): keep the
    /// head's state, move the listed partitions, start a new input epoch.
    TopicReset {
        /// The head the operator's decision was based on; the claim refuses if the log moved.
        judged: CheckpointId,
        /// Per partition: the offset to read from next (the new topic's earliest), or `None`
        /// to forget a partition the topic no longer has.
        restart: BTreeMap<PartitionId, Option<Offset>>,
        /// Why, as the operator said it.
        reason: String,
    },
}

/// A claim that must not be written: the operator acts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// A rewind's target is not a completed checkpoint in the log (pruned, or never written).
    RewindTargetMissing {
        /// The checkpoint asked for.
        to: CheckpointId,
    },
    /// The head moved after the operator judged a topic reset on another one.
    Moved {
        /// The head the decision was based on.
        judged: CheckpointId,
        /// The head now.
        head: Option<CheckpointId>,
    },
}

/// The manifest and entry kind a claim of checkpoint `id` by `generation` writes.
///
/// `head` is the log's head when the claim is attempted; `rewind_target` the manifest of the
/// checkpoint a [`ClaimKind::Rewind`] names, when it is in the log (ignored otherwise).
pub fn plan(
    kind: &ClaimKind,
    head: Option<&Completed>,
    rewind_target: Option<&Manifest>,
    (id, generation): (CheckpointId, Generation),
    job: &JobId,
) -> Result<(Manifest, EntryKind), ClaimRefusal> {
    let head_id = head.map(|h| h.entry.checkpoint_id);
    let (base, entry_kind) = match kind {
        ClaimKind::Rewind { to, reason } => {
            let target = rewind_target.ok_or(ClaimRefusal::RewindTargetMissing { to: *to })?;
            let entry = EntryKind::Rewind {
                to: *to,
                reason: reason.clone(),
            };
            (Some(target), entry)
        }
        ClaimKind::TopicReset { judged, reason, .. } => {
            if head_id != Some(*judged) {
                return Err(ClaimRefusal::Moved {
                    judged: *judged,
                    head: head_id,
                });
            }
            let entry = EntryKind::TopicReset {
                reason: reason.clone(),
            };
            (head.map(|h| &h.manifest), entry)
        }
        ClaimKind::Resume => {
            let entry = EntryKind::GenerationStart { resumes: head_id };
            (head.map(|h| &h.manifest), entry)
        }
    };
    let Some(base) = base else {
        return Ok((Manifest::empty(job.clone(), id, generation), entry_kind));
    };
    let mut m = base.continuation(id, generation);
    match (kind, head) {
        (ClaimKind::Rewind { .. }, Some(h)) => m.replay_until = replay_bound(&h.manifest),
        (ClaimKind::TopicReset { restart, .. }, _) => apply_topic_reset(&mut m, restart),
        _ => {}
    }
    Ok((m, entry_kind))
}

/// How far a rewind from `head` replays into state only, per partition: everything up to the
/// head's cut is (or is about to be) in the tables, and so is what an earlier rewind bounded.
fn replay_bound(head: &Manifest) -> BTreeMap<PartitionId, Offset> {
    let mut until = head.replay_until.clone();
    for (p, o) in head.resume_offsets() {
        let e = until.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
    until
}

/// Applies a topic reset to the continuation of the head: a new input epoch; listed partitions
/// restart with no identity and no rewind replay bound (their old offsets mean nothing now).
fn apply_topic_reset(m: &mut Manifest, restart: &BTreeMap<PartitionId, Option<Offset>>) {
    m.input_epoch += 1;
    // The old topic's id: the next checkpoint records the new one.
    m.topic_id = None;
    for (p, at) in restart {
        m.replay_until.remove(p);
        match at {
            Some(o) => {
                let cut = PartitionCut {
                    start: *o,
                    end: *o,
                    records: 0,
                    last: None,
                };
                m.partitions.insert(*p, cut);
            }
            None => {
                m.partitions.remove(p);
            }
        }
    }
}

#[cfg(test)]
#[path = "claim_tests.rs"]
mod tests;
