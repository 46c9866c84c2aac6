//! Check (f): per Kafka partition, the offset ranges the pipeline's commits claim are
//! contiguous and do not overlap.
//!
//! Each commit's snapshot summary carries `recon.offsets` = `{"<partition>": {"start", "end",
//! "records"}}` for the checkpoints it includes. Offsets have gaps (transaction markers), so
//! contiguity is never computed by subtraction: along a job's commits, oldest first, each
//! commit's `start` must equal the previous commit's `end` on that partition. Commits of
//! different input epochs (`recon.input-epoch`: a topic reset the operator accepted) read
//! different topics, so contiguity is checked within one epoch.

use std::collections::BTreeMap;

use iceberg::table::Table;
use recon_common::stamps::{
    PROP_CHECKPOINT_FIRST, PROP_CHECKPOINT_ID, PROP_INPUT_EPOCH, PROP_JOB_ID, PROP_OFFSETS,
};
use serde::Deserialize;

use crate::error::{Result, VerifyError};
use crate::report::{Discrepancy, Findings, Kind};
use crate::truth::kafka::Windows;

/// Most snapshots read from one table's ancestry.
const SNAPSHOTS_MAX: usize = 10_000_000;

/// One partition's range in a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Range {
    /// Next offset at the previous cut.
    pub start: i64,
    /// Next offset after this commit.
    pub end: i64,
    /// Records consumed.
    #[serde(default)]
    pub records: u64,
}

/// One commit of the pipeline, as its snapshot summary states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Snapshot id.
    pub snapshot_id: i64,
    /// `recon.job-id`.
    pub job: String,
    /// `recon.checkpoint-first` (empty when absent).
    pub first: String,
    /// `recon.checkpoint-id`.
    pub checkpoint: String,
    /// `recon.input-epoch` (0 when absent).
    pub input_epoch: u32,
    /// Ranges per partition.
    pub ranges: BTreeMap<i32, Range>,
}

/// The pipeline's commits on `table`'s current ancestry, oldest first.
pub fn commits(table: &Table) -> Result<Vec<Commit>> {
    let name = table.identifier().to_string();
    let md = table.metadata_ref();
    let Some(current) = md.current_snapshot() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for snap in
        iceberg::util::snapshot::ancestors_of(&md, current.snapshot_id()).take(SNAPSHOTS_MAX)
    {
        let props = &snap.summary().additional_properties;
        let (Some(job), Some(offsets)) = (props.get(PROP_JOB_ID), props.get(PROP_OFFSETS)) else {
            continue;
        };
        let raw: BTreeMap<String, Range> = serde_json::from_str(offsets).map_err(|e| {
            VerifyError::lakehouse(
                "read recon.offsets of snapshot",
                &name,
                format!("{}: {e}: {offsets}", snap.snapshot_id()),
            )
        })?;
        let mut ranges = BTreeMap::new();
        for (p, r) in raw {
            let p: i32 = p.parse().map_err(|_| {
                VerifyError::lakehouse(
                    "read recon.offsets of snapshot",
                    &name,
                    format!("{}: partition {p:?}", snap.snapshot_id()),
                )
            })?;
            ranges.insert(p, r);
        }
        let input_epoch = match props.get(PROP_INPUT_EPOCH) {
            None => 0,
            Some(e) => e.parse().map_err(|_| {
                VerifyError::lakehouse(
                    "read recon.input-epoch of snapshot",
                    &name,
                    format!("{}: {e:?}", snap.snapshot_id()),
                )
            })?,
        };
        out.push(Commit {
            snapshot_id: snap.snapshot_id(),
            job: job.clone(),
            first: props
                .get(PROP_CHECKPOINT_FIRST)
                .cloned()
                .unwrap_or_default(),
            checkpoint: props.get(PROP_CHECKPOINT_ID).cloned().unwrap_or_default(),
            input_epoch,
            ranges,
        });
    }
    out.reverse();
    Ok(out)
}

/// The job's committed cut: per partition, the next offset the job will read after its newest
/// commit (of `job`, in its newest input epoch) that names the partition. Offsets at or after
/// the cut are not consumed yet: a truth event there that the lakehouse lacks is the job's lag,
/// still `missing`, and named as such.
pub fn committed_cut(commits: &[Commit], job: &str) -> BTreeMap<i32, i64> {
    let epoch = commits
        .iter()
        .filter(|c| c.job == job)
        .map(|c| c.input_epoch)
        .max();
    let mut cut = BTreeMap::new();
    for c in commits
        .iter()
        .filter(|c| c.job == job && Some(c.input_epoch) == epoch)
    {
        for (p, r) in &c.ranges {
            cut.insert(*p, r.end);
        }
    }
    cut
}

/// Names the job's lag on every kept `missing` / `missing_reject` at or after the committed
/// cut of its partition (`log_end`: the truth's window ends); returns how many it named.
pub fn annotate_lag(findings: &mut Findings, cut: &BTreeMap<i32, i64>, log_end: &Windows) -> u64 {
    let mut named = 0;
    for d in &mut findings.kept {
        if !matches!(d.kind, Kind::Missing | Kind::MissingReject) {
            continue;
        }
        let (Some(p), Some(o)) = (d.kafka_partition, d.kafka_offset) else {
            continue;
        };
        let end = log_end.get(&p).map_or(o + 1, |w| w.1);
        let note = match cut.get(&p) {
            Some(c) if o >= *c => format!(
                "; not consumed by the job yet: it committed partition {p} up to offset {c}, \
                 the log ends at {end} (lag {} offsets); is the job running?",
                end - c
            ),
            Some(_) => continue,
            None => format!(
                "; not consumed by the job yet: it has committed nothing on partition {p} \
                 (log end {end}); is the job running?"
            ),
        };
        d.detail.push_str(&note);
        named += 1;
    }
    named
}

/// The job's lag in offsets (transaction markers included): per partition, the log end minus
/// the committed cut (the whole window where the job committed nothing).
pub fn lag(cut: &BTreeMap<i32, i64>, log_end: &Windows) -> BTreeMap<i32, i64> {
    log_end
        .iter()
        .map(|(p, (s, e))| (*p, (e - cut.get(p).copied().unwrap_or(*s)).max(0)))
        .collect()
}

/// Checks `commits` (oldest first) of one table. A gap or overlap is reported unless it lies
/// wholly before the day's offsets on its partition (`windows`): one inside or after the day
/// may hide the day's records, and a partition where the day has no offsets at all may be one
/// whose day was lost.
pub fn check(table: &str, commits: &[Commit], windows: &Windows, findings: &mut Findings) {
    let mut last: BTreeMap<(&str, u32, i32), (i64, i64)> = BTreeMap::new();
    for c in commits {
        for (p, r) in &c.ranges {
            let relevant = |_lo: i64, hi: i64| windows.get(p).is_none_or(|(ws, _)| hi > *ws);
            if r.end < r.start {
                if relevant(r.end, r.start) {
                    findings.add(
                        Discrepancy::new(Kind::OffsetOverlap, format!("{table}: commit of checkpoint {} (snapshot {}) has end {} before start {}", c.checkpoint, c.snapshot_id, r.end, r.start))
                            .at(*p, r.end),
                    );
                }
            } else if let Some((_, prev_end)) =
                last.get(&(c.job.as_str(), c.input_epoch, *p)).copied()
            {
                if r.start > prev_end && relevant(prev_end, r.start) {
                    findings.add(
                        Discrepancy::new(
                            Kind::OffsetGap,
                            format!("{table}: offsets [{prev_end}, {}) of partition {p} are in no commit of job {} (gap before checkpoint {}, snapshot {})", r.start, c.job, c.checkpoint, c.snapshot_id),
                        )
                        .at(*p, prev_end),
                    );
                } else if r.start < prev_end && relevant(r.start, prev_end) {
                    findings.add(
                        Discrepancy::new(
                            Kind::OffsetOverlap,
                            format!("{table}: offsets [{}, {prev_end}) of partition {p} are committed twice by job {} (checkpoint {}, snapshot {})", r.start, c.job, c.checkpoint, c.snapshot_id),
                        )
                        .at(*p, r.start),
                    );
                }
            }
            last.insert((c.job.as_str(), c.input_epoch, *p), (r.start, r.end));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(id: i64, ranges: &[(i32, i64, i64)]) -> Commit {
        Commit {
            snapshot_id: id,
            job: "j".into(),
            first: id.to_string(),
            checkpoint: id.to_string(),
            input_epoch: 0,
            ranges: ranges
                .iter()
                .map(|(p, s, e)| {
                    (
                        *p,
                        Range {
                            start: *s,
                            end: *e,
                            records: 0,
                        },
                    )
                })
                .collect(),
        }
    }

    fn kinds(commits: &[Commit], windows: &Windows) -> Vec<(Kind, Option<i32>, Option<i64>)> {
        let mut f = Findings::new(100);
        check("t", commits, windows, &mut f);
        f.kept
            .iter()
            .map(|d| (d.kind, d.kafka_partition, d.kafka_offset))
            .collect()
    }

    #[test]
    fn contiguous_ranges_with_marker_gaps_are_clean() {
        // Offsets 10 and 21 are transaction markers: `end` is still the next offset to read.
        let c = [
            commit(1, &[(0, 0, 11), (1, 0, 5)]),
            commit(2, &[(0, 11, 22)]),
            commit(3, &[(0, 22, 30), (1, 5, 9)]),
        ];
        assert!(kinds(&c, &Windows::new()).is_empty());
    }

    #[test]
    fn gap_and_overlap_are_found_with_their_offsets() {
        let c = [
            commit(1, &[(0, 0, 10)]),
            commit(2, &[(0, 12, 20)]),
            commit(3, &[(0, 18, 25)]),
        ];
        assert_eq!(
            kinds(&c, &Windows::new()),
            vec![
                (Kind::OffsetGap, Some(0), Some(10)),
                (Kind::OffsetOverlap, Some(0), Some(18))
            ]
        );
    }

    #[test]
    fn a_topic_reset_starts_the_offsets_over() {
        let mut reset = commit(3, &[(0, 0, 7)]);
        reset.input_epoch = 1;
        let mut after = commit(4, &[(0, 7, 12)]);
        after.input_epoch = 1;
        let c = [
            commit(1, &[(0, 0, 10)]),
            commit(2, &[(0, 10, 20)]),
            reset,
            after,
        ];
        assert!(kinds(&c, &Windows::new()).is_empty());
        // Within the new epoch contiguity still holds.
        let mut gap = commit(5, &[(0, 14, 15)]);
        gap.input_epoch = 1;
        let c = [c.to_vec(), vec![gap]].concat();
        assert_eq!(
            kinds(&c, &Windows::new()),
            vec![(Kind::OffsetGap, Some(0), Some(12))]
        );
    }

    #[test]
    fn the_cut_is_the_newest_commit_of_the_job_in_its_newest_epoch() {
        let mut other = commit(9, &[(0, 0, 99)]);
        other.job = "other".into();
        let mut reset = commit(4, &[(0, 0, 3)]);
        reset.input_epoch = 1;
        let c = [
            commit(1, &[(0, 0, 10), (1, 0, 4)]),
            commit(2, &[(0, 10, 20)]),
            other,
        ];
        assert_eq!(committed_cut(&c, "j"), BTreeMap::from([(0, 20), (1, 4)]));
        let c = [c.to_vec(), vec![reset]].concat();
        assert_eq!(committed_cut(&c, "j"), BTreeMap::from([(0, 3)]));
        assert!(committed_cut(&c, "nobody").is_empty());
    }

    #[test]
    fn missing_events_past_the_cut_are_named_as_lag() {
        let mut f = Findings::new(10);
        f.add(Discrepancy::new(Kind::Missing, "a").at(0, 25));
        f.add(Discrepancy::new(Kind::Missing, "b").at(0, 5));
        f.add(Discrepancy::new(Kind::MissingReject, "c").at(1, 0));
        f.add(Discrepancy::new(Kind::Phantom, "d").at(0, 30));
        let cut = BTreeMap::from([(0, 20)]);
        let ends = Windows::from([(0, (0, 40)), (1, (0, 7))]);
        assert_eq!(annotate_lag(&mut f, &cut, &ends), 2);
        assert!(
            f.kept[0].detail.contains("up to offset 20"),
            "{:?}",
            f.kept[0]
        );
        assert!(f.kept[0].detail.contains("lag 20 offsets"));
        assert_eq!(f.kept[1].detail, "b", "before the cut: a real loss");
        assert!(
            f.kept[2]
                .detail
                .contains("committed nothing on partition 1")
        );
        assert_eq!(f.kept[3].detail, "d");
        assert_eq!(lag(&cut, &ends), BTreeMap::from([(0, 20), (1, 7)]));
    }

    #[test]
    fn gaps_away_from_the_day_are_not_the_days_business() {
        let c = [
            commit(1, &[(0, 0, 10)]),
            commit(2, &[(0, 12, 20)]),
            commit(3, &[(0, 20, 900)]),
        ];
        assert!(kinds(&c, &Windows::from([(0, (500, 800))])).is_empty());
        assert_eq!(kinds(&c, &Windows::from([(0, (5, 800))])).len(), 1);
        assert_eq!(
            kinds(&c, &Windows::from([(0, (0, 5))])).len(),
            1,
            "a gap after the day counts"
        );
    }
}
