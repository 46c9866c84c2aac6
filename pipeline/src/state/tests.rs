//! Unit tests of the per-trip state.
use super::*;
use chrono::TimeZone;
use recon_schemas::event::EventType;

fn ev(id: u128, kind: EventType, cents: i64) -> Event {
    event("trip-1", id, kind, cents)
}

/// An event of `trip` in USD at 2026-11-28 10:00 UTC (for the state's tests and its codec's).
pub(super) fn event(trip: &str, id: u128, kind: EventType, cents: i64) -> Event {
    Event {
        event_id: uuid::Uuid::from_u128(id),
        event_type: kind,
        trip_id: trip.into(),
        amount: Decimal::new(cents, 2),
        currency: Currency::USD,
        occurred_at: chrono::Utc
            .with_ymd_and_hms(2026, 11, 28, 10, 0, 0)
            .unwrap(),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: 1,
    }
}

#[test]
fn duplicates_are_told_apart_and_changes_tracked_once() {
    let mut s = State::default();
    assert_eq!(
        s.apply(&ev(1, EventType::TripCharge, 1000), 0).unwrap(),
        Outcome::Accepted
    );
    assert_eq!(
        s.apply(&ev(1, EventType::TripCharge, 1000), 0).unwrap(),
        Outcome::ExactDuplicate
    );
    assert_eq!(
        s.apply(&ev(1, EventType::TripCharge, 999), 0).unwrap(),
        Outcome::ConflictingDuplicate
    );
    assert_eq!(
        s.apply(&ev(2, EventType::RiderPayment, 1000), 0).unwrap(),
        Outcome::Accepted
    );
    let changed = s.take_changed();
    assert_eq!(changed.len(), 1);
    let b = s.trip(changed[0]).balance();
    assert_eq!(b.charged, Decimal::new(1000, 2));
    assert_eq!(b.collected, Decimal::new(1000, 2));
    assert!(b.conflicting_duplicate);
    assert_eq!(s.changed(), 0);
    assert!(s.take_changed().is_empty());
}

fn on_trip(mut e: Event, trip: &str) -> Event {
    e.trip_id = trip.into();
    e
}

#[test]
fn an_event_id_is_one_event_across_trips_and_after_restore() {
    let mut s = State::default();
    let charge = ev(1, EventType::TripCharge, 1000);
    assert_eq!(s.apply(&charge, 0).unwrap(), Outcome::Accepted);
    let _ = s.take_changed();
    // The same id on another trip, on another partition: not applied, no trip created,
    // nothing dirty; every copy alike, even an exact re-send of that copy.
    let copy = on_trip(charge.clone(), "trip-2");
    for _ in 0..2 {
        match s.apply(&copy, 1).unwrap() {
            Outcome::EventIdReused { holder } => {
                assert_eq!(s.trip(holder).trip_id(), "trip-1")
            }
            o => panic!("{o:?}"),
        }
    }
    assert!(
        s.get("trip-2").is_none(),
        "a trip seen only through reused ids"
    );
    assert_eq!(s.changed(), 0);
    // The holder's own re-send is still a duplicate.
    assert_eq!(s.apply(&charge, 0).unwrap(), Outcome::ExactDuplicate);
    // trip-2 with an event of its own exists; the reused id still does not apply to it.
    let own = on_trip(ev(2, EventType::TripCharge, 500), "trip-2");
    assert_eq!(s.apply(&own, 1).unwrap(), Outcome::Accepted);
    assert!(matches!(
        s.apply(&copy, 1).unwrap(),
        Outcome::EventIdReused { .. }
    ));
    assert_eq!(s.get("trip-2").unwrap().balance().events, 1);

    // Restored from its own files, the rule holds the same.
    let mut r = State::default();
    let bytes = codec::encode_full(&s);
    codec::apply_file(&mut r, "full", &bytes, true).unwrap();
    assert!(matches!(
        r.apply(&copy, 1).unwrap(),
        Outcome::EventIdReused { .. }
    ));
    assert_eq!(r.apply(&charge, 0).unwrap(), Outcome::ExactDuplicate);
}

#[test]
fn a_replayed_record_keeps_the_decision_its_checkpoint_committed() {
    // First run: trip-1 took id 1; its copy on trip-2 was dead-lettered, so the replay skips
    // it and applies the rest with `apply_replayed`, in whatever order: trip-1 gets the id.
    let charge = ev(1, EventType::TripCharge, 1000);
    let copy = on_trip(charge.clone(), "trip-2");
    let own = on_trip(ev(2, EventType::TripCharge, 500), "trip-2");
    let mut s = State::default();
    assert_eq!(s.apply_replayed(&own, 1).unwrap(), Outcome::Accepted);
    assert_eq!(s.apply_replayed(&charge, 0).unwrap(), Outcome::Accepted);
    // Live records after the replay still follow the rule.
    assert!(matches!(
        s.apply(&copy, 1).unwrap(),
        Outcome::EventIdReused { holder } if s.trip(holder).trip_id() == "trip-1"
    ));
    // A replayed record whose id another trip already holds (tables from before the rule,
    // or an order the rule alone would judge the other way) is its own trip's event: summed
    // there, and the index keeps the first holder.
    let mut r = State::default();
    assert_eq!(r.apply_replayed(&copy, 1).unwrap(), Outcome::Accepted);
    assert_eq!(r.apply_replayed(&charge, 0).unwrap(), Outcome::Accepted);
    assert_eq!(r.get("trip-1").unwrap().balance().events, 1);
    assert!(matches!(
        r.apply(&on_trip(charge.clone(), "trip-3"), 2).unwrap(),
        Outcome::EventIdReused { holder } if r.trip(holder).trip_id() == "trip-2"
    ));
    // Own-trip duplicates are judged as before.
    assert_eq!(
        r.apply_replayed(&charge, 0).unwrap(),
        Outcome::ExactDuplicate
    );
}

#[test]
fn state_from_before_the_rule_keeps_each_trips_own_ids() {
    // Written by a build that deduplicated per trip: id 1 accepted on two trips.
    let mut s = State::default();
    let b = TripBalance::new(Currency::USD);
    let seen: Seen = [(event_key(&uuid::Uuid::from_u128(1)), 7)]
        .into_iter()
        .collect();
    s.restore("trip-1", &b, seen.clone(), 0).unwrap();
    s.restore("trip-2", &b, seen, 1).unwrap();
    // A re-send to either trip is that trip's duplicate (fingerprint 7 is not this
    // content, so a conflict), never a reuse.
    for trip in ["trip-1", "trip-2"] {
        let e = on_trip(ev(1, EventType::TripCharge, 1000), trip);
        assert_eq!(s.apply(&e, 0).unwrap(), Outcome::ConflictingDuplicate);
    }
    let third = on_trip(ev(1, EventType::TripCharge, 1000), "trip-3");
    assert!(matches!(
        s.apply(&third, 2).unwrap(),
        Outcome::EventIdReused { .. }
    ));
}

#[test]
fn packed_state_folds_like_the_schema_fold() {
    let events = [
        ev(1, EventType::TripCharge, 2599),
        ev(2, EventType::RiderPayment, 2599),
        ev(3, EventType::DriverPayout, 2000),
        ev(4, EventType::PlatformFee, 599),
        ev(5, EventType::Refund, 100),
        ev(6, EventType::Adjustment, 100),
    ];
    let mut s = State::default();
    for e in &events {
        s.apply(e, 3).unwrap();
    }
    let want = recon_schemas::balance::fold(events.iter()).unwrap();
    assert_eq!(s.get("trip-1").unwrap().balance(), want);
    assert_eq!(s.get("trip-1").unwrap().partition, 3);
}

#[test]
fn an_event_beyond_the_money_type_is_refused_and_the_trip_kept() {
    let mut s = State::default();
    let max = Decimal::new(999_999_999_999_999_999, 3);
    let mut big = ev(1, EventType::TripCharge, 0);
    big.amount = max;
    assert_eq!(s.apply(&big, 0).unwrap(), Outcome::Accepted);
    let _ = s.take_changed();
    let before = s.get("trip-1").unwrap().balance();
    let mut big2 = big.clone();
    big2.event_id = uuid::Uuid::from_u128(2);
    assert_eq!(s.apply(&big2, 0).unwrap(), Outcome::BalanceOverflow);
    assert_eq!(s.get("trip-1").unwrap().balance(), before);
    // Dirty (its seen set changed, the checkpoint must hold it), and a re-send is an exact
    // duplicate, as in the reference fold.
    assert_eq!(s.take_changed().len(), 1);
    assert_eq!(s.apply(&big2, 0).unwrap(), Outcome::ExactDuplicate);
    let pay = ev(3, EventType::RiderPayment, 100);
    assert_eq!(s.apply(&pay, 0).unwrap(), Outcome::Accepted);
    let want = recon_schemas::balance::fold([&big, &big2, &big2, &pay]).unwrap();
    assert_eq!(s.get("trip-1").unwrap().balance(), want);
}

/// An event of `trip` at `hour` hours after 2026-11-28T00:00Z.
fn at(id: u128, trip: &str, hour: i64) -> Event {
    let mut e = ev(id, EventType::TripCharge, 1000);
    e.trip_id = trip.into();
    e.occurred_at = chrono::Utc.with_ymd_and_hms(2026, 11, 28, 0, 0, 0).unwrap()
        + chrono::Duration::hours(hour);
    e
}

#[test]
fn the_late_horizon_dead_letters_old_events_and_closed_trips_and_frees_their_ids() {
    let mut s = State::default();
    s.set_horizon(Some(10 * 3_600_000_000));
    assert_eq!(s.apply(&at(1, "a", 0), 0).unwrap(), Outcome::Accepted);
    assert_eq!(s.apply(&at(2, "b", 5), 0).unwrap(), Outcome::Accepted);
    assert_eq!(s.apply(&at(3, "c", 12), 0).unwrap(), Outcome::Accepted);
    // The high-water mark is hour 12: the horizon starts at hour 2.
    assert_eq!(
        s.apply(&at(4, "b", 1), 0).unwrap(),
        Outcome::BeyondHorizon { trip_closed: false },
        "an event older than the horizon"
    );
    assert_eq!(
        s.apply(&at(5, "a", 6), 0).unwrap(),
        Outcome::BeyondHorizon { trip_closed: true },
        "trip a's last event (hour 0) is beyond the horizon: closed"
    );
    assert_eq!(
        s.apply(&at(1, "a", 0), 0).unwrap(),
        Outcome::BeyondHorizon { trip_closed: false },
        "a re-send of a's event is beyond the horizon, never a silent drop"
    );
    assert_eq!(s.apply(&at(6, "b", 6), 0).unwrap(), Outcome::Accepted);
    // a's id is free again: the first trip to take it holds it.
    s.take_changed();
    assert_eq!(s.apply(&at(1, "d", 11), 0).unwrap(), Outcome::Accepted);
    assert!(
        s.get("a").unwrap().seen.is_empty(),
        "the closed trip lets the id go"
    );
    assert_eq!(
        s.changed(),
        2,
        "d and the closed a are written with the next delta"
    );
    assert!(matches!(
        s.apply(&at(1, "e", 11), 0).unwrap(),
        Outcome::EventIdReused { holder } if s.trip(holder).trip_id() == "d"
    ));
    // The wall clock caps the high-water mark: an event stamped far ahead closes nothing.
    s.set_clock(
        chrono::Utc
            .with_ymd_and_hms(2026, 11, 28, 13, 0, 0)
            .unwrap()
            .timestamp_micros(),
    );
    assert_eq!(
        s.apply(&at(7, "f", 24 * 365), 0).unwrap(),
        Outcome::Accepted
    );
    assert_eq!(s.apply(&at(8, "b", 7), 0).unwrap(), Outcome::Accepted);
    // Without a horizon nothing is beyond it.
    let mut none = State::default();
    none.apply(&at(1, "a", 1000), 0).unwrap();
    assert_eq!(none.apply(&at(2, "b", 0), 0).unwrap(), Outcome::Accepted);
}

#[test]
fn a_closed_trip_leaves_memory_without_its_ids_and_stays_closed() {
    let mut s = State::default();
    s.set_horizon(Some(10 * 3_600_000_000));
    s.apply(&at(1, "a", 0), 0).unwrap();
    s.apply(&at(2, "b", 12), 0).unwrap();
    s.take_changed();
    // A batch starts: the watermark takes b's mark.
    s.set_clock(i64::MAX);
    let policy = evict::EvictPolicy {
        settled_after_us: None,
        idle_after_us: None,
        horizon_us: Some(10 * 3_600_000_000),
        scan_per_barrier: 10,
    };
    let out = s.evict(s.high_water_us().unwrap(), &policy);
    assert_eq!(out.len(), 1, "only the closed trip leaves");
    assert_eq!(out[0].trip_id, "a");
    assert!(out[0].ids.is_empty(), "its ids are forgotten");
    assert!(!s.holds_id(event_key(&uuid::Uuid::from_u128(1))));
    // Back in memory (an event for it), it is closed even with the horizon gone.
    let mut later = State::default();
    later
        .rehydrate("cold", out[0].record.as_ref().unwrap())
        .unwrap();
    assert_eq!(
        later.apply(&at(9, "a", 1), 0).unwrap(),
        Outcome::BeyondHorizon { trip_closed: true }
    );
}
