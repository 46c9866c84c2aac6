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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iceberg::spec::DataFile;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableCommit, TableIdent};

use crate::checkpoint::protocol::{self, AttemptVerdict, TableMarks};
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

/// Reads this job's marks from the table's current ancestry.
pub fn marks_of(job: &JobId, table: &Table) -> Result<TableMarks, String> {
    let metadata = table.metadata();
    let mut summaries = Vec::new();
    let mut next = metadata.current_snapshot_id();
    while let Some(id) = next {
        if summaries.len() >= ANCESTRY_SNAPSHOTS_MAX {
            break;
        }
        let Some(s) = metadata.snapshot_by_id(id) else {
            // Expired parents end the walk; the marker that matters is the newest one.
            break;
        };
        let props = &s.summary().additional_properties;
        // The newest stamp decides: stop walking as soon as it is found.
        if props.contains_key(protocol::PROP_JOB_ID) && protocol::parse_stamp(job, props)?.is_some()
        {
            summaries.push(props.clone());
            break;
        }
        summaries.push(HashMap::new());
        next = s.parent_snapshot_id();
    }
    let ancestry = protocol::table_marks(job, summaries.iter())?;
    let property = match metadata.properties().get(&protocol::marker_property(job)) {
        Some(v) => Some(protocol::parse_marker(v)?),
        None => None,
    };
    Ok(protocol::merge_marks(ancestry, property))
}

/// A catalog that lets an append land only on a base the plan expects.
pub struct GuardedCatalog {
    inner: Arc<dyn Catalog>,
    job: JobId,
    generation: Generation,
    after: Option<CheckpointId>,
    through: CheckpointId,
    verdict: Mutex<Option<AttemptVerdict>>,
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
}

crate::catalog_passthrough! {
impl Catalog for GuardedCatalog {
    /// Loads the base of an attempt and refuses it unless the plan still holds on it.
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        let loaded = self.inner.load_table(table).await?;
        let marks = marks_of(&self.job, &loaded)
            .map_err(|m| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, m))?;
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
}

impl Committer {
    /// A committer for `job` at `generation`.
    pub fn new(
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

    /// Loads a table and reads this job's marks from it.
    pub async fn marks(&self, table: &TableIdent) -> Result<TableMarks, CommitError> {
        let t = tokio::time::timeout(self.timeout, self.catalog.load_table(table))
            .await
            .map_err(|_| self.protocol_err(table, "loading the table timed out".into()))?
            .map_err(|e| self.protocol_err(table, format!("cannot load: {e}")))?;
        marks_of(&self.job, &t).map_err(|m| self.protocol_err(table, m))
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
        let mut last = String::from("none");
        for attempt in 1..=self.attempts_max {
            let guard = Arc::new(GuardedCatalog {
                inner: Arc::clone(&self.catalog),
                job: self.job.clone(),
                generation: self.generation,
                after: req.after,
                through: req.through,
                verdict: Mutex::new(None),
            });
            let result = tokio::time::timeout(self.timeout, self.attempt(&guard, req)).await;
            let refused =
                matches!(&result, Ok(Err(e)) if e.kind() == iceberg::ErrorKind::DataInvalid);
            let answer = match result {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            match guard.last_verdict() {
                Some(AttemptVerdict::Fenced { theirs }) => {
                    return Err(CommitError::Fenced {
                        table: table_name,
                        job: self.job.clone(),
                        ours: self.generation,
                        theirs,
                    });
                }
                Some(AttemptVerdict::Stale { committed }) => {
                    return Ok(CommitOutcome::Stale { committed });
                }
                _ => {}
            }
            // Iceberg refuses snapshots older than the table's last update (DataInvalid): name
            // the clocks rather than retrying what cannot succeed.
            if refused && let Some(skew) = self.clock_skew(&req.table).await {
                return Err(CommitError::ClockSkew {
                    table: table_name,
                    skew,
                });
            }
            // Whatever the answer said, the table decides.
            match self.marks(&req.table).await {
                Ok(marks) => {
                    match protocol::check_attempt(self.generation, req.after, req.through, &marks) {
                        AttemptVerdict::AlreadyCommitted => {
                            let ours = answer == "ok"
                                && guard.last_verdict() == Some(AttemptVerdict::Proceed);
                            return Ok(if ours {
                                CommitOutcome::Committed
                            } else {
                                CommitOutcome::AlreadyCommitted
                            });
                        }
                        AttemptVerdict::Fenced { theirs } => {
                            return Err(CommitError::Fenced {
                                table: table_name,
                                job: self.job.clone(),
                                ours: self.generation,
                                theirs,
                            });
                        }
                        AttemptVerdict::Stale { committed } => {
                            return Ok(CommitOutcome::Stale { committed });
                        }
                        AttemptVerdict::Proceed => {
                            if answer == "ok" {
                                tracing::error!(table = %table_name, through = %req.through,
                                "catalog reported a commit that is not in the table; retrying");
                            }
                            last = answer;
                        }
                    }
                }
                Err(e) => last = format!("{answer}; reload failed: {e}"),
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
        // snapshot expiration.
        let tx = tx
            .update_table_properties()
            .set(
                protocol::marker_property(&self.job),
                protocol::marker_value(self.generation, req.through),
            )
            .apply(tx)?;
        tx.commit(guard.as_ref()).await.map(|_| ())
    }
}
