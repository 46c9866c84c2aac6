//! The operator-needed conditions of [`crate::operator`]: each made on the stopped job's own
//! records (a copy of what it removes is kept), and undone by the operator's remedy; and the
//! footprint a refused start must leave exactly as it was.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use chrono::Utc;
use rand::Rng;
use recon_pipeline::checkpoint::manifest::parse_log_path;

use super::{Failure, Outcome, Scenario, pipeline};
use crate::operator::Condition;
use crate::storage::{self, ObjectMeta};
use crate::tables::{self, TableState};

/// The table rollbacks and markers are judged on (every scenario's traffic has events).
const LEDGER: &str = "ledger_events";

/// Everything a refused start must leave as it was: every object under the scenario's
/// checkpoint and warehouse prefixes (size, ETag, modification time), and every table's
/// metadata location, current snapshot and markers.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Footprint {
    checkpoints: BTreeMap<String, ObjectMeta>,
    warehouse: BTreeMap<String, ObjectMeta>,
    tables: BTreeMap<String, TableState>,
}

impl Footprint {
    /// What changed from `before` to `self`, briefly; empty when nothing did.
    pub(super) fn diff(&self, before: &Footprint) -> String {
        let mut parts = Vec::new();
        for (what, a, b) in [
            ("checkpoint store", &before.checkpoints, &self.checkpoints),
            ("warehouse", &before.warehouse, &self.warehouse),
        ] {
            let added: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
            let deleted: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
            let rewritten: Vec<&String> = b
                .iter()
                .filter(|(k, m)| a.get(*k).is_some_and(|o| o != *m))
                .map(|(k, _)| k)
                .collect();
            for (verb, list) in [
                ("added", added),
                ("deleted", deleted),
                ("rewritten", rewritten),
            ] {
                if !list.is_empty() {
                    parts.push(format!(
                        "{what}: {} object(s) {verb} (e.g. {})",
                        list.len(),
                        list.iter()
                            .take(2)
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        for (name, t) in &self.tables {
            match before.tables.get(name) {
                Some(b) if b == t => {}
                Some(b) => parts.push(format!(
                    "table {name} moved: {} -> {} snapshots, current {:?} -> {:?}, markers {:?} -> {:?}",
                    b.snapshots,
                    t.snapshots,
                    b.current_snapshot,
                    t.current_snapshot,
                    b.markers,
                    t.markers
                )),
                None => parts.push(format!("table {name} created")),
            }
        }
        parts.join("; ")
    }

    /// Log entries in the checkpoint store (every job's under the prefix).
    pub(super) fn log_entries(&self) -> usize {
        self.checkpoints
            .keys()
            .filter(|k| k.contains("/log/"))
            .count()
    }
}

/// How the operator undoes a condition.
pub(super) enum Remedy {
    /// Make the checkpoint prefix hold this (newer) copy again.
    Store(BTreeMap<String, Bytes>),
    /// Put these objects of `bucket` back.
    PutBack {
        bucket: String,
        objects: BTreeMap<String, Bytes>,
    },
    /// Set the table's main branch forward to this snapshot again.
    RollForward { table: String, snapshot: i64 },
}

impl Scenario<'_> {
    /// The footprint now (read directly, not through the fault proxies).
    pub(super) fn footprint(&self) -> anyhow::Result<Footprint> {
        let ep = &self.ctx.services.endpoints;
        let name = &self.orch.job.name;
        self.ctx.rt.block_on(async {
            anyhow::Ok(Footprint {
                checkpoints: storage::list(ep, &ep.checkpoint_bucket, name).await?,
                warehouse: storage::list(ep, &ep.warehouse_bucket, name).await?,
                tables: tables::states(&self.orch.job.verify_config).await?,
            })
        })
    }

    /// SIGTERM the running job; it must exit 0 (final checkpoint and commit).
    pub(super) fn stop_clean(&mut self) -> Result<(), Failure> {
        let s = self.orch.stop_graceful(Duration::from_secs(120))?;
        if !s.success() {
            return Err(Failure::Pipeline(format!(
                "SIGTERM should stop the job cleanly (exit 0), got {s}: {:?}",
                self.orch.exits.last()
            )));
        }
        Ok(())
    }

    /// Polls (keeping the job running) until `ledger_events`' marker names a checkpoint after
    /// `after`.
    fn wait_marker_past(&mut self, after: u64) -> Result<u64, Failure> {
        let start = Instant::now();
        loop {
            let m = self
                .ctx
                .rt
                .block_on(tables::marker_checkpoint(
                    &self.orch.job.verify_config,
                    LEDGER,
                ))
                .unwrap_or(None);
            if let Some(m) = m.filter(|m| *m > after) {
                return Ok(m);
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(Failure::Pipeline(format!(
                    "no commit past checkpoint {after} within 120 s (marker {m:?})"
                )));
            }
            self.orch.supervise()?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Makes `c` hold on the job's records, stopping the job on the way (no run is current
    /// afterwards); returns the operator's remedy.
    pub(super) fn make_condition(
        &mut self,
        c: Condition,
        out: &mut Outcome,
    ) -> Result<Remedy, Failure> {
        let ep = self.ctx.services.endpoints.clone();
        let vc = self.orch.job.verify_config.clone();
        let name = self.orch.job.name.clone();
        self.ensure_recovered()?;
        let load = self.next_chunk();
        match c {
            Condition::OldStoreCopy { kill } => {
                // A consistent backup: taken while the job is paused.
                self.orch.cur()?.signal(libc::SIGSTOP)?;
                let copy =
                    self.ctx
                        .rt
                        .block_on(storage::copy_prefix(&ep, &ep.checkpoint_bucket, &name));
                self.orch.cur()?.signal(libc::SIGCONT)?;
                let old = copy?;
                let old_head = old
                    .keys()
                    .filter(|k| k.contains("/log/"))
                    .filter_map(|k| parse_log_path(k))
                    .map(|c| c.0)
                    .max()
                    .unwrap_or(0);
                // The job moves on and commits past the backup.
                self.publish_now(&load)?;
                let marker = self.wait_marker_past(old_head)?;
                if kill {
                    self.orch.kill()?;
                } else {
                    self.stop_clean()?;
                }
                let newer = self.ctx.rt.block_on(storage::copy_prefix(
                    &ep,
                    &ep.checkpoint_bucket,
                    &name,
                ))?;
                self.ctx.rt.block_on(storage::restore_prefix(
                    &ep,
                    &ep.checkpoint_bucket,
                    &name,
                    &old,
                ))?;
                out.observations.push(format!(
                    "{}: a backup whose log ends at {old_head} put back over the store; the tables hold checkpoint {marker}",
                    c.kind()
                ));
                Ok(Remedy::Store(newer))
            }
            Condition::NewestEntryDeleted => {
                let since = Utc::now();
                self.publish_now(&load)?;
                pipeline(
                    self.orch
                        .cur()?
                        .wait_for_records(since, Duration::from_secs(120)),
                )?;
                self.stop_clean()?;
                let marker = self
                    .ctx
                    .rt
                    .block_on(tables::marker_checkpoint(&vc, LEDGER))?
                    .context("ledger_events has no marker after a commit")?;
                // The newest entries, down to the one the tables hold.
                let root = format!("{name}/{name}/log/");
                let keys: Vec<String> = self
                    .ctx
                    .rt
                    .block_on(storage::list(&ep, &ep.checkpoint_bucket, &name))?
                    .into_keys()
                    .filter(|k| k.starts_with(&root))
                    .filter(|k| parse_log_path(k).is_some_and(|id| id.0 >= marker))
                    .collect();
                let s3 = storage::client(&ep, &ep.checkpoint_bucket)?;
                let mut objects = BTreeMap::new();
                for k in &keys {
                    objects.insert(k.clone(), self.ctx.rt.block_on(storage::get(&s3, k))?);
                }
                self.ctx
                    .rt
                    .block_on(storage::delete_paths(&ep, &ep.checkpoint_bucket, &keys))?;
                out.observations.push(format!(
                    "{}: {} newest log entr(ies) deleted, down to checkpoint {marker} that the tables hold",
                    c.kind(),
                    keys.len()
                ));
                Ok(Remedy::PutBack {
                    bucket: ep.checkpoint_bucket.clone(),
                    objects,
                })
            }
            Condition::TableRolledBack { back } => {
                // At least two commits of this job to roll between.
                let mut p = self.publish_bg(load, 4);
                let start = Instant::now();
                loop {
                    let n = self
                        .ctx
                        .rt
                        .block_on(tables::stamped_ancestry(&vc, LEDGER))
                        .map(|a| a.len())
                        .unwrap_or(0);
                    if n >= 2 && p.finished() {
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(120) {
                        return Err(Failure::Pipeline(format!(
                            "fewer than two commits to {LEDGER} within 120 s ({n})"
                        )));
                    }
                    self.orch.supervise()?;
                    std::thread::sleep(Duration::from_millis(200));
                }
                p.join()?;
                self.stop_clean()?;
                let anc = self
                    .ctx
                    .rt
                    .block_on(tables::stamped_ancestry(&vc, LEDGER))?;
                let (newest, newest_cp) = anc[0];
                let (target, target_cp) = anc[(back as usize).min(anc.len() - 1)];
                self.ctx
                    .rt
                    .block_on(tables::set_main(&vc, LEDGER, target))?;
                out.observations.push(format!(
                    "{}: {LEDGER} rolled back from checkpoint {newest_cp} to {target_cp} ({} stamped snapshots)",
                    c.kind(),
                    anc.len()
                ));
                Ok(Remedy::RollForward {
                    table: LEDGER.into(),
                    snapshot: newest,
                })
            }
            Condition::PendingFileDeleted => {
                self.stop_clean()?;
                self.publish_now(&load)?;
                // A checkpoint with files, durable, not committed: killed right after it.
                for _ in 0..3 {
                    let point = "after-checkpoint-durable";
                    self.orch
                        .spawn(&[("RECON_CRASH_AT", format!("{point}:1"))])?;
                    self.orch.expected_end = Some("crash point");
                    let run = self.orch.cur()?;
                    let status = pipeline(
                        run.wait(Duration::from_secs(150))
                            .context(format!("waiting for crash point {point}")),
                    )?;
                    let text = run.text();
                    self.orch.reap()?;
                    if status.signal() != Some(libc::SIGKILL)
                        || !text.contains(&format!("crash point {point} reached"))
                    {
                        return Err(Failure::Pipeline(format!(
                            "the run armed with {point}:1 should die by SIGKILL there; it ended with {status}"
                        )));
                    }
                    let (id, pending) = self.ctx.rt.block_on(storage::head_pending(&vc))?;
                    if pending.is_empty() {
                        continue;
                    }
                    let (table, path) = &pending[self.rng.random_range(0..pending.len())];
                    let bucket = &ep.warehouse_bucket;
                    let key = path
                        .strip_prefix(&format!("s3://{bucket}/"))
                        .with_context(|| format!("pending file {path} is not in {bucket}"))?
                        .to_string();
                    let s3 = storage::client(&ep, bucket)?;
                    let data = self.ctx.rt.block_on(storage::get(&s3, &key))?;
                    self.ctx.rt.block_on(storage::delete_paths(
                        &ep,
                        bucket,
                        std::slice::from_ref(&key),
                    ))?;
                    out.observations.push(format!(
                        "{}: checkpoint {id} durable, not committed; 1 of its {} pending files deleted ({table}, {} bytes)",
                        c.kind(),
                        pending.len(),
                        data.len()
                    ));
                    return Ok(Remedy::PutBack {
                        bucket: bucket.clone(),
                        objects: BTreeMap::from([(key, data)]),
                    });
                }
                Err(Failure::Harness(anyhow::anyhow!(
                    "three checkpoints in a row had no pending files"
                )))
            }
        }
    }

    /// Applies the operator's remedy.
    pub(super) fn remedy(&mut self, r: Remedy) -> anyhow::Result<()> {
        let ep = self.ctx.services.endpoints.clone();
        let name = self.orch.job.name.clone();
        match r {
            Remedy::Store(copy) => self.ctx.rt.block_on(storage::restore_prefix(
                &ep,
                &ep.checkpoint_bucket,
                &name,
                &copy,
            )),
            Remedy::PutBack { bucket, objects } => {
                let s3 = storage::client(&ep, &bucket)?;
                for (k, v) in objects {
                    self.ctx.rt.block_on(storage::put(&s3, &k, v))?;
                }
                Ok(())
            }
            Remedy::RollForward { table, snapshot } => self.ctx.rt.block_on(tables::set_main(
                &self.orch.job.verify_config,
                &table,
                snapshot,
            )),
        }
    }
}
