//! Hand-computed fold cases. Order and duplication properties are in `tests/properties.rs`.

use std::str::FromStr;

use chrono::{TimeZone, Utc};

use super::*;
use crate::event::SCHEMA_VERSION;

/// An event of `trip-1` with id `n`, amount `amount` (decimal string) in `currency`.
fn ev(n: u128, event_type: EventType, amount: &str, currency: Currency) -> Event {
    Event {
        event_id: Uuid::from_u128(n),
        event_type,
        trip_id: "trip-1".into(),
        amount: Decimal::from_str(amount).unwrap(),
        currency,
        occurred_at: Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 0, n as u32 % 60)
            .unwrap(),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: SCHEMA_VERSION,
    }
}

fn usd(n: u128, t: EventType, amount: &str) -> Event {
    ev(n, t, amount, Currency::USD)
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// Folds `events` and checks the two balances, the status and the summed-event count.
fn check(
    events: &[Event],
    rider: &str,
    settlement: &str,
    status: TripStatus,
    summed: u32,
) -> TripBalance {
    let b = fold(events).expect("events given");
    assert_eq!(b.rider_balance(), d(rider), "rider_balance of {b:?}");
    assert_eq!(
        b.settlement_balance(),
        d(settlement),
        "settlement_balance of {b:?}"
    );
    assert_eq!(b.status(), status, "status of {b:?}");
    assert_eq!(b.events, summed, "events of {b:?}");
    b
}

use EventType::*;

#[test]
fn no_events_no_balance() {
    assert_eq!(fold(&[]), None);
}

#[test]
fn balanced_trip() {
    let b = check(
        &[
            usd(1, TripCharge, "20.00"),
            usd(2, RiderPayment, "20.00"),
            usd(3, DriverPayout, "16.00"),
            usd(4, PlatformFee, "4.00"),
        ],
        "0",
        "0",
        TripStatus::Balanced,
        4,
    );
    assert_eq!(b.status().as_str(), "BALANCED");
    assert_eq!(
        b.last_occurred_at,
        Some(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 4).unwrap())
    );
}

#[test]
fn open_until_collected_and_split() {
    check(
        &[usd(1, TripCharge, "20.00")],
        "20.00",
        "20.00",
        TripStatus::Open,
        1,
    );
    check(
        &[usd(1, TripCharge, "20.00"), usd(2, RiderPayment, "20.00")],
        "0",
        "20.00",
        TripStatus::Open,
        2,
    );
    // Payments before the charge: nothing charged yet, so not balanced even at zero.
    let b = check(&[usd(1, PlatformFee, "0")], "0", "0", TripStatus::Open, 1);
    assert_eq!(b.status().as_str(), "OPEN");
}

#[test]
fn refund_reduces_what_is_split() {
    // 20.00 charged and collected, 5.00 refunded: 15.00 split 12.00 + 3.00.
    let b = check(
        &[
            usd(1, TripCharge, "20.00"),
            usd(2, RiderPayment, "20.00"),
            usd(3, Refund, "5.00"),
            usd(4, DriverPayout, "12.00"),
            usd(5, PlatformFee, "3.00"),
        ],
        "0",
        "0",
        TripStatus::Balanced,
        5,
    );
    assert_eq!(b.refunded, d("5"));
}

#[test]
fn adjustment_adds_to_the_fare() {
    // A 2.50 tip: rider owes 22.50, driver and platform split 22.50.
    check(
        &[
            usd(1, TripCharge, "20.00"),
            usd(2, Adjustment, "2.50"),
            usd(3, RiderPayment, "22.50"),
            usd(4, DriverPayout, "18.50"),
            usd(5, PlatformFee, "4.00"),
        ],
        "0",
        "0",
        TripStatus::Balanced,
        5,
    );
}

#[test]
fn overpaid_driver() {
    let b = check(
        &[
            usd(1, TripCharge, "20.00"),
            usd(2, RiderPayment, "20.00"),
            usd(3, DriverPayout, "17.00"),
            usd(4, PlatformFee, "4.00"),
        ],
        "0",
        "-1.00",
        TripStatus::Discrepancy(DiscrepancyReason::DriverOverpaid),
        4,
    );
    assert_eq!(b.status().as_str(), "DISCREPANCY");
    assert_eq!(
        b.status().reason().map(|r| r.as_str()),
        Some("driver_overpaid")
    );
}

#[test]
fn overpaid_rider_takes_precedence_over_driver() {
    check(
        &[
            usd(1, TripCharge, "20.00"),
            usd(2, RiderPayment, "25.00"),
            usd(3, DriverPayout, "30"),
        ],
        "-5.00",
        "-10.00",
        TripStatus::Discrepancy(DiscrepancyReason::RiderOverpaid),
        3,
    );
}

#[test]
fn currency_mismatch_is_flagged_not_summed() {
    let events = [
        usd(1, TripCharge, "20.00"),
        ev(2, RiderPayment, "20.00", Currency::EUR),
    ];
    let b = check(
        &events,
        "20.00",
        "20.00",
        TripStatus::Discrepancy(DiscrepancyReason::CurrencyMismatch),
        1,
    );
    assert_eq!(b.currency, Currency::USD, "first event's currency");
    assert!(b.collected.is_zero());
    let mut direct = TripBalance::new(Currency::USD);
    assert_eq!(direct.apply(&events[1]), Applied::CurrencyMismatch);
    assert_eq!(direct.apply(&events[0]), Applied::Summed);
}

#[test]
fn conflicting_duplicate_is_flagged_not_summed() {
    let first = usd(1, TripCharge, "20.00");
    let mut conflicting = first.clone();
    conflicting.amount = d("25.00");
    let b = check(
        &[first.clone(), usd(2, RiderPayment, "20.00"), conflicting],
        "0",
        "20.00",
        TripStatus::Discrepancy(DiscrepancyReason::ConflictingDuplicate),
        2,
    );
    assert_eq!(b.charged, d("20.00"), "the first copy counts");
    assert!(!b.currency_mismatch);
}

#[test]
fn conflict_takes_precedence_over_mismatch() {
    let first = usd(1, TripCharge, "20.00");
    let mut conflicting = first.clone();
    conflicting.trip_id = "trip-2".into();
    let b = fold(&[first, ev(2, Refund, "1", Currency::GBP), conflicting]).unwrap();
    assert!(b.currency_mismatch && b.conflicting_duplicate);
    assert_eq!(
        b.status(),
        TripStatus::Discrepancy(DiscrepancyReason::ConflictingDuplicate)
    );
    assert_eq!(
        b.status().reason().unwrap().as_str(),
        "conflicting_duplicate"
    );
}

#[test]
fn exact_duplicates_count_once() {
    let charge = usd(1, TripCharge, "20.00");
    let mut same_value = charge.clone();
    same_value.amount = d("20.0"); // same number, other scale: the same event
    let pay = usd(2, RiderPayment, "20.00");
    let b = check(
        &[charge.clone(), pay.clone(), charge, same_value, pay],
        "0",
        "20.00",
        TripStatus::Open,
        2,
    );
    assert_eq!(b.charged, d("20"));
    assert!(!b.conflicting_duplicate);
}

#[test]
fn exact_in_every_scale() {
    // KWD has 3 minor units, JPY none: sums stay exact, never rounded.
    let kwd = |n, t, a| ev(n, t, a, Currency::KWD);
    check(
        &[
            kwd(1, TripCharge, "1.005"),
            kwd(2, TripCharge, "0.001"),
            kwd(3, RiderPayment, "1.006"),
            kwd(4, DriverPayout, "0.805"),
            kwd(5, PlatformFee, "0.201"),
        ],
        "0",
        "0",
        TripStatus::Balanced,
        5,
    );
    let jpy = |n, t, a| ev(n, t, a, Currency::JPY);
    check(
        &[jpy(1, TripCharge, "1200"), jpy(2, RiderPayment, "1199")],
        "1",
        "1200",
        TripStatus::Open,
        2,
    );
}

#[test]
fn status_and_reason_codes_are_stable() {
    assert_eq!(TripStatus::Open.as_str(), "OPEN");
    assert_eq!(TripStatus::Balanced.as_str(), "BALANCED");
    assert_eq!(TripStatus::Open.reason(), None);
    let codes = [
        (
            DiscrepancyReason::ConflictingDuplicate,
            "conflicting_duplicate",
        ),
        (DiscrepancyReason::CurrencyMismatch, "currency_mismatch"),
        (DiscrepancyReason::RiderOverpaid, "rider_overpaid"),
        (DiscrepancyReason::DriverOverpaid, "driver_overpaid"),
    ];
    for (r, code) in codes {
        assert_eq!(r.as_str(), code);
        assert_eq!(TripStatus::Discrepancy(r).as_str(), "DISCREPANCY");
    }
}

const MAX: &str = "999999999999999.999";

#[test]
fn a_sum_beyond_decimal_18_3_is_refused_and_the_balance_kept() {
    // Two charges of the largest amount: the second would make `charged` 2 * 10^15.
    let first = usd(1, TripCharge, MAX);
    let second = usd(2, TripCharge, MAX);
    let mut b = TripBalance::new(Currency::USD);
    assert_eq!(b.apply(&first), Applied::Summed);
    let before = b.clone();
    assert_eq!(b.apply(&second), Applied::Overflow);
    assert_eq!(b, before, "an overflowing event changes nothing");
    // The fold refuses it the same way, and a re-send of it is an exact duplicate.
    let later = usd(3, RiderPayment, "1");
    let folded = check(
        &[first.clone(), second.clone(), second.clone(), later],
        "999999999999998.999",
        MAX,
        TripStatus::Open,
        2,
    );
    assert_eq!(folded.charged, d(MAX));
}

#[test]
fn a_balance_beyond_decimal_18_3_is_refused_too() {
    // Each sum fits, but rider_balance = charged + adjusted would not.
    let mut b = TripBalance::new(Currency::USD);
    assert_eq!(b.apply(&usd(1, TripCharge, MAX)), Applied::Summed);
    assert_eq!(b.apply(&usd(2, Adjustment, "0.001")), Applied::Overflow);
    // Collected and split first, then the same adjustment fits: the refusal is decided in log
    // order (settlement_balance = charged + adjusted - fees needs the fee as well).
    assert_eq!(b.apply(&usd(3, RiderPayment, "5")), Applied::Summed);
    assert_eq!(b.apply(&usd(2, Adjustment, "0.001")), Applied::Overflow);
    assert_eq!(b.apply(&usd(6, PlatformFee, "5")), Applied::Summed);
    assert_eq!(b.apply(&usd(2, Adjustment, "0.001")), Applied::Summed);
    assert!(b.representable());
    // settlement_balance = charged + adjusted - refunded - paid_out - fees can go below -10^15.
    let mut s = TripBalance::new(Currency::USD);
    assert_eq!(s.apply(&usd(4, DriverPayout, MAX)), Applied::Summed);
    assert_eq!(s.apply(&usd(5, PlatformFee, "0.001")), Applied::Overflow);
    assert_eq!(s.fees, Decimal::ZERO);
}
