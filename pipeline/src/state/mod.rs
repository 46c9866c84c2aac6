//! Per-trip state: running balances and the event ids already seen (the dedup set).
//!
//! A trip's events share its Kafka partition (the key is the trip id), so each trip's state is
//! touched by one partition only. The state remembers which trips changed since the last
//! barrier, so a checkpoint writes only those (a delta) and the `trip_balances` changelog gets
//! one row per changed trip per checkpoint.

pub mod codec;

use std::collections::HashMap;

use recon_schemas::balance::TripBalance;
use recon_schemas::event::Event;

/// State of one trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TripState {
    /// Running sums and flags.
    pub balance: TripBalance,
    /// Event ids seen (as u128) with the fingerprint of the content first seen.
    pub seen: Vec<(u128, u64)>,
    /// Kafka partition the trip lives on.
    pub partition: i32,
    /// Changed since the last barrier.
    dirty: bool,
}

/// What applying one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// New event: goes to `ledger_events` (summed, or flagged as a currency mismatch).
    Accepted,
    /// Same event id and same content as an event already seen: dropped and counted.
    ExactDuplicate,
    /// Same event id, different content: dead-lettered; the trip is flagged.
    ConflictingDuplicate,
}

/// All trips this process owns.
#[derive(Default, Debug)]
pub struct State {
    trips: HashMap<String, TripState>,
    dirty: Vec<String>,
}

impl State {
    /// Applies one decoded event read from `partition`.
    pub fn apply(&mut self, ev: &Event, partition: i32) -> Outcome {
        let id = ev.event_id.as_u128();
        let fp = ev.fingerprint();
        let trip = match self.trips.get_mut(ev.trip_id.as_str()) {
            Some(t) => t,
            None => self
                .trips
                .entry(ev.trip_id.clone())
                .or_insert_with(|| TripState {
                    balance: TripBalance::new(ev.currency),
                    seen: Vec::with_capacity(4),
                    partition,
                    dirty: false,
                }),
        };
        let outcome = match trip.seen.iter().find(|(e, _)| *e == id) {
            Some((_, f)) if *f == fp => return Outcome::ExactDuplicate,
            Some(_) => {
                trip.balance.conflicting_duplicate = true;
                Outcome::ConflictingDuplicate
            }
            None => {
                trip.seen.push((id, fp));
                trip.balance.apply(ev);
                Outcome::Accepted
            }
        };
        if !trip.dirty {
            trip.dirty = true;
            self.dirty.push(ev.trip_id.clone());
        }
        outcome
    }

    /// Takes the trips changed since the last call, clearing their marks.
    pub fn take_changed(&mut self) -> Vec<(String, &TripState)> {
        let ids = std::mem::take(&mut self.dirty);
        for id in &ids {
            if let Some(t) = self.trips.get_mut(id) {
                t.dirty = false;
            }
        }
        ids.into_iter()
            .filter_map(|id| {
                let t = self.trips.get(&id)?;
                Some((id, t))
            })
            .collect()
    }

    /// Number of trips held.
    pub fn trips(&self) -> usize {
        self.trips.len()
    }

    /// Number of trips changed since the last barrier.
    pub fn changed(&self) -> usize {
        self.dirty.len()
    }

    /// Every trip, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &TripState)> {
        self.trips.iter()
    }

    /// One trip.
    pub fn get(&self, trip_id: &str) -> Option<&TripState> {
        self.trips.get(trip_id)
    }

    /// Inserts or replaces a trip (restore path).
    pub fn restore(
        &mut self,
        trip_id: String,
        balance: TripBalance,
        seen: Vec<(u128, u64)>,
        partition: i32,
    ) {
        self.trips.insert(
            trip_id,
            TripState {
                balance,
                seen,
                partition,
                dirty: false,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use recon_schemas::currency::Currency;
    use recon_schemas::event::EventType;
    use rust_decimal::Decimal;

    fn ev(id: u128, kind: EventType, cents: i64) -> Event {
        Event {
            event_id: uuid::Uuid::from_u128(id),
            event_type: kind,
            trip_id: "trip-1".into(),
            amount: Decimal::new(cents, 2),
            currency: Currency::parse("USD").unwrap(),
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
            s.apply(&ev(1, EventType::TripCharge, 1000), 0),
            Outcome::Accepted
        );
        assert_eq!(
            s.apply(&ev(1, EventType::TripCharge, 1000), 0),
            Outcome::ExactDuplicate
        );
        assert_eq!(
            s.apply(&ev(1, EventType::TripCharge, 999), 0),
            Outcome::ConflictingDuplicate
        );
        assert_eq!(
            s.apply(&ev(2, EventType::RiderPayment, 1000), 0),
            Outcome::Accepted
        );
        let changed = s.take_changed();
        assert_eq!(changed.len(), 1);
        let t = changed[0].1;
        assert_eq!(t.balance.charged, Decimal::new(1000, 2));
        assert!(t.balance.conflicting_duplicate);
        assert_eq!(s.changed(), 0);
        assert!(s.take_changed().is_empty());
    }
}
