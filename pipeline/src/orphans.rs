//! Orphan data files: Parquet files written by an attempt that never completed its checkpoint,
//! deleted at recovery.
//!
//! A data file is named `<job>-g<generation>-c<checkpoint:020>-<uuid>-NNNNN.parquet`, so the
//! name says which attempt wrote it, and with the log in hand a file of an older generation
//! whose checkpoint that generation never completed looks like an orphan. A name and a log are
//! not proof, though: after an operator restores an older copy of the checkpoint store, or a
//! crash loop writes claims over the ids of committed checkpoints, the log no longer knows files
//! the tables reference. So the name and the log only *nominate* a file; [`judge`] keeps it
//! whenever any snapshot still in its table's metadata references it (every snapshot, not only
//! the current ancestry: [`crate::maintain::references`]) or any retained checkpoint lists it
//! ([`crate::maintain::pending`]). Whatever cannot be read (a manifest, a log entry, the
//! warehouse) means nothing is deleted: skipping a cleanup only leaves garbage for the next
//! start or for `recon-pipeline maintain`.
//!
//! Sequence ([`clean`]): read the log (every retained entry and its pending files) **before**
//! loading any table, as `maintain` does: a checkpoint pruned meanwhile was committed first, so
//! the table loaded afterwards references its files. Then, per table, collect the references;
//! only when every table's set is complete, list each data directory and delete what [`judge`]
//! lets go. The whole pass is bounded by [`CLEANUP_DEADLINE`], [`RECOVERY_LIMITS`] and
//! [`LIST_FILES_MAX`]; past a bound it stops and warns.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::checkpoint::commit::marks_of;
use crate::checkpoint::log::CheckpointLog;
use crate::config::Config;
use crate::ids::{CheckpointId, Generation, JobId};
use crate::maintain::pending::{self, Pending};
use crate::maintain::references::{self, object_key};
use crate::maintain::sweep::plain;

/// Most objects listed per table in one cleanup pass.
pub const LIST_FILES_MAX: usize = 1_000_000;

/// What recovery may read to learn a table's references. Smaller than `maintain`'s: recovery
/// holds up the job's start, and a table this large should be left to `maintain`.
pub const RECOVERY_LIMITS: references::Limits = references::Limits {
    manifests_max: 100_000,
    files_max: 5_000_000,
};

/// Longest time recovery spends on orphan cleanup; past it, the cleanup stops where it is
/// (what it deleted was judged with complete references) and the job starts.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(60);

/// The name prefix of the data files one attempt writes for checkpoint `id`: the writer then
/// appends `-<counter:05>.parquet` (iceberg-rust's `DefaultFileNameGenerator`). The one place
/// the name is spelled; [`parse_writer`] reads it back.
pub fn data_file_prefix(
    job: &JobId,
    generation: Generation,
    id: CheckpointId,
    attempt: uuid::Uuid,
) -> String {
    format!("{job}-g{generation}-c{:020}-{}", id.0, attempt.simple())
}

/// Reads the attempt out of a data file name written by `job` ([`parse_writer`], for one job).
pub fn parse_name(job: &JobId, file_name: &str) -> Option<(Generation, CheckpointId)> {
    let (writer, generation, checkpoint) = parse_writer(file_name)?;
    (writer == job.as_str()).then_some((generation, checkpoint))
}

/// Reads the writer out of a data file name of any job: `(job, generation, checkpoint)`.
/// `maintain` uses it to leave other jobs' files to their own runs (it cannot read their logs).
pub fn parse_writer(file_name: &str) -> Option<(&str, Generation, CheckpointId)> {
    let stem = file_name.strip_suffix(".parquet")?;
    let mut parts = stem.rsplitn(5, '-');
    let counter = parts.next()?;
    let uuid = parts.next()?;
    let checkpoint = parts.next()?.strip_prefix('c')?;
    let generation = parts.next()?.strip_prefix('g')?;
    let job = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = counter.len() >= 5
        && digits(counter)
        && uuid.len() == 32
        && uuid.bytes().all(|b| b.is_ascii_hexdigit())
        && checkpoint.len() == 20
        && digits(checkpoint)
        && digits(generation)
        && JobId::new(job).is_ok();
    ok.then_some(())?;
    Some((
        job,
        Generation(generation.parse().ok()?),
        CheckpointId(checkpoint.parse().ok()?),
    ))
}

/// An object store over the warehouse, built from the catalog's warehouse URL and properties.
pub fn warehouse_store(cfg: &Config) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    let wh = &cfg.catalog.warehouse;
    if wh.starts_with("file://") {
        return Ok(Arc::new(object_store::local::LocalFileSystem::new()));
    }
    let url = url::Url::parse(wh).map_err(|e| object_store::Error::Generic {
        store: "warehouse",
        source: Box::new(e),
    })?;
    let p = &cfg.catalog.properties;
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(url.host_str().unwrap_or_default());
    if let Some(v) = p.get("s3.endpoint") {
        b = b.with_endpoint(v).with_allow_http(v.starts_with("http://"));
    }
    if let Some(v) = p.get("s3.access-key-id") {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = p.get("s3.secret-access-key") {
        b = b.with_secret_access_key(v);
    }
    if let Some(v) = p.get("s3.region") {
        b = b.with_region(v);
    }
    if p.get("s3.path-style-access").map(String::as_str) == Some("true") {
        b = b.with_virtual_hosted_style_request(false);
    }
    Ok(Arc::new(b.build()?))
}

/// The object-store path of a table's location (its `data/` and `metadata/` live under it).
pub fn table_root(table: &Table) -> Option<Path> {
    let url = url::Url::parse(table.metadata().location()).ok()?;
    Some(Path::from(url.path().trim_matches('/')))
}

/// The object-store path of a table's data directory.
fn data_dir(table: &Table) -> Option<Path> {
    Some(table_root(table)?.join("data"))
}

/// What recovery does with one listed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave it.
    Keep(Keep),
    /// Delete it.
    Delete(Delete),
}

/// Why a file stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Its name is not one of this job's data files (Spark, another job, a stray upload).
    NotThisJobs,
    /// Its key has characters the metadata might spell differently: a mismatch would hide a
    /// reference.
    UnusualName,
    /// A snapshot still in the table's metadata references it.
    Referenced,
    /// A retained checkpoint of the log lists it (complete, maybe not committed yet).
    Pending,
    /// Written by this process's generation or a newer one (in flight).
    CurrentGeneration,
    /// Its writer completed its checkpoint (the entry there is its generation's).
    Completed,
    /// Its checkpoint is at or below the head and gone from the log: pruned after its commit.
    Pruned,
}

/// Why a file goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delete {
    /// Its checkpoint is beyond the head and has no log entry: never completed.
    NeverCompleted,
    /// The log entry at its checkpoint belongs to another generation (a newer claim, or the
    /// winner of a race): its writer never completed it.
    Superseded {
        /// Generation of the entry at the file's checkpoint.
        entry_generation: Generation,
    },
}

/// Everything [`judge`] needs, read beforehand.
#[derive(Debug)]
pub struct Knowledge<'a> {
    /// The job.
    pub job: &'a JobId,
    /// This process's generation.
    pub ours: Generation,
    /// The checkpoint this process resumed from.
    pub head: CheckpointId,
    /// Object keys referenced by any snapshot still in the table's metadata.
    pub referenced: &'a HashSet<String>,
    /// Object keys listed by retained checkpoints.
    pub pending: &'a HashSet<String>,
    /// Every log entry present and the generation that wrote it.
    pub entries: &'a BTreeMap<CheckpointId, Generation>,
}

/// Decides one listed object's fate from its key (as the warehouse listing spells it) and
/// what was read. References and pending files are checked before the name and the log
/// are consulted, so no log state can delete a referenced or pending file.
pub fn judge(key: &str, k: &Knowledge<'_>) -> Decision {
    let name = key.rsplit('/').next().unwrap_or(key);
    let Some((generation, checkpoint)) = parse_name(k.job, name) else {
        return Decision::Keep(Keep::NotThisJobs);
    };
    if !plain(key) {
        return Decision::Keep(Keep::UnusualName);
    }
    if k.referenced.contains(key) {
        return Decision::Keep(Keep::Referenced);
    }
    if k.pending.contains(key) {
        return Decision::Keep(Keep::Pending);
    }
    if generation >= k.ours {
        return Decision::Keep(Keep::CurrentGeneration);
    }
    match k.entries.get(&checkpoint) {
        Some(g) if *g == generation => Decision::Keep(Keep::Completed),
        Some(g) => Decision::Delete(Delete::Superseded {
            entry_generation: *g,
        }),
        None if checkpoint <= k.head => Decision::Keep(Keep::Pruned),
        None => Decision::Delete(Delete::NeverCompleted),
    }
}

/// Whether a cleanup may run at all: a retained checkpoint whose manifest is unreadable lists
/// files nobody can name, harmless only if every table already holds it (then its files are
/// referenced). `committed` = per table, the newest checkpoint of the job it holds.
pub fn may_clean(
    pending: &Pending,
    committed: &[(TableIdent, Option<CheckpointId>)],
) -> Result<(), String> {
    for id in &pending.unreadable {
        if let Some((table, c)) = committed.iter().find(|(_, c)| *c < Some(*id)) {
            return Err(format!(
                "the manifest of checkpoint {id} is unreadable and table {table} holds only {}: its files cannot be told apart from orphans",
                c.map_or("none of the job's checkpoints".to_string(), |c| format!(
                    "checkpoint {c}"
                ))
            ));
        }
    }
    Ok(())
}

/// Counts of one cleanup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Files deleted.
    pub deleted: u64,
    /// This job's files kept because a snapshot references them.
    pub referenced: u64,
    /// Files kept because a retained checkpoint lists them.
    pub pending: u64,
    /// Files listed.
    pub listed: u64,
}

/// Recovery's orphan cleanup over `tables`; see the module documentation for the sequence.
/// `ours` = the generation this process claimed, `head` = the checkpoint it resumed from.
/// An `Err` means nothing more was deleted; the message says why.
pub async fn clean(
    store: &dyn ObjectStore,
    catalog: &dyn Catalog,
    log: &CheckpointLog,
    tables: &[TableIdent],
    ours: Generation,
    head: CheckpointId,
) -> Result<Cleaned, String> {
    match tokio::time::timeout(
        CLEANUP_DEADLINE,
        clean_unbounded(store, catalog, log, tables, ours, head),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!(
            "orphan cleanup stopped after {CLEANUP_DEADLINE:?} (a large table? `recon-pipeline maintain` sweeps it)"
        )),
    }
}

async fn clean_unbounded(
    store: &dyn ObjectStore,
    catalog: &dyn Catalog,
    log: &CheckpointLog,
    tables: &[TableIdent],
    ours: Generation,
    head: CheckpointId,
) -> Result<Cleaned, String> {
    let job = log.job().clone();
    // The log first: see the module documentation for why the order matters.
    let pending = pending::read(log)
        .await
        .map_err(|e| format!("reading the checkpoint log: {e}"))?;
    // Every table's references before any deletion: a failure anywhere deletes nothing.
    let mut loaded = Vec::new();
    let mut committed = Vec::new();
    for ident in tables {
        let table = catalog
            .load_table(ident)
            .await
            .map_err(|e| format!("loading {ident}: {e}"))?;
        let marks = marks_of(&job, &table).map_err(|e| format!("table {ident}: {e}"))?;
        committed.push((ident.clone(), marks.committed));
        let refs = references::collect(&table, &HashSet::new(), RECOVERY_LIMITS)
            .await
            .map_err(|e| format!("table {ident}: {e}"))?;
        // The current metadata file must be where the listing will look: otherwise object keys
        // and metadata paths do not line up (another bucket or warehouse) and every referenced
        // file would look unreferenced.
        if let Some(current) = table.metadata_location().and_then(object_key) {
            match store.head(&Path::from(current.as_str())).await {
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "table {ident}: its current metadata file {current} is not in the warehouse store as configured ({e}): object keys and metadata paths do not match"
                    ));
                }
            }
        }
        loaded.push((table, refs.keys));
    }
    may_clean(&pending, &committed)?;
    let mut cleaned = Cleaned::default();
    for (table, referenced) in &loaded {
        let Some(dir) = data_dir(table) else { continue };
        let k = Knowledge {
            job: &job,
            ours,
            head,
            referenced,
            pending: &pending.keys,
            entries: &pending.entries,
        };
        let mut listing = store.list(Some(&dir));
        let mut seen = 0;
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| format!("listing {dir}: {e}"))?
        {
            seen += 1;
            if seen > LIST_FILES_MAX {
                tracing::warn!(table = %table.identifier(), "orphan cleanup stopped listing at {LIST_FILES_MAX} files; `recon-pipeline maintain` sweeps the rest");
                break;
            }
            cleaned.listed += 1;
            match judge(meta.location.as_ref(), &k) {
                Decision::Keep(Keep::Referenced) => cleaned.referenced += 1,
                Decision::Keep(Keep::Pending) => cleaned.pending += 1,
                Decision::Keep(_) => {}
                Decision::Delete(why) => {
                    match store.delete(&meta.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(format!("deleting {}: {e}", meta.location)),
                    }
                    cleaned.deleted += 1;
                    tracing::info!(file = %meta.location, reason = ?why, "orphan data file deleted");
                }
            }
        }
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name the sink writes parses back to its writer, and to no other job.
    #[test]
    fn written_names_parse_back() {
        for (job, g, c) in [
            ("j", 1, 1),
            ("pay-eu-1", 12, 345),
            ("a-b", u64::MAX, u64::MAX),
        ] {
            let job = JobId::new(job).unwrap();
            let prefix =
                data_file_prefix(&job, Generation(g), CheckpointId(c), uuid::Uuid::new_v4());
            for counter in ["00000", "00017", "123456"] {
                let name = format!("{prefix}-{counter}.parquet");
                let want = (Generation(g), CheckpointId(c));
                assert_eq!(parse_name(&job, &name), Some(want), "{name}");
                assert_eq!(parse_writer(&name), Some((job.as_str(), want.0, want.1)));
                assert_eq!(parse_name(&JobId::new("other").unwrap(), &name), None);
            }
        }
    }

    #[test]
    fn names_parse_for_job_ids_with_dashes() {
        let job = JobId::new("pay-eu-1").unwrap();
        let name =
            "pay-eu-1-g12-c00000000000000000345-0123456789abcdef0123456789abcdef-00002.parquet";
        assert_eq!(
            parse_name(&job, name),
            Some((Generation(12), CheckpointId(345)))
        );
        assert_eq!(parse_name(&JobId::new("pay").unwrap(), name), None);
        assert_eq!(parse_name(&job, "00000-0-abc.parquet"), None);
        assert_eq!(
            parse_writer(name),
            Some(("pay-eu-1", Generation(12), CheckpointId(345)))
        );
        for other in [
            "00000-0-45268d71-54eb-476c-b42c-942d880c04a1-00001.parquet",
            "pay-g1-c00000000000000000001-0123456789abcdef0123456789abcdef-00001.avro",
            "-g1-c00000000000000000001-0123456789abcdef0123456789abcdef-00001.parquet",
        ] {
            assert_eq!(parse_writer(other), None, "{other}");
        }
    }

    /// A data file key of job `j` in table `t`.
    fn key(generation: u64, checkpoint: u64) -> String {
        format!(
            "wh/ns/t/data/day=2025-03-03/j-g{generation}-c{checkpoint:020}-0123456789abcdef0123456789abcdef-00000.parquet"
        )
    }

    /// One case: the file, what was read, the decision.
    fn check(file: (u64, u64), referenced: bool, pending: bool, want: Decision) {
        let job = JobId::new("j").unwrap();
        let k = key(file.0, file.1);
        let referenced: HashSet<String> = if referenced {
            [k.clone()].into()
        } else {
            HashSet::new()
        };
        let pending: HashSet<String> = if pending {
            [k.clone()].into()
        } else {
            HashSet::new()
        };
        // The log: checkpoints 9 and 10 completed by generation 4, claims of generations 5
        // and 6 at 11 and 12 (a crash loop); this process is generation 6, resumed from 11.
        let entries = BTreeMap::from([
            (CheckpointId(9), Generation(4)),
            (CheckpointId(10), Generation(4)),
            (CheckpointId(11), Generation(5)),
            (CheckpointId(12), Generation(6)),
        ]);
        let knowledge = Knowledge {
            job: &job,
            ours: Generation(6),
            head: CheckpointId(11),
            referenced: &referenced,
            pending: &pending,
            entries: &entries,
        };
        assert_eq!(
            judge(&k, &knowledge),
            want,
            "file {file:?} referenced {} pending {}",
            !referenced.is_empty(),
            !pending.is_empty()
        );
    }

    #[test]
    fn the_name_and_the_log_only_nominate() {
        use Decision::{Delete as D, Keep as K};
        // Nominated by name and log: never completed (beyond the head, no entry) or superseded.
        check((5, 13), false, false, D(Delete::NeverCompleted));
        check(
            (3, 11),
            false,
            false,
            D(Delete::Superseded {
                entry_generation: Generation(5),
            }),
        );
        // The restart-loop trial (issue 13, finding 1): claims of failed starts took the ids of
        // checkpoints the table holds; their files look superseded but a snapshot references
        // them. And files of a checkpoint the log never saw (an older copy of the store was
        // restored) but the table holds.
        check((3, 11), true, false, K(Keep::Referenced));
        check((2, 40), true, false, K(Keep::Referenced));
        // Listed by a retained checkpoint, whatever the log says about the name.
        check((3, 11), false, true, K(Keep::Pending));
        check((5, 13), false, true, K(Keep::Pending));
        // The log alone keeps: completed by its writer, pruned after commit, in flight.
        check((4, 10), false, false, K(Keep::Completed));
        check((2, 3), false, false, K(Keep::Pruned));
        check((6, 13), false, false, K(Keep::CurrentGeneration));
        check((7, 14), false, false, K(Keep::CurrentGeneration));
    }

    #[test]
    fn only_plain_names_of_this_job_are_candidates() {
        let job = JobId::new("j").unwrap();
        let none = HashSet::new();
        let entries = BTreeMap::new();
        let k = Knowledge {
            job: &job,
            ours: Generation(6),
            head: CheckpointId(1),
            referenced: &none,
            pending: &none,
            entries: &entries,
        };
        let spark = "wh/ns/t/data/00000-0-45268d71-54eb-476c-b42c-942d880c04a1-00001.parquet";
        let other = key(1, 5).replace("/j-g", "/k-g");
        let odd = key(1, 5).replace("day=", "day%3D");
        assert_eq!(judge(spark, &k), Decision::Keep(Keep::NotThisJobs));
        assert_eq!(judge(&other, &k), Decision::Keep(Keep::NotThisJobs));
        assert_eq!(judge(&odd, &k), Decision::Keep(Keep::UnusualName));
        assert_eq!(
            judge(&key(1, 5), &k),
            Decision::Delete(Delete::NeverCompleted)
        );
    }

    #[test]
    fn an_unreadable_manifest_blocks_cleanup_until_every_table_holds_it() {
        let pending = Pending {
            unreadable: vec![CheckpointId(7)],
            ..Pending::default()
        };
        let t = |n: &str| TableIdent::from_strs(["ns", n]).unwrap();
        let all = [
            (t("a"), Some(CheckpointId(7))),
            (t("b"), Some(CheckpointId(9))),
        ];
        assert_eq!(may_clean(&pending, &all), Ok(()));
        let behind = [
            (t("a"), Some(CheckpointId(7))),
            (t("b"), Some(CheckpointId(6))),
        ];
        let e = may_clean(&pending, &behind).unwrap_err();
        assert!(e.contains("checkpoint 7") && e.contains("ns.b"), "{e}");
        let empty = [(t("a"), None)];
        assert!(may_clean(&pending, &empty).is_err());
        assert_eq!(may_clean(&Pending::default(), &empty), Ok(()));
    }
}
