//! Direct (unfaulted) access to a scenario's storage: its checkpoint log's head, and clean-up.

use std::collections::BTreeMap;
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
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
