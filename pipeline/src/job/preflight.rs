//! Recovery's read-only pre-flight: load the three tables, read the job's marks and owner,
//! then the log head, and ask [`protocol::preflight`] whether this job may write at all.
//!
//! It runs twice: before the claim (a refusal then writes nothing, so it is found again,
//! identically, at every restart: a crash loop under a supervisor cannot walk the log head up
//! to the table's mark), and right after the claim (another instance may have moved in
//! between; a refusal there returns before anything is published or deleted).
//!
//! Order matters: the tables are read *before* the log head. A table holds checkpoint `c` only
//! after log entry `c` was completed, so a head read afterwards is at least `c` even while
//! another instance completes and commits: "table ahead" is never a race.

use iceberg::Catalog;

use crate::checkpoint::commit::{self, CommitError};
use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::protocol::{self, AncestryEnd, PreflightVerdict, Stage, TableFindings};
use crate::config::Config;
use crate::ids::{CheckpointId, Generation};
use crate::lakehouse;

use super::JobError;

/// The tables the job writes (one list, shared with `maintain`).
use crate::maintain::TABLES;

/// Reads what every table says about the job (no write).
async fn findings(
    cfg: &Config,
    catalog: &dyn Catalog,
    log: &CheckpointLog,
) -> Result<Vec<TableFindings>, JobError> {
    let mut out = Vec::with_capacity(TABLES.len());
    for name in TABLES {
        let ident = lakehouse::table_ident(cfg, name);
        let table = lakehouse::load_table(catalog, &ident).await?;
        let mut found =
            commit::read_table(&cfg.job_id, &table).map_err(|message| CommitError::Protocol {
                table: ident.to_string(),
                message,
            })?;
        if let AncestryEnd::Stamp { stamp, .. } = &found.end {
            found.log_sha256 = log.entry(stamp.through).await?.map(|e| e.manifest_sha256);
        }
        out.push(found);
    }
    Ok(out)
}

/// Before the claim: judges the tables against the log head (read after them) and the
/// generation a claim would take. Writes nothing.
pub(crate) async fn before_claim(
    cfg: &Config,
    catalog: &dyn Catalog,
    log: &CheckpointLog,
) -> Result<(), JobError> {
    let tables = findings(cfg, catalog, log).await?;
    let head = match log.ids_after(None).await?.last() {
        Some(id) => log
            .entry(*id)
            .await?
            .map(|e| (e.checkpoint_id, e.generation)),
        None => None,
    };
    let ours = head.map_or(Generation(1), |(_, g)| g.next());
    judge(cfg, Stage::BeforeClaim, ours, head.map(|(c, _)| c), &tables)
}

/// Right after the claim: `resumed` is the checkpoint the claim continues; nobody can have
/// committed the claim's own id yet.
pub(crate) async fn after_claim(
    cfg: &Config,
    catalog: &dyn Catalog,
    log: &CheckpointLog,
    ours: Generation,
    resumed: Option<CheckpointId>,
) -> Result<(), JobError> {
    let tables = findings(cfg, catalog, log).await?;
    judge(cfg, Stage::AfterClaim, ours, resumed, &tables)
}

fn judge(
    cfg: &Config,
    stage: Stage,
    ours: Generation,
    head: Option<CheckpointId>,
    tables: &[TableFindings],
) -> Result<(), JobError> {
    match protocol::preflight(stage, ours, head, &cfg.job_id, tables) {
        PreflightVerdict::Proceed => {
            tracing::info!(?stage, head = ?head.map(|h| h.0), "recovery checks passed");
            Ok(())
        }
        PreflightVerdict::StopForOperator(refusals) => {
            for r in &refusals {
                tracing::error!(?stage, class = "operator-needed", "{r}");
            }
            Err(JobError::Refused(refusals))
        }
        PreflightVerdict::StopFenced(r) => {
            tracing::error!(?stage, class = "fenced", "{r}");
            Err(JobError::Refused(vec![r]))
        }
    }
}
