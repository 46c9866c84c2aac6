//! Which snapshots `maintain` may expire: a pure decision over a table's snapshot list.
//!
//! A snapshot is kept when any of these holds; every other snapshot is expired:
//! - it is one of the newest `retain_last` snapshots of the current ancestry (so the current
//!   snapshot always is);
//! - it is not older than the cutoff;
//! - it lies on the current ancestry between the current snapshot and the newest snapshot
//!   stamped by the configured job, both included. Recovery reads the job's marks by walking
//!   that ancestry (`commit::marks_of`) and a missing snapshot ends the walk, so expiring one
//!   in between would hide the stamp (apache/iceberg#5846). The marker table property would
//!   still answer, but the stamp is kept anyway: two records, both intact;
//! - the same for any other job whose marks would change otherwise (its marker property is
//!   missing or behind its stamp);
//! - it is reachable from a ref other than `main` (recon creates none; if one exists, its whole
//!   ancestry is kept).
//!
//! Along the current ancestry the kept snapshots form one unbroken newest-first run: an
//! ancestor newer than the oldest kept one is kept too, so walks over the ancestry (recovery,
//! batch-verify's offset contiguity) never meet a hole. Last, the plan recomputes every job's
//! marks on the table as it would be after expiry, and refuses if any of them differs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::num::NonZeroUsize;

use iceberg::spec::{MAIN_BRANCH, TableMetadata};

use crate::checkpoint::commit::ANCESTRY_SNAPSHOTS_MAX;
use crate::checkpoint::protocol::{self, AncestryEnd, MarksVerdict, TableMarks};
use crate::ids::JobId;

/// What the planner needs to know about one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// Snapshot id.
    pub id: i64,
    /// Parent snapshot id.
    pub parent: Option<i64>,
    /// Commit time, epoch milliseconds (UTC).
    pub timestamp_ms: i64,
    /// Summary properties (where the job's stamps are).
    pub summary: HashMap<String, String>,
}

/// What the planner needs to know about one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableFacts {
    /// Every snapshot in the metadata, by id.
    pub snapshots: BTreeMap<i64, SnapshotFacts>,
    /// The current snapshot (`main`).
    pub current: Option<i64>,
    /// Heads of refs other than `main`, by name.
    pub other_refs: BTreeMap<String, i64>,
    /// Table properties (where the marker properties are).
    pub properties: HashMap<String, String>,
}

impl TableFacts {
    /// Reads the facts out of table metadata.
    pub fn of(metadata: &TableMetadata) -> Result<TableFacts, String> {
        let snapshots = metadata
            .snapshots()
            .map(|s| {
                let facts = SnapshotFacts {
                    id: s.snapshot_id(),
                    parent: s.parent_snapshot_id(),
                    timestamp_ms: s.timestamp_ms(),
                    summary: s.summary().additional_properties.clone(),
                };
                (facts.id, facts)
            })
            .collect();
        // iceberg 0.10.1 has no public way to enumerate refs: read them from the metadata's
        // own JSON form (the format of metadata.json, a stable spec).
        let json = serde_json::to_value(metadata)
            .map_err(|e| format!("cannot read the table's refs: {e}"))?;
        let mut other_refs = BTreeMap::new();
        if let Some(refs) = json.get("refs").and_then(|r| r.as_object()) {
            for (name, r) in refs {
                let id = r
                    .get("snapshot-id")
                    .and_then(|v| v.as_i64())
                    .ok_or_else(|| format!("ref {name:?} has no snapshot-id"))?;
                if name != MAIN_BRANCH {
                    other_refs.insert(name.clone(), id);
                }
            }
        }
        Ok(TableFacts {
            snapshots,
            current: metadata.current_snapshot_id(),
            other_refs,
            properties: metadata.properties().clone(),
        })
    }

    /// The ancestry of `head`, newest first, ending where a parent is missing or in `removed`;
    /// and whether it ended at the root (a snapshot without a parent).
    fn walk(
        &self,
        head: Option<i64>,
        removed: &HashSet<i64>,
    ) -> Result<(Vec<i64>, bool), RetentionError> {
        let mut out = Vec::new();
        let mut next = head;
        while let Some(id) = next {
            if removed.contains(&id) {
                return Ok((out, false));
            }
            let Some(s) = self.snapshots.get(&id) else {
                return Ok((out, false));
            };
            if out.len() >= ANCESTRY_SNAPSHOTS_MAX {
                return Err(RetentionError::AncestryTooLong { head: id });
            }
            out.push(id);
            next = s.parent;
        }
        Ok((out, true))
    }

    /// The ancestry of `head`, newest first, ending where a parent is missing or in `removed`.
    fn ancestry(
        &self,
        head: Option<i64>,
        removed: &HashSet<i64>,
    ) -> Result<Vec<i64>, RetentionError> {
        Ok(self.walk(head, removed)?.0)
    }

    /// A job's marks as `commit::marks_of` reads them, on this table minus `removed`: the
    /// ancestry decides, the marker property fills in past an expired parent. Expiry ends the
    /// walk at a missing parent, never at the root, so it can never look like a rollback.
    fn verdict(&self, job: &JobId, removed: &HashSet<i64>) -> Result<MarksVerdict, RetentionError> {
        let (ancestry, at_root) = self.walk(self.current, removed)?;
        let mut end = if at_root {
            AncestryEnd::Root
        } else {
            AncestryEnd::Expired
        };
        for id in ancestry {
            if let Some(stamp) = protocol::parse_stamp(job, &self.snapshots[&id].summary)
                .map_err(RetentionError::Unreadable)?
            {
                end = AncestryEnd::Stamp {
                    stamp,
                    snapshot: id,
                    checkpoint_sha256: None,
                };
                break;
            }
        }
        let property = match self.properties.get(&protocol::marker_property(job)) {
            Some(v) => Some(protocol::parse_marker(v).map_err(RetentionError::Unreadable)?),
            None => None,
        };
        Ok(protocol::judge_marks(&end, property))
    }

    /// [`Self::verdict`] as marks; a table behind the job's marker is an error.
    fn marks(&self, job: &JobId, removed: &HashSet<i64>) -> Result<TableMarks, RetentionError> {
        match self.verdict(job, removed)? {
            MarksVerdict::Trust(m) => Ok(m),
            MarksVerdict::BehindMarker { marker, found } => Err(RetentionError::BehindMarker {
                job: job.to_string(),
                marker,
                found: found.map(|s| s.through),
            }),
        }
    }
}

/// How much history to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Snapshots committed before this instant (epoch milliseconds, UTC) may be expired.
    pub expire_before_ms: i64,
    /// Newest snapshots of the current ancestry kept whatever their age.
    pub retain_last: NonZeroUsize,
}

/// The decision for one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpiryPlan {
    /// Snapshots to expire, ascending.
    pub expire: Vec<i64>,
    /// Snapshots kept.
    pub kept: usize,
    /// Of those, kept only because a job's marker chain runs through them.
    pub held_for_markers: usize,
    /// The configured job's marks, the same before and after.
    pub marks: TableMarks,
    /// The snapshot carrying the configured job's newest stamp, if in the ancestry.
    pub marker_snapshot: Option<i64>,
}

/// Why no plan could be made. Nothing is expired then.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The ancestry is longer than the walk limit: a partial view could misjudge the markers.
    #[error(
        "the ancestry from snapshot {head} is longer than {ANCESTRY_SNAPSHOTS_MAX} snapshots; refusing to plan on a partial view (expire with a larger limit elsewhere first)"
    )]
    AncestryTooLong {
        /// Where the walk stood.
        head: i64,
    },
    /// A stamp or marker property that names a job cannot be parsed.
    #[error("{0}")]
    Unreadable(String),
    /// The table's current snapshot is behind the job's marker (rolled back): expiring now
    /// could remove the snapshot an operator rolls forward to. Nothing is expired.
    #[error(
        "the table was rolled back behind job {job}'s marker (checkpoint {marker:?}, the ancestry holds {found:?}); nothing expired: start the job to see the operator's choices"
    )]
    BehindMarker {
        /// The job.
        job: String,
        /// The marker property's marks.
        marker: TableMarks,
        /// The ancestry's newest stamp.
        found: Option<crate::ids::CheckpointId>,
    },
    /// Safety net: the plan would change a job's marks. A bug if it ever fires.
    #[error(
        "expiring would change the marks of job {job} from {before:?} to {after:?}; nothing expired (this is a bug in maintain: report it)"
    )]
    MarksWouldChange {
        /// The job.
        job: String,
        /// Its marks now.
        before: MarksVerdict,
        /// Its marks after the planned expiry.
        after: MarksVerdict,
    },
}

/// Decides which snapshots of `facts` to expire for `job` under `policy`.
pub fn plan(
    facts: &TableFacts,
    job: &JobId,
    policy: &RetentionPolicy,
) -> Result<ExpiryPlan, RetentionError> {
    let none = HashSet::new();
    let ancestry = facts.ancestry(facts.current, &none)?;
    let ts = |id: &i64| facts.snapshots[id].timestamp_ms;
    // The oldest ancestor with a reason to stay; everything newer stays with it.
    let mut keep_through: Option<usize> = None;
    for (i, id) in ancestry.iter().enumerate() {
        if i < policy.retain_last.get() || ts(id) >= policy.expire_before_ms {
            keep_through = Some(i);
        }
    }
    let by_age_and_count = keep_through.map_or(0, |k| k + 1);
    let stamp_index = |job: &str| {
        ancestry.iter().position(|id| {
            facts.snapshots[id]
                .summary
                .get(protocol::PROP_JOB_ID)
                .map(String::as_str)
                == Some(job)
        })
    };
    let marker_snapshot = stamp_index(job.as_str()).map(|i| ancestry[i]);
    if let Some(i) = stamp_index(job.as_str()) {
        keep_through = keep_through.max(Some(i));
    }

    let mut ref_protected = HashSet::new();
    for head in facts.other_refs.values() {
        ref_protected.extend(facts.ancestry(Some(*head), &none)?);
    }
    let removal = |keep_through: Option<usize>| -> HashSet<i64> {
        let kept: HashSet<i64> = keep_through
            .map(|k| ancestry[..=k].iter().copied().collect())
            .unwrap_or_default();
        facts
            .snapshots
            .values()
            .filter(|s| {
                !kept.contains(&s.id)
                    && !ref_protected.contains(&s.id)
                    && s.timestamp_ms < policy.expire_before_ms
            })
            .map(|s| s.id)
            .collect()
    };

    // Other jobs: keep their chain only where their marks would otherwise change.
    let others: BTreeSet<&str> = ancestry
        .iter()
        .filter_map(|id| facts.snapshots[id].summary.get(protocol::PROP_JOB_ID))
        .map(String::as_str)
        .filter(|j| *j != job.as_str())
        .collect();
    let removed = removal(keep_through);
    for other in others {
        let changes = match JobId::new(other) {
            Ok(id) => facts.verdict(&id, &removed)? != facts.verdict(&id, &none)?,
            // Not a valid job id: no recon job reads it, but keep it rather than guess.
            Err(_) => true,
        };
        if changes && let Some(i) = stamp_index(other) {
            keep_through = keep_through.max(Some(i));
        }
    }

    let removed = removal(keep_through);
    let mut jobs: Vec<JobId> = vec![job.clone()];
    jobs.extend(
        facts
            .snapshots
            .values()
            .filter_map(|s| s.summary.get(protocol::PROP_JOB_ID))
            .filter_map(|j| JobId::new(j).ok())
            .collect::<BTreeSet<_>>(),
    );
    // The configured job's table behind its marker: refuse (the roll-forward target would go).
    facts.marks(job, &none)?;
    for j in &jobs {
        let (before, after) = (facts.verdict(j, &none)?, facts.verdict(j, &removed)?);
        if before != after {
            return Err(RetentionError::MarksWouldChange {
                job: j.to_string(),
                before,
                after,
            });
        }
    }
    if let Some(current) = facts.current {
        assert!(
            !removed.contains(&current),
            "retention plan would expire the current snapshot {current}"
        );
    }
    let mut expire: Vec<i64> = removed.into_iter().collect();
    expire.sort_unstable();
    let kept_ancestry = keep_through.map_or(0, |k| k + 1);
    Ok(ExpiryPlan {
        kept: facts.snapshots.len() - expire.len(),
        held_for_markers: kept_ancestry.saturating_sub(by_age_and_count),
        marks: facts.marks(job, &none)?,
        marker_snapshot,
        expire,
    })
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
