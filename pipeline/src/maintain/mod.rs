//! `recon-pipeline maintain`: expire old snapshots and delete orphan files of the job's tables,
//! safely while the job runs.
//!
//! Sequence of one run:
//! 1. read the job's checkpoint log ([`pending`]): the files of every retained checkpoint and
//!    the newest generation. First, before any table is loaded (see [`pending`] for why);
//! 2. per table (`ledger_events`, `trip_balances`, `rejected_events`):
//!    1. expire snapshots ([`expire`], decided by [`retention`]): older than the retention age,
//!       beyond the newest `retain_last`, and never the job's newest marker or anything above it;
//!    2. reload, check the log agrees with the table (the log is not behind the table's marks),
//!       collect every file the metadata references ([`references`]);
//!    3. list the table location and delete what no rule keeps ([`sweep`]).
//!
//! Nothing here can make the job commit a checkpoint twice: the job's marks (newest stamp in
//! the ancestry + marker property) are the same before and after, checked on the plan and
//! again on the table after the commit. A failing table does not stop the others; the run
//! fails (non-zero exit) if any table failed.
//!
//! Ref removal: iceberg's expiry can also drop aged-out branches and tags; recon's tables have
//! no ref but `main`, and any other ref found is kept with its whole ancestry.

pub mod expire;
pub mod pending;
pub mod references;
pub mod report;
pub mod retention;
pub mod sweep;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use iceberg::Catalog;
use object_store::ObjectStore;

use crate::checkpoint::commit::marks_of;
use crate::checkpoint::log::CheckpointLog;
use crate::config::{Config, ORPHAN_AGE_MIN};
use crate::maintain::expire::Expirer;
use crate::maintain::pending::Pending;
use crate::maintain::references::object_key;
use crate::maintain::report::{Report, TableReport};
use crate::maintain::retention::RetentionPolicy;
use crate::maintain::sweep::Rules;
use crate::{checkpoint, lakehouse, orphans};
use recon_schemas::tables::TableName;

/// The job's tables, in the order they are maintained.
pub const TABLES: [TableName; 3] = TableName::OUTPUTS;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The checkpoint log or the warehouse could not be opened or read.
    #[error("{0}")]
    Setup(String),
}

/// What to do; the CLI fills it from flags over the `[maintenance]` defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// Snapshots older than this may be expired.
    pub expire_older_than: Duration,
    /// Newest snapshots kept whatever their age.
    pub retain_last: NonZeroUsize,
    /// Unreferenced files older than this may be deleted.
    pub orphan_older_than: Duration,
    /// Allow `orphan_older_than` below [`ORPHAN_AGE_MIN`] (with every writer stopped).
    pub force_min_age: bool,
    /// Print what would be done; change nothing.
    pub dry_run: bool,
    /// "Now" for both ages (UTC). Tests move it forward instead of waiting.
    pub now: DateTime<Utc>,
}

impl Options {
    /// The configured defaults, now.
    pub fn from_config(cfg: &Config) -> Options {
        let m = &cfg.maintenance;
        Options {
            expire_older_than: Duration::from_millis(m.expire_older_than_ms),
            retain_last: NonZeroUsize::new(m.retain_last).unwrap_or(NonZeroUsize::MIN),
            orphan_older_than: Duration::from_millis(m.orphan_older_than_ms),
            force_min_age: false,
            dry_run: false,
            now: Utc::now(),
        }
    }

    fn check(&self) -> Result<(), MaintainError> {
        if self.orphan_older_than < ORPHAN_AGE_MIN && !self.force_min_age {
            return Err(MaintainError::Options(format!(
                "--orphan-older-than {} is below the minimum of {}: a younger unreferenced file may be one a writer is about to commit. Add --force-min-age only with every writer of the tables stopped",
                humantime::format_duration(self.orphan_older_than),
                humantime::format_duration(ORPHAN_AGE_MIN)
            )));
        }
        Ok(())
    }

    fn before(&self, age: Duration) -> Result<DateTime<Utc>, MaintainError> {
        chrono::Duration::from_std(age)
            .ok()
            .and_then(|d| self.now.checked_sub_signed(d))
            .ok_or_else(|| {
                MaintainError::Options(format!(
                    "age {} reaches before the calendar's start; use a shorter one",
                    humantime::format_duration(age)
                ))
            })
    }
}

/// Maintains every table of the job named in `cfg`.
pub async fn run(
    cfg: &Config,
    catalog: Arc<dyn Catalog>,
    opts: &Options,
) -> Result<Report, MaintainError> {
    opts.check()?;
    let expire_before = opts.before(opts.expire_older_than)?;
    let delete_before = opts.before(opts.orphan_older_than)?;
    let (store, prefix) = checkpoint::store::open(cfg)
        .map_err(|e| MaintainError::Setup(format!("opening the checkpoint store: {e}")))?;
    let warehouse = orphans::warehouse_store(cfg).map_err(|e| {
        MaintainError::Setup(format!(
            "opening the warehouse {}: {e}",
            cfg.catalog.warehouse
        ))
    })?;
    // The log first: see `pending` for why the order matters.
    let log = CheckpointLog::new(store, &prefix, cfg.job_id.clone());
    let pending = pending::read(&log).await.map_err(|e| {
        MaintainError::Setup(format!(
            "reading the checkpoint log of job {}: {e}; nothing was changed",
            cfg.job_id
        ))
    })?;
    let expirer = Expirer {
        catalog: catalog.clone(),
        job: cfg.job_id.clone(),
        policy: RetentionPolicy {
            expire_before_ms: expire_before.timestamp_millis(),
            retain_last: opts.retain_last,
        },
        attempts_max: cfg.commit.attempts_max,
        timeout: Duration::from_millis(cfg.commit.timeout_ms),
    };
    let mut report = Report {
        dry_run: opts.dry_run,
        tables: Vec::new(),
    };
    for name in TABLES {
        let ident = lakehouse::table_ident(cfg, name);
        let mut t = TableReport {
            table: ident.to_string(),
            ..TableReport::default()
        };
        let sweep = Sweep {
            cfg,
            log: &log,
            pending: &pending,
            warehouse: warehouse.as_ref(),
            delete_before,
            dry_run: opts.dry_run,
        };
        match expirer.expire(&ident, opts.dry_run).await {
            Ok(done) => {
                t.expire_attempts = done.attempts;
                let expiring: HashSet<i64> = if opts.dry_run {
                    done.plan.expire.iter().copied().collect()
                } else {
                    HashSet::new()
                };
                t.expiry = Some(done.plan);
                if let Err(e) = sweep.table(&done.table, &expiring, &mut t).await {
                    t.error = Some(e);
                }
            }
            Err(e) => t.error = Some(e.to_string()),
        }
        crate::telemetry::maintained(
            name.as_str(),
            t.expiry.as_ref().map_or(0, |p| p.expire.len() as u64),
            t.sweep.as_ref().map_or(0, |s| s.deleted),
            t.sweep.as_ref().map_or(0, |s| s.deleted_bytes),
            t.error.is_some(),
        );
        if !opts.dry_run {
            tracing::info!(table = %t.table, summary = %t.line(false), "table maintained");
        }
        report.tables.push(t);
    }
    Ok(report)
}

/// The orphan sweep of one run.
struct Sweep<'a> {
    cfg: &'a Config,
    log: &'a CheckpointLog,
    pending: &'a Pending,
    warehouse: &'a dyn ObjectStore,
    delete_before: DateTime<Utc>,
    dry_run: bool,
}

impl Sweep<'_> {
    /// Sweeps one table (as loaded after its expiry); `expiring` = snapshots a dry run would
    /// have expired (their files count as unreferenced).
    async fn table(
        &self,
        table: &iceberg::table::Table,
        expiring: &HashSet<i64>,
        t: &mut TableReport,
    ) -> Result<(), String> {
        let job = &self.cfg.job_id;
        let marks = marks_of(job, table).map_err(|e| e.to_string())?;
        // The log must not be behind the table: a wrong checkpoint.store or job_id would
        // hide pending files. The table may be ahead of the log as read at the start (the
        // running job completed and committed more since): then the log must have moved on.
        let head = self.pending.head.map(|(id, _)| id);
        if let Some(c) = marks.committed
            && head < Some(c)
        {
            let now = self
                .log
                .ids_after(head)
                .await
                .map_err(|e| format!("re-reading the checkpoint log: {e}"))?;
            if now.last().copied() < Some(c) {
                return Err(format!(
                    "the table holds checkpoint {c} of job {job}, beyond the head of its checkpoint log ({}): wrong checkpoint.store or job_id? no file deleted",
                    now.last()
                        .copied()
                        .or(head)
                        .map_or("empty".to_string(), |h| h.to_string())
                ));
            }
        }
        if let Some(id) = self
            .pending
            .unreadable
            .iter()
            .find(|id| marks.committed < Some(**id))
        {
            return Err(format!(
                "checkpoint {id} of job {job} is not committed to this table and its manifest is unreadable; no file deleted (see `checkpoints show {id}`)"
            ));
        }
        let refs = references::collect(table, expiring, references::MAINTAIN_LIMITS)
            .await
            .map_err(|e| e.to_string())?;
        let root = orphans::table_root(table).ok_or_else(|| {
            format!(
                "table location {:?} is not a URL; no file deleted",
                table.metadata().location()
            )
        })?;
        let current = table.metadata_location().and_then(object_key);
        let rules = Rules {
            referenced: &refs.keys,
            pending: &self.pending.keys,
            job,
            head_generation: self.pending.head.map(|(_, g)| g),
            delete_before: self.delete_before,
        };
        let (counts, orphans) =
            sweep::find(self.warehouse, &root, current.as_deref(), &rules).await?;
        t.orphans = orphans
            .iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        t.sweep = Some(counts);
        if !self.dry_run {
            sweep::delete(self.warehouse, &orphans).await?;
        }
        Ok(())
    }
}
