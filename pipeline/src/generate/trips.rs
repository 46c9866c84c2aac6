//! One simulated trip: its fare, how the money moves, and the events that record it.
//!
//! A settled trip emits a `trip_charge` (the fare), a `rider_payment` of the same amount, a
//! `driver_payout` of 75-80 % of the net fare and a `platform_fee` of exactly the remainder, so
//! [`recon_schemas::balance`] finds it `BALANCED` to the cent. On top of that a trip may carry a
//! partial `refund` (payout and fee split the smaller net fare) or an `adjustment` such as a toll
//! or tip (paid by a second rider payment and split like the fare); and a few trips go wrong on
//! purpose: they never settle (`OPEN`) or pay the driver more than the net fare (`DISCREPANCY`).
//!
//! Amounts are drawn as integers of the currency's minor units and become
//! `Decimal::new(minor, minor_units)`: no float ever touches money.

use chrono::Duration;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use recon_schemas::balance::{DiscrepancyReason, TripStatus};
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType, SCHEMA_VERSION};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::config::{Ppm, TrafficConfig};

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// A trip's planned events (in `occurred_at` order) and the status they are meant to fold to.
#[derive(Clone, Debug)]
pub struct TripPlan {
    /// `trip-<seed>-<n>`.
    pub trip_id: String,
    /// The currency every event of the trip uses.
    pub currency: Currency,
    /// What [`recon_schemas::balance::fold`] of `events` must give.
    pub intended: TripStatus,
    /// The events, sorted by `occurred_at`.
    pub events: Vec<Event>,
}

/// A seeded, random event id (a version-4 UUID whose bits come from the seeded generator).
pub fn event_id(rng: &mut ChaCha8Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// True with probability `p`.
pub fn roll(rng: &mut ChaCha8Rng, p: Ppm) -> bool {
    p.get() > 0 && rng.random_range(0..Ppm::ONE) < p.get()
}

/// The fare range of a currency, in minor units: about 5-80 USD/EUR, 700-12,000 JPY, 1.5-25 KWD.
fn fare_range_minor(currency: Currency) -> (i64, i64) {
    match currency.minor_units() {
        0 => (700, 12_000),
        3 => (1_500, 25_000),
        // Two minor units, or anything wider than the table has today.
        _ => (500, 8_000),
    }
}

/// A fare skewed towards short trips: the product of two uniform draws piles up near the low end
/// (mean at a quarter of the range) with a long tail of airport rides.
fn fare_minor(rng: &mut ChaCha8Rng, currency: Currency) -> i64 {
    let (lo, hi) = fare_range_minor(currency);
    let span = hi - lo;
    let a = rng.random_range(0..=span);
    let b = rng.random_range(0..=span);
    lo + a * b / span
}

/// Splits a net fare into (payout, fee): the driver gets 75.00-80.00 %, floored to the minor
/// unit, and the platform exactly the rest.
fn split(rng: &mut ChaCha8Rng, net_minor: i64) -> (i64, i64) {
    let basis_points = rng.random_range(7_500..=8_000);
    let payout = net_minor * basis_points / 10_000;
    (payout, net_minor - payout)
}

/// Plans trip number `n` (0-based) of `config.trips`.
pub fn plan_trip(config: &TrafficConfig, n: u64, rng: &mut ChaCha8Rng) -> TripPlan {
    let trip_id = format!("trip-{}-{n}", config.seed);
    let currency = config
        .currencies
        .pick(rng.random_range(0..config.currencies.total()));
    let scale = currency.minor_units();
    let money = |minor: i64| Decimal::new(minor, scale);

    // Spread trip starts evenly over the business days, each at a random moment in its slot, so
    // the stream runs roughly in business-time order.
    let span_ms = DAY_MS * u64::from(config.days.max(1));
    let trips = config.trips.max(1);
    let slot_ms = (span_ms / trips).max(1);
    let slot_start_ms =
        u64::try_from(u128::from(n) * u128::from(span_ms) / u128::from(trips)).unwrap_or(span_ms);
    let t0 = config.start + ms(slot_start_ms + rng.random_range(0..slot_ms));

    let rider_id = format!("rider-{}", rng.random_range(0..(trips / 4).max(1)));
    let driver_id = format!("driver-{}", rng.random_range(0..(trips / 10).max(1)));
    let scenario = rng.random_range(0..Ppm::ONE);
    let unsettled = scenario < config.open.get();
    let overpaid = !unsettled && scenario < config.open.get() + config.overpay.get();
    let refunded = roll(rng, config.refund);
    let adjusted = roll(rng, config.adjustment);

    let mut events = Vec::with_capacity(7);
    let mut push = |rng: &mut ChaCha8Rng, event_type, amount, at, who: Party| {
        let (rider, driver, payment, payout) = who.ids(&rider_id, &driver_id);
        events.push(Event {
            event_id: event_id(rng),
            event_type,
            trip_id: trip_id.clone(),
            amount: money(amount),
            currency,
            occurred_at: at,
            rider_id: rider,
            driver_id: driver,
            payment_id: payment,
            payout_id: payout,
            schema_version: SCHEMA_VERSION,
        });
    };

    let fare = fare_minor(rng, currency);
    push(rng, EventType::TripCharge, fare, t0, Party::Trip);
    // An unsettled trip misses either the rider's payment or the driver's payout.
    let payment_missing = unsettled && rng.random_range(0..3) == 0;
    let payout_missing = unsettled && !payment_missing;
    let mut last = t0;
    if !payment_missing {
        let at = t0 + ms(rng.random_range(2_000..=30_000));
        push(
            rng,
            EventType::RiderPayment,
            fare,
            at,
            Party::Payment(format!("pay-{}-{n}-0", config.seed)),
        );
        last = last.max(at);
    }
    let mut net = fare;
    if adjusted {
        let extra = (fare * rng.random_range(5..=25) / 100).max(1);
        let at = t0 + ms(rng.random_range(120_000..=1_200_000));
        push(rng, EventType::Adjustment, extra, at, Party::Trip);
        let paid_at = at + ms(rng.random_range(1_000..=20_000));
        push(
            rng,
            EventType::RiderPayment,
            extra,
            paid_at,
            Party::Payment(format!("pay-{}-{n}-1", config.seed)),
        );
        net += extra;
        last = last.max(paid_at);
    }
    if refunded {
        let back = (fare * rng.random_range(10..=50) / 100).max(1);
        let at = t0 + ms(rng.random_range(300_000..=7_200_000));
        push(
            rng,
            EventType::Refund,
            back,
            at,
            Party::Payment(format!("refund-{}-{n}", config.seed)),
        );
        net -= back;
        last = last.max(at);
    }
    let (mut payout, fee) = split(rng, net);
    if overpaid {
        payout += rng.random_range(1..=(net / 10).max(1));
    }
    let payout_at = last + ms(rng.random_range(30_000..=900_000));
    if !payout_missing {
        push(
            rng,
            EventType::DriverPayout,
            payout,
            payout_at,
            Party::Payout(format!("payout-{}-{n}", config.seed)),
        );
    }
    let fee_at = payout_at + ms(rng.random_range(0..=5_000));
    push(rng, EventType::PlatformFee, fee, fee_at, Party::Platform);

    // Stable: equal timestamps keep their causal order.
    events.sort_by_key(|e| e.occurred_at);
    let intended = if overpaid {
        TripStatus::Discrepancy(DiscrepancyReason::DriverOverpaid)
    } else if unsettled {
        TripStatus::Open
    } else {
        TripStatus::Balanced
    };
    TripPlan {
        trip_id,
        currency,
        intended,
        events,
    }
}

/// Whom an event concerns, which decides its optional id fields.
enum Party {
    /// A charge or adjustment: rider and driver.
    Trip,
    /// A rider payment or refund with its processor reference: the rider.
    Payment(String),
    /// A driver payout with its reference: the driver.
    Payout(String),
    /// The platform's fee: no party ids.
    Platform,
}

impl Party {
    /// `(rider_id, driver_id, payment_id, payout_id)`.
    #[allow(clippy::type_complexity)]
    fn ids(
        self,
        rider: &str,
        driver: &str,
    ) -> (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) {
        match self {
            Party::Trip => (Some(rider.to_owned()), Some(driver.to_owned()), None, None),
            Party::Payment(p) => (Some(rider.to_owned()), None, Some(p), None),
            Party::Payout(p) => (None, Some(driver.to_owned()), None, Some(p)),
            Party::Platform => (None, None, None, None),
        }
    }
}

/// `millis` as a chrono duration (our offsets are far below its limits).
fn ms(millis: u64) -> Duration {
    Duration::milliseconds(i64::try_from(millis).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use recon_schemas::balance::fold;

    fn config(trips: u64) -> TrafficConfig {
        TrafficConfig {
            trips,
            ..TrafficConfig::default()
        }
    }

    #[test]
    fn every_trip_folds_to_its_intended_status() {
        let cfg = TrafficConfig {
            trips: 5_000,
            refund: Ppm::new(200_000).unwrap(),
            adjustment: Ppm::new(200_000).unwrap(),
            open: Ppm::new(100_000).unwrap(),
            overpay: Ppm::new(100_000).unwrap(),
            ..TrafficConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen = [0u32; 3];
        for n in 0..cfg.trips {
            let trip = plan_trip(&cfg, n, &mut rng);
            let balance = fold(trip.events.iter()).expect("a trip has events");
            assert_eq!(balance.status(), trip.intended, "{trip:#?}");
            assert_eq!(balance.currency, trip.currency);
            assert!(
                trip.events
                    .windows(2)
                    .all(|w| w[0].occurred_at <= w[1].occurred_at)
            );
            for e in &trip.events {
                assert!(
                    e.amount >= Decimal::ZERO && e.amount.scale() == trip.currency.minor_units()
                );
                assert_eq!(e.trip_id, trip.trip_id);
            }
            seen[match trip.intended {
                TripStatus::Balanced => 0,
                TripStatus::Open => 1,
                TripStatus::Discrepancy(_) => 2,
            }] += 1;
        }
        assert!(seen.iter().all(|&c| c > 100), "status mix {seen:?}");
    }

    #[test]
    fn fares_stay_in_range_and_skew_low() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (lo, hi) = fare_range_minor(Currency::USD);
        let fares: Vec<i64> = (0..10_000)
            .map(|_| fare_minor(&mut rng, Currency::USD))
            .collect();
        assert!(fares.iter().all(|f| (lo..=hi).contains(f)));
        let mean = fares.iter().sum::<i64>() / 10_000;
        assert!(
            mean < (lo + hi) / 2,
            "mean {mean} should sit below the midpoint"
        );
    }

    #[test]
    fn split_balances_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for net in [1, 2, 99, 500, 7_999, 25_000] {
            let (payout, fee) = split(&mut rng, net);
            assert_eq!(payout + fee, net);
            assert!(payout * 100 >= net * 75 - 100 && payout * 100 <= net * 80);
        }
    }

    #[test]
    fn trips_spread_over_the_days() {
        let cfg = TrafficConfig {
            days: 3,
            ..config(300)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let first = plan_trip(&cfg, 0, &mut rng).events[0].occurred_at;
        let last = plan_trip(&cfg, 299, &mut rng).events[0].occurred_at;
        assert!(first >= cfg.start && first < cfg.start + Duration::hours(1));
        assert!(last > cfg.start + Duration::hours(70) && last < cfg.start + Duration::hours(72));
    }
}
