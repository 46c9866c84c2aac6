use super::*;
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType};
use recon_schemas::money;
use rust_decimal::Decimal;

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
        let same = differs_from_reference(&events);
        prop_assert!(same.is_ok(), "{}", same.unwrap_err());
    }
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
