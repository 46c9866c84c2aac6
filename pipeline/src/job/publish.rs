//! Publishing: committing completed checkpoints to the tables, then recording and pruning.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{DataFile, deserialize_data_file_from_json};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};

use crate::checkpoint::commit::{CommitError, CommitOutcome, CommitRequest};
use crate::checkpoint::log::chain_ids;
use crate::checkpoint::manifest::Manifest;
use crate::checkpoint::protocol::{self, CommitPlan};
use crate::crash::CrashPoint;
use crate::ids::CheckpointId;
use crate::sink::Output;

use super::{Job, JobError};

/// Re-plans allowed when the table keeps moving under a commit (another process of the job).
const REPLANS_MAX: u32 = 10;

impl Job {
    /// Commits every completed checkpoint up to `self.last` to every table that lacks it.
    pub(super) async fn publish(&mut self) -> Result<(), JobError> {
        let through = self.last;
        for (i, output) in Output::ALL.into_iter().enumerate() {
            let table = self.sink.table(output).clone();
            self.publish_table(&table, through).await?;
            if i == 0 {
                self.crash.hit(CrashPoint::DuringCommit)?;
            }
        }
        self.crash.hit(CrashPoint::AfterCommitBeforeRecord)?;
        self.log.record_commit(through, self.generation).await?;
        self.uncommitted.retain(|id, _| *id > through);
        self.since_commit = 0;
        self.oldest_uncommitted = None;
        self.prune(through).await
    }

    async fn publish_table(&mut self, table: &Table, head: CheckpointId) -> Result<(), JobError> {
        let ident = table.identifier().clone();
        for _ in 0..=REPLANS_MAX {
            let marks = self.committer.marks(&ident).await?;
            match protocol::plan_commit(self.generation, head, &marks) {
                CommitPlan::UpToDate => return Ok(()),
                CommitPlan::Fenced { ours, theirs } => {
                    return Err(CommitError::Fenced {
                        table: ident.to_string(),
                        job: self.cfg.job_id.clone(),
                        ours,
                        theirs,
                    }
                    .into());
                }
                CommitPlan::TableAhead { committed, head } => {
                    return Err(JobError::Protocol(format!(
                        "table {ident} holds checkpoint {committed} of job {} but the checkpoint log ends at {head}: \
                         the log was lost or replaced. Committing now could duplicate data; restore the checkpoint \
                         store or start under a new job_id",
                        self.cfg.job_id
                    )));
                }
                CommitPlan::Commit { after, through } => {
                    let req = self.request(table, after, through).await?;
                    let started = std::time::Instant::now();
                    match self.committer.commit(&req).await? {
                        CommitOutcome::Committed => {
                            self.report.commits += 1;
                            tracing::info!(table = %ident, first = %req.first, through = %through,
                                files = req.files.len(), duration_ms = started.elapsed().as_millis() as u64,
                                "commit landed");
                            return Ok(());
                        }
                        CommitOutcome::AlreadyCommitted => {
                            tracing::info!(table = %ident, through = %through, "already committed (verified)");
                            return Ok(());
                        }
                        CommitOutcome::Stale { committed } => {
                            tracing::warn!(table = %ident, ?committed, "table moved under the commit; re-planning");
                        }
                    }
                }
            }
        }
        Err(JobError::Protocol(format!(
            "table {ident}: the table kept moving under {REPLANS_MAX} commit plans; is another instance of job {} running?",
            self.cfg.job_id
        )))
    }

    /// The manifest of a completed checkpoint, from memory or the log.
    async fn manifest_of(&self, id: CheckpointId) -> Result<Manifest, JobError> {
        if let Some(m) = self.uncommitted.get(&id) {
            return Ok(m.clone());
        }
        match self.log.completed(id).await? {
            Some(c) => Ok(c.manifest),
            None => Err(JobError::Protocol(format!(
                "checkpoint {id} must be committed but its log entry is gone (pruned?); the tables lack it"
            ))),
        }
    }

    /// Builds the commit of checkpoints `(after, through]` for one table.
    async fn request(
        &self,
        table: &Table,
        after: Option<CheckpointId>,
        through: CheckpointId,
    ) -> Result<CommitRequest, JobError> {
        let name = table.identifier().name();
        let first = after.map(CheckpointId::next).unwrap_or(CheckpointId(1));
        let mut files = Vec::new();
        let mut offsets: BTreeMap<i32, (i64, i64, u64)> = BTreeMap::new();
        let mut id = first;
        while id <= through {
            let m = self.manifest_of(id).await?;
            if let Some(p) = m.pending.get(name) {
                files.extend(decode_files(table, p.spec_id, p.schema_id, &p.files)?);
            }
            for (pid, cut) in &m.partitions {
                let e = offsets.entry(pid.0).or_insert((cut.start.0, cut.end.0, 0));
                e.0 = e.0.min(cut.start.0);
                e.1 = e.1.max(cut.end.0);
                e.2 += cut.records;
            }
            id = id.next();
        }
        let offsets_json = serde_json::to_string(
            &offsets
                .iter()
                .map(|(p, (s, e, n))| {
                    (
                        p.to_string(),
                        serde_json::json!({"start": s, "end": e, "records": n}),
                    )
                })
                .collect::<serde_json::Map<_, _>>(),
        )
        .expect("offsets serialize");
        Ok(CommitRequest {
            table: table.identifier().clone(),
            after,
            first,
            through,
            files,
            offsets_json,
        })
    }

    /// Deletes checkpoints nothing needs any more.
    async fn prune(&mut self, committed_everywhere: CheckpointId) -> Result<(), JobError> {
        let present = self.log.ids_after(None).await?;
        let chain = chain_ids(&self.state_chain);
        let doomed = protocol::prunable(
            &present,
            self.last,
            &chain,
            Some(committed_everywhere),
            self.cfg.keep_last,
        );
        if !doomed.is_empty() {
            let n = self.log.prune(&doomed).await?;
            tracing::debug!(pruned = n, "old checkpoints pruned");
        }
        Ok(())
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
            let fresh = self
                .committer
                .catalog()
                .load_table(table.identifier())
                .await
                .map_err(|e| JobError::Protocol(format!("loading {}: {e}", table.identifier())))?;
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
                .map_err(|e| JobError::Protocol(e.to_string()))?;
            tx.commit(self.committer.catalog().as_ref())
                .await
                .map_err(|e| {
                    JobError::Protocol(format!("commit to {}: {e}", table.identifier()))
                })?;
            self.report.commits += 1;
        }
        Ok(())
    }
}

/// Turns serialized pending files back into `DataFile`s with the spec and schema they were
/// written with.
fn decode_files(
    table: &Table,
    spec_id: i32,
    schema_id: i32,
    files: &[String],
) -> Result<Vec<DataFile>, JobError> {
    let md = table.metadata();
    let name = table.identifier();
    let spec = md.partition_spec_by_id(spec_id).ok_or_else(|| {
        JobError::Protocol(format!(
            "{name}: partition spec {spec_id} of pending files is gone"
        ))
    })?;
    let schema = md.schema_by_id(schema_id).ok_or_else(|| {
        JobError::Protocol(format!(
            "{name}: schema {schema_id} of pending files is gone"
        ))
    })?;
    let ptype = spec
        .partition_type(schema)
        .map_err(|e| JobError::Protocol(format!("{name}: {e}")))?;
    files
        .iter()
        .map(|json| {
            deserialize_data_file_from_json(json, spec_id, &ptype, schema)
                .map_err(|e| JobError::Protocol(format!("{name}: pending file unreadable: {e}")))
        })
        .collect()
}
