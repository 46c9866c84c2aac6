//! The operator faults ([`crate::operator`]): make the condition, start the job several times
//! (each start must exit 3 — operator needed — and write nothing: the checkpoint and warehouse
//! prefixes and every table's metadata location are compared before and after each start),
//! apply the operator's remedy, and let the job continue; the scenario's usual drain and
//! verification then prove it exact. Plus: the topic recreated under a running job, a second
//! job id on the same tables, and a crash loop under a naive supervisor and under the shipped
//! systemd unit's restart policy.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::Rng;
use recon_pipeline::generate::{Record, RecordKind};
use recon_pipeline::reconcile::Expected;

use super::orch::RestartPolicy;
use super::{Failure, Outcome, Recovery, Scenario, pipeline, short};
use crate::job::ChaosJob;
use crate::operator::OperatorFault;
use crate::traffic;

/// The exit code of a stop that needs an operator.
const OPERATOR_NEEDED: i32 = 3;

impl Scenario<'_> {
    /// Runs operator fault `op` after the first life has read and committed records.
    pub(super) fn operator(&mut self, op: OperatorFault, out: &mut Outcome) -> Result<(), Failure> {
        let kind = op.kind();
        self.orch.during = kind.into();
        self.ensure_recovered()?;
        let epoch = DateTime::<Utc>::from(self.orch.cur()?.started_at);
        pipeline(
            self.orch
                .cur()?
                .wait_for_records(epoch, Duration::from_secs(120)),
        )?;
        match op {
            OperatorFault::Condition(c) => {
                let remedy = self.make_condition(c, out)?;
                let n = self.rng.random_range(2..=3);
                self.refused_starts(None, n, kind, out)?;
                self.remedy(remedy)?;
            }
            OperatorFault::CrashLoop {
                condition,
                restarts,
            } => {
                let remedy = self.make_condition(condition, out)?;
                self.crash_loop(restarts, condition.kind(), out)?;
                self.remedy(remedy)?;
            }
            OperatorFault::SecondJobId => {
                self.stop_clean()?;
                let load = self.next_chunk();
                self.publish_now(&load)?;
                let id = format!("{}-second", self.orch.job.name);
                let mut second = self.orch.job.with_job_id(&id, &self.dir.join("second"))?;
                let n = self.rng.random_range(1..=2);
                self.refused_starts(Some(&mut second), n, kind, out)?;
            }
            OperatorFault::TopicRecreatedWhileRunning => self.topic_recreated_while_running(out)?,
        }
        self.resume(kind, out)
    }

    /// After the remedy: the job comes back and checkpoints new records (restarted as an
    /// orchestrator would); the recovery is measured from the remedy.
    fn resume(&mut self, kind: &str, out: &mut Outcome) -> Result<(), Failure> {
        let probe = self.next_chunk();
        let t = Utc::now();
        if self.orch.current.is_none() {
            self.orch.restarts += 1;
            self.orch.spawn(&[])?;
        }
        self.publish_now(&probe)?;
        let (d, restarts) = pipeline(self.orch.wait_recovered(t, Duration::from_secs(180)))?;
        out.recoveries.push(Recovery {
            fault: kind.into(),
            ms: d.as_millis() as u64,
            restarts: restarts + 1,
        });
        Ok(())
    }

    /// Starts the job (or `second`) `n` times, each to its exit: every start must exit 3 with a
    /// message and leave the footprint exactly as it was.
    fn refused_starts(
        &mut self,
        mut second: Option<&mut ChaosJob>,
        n: u32,
        what: &str,
        out: &mut Outcome,
    ) -> Result<(), Failure> {
        let before = self.footprint()?;
        let mut messages = BTreeSet::new();
        for i in 1..=n {
            let job = match second.as_deref_mut() {
                Some(j) => j,
                None => &mut self.orch.job,
            };
            // An idle exit bounds a start that wrongly carries on (it then exits 0).
            let mut run = job.spawn(Some(3_000), &[])?;
            let status = pipeline(
                run.wait(Duration::from_secs(120))
                    .context(format!("{what}: start {i} neither stopped nor went idle")),
            )?;
            self.orch.record_exit(&run, status, Some("operator needed"));
            let msg = run.error_message();
            let tail = run.tail(3);
            self.orch.ended.push(run);
            self.orch.restarts += u32::from(i > 1);
            let diff = self.footprint()?.diff(&before);
            if status.code() != Some(OPERATOR_NEEDED) || msg.is_none() || !diff.is_empty() {
                // Evidence: what the tables hold now against what was sent.
                let rec = self
                    .ctx
                    .rt
                    .block_on(crate::verify::reconcile(
                        &self.orch.job.verify_config,
                        &self.expected,
                    ))
                    .map_or_else(|e| format!("{e:#}"), |r| r.to_string());
                return Err(Failure::Pipeline(format!(
                    "{what}: start {i} of {n} must exit {OPERATOR_NEEDED} (operator needed) with a message and write nothing; it ended {status}, message {msg:?}; {}; the tables against what was sent: {rec}\nlast lines: {tail}",
                    if diff.is_empty() {
                        "it wrote nothing".to_string()
                    } else {
                        format!("it wrote: {diff}")
                    }
                )));
            }
            messages.insert(short(msg.as_deref().unwrap_or("")));
        }
        out.observations.push(format!(
            "{what}: {n} start(s) refused with exit {OPERATOR_NEEDED}, nothing written: {}",
            messages.into_iter().collect::<Vec<_>>().join(" | ")
        ));
        Ok(())
    }

    /// A naive supervisor (`Restart=always`, the orchestrator's backoff) restarts the job
    /// `restarts` times while the condition holds: every exit must be 3, the log must not grow,
    /// nothing may be written. Then the shipped systemd unit's policy must not restart after
    /// such an exit.
    fn crash_loop(
        &mut self,
        restarts: u32,
        condition: &str,
        out: &mut Outcome,
    ) -> Result<(), Failure> {
        let before = self.footprint()?;
        let first = self.orch.exits.len();
        let deadline = Instant::now() + Duration::from_secs(60 + 15 * u64::from(restarts));
        let mut checked = 0usize;
        self.orch.during = format!("crash loop ({condition})");
        loop {
            self.orch.supervise()?;
            while self.orch.exits.len() > first + checked {
                let e = self.orch.exits[first + checked].clone();
                checked += 1;
                let diff = self.footprint()?.diff(&before);
                if e.status != format!("exit {OPERATOR_NEEDED}")
                    || e.message.is_none()
                    || !diff.is_empty()
                {
                    return Err(Failure::Pipeline(format!(
                        "crash loop under Restart=always ({condition}): start {checked} must exit {OPERATOR_NEEDED} with a message and write nothing; it ended {}, message {:?}; {}",
                        e.status,
                        e.message,
                        if diff.is_empty() {
                            "it wrote nothing".to_string()
                        } else {
                            format!("it wrote: {diff}")
                        }
                    )));
                }
            }
            if checked >= restarts as usize {
                break;
            }
            if Instant::now() > deadline {
                let diff = self.footprint()?.diff(&before);
                let tail = self
                    .orch
                    .current
                    .as_ref()
                    .map(|r| r.tail(5))
                    .unwrap_or_default();
                return Err(Failure::Pipeline(format!(
                    "crash loop under Restart=always ({condition}): start {} kept running instead of stopping for the operator; {}\nlast lines: {tail}",
                    checked + 1,
                    if diff.is_empty() {
                        "nothing written".to_string()
                    } else {
                        format!("it wrote: {diff}")
                    }
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The supervisor may have started one more: it must end the same way.
        if let Some(run) = self.orch.current.as_mut() {
            let status = pipeline(run.wait(Duration::from_secs(120)))?;
            self.orch.reap()?;
            if status.code() != Some(OPERATOR_NEEDED) {
                return Err(Failure::Pipeline(format!(
                    "crash loop ({condition}): the last restart ended {status}, not exit {OPERATOR_NEEDED}"
                )));
            }
        }
        let after = self.footprint()?;
        let diff = after.diff(&before);
        if !diff.is_empty() {
            return Err(Failure::Pipeline(format!(
                "crash loop ({condition}): the starts wrote: {diff}"
            )));
        }
        out.observations.push(format!(
            "crash loop under Restart=always ({condition}): {} starts, all exit {OPERATOR_NEEDED}; log entries {} before and after; nothing written",
            self.orch.exits.len() - first,
            before.log_entries()
        ));
        // The shipped unit: would systemd restart after this exit?
        // The unit shipped with the binary under test (`RECON_CHAOS_SYSTEMD_UNIT` when the binary
        // comes from another tree).
        let unit = std::env::var_os("RECON_CHAOS_SYSTEMD_UNIT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                crate::services::repo_root().join("infra/systemd/recon-pipeline.service")
            });
        let policy = RestartPolicy::read(&unit)?;
        if policy.restarts_after(OPERATOR_NEEDED) {
            return Err(Failure::Pipeline(format!(
                "crash loop: the shipped unit {} ({policy}) restarts the job after exit {OPERATOR_NEEDED}: a crash loop on every operator-needed stop",
                unit.display()
            )));
        }
        out.observations.push(format!(
            "crash loop: the shipped systemd unit ({policy}) stops restarting after exit {OPERATOR_NEEDED}"
        ));
        Ok(())
    }

    /// The topic is deleted, created again and filled past the old offsets while the job runs:
    /// the job must exit 3 by itself before committing anything of the new topic, a restart
    /// too; then the operator accepts the reset. The old topic's records the job had not
    /// checkpointed when it was deleted are lost with it: counted, and taken out of the oracle.
    fn topic_recreated_while_running(&mut self, out: &mut Outcome) -> Result<(), Failure> {
        let kind = "topic_recreated_while_running";
        let (brokers, topic) = (self.brokers(), self.topic());
        // The old topic's tail, published right before it goes: some of it may stay unread.
        let old_tail = self.next_chunk();
        self.publish_now(&old_tail)?;
        if self.positions.len() != self.sent.len() {
            return Err(Failure::Harness(anyhow::anyhow!(
                "positions of {} records for {} sent",
                self.positions.len(),
                self.sent.len()
            )));
        }
        let old: Vec<(Record, (i32, i64))> = self
            .sent
            .iter()
            .cloned()
            .zip(self.positions.iter().copied())
            .collect();
        self.ctx
            .rt
            .block_on(crate::kafka::delete_topic(&brokers, &topic))?;
        let start = Instant::now();
        while crate::kafka::exists(&brokers, &topic)? {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(Failure::Harness(anyhow::anyhow!(
                    "topic {topic} still exists 60 s after deletion"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let start = Instant::now();
        loop {
            match self.ctx.rt.block_on(crate::kafka::create_topic(
                &brokers,
                &topic,
                self.partitions,
            )) {
                Ok(()) => break,
                Err(_) if start.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let new = self.next_chunk();
        self.publish_now(&new)?;
        // The running job must stop by itself, for the operator.
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.orch.cur()?.poll()? {
                break s;
            }
            if start.elapsed() > Duration::from_secs(120) {
                let cut = self.head_cut().unwrap_or_default();
                return Err(Failure::Pipeline(format!(
                    "{kind}: the running job did not stop within 120 s of the new topic's records; it went on reading (checkpoint cut now {cut:?}; old offsets were {:?})",
                    old_cut(&old)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let msg = self.orch.cur()?.error_message();
        self.orch.reap()?;
        if status.code() != Some(OPERATOR_NEEDED) || msg.is_none() {
            return Err(Failure::Pipeline(format!(
                "{kind}: the running job must exit {OPERATOR_NEEDED} with a message; it ended {status}: {msg:?}"
            )));
        }
        // What the job checkpointed of the old topic stays; the rest went with the topic. A cut
        // past the old topic's end means it consumed records of the new one.
        let cut = self.head_cut()?;
        let old_end = old_cut(&old);
        if let Some((p, c)) = cut
            .iter()
            .find(|(p, c)| **c > old_end.get(p).copied().unwrap_or(0))
        {
            return Err(Failure::Pipeline(format!(
                "{kind}: the job stopped, but its last checkpoint consumed partition {p} up to {c}, past the old topic's end {:?}: it read the new topic",
                old_end.get(p)
            )));
        }
        let (kept, lost): (Vec<_>, Vec<_>) = old
            .into_iter()
            .partition(|(_, (p, o))| *o < cut.get(p).copied().unwrap_or(0));
        let kept: Vec<Record> = kept.into_iter().map(|(r, _)| r).collect();
        let mut kept_expected = Expected::default();
        let kept = reclassify(
            &kept,
            &lost.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
        );
        traffic::expect(&mut kept_expected, &kept);
        // Nothing of the new topic may be in the tables.
        let rec = self.ctx.rt.block_on(crate::verify::reconcile(
            &self.orch.job.verify_config,
            &kept_expected,
        ))?;
        if rec.phantom_or_changed > 0 || rec.duplicates > 0 {
            return Err(Failure::Pipeline(format!(
                "{kind}: the job stopped, but the tables already hold rows that are not the old topic's: {rec}"
            )));
        }
        out.observations.push(format!(
            "{kind}: running job stopped with exit {OPERATOR_NEEDED}: {}",
            short(msg.as_deref().unwrap_or(""))
        ));
        self.refused_starts(None, 1, kind, out)?;
        let (status, text) = self.orch.job.operator(
            &[
                "accept-topic-reset",
                "--reason",
                "recon-chaos: topic recreated while the job ran",
                "--yes",
            ],
            Duration::from_secs(90),
        )?;
        if !status.success() || !text.contains("topic reset written") {
            return Err(Failure::Pipeline(format!(
                "`accept-topic-reset` after a topic recreated while running failed ({status}):\n{text}"
            )));
        }
        // The oracle: the old topic's checkpointed records, then the new topic's.
        let mut sent = kept;
        sent.extend(new);
        self.sent = reclassify(
            &sent,
            &lost.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
        );
        self.expected = Expected::default();
        traffic::expect(&mut self.expected, &self.sent);
        self.files_truth_only = true;
        out.lost_with_topic = lost.len() as u64;
        self.lost = lost.iter().map(|(r, _)| r.clone()).collect();
        out.observations.push(format!(
            "{kind}: {} record(s) of the old topic were not checkpointed when it was deleted: lost with the topic, excluded from the oracle",
            lost.len()
        ));
        Ok(())
    }
}

/// Per partition, the next offset after the old records.
fn old_cut(old: &[(Record, (i32, i64))]) -> std::collections::BTreeMap<i32, i64> {
    let mut m = std::collections::BTreeMap::new();
    for (_, (p, o)) in old {
        let e = m.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    m
}

/// The records as the job classifies them when `lost` never reached it: a re-send or a
/// conflicting version whose first version was lost is the first the job sees (valid), and a
/// later first version then conflicts with it.
pub(super) fn reclassify(records: &[Record], lost: &[Record]) -> Vec<Record> {
    let originals: HashMap<uuid::Uuid, &recon_schemas::event::Event> = records
        .iter()
        .chain(lost)
        .filter_map(|r| match &r.kind {
            RecordKind::Valid(ev) => Some((ev.event_id, ev)),
            _ => None,
        })
        .collect();
    let mut first: HashMap<uuid::Uuid, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let ev = match &r.kind {
            RecordKind::Valid(ev) | RecordKind::ConflictingDuplicate(ev) => Some((*ev).clone()),
            RecordKind::Duplicate(id) => originals.get(id).map(|e| (*e).clone()),
            RecordKind::Poison(_) => None,
        };
        let kind = match ev {
            None => r.kind.clone(),
            Some(ev) => match first.get(&ev.event_id) {
                None => {
                    first.insert(ev.event_id, r.payload.clone());
                    RecordKind::Valid(ev)
                }
                Some(p) if *p == r.payload => RecordKind::Duplicate(ev.event_id),
                Some(_) => RecordKind::ConflictingDuplicate(ev),
            },
        };
        out.push(Record { kind, ..r.clone() });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::traffic::{TrafficSpec, build};

    #[test]
    fn a_resend_whose_first_version_was_lost_becomes_the_first_version() {
        let t = build(&TrafficSpec {
            seed: 9,
            trips: 400,
            partitions: 2,
            hostile: vec![],
            order_safe: false,
            concurrent_trips: None,
        })
        .unwrap();
        // Lose the first version of every event that is re-sent later.
        let resent: HashSet<uuid::Uuid> = t
            .records
            .iter()
            .filter_map(|r| match &r.kind {
                RecordKind::Duplicate(id) => Some(*id),
                _ => None,
            })
            .collect();
        assert!(!resent.is_empty());
        let (lost, kept): (Vec<Record>, Vec<Record>) = t.records.iter().cloned().partition(
            |r| matches!(&r.kind, RecordKind::Valid(ev) if resent.contains(&ev.event_id)),
        );
        let out = reclassify(&kept, &lost);
        assert_eq!(out.len(), kept.len());
        for id in &resent {
            let valid = out
                .iter()
                .filter(|r| matches!(&r.kind, RecordKind::Valid(ev) if ev.event_id == *id))
                .count();
            assert_eq!(
                valid, 1,
                "event {id}: one re-send must become the first version"
            );
        }
        // Nothing lost: classification unchanged.
        assert_eq!(
            reclassify(&t.records, &[])
                .iter()
                .map(|r| std::mem::discriminant(&r.kind))
                .collect::<Vec<_>>(),
            t.records
                .iter()
                .map(|r| std::mem::discriminant(&r.kind))
                .collect::<Vec<_>>()
        );
    }
}
