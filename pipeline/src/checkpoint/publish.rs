//! Publishing completed checkpoints to one table: plan, build the append from the manifests
//! of the checkpoints the table lacks, commit through the guard, re-plan if the table moved.
//!
//! Shared by the job and by the seeded simulation, so the simulation proves the code that runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use iceberg::spec::{DataFile, deserialize_data_file_from_json};
use iceberg::table::Table;

use crate::checkpoint::commit::{CommitError, CommitOutcome, CommitRequest, Committer};
use crate::checkpoint::log::{CheckpointLog, LogError};
use crate::checkpoint::manifest::Manifest;
use crate::checkpoint::presence::{self, Expected, FileSizes, PendingFileError};
use crate::checkpoint::protocol::{self, AncestryEnd, CommitPlan, Refusal};
use crate::ids::CheckpointId;

/// Re-plans allowed when the table keeps moving under a commit (another process of the job).
pub const REPLANS_MAX: u32 = 10;

/// Errors of publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The commit failed or this process is fenced.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The checkpoint log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The table cannot take this log's checkpoints (ahead of the log, or a different
    /// checkpoint under the same number): an operator must act; nothing was committed.
    #[error("{0}")]
    Refused(Refusal),
    /// The table kept moving under every plan: another instance of the job is committing.
    #[error(
        "table {table}: the table kept moving under {REPLANS_MAX} commit plans; is another instance of job {job} running?"
    )]
    KeptMoving {
        /// Table.
        table: String,
        /// Job.
        job: String,
    },
    /// A checkpoint a table lacks is no longer in the log: its files cannot be committed.
    #[error(
        "checkpoint {id} must be committed but its log entry is gone (pruned?); the tables lack it: restore the checkpoint store from a backup, or rewind (`recon-pipeline rewind`) to a checkpoint the tables hold"
    )]
    CheckpointGone {
        /// The checkpoint.
        id: CheckpointId,
    },
    /// The pending files of a checkpoint cannot be read against the table's metadata (their
    /// partition spec or schema is gone from it, or the recorded file does not parse).
    #[error(
        "table {table}: the pending files of a checkpoint cannot be committed: {what}; was the table's partition spec or schema replaced while the job ran?"
    )]
    PendingUnreadable {
        /// Table.
        table: String,
        /// What does not match, with the ids.
        what: String,
    },
    /// A pending file is missing or the wrong size (operator needed), or could not be checked
    /// (transient); see [`PendingFileError::needs_operator`]. Nothing was committed.
    #[error(transparent)]
    PendingFile(#[from] PendingFileError),
}

/// What publishing did to one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The table already held the head.
    UpToDate,
    /// An append by this call landed (verified).
    Committed,
    /// The append had landed before (a lost reply or another process); verified.
    AlreadyCommitted,
}

/// Everything publishing reads.
///
/// Caller sequence for one publish: [`Publisher::new`] once, [`Publisher::check_pending`] over
/// every table (nothing is committed anywhere if a pending file is missing), then
/// [`Publisher::table`] per table with the marks the check returned.
pub struct Publisher<'a> {
    /// Commits for this process.
    committer: &'a Committer,
    /// The job's checkpoint log (for manifests not in memory).
    log: &'a CheckpointLog,
    /// Manifests of recent completed checkpoints, to spare reads.
    uncommitted: &'a BTreeMap<CheckpointId, Manifest>,
    /// Where pending files are checked before a commit; `None` only where files live nowhere
    /// (unit tests of the planning).
    files: Option<&'a dyn FileSizes>,
    /// Paths checked present during this publish (each file is asked about once).
    checked: Mutex<HashSet<String>>,
}

impl<'a> Publisher<'a> {
    /// A publisher for one round of publishing.
    pub fn new(
        committer: &'a Committer,
        log: &'a CheckpointLog,
        uncommitted: &'a BTreeMap<CheckpointId, Manifest>,
        files: Option<&'a dyn FileSizes>,
    ) -> Publisher<'a> {
        Publisher {
            committer,
            log,
            uncommitted,
            files,
            checked: Mutex::new(HashSet::new()),
        }
    }

    /// Checks, for every table, that each file of the checkpoints it lacks up to `head` exists
    /// with its recorded size, before any commit: a missing one stops publishing with
    /// [`PendingFileError::Missing`] and no table changes. Returns the marks read, one per
    /// table, for [`Publisher::table`].
    pub async fn check_pending(
        &self,
        tables: &[Table],
        head: CheckpointId,
    ) -> Result<(), PublishError> {
        let mut expected = Vec::new();
        let mut committed = HashMap::new();
        for table in tables {
            let ident = table.identifier();
            let marks = self.committer.marks(ident).await?;
            committed.insert(ident.to_string(), marks.committed);
            if let CommitPlan::Commit { after, through } =
                protocol::plan_commit(self.committer.generation(), head, &marks)
            {
                let first = after.map(CheckpointId::next).unwrap_or(CheckpointId(1));
                let mut id = first;
                while id <= through {
                    let m = self.manifest_of(id).await?;
                    expected.extend(self.pending_of(table, &m)?);
                    id = id.next();
                }
            }
        }
        self.verify(&expected, |t| committed.get(t).copied().flatten())
            .await
    }

    /// The files of `m` for `table`, with what the manifest records.
    fn pending_of(&self, table: &Table, m: &Manifest) -> Result<Vec<Expected>, PublishError> {
        let Some(p) = m.pending.get(table.identifier().name()) else {
            return Ok(Vec::new());
        };
        let files = decode_files(table, p.spec_id, p.schema_id, &p.files)?;
        Ok(expectations(table, m.checkpoint_id, &files))
    }

    /// Checks the files not yet checked during this publish.
    async fn verify(
        &self,
        files: &[Expected],
        last_committed: impl Fn(&str) -> Option<CheckpointId>,
    ) -> Result<(), PublishError> {
        let Some(sizes) = self.files else {
            return Ok(());
        };
        let todo: Vec<Expected> = {
            let checked = self.checked.lock().expect("checked set");
            files
                .iter()
                .filter(|f| !checked.contains(&f.path))
                .cloned()
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        presence::verify(sizes, self.committer.job(), &todo, last_committed).await?;
        tracing::debug!(
            files = todo.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "pending files present"
        );
        let mut checked = self.checked.lock().expect("checked set");
        checked.extend(todo.into_iter().map(|f| f.path));
        Ok(())
    }

    /// Brings one table up to checkpoint `head`: plan, commit through the guard, re-plan when
    /// the table moved, until the table holds `head`. A plan that spans a topic reset is
    /// committed in two appends (one per input epoch). Every file is checked present before its commit (once per publish).
    pub async fn table(
        &self,
        table: &Table,
        head: CheckpointId,
    ) -> Result<Published, PublishError> {
        let ident = table.identifier().clone();
        let mut done = Published::UpToDate;
        for _ in 0..=REPLANS_MAX {
            // Read on every plan (not taken from `check_pending`): the checkpoint identity check
            // needs the stamp's snapshot, and the guard refuses any base but the plan's anyway.
            let (marks, found) = self.committer.reading(&ident).await?;
            self.same_checkpoint(&found.table, &found.end).await?;
            match protocol::plan_commit(self.committer.generation(), head, &marks) {
                CommitPlan::UpToDate => return Ok(done),
                CommitPlan::Fenced { ours, theirs } => {
                    return Err(CommitError::Fenced {
                        table: ident.to_string(),
                        job: self.committer.job().clone(),
                        ours,
                        theirs,
                    }
                    .into());
                }
                CommitPlan::TableAhead { committed, head } => {
                    return Err(PublishError::Refused(Refusal::TableAhead {
                        table: ident.to_string(),
                        job: self.committer.job().to_string(),
                        committed,
                        head: Some(head),
                    }));
                }
                CommitPlan::Commit { after, through } => {
                    let req = self.request(table, after, through).await?;
                    let started = std::time::Instant::now();
                    let split = req.through < through;
                    match self.committer.commit(&req).await? {
                        CommitOutcome::Committed => {
                            tracing::info!(table = %ident, first = %req.first, through = %req.through,
                                files = req.files.len(), duration_ms = started.elapsed().as_millis() as u64,
                                "commit landed");
                            done = Published::Committed;
                            if !split {
                                return Ok(done);
                            }
                        }
                        CommitOutcome::AlreadyCommitted => {
                            tracing::info!(table = %ident, through = %req.through, "already committed (verified)");
                            if done == Published::UpToDate {
                                done = Published::AlreadyCommitted;
                            }
                            if !split {
                                return Ok(done);
                            }
                        }
                        CommitOutcome::Stale { committed } => {
                            tracing::warn!(table = %ident, ?committed, "table moved under the commit; re-planning");
                        }
                    }
                }
            }
        }
        Err(PublishError::KeptMoving {
            table: ident.to_string(),
            job: self.committer.job().to_string(),
        })
    }

    /// Refuses when the table's newest stamp names a checkpoint the log still holds under
    /// another manifest (an older copy of the log that re-grew to the same id): the number
    /// matches, the checkpoint does not. Stamps from before the sha existed pass.
    async fn same_checkpoint(&self, table: &str, end: &AncestryEnd) -> Result<(), PublishError> {
        let AncestryEnd::Stamp {
            stamp,
            checkpoint_sha256: Some(table_sha),
            snapshot,
        } = end
        else {
            return Ok(());
        };
        let Some(entry) = self.log.entry(stamp.through).await? else {
            return Ok(());
        };
        if entry.manifest_sha256 != *table_sha {
            return Err(PublishError::Refused(Refusal::NotTheLogsCheckpoint {
                table: format!("{table} (snapshot {snapshot})"),
                checkpoint: stamp.through,
                table_sha256: table_sha.clone(),
                log_sha256: entry.manifest_sha256,
            }));
        }
        Ok(())
    }

    /// The manifest of a completed checkpoint, from memory or the log.
    async fn manifest_of(&self, id: CheckpointId) -> Result<Manifest, PublishError> {
        if let Some(m) = self.uncommitted.get(&id) {
            return Ok(m.clone());
        }
        match self.log.completed(id).await? {
            Some(c) => Ok(c.manifest),
            None => Err(PublishError::CheckpointGone { id }),
        }
    }

    /// Builds the commit of checkpoints `(after, through]` for one table, or of the part of
    /// them in the first one's input epoch (offsets of two epochs are of different topics, so
    /// one stamp cannot describe both); the request's `through` says which.
    pub async fn request(
        &self,
        table: &Table,
        after: Option<CheckpointId>,
        through: CheckpointId,
    ) -> Result<CommitRequest, PublishError> {
        let name = table.identifier().name();
        let first = after.map(CheckpointId::next).unwrap_or(CheckpointId(1));
        let mut files = Vec::new();
        let mut offsets: BTreeMap<i32, (i64, i64, u64)> = BTreeMap::new();
        let mut id = first;
        let mut epoch = None;
        while id <= through {
            let m = self.manifest_of(id).await?;
            if *epoch.get_or_insert(m.input_epoch) != m.input_epoch {
                break;
            }
            if let Some(p) = m.pending.get(name) {
                let decoded = decode_files(table, p.spec_id, p.schema_id, &p.files)?;
                self.verify(&expectations(table, id, &decoded), |_| after)
                    .await?;
                files.extend(decoded);
            }
            for (pid, cut) in &m.partitions {
                // Records below a rewind's replay bound were committed before: not this commit's.
                let mut cut = *cut;
                if let Some(u) = m.replay_until.get(pid) {
                    if cut.end <= *u {
                        continue;
                    }
                    cut.start = cut.start.max(*u);
                }
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
        // `id` is the first checkpoint not included; the loop included at least `first`.
        let through = CheckpointId(id.0 - 1);
        assert!(
            first <= through,
            "a commit request includes at least one checkpoint"
        );
        // The identity of the checkpoint the stamp names, beside its number.
        let through_sha256 = self.log.entry(through).await?.map(|e| e.manifest_sha256);
        Ok(CommitRequest {
            table: table.identifier().clone(),
            after,
            first,
            through,
            files,
            offsets_json,
            input_epoch: epoch.unwrap_or(0),
            through_sha256,
        })
    }
}

/// What the manifest of checkpoint `checkpoint` records about `files` of `table`.
fn expectations(table: &Table, checkpoint: CheckpointId, files: &[DataFile]) -> Vec<Expected> {
    files
        .iter()
        .map(|f| Expected {
            checkpoint,
            table: table.identifier().to_string(),
            path: f.file_path().to_string(),
            size_bytes: f.file_size_in_bytes(),
        })
        .collect()
}

/// Turns serialized pending files back into `DataFile`s with the spec and schema they were
/// written with.
pub fn decode_files(
    table: &Table,
    spec_id: i32,
    schema_id: i32,
    files: &[String],
) -> Result<Vec<DataFile>, PublishError> {
    let md = table.metadata();
    let name = table.identifier();
    let unreadable = |what: String| PublishError::PendingUnreadable {
        table: name.to_string(),
        what,
    };
    let spec = md
        .partition_spec_by_id(spec_id)
        .ok_or_else(|| unreadable(format!("their partition spec {spec_id} is gone")))?;
    let schema = md
        .schema_by_id(schema_id)
        .ok_or_else(|| unreadable(format!("their schema {schema_id} is gone")))?;
    let ptype = spec
        .partition_type(schema)
        .map_err(|e| unreadable(format!("partition type of spec {spec_id}: {e}")))?;
    files
        .iter()
        .map(|json| {
            deserialize_data_file_from_json(json, spec_id, &ptype, schema)
                .map_err(|e| unreadable(format!("a recorded data file does not parse: {e}")))
        })
        .collect()
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
