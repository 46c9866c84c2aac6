//! Data-driven tests of the per-bucket checks, through one `check` helper: rows in, the kinds
//! and counts out.

use super::*;
use crate::row::{EventRow, Scope};

/// A case: name, rows in, kinds out, and two counts out.
type Case<T> = (&'static str, Vec<T>, Vec<Kind>, u64, u64);

fn day() -> BusinessDay {
    BusinessDay::new("2025-03-03".parse().unwrap(), "UTC").unwrap()
}

const NOON_US: i64 = 1_741_003_200_000_000; // 2025-03-03T12:00:00Z

fn ev(id: u128, amount: i64) -> EventRow {
    EventRow {
        event_id: Uuid::from_u128(id),
        event_type: 0,
        trip_id: format!("trip-{id}"),
        amount,
        currency: "USD".into(),
        occurred_at_us: NOON_US,
        extra: 0,
    }
}

fn pos(offset: i64) -> Position {
    Position::new(0, offset)
}

fn truth(row: EventRow, offset: i64) -> EventItem {
    EventItem::Truth {
        row,
        position: Some(pos(offset)),
        order: (0, offset),
    }
}

fn ledger(row: EventRow, offset: i64) -> EventItem {
    EventItem::Ledger {
        row,
        position: pos(offset),
        checkpoint_id: 1,
    }
}

fn conflict(id: u128, offset: i64) -> EventItem {
    EventItem::Conflict(RejectRow {
        side: Side::Lake,
        key: MatchKey::Position(pos(offset)),
        reason: "conflicting_duplicate".into(),
        event_id: Some(Uuid::from_u128(id).to_string()),
        trip_id: None,
        position: Some(pos(offset)),
        digest: [0; 16],
        scope: Scope::InDay,
    })
}

/// Runs the event checks; returns the kinds found (sorted) and (truth events, resends).
fn check(items: Vec<EventItem>) -> (Vec<Kind>, u64, u64) {
    let mut out = Outcome::new(100);
    check_events(items, &day(), &mut out);
    let mut kinds: Vec<Kind> = out.findings.kept.iter().map(|d| d.kind).collect();
    kinds.sort();
    (kinds, out.truth_events, out.truth_resends)
}

#[test]
fn event_cases() {
    let mut late = ev(1, 100);
    late.occurred_at_us += 86_400_000_000;
    let mut other_type = ev(1, 100);
    other_type.event_type = 1;
    let cases: Vec<Case<EventItem>> = vec![
        (
            "identical",
            vec![truth(ev(1, 100), 0), ledger(ev(1, 100), 0)],
            vec![],
            1,
            0,
        ),
        (
            "missing",
            vec![truth(ev(1, 100), 0)],
            vec![Kind::Missing],
            1,
            0,
        ),
        (
            "phantom",
            vec![ledger(ev(1, 100), 0)],
            vec![Kind::Phantom],
            0,
            0,
        ),
        (
            "twice",
            vec![
                truth(ev(1, 100), 0),
                ledger(ev(1, 100), 0),
                ledger(ev(1, 100), 0),
            ],
            vec![Kind::DuplicateEventId],
            1,
            0,
        ),
        (
            "amount",
            vec![truth(ev(1, 100), 0), ledger(ev(1, 110), 0)],
            vec![Kind::AmountMismatch],
            1,
            0,
        ),
        (
            "type",
            vec![truth(ev(1, 100), 0), ledger(other_type, 0)],
            vec![Kind::ContentMismatch],
            1,
            0,
        ),
        (
            "position",
            vec![truth(ev(1, 100), 0), ledger(ev(1, 100), 7)],
            vec![Kind::ContentMismatch],
            1,
            0,
        ),
        (
            "resend dropped",
            vec![
                truth(ev(1, 100), 0),
                truth(ev(1, 100), 3),
                ledger(ev(1, 100), 0),
            ],
            vec![],
            1,
            1,
        ),
        (
            "first seen wins, conflict dead-lettered",
            vec![
                truth(ev(1, 200), 5),
                truth(ev(1, 100), 2),
                ledger(ev(1, 100), 2),
                conflict(1, 5),
            ],
            vec![],
            1,
            0,
        ),
        (
            "conflict not dead-lettered",
            vec![
                truth(ev(1, 100), 2),
                truth(ev(1, 200), 5),
                ledger(ev(1, 100), 2),
            ],
            vec![Kind::MissingReject],
            1,
            0,
        ),
        (
            "conflict without a truth version",
            vec![truth(ev(1, 100), 2), ledger(ev(1, 100), 2), conflict(1, 9)],
            vec![Kind::PhantomReject],
            1,
            0,
        ),
        (
            "truth outside the day",
            vec![truth(late, 0), ledger(ev(1, 100), 0)],
            vec![Kind::ContentMismatch],
            0,
            0,
        ),
    ];
    for (name, items, kinds, events, resends) in cases {
        assert_eq!(check(items), (kinds, events, resends), "{name}");
    }
}

fn reject(side: Side, key: u8, reason: &str, scope: Scope) -> RejectRow {
    RejectRow {
        side,
        key: MatchKey::Digest([key; 16]),
        reason: reason.into(),
        event_id: None,
        trip_id: None,
        position: None,
        digest: [key; 16],
        scope,
    }
}

#[test]
fn reject_cases() {
    use Scope::*;
    use Side::*;
    let cases: Vec<Case<RejectRow>> = vec![
        (
            "paired",
            vec![
                reject(Truth, 1, "not_json", InDay),
                reject(Lake, 1, "not_json", InDay),
            ],
            vec![],
            1,
            1,
        ),
        (
            "missing",
            vec![reject(Truth, 1, "not_json", InDay)],
            vec![Kind::MissingReject],
            1,
            0,
        ),
        (
            "phantom",
            vec![reject(Lake, 1, "not_json", InDay)],
            vec![Kind::PhantomReject],
            0,
            1,
        ),
        (
            "other reason",
            vec![
                reject(Truth, 1, "not_json", InDay),
                reject(Lake, 1, "amount_scale", InDay),
            ],
            vec![Kind::RejectMismatch],
            1,
            1,
        ),
        (
            "another day",
            vec![reject(Truth, 1, "not_json", OutOfDay)],
            vec![],
            0,
            0,
        ),
        (
            "undated is not placed",
            vec![reject(Truth, 1, "not_json", Undated)],
            vec![],
            0,
            0,
        ),
        (
            "twice in the lakehouse",
            vec![
                reject(Truth, 1, "not_json", InDay),
                reject(Lake, 1, "not_json", InDay),
                reject(Lake, 1, "not_json", InDay),
            ],
            vec![Kind::PhantomReject],
            1,
            2,
        ),
    ];
    for (name, items, kinds, truth_n, lake_n) in cases {
        let mut out = Outcome::new(100);
        check_rejects(items, &Windows::new(), &mut out);
        let found: Vec<Kind> = out.findings.kept.iter().map(|d| d.kind).collect();
        assert_eq!(
            (found, out.truth_rejects, out.lake_rejects),
            (kinds, truth_n, lake_n),
            "{name}"
        );
    }
}

#[test]
fn positions_claimed_twice() {
    let item = |o, id: Option<u128>| PositionItem {
        position: pos(o),
        event_id: id.map(Uuid::from_u128),
    };
    let mut f = Findings::new(10);
    check_positions(
        vec![
            item(1, Some(1)),
            item(1, Some(1)),
            item(2, Some(2)),
            item(2, Some(3)),
            item(3, None),
            item(3, Some(4)),
        ],
        &mut f,
    );
    let mut at: Vec<_> = f.kept.iter().map(|d| (d.kind, d.kafka_offset)).collect();
    at.sort();
    assert_eq!(
        at,
        vec![
            (Kind::DuplicatePosition, Some(2)),
            (Kind::DuplicatePosition, Some(3))
        ]
    );
}

#[test]
fn totals_to_the_smallest_unit() {
    let mut t = Totals::new();
    let mut l = Totals::new();
    add_total(&mut t, &ev(1, 1234));
    add_total(&mut l, &ev(1, 1235));
    let mut f = Findings::new(10);
    let lines = check_totals(&t, &l, &mut f);
    assert_eq!(f.count(Kind::TotalMismatch), 1);
    assert_eq!(
        (
            lines[0].truth_amount.as_str(),
            lines[0].ledger_amount.as_str()
        ),
        ("1.234", "1.235")
    );
}

fn refused(id: u128, offset: i64) -> EventItem {
    let EventItem::Conflict(mut r) = conflict(id, offset) else {
        unreachable!()
    };
    r.reason = recon_schemas::decode::BALANCE_OVERFLOW.into();
    EventItem::Conflict(r)
}

/// An event the job refused for balance overflow is a dead letter on both sides, not a missing
/// ledger row; a refusal without its truth event, or beside a ledger row, is a phantom.
#[test]
fn balance_overflow_refusals() {
    // Counts out: truth dead letters, lakehouse dead letters.
    let cases: Vec<Case<EventItem>> = vec![
        (
            "refused where the truth has it",
            vec![truth(ev(1, 100), 4), refused(1, 4)],
            vec![],
            1,
            1,
        ),
        (
            "a re-send of a refused event is a re-send",
            vec![truth(ev(1, 100), 4), truth(ev(1, 100), 9), refused(1, 4)],
            vec![],
            1,
            1,
        ),
        (
            "refused at another position",
            vec![truth(ev(1, 100), 4), refused(1, 5)],
            vec![Kind::Missing, Kind::PhantomReject],
            0,
            0,
        ),
        (
            "refused and ledgered",
            vec![truth(ev(1, 100), 4), ledger(ev(1, 100), 4), refused(1, 4)],
            vec![Kind::PhantomReject],
            0,
            0,
        ),
        (
            "refused, no truth",
            vec![refused(1, 4)],
            vec![Kind::PhantomReject],
            0,
            0,
        ),
    ];
    assert_dead_letter_cases(cases);
}

#[test]
fn totals_print_at_scale_whatever_their_size() {
    assert_eq!(scaled(0), "0.000");
    assert_eq!(scaled(1), "0.001");
    assert_eq!(scaled(-1_500), "-1.500");
    assert_eq!(scaled(12_345_678), "12345.678");
    // Past decimal(18, 3): a day's total of many large amounts.
    assert_eq!(scaled(10_i128.pow(18) + 7), "1000000000000000.007");
    assert_eq!(
        scaled(i128::MIN).len(),
        "-170141183460469231731687303715884105.728".len()
    );
}

/// Event id `id` on trip `trip` at `offset` of partition `partition`.
fn on(id: u128, trip: &str, partition: i32, offset: i64) -> (EventRow, Position) {
    let mut row = ev(id, 100);
    row.trip_id = trip.into();
    (row, Position::new(partition, offset))
}

fn truth_at((row, p): (EventRow, Position)) -> EventItem {
    EventItem::Truth {
        row,
        position: Some(p),
        order: (p.partition, p.offset),
    }
}

fn ledger_at((row, p): (EventRow, Position)) -> EventItem {
    EventItem::Ledger {
        row,
        position: p,
        checkpoint_id: 1,
    }
}

fn reused_at((row, p): (EventRow, Position)) -> EventItem {
    let EventItem::Conflict(mut r) = conflict(row.event_id.as_u128(), 0) else {
        unreachable!()
    };
    r.reason = recon_schemas::decode::EVENT_ID_REUSED.into();
    r.position = Some(p);
    r.key = MatchKey::Position(p);
    r.trip_id = Some(row.trip_id);
    EventItem::Conflict(r)
}

/// An event id is one event across the job: whichever trip the job read it on first keeps it
/// (partitions are read in no fixed order), every copy on another trip is an `event_id_reused`
/// dead letter.
#[test]
fn an_event_id_reused_on_another_trip() {
    let a = || on(1, "trip-a", 0, 10);
    let b = || on(1, "trip-b", 1, 5);
    let b_again = || on(1, "trip-b", 1, 6);
    // Counts out: truth dead letters, lakehouse dead letters.
    let cases: Vec<Case<EventItem>> = vec![
        (
            "the trip read first holds it (partition 0 first)",
            vec![truth_at(a()), truth_at(b()), ledger_at(a()), reused_at(b())],
            vec![],
            1,
            1,
        ),
        (
            "the other order is as right (partition 1 first)",
            vec![truth_at(a()), truth_at(b()), ledger_at(b()), reused_at(a())],
            vec![],
            1,
            1,
        ),
        (
            "every copy on the other trip, re-sends too",
            vec![
                truth_at(a()),
                truth_at(b()),
                truth_at(b_again()),
                ledger_at(a()),
                reused_at(b()),
                reused_at(b_again()),
            ],
            vec![],
            2,
            2,
        ),
        (
            "accepted on both trips (per-trip dedup)",
            vec![truth_at(a()), truth_at(b()), ledger_at(a()), ledger_at(b())],
            vec![Kind::DuplicateEventId, Kind::MissingReject],
            1,
            0,
        ),
        (
            "the copy is not dead-lettered",
            vec![truth_at(a()), truth_at(b()), ledger_at(a())],
            vec![Kind::MissingReject],
            1,
            0,
        ),
        (
            "the holder's event is lost",
            vec![truth_at(a()), truth_at(b()), reused_at(b())],
            vec![Kind::Missing],
            1,
            1,
        ),
        (
            "a reuse dead letter the truth does not explain",
            vec![
                truth_at(a()),
                ledger_at(a()),
                reused_at(on(1, "trip-c", 2, 3)),
            ],
            vec![Kind::PhantomReject],
            0,
            1,
        ),
    ];
    assert_dead_letter_cases(cases);
}

/// Runs the event checks on each case; the kinds found and the (truth, lakehouse) dead-letter
/// counts must be the case's.
fn assert_dead_letter_cases(cases: Vec<Case<EventItem>>) {
    for (name, items, kinds, truth_rejects, lake_rejects) in cases {
        let mut out = Outcome::new(100);
        check_events(items, &day(), &mut out);
        let mut found: Vec<Kind> = out.findings.kept.iter().map(|d| d.kind).collect();
        found.sort();
        assert_eq!(
            (found, out.truth_rejects, out.lake_rejects),
            (kinds, truth_rejects, lake_rejects),
            "{name}: {:?}",
            out.findings.kept
        );
    }
}

#[path = "checks_late_tests.rs"]
mod late;
