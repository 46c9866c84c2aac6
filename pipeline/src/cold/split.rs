//! Splitting the cold tier among new tasks (`recon-pipeline reshard`): every old task's runs
//! merged (the newest record of each trip, as [`merge`](super::merge) keeps it) and routed by
//! each trip's Kafka partition into one new run per new task.

use std::path::Path;

use super::ColdError;
use super::merge::merge_routed;
use super::runs::{ColdTier, OpenRun, RunRef, put_run};
use crate::checkpoint::log::CheckpointLog;
use crate::ids::{CheckpointId, Generation};
use crate::state::codec;

/// Where a new task's run goes: its log and the checkpoint it belongs to; `None` for a task
/// whose share is already written (its run is not written again).
pub type SplitTarget<'a> = Option<(&'a CheckpointLog, CheckpointId, Generation)>;

/// Splits the runs of `sources` (each old task's log and the runs its checkpoint lists) among
/// `targets` by `route(partition)` (an index into `targets`). Local copies go under `dir`
/// (one folder per source and per target). Returns, per target, the runs its manifest lists.
pub async fn split(
    sources: &[(&CheckpointLog, &[RunRef])],
    dir: &Path,
    targets: &[SplitTarget<'_>],
    route: impl Fn(i32) -> usize,
) -> Result<Vec<Vec<RunRef>>, ColdError> {
    let mut tiers = Vec::with_capacity(sources.len());
    for (i, (log, refs)) in sources.iter().enumerate() {
        let d = dir.join(format!("source-{i}"));
        tiers.push(ColdTier::open(log, &d, refs, &[], u64::MAX).await?);
    }
    // Newest first within each old task; tasks never share a trip, so their order is moot.
    let runs: Vec<&OpenRun> = tiers.iter().flat_map(|t| t.runs.iter().rev()).collect();
    let outs = if runs.is_empty() {
        Vec::new()
    } else {
        merge_routed(&runs, None, targets.len(), |path, bytes| {
            let (.., partition) = codec::decode_trip(path, bytes)?;
            Ok(route(partition))
        })?
    };
    let mut refs = vec![Vec::new(); targets.len()];
    for (i, (b, meta)) in outs.into_iter().enumerate() {
        let Some((log, id, generation)) = targets[i] else {
            continue;
        };
        if b.trips() == 0 {
            continue;
        }
        let d = dir.join(format!("target-{i}"));
        std::fs::create_dir_all(&d).map_err(|e| super::runs::io(&d.display().to_string(), e))?;
        let run = put_run(log, &d, (id, generation), "cold-0.run", meta, b.finish()).await?;
        refs[i].push(run.r.clone());
    }
    Ok(refs)
}
