//! Orphan data files: Parquet files written by an attempt that never completed its checkpoint.
//!
//! A data file is named `<job>-g<generation>-c<checkpoint:020>-<uuid>-NNNNN.parquet`, so the
//! file itself says which attempt wrote it. At recovery, with the log in hand, a file of this
//! job is an orphan when it was written by an older generation for a checkpoint that generation
//! never completed: the log has no entry for it beyond the head, or the entry there belongs to
//! another generation (the claim of a newer one, or a winner of a race). Files of completed
//! checkpoints are never touched, nor files of other writers (Spark compaction, other jobs).

use std::sync::Arc;

use futures::TryStreamExt;
use iceberg::table::Table;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::checkpoint::log::CheckpointLog;
use crate::config::Config;
use crate::ids::{CheckpointId, Generation, JobId};

/// Most objects listed per table in one cleanup pass.
pub const LIST_FILES_MAX: usize = 1_000_000;

/// Reads the attempt out of a data file name written by `job`.
pub fn parse_name(job: &JobId, file_name: &str) -> Option<(Generation, CheckpointId)> {
    let rest = file_name.strip_prefix(job.as_str())?.strip_prefix("-g")?;
    let (generation, rest) = rest.split_once("-c")?;
    let checkpoint = rest.get(..20)?;
    if !rest.ends_with(".parquet") {
        return None;
    }
    Some((
        Generation(generation.parse().ok()?),
        CheckpointId(checkpoint.parse().ok()?),
    ))
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

/// Decides whether a file written by `(generation, checkpoint)` is an orphan, given this
/// process's generation, the log head it resumed from, and the generation of the log entry at
/// `checkpoint` if there is one.
pub fn is_orphan(
    file: (Generation, CheckpointId),
    ours: Generation,
    head: CheckpointId,
    entry_generation: Option<Generation>,
) -> bool {
    let (generation, checkpoint) = file;
    if generation >= ours {
        return false;
    }
    match entry_generation {
        Some(g) => g != generation,
        None => checkpoint > head,
    }
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

/// Deletes this job's orphan files in `tables`; returns how many were deleted.
pub async fn clean(
    store: &dyn ObjectStore,
    log: &CheckpointLog,
    tables: &[Table],
    ours: Generation,
    head: CheckpointId,
) -> Result<usize, String> {
    let job = log.job().clone();
    let mut deleted = 0;
    let mut entry_gens: std::collections::HashMap<CheckpointId, Option<Generation>> =
        std::collections::HashMap::new();
    for table in tables {
        let Some(dir) = data_dir(table) else { continue };
        let mut stream = store.list(Some(&dir));
        let mut seen = 0;
        while let Some(meta) = stream.try_next().await.map_err(|e| e.to_string())? {
            seen += 1;
            if seen > LIST_FILES_MAX {
                tracing::warn!(table = %table.identifier(), "orphan scan stopped at {LIST_FILES_MAX} files");
                break;
            }
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let Some((g, c)) = parse_name(&job, name) else {
                continue;
            };
            let entry_gen = match entry_gens.get(&c) {
                Some(e) => *e,
                None => {
                    let e = log
                        .entry(c)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|e| e.generation);
                    entry_gens.insert(c, e);
                    e
                }
            };
            if is_orphan((g, c), ours, head, entry_gen) {
                store
                    .delete(&meta.location)
                    .await
                    .map_err(|e| e.to_string())?;
                deleted += 1;
                tracing::info!(file = %meta.location, generation = %g, checkpoint = %c, "orphan data file deleted");
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn orphan_rule() {
        let (ours, head) = (Generation(5), CheckpointId(10));
        // Written by an older generation for a checkpoint that was never completed.
        assert!(is_orphan(
            (Generation(4), CheckpointId(11)),
            ours,
            head,
            None
        ));
        // The entry at that id belongs to someone else (our claim).
        assert!(is_orphan(
            (Generation(4), CheckpointId(11)),
            ours,
            head,
            Some(Generation(5))
        ));
        // Completed by its writer: referenced, keep.
        assert!(!is_orphan(
            (Generation(4), CheckpointId(9)),
            ours,
            head,
            Some(Generation(4))
        ));
        // Pruned entry at or below the head: it was committed, keep.
        assert!(!is_orphan(
            (Generation(2), CheckpointId(3)),
            ours,
            head,
            None
        ));
        // Our own or a newer generation's files: never.
        assert!(!is_orphan(
            (Generation(5), CheckpointId(12)),
            ours,
            head,
            None
        ));
        assert!(!is_orphan(
            (Generation(6), CheckpointId(12)),
            ours,
            head,
            None
        ));
    }
}
