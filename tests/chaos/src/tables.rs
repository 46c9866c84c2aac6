//! Direct (unfaulted) access to a scenario's Iceberg tables: where each table's metadata is, the
//! job's marks and stamped snapshots, and moving a table's `main` branch to another snapshot the
//! way an operator's rollback does (then forward again), through the SQL catalog.
//!
//! iceberg-rust 0.10 has no public action that sets a snapshot reference, so a move does what the
//! SQL catalog's own `update_table` does: write the next metadata file (built with iceberg's
//! `TableMetadataBuilder::set_ref`) and swap the catalog row's `metadata_location`
//! compare-and-set.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, bail, ensure};
use iceberg::spec::{SnapshotReference, SnapshotRetention, TableMetadataBuilder};
use iceberg::{Catalog, MetadataLocation, NamespaceIdent, TableIdent};
use recon_pipeline::checkpoint::protocol::{PROP_CHECKPOINT_ID, PROP_JOB_ID, marker_property};
use recon_pipeline::config::Config;
use recon_pipeline::lakehouse;

/// What one table looks like from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableState {
    /// The catalog's metadata location (changes with every commit).
    pub metadata_location: String,
    /// `main`'s snapshot.
    pub current_snapshot: Option<i64>,
    /// Every table property named `recon.marker.*` (each job's newest stamp).
    pub markers: BTreeMap<String, String>,
    /// Snapshots in the metadata.
    pub snapshots: usize,
}

async fn open(verify_config: &Path) -> anyhow::Result<(Config, std::sync::Arc<dyn Catalog>)> {
    let cfg = Config::load(Some(verify_config))?;
    let c = lakehouse::open_catalog(&cfg)
        .await
        .context("opening the catalog")?;
    Ok((cfg, c))
}

/// Every table of the job's namespace, by name (empty before the job created them).
pub async fn states(verify_config: &Path) -> anyhow::Result<BTreeMap<String, TableState>> {
    let (cfg, c) = open(verify_config).await?;
    let ns = NamespaceIdent::new(cfg.catalog.namespace.clone());
    if !c.namespace_exists(&ns).await? {
        return Ok(BTreeMap::new());
    }
    let mut out = BTreeMap::new();
    for ident in c.list_tables(&ns).await? {
        let t = c.load_table(&ident).await?;
        let md = t.metadata();
        out.insert(
            ident.name().to_string(),
            TableState {
                metadata_location: t.metadata_location().unwrap_or_default().to_string(),
                current_snapshot: md.current_snapshot_id(),
                markers: md
                    .properties()
                    .iter()
                    .filter(|(k, _)| k.starts_with("recon.marker."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                snapshots: md.snapshots().count(),
            },
        );
    }
    Ok(out)
}

/// The checkpoint the job's marker property on `table` names (`<generation>:<checkpoint>`).
pub async fn marker_checkpoint(verify_config: &Path, table: &str) -> anyhow::Result<Option<u64>> {
    let (cfg, c) = open(verify_config).await?;
    let t = c.load_table(&lakehouse::table_ident(&cfg, table)).await?;
    let key = marker_property(&cfg.job_id);
    Ok(t.metadata()
        .properties()
        .get(&key)
        .and_then(|v| v.split(':').nth(1))
        .and_then(|n| n.parse().ok()))
}

/// Snapshots of `table`'s `main` ancestry stamped by the job, newest first:
/// `(snapshot id, checkpoint id)`.
pub async fn stamped_ancestry(
    verify_config: &Path,
    table: &str,
) -> anyhow::Result<Vec<(i64, u64)>> {
    let (cfg, c) = open(verify_config).await?;
    let t = c.load_table(&lakehouse::table_ident(&cfg, table)).await?;
    let md = t.metadata();
    let job = cfg.job_id.to_string();
    let mut out = Vec::new();
    let mut at = md.current_snapshot_id();
    // The ancestry is finite; the bound guards a corrupt parent chain.
    for _ in 0..100_000 {
        let Some(id) = at else { break };
        let Some(s) = md.snapshot_by_id(id) else {
            break;
        };
        let props = &s.summary().additional_properties;
        if props.get(PROP_JOB_ID) == Some(&job)
            && let Some(cp) = props.get(PROP_CHECKPOINT_ID).and_then(|v| v.parse().ok())
        {
            out.push((id, cp));
        }
        at = s.parent_snapshot_id();
    }
    Ok(out)
}

/// Points `table`'s `main` branch at `snapshot_id` (an older one: a rollback; the newer one
/// again: rolling forward), as one compare-and-set of the catalog row.
pub async fn set_main(verify_config: &Path, table: &str, snapshot_id: i64) -> anyhow::Result<()> {
    let (cfg, c) = open(verify_config).await?;
    let ident: TableIdent = lakehouse::table_ident(&cfg, table);
    let t = c.load_table(&ident).await?;
    let current = t
        .metadata_location()
        .context("the table has no metadata location")?
        .to_string();
    ensure!(
        t.metadata().snapshot_by_id(snapshot_id).is_some(),
        "{table} has no snapshot {snapshot_id}"
    );
    let next = MetadataLocation::from_str(&current)?.with_next_version();
    let md = TableMetadataBuilder::new_from_metadata(t.metadata().clone(), Some(current.clone()))
        .set_ref(
            "main",
            SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
        )?
        .build()?
        .metadata;
    md.write_to(t.file_io(), &next).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&cfg.catalog.uri)
        .await
        .context("connecting to the catalog database")?;
    let r = sqlx::query(
        "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
         WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 \
         AND metadata_location = $2",
    )
    .bind(next.to_string())
    .bind(&current)
    .bind(&cfg.catalog.name)
    .bind(&cfg.catalog.namespace)
    .bind(table)
    .execute(&pool)
    .await?;
    pool.close().await;
    if r.rows_affected() != 1 {
        bail!("the catalog row of {table} moved while its main branch was being set");
    }
    Ok(())
}

/// Drops every table of the job's namespace and the namespace (clean-up; the files are deleted
/// with the prefixes).
pub async fn drop_namespace(verify_config: &Path) -> anyhow::Result<()> {
    let (cfg, c) = open(verify_config).await?;
    let ns = NamespaceIdent::new(cfg.catalog.namespace.clone());
    if !c.namespace_exists(&ns).await? {
        return Ok(());
    }
    for ident in c.list_tables(&ns).await? {
        c.drop_table(&ident).await?;
    }
    c.drop_namespace(&ns).await?;
    Ok(())
}
