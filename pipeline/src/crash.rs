//! Named crash points: places in the commit sequence where tests kill the process.
//!
//! A test sets `RECON_CRASH_AT=<point>` (optionally `<point>:<n>` to fire on the n-th time the
//! point is reached, 1-based) and the process sends itself SIGKILL there: no destructors, no
//! flush, exactly what a power cut or an OOM kill does. Unset, each point costs one relaxed
//! atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every place the exactly-once protocol can be interrupted, in the order a checkpoint meets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// In the middle of processing a batch of records, before any barrier.
    MidBatch,
    /// Data files are written and closed, the checkpoint is not yet durable.
    AfterFilesWritten,
    /// State and manifest are written, the completion marker is not.
    BeforeCheckpointComplete,
    /// The checkpoint is complete (durable); nothing is committed to Iceberg yet.
    AfterCheckpointDurable,
    /// One table's commit landed, the other tables' have not.
    DuringCommit,
    /// Every table's commit landed; the job has not recorded that it did.
    AfterCommitBeforeRecord,
    /// `[alerts]` on: the checkpoint is durable and its alerts and offsets are in an open Kafka
    /// transaction that is not committed.
    BeforeAlertsCommit,
    /// `[current_balances]` on: the checkpoint's upserts and progress are in an open
    /// PostgreSQL transaction that is not committed.
    BeforeBalancesCommit,
    /// Bounded state on: a barrier's evicted trips are written as a cold run in the checkpoint
    /// store; its state delta (with their tombstones) and manifest are not.
    AfterColdRunWritten,
    /// Fleet committer: its commit record (manifest) is written, its log entry is not.
    CommitterBeforeRecord,
    /// Fleet committer: the record is durable; one table holds it, the others do not.
    CommitterDuringCommit,
    /// Fleet committer: every table holds the record; the progress workers prune by is not
    /// written.
    CommitterAfterCommit,
    /// `reshard`: every new task's share is in its new log; the committer's reshard record
    /// (the point of no return) is not written.
    ReshardAfterShares,
    /// `reshard`: the committer's reshard record is durable; the shape record is not.
    ReshardAfterRecord,
}

impl CrashPoint {
    /// All points, for tests that visit each one.
    pub const ALL: [CrashPoint; 6] = [
        CrashPoint::MidBatch,
        CrashPoint::AfterFilesWritten,
        CrashPoint::BeforeCheckpointComplete,
        CrashPoint::AfterCheckpointDurable,
        CrashPoint::DuringCommit,
        CrashPoint::AfterCommitBeforeRecord,
    ];

    /// Points reached only with the optional outputs on (`[alerts]`, `[current_balances]`).
    pub const OUTPUTS: [CrashPoint; 2] = [
        CrashPoint::BeforeAlertsCommit,
        CrashPoint::BeforeBalancesCommit,
    ];

    /// Points reached only with bounded state on (`[state] evict_*`), at a barrier that evicts.
    pub const BOUNDED: [CrashPoint; 1] = [CrashPoint::AfterColdRunWritten];

    /// Points of the fleet committer (`run --role committer`).
    pub const COMMITTER: [CrashPoint; 3] = [
        CrashPoint::CommitterBeforeRecord,
        CrashPoint::CommitterDuringCommit,
        CrashPoint::CommitterAfterCommit,
    ];

    /// Points of the `reshard` command.
    pub const RESHARD: [CrashPoint; 2] = [
        CrashPoint::ReshardAfterShares,
        CrashPoint::ReshardAfterRecord,
    ];

    /// Every point.
    pub fn every() -> impl Iterator<Item = CrashPoint> {
        CrashPoint::ALL
            .into_iter()
            .chain(CrashPoint::OUTPUTS)
            .chain(CrashPoint::BOUNDED)
            .chain(CrashPoint::COMMITTER)
            .chain(CrashPoint::RESHARD)
    }

    /// The name used in `RECON_CRASH_AT`.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::MidBatch => "mid-batch",
            CrashPoint::AfterFilesWritten => "after-files-written",
            CrashPoint::BeforeCheckpointComplete => "before-checkpoint-complete",
            CrashPoint::AfterCheckpointDurable => "after-checkpoint-durable",
            CrashPoint::DuringCommit => "during-commit",
            CrashPoint::AfterCommitBeforeRecord => "after-commit-before-record",
            CrashPoint::BeforeAlertsCommit => "before-alerts-commit",
            CrashPoint::BeforeBalancesCommit => "before-balances-commit",
            CrashPoint::AfterColdRunWritten => "after-cold-run-written",
            CrashPoint::CommitterBeforeRecord => "committer-before-record",
            CrashPoint::CommitterDuringCommit => "committer-during-commit",
            CrashPoint::CommitterAfterCommit => "committer-after-commit",
            CrashPoint::ReshardAfterShares => "reshard-after-shares",
            CrashPoint::ReshardAfterRecord => "reshard-after-record",
        }
    }

    /// Parses a name as written in `RECON_CRASH_AT`.
    pub fn parse(name: &str) -> Option<CrashPoint> {
        CrashPoint::every().find(|p| p.name() == name)
    }
}

/// The environment variable that arms a crash point.
pub const CRASH_ENV: &str = "RECON_CRASH_AT";

struct Armed {
    point: CrashPoint,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(CRASH_ENV).ok()?;
            let (name, nth) = match spec.split_once(':') {
                Some((name, n)) => (name, n.parse::<u64>().ok()?.max(1)),
                None => (spec.as_str(), 1),
            };
            let point = CrashPoint::parse(name)?;
            Some(Armed {
                point,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Kills the process with SIGKILL if `point` is armed and this is its n-th visit.
pub fn maybe_crash(point: CrashPoint) {
    let Some(armed) = armed() else { return };
    if armed.point != point {
        return;
    }
    let hit = armed.hits.fetch_add(1, Ordering::Relaxed) + 1;
    if hit == armed.nth {
        eprintln!(
            "recon: crash point {} reached (hit {hit}): SIGKILL",
            point.name()
        );
        // SAFETY: kill(2) on our own pid with a constant signal has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; should delivery be delayed, never run past the point.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for p in CrashPoint::every() {
            assert_eq!(CrashPoint::parse(p.name()), Some(p));
        }
        let mut names: Vec<_> = CrashPoint::every().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            CrashPoint::ALL.len()
                + CrashPoint::OUTPUTS.len()
                + CrashPoint::BOUNDED.len()
                + CrashPoint::COMMITTER.len()
                + CrashPoint::RESHARD.len()
        );
        assert_eq!(CrashPoint::parse("nowhere"), None);
    }
}
