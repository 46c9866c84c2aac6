//! Check (e): for every trip touched on the day, the latest `trip_balances` row (highest
//! `checkpoint_id`) equals the verifier's own fold ([`crate::fold`]) of the trip's
//! `ledger_events` rows in Kafka log order. The job folds with `recon_schemas::balance`; the
//! two are held equal by a property test, never by sharing code.
//!
//! A trip whose events reach beyond the day (a late refund, a trip over midnight) shows a
//! latest row with more events than the day holds; such trips are returned as *incomplete* and
//! checked again once the neighbouring days' rows of just those trips are read.

use std::collections::HashMap;

use crate::checks::scaled;
use crate::day::BusinessDay;
use crate::fold::{Fold, Ledger, Step};
use crate::report::{Discrepancy, Findings, Kind};
use crate::row::{BalanceRow, EventRow, Position, SUM_NAMES, TripItem};

/// A trip whose fold needs events outside the day.
#[derive(Clone, Debug)]
pub struct Incomplete {
    /// The latest balance row.
    pub latest: BalanceRow,
    /// The trip's rows read so far.
    pub events: Vec<(EventRow, Position)>,
    /// Positions among `events` the job dead-lettered as `balance_overflow`.
    pub refused: Vec<Position>,
}

/// Result of one bucket.
#[derive(Debug, Default)]
pub struct BalanceOutcome {
    /// Discrepancies.
    pub findings: Findings,
    /// Trips checked.
    pub checked: u64,
    /// Trips to check again with more events, by trip id.
    pub incomplete: HashMap<String, Incomplete>,
}

impl BalanceOutcome {
    /// Keeps at most `keep_max` discrepancies.
    pub fn new(keep_max: usize) -> BalanceOutcome {
        BalanceOutcome {
            findings: Findings::new(keep_max),
            ..BalanceOutcome::default()
        }
    }
}

/// Checks the trips of one bucket.
pub fn check_trips(items: Vec<TripItem>, day: &BusinessDay, out: &mut BalanceOutcome) {
    fn trip_of(item: &TripItem) -> &str {
        match item {
            TripItem::Ledger { row, .. } | TripItem::Refused { row, .. } => &row.trip_id,
            TripItem::Balance(b) => &b.trip_id,
        }
    }
    // Group by sorting an index (hash, then id on ties): no map, no copy of the rows.
    let mut index: Vec<(u64, u32)> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let hash = crate::spill::hash_bytes(trip_of(it).as_bytes());
            (hash, u32::try_from(i).unwrap_or(u32::MAX))
        })
        .collect();
    assert!(
        items.len() < u32::MAX as usize,
        "a bucket of {} items",
        items.len()
    );
    index.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| trip_of(&items[a.1 as usize]).cmp(trip_of(&items[b.1 as usize])))
    });
    let same = |a: &(u64, u32), b: &(u64, u32)| {
        a.0 == b.0 && trip_of(&items[a.1 as usize]) == trip_of(&items[b.1 as usize])
    };
    let mut events: Vec<(&EventRow, Position)> = Vec::new();
    let mut refused: Vec<Position> = Vec::new();
    for run in index.chunk_by(same) {
        events.clear();
        refused.clear();
        let mut latest: Option<&BalanceRow> = None;
        let mut ambiguous = false;
        for (_, i) in run {
            match &items[*i as usize] {
                TripItem::Ledger { row, position } => events.push((row, *position)),
                TripItem::Refused { row, position } => {
                    events.push((row, *position));
                    refused.push(*position);
                }
                TripItem::Balance(b) => match latest {
                    Some(cur) if cur.checkpoint_id > b.checkpoint_id => {}
                    // Two rows of one trip in one checkpoint: ambiguous unless identical.
                    Some(cur) if cur.checkpoint_id == b.checkpoint_id => ambiguous |= cur != b,
                    _ => {
                        latest = Some(b);
                        ambiguous = false;
                    }
                },
            }
        }
        let trip = trip_of(&items[run[0].1 as usize]).to_string();
        check_trip(trip, (&events, &refused), latest, ambiguous, day, out);
    }
}

fn check_trip(
    trip: String,
    (events, refused): (&[(&EventRow, Position)], &[Position]),
    latest: Option<&BalanceRow>,
    ambiguous: bool,
    day: &BusinessDay,
    out: &mut BalanceOutcome,
) {
    {
        if events.is_empty() {
            // Only a trip the day touched is checked; but a latest row dated on the day with no
            // event of the day is wrong in itself.
            if let Some(b) = latest
                && day.contains_micros(b.last_occurred_at_us)
            {
                out.checked += 1;
                out.findings.add(
                    Discrepancy::new(Kind::BalanceMismatch, format!("latest row (checkpoint {}) has last_occurred_at on the day but ledger_events has no event of the trip on the day", b.checkpoint_id))
                        .trip(&trip),
                );
            }
            return;
        }
        out.checked += 1;
        let Some(latest) = latest else {
            out.findings.add(
                Discrepancy::new(
                    Kind::BalanceMismatch,
                    format!(
                        "no trip_balances row for a trip with {} events on the day",
                        events.len()
                    ),
                )
                .trip(&trip),
            );
            return;
        };
        if ambiguous {
            out.findings.add(
                Discrepancy::new(
                    Kind::BalanceMismatch,
                    format!(
                        "two different trip_balances rows at checkpoint {}",
                        latest.checkpoint_id
                    ),
                )
                .trip(&trip),
            );
            return;
        }
        match compare(events, refused, latest) {
            Verdict::Equal => {}
            Verdict::NeedsMore => {
                let events = events.iter().map(|(r, p)| ((*r).clone(), *p)).collect();
                let latest = latest.clone();
                let refused = refused.to_vec();
                out.incomplete.insert(
                    trip,
                    Incomplete {
                        latest,
                        events,
                        refused,
                    },
                );
            }
            Verdict::Differs(what) => out
                .findings
                .add(Discrepancy::new(Kind::BalanceMismatch, what).trip(&trip)),
        }
    }
}

/// How a fold compares with a balance row.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Identical.
    Equal,
    /// The row counts more events than were folded: read more of the trip's events.
    NeedsMore,
    /// A real difference, described.
    Differs(String),
}

/// [`crate::fold`] over rows in log order; rows holding values no event can have are skipped
/// and counted.
pub fn fold_rows<'a>(
    rows_in_log_order: impl IntoIterator<Item = &'a EventRow>,
) -> (Option<Ledger>, usize) {
    let f = fold_checked(rows_in_log_order.into_iter().map(|r| (r, false)));
    (f.balance, f.unreadable)
}

/// A fold of rows, with where it disagrees with the job's refusals.
#[derive(Debug, Default)]
pub struct CheckedFold {
    /// The balance.
    pub balance: Option<Ledger>,
    /// Rows holding values no event can have (skipped).
    pub unreadable: usize,
    /// Rows the job refused as `balance_overflow` that the fold sums, and ledger rows the fold
    /// refuses: described.
    pub disagreements: Vec<String>,
}

/// [`fold_rows`] over `(row, refused by the job)` in log order: a row the job dead-lettered as
/// `balance_overflow` must be refused by the fold ([`Step::Overflow`]) at the same place, and
/// no ledger row may be.
pub fn fold_checked<'a>(
    rows_in_log_order: impl IntoIterator<Item = (&'a EventRow, bool)>,
) -> CheckedFold {
    let mut fold = Fold::default();
    let mut unreadable = 0;
    let mut disagreements = Vec::new();
    for (row, job_refused) in rows_in_log_order {
        let step = fold.step(row);
        if step == Step::Unreadable {
            unreadable += 1;
            continue;
        }
        let overflow = step == Step::Overflow;
        // A re-send or a conflicting version never reaches a sum: not the job's refusal to judge.
        if !matches!(step, Step::Resent | Step::Conflict) && overflow != job_refused {
            disagreements.push(if job_refused {
                format!(
                    "rejected_events refuses {} {} (balance_overflow) but the fold sums it",
                    row.type_name(),
                    row.amount_text()
                )
            } else {
                format!(
                    "ledger_events holds {} {} but it takes the trip beyond decimal(18,3)",
                    row.type_name(),
                    row.amount_text()
                )
            });
        }
    }
    CheckedFold {
        balance: fold.ledger,
        unreadable,
        disagreements,
    }
}

/// Folds `events` (any order; sorted here into the job's read order, [`Position::log_order`];
/// those at `refused` positions are the job's `balance_overflow` dead letters) and compares with
/// `latest`.
pub fn compare(
    events: &[(&EventRow, Position)],
    refused: &[Position],
    latest: &BalanceRow,
) -> Verdict {
    let mut sorted: Vec<&(&EventRow, Position)> = events.iter().collect();
    sorted.sort_by_key(|(_, p)| p.log_order());
    let checked = fold_checked(sorted.iter().map(|(r, p)| (*r, refused.contains(p))));
    let (fold, unreadable) = (checked.balance, checked.unreadable);
    let Some(fold) = fold else {
        return Verdict::Differs(format!(
            "{unreadable} ledger rows of the trip hold values no event can have"
        ));
    };
    // Before the refusals: with part of the trip's history, the fold cannot tell them.
    if i64::from(latest.event_count) > i64::from(fold.events) {
        return Verdict::NeedsMore;
    }
    if !checked.disagreements.is_empty() {
        return Verdict::Differs(checked.disagreements.join("; "));
    }
    let diffs = differences(&fold, latest);
    if diffs.is_empty() {
        Verdict::Equal
    } else {
        Verdict::Differs(format!(
            "latest row (checkpoint {}) vs fold of {} ledger rows: {}",
            latest.checkpoint_id,
            events.len(),
            diffs.join("; ")
        ))
    }
}

fn differences(fold: &Ledger, row: &BalanceRow) -> Vec<String> {
    let mut out = Vec::new();
    if fold.currency != row.currency {
        out.push(format!(
            "currency {} vs fold {}",
            row.currency, fold.currency
        ));
    }
    for (k, want) in fold.sums.iter().enumerate() {
        if *want != i128::from(row.sums[k]) {
            out.push(format!(
                "{} {} vs fold {}",
                SUM_NAMES[k],
                scaled(i128::from(row.sums[k])),
                scaled(*want)
            ));
        }
    }
    if i64::from(row.event_count) != i64::from(fold.events) {
        out.push(format!(
            "event_count {} vs fold {}",
            row.event_count, fold.events
        ));
    }
    if let Some(last) = fold.last_occurred_at_us
        && last != row.last_occurred_at_us
    {
        out.push(format!("last_occurred_at differs (fold {last} us)"));
    }
    let (status, reason) = fold.status();
    // The ledger holds first versions only, so a conflicting duplicate (dead-lettered) is
    // invisible to the fold: the row's flag is accepted when everything else agrees.
    let conflict_flagged =
        row.reason.as_deref() == Some("conflicting_duplicate") && row.status == "DISCREPANCY";
    if !conflict_flagged && (row.status != status || row.reason.as_deref() != reason) {
        out.push(format!(
            "status {} {} vs fold {status} {}",
            row.status,
            row.reason.as_deref().unwrap_or(""),
            reason.unwrap_or("")
        ));
    }
    out
}

/// Checks the incomplete trips again after their neighbouring rows were added; a trip still
/// short of events is a mismatch.
pub fn recheck(incomplete: HashMap<String, Incomplete>, span_days: u32, findings: &mut Findings) {
    for (trip, inc) in incomplete {
        let events: Vec<(&EventRow, Position)> = inc.events.iter().map(|(r, p)| (r, *p)).collect();
        match compare(&events, &inc.refused, &inc.latest) {
            Verdict::Equal => {}
            Verdict::NeedsMore => findings.add(
                Discrepancy::new(
                    Kind::BalanceMismatch,
                    format!(
                        "latest row (checkpoint {}) counts {} events, ledger_events holds fewer within ±{span_days} days of the day",
                        inc.latest.checkpoint_id, inc.latest.event_count
                    ),
                )
                .trip(&trip),
            ),
            Verdict::Differs(what) => findings.add(Discrepancy::new(Kind::BalanceMismatch, what).trip(&trip)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Soak seed 313 #35 (2026-12-06): a trip whose first events came from a topic the job
    /// read before an accepted topic reset, and a later event in another currency from the new
    /// topic at a lower offset. The job folded old topic first; so must the proof.
    #[test]
    fn a_topic_reset_does_not_reorder_a_trips_events() {
        let row = |n: u128, event_type: u8, amount: i64, currency: &str| EventRow {
            event_id: uuid::Uuid::from_u128(n),
            event_type,
            trip_id: "trip-1".into(),
            amount,
            currency: currency.into(),
            occurred_at_us: 1_741_003_200_000_000 + n as i64,
            extra: 0,
        };
        let old = |offset| Position {
            partition: 0,
            offset,
            topics_ago: 1,
        };
        let (charge, payment, adjustment) = (
            row(1, 0, 42_800, "USD"),
            row(2, 1, 42_800, "USD"),
            row(3, 5, 2_500, "EUR"),
        );
        let events = [
            (&adjustment, Position::new(0, 5)),
            (&charge, old(100)),
            (&payment, old(101)),
        ];
        let latest = BalanceRow {
            trip_id: "trip-1".into(),
            currency: "USD".into(),
            sums: [42_800, 42_800, 0, 0, 0, 0],
            status: "DISCREPANCY".into(),
            reason: Some("currency_mismatch".into()),
            event_count: 2,
            last_occurred_at_us: 1_741_003_200_000_002,
            checkpoint_id: 7,
        };
        assert_eq!(compare(&events, &[], &latest), Verdict::Equal);
    }

    /// The fold refuses exactly what the job refused: a second charge of the largest amount;
    /// a refusal the fold does not make, or a ledger row it refuses, is a mismatch.
    #[test]
    fn refusals_must_agree_with_the_fold() {
        let row = |n: u128, amount: i64| EventRow {
            event_id: uuid::Uuid::from_u128(n),
            event_type: 0,
            trip_id: "trip-1".into(),
            amount,
            currency: "USD".into(),
            occurred_at_us: 1_741_003_200_000_000,
            extra: 0,
        };
        let max = 999_999_999_999_999_990;
        let (a, b) = (row(1, max), row(2, max));
        let agree = fold_checked([(&a, false), (&b, true)]);
        assert!(agree.disagreements.is_empty(), "{agree:?}");
        assert_eq!(agree.balance.unwrap().events, 1);
        let ledgered = fold_checked([(&a, false), (&b, false)]);
        assert_eq!(ledgered.disagreements.len(), 1, "{ledgered:?}");
        // A rider payment of 0.10 (type index 1) fits beside the largest charge.
        let mut small = row(3, 100);
        small.event_type = 1;
        let wrongly_refused = fold_checked([(&a, false), (&small, true)]);
        assert_eq!(
            wrongly_refused.disagreements.len(),
            1,
            "{wrongly_refused:?}"
        );
    }
}
