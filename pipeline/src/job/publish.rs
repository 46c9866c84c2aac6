//! Publishing: committing completed checkpoints to the tables, then recording and pruning.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::DataFile;
use iceberg::transaction::{ApplyTransactionAction, Transaction};

use crate::checkpoint::manifest::chain_ids;
use crate::checkpoint::protocol;
use crate::checkpoint::publish::{Published, Publisher};
use crate::crash::CrashPoint;
use crate::ids::CheckpointId;
use crate::lakehouse::LakehouseError;
use crate::sink::Output;

use super::{Job, JobError};

impl Job {
    /// Commits every completed checkpoint up to `self.last` to every table that lacks it (a
    /// fleet task only follows what its committer committed).
    pub(super) async fn publish(&mut self) -> Result<(), JobError> {
        if self.fleet.is_some() {
            return self.follow_committer().await;
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
        self.report.commits += landed;
        self.report.commit_durations.push(started.elapsed());
        crate::telemetry::committed(through.0, started.elapsed(), landed.min(1));
        if landed > 0 && self.report.first_data_commit.is_none() && self.report.counts.events > 0 {
            self.report.first_data_commit = Some(self.started.elapsed());
        }
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

    /// Deletes checkpoints nothing needs any more.
    async fn prune(&mut self, committed_everywhere: CheckpointId) -> Result<(), JobError> {
        let present = self.log.ids_after(None).await?;
        // Every checkpoint that stays keeps the directories its own state chain reads (a
        // rewind reads them), not only the head's: a fold's base sits in an older directory.
        // Grown until nothing changes: at most one round per checkpoint present.
        let Some(mut chain) = chain_ids(&self.state_chain) else {
            tracing::warn!(chain = ?self.state_chain, "the state chain names a file outside a checkpoint directory; nothing is pruned");
            return Ok(());
        };
        let mut doomed = Vec::new();
        for _ in 0..=present.len() {
            doomed = protocol::prunable(
                &present,
                self.last,
                &chain,
                Some(committed_everywhere),
                self.cfg.keep_last,
            );
            let before = chain.len();
            for id in present.iter().filter(|id| !doomed.contains(id)) {
                let Some(ids) = self.chain_of(*id).await else {
                    // Unknown: delete nothing this time; the next commit prunes.
                    return Ok(());
                };
                for c in ids {
                    if !chain.contains(&c) {
                        chain.push(c);
                    }
                }
            }
            if chain.len() == before {
                break;
            }
        }
        if !doomed.is_empty() {
            let n = self.log.prune(&doomed).await?;
            tracing::debug!(pruned = n, "old checkpoints pruned");
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

    /// The checkpoints whose directories a checkpoint's state chain reads (manifests never
    /// change: remembered). A checkpoint without an entry or with a broken manifest (a prune cut
    /// short) reads none; `None` when the store did not answer.
    async fn chain_of(&mut self, id: CheckpointId) -> Option<Vec<CheckpointId>> {
        if let Some(c) = self.chains.get(&id) {
            return Some(c.clone());
        }
        let chain = match self.log.completed(id).await {
            Ok(Some(c)) => match chain_ids(&c.manifest.state_chain) {
                Some(ids) => ids,
                None => {
                    tracing::warn!(checkpoint = %id, chain = ?c.manifest.state_chain, "a kept checkpoint's state chain names a file outside a checkpoint directory; pruning waits");
                    return None;
                }
            },
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
