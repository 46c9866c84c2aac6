//! What the committer's next commit record holds: the pending files, offsets and counts of
//! every task checkpoint completed since the previous record. Pure.
//!
//! A record holds one input epoch (offsets of two epochs are of different topics: one stamp
//! cannot describe both). After `accept-topic-reset` every task log continues in the next
//! epoch; a record takes, of each task, only its checkpoints in the oldest epoch any task still
//! has pending, so every old-topic checkpoint is committed before the first new-topic one, and
//! the record that opens an epoch starts its offsets afresh from the tasks' cuts.

use std::collections::BTreeMap;

use crate::checkpoint::manifest::{Counts, Manifest, PartitionCut};
use crate::ids::{CheckpointId, Generation, PartitionId};

/// Why the tasks' checkpoints cannot go into one commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatherError {
    /// Two tasks read topics with different Kafka ids (the topic was recreated under them).
    #[error(
        "task {task} read topic id {theirs} but the commit already holds topic id {ours}: the topic was deleted and recreated under the fleet without a topic reset. Nothing was committed; stop the workers and run accept-topic-reset (docs/ARCHITECTURE.md, Fleet)"
    )]
    TopicsDiffer {
        /// Task.
        task: u32,
        /// The id the record holds.
        ours: String,
        /// The task's.
        theirs: String,
    },
    /// A task checkpoint of an input epoch older than what the committer already committed
    /// (a task log restored from before a topic reset, or a task that missed the reset).
    #[error(
        "task {task} checkpoint {checkpoint} is of input epoch {epoch}, but the commits are already in epoch {committed}: the task's log missed a topic reset (run accept-topic-reset again, or restore its log). Nothing was committed"
    )]
    InputEpoch {
        /// Task.
        task: u32,
        /// Its checkpoint.
        checkpoint: CheckpointId,
        /// Its epoch.
        epoch: u32,
        /// The epoch of the newest record.
        committed: u32,
    },
    /// A task's checkpoint read a partition that is not the task's.
    #[error(
        "task {task} checkpoint {checkpoint} read partition {partition}, which belongs to task {owner}: a task of another K wrote this log. Nothing was committed"
    )]
    ForeignPartition {
        /// Task.
        task: u32,
        /// Its checkpoint.
        checkpoint: CheckpointId,
        /// The partition.
        partition: PartitionId,
        /// Its task under K.
        owner: u32,
    },
}

/// The record of commit sequence `id`: `prev` continued with, per task, its new checkpoints in
/// log order (`None` when no task has one: no record, no snapshot).
pub fn next_record(
    prev: &Manifest,
    id: CheckpointId,
    generation: Generation,
    tasks: u32,
    new: &BTreeMap<u32, Vec<Manifest>>,
) -> Result<Option<Manifest>, GatherError> {
    if new.values().all(Vec::is_empty) {
        return Ok(None);
    }
    let mut m = prev.continuation(id, generation);
    // The oldest epoch pending anywhere; a task's later epochs wait for the next record.
    let epoch = new
        .values()
        .filter_map(|v| v.first())
        .map(|c| c.input_epoch)
        .min()
        .expect("some task has a checkpoint");
    if epoch < prev.input_epoch {
        let (task, c) = new
            .iter()
            .find_map(|(t, v)| {
                v.first()
                    .filter(|c| c.input_epoch == epoch)
                    .map(|c| (*t, c))
            })
            .expect("the minimum is some task's");
        return Err(GatherError::InputEpoch {
            task,
            checkpoint: c.checkpoint_id,
            epoch,
            committed: prev.input_epoch,
        });
    }
    if epoch > prev.input_epoch {
        // The first record of a new topic: the old topic's offsets and id mean nothing now.
        m.input_epoch = epoch;
        m.topic_id = None;
        m.partitions.clear();
    }
    let mut counts = Counts::default();
    for (task, manifests) in new {
        for c in manifests.iter().take_while(|c| c.input_epoch == epoch) {
            if let Some(theirs) = &c.topic_id {
                match &m.topic_id {
                    Some(ours) if ours != theirs => {
                        return Err(GatherError::TopicsDiffer {
                            task: *task,
                            ours: ours.to_string(),
                            theirs: theirs.to_string(),
                        });
                    }
                    Some(_) => {}
                    None => m.topic_id = Some(theirs.clone()),
                }
            }
            for (p, cut) in &c.partitions {
                let owner = super::layout::task_of(*p, tasks);
                if owner != *task {
                    return Err(GatherError::ForeignPartition {
                        task: *task,
                        checkpoint: c.checkpoint_id,
                        partition: *p,
                        owner,
                    });
                }
                extend(
                    m.partitions.entry(*p).or_insert(PartitionCut {
                        start: cut.start,
                        end: cut.start,
                        records: 0,
                        last: None,
                    }),
                    cut,
                );
            }
            for (table, files) in &c.pending {
                let e = m.pending.entry(table.clone()).or_default();
                if e.files.is_empty() {
                    e.spec_id = files.spec_id;
                    e.schema_id = files.schema_id;
                }
                e.files.extend(files.files.iter().cloned());
                e.rows += files.rows;
                e.bytes += files.bytes;
            }
            counts.records += c.counts.records;
            counts.events += c.counts.events;
            counts.duplicates += c.counts.duplicates;
            counts.rejected += c.counts.rejected;
            counts.balance_rows += c.counts.balance_rows;
            m.fleet_tasks.insert(*task, c.checkpoint_id);
        }
    }
    m.counts = counts;
    Ok(Some(m))
}

/// Extends the record's cut of a partition with a task checkpoint's cut of it.
fn extend(ours: &mut PartitionCut, theirs: &PartitionCut) {
    if theirs.end >= ours.end {
        ours.end = theirs.end;
        if theirs.last.is_some() {
            ours.last = theirs.last;
        }
    }
    ours.records += theirs.records;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::PendingFiles;
    use crate::ids::{JobId, Offset};

    fn task_ckpt(task: u32, id: u64, p: i32, start: i64, end: i64, file: &str) -> Manifest {
        let job = JobId::new("j").unwrap().task(task).unwrap();
        let mut m = Manifest::empty(job, CheckpointId(id), Generation(1));
        m.partitions.insert(
            PartitionId(p),
            PartitionCut {
                start: Offset(start),
                end: Offset(end),
                records: (end - start) as u64,
                last: None,
            },
        );
        m.pending.insert(
            "ledger_events".into(),
            PendingFiles {
                spec_id: 0,
                schema_id: 0,
                files: vec![file.into()],
                rows: 1,
                bytes: 10,
            },
        );
        m.counts.records = (end - start) as u64;
        m
    }

    #[test]
    fn nothing_new_makes_no_record() {
        let prev = Manifest::empty(JobId::new("j").unwrap(), CheckpointId(3), Generation(1));
        let new = BTreeMap::from([(0, vec![]), (1, vec![])]);
        assert_eq!(
            next_record(&prev, CheckpointId(4), Generation(1), 2, &new),
            Ok(None)
        );
    }

    #[test]
    fn tasks_merge_into_one_record_with_cumulative_progress() {
        let mut prev = Manifest::empty(JobId::new("j").unwrap(), CheckpointId(3), Generation(2));
        prev.fleet_tasks.insert(0, CheckpointId(5));
        prev.fleet_tasks.insert(1, CheckpointId(7));
        prev.partitions.insert(
            PartitionId(1),
            PartitionCut {
                start: Offset(0),
                end: Offset(40),
                records: 40,
                last: None,
            },
        );
        let new = BTreeMap::from([
            (
                0,
                vec![
                    task_ckpt(0, 6, 0, 0, 10, "a"),
                    task_ckpt(0, 7, 2, 0, 5, "b"),
                ],
            ),
            (1, vec![task_ckpt(1, 8, 1, 40, 50, "c")]),
        ]);
        let m = next_record(&prev, CheckpointId(4), Generation(2), 2, &new)
            .unwrap()
            .unwrap();
        assert_eq!(m.checkpoint_id, CheckpointId(4));
        assert_eq!(m.pending["ledger_events"].files, vec!["a", "b", "c"]);
        assert_eq!(m.pending["ledger_events"].bytes, 30);
        assert_eq!(m.counts.records, 25);
        assert_eq!(
            m.fleet_tasks,
            BTreeMap::from([(0, CheckpointId(7)), (1, CheckpointId(8))])
        );
        let p1 = m.partitions[&PartitionId(1)];
        assert_eq!((p1.start, p1.end, p1.records), (Offset(40), Offset(50), 10));
        let p0 = m.partitions[&PartitionId(0)];
        assert_eq!((p0.start, p0.end), (Offset(0), Offset(10)));
    }

    #[test]
    fn a_partition_of_another_task_or_epoch_is_refused() {
        let prev = Manifest::empty(JobId::new("j").unwrap(), CheckpointId(0), Generation(1));
        let wrong = BTreeMap::from([(1, vec![task_ckpt(1, 1, 2, 0, 1, "x")])]);
        assert!(matches!(
            next_record(&prev, CheckpointId(1), Generation(1), 2, &wrong),
            Err(GatherError::ForeignPartition { owner: 0, .. })
        ));
        // A task checkpoint older than the committed epoch.
        let mut reset_prev = prev.clone();
        reset_prev.input_epoch = 1;
        let new = BTreeMap::from([(0, vec![task_ckpt(0, 1, 0, 0, 1, "x")])]);
        assert!(matches!(
            next_record(&reset_prev, CheckpointId(1), Generation(1), 2, &new),
            Err(GatherError::InputEpoch {
                epoch: 0,
                committed: 1,
                ..
            })
        ));
    }

    /// After a topic reset: the old topic's checkpoints of every task go first, in a record of
    /// the old epoch; the next record opens the new epoch with the tasks' new cuts (lower
    /// offsets, another topic id), not extended from the old ones.
    #[test]
    fn a_topic_reset_commits_the_old_epoch_first_then_starts_the_new_afresh() {
        use crate::source::topic_id::TopicId;
        let epoch = |mut m: Manifest, e: u32, topic: &str| {
            m.input_epoch = e;
            m.topic_id = Some(TopicId(topic.into()));
            m
        };
        let mut prev = Manifest::empty(JobId::new("j").unwrap(), CheckpointId(3), Generation(2));
        prev.topic_id = Some(TopicId("old".into()));
        for (t, p) in [(0, 0), (1, 1)] {
            prev.fleet_tasks.insert(t, CheckpointId(5));
            prev.partitions.insert(
                PartitionId(p),
                PartitionCut {
                    start: Offset(0),
                    end: Offset(900),
                    records: 900,
                    last: None,
                },
            );
        }
        // Task 0 still has an old-topic checkpoint before its reset; task 1 is past its reset.
        let new = BTreeMap::from([
            (
                0,
                vec![
                    epoch(task_ckpt(0, 6, 0, 900, 950, "old-a"), 0, "old"),
                    epoch(task_ckpt(0, 7, 0, 0, 30, "new-a"), 1, "new"),
                ],
            ),
            (1, vec![epoch(task_ckpt(1, 6, 1, 0, 20, "new-b"), 1, "new")]),
        ]);
        let old = next_record(&prev, CheckpointId(4), Generation(2), 2, &new)
            .unwrap()
            .unwrap();
        assert_eq!(old.input_epoch, 0);
        assert_eq!(old.pending["ledger_events"].files, vec!["old-a"]);
        assert_eq!(
            old.fleet_tasks,
            BTreeMap::from([(0, CheckpointId(6)), (1, CheckpointId(5))]),
            "task 1's new-topic checkpoint waits"
        );
        assert_eq!(old.partitions[&PartitionId(0)].end, Offset(950));
        // The committer gathers again after the record: what it did not take.
        let rest = BTreeMap::from([(0, vec![new[&0][1].clone()]), (1, new[&1].clone())]);
        let fresh = next_record(&old, CheckpointId(5), Generation(2), 2, &rest)
            .unwrap()
            .unwrap();
        assert_eq!(fresh.input_epoch, 1);
        assert_eq!(fresh.topic_id, Some(TopicId("new".into())));
        assert_eq!(fresh.pending["ledger_events"].files, vec!["new-a", "new-b"]);
        for (p, end) in [(0, 30), (1, 20)] {
            let c = fresh.partitions[&PartitionId(p)];
            assert_eq!((c.start, c.end), (Offset(0), Offset(end)), "partition {p}");
        }
        assert_eq!(
            fresh.fleet_tasks,
            BTreeMap::from([(0, CheckpointId(7)), (1, CheckpointId(6))])
        );
    }
}
