//! Expiring snapshots through the catalog while the job keeps committing.
//!
//! Each attempt: load the table -> [`retention::plan`] on that exact base -> one transaction
//! with iceberg's `expire_snapshots` action naming the planned ids (its own age rule pinned off,
//! so it removes those ids and nothing else) -> commit through a [`BaseGuard`].
//!
//! The action's requirements (table UUID, `main` still at the planned snapshot) and the SQL
//! catalog's compare-and-swap of the metadata location make the commit land only if nobody
//! committed in between. On a conflict, iceberg's `Transaction::commit` reloads and would
//! re-apply the action on the new base; the guard refuses any base other than the planned one,
//! so instead this loop re-plans from scratch. The job's append is not disturbed by an expiry
//! that lands first: its requirements pin only `main`, which expiry leaves where it is, so the
//! catalog applies it to the expired metadata (and were it to conflict, iceberg re-applies it
//! on the new base, where the job's guard finds the same marks: the plan never changes them).
//! Neither commit is lost (tested both ways in `pipeline/tests/maintain_conflict.rs`).
//!
//! Every outcome is verified by reloading (the 0.10.1 SQL catalog can report a failed COMMIT
//! as success, iceberg-rust#3061): the attempt counts only if the planned ids are gone, and
//! the job's marks must not have moved backwards.

use std::sync::Arc;
use std::time::Duration;

use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableCommit, TableIdent};

use crate::checkpoint::commit::marks_of;
use crate::ids::JobId;
use crate::maintain::retention::{self, ExpiryPlan, RetentionPolicy, TableFacts};

/// Why snapshots could not be expired.
#[derive(Debug, thiserror::Error)]
pub enum ExpireError {
    /// Loading the table failed or timed out.
    #[error(
        "{table}: cannot load the table: {message}; check the catalog (catalog.uri) is reachable"
    )]
    Load {
        /// Table.
        table: String,
        /// What happened.
        message: String,
    },
    /// No safe plan.
    #[error("{table}: {source}")]
    Plan {
        /// Table.
        table: String,
        /// Why.
        #[source]
        source: retention::RetentionError,
    },
    /// Building the transaction failed (e.g. `gc.enabled=false` on the table).
    #[error("{table}: iceberg refused the expiry: {source}")]
    Refused {
        /// Table.
        table: String,
        /// Cause.
        #[source]
        source: iceberg::Error,
    },
    /// The table kept changing under every attempt.
    #[error(
        "{table}: expiry not landed after {attempts} attempts (the table kept changing; last: {last}); nothing lost, run maintain again"
    )]
    Exhausted {
        /// Table.
        table: String,
        /// Attempts made.
        attempts: u32,
        /// Last answer.
        last: String,
    },
    /// Post-condition failed: the job's marks went backwards. A bug; never expected.
    #[error(
        "{table}: after expiry the marks of job {job} are {after:?}, before {before:?}: STOP the job and report this; `checkpoints list` and the table history show what it holds"
    )]
    MarksMovedBack {
        /// Table.
        table: String,
        /// Job.
        job: JobId,
        /// Before.
        before: crate::checkpoint::protocol::TableMarks,
        /// After.
        after: crate::checkpoint::protocol::TableMarks,
    },
}

/// The outcome of expiring one table.
#[derive(Debug)]
pub struct Expired {
    /// What was (or, in a dry run, would be) expired and kept.
    pub plan: ExpiryPlan,
    /// The table after the expiry (the base, in a dry run or when nothing was expired).
    pub table: Table,
    /// Attempts it took.
    pub attempts: u32,
}

/// Expires old snapshots of tables for one job.
pub struct Expirer {
    /// Catalog.
    pub catalog: Arc<dyn Catalog>,
    /// The job whose markers are kept.
    pub job: JobId,
    /// What to keep.
    pub policy: RetentionPolicy,
    /// Attempts per table.
    pub attempts_max: u32,
    /// Time allowed for one catalog call or commit.
    pub timeout: Duration,
}

impl Expirer {
    async fn load(&self, ident: &TableIdent) -> Result<Table, ExpireError> {
        let load_err = |message: String| ExpireError::Load {
            table: ident.to_string(),
            message,
        };
        tokio::time::timeout(self.timeout, self.catalog.load_table(ident))
            .await
            .map_err(|_| load_err(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| load_err(e.to_string()))
    }

    /// Plans and (unless `dry_run`) commits the expiry of `ident`.
    pub async fn expire(&self, ident: &TableIdent, dry_run: bool) -> Result<Expired, ExpireError> {
        let table_name = ident.to_string();
        let mut last = String::from("none");
        for attempt in 1..=self.attempts_max {
            let base = self.load(ident).await?;
            let facts = TableFacts::of(base.metadata()).map_err(|m| ExpireError::Load {
                table: table_name.clone(),
                message: m,
            })?;
            let plan = retention::plan(&facts, &self.job, &self.policy).map_err(|source| {
                ExpireError::Plan {
                    table: table_name.clone(),
                    source,
                }
            })?;
            if dry_run || plan.expire.is_empty() {
                return Ok(Expired {
                    plan,
                    table: base,
                    attempts: attempt,
                });
            }
            let answer = match tokio::time::timeout(self.timeout, self.attempt(&base, &plan)).await
            {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(e)) if e.kind() == iceberg::ErrorKind::DataInvalid => {
                    // Not a conflict: iceberg will not do it on this table (gc.enabled=false...).
                    return Err(ExpireError::Refused {
                        table: table_name,
                        source: e,
                    });
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            // Whatever the answer, the table decides.
            let after = self.load(ident).await?;
            let md = after.metadata();
            if plan
                .expire
                .iter()
                .all(|id| md.snapshot_by_id(*id).is_none())
            {
                let marks = marks_of(&self.job, &after).map_err(|m| ExpireError::Load {
                    table: table_name.clone(),
                    message: m.to_string(),
                })?;
                if marks.committed < plan.marks.committed
                    || marks.generation < plan.marks.generation
                {
                    return Err(ExpireError::MarksMovedBack {
                        table: table_name,
                        job: self.job.clone(),
                        before: plan.marks,
                        after: marks,
                    });
                }
                return Ok(Expired {
                    plan,
                    table: after,
                    attempts: attempt,
                });
            }
            tracing::info!(table = %table_name, attempt, answer = %answer, "expiry did not land (the table moved); re-planning");
            last = answer;
            let backoff = Duration::from_millis((25u64 << attempt.min(6)).min(2_000))
                + Duration::from_millis(rand::random_range(0..50));
            tokio::time::sleep(backoff).await;
        }
        Err(ExpireError::Exhausted {
            table: table_name,
            attempts: self.attempts_max,
            last,
        })
    }

    async fn attempt(&self, base: &Table, plan: &ExpiryPlan) -> iceberg::Result<()> {
        let guard = BaseGuard {
            inner: Arc::clone(&self.catalog),
            metadata_location: base.metadata_location().map(str::to_string),
        };
        let tx = Transaction::new(base);
        let tx = tx
            .expire_snapshots()
            .expire_snapshot_ids(plan.expire.iter().copied())
            // The plan decided; iceberg's own age rule must add nothing.
            .expire_older_than_ms(i64::MIN)
            .retain_last(1)
            .apply(tx)?;
        tx.commit(&guard).await.map(|_| ())
    }
}

/// A catalog that hands out only the base the plan was made on: any other base (the table
/// moved) is refused, so iceberg's internal retry cannot re-apply the plan somewhere else.
struct BaseGuard {
    inner: Arc<dyn Catalog>,
    metadata_location: Option<String>,
}

impl std::fmt::Debug for BaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseGuard")
            .field("metadata_location", &self.metadata_location)
            .finish()
    }
}

crate::catalog_passthrough! {
impl Catalog for BaseGuard {
    /// The planned base, or a refusal.
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        let loaded = self.inner.load_table(table).await?;
        if loaded.metadata_location() != self.metadata_location.as_deref() {
            return Err(iceberg::Error::new(
                iceberg::ErrorKind::PreconditionFailed,
                format!(
                    "{table} moved since the expiry was planned (now at {:?}); re-plan",
                    loaded.metadata_location()
                ),
            ));
        }
        Ok(loaded)
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        self.inner.update_table(commit).await
    }
}}
