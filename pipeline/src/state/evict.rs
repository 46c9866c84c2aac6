//! Trips leave memory when settled or idle, and come back when an event needs them.
//!
//! Memory follows open trips, not trips ever seen: at a barrier, a trip whose balance is
//! `BALANCED` and whose last event is older than `settled_after` (event time), or any trip
//! idle for longer than `idle_after`, leaves memory ([`State::evict`]); the job writes what
//! left to the cold tier (`crate::cold`). Before an event is applied, the job asks the cold
//! tier for its trip and for the holder of its event id when memory lacks them, and brings
//! them back ([`State::rehydrate`]). So every decision is taken on the same trip state as if
//! nothing had ever left: eviction changes where a trip is kept, never a result (the property
//! test `eviction_at_any_point_folds_like_no_eviction`).
//!
//! Event time is measured against the state's high-water mark (the newest `occurred_at`
//! accepted), which the job clamps to the wall clock: an event stamped in the future cannot
//! push every trip out at once.

use compact_str::CompactString;

use super::codec::{self, CodecError};
use super::{FLAG_BALANCED, FLAG_COLD_CURRENT, FLAG_VACANT, State, TripSlot};

/// When a trip leaves memory (event-time spans, microseconds; `None`: never for that reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvictPolicy {
    /// A `BALANCED` trip whose last event is at least this old.
    pub settled_after_us: Option<i64>,
    /// Any trip whose last event is at least this old.
    pub idle_after_us: Option<i64>,
    /// The late horizon: a closed trip leaves memory whatever the spans above say.
    pub horizon_us: Option<i64>,
    /// Slots looked at per barrier (a round-robin cursor: the scan costs the same at every
    /// barrier, whatever the number of trips).
    pub scan_per_barrier: usize,
}

impl EvictPolicy {
    /// Whether anything can ever leave memory.
    pub fn enabled(&self) -> bool {
        self.settled_after_us.is_some() || self.idle_after_us.is_some() || self.horizon_us.is_some()
    }
}

/// The eviction scan's position, and the trips brought back since the last scan.
#[derive(Debug, Default)]
pub(super) struct Scan {
    cursor: usize,
    rehydrated: Vec<u32>,
}

/// A trip that left memory.
#[derive(Debug)]
pub struct Evicted {
    /// Its id.
    pub trip_id: CompactString,
    /// [`trip_key`] of the id.
    pub key: u64,
    /// Its encoded state for the cold tier (`codec::encode_trip`), or `None` when the cold tier
    /// already holds this exact version (it came back and did not change).
    pub record: Option<Vec<u8>>,
    /// Its event keys, for the cold tier's id section (`None` record: empty).
    pub ids: Vec<u64>,
    /// Its last event (µs).
    pub last_us: Option<i64>,
}

/// The cold tier's key of a trip id: XXH3-64, the same in every process and build.
pub fn trip_key(trip_id: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(trip_id.as_bytes())
}

impl State {
    /// Newest `occurred_at` (µs) accepted or restored.
    pub fn high_water_us(&self) -> Option<i64> {
        self.high_water_us
    }

    /// Raises the high-water mark to `us` (a checkpoint's recorded mark, at restore).
    pub fn raise_high_water(&mut self, us: i64) {
        self.high_water_us = Some(self.high_water_us.map_or(us, |h| h.max(us)));
    }

    /// Sets the late horizon (µs of event time; `None`: none).
    pub fn set_horizon(&mut self, horizon_us: Option<i64>) {
        self.horizon_us = horizon_us;
    }

    /// Sets the partitions the job reads: the horizon's watermark exists once each has a mark.
    pub fn set_partitions(&mut self, partitions: &[i32]) {
        self.partitions = partitions.to_vec();
    }

    /// Raises a partition's event-time mark (a checkpoint's recorded marks, at restore).
    pub fn raise_partition_high(&mut self, partition: i32, us: i64) {
        let p = self.partition_high.entry(partition).or_insert(us);
        *p = (*p).max(us);
    }

    /// Each partition's newest `occurred_at` (µs), for the manifest.
    pub fn partition_high(&self) -> std::collections::BTreeMap<i32, i64> {
        self.partition_high.iter().map(|(p, t)| (*p, *t)).collect()
    }

    /// Sets the wall clock (µs) and takes the watermark for the batch that follows: the
    /// horizon's decisions in a batch all use the same cutoff.
    pub fn set_clock(&mut self, now_us: i64) {
        self.clock_us = Some(now_us);
        self.refresh_watermark();
    }

    /// Moves the watermark to the oldest partition mark, never back (a partition added to the
    /// topic starts behind the others: it cannot reopen closed trips).
    pub(super) fn refresh_watermark(&mut self) {
        if let Some(w) = self.partition_watermark() {
            self.watermark_us = Some(self.watermark_us.map_or(w, |m| m.max(w)));
        }
    }

    /// The horizon's watermark (µs): the oldest partition mark, never moving back.
    pub fn watermark_us(&self) -> Option<i64> {
        self.watermark_us
    }

    /// Raises the watermark (a checkpoint's recorded one, at restore).
    pub fn raise_watermark(&mut self, us: i64) {
        self.watermark_us = Some(self.watermark_us.map_or(us, |m| m.max(us)));
    }

    /// The oldest of the partitions' marks; `None` while a partition the job reads has none
    /// (an empty or unread partition holds the horizon back: events are never called late
    /// early).
    fn partition_watermark(&self) -> Option<i64> {
        if self.partitions.is_empty() {
            return self.partition_high.values().copied().min();
        }
        self.partitions
            .iter()
            .map(|p| self.partition_high.get(p).copied())
            .try_fold(i64::MAX, |m, h| h.map(|h| m.min(h)))
    }

    /// Event time before which an event is beyond the horizon, and a trip whose last event is
    /// older is closed: the watermark (the oldest partition mark, clamped to the wall clock)
    /// minus the horizon.
    pub fn horizon_cutoff_us(&self) -> Option<i64> {
        let h = self.horizon_us?;
        let w = self.watermark_us?;
        let w = self.clock_us.map_or(w, |c| w.min(c));
        Some(w.saturating_sub(h))
    }

    /// Whether the trip is in memory.
    pub fn is_hot(&self, trip_id: &str) -> bool {
        self.index.contains_key(trip_id)
    }

    /// Whether a trip in memory holds the event key.
    pub fn holds_id(&self, event_key: u64) -> bool {
        self.ids.contains_key(&event_key)
    }

    /// Takes out of memory the trips `policy` lets go at event time `watermark_us`: the trips
    /// brought back since the last call, then up to `policy.scan_per_barrier` slots from the
    /// cursor. A trip changed since the last [`State::take_changed`] stays (call it first).
    pub fn evict(&mut self, watermark_us: i64, policy: &EvictPolicy) -> Vec<Evicted> {
        let mut out = Vec::new();
        if !policy.enabled() || self.slots.is_empty() {
            self.scan.rehydrated.clear();
            return out;
        }
        let back = std::mem::take(&mut self.scan.rehydrated);
        let n = self.slots.len();
        let from = self.scan.cursor % n;
        let take = policy.scan_per_barrier.min(n);
        self.scan.cursor = (from + take) % n;
        let scanned = (0..take).map(|i| ((from + i) % n) as u32);
        for slot in back.into_iter().chain(scanned) {
            if self.may_leave(slot, watermark_us, policy)
                && let Some(e) = self.take_out(slot)
            {
                out.push(e);
            }
        }
        out
    }

    fn may_leave(&self, slot: u32, watermark_us: i64, policy: &EvictPolicy) -> bool {
        let Some(t) = self.slots.get(slot as usize) else {
            return false;
        };
        if t.flags & FLAG_VACANT != 0 || t.dirty {
            return false;
        }
        if t.is_closed(self.horizon_cutoff_us()) {
            return true;
        }
        // A trip with no accepted event has no event time: idle by definition.
        let Some(last) = t.last_occurred_us else {
            return policy.idle_after_us.is_some();
        };
        let age = watermark_us.saturating_sub(last);
        if policy.idle_after_us.is_some_and(|a| age >= a) {
            return true;
        }
        policy.settled_after_us.is_some_and(|a| age >= a) && t.flags & FLAG_BALANCED != 0
    }

    /// Removes a trip from memory (slot freed, index and id entries dropped). A closed trip's
    /// record leaves without its event ids: they are free again, and the trip stays closed.
    fn take_out(&mut self, slot: u32) -> Option<Evicted> {
        let closed = self.slots[slot as usize].is_closed(self.horizon_cutoff_us());
        let t = &self.slots[slot as usize];
        for (k, _) in &t.seen {
            if self.ids.get(k) == Some(&slot) {
                self.ids.remove(k);
            }
        }
        let t = &mut self.slots[slot as usize];
        if closed && t.events > 0 && !t.seen.is_empty() {
            t.seen = Default::default();
            t.flags &= !FLAG_COLD_CURRENT;
        }
        let t = &self.slots[slot as usize];
        let record = (t.flags & FLAG_COLD_CURRENT == 0).then(|| codec::encode_trip(t));
        let ids: Vec<u64> = if record.is_some() {
            t.seen.iter().map(|(k, _)| *k).collect()
        } else {
            Vec::new()
        };
        let trip_id = t.trip_id.clone();
        let last_us = t.last_occurred_us;
        self.index.remove(trip_id.as_str());
        let t = &mut self.slots[slot as usize];
        t.flags = FLAG_VACANT;
        t.seen = Default::default();
        t.trip_id = CompactString::default();
        self.free.push(slot);
        Some(Evicted {
            key: trip_key(&trip_id),
            trip_id,
            record,
            ids,
            last_us,
        })
    }

    /// Brings a trip back from its cold record (`codec::encode_trip`); `Ok(false)` when it is
    /// already in memory (the record is older than memory: ignored). Not dirty: nothing
    /// changed, so no row and no state file; the next barrier's scan looks at it first.
    pub fn rehydrate(&mut self, name: &str, record: &[u8]) -> Result<bool, CodecError> {
        let (trip_id, balance, seen, partition) = codec::decode_trip(name, record)?;
        if self.is_hot(&trip_id) {
            return Ok(false);
        }
        let TripSlot(slot) = self
            .restore(&trip_id, &balance, seen, partition)
            .map_err(|e| CodecError::Corrupt {
                path: name.to_string(),
                message: e.to_string(),
            })?;
        self.slots[slot as usize].flags |= FLAG_COLD_CURRENT;
        self.scan.rehydrated.push(slot);
        Ok(true)
    }

    /// Drops a trip from memory without a record (a tombstone of the state chain: the trip
    /// went to the cold tier at that checkpoint).
    pub fn forget(&mut self, trip_id: &str) {
        if let Some(&slot) = self.index.get(trip_id) {
            let _ = self.take_out(slot);
        }
    }

    /// Decodes a cold record's trip id (to tell hash collisions apart).
    pub fn record_trip_id(name: &str, record: &[u8]) -> Result<String, CodecError> {
        codec::decode_trip(name, record).map(|(id, ..)| id)
    }
}
