//! Which topic a lakehouse row came from. After an operator accepted a topic reset
//! (`recon-pipeline accept-topic-reset`), the job reads a new topic under the same name from its
//! start, so a Kafka position (partition, offset) names one record per *input epoch*, not one
//! for all time. Each commit is stamped with its checkpoints (`recon.checkpoint-first` ..
//! `recon.checkpoint-id`) and its epoch (`recon.input-epoch`, absent = 0); every row carries
//! its checkpoint id. [`Epochs::topics_ago`] turns a row's checkpoint into
//! [`crate::row::Position::topics_ago`]: 0 for the topic read now (the only one a Kafka truth
//! can show), more for older ones. A table that never saw a reset maps every row to 0.

use crate::offsets::Commit;

/// Checkpoint ranges of one job's commits and their input epochs.
#[derive(Clone, Debug, Default)]
pub struct Epochs {
    /// `(first, through, epoch)`, sorted by `first`.
    ranges: Vec<(i64, i64, u32)>,
    /// The newest epoch.
    current: u32,
}

impl Epochs {
    /// From the commits of one or more tables of `job` (other jobs' commits are ignored:
    /// checkpoint ids are per job). Commits without a readable checkpoint range are skipped.
    pub fn new<'a>(job: &str, commits: impl IntoIterator<Item = &'a Commit>) -> Epochs {
        let mut ranges: Vec<(i64, i64, u32)> = commits
            .into_iter()
            .filter(|c| c.job == job)
            .filter_map(|c| {
                let first = c.first.parse().ok()?;
                let through = c.checkpoint.parse().ok()?;
                Some((first, through, c.input_epoch))
            })
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        let current = ranges.iter().map(|r| r.2).max().unwrap_or(0);
        Epochs { ranges, current }
    }

    /// How many accepted topic resets lie between the topic a row of `checkpoint_id` was read
    /// from and the topic read now; 0 when no commit covers that checkpoint.
    pub fn topics_ago(&self, checkpoint_id: i64) -> u32 {
        if self.current == 0 {
            return 0;
        }
        // The last range starting at or before the checkpoint; ranges of one job never overlap.
        let i = self.ranges.partition_point(|r| r.0 <= checkpoint_id);
        match i.checked_sub(1).map(|i| self.ranges[i]) {
            Some((_, through, epoch)) if checkpoint_id <= through => self.current - epoch,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(job: &str, first: i64, through: i64, epoch: u32) -> Commit {
        Commit {
            snapshot_id: through,
            job: job.into(),
            first: first.to_string(),
            checkpoint: through.to_string(),
            input_epoch: epoch,
            ranges: Default::default(),
        }
    }

    #[test]
    fn rows_map_to_the_topic_they_came_from() {
        let commits = [
            commit("j", 1, 3, 0),
            commit("j", 4, 7, 0),
            commit("j", 8, 8, 1),
            commit("j", 9, 12, 1),
            commit("other", 1, 100, 5),
        ];
        let e = Epochs::new("j", &commits);
        assert_eq!(
            [1, 3, 7, 8, 12, 13].map(|c| e.topics_ago(c)),
            [1, 1, 1, 0, 0, 0]
        );
        // No reset: everything is the current topic, as before epochs existed.
        let e = Epochs::new("j", &commits[..2]);
        assert_eq!(e.topics_ago(2), 0);
        // Two tables' commits of the same checkpoints (deduplicated).
        let e = Epochs::new("j", commits.iter().chain(&commits));
        assert_eq!(e.topics_ago(5), 1);
    }
}
