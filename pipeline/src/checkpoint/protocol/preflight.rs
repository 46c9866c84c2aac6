//! Recovery's read-only checks, as pure decisions: may this job write to these tables at all?
//!
//! Caller sequence (`job::recovery`): read the log head (no write) -> per table, walk the
//! ancestry newest first to the job's newest stamp and read the table properties
//! ([`crate::checkpoint::commit::read_table`]) -> [`judge_marks`] and [`ownership`] ->
//! [`preflight`] with the generation the claim *would* take -> only on
//! [`PreflightVerdict::Proceed`] claim a generation -> run [`preflight`] again against the
//! claim (another instance may have moved in between) -> publish, clean, resume.
//!
//! A refusal writes nothing and is found again, identically, at every restart: the inputs
//! (log head, table metadata) are not changed by a refused start.

use std::collections::HashMap;

use super::{PROP_JOB_ID, Stamp, TableMarks, marker_property};
use crate::ids::{CheckpointId, Generation, JobId};

/// Table property: the one job id allowed to write the table, set with every append.
pub const PROP_OWNER: &str = "recon.owner";
/// Snapshot-summary key: SHA-256 of the manifest of the commit's `through` checkpoint (the
/// log entry's `manifest_sha256`), so a table and a log that agree on a number but not on the
/// checkpoint it names are told apart.
pub const PROP_CHECKPOINT_SHA256: &str = "recon.checkpoint-sha256";
/// Prefix of every job's marker property.
pub const MARKER_PREFIX: &str = "recon.marker.";

/// How the walk over a table's ancestry (newest first) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AncestryEnd {
    /// The job's newest stamp, on snapshot `snapshot`.
    Stamp {
        /// The stamp.
        stamp: Stamp,
        /// The snapshot carrying it.
        snapshot: i64,
        /// Its [`PROP_CHECKPOINT_SHA256`], absent on commits made before the key existed.
        checkpoint_sha256: Option<String>,
    },
    /// A snapshot without a parent (or no snapshot at all): the whole history was read and
    /// holds no stamp of the job.
    Root,
    /// A parent is no longer in the metadata (expired) before any stamp was found: the
    /// history beyond is unknown, the marker property fills in.
    Expired,
    /// The walk limit was reached before any stamp: treated like [`AncestryEnd::Expired`].
    Limit,
}

/// What a table's ancestry and marker property say about the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarksVerdict {
    /// Use these marks.
    Trust(TableMarks),
    /// The table's current snapshot is behind the job's marker property: someone rolled the
    /// table back (or replaced its history). Appending on top would lose what was removed.
    BehindMarker {
        /// What the marker property says the table held.
        marker: TableMarks,
        /// The newest stamp the current ancestry holds (`None`: none, down to the root).
        found: Option<Stamp>,
    },
}

/// Decides "already committed" from the ancestry; the marker property only fills in where the
/// walk could not see (an expired parent, the walk limit).
///
/// - a stamp found and the property not above it: the stamp;
/// - a stamp found below the property: behind the marker (rolled back);
/// - the root reached without a stamp while the property names a checkpoint: behind the marker;
/// - the walk ended at an expired parent or the limit: the property (or nothing).
pub fn judge_marks(end: &AncestryEnd, property: Option<TableMarks>) -> MarksVerdict {
    match end {
        AncestryEnd::Stamp { stamp, .. } => {
            let ancestry = TableMarks {
                committed: Some(stamp.through),
                generation: Some(stamp.generation),
            };
            match property {
                Some(p) if p.committed > ancestry.committed => MarksVerdict::BehindMarker {
                    marker: p,
                    found: Some(*stamp),
                },
                _ => MarksVerdict::Trust(ancestry),
            }
        }
        AncestryEnd::Root => match property {
            Some(p) if p.committed.is_some() => MarksVerdict::BehindMarker {
                marker: p,
                found: None,
            },
            _ => MarksVerdict::Trust(TableMarks::default()),
        },
        AncestryEnd::Expired | AncestryEnd::Limit => {
            MarksVerdict::Trust(property.unwrap_or_default())
        }
    }
}

/// Who may write a table, from its properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// [`PROP_OWNER`] names this job.
    Ours,
    /// No owner and no other job's marker: a new table (or one only this job wrote before
    /// owners existed).
    Unclaimed,
    /// [`PROP_OWNER`] names another job.
    OwnedBy(String),
    /// No owner, but another job's marker property: that job wrote the table before owners
    /// existed.
    MarkedBy(String),
}

impl Ownership {
    /// Whether this job may append.
    pub fn may_write(&self) -> bool {
        matches!(self, Ownership::Ours | Ownership::Unclaimed)
    }
}

/// Reads [`Ownership`] from table properties.
pub fn ownership(job: &JobId, properties: &HashMap<String, String>) -> Ownership {
    if let Some(owner) = properties.get(PROP_OWNER) {
        return if owner == job.as_str() {
            Ownership::Ours
        } else {
            Ownership::OwnedBy(owner.clone())
        };
    }
    let ours = marker_property(job);
    let mut others: Vec<&str> = properties
        .keys()
        .filter(|k| k.starts_with(MARKER_PREFIX) && **k != ours)
        .map(|k| &k[MARKER_PREFIX.len()..])
        .collect();
    others.sort_unstable();
    match others.first() {
        Some(other) => Ownership::MarkedBy((*other).to_string()),
        None => Ownership::Unclaimed,
    }
}

/// Another job's id in a snapshot summary, if any (for messages).
pub fn stamped_by(props: &HashMap<String, String>) -> Option<&str> {
    props.get(PROP_JOB_ID).map(String::as_str)
}

/// What recovery found on one table, read without writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableFindings {
    /// Table name (`namespace.table`).
    pub table: String,
    /// Who may write it.
    pub ownership: Ownership,
    /// How the ancestry walk ended.
    pub end: AncestryEnd,
    /// The marker property, parsed.
    pub property: Option<TableMarks>,
    /// The current snapshot.
    pub current_snapshot: Option<i64>,
    /// The snapshot (anywhere in the metadata, not only the ancestry) stamped by this job with
    /// the marker property's checkpoint: where a rolled-back table can be rolled forward to.
    pub marker_snapshot: Option<i64>,
    /// The log's `manifest_sha256` of the entry the ancestry's newest stamp names, when the
    /// log still holds that entry.
    pub log_sha256: Option<String>,
}

/// Why recovery refuses to write. Every variant is found again at the next start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The table holds a checkpoint the log does not reach.
    TableAhead {
        /// Table.
        table: String,
        /// The job's job id.
        job: String,
        /// Checkpoint the table holds.
        committed: CheckpointId,
        /// Head of the log (`None`: empty log).
        head: Option<CheckpointId>,
    },
    /// The table was rolled back below the job's marker.
    BehindMarker {
        /// Table.
        table: String,
        /// The marker property's checkpoint.
        marker: CheckpointId,
        /// The ancestry's newest stamp (`None`: no stamp down to the root).
        found: Option<CheckpointId>,
        /// Current snapshot.
        current_snapshot: Option<i64>,
        /// Snapshot stamped with the marker's checkpoint, if still in the metadata.
        marker_snapshot: Option<i64>,
    },
    /// Another job writes the table.
    NotOwner {
        /// Table.
        table: String,
        /// This job.
        job: String,
        /// The other job.
        other: String,
    },
    /// The table's checkpoint `checkpoint` and the log's are different checkpoints.
    NotTheLogsCheckpoint {
        /// Table.
        table: String,
        /// The checkpoint id both name.
        checkpoint: CheckpointId,
        /// The table's stamp.
        table_sha256: String,
        /// The log's entry.
        log_sha256: String,
    },
    /// A newer generation committed: another instance took over.
    Fenced {
        /// Table.
        table: String,
        /// The generation this process has (or would claim).
        ours: Generation,
        /// The generation found.
        theirs: Generation,
    },
}

/// The pre-flight's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreflightVerdict {
    /// Every check passed: claim (or, after the claim, publish).
    Proceed,
    /// Stop and write nothing: an operator must act. Every refusal found, per table.
    StopForOperator(Vec<Refusal>),
    /// Stop and write nothing: another instance of the job took over.
    StopFenced(Refusal),
}

/// When [`preflight`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before claiming: nothing of this process is in the log.
    BeforeClaim,
    /// Right after claiming, before publishing anything.
    AfterClaim,
}

/// Judges every table against the log before anything is written.
///
/// `ours`: the generation the claim would take (before the claim) or took (after it).
/// `head`: the newest checkpoint a table may hold: the log head before the claim, or the
/// checkpoint the claim resumes after it (nobody can have committed the claim's own id yet).
pub fn preflight(
    stage: Stage,
    ours: Generation,
    head: Option<CheckpointId>,
    job: &JobId,
    tables: &[TableFindings],
) -> PreflightVerdict {
    let mut refusals = Vec::new();
    for t in tables {
        if let Ownership::OwnedBy(other) | Ownership::MarkedBy(other) = &t.ownership {
            refusals.push(Refusal::NotOwner {
                table: t.table.clone(),
                job: job.to_string(),
                other: other.clone(),
            });
            continue;
        }
        let marks = match judge_marks(&t.end, t.property) {
            MarksVerdict::Trust(m) => m,
            MarksVerdict::BehindMarker { marker, found } => {
                refusals.push(Refusal::BehindMarker {
                    table: t.table.clone(),
                    marker: marker.committed.expect("a marker names a checkpoint"),
                    found: found.map(|s| s.through),
                    current_snapshot: t.current_snapshot,
                    marker_snapshot: t.marker_snapshot,
                });
                continue;
            }
        };
        let fenced = marks.generation.filter(|theirs| *theirs > ours);
        let ahead = marks.committed.filter(|c| Some(*c) > head);
        // Before the claim, a generation above the one we would claim is one the log does not
        // know: the log is behind (unless the table is not ahead, i.e. a claim raced ours).
        // After the claim our generation is in the log: a higher one is a later claim.
        let fenced_first = stage == Stage::AfterClaim || ahead.is_none();
        if let Some(theirs) = fenced
            && fenced_first
        {
            return PreflightVerdict::StopFenced(Refusal::Fenced {
                table: t.table.clone(),
                ours,
                theirs,
            });
        }
        if let Some(c) = ahead {
            refusals.push(Refusal::TableAhead {
                table: t.table.clone(),
                job: job.to_string(),
                committed: c,
                head,
            });
            continue;
        }
        if let AncestryEnd::Stamp {
            stamp,
            checkpoint_sha256: Some(table_sha),
            ..
        } = &t.end
            && let Some(log_sha) = &t.log_sha256
            && table_sha != log_sha
        {
            refusals.push(Refusal::NotTheLogsCheckpoint {
                table: t.table.clone(),
                checkpoint: stamp.through,
                table_sha256: table_sha.clone(),
                log_sha256: log_sha.clone(),
            });
        }
    }
    if refusals.is_empty() {
        PreflightVerdict::Proceed
    } else {
        PreflightVerdict::StopForOperator(refusals)
    }
}

/// What an operator is told to do when the log is behind the tables: never a new job id on
/// the same tables (that writes everything twice).
pub const LOG_BEHIND_ADVICE: &str = "the checkpoint log was lost, replaced by an older copy, or \
    lost its newest entries. Restore the newest copy of the checkpoint store (checkpoint.store) \
    and start again; if the tables are to be rebuilt from the topic instead, use NEW tables (a new \
    catalog.namespace) AND a new job_id. Never a new job_id on these tables: every event would be \
    written twice. Nothing was written";

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TableAhead {
                table,
                job,
                committed,
                head,
            } => {
                let head = head.map_or("is empty".to_string(), |h| format!("ends at {h}"));
                write!(
                    f,
                    "table {table} holds checkpoint {committed} of job {job} but the checkpoint log {head}: \
                     {LOG_BEHIND_ADVICE}"
                )
            }
            Refusal::BehindMarker {
                table,
                marker,
                found,
                current_snapshot,
                marker_snapshot,
            } => {
                let found = found.map_or("no checkpoint of the job at all".to_string(), |c| {
                    format!("checkpoint {c}")
                });
                let current = current_snapshot.map_or("none".to_string(), |s| s.to_string());
                write!(
                    f,
                    "table {table} was rolled back: its marker says it holds checkpoint {marker}, but its \
                     current snapshot {current} holds {found}. Appending on top would lose the rolled-back \
                     data. "
                )?;
                match marker_snapshot {
                    Some(s) => write!(
                        f,
                        "Either roll the table forward to snapshot {s} (Spark: CALL <catalog>.system.set_current_snapshot('{table}', {s}); \
                         pyiceberg: table.manage_snapshots().set_current_snapshot({s}).commit()) and start again, "
                    )?,
                    None => write!(
                        f,
                        "The snapshot holding checkpoint {marker} is no longer in the table's metadata, so it \
                         cannot be rolled forward: "
                    )?,
                }
                write!(
                    f,
                    "or rebuild into NEW tables (a new catalog.namespace) under a new job_id. Nothing was written"
                )
            }
            Refusal::NotOwner { table, job, other } => write!(
                f,
                "table {table} is written by job {other}, not by this job ({job}): two jobs on one table write \
                 every event twice. Point this job at its own tables (catalog.namespace), or stop it and let \
                 job {other} run. Nothing was written"
            ),
            Refusal::NotTheLogsCheckpoint {
                table,
                checkpoint,
                table_sha256,
                log_sha256,
            } => write!(
                f,
                "table {table} holds checkpoint {checkpoint} with manifest sha256 {table_sha256}, but the log's \
                 checkpoint {checkpoint} has {log_sha256}: they are different checkpoints under one number; \
                 {LOG_BEHIND_ADVICE}"
            ),
            Refusal::Fenced {
                table,
                ours,
                theirs,
            } => write!(
                f,
                "table {table}: generation {theirs} has committed, above this process's generation {ours}: \
                 another instance of the job took over; this one stops without writing"
            ),
        }
    }
}

#[cfg(test)]
#[path = "preflight_tests.rs"]
mod tests;
