//! The newest runs recorded in `verification_runs`, for the HTML report's history table.

use chrono::{DateTime, NaiveDate, Utc};
use iceberg::expr::Predicate;
use iceberg::table::Table;

use crate::error::Result;
use crate::lakehouse::{Columns, scan};
use recon_schemas::tables::TableName;

/// One recorded run, as the history shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastRun {
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// The business day it verified.
    pub business_date: NaiveDate,
    /// `clean`, `discrepancies`, `error` or `empty`.
    pub status: String,
    /// `kafka`, `postgres` or `files`.
    pub truth_source: String,
    /// Truth events of the day.
    pub truth_events: i64,
    /// Duplicates found.
    pub duplicates: i64,
    /// Missing events and dead letters.
    pub missing: i64,
    /// Phantom rows.
    pub phantom: i64,
    /// Balances that differ from the fold.
    pub balance_mismatches: i64,
}

/// The `newest` most recent runs of `table` (`verification_runs`), newest first. Memory holds
/// at most twice `newest` rows whatever the table's size.
pub async fn newest_runs(table: &Table, newest: usize) -> Result<Vec<PastRun>> {
    let columns = [
        "finished_at",
        "business_date",
        "status",
        "truth_source",
        "truth_events",
        "duplicates",
        "missing",
        "phantom",
        "balance_mismatches",
    ];
    let mut runs: Vec<PastRun> = Vec::new();
    let keep = |runs: &mut Vec<PastRun>| {
        runs.sort_by_key(|r| std::cmp::Reverse(r.finished_at));
        runs.truncate(newest);
    };
    scan(table, &columns, Predicate::AlwaysTrue, |b| {
        let c = Columns::new(b, TableName::VerificationRuns.as_str());
        let (finished, dates) = (c.micros("finished_at")?, c.dates("business_date")?);
        let (status, truth) = (c.strings("status")?, c.strings("truth_source")?);
        let counts = [
            c.longs("truth_events")?,
            c.longs("duplicates")?,
            c.longs("missing")?,
            c.longs("phantom")?,
            c.longs("balance_mismatches")?,
        ];
        for i in 0..b.num_rows() {
            let Some(finished_at) = finished[i].and_then(DateTime::from_timestamp_micros) else {
                continue;
            };
            let n = |k: usize| counts[k][i].unwrap_or(0);
            runs.push(PastRun {
                finished_at,
                business_date: c.required("business_date", dates[i])?,
                status: status[i].unwrap_or("?").to_string(),
                truth_source: truth[i].unwrap_or("?").to_string(),
                truth_events: n(0),
                duplicates: n(1),
                missing: n(2),
                phantom: n(3),
                balance_mismatches: n(4),
            });
            if runs.len() >= 2 * newest.max(1) {
                keep(&mut runs);
            }
        }
        Ok(())
    })
    .await?;
    keep(&mut runs);
    Ok(runs)
}
