//! What the committer's next commit record holds: the pending files, offsets and counts of
//! every task checkpoint completed since the previous record. Pure.

use std::collections::BTreeMap;

use crate::checkpoint::manifest::{Counts, Manifest, PartitionCut};
use crate::ids::{CheckpointId, Generation, PartitionId};

/// Why the tasks' checkpoints cannot go into one commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatherError {
    /// Two tasks read topics with different Kafka ids (the topic was recreated under them).
    #[error(
        "task {task} read topic id {theirs} but the commit already holds topic id {ours}: the topic was deleted and recreated under the fleet. Stopping with nothing committed; see docs/OPERATIONS.md (topic recreated)"
    )]
    TopicsDiffer {
        /// Task.
        task: u32,
        /// The id the record holds.
        ours: String,
        /// The task's.
        theirs: String,
    },
    /// A task checkpoint of another input epoch (a topic reset, not supported in a fleet).
    #[error(
        "task {task} checkpoint {checkpoint} is of input epoch {epoch}: topic resets are not supported in a fleet in this build; nothing was committed"
    )]
    InputEpoch {
        /// Task.
        task: u32,
        /// Its checkpoint.
        checkpoint: CheckpointId,
        /// Its epoch.
        epoch: u32,
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
    let mut counts = Counts::default();
    for (task, manifests) in new {
        for c in manifests {
            if c.input_epoch != 0 {
                return Err(GatherError::InputEpoch {
                    task: *task,
                    checkpoint: c.checkpoint_id,
                    epoch: c.input_epoch,
                });
            }
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
        let mut reset = task_ckpt(0, 1, 0, 0, 1, "x");
        reset.input_epoch = 1;
        let new = BTreeMap::from([(0, vec![reset])]);
        assert!(matches!(
            next_record(&prev, CheckpointId(1), Generation(1), 2, &new),
            Err(GatherError::InputEpoch { .. })
        ));
    }
}
