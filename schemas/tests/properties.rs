//! Properties over generated events: the JSON round trip, a decoder that never panics, and
//! balances that do not depend on order or exact duplication.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use recon_schemas::balance::{TripBalance, fold};
use recon_schemas::currency::Currency;
use recon_schemas::decode::{Limits, decode};
use recon_schemas::event::{Event, EventType, SCHEMA_VERSION};
use rust_decimal::Decimal;
use uuid::Uuid;

/// 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z in microseconds.
const MICROS_MIN: i64 = 946_684_800_000_000;
const MICROS_END: i64 = 4_102_444_800_000_000;

fn id() -> impl Strategy<Value = String> {
    // Up to 32 characters of up to 4 bytes: within the 128-byte limit; includes quotes,
    // backslashes, control characters and non-ASCII to exercise JSON escaping.
    prop_oneof![
        "[a-z0-9-]{1,24}",
        "\\PC{1,32}",
        "[\"\\\\\u{0}-\u{1f}é😀]{1,16}"
    ]
}

fn currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(Currency::all().collect::<Vec<_>>())
}

/// A non-negative amount with at most `currency`'s decimals and at most 15 integer digits.
fn amount(currency: Currency) -> impl Strategy<Value = Decimal> {
    let units = currency.minor_units();
    let limit = 10_i64.pow(15 + units);
    prop_oneof![0..limit, 0..10_000_i64].prop_map(move |n| Decimal::new(n, units))
}

/// A valid event of `trip_id` in `currency`.
fn event_of(trip_id: String, currency: Currency) -> impl Strategy<Value = Event> {
    (
        any::<u128>(),
        prop::sample::select(EventType::ALL.to_vec()),
        amount(currency),
        MICROS_MIN..MICROS_END,
        prop::option::of(id()),
        prop::option::of(id()),
        prop::option::of(id()),
        prop::option::of(id()),
    )
        .prop_map(
            move |(uuid, event_type, amount, micros, rider, driver, payment, payout)| Event {
                event_id: Uuid::from_u128(uuid),
                event_type,
                trip_id: trip_id.clone(),
                amount,
                currency,
                occurred_at: DateTime::<Utc>::from_timestamp_micros(micros).unwrap(),
                rider_id: rider,
                driver_id: driver,
                payment_id: payment,
                payout_id: payout,
                schema_version: SCHEMA_VERSION,
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    (id(), currency()).prop_flat_map(|(trip, c)| event_of(trip, c))
}

/// 1..12 events of one trip in one currency, with distinct ids.
fn trip_events() -> impl Strategy<Value = Vec<Event>> {
    (id(), currency()).prop_flat_map(|(trip, c)| {
        prop::collection::vec(event_of(trip, c), 1..12).prop_map(|mut evs| {
            for (i, ev) in evs.iter_mut().enumerate() {
                // Distinct ids regardless of what was drawn.
                ev.event_id = Uuid::from_u128((ev.event_id.as_u128() & !0xffff) | i as u128);
            }
            evs
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn to_json_then_decode_is_identity(ev in event()) {
        let json = ev.to_json();
        let back = decode(Some(ev.trip_id.as_bytes()), &json, &Limits::default());
        let back = back.map_err(|e| TestCaseError::fail(format!("{e} for {}", String::from_utf8_lossy(&json))))?;
        prop_assert_eq!(&back, &ev);
        prop_assert_eq!(back.to_json(), json, "canonical form is a fixed point");
        prop_assert_eq!(back.fingerprint(), ev.fingerprint());
    }

    #[test]
    fn decode_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(None, &bytes, &Limits::default());
        let _ = decode(Some(&bytes), &bytes, &Limits { payload_bytes_max: 64, id_bytes_max: 0 });
    }

    #[test]
    fn decode_never_panics_on_json_ish_text(text in "[{}\\[\\]\":,.0-9a-z_ \\\\-]{0,300}") {
        let _ = decode(None, text.as_bytes(), &Limits::default());
    }

    /// Valid payloads with a slice replaced by arbitrary text: near-misses of every class.
    #[test]
    fn decode_never_panics_on_mutated_events(
        ev in event(),
        at in any::<prop::sample::Index>(),
        len in 0usize..12,
        insert in "\\PC{0,8}|[\"{}:,\\\\]{0,4}|-|1e9|null|\\.",
    ) {
        let json = String::from_utf8(ev.to_json()).unwrap();
        let mut start = at.index(json.len() + 1);
        while !json.is_char_boundary(start) { start -= 1; }
        let mut end = (start + len).min(json.len());
        while !json.is_char_boundary(end) { end -= 1; }
        let mutated = format!("{}{}{}", &json[..start], insert, &json[end..]);
        match decode(Some(ev.trip_id.as_bytes()), mutated.as_bytes(), &Limits::default()) {
            Ok(decoded) => prop_assert_eq!(decoded.trip_id.as_str(), ev.trip_id.as_str()),
            Err(e) => prop_assert!(!e.to_string().is_empty() && !e.reason().as_str().is_empty()),
        }
    }

    /// Whatever the amounts, a fold never leaves `decimal(18,3)`: an event that would is refused
    /// (not summed, not counted), and the same log order always refuses the same events.
    #[test]
    fn balance_always_fits_its_columns(events in trip_events()) {
        let b = fold(&events).unwrap();
        prop_assert!(b.representable(), "{b:?}");
        prop_assert_eq!(fold(&events).unwrap(), b.clone());
        let summed = events.iter().fold(TripBalance::new(events[0].currency), |mut acc, e| {
            acc.apply(e);
            acc
        });
        prop_assert_eq!(summed, b);
    }

    /// Any order and any exact duplication of a trip's distinct events fold to the same balance,
    /// as long as no sum or balance leaves `decimal(18,3)` (amounts cut to a sixteenth, so that
    /// twelve of them cannot: an overflowing event is refused in log order, see below).
    #[test]
    fn balance_ignores_order_and_exact_duplicates(
        (events, shuffled) in trip_events()
            .prop_map(|evs| evs.into_iter().map(|mut e| { e.amount = (e.amount / Decimal::from(16)).round_dp(3); e }).collect::<Vec<_>>())
            .prop_flat_map(|evs| (Just(evs.clone()), Just(evs).prop_shuffle())),
        dups in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..8),
    ) {
        let reference = fold(&events).unwrap();
        let mut replay = shuffled;
        for (which, at) in dups {
            let copy = replay[which.index(replay.len())].clone();
            let pos = at.index(replay.len() + 1);
            replay.insert(pos, copy);
        }
        let b = fold(&replay).unwrap();
        prop_assert_eq!(&b, &reference);
        prop_assert_eq!(b.status(), reference.status());
        prop_assert_eq!(b.events as usize, events.len());
        prop_assert!(!b.currency_mismatch && !b.conflicting_duplicate);
        // The sums are exactly the per-type totals.
        let total = |t: EventType| events.iter().filter(|e| e.event_type == t).map(|e| e.amount).sum::<Decimal>();
        prop_assert_eq!(b.charged, total(EventType::TripCharge));
        prop_assert_eq!(b.collected, total(EventType::RiderPayment));
        prop_assert_eq!(b.refunded, total(EventType::Refund));
        prop_assert_eq!(b.paid_out, total(EventType::DriverPayout));
        prop_assert_eq!(b.fees, total(EventType::PlatformFee));
        prop_assert_eq!(b.adjusted, total(EventType::Adjustment));
    }
}
