//! Direct (unfaulted) access to a scenario's storage: its checkpoint log's head and entries, listings
//! and copies of its prefixes (a backup and its restore), and clean-up.

use std::collections::BTreeMap;
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::config::Config;

use crate::services::Endpoints;

/// The newest log entry's cut: partition -> next offset to read.
pub async fn head_cut(verify_config: &Path) -> anyhow::Result<BTreeMap<i32, i64>> {
    let cfg = Config::load(Some(verify_config))?;
    let (store, prefix) = recon_pipeline::checkpoint::store::open(&cfg)?;
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let ids = log.ids_after(None).await?;
    for id in ids.iter().rev() {
        if let Some(c) = log.completed(*id).await? {
            return Ok(c
                .manifest
                .partitions
                .iter()
                .map(|(p, cut)| (p.0, cut.end.0))
                .collect());
        }
    }
    Ok(BTreeMap::new())
}

/// Completed entries of the job's checkpoint log: `(id, is a barrier checkpoint, sum of the
/// cut's offsets)`, oldest first.
pub async fn log_entries(verify_config: &Path) -> anyhow::Result<Vec<(u64, bool, i64)>> {
    use recon_pipeline::checkpoint::manifest::EntryKind;
    let cfg = Config::load(Some(verify_config))?;
    let (store, prefix) = recon_pipeline::checkpoint::store::open(&cfg)?;
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let mut out = Vec::new();
    for id in log.ids_after(None).await? {
        if let Some(c) = log.completed(id).await? {
            let cut: i64 = c.manifest.partitions.values().map(|p| p.end.0).sum();
            out.push((id.0, matches!(c.entry.kind, EntryKind::Checkpoint), cut));
        }
    }
    Ok(out)
}

/// Deletes every object under `prefix/` in `bucket` (the S3 server keeps objects in memory).
pub async fn delete_prefix(ep: &Endpoints, bucket: &str, prefix: &str) -> anyhow::Result<u64> {
    let s3 = AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{}", ep.s3_port))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region(&ep.s3_region)
        .with_access_key_id(&ep.s3_key)
        .with_secret_access_key(&ep.s3_secret)
        .with_bucket_name(bucket)
        .build()?;
    let p = object_store::path::Path::from(prefix);
    let paths: Vec<_> = s3
        .list(Some(&p))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    let n = paths.len() as u64;
    let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
    let _: Vec<_> = s3.delete_stream(stream).try_collect().await?;
    Ok(n)
}

/// A direct (unfaulted) client of `bucket` on the scenario's S3.
pub fn client(ep: &Endpoints, bucket: &str) -> anyhow::Result<object_store::aws::AmazonS3> {
    Ok(AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{}", ep.s3_port))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region(&ep.s3_region)
        .with_access_key_id(&ep.s3_key)
        .with_secret_access_key(&ep.s3_secret)
        .with_bucket_name(bucket)
        .build()?)
}

/// One object as listed: size, ETag and last-modified time (an overwrite changes the latter even
/// with the same bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Bytes.
    pub size: u64,
    /// ETag, when the server gives one.
    pub e_tag: Option<String>,
    /// Last modified.
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// Every object under `prefix/` in `bucket`, by path.
pub async fn list(
    ep: &Endpoints,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, ObjectMeta>> {
    let s3 = client(ep, bucket)?;
    let p = object_store::path::Path::from(prefix);
    let metas: Vec<_> = s3.list(Some(&p)).try_collect().await?;
    Ok(metas
        .into_iter()
        .map(|m| {
            (
                m.location.to_string(),
                ObjectMeta {
                    size: m.size,
                    e_tag: m.e_tag,
                    modified: m.last_modified,
                },
            )
        })
        .collect())
}

/// A copy of every object under `prefix/` in `bucket` (what a backup of the store holds).
pub async fn copy_prefix(
    ep: &Endpoints,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, bytes::Bytes>> {
    let s3 = client(ep, bucket)?;
    let mut out = BTreeMap::new();
    for path in list(ep, bucket, prefix).await?.into_keys() {
        out.insert(path.clone(), get(&s3, &path).await?);
    }
    Ok(out)
}

/// Makes `prefix/` in `bucket` hold exactly `copy` (objects not in it are deleted): a restore
/// from a backup.
pub async fn restore_prefix(
    ep: &Endpoints,
    bucket: &str,
    prefix: &str,
    copy: &BTreeMap<String, bytes::Bytes>,
) -> anyhow::Result<()> {
    let s3 = client(ep, bucket)?;
    for path in list(ep, bucket, prefix).await?.into_keys() {
        if !copy.contains_key(&path) {
            s3.delete(&object_store::path::Path::from(path.as_str()))
                .await?;
        }
    }
    for (path, data) in copy {
        put(&s3, path, data.clone()).await?;
    }
    Ok(())
}

/// Reads one object.
pub async fn get(s3: &dyn ObjectStore, path: &str) -> anyhow::Result<bytes::Bytes> {
    use anyhow::Context;
    Ok(s3
        .get(&object_store::path::Path::from(path))
        .await
        .with_context(|| format!("reading {path}"))?
        .bytes()
        .await?)
}

/// Writes one object.
pub async fn put(s3: &dyn ObjectStore, path: &str, data: bytes::Bytes) -> anyhow::Result<()> {
    s3.put(&object_store::path::Path::from(path), data.into())
        .await?;
    Ok(())
}

/// The data files the newest log entry's manifest lists as pending: `(table, file path)`.
pub async fn head_pending(verify_config: &Path) -> anyhow::Result<(u64, Vec<(String, String)>)> {
    let cfg = Config::load(Some(verify_config))?;
    let (store, prefix) = recon_pipeline::checkpoint::store::open(&cfg)?;
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let Some(head) = log.head().await? else {
        return Ok((0, Vec::new()));
    };
    let mut out = Vec::new();
    for (table, p) in &head.manifest.pending {
        for f in &p.files {
            let v: serde_json::Value = serde_json::from_str(f)?;
            if let Some(path) = v.get("file_path").and_then(|p| p.as_str()) {
                out.push((table.clone(), path.to_string()));
            }
        }
    }
    Ok((head.entry.checkpoint_id.0, out))
}

/// Deletes these objects of `bucket`.
pub async fn delete_paths(ep: &Endpoints, bucket: &str, paths: &[String]) -> anyhow::Result<()> {
    let s3 = client(ep, bucket)?;
    for p in paths {
        s3.delete(&object_store::path::Path::from(p.as_str()))
            .await?;
    }
    Ok(())
}
