//! Per-trip state: running balances and the event ids already seen (the dedup set).
//!
//! A trip's events share its Kafka partition (the key is the trip id), so each trip's state is
//! touched by one partition only. The state remembers which trips changed since the last
//! barrier, so a checkpoint writes only those (a delta) and the `trip_balances` changelog gets
//! one row per changed trip per checkpoint.
//!
//! Layout, for memory (a million open trips is the design point): trips live in a slab
//! (`Vec<TripState>`) indexed by a map from trip id (inline up to 24 bytes) to slot; sums are
//! kept as unscaled integers at the money scale (exactly `decimal(18,3)`), seen event ids as
//! 64-bit keys inline for the first four. An event id is one event across the whole job: a
//! job-wide index (event key -> trip slot, ~20 B per event, rebuilt from the trips' `seen` lists
//! on restore) sends an id already held by another trip to `event_id_reused`. The fold itself is `recon_schemas::balance`: state
//! unpacks a [`TripBalance`], applies the event, and packs it back, so there is one set of rules.

pub mod codec;

use std::collections::HashMap;

use compact_str::CompactString;
use recon_schemas::balance::{Applied, TripBalance};
use recon_schemas::currency::Currency;
use recon_schemas::event::Event;
use recon_schemas::money;
use rust_decimal::Decimal;
use smallvec::SmallVec;

/// Seen event ids of a trip: (64-bit event-id key, content fingerprint). A trip has a handful of
/// events, so a 64-bit key is collision-free in practice within one trip.
pub type Seen = SmallVec<[(u64, u64); 4]>;

/// The 64-bit dedup key of an event id.
pub fn event_key(id: &uuid::Uuid) -> u64 {
    let v = id.as_u128();
    (v >> 64) as u64 ^ v as u64
}

const FLAG_CURRENCY_MISMATCH: u8 = 1;
const FLAG_CONFLICTING_DUPLICATE: u8 = 2;

/// A sum that no longer fits the money column.
#[derive(Debug, thiserror::Error)]
#[error(
    "trip {trip}: a running sum exceeds decimal({}, {}); the trip cannot be represented in trip_balances",
    money::PRECISION,
    money::SCALE
)]
pub struct Overflow {
    /// The trip.
    pub trip: String,
}

/// State of one trip, packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TripState {
    trip_id: CompactString,
    /// charged, collected, refunded, paid_out, fees, adjusted — unscaled at `money::SCALE`.
    sums: [i64; 6],
    events: u32,
    last_occurred_us: Option<i64>,
    currency: Currency,
    flags: u8,
    /// Kafka partition the trip lives on.
    pub partition: i32,
    dirty: bool,
    /// Event ids seen with the fingerprint of the content first seen.
    pub seen: Seen,
}

impl TripState {
    fn new(trip_id: &str, currency: Currency, partition: i32) -> TripState {
        TripState {
            trip_id: CompactString::new(trip_id),
            sums: [0; 6],
            events: 0,
            last_occurred_us: None,
            currency,
            flags: 0,
            partition,
            dirty: false,
            seen: Seen::new(),
        }
    }

    /// The trip id.
    pub fn trip_id(&self) -> &str {
        &self.trip_id
    }

    /// The balance, unpacked.
    pub fn balance(&self) -> TripBalance {
        let d =
            |v: i64| money::from_unscaled(i128::from(v)).expect("packed sums fit the money type");
        let mut b = TripBalance::new(self.currency);
        b.charged = d(self.sums[0]);
        b.collected = d(self.sums[1]);
        b.refunded = d(self.sums[2]);
        b.paid_out = d(self.sums[3]);
        b.fees = d(self.sums[4]);
        b.adjusted = d(self.sums[5]);
        b.events = self.events;
        b.last_occurred_at = self
            .last_occurred_us
            .and_then(chrono::DateTime::from_timestamp_micros);
        b.currency_mismatch = self.flags & FLAG_CURRENCY_MISMATCH != 0;
        b.conflicting_duplicate = self.flags & FLAG_CONFLICTING_DUPLICATE != 0;
        b
    }

    /// Packs a balance in; `Err` when a sum does not fit `decimal(18,3)`.
    fn set_balance(&mut self, b: &TripBalance) -> Result<(), Overflow> {
        let u = |v: Decimal| -> Result<i64, Overflow> {
            money::to_unscaled(v)
                .and_then(|x| i64::try_from(x).ok())
                .ok_or_else(|| Overflow {
                    trip: self.trip_id.to_string(),
                })
        };
        self.sums = [
            u(b.charged)?,
            u(b.collected)?,
            u(b.refunded)?,
            u(b.paid_out)?,
            u(b.fees)?,
            u(b.adjusted)?,
        ];
        self.events = b.events;
        self.last_occurred_us = b.last_occurred_at.map(|t| t.timestamp_micros());
        self.currency = b.currency;
        self.flags = (if b.currency_mismatch {
            FLAG_CURRENCY_MISMATCH
        } else {
            0
        }) | (if b.conflicting_duplicate {
            FLAG_CONFLICTING_DUPLICATE
        } else {
            0
        });
        Ok(())
    }
}

/// Where a trip lives in the state (valid for the life of the state: trips are never moved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TripSlot(u32);

/// What applying one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// New event: goes to `ledger_events` (summed, or flagged as a currency mismatch).
    Accepted,
    /// Same event id and same content as an event already seen: dropped and counted.
    ExactDuplicate,
    /// Same event id, different content: dead-lettered; the trip is flagged.
    ConflictingDuplicate,
    /// A new event whose amount would take a sum or balance of its trip beyond `decimal(18,3)`:
    /// dead-lettered as `balance_overflow`, the trip's balance unchanged; its id is remembered,
    /// so a re-send is an exact duplicate (as `recon_schemas::balance::fold` does).
    BalanceOverflow,
    /// The event id was accepted on another trip (`first_trip`): an event id is one event
    /// across the whole job. Dead-lettered as `event_id_reused`; no trip changes, and a trip
    /// seen only through such records is not created.
    EventIdReused {
        /// The trip that holds the id ([`State::trip`]).
        holder: TripSlot,
    },
}

/// All trips this process owns.
#[derive(Default, Debug)]
pub struct State {
    index: HashMap<CompactString, u32>,
    /// Every event key any trip has seen -> that trip's slot (the job-wide id rule). Rebuilt
    /// from the trips' `seen` lists on restore, so the state files do not change. Keys come
    /// from input, so the hasher is seeded per process (foldhash: fast, not predictable).
    ids: HashMap<u64, u32, foldhash::fast::RandomState>,
    slots: Vec<TripState>,
    dirty: Vec<u32>,
}

impl State {
    /// Applies one decoded event read from `partition`.
    pub fn apply(&mut self, ev: &Event, partition: i32) -> Result<Outcome, Overflow> {
        self.apply_with(ev, partition, true)
    }

    /// Applies a record a committed checkpoint already decided (a rewind's replay) that the
    /// tables do not hold as `event_id_reused`: it was its own trip's event (accepted, a
    /// duplicate, a conflict or an overflow), so the job-wide id rule is not asked again. The
    /// replay reads partitions in another order than the first run did; asking the rule again
    /// could give an id to the other trip (the copy's) and sum it there. The id's holder in the
    /// job-wide index stays the first trip that holds it.
    pub fn apply_replayed(&mut self, ev: &Event, partition: i32) -> Result<Outcome, Overflow> {
        self.apply_with(ev, partition, false)
    }

    fn apply_with(
        &mut self,
        ev: &Event,
        partition: i32,
        id_rule: bool,
    ) -> Result<Outcome, Overflow> {
        let key = event_key(&ev.event_id);
        let fp = ev.fingerprint();
        let existing = self.index.get(ev.trip_id.as_str()).copied();
        // The trip's own ids first: a re-send to the trip that holds the id is a duplicate,
        // whatever the job-wide index says (state written before the rule may hold an id on
        // two trips).
        let seen_fp = existing.and_then(|s| {
            let seen = &self.slots[s as usize].seen;
            seen.iter().find(|(e, _)| *e == key).map(|(_, f)| *f)
        });
        if id_rule
            && seen_fp.is_none()
            && let Some(&holder) = self.ids.get(&key)
            && Some(holder) != existing
        {
            return Ok(Outcome::EventIdReused {
                holder: TripSlot(holder),
            });
        }
        let slot = match existing {
            Some(s) => s as usize,
            None => {
                let s = self.slots.len();
                let s32 = u32::try_from(s).expect("fewer than 4 billion trips per process");
                self.slots
                    .push(TripState::new(&ev.trip_id, ev.currency, partition));
                self.index.insert(CompactString::new(&ev.trip_id), s32);
                s
            }
        };
        let trip = &mut self.slots[slot];
        let outcome = match seen_fp {
            Some(f) if f == fp => return Ok(Outcome::ExactDuplicate),
            Some(_) => {
                trip.flags |= FLAG_CONFLICTING_DUPLICATE;
                Outcome::ConflictingDuplicate
            }
            None => {
                let mut b = trip.balance();
                let applied = b.apply(ev);
                if applied != Applied::Overflow {
                    trip.set_balance(&b)?;
                }
                trip.seen.push((key, fp));
                self.ids.entry(key).or_insert(slot as u32);
                if applied == Applied::Overflow {
                    Outcome::BalanceOverflow
                } else {
                    Outcome::Accepted
                }
            }
        };
        if !trip.dirty {
            trip.dirty = true;
            self.dirty.push(slot as u32);
        }
        Ok(outcome)
    }

    /// Takes the trips changed since the last call, clearing their marks; read them with
    /// [`State::trip`].
    pub fn take_changed(&mut self) -> Vec<TripSlot> {
        let slots = std::mem::take(&mut self.dirty);
        for s in &slots {
            self.slots[*s as usize].dirty = false;
        }
        slots.into_iter().map(TripSlot).collect()
    }

    /// The trip in a slot returned by [`State::take_changed`].
    pub fn trip(&self, slot: TripSlot) -> &TripState {
        &self.slots[slot.0 as usize]
    }

    /// Number of trips held.
    pub fn trips(&self) -> usize {
        self.slots.len()
    }

    /// Number of trips changed since the last barrier.
    pub fn changed(&self) -> usize {
        self.dirty.len()
    }

    /// Every trip, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TripState> {
        self.slots.iter()
    }

    /// One trip.
    pub fn get(&self, trip_id: &str) -> Option<&TripState> {
        self.index.get(trip_id).map(|s| &self.slots[*s as usize])
    }

    /// Makes room for `trips` more trips holding `ids` more event ids (restore path).
    pub fn reserve(&mut self, trips: usize, ids: usize) {
        self.index.reserve(trips);
        self.slots.reserve(trips);
        self.ids.reserve(ids);
    }

    /// Inserts or replaces a trip (restore path).
    pub fn restore(
        &mut self,
        trip_id: &str,
        balance: &TripBalance,
        seen: Seen,
        partition: i32,
    ) -> Result<(), Overflow> {
        let mut t = TripState::new(trip_id, balance.currency, partition);
        t.set_balance(balance)?;
        t.seen = seen;
        let slot = match self.index.get(trip_id) {
            Some(s) => *s,
            None => {
                let s = u32::try_from(self.slots.len())
                    .expect("fewer than 4 billion trips per process");
                self.slots
                    .push(TripState::new(trip_id, balance.currency, partition));
                self.index.insert(CompactString::new(trip_id), s);
                s
            }
        };
        for (key, _) in &t.seen {
            self.ids.insert(*key, slot);
        }
        self.slots[slot as usize] = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use recon_schemas::event::EventType;

    fn ev(id: u128, kind: EventType, cents: i64) -> Event {
        Event {
            event_id: uuid::Uuid::from_u128(id),
            event_type: kind,
            trip_id: "trip-1".into(),
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
}
