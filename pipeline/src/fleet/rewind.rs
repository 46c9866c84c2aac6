//! `rewind` for a fleet: every task restarts from its checkpoint in one commit of the
//! committer.
//!
//! `--to-checkpoint N` names the committer's commit sequence `N` (`checkpoints list` with the
//! fleet's job id): the one cut the whole fleet shares. Its record says, per task, the newest
//! task checkpoint it holds (`fleet_tasks`); each task gets the single process's rewind entry
//! onto that checkpoint (a new generation: it fences the task's running owner), so it rebuilds
//! its state from there, replaying what its log's head had read into state only. Nothing is
//! written twice: a task's checkpoints before the rewind entry are still gathered and committed
//! by the committer in log order, and everything they read is below the replay bound.
//!
//! A task whose head is its checkpoint in `N` (it read nothing since) is left alone. Refused,
//! with nothing written, when the shape changed, the record or a task's checkpoint in it was
//! pruned (raise `checkpoint.keep_last` to keep more), a task had no checkpoint in `N`, or a
//! target's state does not verify. An interrupted run is finished by running it again.

use anyhow::Context;

use crate::checkpoint::log::{CheckpointLog, Completed};
use crate::config::Config;
use crate::ids::CheckpointId;

use super::layout;
use super::worker::task_config;

/// One task to rewind: its log, head and target.
struct TaskRewind {
    task: u32,
    log: CheckpointLog,
    head: Completed,
    to: CheckpointId,
}

/// The command for a fleet (see the module documentation).
pub async fn run(
    cfg: &Config,
    sequence: CheckpointId,
    reason: &str,
    yes: bool,
) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        crate::refuse!("--reason must say why");
    }
    let k = cfg.fleet.tasks;
    let (store, prefix, all, shape) = layout::for_command(cfg).await?;
    if sequence.0 < shape.sequence() {
        crate::refuse!(
            "commit sequence {sequence} is before the reshard to {} tasks (commit sequence {}): the tasks it names are not the job's any more. Rewind to commit sequence {} or later. Nothing was written",
            shape.shape.tasks,
            shape.sequence(),
            shape.sequence()
        );
    }
    let committer_log = CheckpointLog::new(store.clone(), &prefix, cfg.job_id.clone());
    let Some(record) = committer_log.completed(sequence).await? else {
        crate::refuse!(
            "commit sequence {sequence} is not in the committer's log of job {} (pruned? `checkpoints list` shows what is left; raise checkpoint.keep_last to keep more). Nothing was written",
            cfg.job_id
        );
    };
    println!(
        "rewind fleet job {} to commit sequence {sequence} (generation {}): each task restarts from its checkpoint in it",
        cfg.job_id, record.entry.generation
    );
    let mut todo = Vec::new();
    for t in 0..k {
        let tc = task_config(cfg, &shape, t, &all);
        let log = CheckpointLog::new(store.clone(), &prefix, tc.job_id.clone());
        let Some(&to) = record.manifest.fleet_tasks.get(&t) else {
            crate::refuse!(
                "task {t} had no checkpoint in commit sequence {sequence}: choose a later sequence. Nothing was written"
            );
        };
        let Some(head) = log.head().await? else {
            crate::refuse!(
                "task {t} ({}): its log is empty. Nothing was written",
                tc.job_id
            );
        };
        if head.entry.checkpoint_id == to {
            println!("task {t}: its head is checkpoint {to}, the one in the commit: left alone");
            continue;
        }
        let Some(target) = log.completed(to).await? else {
            crate::refuse!(
                "task {t} ({}): its checkpoint {to} (in commit sequence {sequence}) was pruned; choose a later sequence or raise checkpoint.keep_last. Nothing was written",
                tc.job_id
            );
        };
        log.read_state_chain(&target.manifest).await.with_context(|| {
            format!("task {t}: cannot rewind to checkpoint {to}: its state does not verify. Nothing was written")
        })?;
        println!(
            "task {t} ({}): head checkpoint {} -> restart from checkpoint {to} (offsets {:?}); records up to {:?} replayed into state only",
            tc.job_id,
            head.entry.checkpoint_id,
            target.manifest.resume_offsets(),
            head.manifest.resume_offsets()
        );
        todo.push(TaskRewind {
            task: t,
            log,
            head,
            to,
        });
    }
    if todo.is_empty() {
        crate::refuse!(
            "every task's head is its checkpoint in commit sequence {sequence}: nothing to rewind"
        );
    }
    if !yes {
        crate::refuse!("not confirmed: re-run with --yes to write the rewind entries");
    }
    for r in &todo {
        let claimed = r
            .log
            .claim(Some((r.to, reason.to_string())))
            .await
            .with_context(|| {
                format!(
                    "task {}: writing its rewind entry (tasks before it are rewound; run the command again to finish)",
                    r.task
                )
            })?;
        tracing::warn!(job = %cfg.job_id, task = r.task, to = %r.to, from = %r.head.entry.checkpoint_id,
            generation = %claimed.entry.generation, reason, "REWIND written");
    }
    println!(
        "rewind written for {} task(s) to commit sequence {sequence}; start the workers to resume",
        todo.len()
    );
    Ok(())
}
