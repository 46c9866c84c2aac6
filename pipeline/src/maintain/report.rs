//! What `maintain` did, one line per table.

use std::fmt;

use crate::maintain::retention::ExpiryPlan;
use crate::maintain::sweep::SweepCounts;

/// The outcome for one table.
#[derive(Clone, Debug, Default)]
pub struct TableReport {
    /// `namespace.table`.
    pub table: String,
    /// Snapshot expiry, when it got that far.
    pub expiry: Option<ExpiryPlan>,
    /// Attempts the expiry commit took.
    pub expire_attempts: u32,
    /// Orphan sweep, when it got that far.
    pub sweep: Option<SweepCounts>,
    /// Orphans (or, in a dry run, would-be orphans): object key and bytes.
    pub orphans: Vec<(String, u64)>,
    /// Why the table could not be maintained; what was done before stays done.
    pub error: Option<String>,
}

/// The outcome of one `maintain` run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Per table.
    pub tables: Vec<TableReport>,
}

impl Report {
    /// True if any table failed.
    pub fn failed(&self) -> bool {
        self.tables.iter().any(|t| t.error.is_some())
    }
}

/// `(done, doing)` verbs for a real or a dry run.
fn verbs(dry_run: bool) -> (&'static str, &'static str) {
    if dry_run {
        ("would expire", "would delete")
    } else {
        ("expired", "deleted")
    }
}

impl TableReport {
    /// The summary line of this table.
    pub fn line(&self, dry_run: bool) -> String {
        let (expired, deleted) = verbs(dry_run);
        let mut parts = vec![];
        if let Some(p) = &self.expiry {
            let marker = match (p.marker_snapshot, p.marks.committed) {
                (Some(s), Some(c)) => format!("job marker: checkpoint {c} in snapshot {s}"),
                (None, Some(c)) => format!("job marker: checkpoint {c} (table property)"),
                _ => "no job marker".to_string(),
            };
            parts.push(format!(
                "snapshots {expired} {}, kept {} ({} for markers; {marker})",
                p.expire.len(),
                p.kept,
                p.held_for_markers
            ));
        }
        if let Some(s) = &self.sweep {
            let kept =
                s.referenced + s.pending + s.in_flight + s.other_job + s.young + s.unusual_name;
            parts.push(format!(
                "files {deleted} {} ({} bytes), kept {kept}: {} referenced, {} pending, {} in flight, {} young, {} other jobs, {} unusual names{}",
                s.deleted,
                s.deleted_bytes,
                s.referenced,
                s.pending,
                s.in_flight,
                s.young,
                s.other_job,
                s.unusual_name,
                if s.truncated { " (listing truncated)" } else { "" }
            ));
        }
        if let Some(e) = &self.error {
            parts.push(format!("FAILED: {e}"));
        }
        format!("{}: {}", self.table, parts.join("; "))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            writeln!(f, "{}", t.line(self.dry_run))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::protocol::TableMarks;
    use crate::ids::CheckpointId;

    #[test]
    fn one_line_says_what_happened() {
        let t = TableReport {
            table: "recon.ledger_events".into(),
            expiry: Some(ExpiryPlan {
                expire: vec![1, 2],
                kept: 3,
                held_for_markers: 1,
                marks: TableMarks {
                    committed: Some(CheckpointId(9)),
                    generation: None,
                },
                marker_snapshot: Some(5),
            }),
            sweep: Some(SweepCounts {
                deleted: 1,
                deleted_bytes: 10,
                referenced: 4,
                pending: 2,
                ..SweepCounts::default()
            }),
            ..TableReport::default()
        };
        assert_eq!(
            t.line(false),
            "recon.ledger_events: snapshots expired 2, kept 3 (1 for markers; job marker: checkpoint 9 in snapshot 5); \
             files deleted 1 (10 bytes), kept 6: 4 referenced, 2 pending, 0 in flight, 0 young, 0 other jobs, 0 unusual names"
        );
        assert!(t.line(true).contains("would expire 2") && t.line(true).contains("would delete 1"));
        let failed = TableReport {
            table: "t".into(),
            error: Some("boom".into()),
            ..TableReport::default()
        };
        assert_eq!(failed.line(false), "t: FAILED: boom");
    }
}
