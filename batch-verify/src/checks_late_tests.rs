//! `beyond_horizon` dead letters in the per-event-id check, with the helpers of
//! `checks_tests.rs`.

use super::*;

/// A `beyond_horizon` dead letter of event id `row.event_id` at position `p`.
fn late_at((row, p): (EventRow, Position)) -> EventItem {
    let EventItem::Conflict(mut r) = reused_at((row, p)) else {
        unreachable!()
    };
    r.reason = recon_schemas::decode::BEYOND_HORIZON.into();
    EventItem::Conflict(r)
}

/// A case: name, rows in, kinds out, and the counts of [`check_late`].
type LateCase = (&'static str, Vec<EventItem>, Vec<Kind>, [u64; 5]);

/// Runs the event checks; returns the kinds found (sorted) and the counts (truth events,
/// re-sends, truth dead letters, lakehouse dead letters, beyond the horizon).
fn check_late(items: Vec<EventItem>) -> (Vec<Kind>, [u64; 5]) {
    let mut out = Outcome::new(100);
    check_events(items, &day(), &mut out);
    let mut kinds: Vec<Kind> = out.findings.kept.iter().map(|d| d.kind).collect();
    kinds.sort();
    let counts = [
        out.truth_events,
        out.truth_resends,
        out.truth_rejects,
        out.lake_rejects,
        out.beyond_horizon,
    ];
    (kinds, counts)
}

/// A record that came later than the job's horizon is dead-lettered `beyond_horizon` whatever
/// version of its event id it is; the dead letter accounts for the truth version at its
/// position (never summed, never silently dropped) and is counted.
#[test]
fn beyond_the_horizon() {
    let first = || on(1, "trip-a", 0, 10);
    let resend = || on(1, "trip-a", 0, 11);
    let other = || {
        let (mut row, p) = on(1, "trip-a", 0, 12);
        row.amount = 999;
        (row, p)
    };
    let copy = || on(1, "trip-b", 1, 5);
    let mut out_of_day = on(2, "trip-c", 0, 20);
    out_of_day.0.occurred_at_us += 86_400_000_000;
    // Counts: truth events, re-sends, truth dead letters, lakehouse dead letters, beyond.
    let cases: Vec<LateCase> = vec![
        (
            "the first version, beyond: counted, not missing",
            vec![truth_at(first()), late_at(first())],
            vec![],
            [0, 0, 1, 1, 1],
        ),
        (
            "the first version beyond, its re-send dropped",
            vec![truth_at(first()), truth_at(resend()), late_at(first())],
            vec![],
            [0, 1, 1, 1, 1],
        ),
        (
            "a re-send beyond: a dead letter, not a drop",
            vec![
                truth_at(first()),
                truth_at(resend()),
                ledger_at(first()),
                late_at(resend()),
            ],
            vec![],
            [1, 0, 1, 1, 1],
        ),
        (
            "a conflicting version beyond instead of conflicting_duplicate",
            vec![
                truth_at(first()),
                truth_at(other()),
                ledger_at(first()),
                late_at(other()),
            ],
            vec![],
            [1, 0, 1, 1, 1],
        ),
        (
            "a copy on another trip beyond instead of event_id_reused",
            vec![
                truth_at(first()),
                truth_at(copy()),
                ledger_at(first()),
                late_at(copy()),
            ],
            vec![],
            [1, 0, 1, 1, 1],
        ),
        (
            "the holder's version beyond, the copy in the ledger",
            vec![
                truth_at(first()),
                truth_at(copy()),
                ledger_at(copy()),
                late_at(first()),
            ],
            vec![],
            [1, 0, 1, 1, 1],
        ),
        (
            "every version beyond",
            vec![
                truth_at(first()),
                truth_at(resend()),
                truth_at(other()),
                truth_at(copy()),
                late_at(first()),
                late_at(resend()),
                late_at(other()),
                late_at(copy()),
            ],
            vec![],
            [0, 0, 4, 4, 4],
        ),
        (
            "a truth event of another day, beyond: not the day's",
            vec![truth_at(out_of_day.clone()), late_at(out_of_day.clone())],
            vec![],
            [0, 0, 0, 0, 0],
        ),
        (
            "no truth version at its position",
            vec![truth_at(first()), ledger_at(first()), late_at(resend())],
            vec![Kind::PhantomReject],
            [1, 0, 0, 1, 0],
        ),
        (
            "no truth version of the id at all",
            vec![late_at(first())],
            vec![Kind::PhantomReject],
            [0, 0, 0, 1, 0],
        ),
        (
            "also in ledger_events at its position",
            vec![truth_at(first()), ledger_at(first()), late_at(first())],
            vec![Kind::PhantomReject],
            [1, 0, 0, 1, 0],
        ),
        (
            "a re-send beyond, also in ledger_events at its position",
            vec![
                truth_at(first()),
                truth_at(resend()),
                ledger_at(resend()),
                late_at(resend()),
            ],
            vec![Kind::ContentMismatch, Kind::PhantomReject],
            [1, 1, 0, 1, 0],
        ),
        (
            "the first version beyond but the event in the ledger elsewhere",
            vec![
                truth_at(first()),
                truth_at(resend()),
                ledger_at(resend()),
                late_at(first()),
            ],
            vec![Kind::ContentMismatch, Kind::PhantomReject],
            [1, 1, 0, 1, 0],
        ),
        (
            "refused and beyond at one position",
            vec![truth_at(first()), refused(1, 10), late_at(first())],
            vec![Kind::PhantomReject],
            [0, 0, 1, 2, 0],
        ),
        (
            "neither in the ledger nor dead-lettered: still missing",
            vec![truth_at(first())],
            vec![Kind::Missing],
            [1, 0, 0, 0, 0],
        ),
        (
            "a conflicting version neither dead-lettered: still a missing dead letter",
            vec![
                truth_at(first()),
                truth_at(other()),
                ledger_at(first()),
                late_at(resend()),
            ],
            vec![Kind::MissingReject, Kind::PhantomReject],
            [1, 0, 1, 1, 0],
        ),
        (
            "a copy neither dead-lettered: still a missing dead letter",
            vec![truth_at(first()), truth_at(copy()), ledger_at(first())],
            vec![Kind::MissingReject],
            [1, 0, 1, 0, 0],
        ),
    ];
    // Every case is run, and every one that fails is named.
    let failed: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, items, kinds, counts)| {
            let found = check_late(items);
            (found != (kinds.clone(), counts))
                .then(|| format!("{name}: found {found:?}, expected {:?}", (kinds, counts)))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
