//! Orphan files: objects under a table's location that nothing needs any more.
//!
//! An object is deleted only when every rule below lets it go ([`judge`], in this order):
//! 1. its key is made of plain characters (`[A-Za-z0-9._=/-]`): anything else could be spelled
//!    differently in the metadata than in the listing, and a wrong match would delete a live file;
//! 2. no retained snapshot, manifest or metadata file references it ([`super::references`]);
//! 3. no retained checkpoint of the job lists it ([`super::pending`]);
//! 4. it is not the job's file of the newest generation (a running process may be writing its
//!    next checkpoint), nor another recon job's file (that job's own log protects it, and only
//!    its own `maintain` can read that log);
//! 5. it is older than the safety age: a writer (Spark, another tool) may have written it and
//!    not committed yet.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::ids::{Generation, JobId};
use crate::orphans::{self, LIST_FILES_MAX};

/// Deletions in flight at once.
const DELETES_IN_FLIGHT: usize = 8;

/// What happens to one listed object, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept: its key has characters that might be spelled differently in the metadata.
    UnusualName,
    /// Kept: the table's metadata references it.
    Referenced,
    /// Kept: a retained checkpoint lists it.
    Pending,
    /// Kept: the job's newest generation wrote it (it may be in flight).
    InFlight,
    /// Kept: another recon job wrote it.
    OtherJob,
    /// Kept: younger than the safety age.
    Young,
    /// Deleted.
    Orphan,
}

/// What [`judge`] needs to know.
#[derive(Debug)]
pub struct Rules<'a> {
    /// Object keys the table's metadata references.
    pub referenced: &'a HashSet<String>,
    /// Object keys retained checkpoints list.
    pub pending: &'a HashSet<String>,
    /// The job.
    pub job: &'a JobId,
    /// Generation of the log's head; `None` for an empty log (all the job's files are kept).
    pub head_generation: Option<Generation>,
    /// Objects modified before this instant may go.
    pub delete_before: DateTime<Utc>,
}

/// Whether `key` is made of characters that every layer spells the same way (`[A-Za-z0-9._=/-]`).
pub(crate) fn plain(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._=/-".contains(&b))
}

/// Decides one object's fate.
pub fn judge(key: &str, last_modified: DateTime<Utc>, rules: &Rules<'_>) -> Verdict {
    if !plain(key) {
        return Verdict::UnusualName;
    }
    if rules.referenced.contains(key) {
        return Verdict::Referenced;
    }
    if rules.pending.contains(key) {
        return Verdict::Pending;
    }
    let name = key.rsplit('/').next().unwrap_or(key);
    if let Some((job, generation, _)) = orphans::parse_writer(name) {
        if job != rules.job.as_str() {
            return Verdict::OtherJob;
        }
        if rules.head_generation.is_none_or(|head| generation >= head) {
            return Verdict::InFlight;
        }
    }
    if last_modified >= rules.delete_before {
        return Verdict::Young;
    }
    Verdict::Orphan
}

/// Counts of one table's sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepCounts {
    /// Objects listed under the table location.
    pub listed: u64,
    /// Orphans deleted (or, in a dry run, that would be).
    pub deleted: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Kept because referenced by the metadata.
    pub referenced: u64,
    /// Kept because a retained checkpoint lists them.
    pub pending: u64,
    /// Kept because the newest generation may be writing them.
    pub in_flight: u64,
    /// Kept because another job wrote them.
    pub other_job: u64,
    /// Kept because younger than the safety age.
    pub young: u64,
    /// Kept because of their names.
    pub unusual_name: u64,
    /// The listing stopped at [`LIST_FILES_MAX`]; the rest waits for the next run.
    pub truncated: bool,
}

impl SweepCounts {
    fn count(&mut self, v: Verdict) {
        let c = match v {
            Verdict::UnusualName => &mut self.unusual_name,
            Verdict::Referenced => &mut self.referenced,
            Verdict::Pending => &mut self.pending,
            Verdict::InFlight => &mut self.in_flight,
            Verdict::OtherJob => &mut self.other_job,
            Verdict::Young => &mut self.young,
            Verdict::Orphan => &mut self.deleted,
        };
        *c += 1;
    }
}

/// Lists `root` and judges every object; returns the counts and the orphans found.
///
/// Refuses (deletes nothing) when the listing does not contain the table's current metadata
/// file: then object keys and metadata paths do not line up (a different warehouse, another
/// bucket), and every referenced file would look orphaned.
pub async fn find(
    store: &dyn ObjectStore,
    root: &Path,
    current_metadata_key: Option<&str>,
    rules: &Rules<'_>,
) -> Result<(SweepCounts, Vec<ObjectMeta>), String> {
    let mut counts = SweepCounts::default();
    let mut orphans = Vec::new();
    let mut saw_current = false;
    let mut listing = store.list(Some(root));
    while let Some(meta) = listing
        .try_next()
        .await
        .map_err(|e| format!("listing {root}: {e}"))?
    {
        if counts.listed >= LIST_FILES_MAX as u64 {
            counts.truncated = true;
            break;
        }
        counts.listed += 1;
        let key = meta.location.as_ref();
        saw_current |= current_metadata_key == Some(key);
        let verdict = judge(key, meta.last_modified, rules);
        counts.count(verdict);
        if verdict == Verdict::Orphan {
            counts.deleted_bytes += meta.size;
            orphans.push(meta);
        }
    }
    if let Some(current) = current_metadata_key
        && current.starts_with(&format!("{root}/"))
        && !saw_current
        && !counts.truncated
    {
        return Err(format!(
            "the listing of {root} does not contain the current metadata file {current}: object keys and metadata paths do not match (is catalog.warehouse the table's warehouse?); nothing deleted"
        ));
    }
    Ok((counts, orphans))
}

/// Deletes `orphans`; an object already gone counts as deleted.
pub async fn delete(store: &dyn ObjectStore, orphans: &[ObjectMeta]) -> Result<(), String> {
    futures::stream::iter(orphans.iter().map(|m| async move {
        match store.delete(&m.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                tracing::info!(file = %m.location, bytes = m.size, modified = %m.last_modified, "orphan file deleted");
                Ok(())
            }
            Err(e) => Err(format!("deleting {}: {e}", m.location)),
        }
    }))
    .buffer_unordered(DELETES_IN_FLIGHT)
    .try_collect::<Vec<()>>()
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(hours * 3600, 0).unwrap()
    }

    const OURS_G3: &str =
        "w/ns/t/data/d=1/j-g3-c00000000000000000007-0123456789abcdef0123456789abcdef-00000.parquet";
    const OURS_G2: &str =
        "w/ns/t/data/d=1/j-g2-c00000000000000000005-0123456789abcdef0123456789abcdef-00000.parquet";
    const THEIRS: &str =
        "w/ns/t/data/d=1/k-g1-c00000000000000000005-0123456789abcdef0123456789abcdef-00000.parquet";
    const SPARK: &str =
        "w/ns/t/data/d=1/00000-0-45268d71-54eb-476c-b42c-942d880c04a1-00001.parquet";
    const META: &str = "w/ns/t/metadata/00003-45268d71-54eb-476c-b42c-942d880c04a1.metadata.json";

    #[test]
    fn every_rule_in_order() {
        let job = JobId::new("j").unwrap();
        let referenced: HashSet<String> = [META.to_string()].into();
        let pending: HashSet<String> = [OURS_G2.replace("c000", "c001")].into();
        let rules = Rules {
            referenced: &referenced,
            pending: &pending,
            job: &job,
            head_generation: Some(Generation(3)),
            delete_before: at(100),
        };
        let old = at(1);
        let cases = [
            (META, old, Verdict::Referenced),
            (
                pending.iter().next().unwrap().as_str(),
                old,
                Verdict::Pending,
            ),
            (OURS_G3, old, Verdict::InFlight),
            (THEIRS, old, Verdict::OtherJob),
            (OURS_G2, at(100), Verdict::Young),
            (OURS_G2, old, Verdict::Orphan),
            (SPARK, old, Verdict::Orphan),
            (
                "w/ns/t/metadata/00001-x.metadata.json",
                old,
                Verdict::Orphan,
            ),
            ("w/ns/t/data/d=1/a b.parquet", old, Verdict::UnusualName),
            ("w/ns/t/data/d%3D1/a.parquet", old, Verdict::UnusualName),
        ];
        for (key, modified, want) in cases {
            assert_eq!(judge(key, modified, &rules), want, "{key}");
        }
        // An empty log: the job's files are kept whatever their generation.
        let rules = Rules {
            head_generation: None,
            ..rules
        };
        assert_eq!(judge(OURS_G2, old, &rules), Verdict::InFlight);
        assert_eq!(judge(SPARK, old, &rules), Verdict::Orphan);
    }
}
