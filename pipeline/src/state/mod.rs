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
pub mod evict;
pub mod run;

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
/// The cold tier holds this trip's current version (rehydrated, unchanged since).
const FLAG_COLD_CURRENT: u8 = 4;
/// The slot is free (its trip left memory).
const FLAG_VACANT: u8 = 8;
/// The balance's status is `BALANCED` (kept with the balance: the eviction scan reads it
/// without unpacking the sums).
const FLAG_BALANCED: u8 = 16;
const FLAGS_BALANCE: u8 = FLAG_CURRENCY_MISMATCH | FLAG_CONFLICTING_DUPLICATE;

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

/// How [`State::apply_known`] applies an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applying {
    /// A record read for the first time: every rule decides ([`State::apply`]).
    New,
    /// A rewind's replay of a record a committed checkpoint decided ([`State::apply_replayed`]).
    Replayed,
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

    /// Whether the trip is closed: its event ids were forgotten (it had accepted events and
    /// holds none: it left memory beyond the horizon, closed for good), or its last event is
    /// older than `cutoff_us` (the horizon behind the high-water mark).
    pub fn is_closed(&self, cutoff_us: Option<i64>) -> bool {
        (self.events > 0 && self.seen.is_empty())
            || cutoff_us.is_some_and(|c| self.last_occurred_us.is_some_and(|l| l < c))
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
        let balanced = b.status() == recon_schemas::balance::TripStatus::Balanced;
        self.flags = (self.flags & !(FLAGS_BALANCE | FLAG_BALANCED))
            | (if balanced { FLAG_BALANCED } else { 0 })
            | (if b.currency_mismatch {
                FLAG_CURRENCY_MISMATCH
            } else {
                0
            })
            | (if b.conflicting_duplicate {
                FLAG_CONFLICTING_DUPLICATE
            } else {
                0
            });
        Ok(())
    }
}

/// Where a trip lives in the state: valid until the trip leaves memory ([`State::evict`]),
/// which only a barrier does, after the slots it handed out were read.
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
    /// Later than the horizon (`[state] late_horizon_ms`): the event's `occurred_at` is older
    /// than the horizon behind the newest event accepted, or its trip is closed (no event for
    /// longer than the horizon, or its ids were forgotten). Dead-lettered as `beyond_horizon`;
    /// no trip changes.
    BeyondHorizon {
        /// The trip is closed (else the event itself is too old).
        trip_closed: bool,
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
    /// Slots whose trip left memory, reused first.
    free: Vec<u32>,
    /// Newest `occurred_at` (µs) of an accepted event or a restored trip: the event-time
    /// high-water mark eviction measures idleness against.
    high_water_us: Option<i64>,
    /// Where the next eviction scan starts, and trips brought back from the cold tier since
    /// the last scan (looked at first).
    scan: evict::Scan,
    /// Newest `occurred_at` (µs) accepted or restored per Kafka partition: the horizon's
    /// watermark is their minimum, so a partition read behind the others (a backlog) holds it
    /// back instead of seeing its events called late.
    partition_high: HashMap<i32, i64, foldhash::fast::RandomState>,
    /// The partitions the job reads: until each has a mark, there is no watermark.
    partitions: Vec<i32>,
    /// The horizon's watermark: the oldest partition mark as of the start of the batch
    /// ([`State::set_clock`]), never moving back.
    watermark_us: Option<i64>,
    /// The late horizon (µs of event time), if any.
    horizon_us: Option<i64>,
    /// The wall clock (µs) the high-water mark is clamped to for the horizon: an event stamped
    /// in the future cannot close every trip at once.
    clock_us: Option<i64>,
}

impl State {
    /// Applies one decoded event read from `partition`.
    pub fn apply(&mut self, ev: &Event, partition: i32) -> Result<Outcome, Overflow> {
        self.apply_with(ev, ev.fingerprint(), partition, true)
    }

    /// [`State::apply`] (`Applying::New`) or [`State::apply_replayed`] (`Applying::Replayed`)
    /// of an event whose [`Event::fingerprint`] the source already computed.
    pub fn apply_known(
        &mut self,
        ev: &Event,
        fingerprint: u64,
        partition: i32,
        how: Applying,
    ) -> Result<Outcome, Overflow> {
        debug_assert_eq!(fingerprint, ev.fingerprint());
        self.apply_with(ev, fingerprint, partition, how == Applying::New)
    }

    /// Applies a record a committed checkpoint already decided (a rewind's replay) that the
    /// tables do not hold as `event_id_reused`: it was its own trip's event (accepted, a
    /// duplicate, a conflict or an overflow), so the job-wide id rule is not asked again. The
    /// replay reads partitions in another order than the first run did; asking the rule again
    /// could give an id to the other trip (the copy's) and sum it there. The id's holder in the
    /// job-wide index stays the first trip that holds it.
    pub fn apply_replayed(&mut self, ev: &Event, partition: i32) -> Result<Outcome, Overflow> {
        self.apply_with(ev, ev.fingerprint(), partition, false)
    }

    fn apply_with(
        &mut self,
        ev: &Event,
        fp: u64,
        partition: i32,
        id_rule: bool,
    ) -> Result<Outcome, Overflow> {
        let key = event_key(&ev.event_id);
        let existing = self.index.get(ev.trip_id.as_str()).copied();
        if self.clock_us.is_none() {
            // No batch clock (tests, tools): the watermark follows every event.
            self.refresh_watermark();
        }
        let cutoff = self.horizon_cutoff_us();
        if id_rule {
            if cutoff.is_some_and(|c| ev.occurred_at.timestamp_micros() < c) {
                return Ok(Outcome::BeyondHorizon { trip_closed: false });
            }
            if existing.is_some_and(|s| self.slots[s as usize].is_closed(cutoff)) {
                return Ok(Outcome::BeyondHorizon { trip_closed: true });
            }
        }
        // The trip's own ids first: a re-send to the trip that holds the id is a duplicate,
        // whatever the job-wide index says (state written before the rule may hold an id on
        // two trips).
        let seen_fp = existing.and_then(|s| {
            let seen = &self.slots[s as usize].seen;
            seen.iter().find(|(e, _)| *e == key).map(|(_, f)| *f)
        });
        // The id of a closed trip is free again: the job-wide rule spans the horizon (a closed
        // trip's ids are forgotten when it leaves memory).
        let mut take_over = false;
        if id_rule
            && seen_fp.is_none()
            && let Some(&holder) = self.ids.get(&key)
            && Some(holder) != existing
        {
            if !self.slots[holder as usize].is_closed(cutoff) {
                return Ok(Outcome::EventIdReused {
                    holder: TripSlot(holder),
                });
            }
            take_over = true;
            // The closed trip lets the id go (its own events are all beyond the horizon, so its
            // seen list decides nothing more), and the change is written with the next delta:
            // one trip holds an id, after a restart too.
            let h = &mut self.slots[holder as usize];
            h.seen.retain(|(k, _)| *k != key);
            if !h.dirty {
                h.dirty = true;
                self.dirty.push(holder);
            }
        }
        let slot = match existing {
            Some(s) => s as usize,
            None => self.alloc(&ev.trip_id, ev.currency, partition) as usize,
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
                    if let Some(t) = trip.last_occurred_us {
                        self.high_water_us = Some(self.high_water_us.map_or(t, |h| h.max(t)));
                        let p = self.partition_high.entry(trip.partition).or_insert(t);
                        *p = (*p).max(t);
                    }
                }
                trip.seen.push((key, fp));
                if take_over {
                    self.ids.insert(key, slot as u32);
                } else {
                    self.ids.entry(key).or_insert(slot as u32);
                }
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

    /// Whether every trip in memory changed since the last [`State::take_changed`] (a new
    /// job's first interval): their copies are then the whole state.
    pub fn all_changed(&self) -> bool {
        self.iter().all(|t| t.dirty)
    }

    /// Takes the trips changed since the last call, clearing their marks; read them with
    /// [`State::trip`].
    pub fn take_changed(&mut self) -> Vec<TripSlot> {
        let slots = std::mem::take(&mut self.dirty);
        for s in &slots {
            let t = &mut self.slots[*s as usize];
            t.dirty = false;
            // Written to the hot chain now: the cold tier's copy (if any) is old.
            t.flags &= !FLAG_COLD_CURRENT;
        }
        slots.into_iter().map(TripSlot).collect()
    }

    /// The trip in a slot returned by [`State::take_changed`].
    pub fn trip(&self, slot: TripSlot) -> &TripState {
        &self.slots[slot.0 as usize]
    }

    /// Number of trips held in memory.
    pub fn trips(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Number of trips changed since the last barrier.
    pub fn changed(&self) -> usize {
        self.dirty.len()
    }

    /// Every trip in memory, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TripState> {
        self.slots.iter().filter(|t| t.flags & FLAG_VACANT == 0)
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
    ) -> Result<TripSlot, Overflow> {
        let mut t = TripState::new(trip_id, balance.currency, partition);
        t.set_balance(balance)?;
        t.seen = seen;
        let slot = match self.index.get(trip_id) {
            Some(s) => *s,
            None => self.alloc(trip_id, balance.currency, partition),
        };
        // The first trip to hold an id keeps it (state written before the job-wide rule may
        // hold an id on two trips).
        for (key, _) in &t.seen {
            self.ids.entry(*key).or_insert(slot);
        }
        if let Some(l) = t.last_occurred_us {
            self.high_water_us = Some(self.high_water_us.map_or(l, |h| h.max(l)));
            let p = self.partition_high.entry(partition).or_insert(l);
            *p = (*p).max(l);
        }
        self.slots[slot as usize] = t;
        Ok(TripSlot(slot))
    }

    /// A slot for a new trip: a free one first.
    fn alloc(&mut self, trip_id: &str, currency: Currency, partition: i32) -> u32 {
        let t = TripState::new(trip_id, currency, partition);
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = t;
                s
            }
            None => {
                let s = u32::try_from(self.slots.len())
                    .expect("fewer than 4 billion trips per process");
                self.slots.push(t);
                s
            }
        };
        self.index.insert(CompactString::new(trip_id), s);
        s
    }
}

#[cfg(test)]
mod tests;
