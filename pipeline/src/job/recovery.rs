//! Recovery: claim a generation, publish what the newest checkpoint left pending, restore
//! state and offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use recon_schemas::decode::Limits;

use crate::checkpoint::commit::Committer;
use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::manifest::{EntryKind, LastRecord, PartitionCut};
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
pub(super) fn owned_partitions(cfg: &Config) -> Result<Vec<PartitionId>, JobError> {
    let all = source::topic_partitions(&cfg.source)?;
    if cfg.source.partitions.is_empty() {
        return Ok(all);
    }
    let mut owned = Vec::new();
    for p in &cfg.source.partitions {
        if !all.contains(&PartitionId(*p)) {
            return Err(JobError::Protocol(format!(
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
        .map_err(|e| JobError::Protocol(format!("the topic identity check panicked: {e}")))??;
    let mut stops = Vec::new();
    let (mut verified, mut unverified) = (0u32, 0u32);
    for (p, cut) in &saved {
        let Some(s) = seen.get(p) else {
            return Err(JobError::Protocol(format!(
                "the topic identity check returned nothing for partition {p} (a bug)"
            )));
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

/// Claims a generation and brings tables, state and offsets to the newest checkpoint.
pub(super) async fn recover(
    cfg: &Config,
    env: &JobEnv,
    partitions: &[PartitionId],
) -> Result<Job, JobError> {
    lakehouse::ensure_tables(env.catalog.as_ref(), &cfg.catalog.namespace).await?;
    let log = CheckpointLog::new(env.store.clone(), &env.store_prefix, cfg.job_id.clone());
    // Pre-flight: the head's state files are checked against their checksums before the claim
    // writes anything, so a mismatch stops every start the same way.
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
    let committer = Committer::new(
        env.catalog.clone(),
        cfg.job_id.clone(),
        generation,
        cfg.commit.attempts_max,
        Duration::from_millis(cfg.commit.timeout_ms),
    );
    let mut targets = BTreeMap::new();
    for (output, name) in [
        (Output::Ledger, "ledger_events"),
        (Output::Balances, "trip_balances"),
        (Output::Rejected, "rejected_events"),
    ] {
        let ident = lakehouse::table_ident(cfg, name);
        let table =
            env.catalog
                .load_table(&ident)
                .await
                .map_err(|source| LakehouseError::Catalog {
                    op: "load_table",
                    what: ident.to_string(),
                    source,
                })?;
        let target = TableTarget::new(table, cfg.sink.zstd_level, cfg.sink.file_size_bytes_target)
            .map_err(|source| LakehouseError::Catalog {
                op: "prepare writers",
                what: ident.to_string(),
                source,
            })?;
        targets.insert(output, target);
    }
    let sink = Sink::new(cfg.job_id.clone(), generation, cfg.sink.batch_rows, targets);

    let mut state = State::default();
    // Each file checked against the checksum its checkpoint recorded (LogError::StateChecksum).
    let chain = match head_state {
        Some((paths, files)) if paths == claimed.manifest.state_chain => files,
        _ => log.read_state_chain(&claimed.manifest).await?,
    };
    for (i, (rel, bytes)) in chain.iter().enumerate() {
        codec::apply_file(&mut state, rel, bytes, i == 0)
            .map_err(|e| JobError::Protocol(e.to_string()))?;
    }

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
        state_chain: claimed.manifest.state_chain.clone(),
        state_sha256: claimed.manifest.state_sha256.clone(),
        cuts: claimed.manifest.partitions.clone(),
        replay_until: claimed.manifest.replay_until.clone(),
        input_epoch: claimed.manifest.input_epoch,
        counts: Default::default(),
        report: RunReport {
            generation,
            resumed_at: claimed.entry.checkpoint_id,
            ..RunReport::default()
        },
        outputs: Default::default(),
        since_full: 0,
        since_commit: 0,
        oldest_uncommitted: None,
        started: std::time::Instant::now(),
    };
    // Whatever the previous generation completed but did not publish, publish now.
    job.publish().await?;
    // The optional outputs: fence older instances, then emit what they lack.
    job.recover_outputs(partitions).await?;
    // Then remove the files of attempts that never completed (best effort: a failure here
    // leaves garbage, never wrong data).
    let resumed = match claimed.entry.kind {
        EntryKind::GenerationStart { resumes: Some(h) } => h,
        _ => claimed.entry.checkpoint_id,
    };
    match orphans::warehouse_store(cfg) {
        Ok(store) => {
            let tables: Vec<_> = Output::ALL
                .iter()
                .map(|o| job.sink.table(*o).clone())
                .collect();
            match orphans::clean(store.as_ref(), &job.log, &tables, generation, resumed).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "orphan data files removed"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "orphan cleanup failed; garbage stays until the next start")
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot open the warehouse for orphan cleanup"),
    }
    Ok(job)
}
