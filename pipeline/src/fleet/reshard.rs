//! `reshard`: a fleet's number of tasks K changed offline.
//!
//! Partition `p` belongs to task `p mod K`, and each task's log holds the state of its
//! partitions' trips; a new K moves partitions between tasks. The command, with the fleet
//! stopped and everything it checkpointed committed:
//!
//! 1. judges the job (nothing written on a refusal): every old task's head is what the
//!    committer's newest record holds for it, that record is in every table (`tasks.json`),
//!    every alert the old tasks raised was produced, and the input epochs and topic ids agree;
//! 2. writes, for each new task, a **new** log (`<job>.r<S>-<K'>.t<task>`, `S` the commit
//!    sequence of step 3) whose first entry (`reshard`) holds the task's share: the old tasks'
//!    trips of its partitions (hot state and cold tier, split by each trip's partition), their
//!    offsets and event-time marks. Its checkpoint id is above every old task's, so a trip's
//!    newest `trip_balances` row stays the one with the highest `checkpoint_id`;
//! 3. writes the committer's record `S` (`reshard`, a new committer generation: a committer
//!    still running is fenced), whose `fleet_tasks` name the new logs' first entries: nothing
//!    of the old tasks is left to commit, and the next committer gathers the new logs after
//!    them. This is the point of no return;
//! 4. records the new shape (`reshards/<S>.json`); until then every start refuses
//!    (`ShapeRefusal::ReshardInterrupted`) and running the command again finishes it.
//!
//! Running it again after a crash in step 2 reuses the shares already written (same `S`, same
//! sources); the old task logs are left as they are (a rewind before `S` is refused).

use anyhow::Context;

use crate::checkpoint::log::{CheckpointLog, Completed, LogError};
use crate::checkpoint::manifest::{EntryKind, FORMAT_VERSION, Manifest, state_checksum};
use crate::checkpoint::protocol;
use crate::cold::runs::RunRef;
use crate::config::Config;
use crate::ids::{CheckpointId, Generation, JobId, PartitionId};
use crate::state::{State, codec};

use super::layout::{self, Current, Reshard, Shape, task_of};
use super::progress;
use super::worker::task_config;

/// The share of new task `task` (of `to_tasks`) in the old tasks' `heads`: the first entry of
/// its log, with no state yet (`state_chain`, `cold_runs` are the caller's). Pure.
pub fn share(
    job: JobId,
    (first, generation): (CheckpointId, Generation),
    (task, to_tasks): (u32, u32),
    heads: &[&Manifest],
    record: &Manifest,
) -> Manifest {
    let mut m = Manifest::empty(job, first, generation);
    m.format = FORMAT_VERSION;
    m.input_epoch = record.input_epoch;
    m.topic_id = record.topic_id.clone();
    let mine = |p: &PartitionId| task_of(*p, to_tasks) == task;
    let mut watermark: Option<Option<i64>> = None;
    for h in heads {
        let cuts: Vec<_> = h.partitions.iter().filter(|(p, _)| mine(p)).collect();
        if cuts.is_empty() {
            continue;
        }
        for (p, cut) in cuts {
            m.partitions.insert(*p, cut.continued());
        }
        m.high_water_us = m.high_water_us.max(h.high_water_us);
        // The lowest of the contributing tasks' watermarks (none if one had none): never
        // later than any of them, so nothing is called late that its old task would not have.
        watermark = Some(match (watermark, h.watermark_us) {
            (None, w) => w,
            (Some(Some(a)), Some(b)) => Some(a.min(b)),
            _ => None,
        });
        for (p, t) in &h.partition_event_time_us {
            if mine(&PartitionId(*p)) {
                m.partition_event_time_us.insert(*p, *t);
            }
        }
        for (p, o) in &h.replay_until {
            if mine(p) {
                m.replay_until.insert(*p, *o);
            }
        }
    }
    m.watermark_us = watermark.flatten();
    m
}

/// One old task, judged.
struct Source {
    task: u32,
    log: CheckpointLog,
    head: Option<Completed>,
}

/// The command (see the module documentation).
pub async fn run(cfg: &Config, to_tasks: u32, reason: &str, yes: bool) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        crate::refuse!("--reason must say why");
    }
    let (store, prefix) = crate::checkpoint::store::open(cfg)?;
    let source_cfg = cfg.source.clone();
    let all =
        tokio::task::spawn_blocking(move || crate::source::topic_partitions(&source_cfg)).await??;
    let committer = CheckpointLog::new(store.clone(), &prefix, cfg.job_id.clone());
    let Some(current) = layout::current(&committer).await? else {
        crate::refuse!(
            "job {} never ran as a fleet (no fleet.json): there is nothing to reshard. Nothing was written",
            cfg.job_id
        );
    };
    let partitions = all.len() as u32;
    if partitions != current.shape.partitions {
        crate::refuse!(
            "topic {} has {partitions} partitions but job {} has {}: a reshard keeps the partition count. Nothing was written",
            cfg.source.topic,
            cfg.job_id,
            current.shape.partitions
        );
    }
    let Some(head) = committer.head().await? else {
        crate::refuse!(
            "job {}: the committer never ran, so nothing is known to be committed. Nothing was written",
            cfg.job_id
        );
    };
    if let EntryKind::Reshard {
        to_tasks: k,
        from_tasks,
        ..
    } = &head.entry.kind
        && current.sequence() != head.entry.checkpoint_id.0
    {
        // Interrupted after the point of no return: only the shape record is missing.
        if *k != to_tasks {
            crate::refuse!(
                "an interrupted reshard to {k} tasks is being finished: run the command with --tasks {k}. Nothing was written"
            );
        }
        let r = Reshard {
            sequence: head.entry.checkpoint_id.0,
            from_tasks: *from_tasks,
            shape: Shape {
                tasks: *k,
                partitions,
            },
            reason: reason.to_string(),
        };
        layout::record_reshard(&committer, &r).await?;
        println!(
            "reshard to {k} tasks finished (commit sequence {}); set fleet.tasks = {k} and start the fleet",
            r.sequence
        );
        return Ok(());
    }
    let from_tasks = current.shape.tasks;
    if to_tasks == 0 || to_tasks > partitions || to_tasks == from_tasks {
        crate::refuse!(
            "--tasks {to_tasks}: the job has {from_tasks} tasks and {partitions} partitions; choose 1 to {partitions}, other than {from_tasks}. Nothing was written"
        );
    }
    let sources = judge(cfg, &committer, &current, &head, &all).await?;
    let sequence = head.entry.checkpoint_id.next();
    let after = Current {
        shape: Shape {
            tasks: to_tasks,
            partitions,
        },
        reshard: Some(Reshard {
            sequence: sequence.0,
            from_tasks,
            shape: Shape {
                tasks: to_tasks,
                partitions,
            },
            reason: reason.to_string(),
        }),
    };
    let mut targets = Vec::new();
    for t in 0..to_tasks {
        let Some(job) = after.task_job(&cfg.job_id, t) else {
            crate::refuse!(
                "job id {} is too long to name the new task logs (`<job>.r{sequence}-{to_tasks}.t0000` must fit 64 characters). Nothing was written",
                cfg.job_id
            );
        };
        targets.push(committer.sibling(job));
    }
    // Above every old task's checkpoint ids: a trip's newest row keeps the highest id.
    let first = sources
        .iter()
        .filter_map(|s| s.head.as_ref().map(|h| h.entry.checkpoint_id))
        .max()
        .unwrap_or(CheckpointId(0))
        .next();
    println!(
        "reshard fleet job {} from {from_tasks} to {to_tasks} tasks at commit sequence {sequence}: new task logs {}..{} start at checkpoint {first}",
        cfg.job_id,
        targets[0].job(),
        targets[targets.len() - 1].job()
    );
    if !yes {
        crate::refuse!("not confirmed: re-run with --yes to write the new task logs");
    }
    let source_ids: Vec<(u32, CheckpointId)> = sources
        .iter()
        .filter_map(|s| s.head.as_ref().map(|h| (s.task, h.entry.checkpoint_id)))
        .collect();
    let kind = EntryKind::Reshard {
        from_tasks,
        to_tasks,
        sources: source_ids,
        reason: reason.to_string(),
    };
    write_shares(&sources, &targets, (first, to_tasks), &kind, &head.manifest).await?;
    crate::crash::maybe_crash(crate::crash::CrashPoint::ReshardAfterShares);
    // The point of no return: the committer's record of the new shape.
    let (id, generation) = protocol::claim(Some(&head.entry));
    let mut record = head.manifest.continuation(id, generation);
    record.fleet_tasks = (0..to_tasks).map(|t| (t, first)).collect();
    let written = async {
        let e = committer.write_manifest(&record, kind.clone()).await?;
        committer.complete(&e).await
    };
    match written.await {
        Ok(()) => {}
        Err(e @ (LogError::Fenced { .. } | LogError::ManifestTaken { .. })) => crate::refuse!(
            "the committer wrote commit sequence {sequence} while the reshard ran (is it still running?): {e}. Stop every worker and the committer and run the command again; the old tasks are untouched"
        ),
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(job = %cfg.job_id, from_tasks, to_tasks, %sequence, reason, "RESHARD recorded");
    crate::crash::maybe_crash(crate::crash::CrashPoint::ReshardAfterRecord);
    layout::record_reshard(&committer, after.reshard.as_ref().expect("set above")).await?;
    println!(
        "reshard written: commit sequence {sequence}; set fleet.tasks = {to_tasks} and start the workers and the committer"
    );
    Ok(())
}

/// Step 1: every old task's head committed, alerts produced, one epoch and topic.
async fn judge(
    cfg: &Config,
    committer: &CheckpointLog,
    current: &Current,
    head: &Completed,
    all: &[PartitionId],
) -> anyhow::Result<Vec<Source>> {
    let seq = head.entry.checkpoint_id;
    let published = progress::read(committer).await?;
    if published.as_ref().map(|p| p.sequence) != Some(seq) {
        crate::refuse!(
            "commit sequence {seq} is recorded but not yet in every table (the tables hold {:?}): start the committer alone (`run --role committer`) until it publishes, stop it, and run the command again. Nothing was written",
            published.map(|p| p.sequence.0)
        );
    }
    let mut sources = Vec::new();
    for t in 0..current.shape.tasks {
        let tc = task_config(cfg, current, t, all);
        let log = committer.sibling(tc.job_id.clone());
        let task_head = log.head().await?;
        let at = task_head.as_ref().map(|h| h.entry.checkpoint_id);
        let recorded = head.manifest.fleet_tasks.get(&t).copied();
        if at != recorded {
            crate::refuse!(
                "task {t} ({}): its log ends at checkpoint {} but the committer holds {}: stop every worker, let the committer commit what they checkpointed (or restore the newest copy of the task's log), stop it, and run the command again. Nothing was written",
                tc.job_id,
                at.map_or(0, |c| c.0),
                recorded.map_or(0, |c| c.0)
            );
        }
        if let Some(h) = &task_head {
            if h.manifest.input_epoch != head.manifest.input_epoch {
                crate::refuse!(
                    "task {t}: input epoch {} but the commits are in epoch {}: finish the topic reset first. Nothing was written",
                    h.manifest.input_epoch,
                    head.manifest.input_epoch
                );
            }
            if let (Some(a), Some(b)) = (&h.manifest.topic_id, &head.manifest.topic_id)
                && a != b
            {
                crate::refuse!(
                    "task {t} read topic id {a} but the commits hold {b}: the topic was recreated; run accept-topic-reset first. Nothing was written"
                );
            }
            if cfg.alerts_watch.is_some() {
                alerts_produced(&tc, &log, h).await?;
            }
        }
        sources.push(Source {
            task: t,
            log,
            head: task_head,
        });
    }
    Ok(sources)
}

/// Refuses when an old task raised alerts it never produced: no new task would produce them.
/// Connecting its producer fences any producer of the task still running.
async fn alerts_produced(tc: &Config, log: &CheckpointLog, head: &Completed) -> anyhow::Result<()> {
    let parts: Vec<PartitionId> = tc
        .source
        .partitions
        .iter()
        .map(|p| PartitionId(*p))
        .collect();
    let producer = crate::outputs::alerts_kafka::AlertsProducer::connect(tc, &parts).await?;
    let done = tokio::task::spawn_blocking(move || producer.committed()).await??;
    for id in log.ids_after(done).await? {
        if id > head.entry.checkpoint_id {
            break;
        }
        if let Some(c) = log.completed(id).await?
            && c.manifest.alerts.as_ref().is_some_and(|a| a.count > 0)
        {
            crate::refuse!(
                "task {} ({}): the alerts of its checkpoint {id} were never produced: start the fleet with its old shape until they are, stop it, and run the command again. Nothing was written",
                tc.job_id,
                log.job(),
            );
        }
    }
    Ok(())
}

/// Step 2: each new task's share as the first entry of its log (those already written by an
/// interrupted run are kept).
async fn write_shares(
    sources: &[Source],
    targets: &[CheckpointLog],
    (first, to_tasks): (CheckpointId, u32),
    kind: &EntryKind,
    record: &Manifest,
) -> anyhow::Result<()> {
    let generation = Generation(1);
    let mut todo = vec![false; targets.len()];
    for (t, log) in targets.iter().enumerate() {
        match log.head().await? {
            None => todo[t] = true,
            Some(h) if h.entry.kind == *kind && h.entry.checkpoint_id == first => {
                println!("task {t}: its share is already written ({})", log.job());
            }
            Some(h) => crate::refuse!(
                "new task log {} already holds checkpoint {} of another attempt: move it away and run the command again. Nothing else was written",
                log.job(),
                h.entry.checkpoint_id
            ),
        }
    }
    // Hot state: every old task's trips, routed by partition.
    let mut states: Vec<State> = (0..to_tasks).map(|_| State::default()).collect();
    for s in sources {
        let Some(h) = &s.head else { continue };
        let files = s.log.read_state_chain(&h.manifest).await?;
        let mut old = State::default();
        codec::restore_chain(&mut old, &files)
            .with_context(|| format!("task {}: its state does not decode", s.task))?;
        for trip in old.iter() {
            let to = task_of(PartitionId(trip.partition), to_tasks) as usize;
            states[to]
                .restore(
                    trip.trip_id(),
                    &trip.balance(),
                    trip.seen.clone(),
                    trip.partition,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    // Cold tier: every old run, routed the same way.
    let dir = tempfile::tempdir().context("a local folder for the cold runs")?;
    let cold_sources: Vec<(&CheckpointLog, &[RunRef])> = sources
        .iter()
        .filter_map(|s| {
            s.head
                .as_ref()
                .map(|h| (&s.log, h.manifest.cold_runs.as_slice()))
        })
        .collect();
    let cold_targets: Vec<_> = targets
        .iter()
        .zip(&todo)
        .map(|(log, todo)| todo.then_some((log, first, generation)))
        .collect();
    let cold = crate::cold::split::split(&cold_sources, dir.path(), &cold_targets, |p| {
        task_of(PartitionId(p), to_tasks) as usize
    })
    .await?;
    let heads: Vec<&Manifest> = sources
        .iter()
        .filter_map(|s| s.head.as_ref().map(|h| &h.manifest))
        .collect();
    for (t, log) in targets.iter().enumerate() {
        if !todo[t] {
            continue;
        }
        let mut m = share(
            log.job().clone(),
            (first, generation),
            (t as u32, to_tasks),
            &heads,
            record,
        );
        let bytes = codec::encode_full(&states[t]);
        let sha = state_checksum(&bytes);
        let path = log.write_state(first, generation, bytes).await?;
        m.state_sha256.insert(path.clone(), sha);
        m.state_chain = vec![path];
        m.cold_runs = cold[t].clone();
        let e = log.write_manifest(&m, kind.clone()).await?;
        log.complete(&e).await?;
        println!(
            "task {t} ({}): {} trips in memory, {} cold runs, partitions {:?}",
            log.job(),
            states[t].trips(),
            m.cold_runs.len(),
            m.partitions.keys().map(|p| p.0).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[cfg(test)]
#[path = "reshard_tests.rs"]
mod tests;
