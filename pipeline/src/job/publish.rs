//! Publishing: committing completed checkpoints to the tables, then recording and pruning.

use std::collections::{BTreeMap, HashMap, HashSet};

use iceberg::spec::DataFile;
use iceberg::transaction::{ApplyTransactionAction, Transaction};

use crate::checkpoint::protocol;
use crate::checkpoint::publish::{Published, Publisher};
use crate::crash::CrashPoint;
use crate::ids::CheckpointId;
use crate::lakehouse::LakehouseError;
use crate::sink::Output;

use super::{Job, JobError};

/// A publish running beside the input: every completed checkpoint up to `through` to every
/// table that lacks it, then the informative commit record. One at a time; what it commits is
/// durable in the log already, so a crash during it is what a crash during a synchronous
/// publish is (recovery publishes), and the crash points fire inside it as before.
///
/// It is a future of the job's own task, polled by the main loop between batches (the job's
/// futures are not `Send` for every lifetime, a compiler limitation, so it is not spawned):
/// its I/O proceeds on the runtime meanwhile, and each step continues at the next poll.
pub(super) struct Publishing {
    through: CheckpointId,
    started: std::time::Instant,
    run: std::pin::Pin<Box<dyn Future<Output = PublishEnd>>>,
}

/// Waits for the publish in `slot` to end (never, when none runs: a branch of the main loop).
/// Cancel-safe: dropped before it ends, the publish stays in `slot`; what it returns goes to
/// [`Job::land`], which is not cancelled (a prune cut short at every batch would never prune).
pub(super) async fn running(slot: &mut Option<Publishing>) -> (Publishing, PublishEnd) {
    let Some(p) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let ended = (&mut p.run).await;
    (slot.take().expect("a publish was running"), ended)
}

/// What a publish beside the input returns: appends that landed, and its copy of the crash
/// plan (the visits it counted).
pub(super) type PublishEnd = Result<(u64, super::CrashPlan), JobError>;

impl Job {
    /// Exactly-once, one process: starts publishing up to `self.last` beside the input, unless
    /// a publish is running (the next barrier, or its end, starts the next one).
    pub(super) fn start_publish(&mut self) {
        if self.publishing.is_some() {
            return;
        }
        let through = self.last;
        let committer = self.committer.clone();
        let log = self.log.clone();
        let uncommitted: BTreeMap<CheckpointId, crate::checkpoint::manifest::Manifest> = self
            .uncommitted
            .range(..=through)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let files = self.files.clone();
        let tables: Vec<_> = Output::ALL
            .into_iter()
            .map(|o| self.sink.table(o).clone())
            .collect();
        let mut crash = self.crash.clone();
        let generation = self.generation;
        let run = Box::pin(async move {
            let publisher = Publisher::new(&committer, &log, &uncommitted, Some(files.as_ref()));
            let landed = publish_tables(
                &publisher,
                &tables,
                through,
                &mut crash,
                CrashPoint::DuringCommit,
            )
            .await?;
            crash.hit(CrashPoint::AfterCommitBeforeRecord)?;
            log.record_commit(through, generation).await?;
            Ok((landed, crash))
        });
        self.publishing = Some(Publishing {
            through,
            started: std::time::Instant::now(),
            run,
        });
    }

    /// Waits for the publish beside the input to end. Cancel-safe (see [`running`]).
    pub(super) async fn published(&mut self) -> (Publishing, PublishEnd) {
        running(&mut self.publishing).await
    }

    /// A publish beside the input ended: forgets and prunes what it committed, and starts the
    /// next one if due; its error stops the job.
    pub(super) async fn land(
        &mut self,
        (p, ended): (Publishing, PublishEnd),
    ) -> Result<(), JobError> {
        let (landed, crash) = ended?;
        self.crash.take_visits(&crash);
        self.committed(p.through, landed, p.started.elapsed());
        self.uncommitted.retain(|id, _| *id > p.through);
        // Checkpoints completed while it ran wait for the next publish.
        self.since_commit = self.uncommitted.len() as u32;
        self.oldest_uncommitted = (!self.uncommitted.is_empty()).then_some(p.started);
        self.prune(p.through).await?;
        if self.commit_due() {
            self.start_publish();
        }
        Ok(())
    }

    /// Counts a publish that landed `landed` appends through `through`.
    fn committed(&mut self, through: CheckpointId, landed: u64, took: std::time::Duration) {
        self.report.commits += landed;
        self.report.commit_durations.push(took);
        crate::telemetry::committed(through.0, took, landed.min(1));
        if landed > 0 && self.report.first_data_commit.is_none() && self.report.counts.events > 0 {
            self.report.first_data_commit = Some(self.started.elapsed());
        }
    }

    /// Commits every completed checkpoint up to `self.last` to every table that lacks it (a
    /// fleet task only follows what its committer committed), after the publish running
    /// beside the input, if any.
    pub(super) async fn publish(&mut self) -> Result<(), JobError> {
        if self.fleet.is_some() {
            return self.follow_committer().await;
        }
        if self.publishing.is_some() {
            let ended = self.published().await;
            self.land(ended).await?;
        }
        let through = self.last;
        let started = std::time::Instant::now();
        let publisher = Publisher::new(
            &self.committer,
            &self.log,
            &self.uncommitted,
            Some(self.files.as_ref()),
        );
        let tables: Vec<_> = Output::ALL
            .into_iter()
            .map(|o| self.sink.table(o).clone())
            .collect();
        let landed = publish_tables(
            &publisher,
            &tables,
            through,
            &mut self.crash,
            CrashPoint::DuringCommit,
        )
        .await?;
        self.committed(through, landed, started.elapsed());
        self.crash.hit(CrashPoint::AfterCommitBeforeRecord)?;
        self.log.record_commit(through, self.generation).await?;
        self.uncommitted.retain(|id, _| *id > through);
        self.since_commit = 0;
        self.oldest_uncommitted = None;
        self.prune(through).await
    }

    /// A fleet task: forgets and prunes the checkpoints its committer has committed to every
    /// table ([`crate::fleet::progress`]); before the first commit, nothing.
    async fn follow_committer(&mut self) -> Result<(), JobError> {
        let fleet = self.fleet.as_ref().expect("a fleet task");
        let committed = crate::fleet::progress::read(&fleet.log(&self.log)).await?;
        let Some(through) = committed.and_then(|c| c.tasks.get(&fleet.task).copied()) else {
            return Ok(());
        };
        let through = through.min(self.last);
        self.uncommitted.retain(|id, _| *id > through);
        self.since_commit = 0;
        self.oldest_uncommitted = None;
        self.prune(through).await
    }

    /// Deletes the checkpoints nothing needs any more: committed everywhere, older than the
    /// head and outside the newest `checkpoint.keep_last`. Every checkpoint that stays can be
    /// restored (a rewind reads its chain): the files its chain reads stay wherever they are,
    /// also in a pruned checkpoint's directory (a fold's base sits in the directory of the
    /// checkpoint whose chain it folds, a delta in an older one's), and are deleted by a later
    /// prune once no kept chain reads them. (Keeping those directories' checkpoints instead
    /// kept their own chains, and so on back to the first: nothing was pruned in a long run.)
    async fn prune(&mut self, committed_everywhere: CheckpointId) -> Result<(), JobError> {
        let present = self.log.ids_after(None).await?;
        let doomed = protocol::prunable(
            &present,
            self.last,
            &[],
            Some(committed_everywhere),
            self.cfg.keep_last,
        );
        let mut read: HashSet<String> = self.state_chain.iter().cloned().collect();
        for id in present.iter().filter(|id| !doomed.contains(id)) {
            let Some(chain) = self.chain_of(*id).await else {
                // Unknown: delete nothing this time; the next commit prunes.
                return Ok(());
            };
            read.extend(chain);
        }
        if !doomed.is_empty() {
            let (n, left) = self.log.prune_keeping(&doomed, &read).await?;
            self.lingering.extend(left);
            tracing::debug!(pruned = n, "old checkpoints pruned");
        }
        // Files left in pruned directories that no kept chain reads any more.
        for f in self.lingering.clone() {
            if !crate::checkpoint::log::still_read(&read, &f) {
                self.log.delete_file(&f).await?;
                self.lingering.remove(&f);
            }
        }
        self.chains
            .retain(|id, _| present.contains(id) && !doomed.contains(id));
        // Cold runs merged away that no retained checkpoint lists any more.
        if let Some(cold) = self.cold.as_mut()
            && let Some(oldest) = present.iter().filter(|id| !doomed.contains(id)).min()
        {
            match cold.collect(&self.log, *oldest).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "retired cold runs deleted"),
                // Kept in the retired list: the next prune tries again.
                Err(e) => tracing::warn!(error = %e, "cannot delete retired cold runs yet"),
            }
        }
        Ok(())
    }

    /// The state files a checkpoint's chain reads (manifests never change: remembered). A
    /// checkpoint without an entry or with a broken manifest (a prune cut short) reads none;
    /// `None` when the store did not answer.
    async fn chain_of(&mut self, id: CheckpointId) -> Option<Vec<String>> {
        if let Some(c) = self.chains.get(&id) {
            return Some(c.clone());
        }
        let chain = match self.log.completed(id).await {
            Ok(Some(c)) => c.manifest.state_chain,
            Ok(None) | Err(crate::checkpoint::log::LogError::Corrupt { .. }) => Vec::new(),
            Err(e) => {
                tracing::debug!(checkpoint = %id, error = %e, "cannot read a kept checkpoint's manifest; pruning waits");
                return None;
            }
        };
        self.chains.insert(id, chain.clone());
        Some(chain)
    }

    /// Non-exactly-once modes: append files straight away, no marker guard.
    pub(super) async fn publish_plain(
        &mut self,
        id: CheckpointId,
        files: BTreeMap<String, Vec<DataFile>>,
    ) -> Result<(), JobError> {
        for output in Output::ALL {
            let table = self.sink.table(output).clone();
            let Some(fs) = files
                .get(table.identifier().name())
                .filter(|f| !f.is_empty())
            else {
                continue;
            };
            let fresh =
                crate::lakehouse::load_table(self.committer.catalog().as_ref(), table.identifier())
                    .await?;
            let props = HashMap::from([
                (
                    "recon.delivery".to_string(),
                    format!("{:?}", self.cfg.delivery),
                ),
                ("recon.plain-checkpoint-id".to_string(), id.to_string()),
            ]);
            let tx = Transaction::new(&fresh);
            let tx = tx
                .fast_append()
                .with_check_duplicate(false)
                .add_data_files(fs.clone())
                .set_snapshot_properties(props)
                .apply(tx)
                .map_err(|source| LakehouseError::Catalog {
                    op: "build the append of",
                    what: table.identifier().to_string(),
                    source,
                })?;
            tx.commit(self.committer.catalog().as_ref())
                .await
                .map_err(|source| LakehouseError::Catalog {
                    op: "commit to",
                    what: table.identifier().to_string(),
                    source,
                })?;
            self.report.commits += 1;
        }
        Ok(())
    }
}

/// Commits every checkpoint up to `through` to every table that lacks it: every table's pending
/// files are checked first (a missing one stops with no table changed), then one guarded append
/// per table; `between` fires after the first table. Returns the appends that landed.
pub(crate) async fn publish_tables(
    publisher: &Publisher<'_>,
    tables: &[iceberg::table::Table],
    through: CheckpointId,
    crash: &mut super::CrashPlan,
    between: CrashPoint,
) -> Result<u64, JobError> {
    publisher.check_pending(tables, through).await?;
    let mut landed = 0;
    for (i, table) in tables.iter().enumerate() {
        if publisher.table(table, through).await? == Published::Committed {
            landed += 1;
        }
        if i == 0 {
            crash.hit(between)?;
        }
    }
    Ok(landed)
}
