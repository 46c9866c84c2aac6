//! Recovery: claim a generation, publish what the newest checkpoint left pending, restore
//! state and offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use recon_schemas::decode::Limits;
use recon_schemas::tables::TableName;

use crate::checkpoint::commit::Committer;
use crate::checkpoint::log::{CheckpointLog, CommitPermit};
use crate::checkpoint::manifest::{EntryKind, LastRecord, PartitionCut};
use crate::checkpoint::presence::ObjectStoreSizes;
use crate::checkpoint::publish::Publisher;
use crate::config::Config;
use crate::ids::{CheckpointId, Offset, PartitionId};
use crate::lakehouse::{self, LakehouseError};
use crate::orphans;
use crate::sink::writer::TableTarget;
use crate::sink::{Output, Sink};
use crate::source::identity::{self, Verdict};
use crate::source::{self, SourceError, probe};
use crate::state::{State, codec};

use super::{Job, JobEnv, JobError, RunReport};

/// Partitions this instance owns: the configured ones, or every partition of the topic.
pub(crate) fn owned_partitions(cfg: &Config) -> Result<Vec<PartitionId>, JobError> {
    let all = source::topic_partitions(&cfg.source)?;
    if cfg.source.partitions.is_empty() {
        return Ok(all);
    }
    let mut owned = Vec::new();
    for p in &cfg.source.partitions {
        if !all.contains(&PartitionId(*p)) {
            return Err(JobError::Config(format!(
                "source.partitions names partition {p}, but topic {} has partitions {:?}",
                cfg.source.topic,
                all.iter().map(|p| p.0).collect::<Vec<_>>()
            )));
        }
        owned.push(PartitionId(*p));
    }
    Ok(owned)
}

/// Saved positions as the identity check sees them: per partition, next offset and last
/// consumed record.
pub(super) type Positions = BTreeMap<PartitionId, (Offset, Option<LastRecord>)>;

/// The part of `cuts` the identity check looks at.
pub(super) fn positions(cuts: &BTreeMap<PartitionId, PartitionCut>) -> Positions {
    cuts.iter().map(|(p, c)| (*p, (c.end, c.last))).collect()
}

/// Checks the topic against the newest checkpoint's positions without claiming anything.
/// Returns the positions it verified (empty for a job that never checkpointed).
pub(super) async fn verify_head_input(
    cfg: &Config,
    env: &JobEnv,
    owned: &[PartitionId],
) -> Result<Positions, JobError> {
    let log = CheckpointLog::new(env.store.clone(), &env.store_prefix, cfg.job_id.clone());
    let Some(head) = log.head().await? else {
        return Ok(Positions::new());
    };
    verify_input(
        cfg,
        head.entry.checkpoint_id,
        &head.manifest.partitions,
        owned,
    )
    .await?;
    Ok(positions(&head.manifest.partitions))
}

/// Stops with [`SourceError::NotTheSavedInput`] unless every saved position of an owned
/// partition still refers to the records checkpoint `checkpoint` consumed; warns about the
/// ones that cannot be verified (older checkpoint format, retention).
pub(super) async fn verify_input(
    cfg: &Config,
    checkpoint: CheckpointId,
    cuts: &BTreeMap<PartitionId, PartitionCut>,
    owned: &[PartitionId],
) -> Result<(), JobError> {
    // With every partition owned (the default), a saved partition the topic lost is checked
    // too; with an explicit list, only the listed ones are this instance's business.
    let all = cfg.source.partitions.is_empty();
    let saved: BTreeMap<PartitionId, PartitionCut> = cuts
        .iter()
        .filter(|(p, _)| all || owned.contains(p))
        .map(|(p, c)| (*p, *c))
        .collect();
    if saved.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let source = cfg.source.clone();
    let group = format!("recon-{}-identity", cfg.job_id);
    let probe_saved = saved.clone();
    let seen = tokio::task::spawn_blocking(move || probe::observe(&source, &group, &probe_saved))
        .await
        .map_err(|e| JobError::Panicked {
            what: "the topic identity check".into(),
            message: e.to_string(),
        })??;
    let mut stops = Vec::new();
    let (mut verified, mut unverified) = (0u32, 0u32);
    for (p, cut) in &saved {
        let Some(s) = seen.get(p) else {
            return Err(JobError::IdentityIncomplete { partition: *p });
        };
        match identity::judge(cut, s) {
            Verdict::NothingConsumed => {}
            Verdict::Verified => verified += 1,
            Verdict::Unverified(why) => {
                unverified += 1;
                tracing::warn!(topic = %cfg.source.topic, partition = p.0, "input not verified: {why}");
            }
            Verdict::Stop(m) => stops.push((*p, m)),
        }
    }
    if !stops.is_empty() {
        let message = identity::stop_message(&cfg.source.topic, checkpoint.0, &stops);
        tracing::error!(topic = %cfg.source.topic, checkpoint = %checkpoint, "{message}");
        return Err(SourceError::NotTheSavedInput { message }.into());
    }
    tracing::info!(topic = %cfg.source.topic, checkpoint = %checkpoint, verified, unverified,
        duration_ms = started.elapsed().as_millis() as u64, "input identity checked");
    Ok(())
}

/// Claims counted back from the head before giving up counting (a bound on reads at start).
const CLAIMS_COUNTED_MAX: usize = 64;
/// From this many claims in a row without a checkpoint, the start warns.
const CLAIMS_WARN_FROM: u64 = 5;

/// Counts the generation claims at the log head with no checkpoint between them: a crash loop
/// that gets past the claim adds one entry per start (pruned after the next commit). Sets
/// `recon_log_consecutive_claims` and warns from [`CLAIMS_WARN_FROM`].
async fn claims_in_a_row(log: &CheckpointLog) -> Result<(), JobError> {
    let ids = log.ids_after(None).await?;
    let mut n = 0u64;
    for id in ids.iter().rev().take(CLAIMS_COUNTED_MAX) {
        match log.entry(*id).await? {
            Some(e) if matches!(e.kind, EntryKind::GenerationStart { .. }) => n += 1,
            _ => break,
        }
    }
    crate::telemetry::consecutive_claims(n);
    if n >= CLAIMS_WARN_FROM {
        tracing::warn!(
            claims = n,
            "the checkpoint log ends in {n} generation claims without a checkpoint: the job keeps starting and dying before its first checkpoint (crash loop?); each start adds one entry, pruned after the next commit"
        );
    }
    Ok(())
}

/// Read-only pre-flight, before claiming: every pending file of every table (the files of the
/// checkpoints each table lacks up to the head) exists with its recorded size. A missing one
/// stops the start with [`PendingFileError::Missing`](crate::checkpoint::presence::PendingFileError)
/// before anything is written (no claim, no orphan deletion, no commit). Publishing checks
/// again after the claim (another instance may have completed more meanwhile).
pub(crate) async fn verify_pending_files(cfg: &Config, env: &JobEnv) -> Result<(), JobError> {
    let log = CheckpointLog::new(env.store.clone(), &env.store_prefix, cfg.job_id.clone());
    let Some(head) = log.head().await? else {
        return Ok(());
    };
    let warehouse = orphans::warehouse_store(cfg).map_err(|e| JobError::Warehouse {
        warehouse: cfg.catalog.warehouse.clone(),
        message: e.to_string(),
    })?;
    // The generation a claim would take: only compared with the tables' stamps, never written.
    let (_, generation) = crate::checkpoint::protocol::claim(Some(&head.entry));
    let committer = Committer::read_only(
        env.catalog.clone(),
        cfg.job_id.clone(),
        generation,
        cfg.commit.attempts_max,
        Duration::from_millis(cfg.commit.timeout_ms),
    );
    let mut tables = Vec::new();
    for name in crate::maintain::TABLES {
        let ident = lakehouse::table_ident(cfg, name);
        match env.catalog.load_table(&ident).await {
            Ok(t) => tables.push(t),
            // No table yet: nothing of it can be pending.
            Err(_) if !env.catalog.table_exists(&ident).await.unwrap_or(true) => {}
            Err(source) => {
                return Err(LakehouseError::Catalog {
                    op: "load_table",
                    what: ident.to_string(),
                    source,
                }
                .into());
            }
        }
    }
    let uncommitted = BTreeMap::new();
    let sizes = ObjectStoreSizes(warehouse);
    let publisher = Publisher::new(&committer, &log, &uncommitted, Some(&sizes));
    publisher
        .check_pending(&tables, head.entry.checkpoint_id)
        .await?;
    Ok(())
}

/// The committer of the claimed generation with the configured attempts and timeout.
fn committer(cfg: &Config, env: &JobEnv, permit: &CommitPermit) -> Committer {
    Committer::new(
        env.catalog.clone(),
        permit,
        cfg.commit.attempts_max,
        Duration::from_millis(cfg.commit.timeout_ms),
    )
}

/// Claims a generation and brings tables, state and offsets to the newest checkpoint; returns
/// the job and the cleanup its start owes.
pub(super) async fn recover(
    cfg: &Config,
    env: &JobEnv,
    partitions: &[PartitionId],
) -> Result<(Job, Cleanup), JobError> {
    let log = CheckpointLog::new(env.store.clone(), &env.store_prefix, cfg.job_id.clone());
    // Nothing is written before every check passed (the caller ran the pre-flight); the
    // head's state files are checked against their checksums here, still before the claim, so a
    // mismatch stops every start the same way.
    let head_state = match log.head().await? {
        Some(h) => Some((
            h.manifest.state_chain.clone(),
            log.read_state_chain(&h.manifest).await?,
        )),
        None => None,
    };
    let claimed = log.claim(None).await?;
    let generation = claimed.entry.generation;
    tracing::info!(generation = %generation, checkpoint = %claimed.entry.checkpoint_id, kind = ?claimed.entry.kind, "generation claimed");
    let resumed = match claimed.entry.kind {
        EntryKind::GenerationStart { resumes } => resumes,
        _ => claimed
            .entry
            .checkpoint_id
            .0
            .checked_sub(1)
            .map(CheckpointId),
    };
    // Again against the claim: another instance may have moved between the pre-flight and
    // the claim. A refusal here still publishes and deletes nothing.
    if env.fleet.is_none() {
        super::preflight::after_claim(cfg, env.catalog.as_ref(), &log, generation, resumed).await?;
    }
    claims_in_a_row(&log).await?;
    let committer = committer(cfg, env, &claimed.permit);
    let mut targets = BTreeMap::new();
    for output in Output::ALL {
        let ident = lakehouse::table_ident(cfg, output.table());
        let table = lakehouse::load_table(env.catalog.as_ref(), &ident).await?;
        let target = TableTarget::new(table, cfg.sink.zstd_level, cfg.sink.file_size_bytes_target)
            .map_err(|source| LakehouseError::Catalog {
                op: "prepare writers",
                what: ident.to_string(),
                source,
            })?;
        targets.insert(output, target);
    }
    let sink = Sink::new(cfg.job_id.clone(), generation, cfg.sink.batch_rows, targets);

    // Pending files are checked against the warehouse before every commit.
    let warehouse = orphans::warehouse_store(cfg).map_err(|e| JobError::Warehouse {
        warehouse: cfg.catalog.warehouse.clone(),
        message: e.to_string(),
    })?;
    let mut state = State::default();
    // Each file checked against the checksum its checkpoint recorded (LogError::StateChecksum).
    let chain = match head_state {
        Some((paths, files)) if paths == claimed.manifest.state_chain => files,
        _ => log.read_state_chain(&claimed.manifest).await?,
    };
    codec::restore_chain(&mut state, &chain)?;

    if let Some(h) = claimed.manifest.high_water_us {
        state.raise_high_water(h);
    }
    for (p, t) in &claimed.manifest.partition_event_time_us {
        state.raise_partition_high(*p, *t);
    }
    if let Some(w) = claimed.manifest.watermark_us {
        state.raise_watermark(w);
    }
    state.set_partitions(&partitions.iter().map(|p| p.0).collect::<Vec<_>>());
    let evict = evict_policy(cfg);
    state.set_horizon(evict.horizon_us);
    let cold = if evict.enabled()
        || !claimed.manifest.cold_runs.is_empty()
        || !claimed.manifest.cold_retired.is_empty()
    {
        let dir = cold_dir(cfg);
        let tier = crate::cold::runs::ColdTier::open(
            &log,
            &dir,
            &claimed.manifest.cold_runs,
            &claimed.manifest.cold_retired,
            cfg.state.cold_merge_bytes_max,
        )
        .await?;
        tracing::info!(runs = claimed.manifest.cold_runs.len(), records = tier.records(), index_bytes = tier.memory_bytes(), dir = %dir.display(), "cold tier opened");
        Some(tier)
    } else {
        None
    };
    let mut job = Job {
        cfg: cfg.clone(),
        log,
        committer,
        generation,
        sink,
        state,
        limits: Limits {
            payload_bytes_max: cfg.state.payload_bytes_max,
            ..Limits::default()
        },
        crash: env.crash.clone(),
        last: claimed.entry.checkpoint_id,
        uncommitted: BTreeMap::new(),
        files: Arc::new(ObjectStoreSizes(warehouse.clone())),
        state_chain: claimed.manifest.state_chain.clone(),
        state_sha256: claimed.manifest.state_sha256.clone(),
        cuts: claimed.manifest.partitions.clone(),
        replay_until: claimed.manifest.replay_until.clone(),
        replay_skips: Default::default(),
        cold,
        evict,
        input_epoch: claimed.manifest.input_epoch,
        counts: Default::default(),
        report: RunReport {
            generation,
            resumed_at: claimed.entry.checkpoint_id,
            ..RunReport::default()
        },
        outputs: Default::default(),
        fleet: env.fleet.clone(),
        compaction: Default::default(),
        chains: BTreeMap::new(),
        since_commit: 0,
        oldest_uncommitted: None,
        started: std::time::Instant::now(),
        checkpointed_at: std::time::Instant::now(),
        publishing: None,
        completing: None,
        lingering: Default::default(),
    };
    // Whatever the previous generation completed but did not publish, publish now.
    job.publish().await?;
    // A rewind's replay skips the records the tables now hold as `event_id_reused`.
    if !job.replay_until.is_empty() {
        let ident = lakehouse::table_ident(cfg, TableName::RejectedEvents);
        let rejected = lakehouse::load_table(env.catalog.as_ref(), &ident).await?;
        job.replay_skips =
            super::replay::ReplaySkips::load(&rejected, &job.cuts, &job.replay_until).await?;
        tracing::info!(
            skipped = job.replay_skips.len(),
            "replay: records committed as event_id_reused are skipped"
        );
    }
    // The optional outputs: fence older instances, then emit what they lack.
    job.recover_outputs(partitions).await?;
    // Then remove the files of attempts that never completed, never a file a snapshot or a
    // retained checkpoint references (best effort: a failure leaves garbage, never wrong data).
    let resumed = match claimed.entry.kind {
        EntryKind::GenerationStart { resumes: Some(h) } => h,
        _ => claimed.entry.checkpoint_id,
    };
    let tables: Vec<_> = Output::ALL
        .iter()
        .map(|o| job.sink.table(*o).identifier().clone())
        .collect();
    let cleanup = Cleanup {
        warehouse,
        catalog: env.catalog.clone(),
        log: job.log.clone(),
        tables,
        generation,
        resumed,
    };
    Ok((job, cleanup))
}

/// What recovery leaves to clean: files of attempts that never completed.
pub(super) struct Cleanup {
    warehouse: Arc<dyn object_store::ObjectStore>,
    catalog: Arc<dyn iceberg::Catalog>,
    log: CheckpointLog,
    tables: Vec<iceberg::TableIdent>,
    generation: crate::ids::Generation,
    resumed: CheckpointId,
}

impl Cleanup {
    /// Removes the files of attempts that never completed, never a file a snapshot or a
    /// retained checkpoint references, then the checkpoint store's files of attempts a crash
    /// cut short (best effort: a failure leaves garbage, never wrong data). Safe beside a
    /// running job: only older generations' files are nominated.
    pub(super) async fn run(self) {
        let Cleanup {
            warehouse,
            catalog,
            log,
            tables,
            generation,
            resumed,
        } = self;
        let cleanup_started = std::time::Instant::now();
        let cleaned = orphans::clean(
            warehouse.as_ref(),
            catalog.as_ref(),
            &log,
            &tables,
            generation,
            resumed,
        )
        .await;
        match cleaned {
            Ok(c) => tracing::info!(
                deleted = c.deleted,
                kept_referenced = c.referenced,
                kept_pending = c.pending,
                listed = c.listed,
                duration_ms = cleanup_started.elapsed().as_millis() as u64,
                "orphan cleanup done"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "orphan cleanup skipped, nothing more deleted; garbage stays until the next start or `recon-pipeline maintain`")
            }
        }
        match crate::checkpoint::sweep::sweep(&log, generation).await {
            Ok(s) => tracing::info!(
                listed = s.listed,
                deleted = s.deleted,
                "checkpoint store swept"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint store sweep skipped, nothing deleted; garbage stays until the next start")
            }
        }
    }
}

/// The eviction policy `[state]` configures.
fn evict_policy(cfg: &Config) -> crate::state::evict::EvictPolicy {
    // The range check keeps a span under ten years: the product fits i64.
    let us = |ms: u64| (ms > 0).then(|| ms as i64 * 1_000);
    crate::state::evict::EvictPolicy {
        settled_after_us: us(cfg.state.evict_settled_after_ms),
        idle_after_us: us(cfg.state.evict_idle_after_ms),
        horizon_us: us(cfg.state.late_horizon_ms),
        scan_per_barrier: cfg.state.evict_scan_per_barrier,
    }
}

/// The local working copy of the cold tier.
fn cold_dir(cfg: &Config) -> std::path::PathBuf {
    if cfg.state.cold_dir.is_empty() {
        std::env::temp_dir()
            .join("recon-cold")
            .join(cfg.job_id.to_string())
    } else {
        std::path::PathBuf::from(&cfg.state.cold_dir)
    }
}
