//! Publishing completed checkpoints to Iceberg, one `fast_append` per table, exactly once.
//!
//! iceberg-rust's `Transaction::commit` reloads the table before every attempt and, on a
//! conflict, re-applies the append on the new base by itself. Checking "already committed?"
//! once before calling it is therefore not enough (apache/iceberg#14425). Instead the
//! transaction talks to the catalog through [`GuardedCatalog`], whose `load_table` runs
//! [`protocol::check_attempt`] on the very base each attempt is built on, and refuses the
//! attempt unless the base is exactly what the plan assumed. The SQL catalog then lands the
//! commit only on that base (snapshot-id requirement + compare-and-swap of the metadata
//! location), so the check and the commit see the same table.
//!
//! Every outcome is verified by reloading: the 0.10.1 SQL catalog can report success for a
//! failed `COMMIT` (iceberg-rust#3061), and a timeout says nothing about what happened.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableCommit, TableIdent};

use crate::checkpoint::log::CommitPermit;
use crate::checkpoint::protocol::attempt::{self, Answer, OnAnswer, Outcome};
use crate::checkpoint::protocol::{
    self, AncestryEnd, AttemptVerdict, MarksVerdict, Ownership, Refusal, TableFindings, TableMarks,
};
use crate::ids::{CheckpointId, Generation, JobId};

/// Most snapshots walked when reading marks; beyond it the table is treated as unstamped.
pub const ANCESTRY_SNAPSHOTS_MAX: usize = 100_000;

/// Why a commit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A newer generation committed to the table: this process is a zombie.
    #[error(
        "table {table}: generation {theirs} of job {job} has committed; this process (generation {ours}) is stale and stops"
    )]
    Fenced {
        /// Table.
        table: String,
        /// Job.
        job: JobId,
        /// Ours.
        ours: Generation,
        /// Theirs.
        theirs: Generation,
    },
    /// Attempts exhausted without a verified outcome.
    #[error(
        "table {table}: commit of checkpoints through {through} not verified after {attempts} attempts; last error: {last}"
    )]
    Exhausted {
        /// Table.
        table: String,
        /// Highest checkpoint of the commit.
        through: CheckpointId,
        /// Attempts made.
        attempts: u32,
        /// Last error seen.
        last: String,
    },
    /// The table cannot be written safely: rolled back behind the job's marker, or another
    /// job's table. An operator must act.
    #[error("{refusal}")]
    Refused {
        /// What was found and what to do.
        refusal: Refusal,
    },
    /// The catalog did not answer (or failed) when loading the table.
    #[error("table {table}: {message}; check the catalog (catalog.uri) is up")]
    Unreachable {
        /// Table.
        table: String,
        /// What failed.
        message: String,
    },
    /// The table's last update is ahead of this host's clock by more than Iceberg tolerates:
    /// every commit fails until the clocks agree. Operator needed when
    /// [`ClockSkew::operator_needed`](crate::checkpoint::clock::ClockSkew::operator_needed),
    /// else transient (see [`crate::checkpoint::clock`]).
    #[error("table {table}: {skew}")]
    ClockSkew {
        /// Table.
        table: String,
        /// Both clocks.
        skew: crate::checkpoint::clock::ClockSkew,
    },
    /// The table's history cannot be read safely.
    #[error("table {table}: {message}")]
    Protocol {
        /// Table.
        table: String,
        /// What is wrong.
        message: String,
    },
}

/// Why a table's marks cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MarksError {
    /// A stamp or marker of the job cannot be parsed: never guess.
    #[error("{0}")]
    Unreadable(String),
    /// The table is behind its marker (rolled back), or another job writes it.
    #[error("{0}")]
    Refused(Refusal),
}

/// Reads, without writing, what the table says about `job`: how the ancestry walk (newest
/// first, to the job's newest stamp) ended, the marker property, the owner, and where the
/// marker's checkpoint is stamped. `log_sha256` is left for the caller (it reads the log).
pub fn read_table(job: &JobId, table: &Table) -> Result<TableFindings, String> {
    let metadata = table.metadata();
    let mut walked = 0usize;
    let mut next = metadata.current_snapshot_id();
    let end = loop {
        let Some(id) = next else {
            break AncestryEnd::Root;
        };
        if walked >= ANCESTRY_SNAPSHOTS_MAX {
            break AncestryEnd::Limit;
        }
        walked += 1;
        let Some(s) = metadata.snapshot_by_id(id) else {
            break AncestryEnd::Expired;
        };
        let props = &s.summary().additional_properties;
        // The newest stamp decides: stop walking as soon as it is found.
        if props.contains_key(protocol::PROP_JOB_ID)
            && let Some(stamp) = protocol::parse_stamp(job, props)?
        {
            break AncestryEnd::Stamp {
                stamp,
                snapshot: id,
                checkpoint_sha256: props.get(protocol::PROP_CHECKPOINT_SHA256).cloned(),
            };
        }
        next = s.parent_snapshot_id();
    };
    let property = match metadata.properties().get(&protocol::marker_property(job)) {
        Some(v) => Some(protocol::parse_marker(v)?),
        None => None,
    };
    let marker_snapshot = property.and_then(|p| {
        metadata
            .snapshots()
            .filter(|s| {
                matches!(protocol::parse_stamp(job, &s.summary().additional_properties),
                    Ok(Some(st)) if Some(st.through) == p.committed)
            })
            .map(|s| s.snapshot_id())
            .max()
    });
    Ok(TableFindings {
        table: table.identifier().to_string(),
        ownership: protocol::ownership(job, metadata.properties()),
        end,
        property,
        current_snapshot: metadata.current_snapshot_id(),
        marker_snapshot,
        log_sha256: None,
    })
}

/// Reads this job's marks from the table: the ancestry decides, the marker property fills in
/// where expiry hid the stamp ([`protocol::judge_marks`]); a table behind its marker is an
/// error, never marks to build on.
pub fn marks_of(job: &JobId, table: &Table) -> Result<TableMarks, MarksError> {
    let found = read_table(job, table).map_err(MarksError::Unreadable)?;
    match protocol::judge_marks(&found.end, found.property) {
        MarksVerdict::Trust(m) => Ok(m),
        MarksVerdict::BehindMarker { marker, found: at } => {
            Err(MarksError::Refused(Refusal::BehindMarker {
                table: found.table,
                marker: marker.committed.expect("a marker names a checkpoint"),
                found: at.map(|s| s.through),
                current_snapshot: found.current_snapshot,
                marker_snapshot: found.marker_snapshot,
            }))
        }
    }
}

/// The refusal of a table this job must not write (another job's), if any.
pub fn foreign(job: &JobId, table: &Table) -> Option<Refusal> {
    match protocol::ownership(job, table.metadata().properties()) {
        Ownership::OwnedBy(other) | Ownership::MarkedBy(other) => Some(Refusal::NotOwner {
            table: table.identifier().to_string(),
            job: job.to_string(),
            other,
        }),
        Ownership::Ours | Ownership::Unclaimed => None,
    }
}

/// A catalog that lets an append land only on a base the plan expects.
pub struct GuardedCatalog {
    inner: Arc<dyn Catalog>,
    job: JobId,
    generation: Generation,
    after: Option<CheckpointId>,
    through: CheckpointId,
    verdict: Mutex<Option<AttemptVerdict>>,
    refusal: Mutex<Option<Refusal>>,
}

impl std::fmt::Debug for GuardedCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedCatalog")
            .field("job", &self.job)
            .field("generation", &self.generation)
            .field("after", &self.after)
            .field("through", &self.through)
            .finish()
    }
}

impl GuardedCatalog {
    fn last_verdict(&self) -> Option<AttemptVerdict> {
        *self.verdict.lock().expect("verdict lock")
    }

    fn refused(&self) -> Option<Refusal> {
        self.refusal.lock().expect("refusal lock").clone()
    }

    fn refuse(&self, refusal: Refusal) -> iceberg::Error {
        let message = format!("recon commit guard refused the attempt: {refusal}");
        *self.refusal.lock().expect("refusal lock") = Some(refusal);
        iceberg::Error::new(iceberg::ErrorKind::PreconditionFailed, message)
    }
}

crate::catalog_passthrough! {
impl Catalog for GuardedCatalog {
    /// Loads the base of an attempt and refuses it unless the plan still holds on it.
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        let loaded = self.inner.load_table(table).await?;
        // One owner per table, checked on the very base the attempt builds on.
        if let Some(refusal) = foreign(&self.job, &loaded) {
            return Err(self.refuse(refusal));
        }
        let marks = match marks_of(&self.job, &loaded) {
            Ok(m) => m,
            Err(MarksError::Refused(r)) => return Err(self.refuse(r)),
            Err(MarksError::Unreadable(m)) => {
                return Err(iceberg::Error::new(iceberg::ErrorKind::DataInvalid, m));
            }
        };
        let verdict = protocol::check_attempt(self.generation, self.after, self.through, &marks);
        *self.verdict.lock().expect("verdict lock") = Some(verdict);
        match verdict {
            AttemptVerdict::Proceed => Ok(loaded),
            other => Err(iceberg::Error::new(
                iceberg::ErrorKind::PreconditionFailed,
                format!("recon commit guard refused the attempt: {other:?}"),
            )),
        }
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        self.inner.update_table(commit).await
    }
}}

/// One table commit to make: the files of checkpoints `(after, through]`.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// Table.
    pub table: TableIdent,
    /// Highest checkpoint the plan assumes is committed.
    pub after: Option<CheckpointId>,
    /// Lowest checkpoint included (for the stamp).
    pub first: CheckpointId,
    /// Highest checkpoint included.
    pub through: CheckpointId,
    /// Data files of the included checkpoints.
    pub files: Vec<DataFile>,
    /// JSON of partition -> `[start, end)` offsets the included checkpoints consumed.
    pub offsets_json: String,
    /// Input epoch of the included checkpoints (topic resets accepted before them).
    pub input_epoch: u32,
    /// The log entry's `manifest_sha256` of checkpoint `through` (stamped as
    /// `recon.checkpoint-sha256`); `None` only where it cannot be known.
    pub through_sha256: Option<String>,
}

/// The verified outcome of a table commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// This call's append landed (verified by reload).
    Committed,
    /// The table already held the checkpoints (verified); nothing was appended.
    AlreadyCommitted,
    /// The table moved to `committed` in between: re-plan from there.
    Stale {
        /// What the table holds.
        committed: Option<CheckpointId>,
    },
}

/// Commits for one process (job + generation), owning the retry loop.
#[derive(Clone)]
pub struct Committer {
    catalog: Arc<dyn Catalog>,
    job: JobId,
    generation: Generation,
    attempts_max: u32,
    timeout: Duration,
    /// Built from a [`CommitPermit`]; a read-only committer refuses to commit.
    may_commit: bool,
}

impl Committer {
    /// A committer that commits as the generation `permit` proves this process claimed.
    pub fn new(
        catalog: Arc<dyn Catalog>,
        permit: &CommitPermit,
        attempts_max: u32,
        timeout: Duration,
    ) -> Committer {
        Committer {
            catalog,
            job: permit.job().clone(),
            generation: permit.generation(),
            attempts_max,
            timeout,
            may_commit: true,
        }
    }

    /// A committer that only reads the tables' marks, comparing them with `generation` (the
    /// one a claim would take: a pre-flight before the claim). [`Committer::commit`] refuses.
    pub fn read_only(
        catalog: Arc<dyn Catalog>,
        job: JobId,
        generation: Generation,
        attempts_max: u32,
        timeout: Duration,
    ) -> Committer {
        Committer {
            catalog,
            job,
            generation,
            attempts_max,
            timeout,
            may_commit: false,
        }
    }

    /// The job this committer commits for.
    pub fn job(&self) -> &JobId {
        &self.job
    }

    /// The generation it commits as.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The catalog commits go to.
    pub fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// Loads a table and reads this job's marks from it; refuses another job's table and a
    /// table behind its marker.
    pub async fn marks(&self, table: &TableIdent) -> Result<TableMarks, CommitError> {
        Ok(self.reading(table).await?.0)
    }

    /// Loads a table; returns this job's marks and what the table says about it (for the
    /// checkpoint identity check); refuses another job's table and a table behind its marker.
    pub async fn reading(
        &self,
        table: &TableIdent,
    ) -> Result<(TableMarks, TableFindings), CommitError> {
        let t = self.load(table).await?;
        if let Some(refusal) = foreign(&self.job, &t) {
            return Err(CommitError::Refused { refusal });
        }
        let marks = marks_of(&self.job, &t).map_err(|e| match e {
            MarksError::Refused(refusal) => CommitError::Refused { refusal },
            MarksError::Unreadable(m) => self.protocol_err(table, m),
        })?;
        let found = read_table(&self.job, &t).map_err(|m| self.protocol_err(table, m))?;
        Ok((marks, found))
    }

    /// Loads a table, each attempt bounded by the commit timeout, up to `attempts_max` attempts.
    /// More than one: a process resumed after a pause (SIGSTOP, a VM freeze) finds its first
    /// timer already expired, and must still read the table to learn it was fenced.
    async fn load(&self, table: &TableIdent) -> Result<Table, CommitError> {
        let mut last = String::new();
        for _ in 0..self.attempts_max.max(1) {
            match tokio::time::timeout(self.timeout, self.catalog.load_table(table)).await {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(e)) => last = format!("cannot load: {e}"),
                Err(_) => last = format!("loading the table took longer than {:?}", self.timeout),
            }
        }
        Err(CommitError::Unreachable {
            table: table.to_string(),
            message: format!("{last} ({} attempts)", self.attempts_max.max(1)),
        })
    }

    /// The table's clock skew against this host, if any (`None` also when it cannot load).
    async fn clock_skew(&self, table: &TableIdent) -> Option<crate::checkpoint::clock::ClockSkew> {
        let t = tokio::time::timeout(self.timeout, self.catalog.load_table(table))
            .await
            .ok()?
            .ok()?;
        let now = chrono::Utc::now().timestamp_millis();
        crate::checkpoint::clock::ClockSkew::of(t.metadata(), now)
    }

    fn protocol_err(&self, table: &TableIdent, message: String) -> CommitError {
        CommitError::Protocol {
            table: table.to_string(),
            message,
        }
    }

    /// Appends `req.files` exactly once, or finds that the table already holds them.
    ///
    /// Each attempt: transaction through a [`GuardedCatalog`] -> whatever the answer (ok, error,
    /// timeout) -> reload and read the marks -> committed iff the marks reach `req.through`.
    pub async fn commit(&self, req: &CommitRequest) -> Result<CommitOutcome, CommitError> {
        let table_name = req.table.to_string();
        if !self.may_commit {
            return Err(CommitError::Protocol {
                table: table_name,
                message: format!(
                    "a bug: a read-only committer (generation {} of job {}, not claimed) was asked to commit; nothing was written",
                    self.generation, self.job
                ),
            });
        }
        let mut last = String::from("none");
        for attempt in 1..=self.attempts_max {
            let guard = Arc::new(GuardedCatalog {
                inner: Arc::clone(&self.catalog),
                job: self.job.clone(),
                generation: self.generation,
                after: req.after,
                through: req.through,
                verdict: Mutex::new(None),
                refusal: Mutex::new(None),
            });
            let answer = match tokio::time::timeout(self.timeout, self.attempt(&guard, req)).await {
                Ok(Ok(())) => Answer::Ok,
                Ok(Err(e)) => Answer::Failed {
                    message: e.to_string(),
                    data_invalid: e.kind() == iceberg::ErrorKind::DataInvalid,
                },
                Err(_) => Answer::NoAnswer {
                    message: format!("no answer within {:?}", self.timeout),
                },
            };
            if let Some(refusal) = guard.refused() {
                return Err(CommitError::Refused { refusal });
            }
            let seen = guard.last_verdict();
            let fenced = |theirs| CommitError::Fenced {
                table: table_name.clone(),
                job: self.job.clone(),
                ours: self.generation,
                theirs,
            };
            match attempt::on_answer(&answer, seen) {
                OnAnswer::Fenced { theirs } => return Err(fenced(theirs)),
                OnAnswer::Stale { committed } => return Ok(CommitOutcome::Stale { committed }),
                // Iceberg refuses snapshots older than the table's last update: name the
                // clocks rather than retrying what cannot succeed.
                OnAnswer::CheckClock => {
                    if let Some(skew) = self.clock_skew(&req.table).await {
                        let table = table_name.clone();
                        return Err(CommitError::ClockSkew { table, skew });
                    }
                }
                OnAnswer::Reload => {}
            }
            // Whatever the answer said, the table decides.
            match self.marks(&req.table).await {
                Ok(marks) => {
                    let table =
                        protocol::check_attempt(self.generation, req.after, req.through, &marks);
                    match attempt::on_reload(&answer, seen, table) {
                        Outcome::Committed => return Ok(CommitOutcome::Committed),
                        Outcome::AlreadyCommitted => return Ok(CommitOutcome::AlreadyCommitted),
                        Outcome::Fenced { theirs } => return Err(fenced(theirs)),
                        Outcome::Stale { committed } => {
                            return Ok(CommitOutcome::Stale { committed });
                        }
                        Outcome::Retry { phantom } => {
                            if phantom {
                                tracing::error!(table = %table_name, through = %req.through,
                                "catalog reported a commit that is not in the table; retrying");
                            }
                            last = answer.describe().to_string();
                        }
                    }
                }
                Err(e) => last = format!("{}; reload failed: {e}", answer.describe()),
            }
            tracing::warn!(table = %table_name, attempt, error = %last, "commit attempt not verified; retrying");
            let backoff = Duration::from_millis((50u64 << attempt.min(6)).min(3_000));
            tokio::time::sleep(backoff).await;
        }
        Err(CommitError::Exhausted {
            table: table_name,
            through: req.through,
            attempts: self.attempts_max,
            last,
        })
    }

    async fn attempt(
        &self,
        guard: &Arc<GuardedCatalog>,
        req: &CommitRequest,
    ) -> iceberg::Result<()> {
        let base = guard.load_table(&req.table).await?;
        let mut props = protocol::stamp_properties(
            &self.job,
            self.generation,
            req.first,
            req.through,
            req.offsets_json.clone(),
        );
        if let Some(sha) = &req.through_sha256 {
            props.insert(protocol::PROP_CHECKPOINT_SHA256.to_string(), sha.clone());
        }
        if req.input_epoch > 0 {
            props.insert(
                protocol::PROP_INPUT_EPOCH.to_string(),
                req.input_epoch.to_string(),
            );
        }
        let tx = Transaction::new(&base);
        // The guard makes the duplicate check redundant, and that check reads every manifest
        // of the table on every commit (Arroyo#942): leave it off.
        let action = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(req.files.clone())
            .set_snapshot_properties(props);
        let tx = action.apply(tx)?;
        // The same marker as a table property, atomically with the append: it outlives
        // snapshot expiration. And the owner: one job id per table.
        let tx = tx
            .update_table_properties()
            .set(
                protocol::marker_property(&self.job),
                protocol::marker_value(self.generation, req.through),
            )
            .set(protocol::PROP_OWNER.to_string(), self.job.to_string())
            .apply(tx)?;
        tx.commit(guard.as_ref()).await.map(|_| ())
    }
}
