//! Every file a table's metadata still references: the current `metadata.json` and the previous
//! ones in its metadata log, statistics files, and for each retained snapshot its manifest list,
//! the manifests in it and every data or delete file they list (whatever the entry's status).
//!
//! Paths are kept as object keys (the URL's path without its leading `/`), the form an
//! `object_store` listing of the warehouse returns; see [`object_key`].

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use iceberg::table::Table;

/// How much [`collect`] may read for one table; beyond it, it refuses (a partial reference set
/// would make referenced files look orphaned), and the caller deletes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most distinct manifests read.
    pub manifests_max: usize,
    /// Most referenced files collected (about 200 bytes of memory each).
    pub files_max: usize,
}

/// `recon-pipeline maintain`'s limits: a run of its own, so it may read a large table whole.
pub const MAINTAIN_LIMITS: Limits = Limits {
    manifests_max: 1_000_000,
    files_max: 20_000_000,
};
/// Manifests read at once.
const READS_IN_FLIGHT: usize = 16;

/// The object key of a file URI: `s3://bucket/a/b.parquet` -> `a/b.parquet`,
/// `file:///tmp/w/b.parquet` -> `tmp/w/b.parquet`. `None` for something that is not a URL.
pub fn object_key(uri: &str) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    Some(url.path().trim_start_matches('/').to_string())
}

/// Why the reference set could not be built. The sweep deletes nothing then.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Reading a manifest list or manifest failed.
    #[error(
        "cannot read {what}: {source}; no file is deleted while the reference set is incomplete"
    )]
    Read {
        /// The file.
        what: String,
        /// Cause.
        #[source]
        source: iceberg::Error,
    },
    /// A limit was reached.
    #[error("{0}; no file is deleted while the reference set is incomplete")]
    TooMany(String),
    /// A referenced path is not a URL.
    #[error("referenced path {0:?} is not a URL; refusing to guess which object it is")]
    NotAUrl(String),
}

/// Files referenced by a table.
#[derive(Debug)]
pub struct References {
    /// Object keys.
    pub keys: HashSet<String>,
    /// Manifests read.
    pub manifests: usize,
    files_max: usize,
}

impl References {
    fn add(&mut self, uri: &str) -> Result<(), ReferenceError> {
        let key = object_key(uri).ok_or_else(|| ReferenceError::NotAUrl(uri.to_string()))?;
        self.keys.insert(key);
        if self.keys.len() > self.files_max {
            return Err(ReferenceError::TooMany(format!(
                "more than {} referenced files",
                self.files_max
            )));
        }
        Ok(())
    }
}

/// Collects every file `table` references, ignoring the snapshots in `expiring` (a dry run
/// passes the snapshots it would expire; a real run reloads the table after expiring instead).
/// Every snapshot still in the metadata counts, not only the current one's ancestry: a
/// rolled-back or branched snapshot may become current again.
pub async fn collect(
    table: &Table,
    expiring: &HashSet<i64>,
    limits: Limits,
) -> Result<References, ReferenceError> {
    let md = table.metadata();
    let mut refs = References {
        keys: HashSet::new(),
        manifests: 0,
        files_max: limits.files_max,
    };
    if let Some(loc) = table.metadata_location() {
        refs.add(loc)?;
    }
    for entry in md.metadata_log() {
        refs.add(&entry.metadata_file)?;
    }
    for s in md.statistics_iter() {
        refs.add(&s.statistics_path)?;
    }
    for s in md.partition_statistics_iter() {
        refs.add(&s.statistics_path)?;
    }
    let snapshots: Vec<_> = md
        .snapshots()
        .filter(|s| !expiring.contains(&s.snapshot_id()))
        .cloned()
        .collect();
    let mut manifests = Vec::new();
    let mut seen = HashSet::new();
    for s in &snapshots {
        refs.add(s.manifest_list())?;
    }
    // Manifest lists are read like manifests, several at once: a table keeps one per snapshot.
    let mut lists = futures::stream::iter(snapshots.iter().map(|s| async move {
        table
            .manifest_list_reader(s)
            .load()
            .await
            .map_err(|source| ReferenceError::Read {
                what: format!("manifest list {}", s.manifest_list()),
                source,
            })
    }))
    .buffer_unordered(READS_IN_FLIGHT);
    while let Some(list) = lists.try_next().await? {
        for m in list.entries() {
            if seen.insert(m.manifest_path.clone()) {
                manifests.push(m.clone());
                if manifests.len() > limits.manifests_max {
                    return Err(ReferenceError::TooMany(format!(
                        "table {} has more than {} manifests (rewrite manifests first)",
                        table.identifier(),
                        limits.manifests_max
                    )));
                }
            }
        }
    }
    refs.manifests = manifests.len();
    let file_io = table.file_io();
    let mut loaded = futures::stream::iter(manifests.iter().map(|m| async move {
        m.load_manifest(file_io)
            .await
            .map(|manifest| (m.manifest_path.as_str(), manifest))
            .map_err(|source| ReferenceError::Read {
                what: format!("manifest {}", m.manifest_path),
                source,
            })
    }))
    .buffer_unordered(READS_IN_FLIGHT);
    while let Some((path, manifest)) = loaded.try_next().await? {
        refs.add(path)?;
        for e in manifest.entries() {
            refs.add(e.file_path())?;
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_drop_scheme_and_bucket() {
        assert_eq!(
            object_key("s3://wh/p/ns/t/data/a.parquet").as_deref(),
            Some("p/ns/t/data/a.parquet")
        );
        assert_eq!(
            object_key("file:///tmp/w/ns/t/metadata/00001-x.metadata.json").as_deref(),
            Some("tmp/w/ns/t/metadata/00001-x.metadata.json")
        );
        assert_eq!(object_key("relative/path"), None);
    }
}
