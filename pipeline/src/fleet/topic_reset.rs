//! `accept-topic-reset` for a fleet: every task's log moves to the next input epoch.
//!
//! A topic recreated (or truncated) under a fleet stops each task that reads a partition whose
//! last consumed record is gone (exit 3). The operator's way on is the single process's
//! ([`crate::topic_reset`]), once per task: each task keeps its state and restarts the partitions
//! that differ from the new topic's earliest offset. **Every** task gets a `topic_reset` entry,
//! also one whose partitions all still match (it keeps reading them where it was): the
//! committer commits one input epoch per record (`gather`), so a task left in the old epoch
//! would hold back every other task's new-topic checkpoints.
//!
//! Refuses, with nothing written, when the job's shape changed (K, or the topic's partition
//! count: `layout`), when a task has no checkpoint (it never ran: start the fleet once), when
//! the tasks' epochs are not one (or one and the next, after an interrupted run of this
//! command), when nothing differs in any task, and when a partition could not be read. An
//! interrupted run is finished by running the command again: tasks already in the new epoch
//! are left alone.

use std::collections::BTreeSet;

use anyhow::Context;

use crate::checkpoint::log::{CheckpointLog, ClaimKind, Completed};
use crate::config::Config;
use crate::topic_reset::{ResetPlan, Step, observe, print_plan, steps};

use super::layout;
use super::worker::task_config;

/// One task's log, head and plan.
struct TaskReset {
    task: u32,
    log: CheckpointLog,
    head: Completed,
    plan: ResetPlan,
}

/// The command for a fleet: judges every task's log against the topic, prints the plans and,
/// with `yes`, writes a `topic_reset` entry into each task log still in the old epoch.
pub async fn run(cfg: &Config, reason: &str, yes: bool) -> anyhow::Result<()> {
    let k = cfg.fleet.tasks;
    let (store, prefix, all, shape) = layout::for_command(cfg).await?;
    let mut heads = Vec::with_capacity(k as usize);
    for t in 0..k {
        let tc = task_config(cfg, &shape, t, &all);
        let log = CheckpointLog::new(store.clone(), &prefix, tc.job_id.clone());
        let Some(head) = log.head().await? else {
            crate::refuse!(
                "task {t} ({}) has no checkpoint: it never ran, so its epoch cannot follow the others'. Nothing was written; use a new job_id",
                tc.job_id
            );
        };
        heads.push((t, tc, log, head));
    }
    let epochs: BTreeSet<u32> = heads.iter().map(|h| h.3.manifest.input_epoch).collect();
    let newest = *epochs.last().expect("K > 0");
    let target = match epochs.len() {
        1 => newest + 1,
        2 if epochs.first() == Some(&(newest - 1)) => newest,
        _ => crate::refuse!(
            "the tasks' logs are in input epochs {epochs:?}: they cannot be brought to one by a topic reset (a task log was restored from another time?). Nothing was written"
        ),
    };
    println!(
        "accept topic reset: fleet job {}, topic {:?}, {k} tasks, input epoch {} -> {target}; each task's state is kept",
        cfg.job_id,
        cfg.source.topic,
        target - 1
    );
    let mut todo = Vec::new();
    let mut differs = false;
    for (t, tc, log, head) in heads {
        if head.manifest.input_epoch == target {
            println!("task {t}: already in epoch {target} (an earlier run of this command)");
            continue;
        }
        let seen = observe(&tc, &head).await?;
        let (plan, d) = match steps(&head.manifest.partitions, &seen) {
            Ok(x) => x,
            Err(e) => crate::refuse!(
                "task {t} ({}), checkpoint {}: {e}",
                tc.job_id,
                head.entry.checkpoint_id
            ),
        };
        differs |= d;
        println!(
            "task {t} ({}), head checkpoint {} (generation {}):",
            tc.job_id, head.entry.checkpoint_id, head.entry.generation
        );
        print_plan(&plan);
        todo.push(TaskReset {
            task: t,
            log,
            head,
            plan,
        });
    }
    if !differs && todo.len() == k as usize {
        crate::refuse!(
            "every partition of every task still holds the records its checkpoint consumed: there is no topic reset to accept; start the fleet normally"
        );
    }
    println!(
        "records read again that a task already holds are dropped as exact duplicates; bad records are written to rejected_events again"
    );
    if !yes {
        crate::refuse!("not confirmed: re-run with --yes to write the topic reset entries");
    }
    for r in &todo {
        let restart = r.plan.restart();
        let claimed = r
            .log
            .claim_as(&ClaimKind::TopicReset {
                judged: r.head.entry.checkpoint_id,
                restart: restart.clone(),
                reason: reason.to_string(),
            })
            .await
            .with_context(|| {
                format!(
                    "task {}: writing its topic reset entry (tasks before it are reset; run the command again to finish)",
                    r.task
                )
            })?;
        let restarted = r
            .plan
            .steps
            .values()
            .filter(|(s, _)| !matches!(s, Step::Keep(_)))
            .count();
        tracing::warn!(job = %cfg.job_id, task = r.task, generation = %claimed.entry.generation,
            checkpoint = %claimed.entry.checkpoint_id, input_epoch = claimed.manifest.input_epoch,
            restarted, reason, "TOPIC RESET written");
    }
    println!(
        "topic reset written for {} task(s): input epoch {target}; start the workers to resume (the committer commits the old topic's checkpoints first)",
        todo.len()
    );
    Ok(())
}
