//! Eviction never changes a result: the fold with trips leaving memory at arbitrary barriers
//! (and coming back through the cold tier) equals the fold that keeps everything.

use proptest::prelude::*;
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType};
use rust_decimal::Decimal;

use super::bring_back;
use super::memory::MemoryCold;
use crate::state::codec;
use crate::state::evict::EvictPolicy;
use crate::state::{Outcome, State};

#[derive(Clone, Debug)]
enum Op {
    Event {
        trip: u8,
        id: u8,
        kind: u8,
        cents: i64,
        minute: i64,
        euro: bool,
    },
    Barrier {
        idle_after_min: Option<i64>,
        settled_after_min: Option<i64>,
        scan: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..6, 0u8..24, 0u8..6, 1i64..5_000, 0i64..600, prop::bool::weighted(0.05))
            .prop_map(|(trip, id, kind, cents, minute, euro)| Op::Event { trip, id, kind, cents, minute, euro }),
        2 => (prop::option::of(0i64..120), prop::option::of(0i64..120), 0usize..8)
            .prop_map(|(i, s, scan)| Op::Barrier { idle_after_min: i, settled_after_min: s, scan }),
        1 => Just(Op::Restart),
    ]
}

fn event(trip: u8, id: u8, kind: u8, cents: i64, minute: i64, euro: bool) -> Event {
    let kinds = [
        EventType::TripCharge,
        EventType::RiderPayment,
        EventType::DriverPayout,
        EventType::PlatformFee,
        EventType::Refund,
        EventType::Adjustment,
    ];
    Event {
        event_id: uuid::Uuid::from_u128(u128::from(id) + 1),
        event_type: kinds[kind as usize],
        trip_id: format!("trip-{trip}"),
        amount: Decimal::new(cents, 2),
        currency: if euro { Currency::EUR } else { Currency::USD },
        occurred_at: chrono::DateTime::from_timestamp(1_764_000_000 + minute * 60, 0).unwrap(),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: 1,
    }
}

/// An outcome with the holder named by trip id (slots differ between the two states).
fn named(s: &State, o: Outcome) -> String {
    match o {
        Outcome::EventIdReused { holder } => format!("reused:{}", s.trip(holder).trip_id()),
        o => format!("{o:?}"),
    }
}

fn run(ops: &[Op], horizon_min: Option<i64>) -> Result<(), TestCaseError> {
    let horizon_us = horizon_min.map(|m| m * 60_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut keep = State::default();
        let mut evicting = State::default();
        keep.set_horizon(horizon_us);
        evicting.set_horizon(horizon_us);
        let mut cold = MemoryCold::default();
        let mut left = 0usize;
        for op in ops {
            match *op {
                Op::Event {
                    trip,
                    id,
                    kind,
                    cents,
                    minute,
                    euro,
                } => {
                    let ev = event(trip, id, kind, cents, minute, euro);
                    let p = i32::from(trip % 3);
                    let want = keep.apply(&ev, p).map(|o| named(&keep, o)).ok();
                    bring_back(&mut evicting, &mut cold, &ev).await.unwrap();
                    let got = evicting.apply(&ev, p).map(|o| named(&evicting, o)).ok();
                    prop_assert_eq!(got, want, "event {:?}", ev);
                }
                Op::Barrier {
                    idle_after_min,
                    settled_after_min,
                    scan,
                } => {
                    keep.take_changed();
                    evicting.take_changed();
                    let policy = EvictPolicy {
                        idle_after_us: idle_after_min.map(|m| m * 60_000_000),
                        horizon_us,
                        settled_after_us: settled_after_min.map(|m| m * 60_000_000),
                        scan_per_barrier: scan,
                    };
                    let watermark = evicting.high_water_us().unwrap_or(0);
                    let out = evicting.evict(watermark, &policy);
                    left += out.len();
                    cold.add(&out);
                }
                Op::Restart => {
                    // Memory is lost; the full file of what is in memory and the cold tier stay.
                    // The manifest carries the high-water mark.
                    evicting.take_changed();
                    let bytes = codec::encode_full(&evicting);
                    let high_water = evicting.high_water_us();
                    let marks = evicting.partition_high();
                    let watermark = evicting.watermark_us();
                    evicting = State::default();
                    evicting.set_horizon(horizon_us);
                    codec::apply_file(&mut evicting, "full", &bytes, true).unwrap();
                    if let Some(h) = high_water {
                        evicting.raise_high_water(h);
                    }
                    for (p, t) in marks {
                        evicting.raise_partition_high(p, t);
                    }
                    if let Some(w) = watermark {
                        evicting.raise_watermark(w);
                    }
                }
            }
        }
        // Every trip: in memory, or its newest cold record, equal to the state that kept all.
        for t in keep.iter() {
            let (balance, seen) = match evicting.get(t.trip_id()) {
                Some(h) => (h.balance(), h.seen.to_vec()),
                None => {
                    let rec = cold
                        .newest()
                        .map(|r| codec::decode_trip("cold", r).unwrap())
                        .find(|(id, ..)| id == t.trip_id());
                    prop_assert!(rec.is_some(), "{} is nowhere", t.trip_id());
                    let (_, b, s, _) = rec.unwrap();
                    (b, s.to_vec())
                }
            };
            prop_assert_eq!(&balance, &t.balance(), "{}", t.trip_id());
            if seen.is_empty() && balance.events > 0 {
                // Closed beyond the horizon: it left memory without its ids.
                prop_assert!(
                    t.is_closed(keep.horizon_cutoff_us()),
                    "{} lost its ids",
                    t.trip_id()
                );
            } else {
                prop_assert_eq!(seen, t.seen.to_vec(), "{}", t.trip_id());
            }
        }
        let _ = left;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]
    #[test]
    fn eviction_at_any_point_folds_like_no_eviction(
        ops in prop::collection::vec(op(), 1..120),
        horizon_min in prop::option::of(10i64..300),
    ) {
        run(&ops, horizon_min)?;
    }
}

/// The test above must see trips leave and come back, or it proves nothing.
#[test]
fn trips_do_leave_and_come_back() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = State::default();
        let mut cold = MemoryCold::default();
        // Charged 10, collected 10, paid out 8, fee 2: BALANCED.
        let charge = event(1, 1, 0, 1_000, 0, false);
        let pay = event(1, 2, 1, 1_000, 1, false);
        let payout = event(1, 3, 2, 800, 2, false);
        let fee = event(1, 4, 3, 200, 3, false);
        for e in [&charge, &pay, &payout, &fee] {
            s.apply(e, 0).unwrap();
        }
        s.take_changed();
        let policy = EvictPolicy {
            idle_after_us: None,
            horizon_us: None,
            settled_after_us: Some(0),
            scan_per_barrier: 16,
        };
        let out = s.evict(s.high_water_us().unwrap(), &policy);
        assert_eq!(out.len(), 1, "a balanced trip leaves");
        cold.add(&out);
        assert_eq!(s.trips(), 0);
        assert!(!s.holds_id(crate::state::event_key(&charge.event_id)));
        // A re-sent duplicate is still a duplicate; a copy of its id on another trip is reused.
        let b = bring_back(&mut s, &mut cold, &charge).await.unwrap();
        assert!(b.trip);
        assert_eq!(s.apply(&charge, 0).unwrap(), Outcome::ExactDuplicate);
        // Back unchanged: leaving again writes no new record.
        let out = s.evict(s.high_water_us().unwrap(), &policy);
        assert_eq!(out.len(), 1);
        assert!(out[0].record.is_none(), "the cold copy is current");
        cold.add(&out);
        assert_eq!(cold.records(), 1);
        let copy = event(2, 1, 0, 1_000, 5, false);
        let b = bring_back(&mut s, &mut cold, &copy).await.unwrap();
        assert!(b.holder && !b.trip);
        assert!(matches!(s.apply(&copy, 1).unwrap(), Outcome::EventIdReused { holder } if s.trip(holder).trip_id() == "trip-1"));
    });
}
