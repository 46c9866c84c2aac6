use super::*;
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use recon_pipeline::generate::config::Ppm;
use recon_pipeline::generate::plan::RecordKind;
use recon_pipeline::generate::{TrafficConfig, plan};
use recon_schemas::balance::TripBalance;
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType};
use recon_schemas::money;
use rust_decimal::Decimal;

/// Our fold of `events` (as rows) against the reference fold, field by field.
fn assert_same(events: &[Event]) -> Result<(), TestCaseError> {
    let rows: Vec<EventRow> = events
        .iter()
        .map(|e| EventRow::from_event(e).expect("fits the money column"))
        .collect();
    let mut ours = Fold::default();
    for r in &rows {
        prop_assert_ne!(ours.step(r), Step::Unreadable);
    }
    let reference = recon_schemas::balance::fold(events.iter());
    match (ours.ledger, reference) {
        (None, None) => {}
        (Some(o), Some(r)) => {
            let status = r.status();
            prop_assert_eq!(
                o.status(),
                (status.as_str(), status.reason().map(|x| x.as_str()))
            );
            prop_assert_eq!(&o.currency, r.currency.code());
            prop_assert_eq!(o.sums, unscaled(&r));
            prop_assert_eq!(o.events, r.events);
            prop_assert_eq!(
                o.last_occurred_at_us,
                r.last_occurred_at.map(|t| t.timestamp_micros())
            );
            prop_assert_eq!(
                (o.conflicting_duplicate, o.currency_mismatch),
                (r.conflicting_duplicate, r.currency_mismatch)
            );
        }
        (o, r) => prop_assert!(false, "ours {o:?}, reference {r:?}"),
    }
    Ok(())
}

fn unscaled(b: &TripBalance) -> [i128; 6] {
    [
        b.charged,
        b.collected,
        b.refunded,
        b.paid_out,
        b.fees,
        b.adjusted,
    ]
    .map(|d| money::to_unscaled(d).expect("a sum fits"))
}

fn event(id: u8, kind: usize, amount: i64, currency: &str, at_s: i64) -> Event {
    Event {
        event_id: uuid::Uuid::from_u128(u128::from(id) + 1),
        event_type: EventType::ALL[kind],
        trip_id: "trip-1".into(),
        amount: Decimal::from_i128_with_scale(i128::from(amount), money::SCALE),
        currency: Currency::parse(currency).unwrap(),
        occurred_at: DateTime::<Utc>::from_timestamp(1_741_000_000 + at_s, 0).unwrap(),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: 1,
    }
}

fn amount() -> impl Strategy<Value = i64> {
    let max = UNSCALED_MAX as i64;
    prop_oneof![
        4 => 1i64..200_000,
        1 => Just(0i64),
        1 => -50_000i64..0,
        // Near decimal(18,3)'s edge: two of these overflow a sum or a balance.
        2 => (max - 5_000)..=max,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Any sequence over a small pool of events (so ids repeat: exact re-sends, conflicting
    /// versions), two currencies, every type, amounts up to the column's edge.
    #[test]
    fn the_verifiers_fold_is_the_reference_fold(
        pool in prop::collection::vec(
            (0u8..6, 0usize..6, amount(), prop::bool::weighted(0.1), 0i64..10_000),
            1..10,
        ),
        order in prop::collection::vec(0usize..64, 0..40),
    ) {
        let pool: Vec<Event> = pool
            .into_iter()
            .map(|(id, kind, amount, other, at)| {
                event(id, kind, amount, if other { "EUR" } else { "USD" }, at)
            })
            .collect();
        let events: Vec<Event> = order.iter().map(|i| pool[i % pool.len()].clone()).collect();
        assert_same(&events)?;
    }
}

/// The same over generated traffic, trip by trip: re-sends, conflicts, refunds, adjustments,
/// open and overpaid trips.
#[test]
fn the_verifiers_fold_is_the_reference_fold_on_generated_traffic() {
    let traffic = TrafficConfig {
        trips: 3_000,
        seed: 99,
        duplicate: Ppm::new(50_000).unwrap(),
        conflict: Ppm::new(50_000).unwrap(),
        ..TrafficConfig::default()
    };
    let mut trips: HashMap<String, Vec<Event>> = HashMap::new();
    for r in plan(&traffic) {
        let event = match r.kind {
            RecordKind::Valid(e) | RecordKind::ConflictingDuplicate(e) => e,
            // An exact re-send: the same bytes again.
            RecordKind::Duplicate(_) => recon_schemas::decode::decode(
                r.key.as_deref(),
                &r.payload,
                &recon_schemas::decode::Limits::default(),
            )
            .unwrap(),
            RecordKind::Poison(_) => continue,
        };
        trips.entry(event.trip_id.clone()).or_default().push(event);
    }
    let mut conflicted = 0;
    let mut statuses = std::collections::BTreeSet::new();
    for events in trips.values() {
        assert_same(events).unwrap();
        let r = recon_schemas::balance::fold(events.iter()).unwrap();
        conflicted += usize::from(r.conflicting_duplicate);
        statuses.insert(r.status().as_str());
    }
    assert!(
        conflicted > 10,
        "the traffic exercises conflicts: {conflicted}"
    );
    assert_eq!(
        statuses.len(),
        3,
        "OPEN, BALANCED and DISCREPANCY: {statuses:?}"
    );
}

#[test]
fn rows_no_event_can_have_are_unreadable_and_change_nothing() {
    let good = EventRow::from_event(&event(1, 0, 1_000, "USD", 0)).unwrap();
    let mut unknown_type = good.clone();
    unknown_type.event_type = crate::row::UNKNOWN_TYPE;
    let mut bad_currency = good.clone();
    bad_currency.currency = "XXQ".into();
    let mut huge = good.clone();
    huge.amount = i64::MAX;
    let mut f = Fold::default();
    for r in [&unknown_type, &bad_currency, &huge] {
        assert_eq!(f.step(r), Step::Unreadable, "{r:?}");
    }
    assert!(f.ledger.is_none());
    assert_eq!(f.step(&good), Step::Summed);
    assert_eq!(f.step(&good), Step::Resent);
    let mut other = good.clone();
    other.amount += 1;
    assert_eq!(f.step(&other), Step::Conflict);
    let l = f.ledger.unwrap();
    assert_eq!((l.sums[0], l.events), (1_000, 1));
    assert_eq!(l.status(), ("DISCREPANCY", Some("conflicting_duplicate")));
}
