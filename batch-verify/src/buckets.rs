//! The bucket phase: `threads` workers take buckets from a shared counter and run every
//! per-bucket check on them, each worker with its own outcome; the outcomes are merged at the
//! end. Only one bucket per worker is in memory at a time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::balances::{self, BalanceOutcome};
use crate::checks::{self, Outcome};
use crate::day::BusinessDay;
use crate::error::Result;
use crate::row::{EventItem, PositionItem, RejectRow, TripItem};
use crate::spill::SpillFiles;
use crate::truth::kafka::Windows;

/// The lakehouse side's spill families: events, dead letters, trips, positions.
pub type LakeFiles = (
    SpillFiles<EventItem>,
    SpillFiles<RejectRow>,
    SpillFiles<TripItem>,
    SpillFiles<PositionItem>,
);

/// Checks every bucket; see the module doc.
pub fn check_buckets(
    truth: &(SpillFiles<EventItem>, SpillFiles<RejectRow>),
    lake: &LakeFiles,
    day: &BusinessDay,
    windows: &Windows,
    threads: usize,
    keep: usize,
    show: bool,
) -> Result<(Outcome, BalanceOutcome)> {
    let next = AtomicUsize::new(0);
    let buckets = truth.0.buckets();
    let bar = crate::progress::buckets(show, buckets as u64);
    let results: Mutex<Vec<Result<(Outcome, BalanceOutcome)>>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut out = Outcome::new(keep);
                let mut trips = BalanceOutcome::new(keep);
                let run = |out: &mut Outcome, trips: &mut BalanceOutcome| -> Result<()> {
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= buckets {
                            return Ok(());
                        }
                        let mut events = Vec::new();
                        truth.0.read_into(b, &mut events)?;
                        lake.0.read_into(b, &mut events)?;
                        checks::check_events(events, day, out);
                        let mut rejects = Vec::new();
                        truth.1.read_into(b, &mut rejects)?;
                        lake.1.read_into(b, &mut rejects)?;
                        checks::check_rejects(rejects, windows, out);
                        let mut positions = Vec::new();
                        lake.3.read_into(b, &mut positions)?;
                        checks::check_positions(positions, &mut out.findings);
                        let mut items = Vec::new();
                        lake.2.read_into(b, &mut items)?;
                        balances::check_trips(items, day, trips);
                        bar.inc(1);
                    }
                };
                let r = run(&mut out, &mut trips).map(|()| (out, trips));
                results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            });
        }
    });
    bar.finish_and_clear();
    let mut total = Outcome::new(keep);
    let mut trips_total = BalanceOutcome::new(keep);
    for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let (o, t) = r?;
        total.merge(o);
        trips_total.findings.merge(t.findings);
        trips_total.checked += t.checked;
        trips_total.incomplete.extend(t.incomplete);
    }
    Ok((total, trips_total))
}
