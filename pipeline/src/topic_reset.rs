//! `recon-pipeline accept-topic-reset`: the operator's way on after the job refused a topic
//! that no longer holds the records its checkpoint consumed (recreated or truncated under the
//! same name, see [`crate::source::identity`]).
//!
//! Why this and not `rewind` or a new job id: a rewind replays old offsets, which in a new topic
//! name other records (they would be replayed into state only and never written: loss); a new
//! job id starts with empty state, so trips that span both topics get wrong balances and events
//! re-sent into the new topic are written twice. A topic reset keeps the job's state (balances,
//! seen event ids: a re-sent event is dropped as an exact duplicate) and reads every partition
//! that does not match from the new topic's earliest offset. Partitions whose last consumed
//! record is still there keep their position.
//!
//! It writes a `topic_reset` log entry with a new generation (fencing any running instance) and
//! the operator's reason, and a new input epoch, so no commit and no offset check mixes the old
//! topic's offsets with the new one's. It refuses without `--yes`, when the topic matches the
//! checkpoint, when a partition could not be read, and when the log moved meanwhile.

use std::collections::BTreeMap;

use crate::checkpoint::log::{CheckpointLog, ClaimKind};
use crate::checkpoint::manifest::PartitionCut;
use crate::config::Config;
use crate::ids::{Offset, PartitionId};
use crate::source::identity::{self, Mismatch, Seen, Verdict};
use crate::source::{self, probe};

/// What to do with one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its last consumed record is still there: keep reading from the saved offset.
    Keep(Offset),
    /// Read it from this offset (the new topic's earliest).
    Restart(Offset),
    /// The topic no longer has it: forget its position.
    Forget,
}

/// The decision for every partition, with the reason shown to the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetPlan {
    /// Per partition: the step and why.
    pub steps: BTreeMap<PartitionId, (Step, String)>,
}

impl ResetPlan {
    /// The restart positions for [`ClaimKind::TopicReset`].
    pub fn restart(&self) -> BTreeMap<PartitionId, Option<Offset>> {
        self.steps
            .iter()
            .filter_map(|(p, (s, _))| match s {
                Step::Keep(_) => None,
                Step::Restart(o) => Some((*p, Some(*o))),
                Step::Forget => Some((*p, None)),
            })
            .collect()
    }
}

/// Plans a reset from the saved positions and what the broker shows for every partition of
/// `saved` and of the topic (`seen`). Refuses (with what to do) when a partition could not be
/// read, or when nothing differs.
pub fn plan(
    saved: &BTreeMap<PartitionId, PartitionCut>,
    seen: &BTreeMap<PartitionId, Seen>,
) -> Result<ResetPlan, String> {
    let (plan, differs) = steps(saved, seen)?;
    if !differs {
        return Err(
            "every partition still holds the records the checkpoint consumed: there is no topic reset to accept; start the job normally"
                .into(),
        );
    }
    Ok(plan)
}

/// The step of every partition, and whether any differs; refuses when a partition could not be
/// read.
pub fn steps(
    saved: &BTreeMap<PartitionId, PartitionCut>,
    seen: &BTreeMap<PartitionId, Seen>,
) -> Result<(ResetPlan, bool), String> {
    let nothing = PartitionCut {
        start: Offset(0),
        end: Offset(0),
        records: 0,
        last: None,
    };
    let mut steps = BTreeMap::new();
    let mut differs = false;
    for (p, s) in seen {
        let cut = saved.get(p).unwrap_or(&nothing);
        let low = match s {
            Seen::Partition { watermarks, .. } => Some(watermarks.low),
            Seen::NoPartition => None,
        };
        let verdict = identity::judge(cut, s);
        let why = match &verdict {
            Verdict::NothingConsumed => "nothing consumed yet".to_string(),
            Verdict::Verified => "its last consumed record is still there".to_string(),
            Verdict::Unverified(u) => {
                differs = true;
                u.to_string()
            }
            Verdict::Stop(Mismatch::Unreadable { offset, cause }) => {
                return Err(format!(
                    "partition {p}: could not read offset {offset} to compare: {cause}; nothing was written, run the command again when the broker answers"
                ));
            }
            Verdict::Stop(m) => {
                differs = true;
                m.to_string()
            }
        };
        let step = match (&verdict, low) {
            (Verdict::Verified, _) => Step::Keep(cut.end),
            (_, Some(low)) => Step::Restart(low),
            (_, None) => Step::Forget,
        };
        steps.insert(*p, (step, why));
    }
    Ok((ResetPlan { steps }, differs))
}

/// What the broker shows for the partitions `cfg` reads (all of the topic's unless
/// `source.partitions` names some) and those `head` consumed, against `head`.
pub async fn observe(
    cfg: &Config,
    head: &crate::checkpoint::log::Completed,
) -> anyhow::Result<BTreeMap<PartitionId, Seen>> {
    let mut saved = head.manifest.partitions.clone();
    let source_cfg = cfg.source.clone();
    let group = format!("recon-{}-identity", cfg.job_id);
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        // Every partition of the new topic gets a position too, so none of it is read from
        // `source.start_from = latest` by accident.
        for p in source::topic_partitions(&source_cfg)? {
            if source_cfg.partitions.is_empty() || source_cfg.partitions.contains(&p.0) {
                saved.entry(p).or_insert(PartitionCut {
                    start: Offset(0),
                    end: Offset(0),
                    records: 0,
                    last: None,
                });
            }
        }
        Ok(probe::observe(&source_cfg, &group, &saved)?)
    })
    .await?
}

/// Prints one log's plan for the operator.
pub fn print_plan(plan: &ResetPlan) {
    for (p, (step, why)) in &plan.steps {
        let what = match step {
            Step::Keep(o) => format!("keep reading at offset {o}"),
            Step::Restart(o) => format!("read from offset {o} (the topic's earliest)"),
            Step::Forget => "forget it (the topic has no such partition)".to_string(),
        };
        println!("  partition {p}: {what} — {why}");
    }
}

/// The command: check the topic against the head, print the plan, and with `yes` write the
/// `topic_reset` entry.
pub async fn run(cfg: &Config, reason: &str, yes: bool) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        crate::refuse!("--reason must say why");
    }
    if cfg.fleet.enabled() {
        return crate::fleet::topic_reset::run(cfg, reason, yes).await;
    }
    let (store, prefix) = crate::checkpoint::store::open(cfg)?;
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let Some(head) = log.head().await? else {
        crate::refuse!(
            "the checkpoint log is empty: the job has consumed nothing, there is nothing to reset; start it normally"
        );
    };
    let seen = observe(cfg, &head).await?;
    let plan = match plan(&head.manifest.partitions, &seen) {
        Ok(p) => p,
        Err(e) => crate::refuse!(
            "topic {:?}, job {}, checkpoint {}: {e}",
            cfg.source.topic,
            cfg.job_id,
            head.entry.checkpoint_id
        ),
    };
    println!(
        "accept topic reset: job {}, topic {:?}, head checkpoint {} (generation {}); the job's state is kept",
        cfg.job_id, cfg.source.topic, head.entry.checkpoint_id, head.entry.generation
    );
    print_plan(&plan);
    println!(
        "records read again that the job already holds are dropped as exact duplicates; bad records are written to rejected_events again"
    );
    if !yes {
        crate::refuse!("not confirmed: re-run with --yes to write the topic reset entry");
    }
    let claimed = log
        .claim_as(&ClaimKind::TopicReset {
            judged: head.entry.checkpoint_id,
            restart: plan.restart(),
            reason: reason.to_string(),
        })
        .await?;
    tracing::warn!(job = %cfg.job_id, topic = %cfg.source.topic, generation = %claimed.entry.generation,
        checkpoint = %claimed.entry.checkpoint_id, input_epoch = claimed.manifest.input_epoch, reason,
        "TOPIC RESET written");
    println!(
        "topic reset written: checkpoint {} generation {} input epoch {}; start the job to resume",
        claimed.entry.checkpoint_id, claimed.entry.generation, claimed.manifest.input_epoch
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::{LastRecord, RecordFingerprint};
    use crate::source::identity::{AtOffset, Watermarks};

    fn cut(end: i64, fp: u64) -> PartitionCut {
        PartitionCut {
            start: Offset(0),
            end: Offset(end),
            records: 1,
            last: Some(LastRecord {
                offset: Offset(end - 1),
                fingerprint: RecordFingerprint(fp),
                timestamp_ms: None,
            }),
        }
    }

    fn seen(low: i64, high: i64, at: Option<(i64, u64)>) -> Seen {
        Seen::Partition {
            watermarks: Watermarks {
                low: Offset(low),
                high: Offset(high),
            },
            at_last: at.map(|(o, fp)| {
                AtOffset::Record(LastRecord {
                    offset: Offset(o),
                    fingerprint: RecordFingerprint(fp),
                    timestamp_ms: None,
                })
            }),
        }
    }

    #[test]
    fn a_recreated_topic_restarts_what_differs_and_keeps_what_matches() {
        let saved = BTreeMap::from([
            (PartitionId(0), cut(10, 1)),
            (PartitionId(1), cut(5, 2)),
            (PartitionId(2), cut(7, 3)),
        ]);
        let seen = BTreeMap::from([
            (PartitionId(0), seen(0, 50, Some((9, 99)))), // different record
            (PartitionId(1), seen(0, 50, Some((4, 2)))),  // same record
            (PartitionId(2), Seen::NoPartition),
            (PartitionId(3), seen(4, 9, None)), // new partition, nothing consumed
        ]);
        let plan = plan(&saved, &seen).unwrap();
        let steps: Vec<_> = plan
            .steps
            .iter()
            .map(|(p, (s, _))| (p.0, s.clone()))
            .collect();
        assert_eq!(
            steps,
            vec![
                (0, Step::Restart(Offset(0))),
                (1, Step::Keep(Offset(5))),
                (2, Step::Forget),
                (3, Step::Restart(Offset(4))),
            ]
        );
        assert_eq!(
            plan.restart(),
            BTreeMap::from([
                (PartitionId(0), Some(Offset(0))),
                (PartitionId(2), None),
                (PartitionId(3), Some(Offset(4))),
            ])
        );
    }

    #[test]
    fn refuses_when_nothing_differs_or_a_partition_was_not_read() {
        let saved = BTreeMap::from([(PartitionId(0), cut(10, 1))]);
        let same = BTreeMap::from([(PartitionId(0), seen(0, 50, Some((9, 1))))]);
        let err = plan(&saved, &same).unwrap_err();
        assert!(err.contains("no topic reset to accept"), "{err}");
        let unread = BTreeMap::from([(
            PartitionId(0),
            Seen::Partition {
                watermarks: Watermarks {
                    low: Offset(0),
                    high: Offset(50),
                },
                at_last: Some(AtOffset::Unread {
                    cause: "deadline".into(),
                }),
            },
        )]);
        let err = plan(&saved, &unread).unwrap_err();
        assert!(err.contains("could not read offset 9"), "{err}");
        // A checkpoint of the previous format cannot be verified: the operator may reset it.
        let old = BTreeMap::from([(
            PartitionId(0),
            PartitionCut {
                last: None,
                ..cut(10, 1)
            },
        )]);
        let p = plan(&old, &BTreeMap::from([(PartitionId(0), seen(0, 50, None))])).unwrap();
        assert_eq!(p.steps[&PartitionId(0)].0, Step::Restart(Offset(0)));
    }
}
