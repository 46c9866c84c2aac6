//! The pure core: a seeded, bounded-memory iterator of the records to publish, in order.
//!
//! [`plan`] interleaves the events of `concurrent_trips` trips in flight (so the stream runs
//! roughly in business-time order, trips overlapping), and on top of that, all drawn from the
//! seed:
//!
//! - **duplicates**: a valid record re-sent with identical bytes 1-1,000 records later;
//! - **conflicting duplicates**: the same `event_id` with a different amount, 1-1,000 records
//!   after the first version (same key, so same partition, so the first version is first-seen);
//! - **out of order**: a later event of a trip emitted before an earlier one;
//! - **late**: an event held back 20,000-200,000 records;
//! - **poison**: bad input cycling through every rejection class ([`super::poison`]).
//!
//! The same [`TrafficConfig`] gives byte-identical records. Three independent ChaCha8 streams
//! (trips, stream decisions, poison) keep the trips themselves unchanged when only the noise
//! rates change.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use chrono::Duration;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recon_schemas::balance::TripStatus;
use recon_schemas::decode::RejectReason;
use recon_schemas::event::Event;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::config::{Ppm, TrafficConfig};
use super::poison;
use super::trips::{plan_trip, roll};

/// Most records held back (late events, pending duplicates) at once; beyond it, events are
/// emitted on time rather than held.
pub const DELAYED_MAX: usize = 100_000;
/// Most late deferrals drawn while choosing one record; bounds the work of one `next()`.
const DEFERRALS_MAX: u32 = 64;
/// Highest poison rate applied: at most every other record is bad.
const POISON_MAX: Ppm = Ppm::HALF;
/// How far (in records) a duplicate or conflicting version trails its first version.
const ECHO_GAP: std::ops::RangeInclusive<u64> = 1..=1_000;
/// How far (in records) a late event is held back.
const LATE_GAP: std::ops::RangeInclusive<u64> = 20_000..=200_000;

/// One record to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Partition to publish to; `None` lets the key decide (every keyed record).
    pub partition_hint: Option<i32>,
    /// Kafka key: the trip id, for all but a few bad records.
    pub key: Option<Vec<u8>>,
    /// The value bytes.
    pub payload: Vec<u8>,
    /// What the record is, for the truth and the summary.
    pub kind: RecordKind,
}

/// What a [`Record`] is meant to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The first emission of a valid event; `payload` is its canonical JSON.
    Valid(Event),
    /// An exact re-send (identical bytes) of the valid event with this id.
    Duplicate(Uuid),
    /// A second version of an already emitted event: same id, different amount. Carries the
    /// conflicting version; the first one stays the truth.
    ConflictingDuplicate(Event),
    /// Bad input the decoder must reject for exactly this reason.
    Poison(RejectReason),
}

/// Plans the records of `config`. The iterator ends when every trip is emitted, or after
/// `config.events_max` records.
pub fn plan(config: &TrafficConfig) -> Plan {
    let stream = |n: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(n);
        rng
    };
    Plan {
        config: config.clone(),
        trip_rng: stream(0),
        stream_rng: stream(1),
        poison_rng: stream(2),
        next_trip: 0,
        active: Vec::with_capacity(config.concurrent_trips as usize),
        delayed: BinaryHeap::new(),
        delayed_seq: 0,
        emitted: 0,
        poisoned: 0,
        intended: IntendedStatuses::default(),
    }
}

/// How many trips were planned to end in each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IntendedStatuses {
    /// Trips planned to balance.
    pub balanced: u64,
    /// Trips planned to stay open.
    pub open: u64,
    /// Trips planned to end in discrepancy.
    pub discrepancy: u64,
}

/// The iterator [`plan`] returns.
pub struct Plan {
    config: TrafficConfig,
    trip_rng: ChaCha8Rng,
    stream_rng: ChaCha8Rng,
    poison_rng: ChaCha8Rng,
    /// Number of the next trip to start.
    next_trip: u64,
    /// Trips in flight: their remaining events, latest first (so `pop` gives the earliest).
    active: Vec<Vec<Event>>,
    /// Records held back, earliest due first.
    delayed: BinaryHeap<Delayed>,
    /// Tie-breaker that keeps equal due positions in scheduling order.
    delayed_seq: u64,
    /// Records emitted so far.
    emitted: u64,
    /// Poison records emitted so far.
    poisoned: u64,
    intended: IntendedStatuses,
}

impl Plan {
    /// Trips started so far, by the status they are planned to end in. Trips cut short by
    /// `events_max` count as planned.
    pub fn intended(&self) -> IntendedStatuses {
        self.intended
    }

    /// A rough upper estimate of the records this plan emits, for a progress bar.
    pub fn estimated_len(&self) -> u64 {
        let c = &self.config;
        // 4 events per settled trip, plus 1 per refund, 2 per adjustment, plus the noise.
        let per_trip_ppm =
            4 * u64::from(Ppm::ONE) + u64::from(c.refund.get()) + 2 * u64::from(c.adjustment.get());
        let events = c.trips.saturating_mul(per_trip_ppm) / u64::from(Ppm::ONE);
        let noise = u64::from(c.duplicate.get() + c.conflict.get() + c.poison.get());
        let total = events.saturating_add(events.saturating_mul(noise) / u64::from(Ppm::ONE));
        c.events_max.map_or(total, |m| m.get().min(total))
    }

    fn next_record(&mut self) -> Option<Record> {
        if self.delayed.peek().is_some_and(|d| d.due <= self.emitted) {
            return self.delayed.pop().map(|d| self.release(d.pending));
        }
        let work_left = self.next_trip < self.config.trips
            || !self.active.is_empty()
            || !self.delayed.is_empty();
        // Capped at one half so trips always make progress between bad records.
        let poison = self.config.poison.min(POISON_MAX);
        if work_left && roll(&mut self.stream_rng, poison) {
            return Some(self.poison());
        }
        for _ in 0..DEFERRALS_MAX {
            let Some(event) = self.take_event() else {
                break;
            };
            if self.delayed.len() < DELAYED_MAX && roll(&mut self.stream_rng, self.config.late) {
                let gap = self.stream_rng.random_range(LATE_GAP);
                self.hold(gap, Pending::Late(event));
                continue;
            }
            return Some(self.emit_valid(event));
        }
        if let Some(event) = self.take_event() {
            return Some(self.emit_valid(event));
        }
        // No trip left: drain what is held back, earliest due first.
        self.delayed.pop().map(|d| self.release(d.pending))
    }

    /// The next event of a random trip in flight, starting trips as slots free up.
    fn take_event(&mut self) -> Option<Event> {
        while self.active.len() < self.config.concurrent_trips as usize
            && self.next_trip < self.config.trips
        {
            let trip = plan_trip(&self.config, self.next_trip, &mut self.trip_rng);
            self.next_trip += 1;
            match trip.intended {
                TripStatus::Balanced => self.intended.balanced += 1,
                TripStatus::Open => self.intended.open += 1,
                TripStatus::Discrepancy(_) => self.intended.discrepancy += 1,
            }
            let mut events = trip.events;
            events.reverse();
            self.active.push(events);
        }
        if self.active.is_empty() {
            return None;
        }
        let slot = self.stream_rng.random_range(0..self.active.len());
        let events = &mut self.active[slot];
        let event = if events.len() >= 2 && roll(&mut self.stream_rng, self.config.out_of_order) {
            // Any event but the earliest (the last) jumps the queue.
            let i = self.stream_rng.random_range(0..events.len() - 1);
            events.remove(i)
        } else {
            events.pop()?
        };
        if events.is_empty() {
            self.active.swap_remove(slot);
        }
        Some(event)
    }

    /// The first emission of `event`; may schedule its exact and conflicting re-sends.
    fn emit_valid(&mut self, event: Event) -> Record {
        let payload = event.to_json();
        let key = event.trip_id.clone().into_bytes();
        if self.delayed.len() < DELAYED_MAX && roll(&mut self.stream_rng, self.config.duplicate) {
            let gap = self.stream_rng.random_range(ECHO_GAP);
            let pending = Pending::Duplicate {
                event_id: event.event_id,
                key: key.clone(),
                payload: payload.clone(),
            };
            self.hold(gap, pending);
        }
        if self.delayed.len() < DELAYED_MAX && roll(&mut self.stream_rng, self.config.conflict) {
            let gap = self.stream_rng.random_range(ECHO_GAP);
            let mut other = event.clone();
            let delta = Decimal::new(
                self.stream_rng.random_range(1..=100),
                event.currency.minor_units(),
            );
            other.amount += delta;
            self.hold(gap, Pending::Conflict(other));
        }
        Record {
            partition_hint: None,
            key: Some(key),
            payload,
            kind: RecordKind::Valid(event),
        }
    }

    fn release(&mut self, pending: Pending) -> Record {
        match pending {
            Pending::Late(event) => self.emit_valid(event),
            Pending::Duplicate {
                event_id,
                key,
                payload,
            } => Record {
                partition_hint: None,
                key: Some(key),
                payload,
                kind: RecordKind::Duplicate(event_id),
            },
            Pending::Conflict(event) => Record {
                partition_hint: None,
                key: Some(event.trip_id.clone().into_bytes()),
                payload: event.to_json(),
                kind: RecordKind::ConflictingDuplicate(event),
            },
        }
    }

    fn poison(&mut self) -> Record {
        // A business time near where the stream is, so the bad record sits on a plausible day.
        let c = &self.config;
        let span_ms = 86_400_000u128 * u128::from(c.days);
        let done_ms =
            span_ms * u128::from(self.next_trip.min(c.trips)) / u128::from(c.trips.max(1));
        let at = c.start + Duration::milliseconds(i64::try_from(done_ms).unwrap_or(0));
        let p = poison::make(c.seed, self.poisoned, at, &mut self.poison_rng);
        self.poisoned += 1;
        let partition_hint = match p.key {
            Some(_) => None,
            None => Some(self.poison_rng.random_range(0..c.partitions.max(1))),
        };
        Record {
            partition_hint,
            key: p.key,
            payload: p.payload,
            kind: RecordKind::Poison(p.reason),
        }
    }

    fn hold(&mut self, gap: u64, pending: Pending) {
        self.delayed_seq += 1;
        self.delayed.push(Delayed {
            due: self.emitted + gap,
            seq: self.delayed_seq,
            pending,
        });
    }
}

impl Iterator for Plan {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self
            .config
            .events_max
            .is_some_and(|m| self.emitted >= m.get())
        {
            return None;
        }
        let record = self.next_record()?;
        self.emitted += 1;
        Some(record)
    }
}

/// A record held back until `due` records have been emitted.
struct Delayed {
    due: u64,
    seq: u64,
    pending: Pending,
}

/// What is held back.
enum Pending {
    /// A valid event emitted late (its first emission).
    Late(Event),
    /// An exact re-send.
    Duplicate {
        event_id: Uuid,
        key: Vec<u8>,
        payload: Vec<u8>,
    },
    /// A conflicting second version.
    Conflict(Event),
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so the max-heap pops the earliest due (then the earliest scheduled) first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
