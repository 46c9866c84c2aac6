//! State files: the binary form of trips in a checkpoint (postcard over serde).
//!
//! A *full* file holds every trip in memory; a *delta* holds the trips changed in one
//! checkpoint and the ids of the trips that left memory for the cold tier in it (tombstones,
//! applied after the trips). Restoring reads the chain the manifest lists (full first, then
//! deltas in order) and the last version of each trip wins. The format is versioned (format 1,
//! without tombstones, is still read); money is carried as exact (mantissa, scale) pairs, never
//! floats. A trip's record alone (`encode_trip`) is what the cold tier stores.

use chrono::{DateTime, Utc};
use recon_schemas::balance::TripBalance;
use recon_schemas::currency::Currency;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{State, TripState};

/// Version of the state file format.
pub const STATE_FORMAT: u32 = 2;

/// Errors reading a state file.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Bytes did not decode.
    #[error("state file {path} is corrupt: {message}")]
    Corrupt {
        /// File.
        path: String,
        /// What failed.
        message: String,
    },
}

/// Decimal as (mantissa, scale): exact, and readable by non-self-describing formats
/// (rust_decimal's own serde impl needs `deserialize_any`, which postcard refuses).
mod exact {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        (d.mantissa(), d.scale()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let (m, scale) = <(i128, u32)>::deserialize(d)?;
        Decimal::try_from_i128_with_scale(m, scale).map_err(serde::de::Error::custom)
    }
}

/// One trip in a state file. Decoded owned (`String`, `Vec`) or, on the restore path,
/// borrowing its strings from the file and its ids inline (`&str`, [`Seen`](super::Seen)):
/// the bytes are the same.
#[derive(Serialize, Deserialize)]
struct TripRecord<S = String, V = Vec<(u64, u64)>> {
    trip_id: S,
    currency: S,
    #[serde(with = "exact")]
    charged: Decimal,
    #[serde(with = "exact")]
    collected: Decimal,
    #[serde(with = "exact")]
    refunded: Decimal,
    #[serde(with = "exact")]
    paid_out: Decimal,
    #[serde(with = "exact")]
    fees: Decimal,
    #[serde(with = "exact")]
    adjusted: Decimal,
    events: u32,
    last_occurred_at_us: Option<i64>,
    currency_mismatch: bool,
    conflicting_duplicate: bool,
    seen: V,
    partition: i32,
}

/// A state file; encoded from borrowed records (`TripRecord<&str, &[..]>`, `&str`: the
/// barrier's cut allocates nothing per trip), decoded owned.
#[derive(Serialize, Deserialize)]
struct StateFile<R = TripRecord, E = String> {
    format: u32,
    full: bool,
    trips: Vec<R>,
    /// Trips that left memory in this checkpoint (format 2).
    evicted: Vec<E>,
}

/// A trip's record borrowing from memory, for encoding (decoded as the owned record).
type BorrowedRecord<'a> = TripRecord<&'a str, &'a [(u64, u64)]>;

fn borrowed(t: &TripState) -> BorrowedRecord<'_> {
    let b = t.balance();
    TripRecord {
        trip_id: t.trip_id(),
        currency: b.currency.code(),
        charged: b.charged,
        collected: b.collected,
        refunded: b.refunded,
        paid_out: b.paid_out,
        fees: b.fees,
        adjusted: b.adjusted,
        events: b.events,
        last_occurred_at_us: b.last_occurred_at.map(|t| t.timestamp_micros()),
        currency_mismatch: b.currency_mismatch,
        conflicting_duplicate: b.conflicting_duplicate,
        seen: &t.seen,
        partition: t.partition,
    }
}

/// Format 1: no tombstones.
#[derive(Deserialize)]
struct StateFileV1 {
    format: u32,
    full: bool,
    trips: Vec<TripRecord>,
}

/// A trip as restored: id, balance, seen ids, partition.
pub type Restored = (String, TripBalance, super::Seen, i32);

/// Encodes every trip in memory (a full file).
pub fn encode_full(state: &State) -> Vec<u8> {
    encode_full_of(state.iter())
}

/// Encodes a full state file of the given trips: the whole state when they are every trip in
/// memory (the same bytes as [`encode_full`] when given in [`State::iter`]'s order).
pub fn encode_full_of<'a>(trips: impl IntoIterator<Item = &'a TripState>) -> Vec<u8> {
    let trips: Vec<BorrowedRecord<'a>> = trips.into_iter().map(borrowed).collect();
    postcard::to_stdvec(&StateFile::<_, &str> {
        format: STATE_FORMAT,
        full: true,
        trips,
        evicted: Vec::new(),
    })
    .expect("state encodes")
}

/// Encodes the given changed trips and the ids of the trips that left memory (a delta file).
pub fn encode_delta<'a>(
    changed: impl IntoIterator<Item = &'a TripState>,
    evicted: impl IntoIterator<Item = &'a str>,
) -> Vec<u8> {
    let trips: Vec<BorrowedRecord<'a>> = changed.into_iter().map(borrowed).collect();
    postcard::to_stdvec(&StateFile {
        format: STATE_FORMAT,
        full: false,
        trips,
        evicted: evicted.into_iter().collect::<Vec<&str>>(),
    })
    .expect("state encodes")
}

/// Encodes one trip (the cold tier's record).
pub fn encode_trip(t: &TripState) -> Vec<u8> {
    postcard::to_stdvec(&borrowed(t)).expect("trip encodes")
}

/// What the cold tier's merge needs of a record (`encode_trip`).
#[derive(Debug)]
pub struct RecordView {
    /// The trip id.
    pub trip_id: String,
    /// Accepted events.
    pub events: u32,
    /// Event ids held.
    pub ids: usize,
    /// Its last event (µs).
    pub last_us: Option<i64>,
    /// The record of the closed trip, without its event ids (`Some` when the trip has ids
    /// and its last event is before `cutoff_us`).
    pub closed: Option<Vec<u8>>,
}

/// Reads a record for a merge; with `cutoff_us`, also its closed copy when the trip's last event
/// is before it (the trip is beyond the horizon: its ids are forgotten, it stays closed).
pub fn view_record(
    name: &str,
    bytes: &[u8],
    cutoff_us: Option<i64>,
) -> Result<RecordView, CodecError> {
    let mut r: TripRecord = postcard::from_bytes(bytes).map_err(|e| CodecError::Corrupt {
        path: name.to_string(),
        message: e.to_string(),
    })?;
    let closing = r.events > 0
        && !r.seen.is_empty()
        && cutoff_us.is_some_and(|c| r.last_occurred_at_us.is_some_and(|l| l < c));
    let ids = r.seen.len();
    let closed = closing.then(|| {
        r.seen.clear();
        postcard::to_stdvec(&r).expect("trip encodes")
    });
    Ok(RecordView {
        trip_id: r.trip_id,
        events: r.events,
        ids: if closing { 0 } else { ids },
        last_us: r.last_occurred_at_us,
        closed,
    })
}

/// Decodes one trip written by [`encode_trip`]; `name` says where it came from in errors.
pub fn decode_trip(name: &str, bytes: &[u8]) -> Result<Restored, CodecError> {
    let r: TripRecord = postcard::from_bytes(bytes).map_err(|e| CodecError::Corrupt {
        path: name.to_string(),
        message: e.to_string(),
    })?;
    restored(name, r)
}

fn restored(path: &str, r: TripRecord) -> Result<Restored, CodecError> {
    let balance = balance_of(path, &r)?;
    Ok((
        r.trip_id,
        balance,
        r.seen.into_iter().collect(),
        r.partition,
    ))
}

fn balance_of<S: AsRef<str>, V>(
    path: &str,
    r: &TripRecord<S, V>,
) -> Result<TripBalance, CodecError> {
    let currency = Currency::parse(r.currency.as_ref()).ok_or_else(|| CodecError::Corrupt {
        path: path.to_string(),
        message: format!("unknown currency {:?}", r.currency.as_ref()),
    })?;
    let mut balance = TripBalance::new(currency);
    balance.charged = r.charged;
    balance.collected = r.collected;
    balance.refunded = r.refunded;
    balance.paid_out = r.paid_out;
    balance.fees = r.fees;
    balance.adjusted = r.adjusted;
    balance.events = r.events;
    balance.last_occurred_at = r
        .last_occurred_at_us
        .and_then(DateTime::<Utc>::from_timestamp_micros);
    balance.currency_mismatch = r.currency_mismatch;
    balance.conflicting_duplicate = r.conflicting_duplicate;
    Ok(balance)
}

/// Applies one file of a chain to `state`. The first file of a chain must be full.
pub fn apply_file(
    state: &mut State,
    path: &str,
    bytes: &[u8],
    first: bool,
) -> Result<(), CodecError> {
    let corrupt = |message: String| CodecError::Corrupt {
        path: path.to_string(),
        message,
    };
    let (format, _) =
        postcard::take_from_bytes::<u32>(bytes).map_err(|e| corrupt(e.to_string()))?;
    let file: StateFile = match format {
        1 => {
            let v1: StateFileV1 =
                postcard::from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
            StateFile {
                format: v1.format,
                full: v1.full,
                trips: v1.trips,
                evicted: Vec::new(),
            }
        }
        STATE_FORMAT => postcard::from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?,
        f => {
            return Err(corrupt(format!(
                "format {f} is not supported by this build (reads 1 to {STATE_FORMAT})"
            )));
        }
    };
    if first && !file.full {
        return Err(corrupt("a state chain must start with a full file".into()));
    }
    if first {
        let ids = file.trips.iter().map(|t| t.seen.len()).sum();
        state.reserve(file.trips.len(), ids);
    }
    for r in file.trips {
        let (trip_id, balance, seen, partition) = restored(path, r)?;
        state
            .restore(&trip_id, &balance, seen, partition)
            .map_err(|e| corrupt(e.to_string()))?;
    }
    for trip_id in &file.evicted {
        state.forget(trip_id);
    }
    Ok(())
}

/// Restores a chain (its full file first, then deltas, oldest first) into an empty `state`:
/// what applying each file in order with [`apply_file`] restores, but each trip is decoded and
/// restored once. Files are read newest first; a trip a newer file decided (wrote or removed)
/// is skipped in older ones, and its strings are borrowed from the file, never copied. At a
/// million trips and a 50-delta chain this halves the work of a restart.
pub fn restore_chain<B: AsRef<[u8]>>(
    state: &mut State,
    files: &[(String, B)],
) -> Result<(), CodecError> {
    use std::collections::HashMap;
    // Trip id -> the index of the newest file that wrote or removed it.
    let mut decided: HashMap<&str, usize, foldhash::fast::FixedState> = HashMap::default();
    let mut heads = Vec::with_capacity(files.len());
    for (i, (path, bytes)) in files.iter().enumerate() {
        let h = file_head(path, bytes.as_ref())?;
        if i == 0 && !h.full {
            return Err(corrupt(
                path,
                "a state chain must start with a full file".into(),
            ));
        }
        heads.push(h);
    }
    // Most trips are in the full file (deltas mostly rewrite them): room for those.
    let trips = heads.first().map_or(0, |h| h.count);
    state.reserve(trips, trips);
    for (i, ((path, _), head)) in files.iter().zip(&heads).enumerate().rev() {
        let mut rest = head.records;
        for _ in 0..head.count {
            let (r, more) = postcard::take_from_bytes::<TripRecord<&str, super::Seen>>(rest)
                .map_err(|e| corrupt(path, e.to_string()))?;
            rest = more;
            if decided.contains_key(r.trip_id) {
                continue;
            }
            if i > 0 {
                // Nothing older than the full file is read: its trips need no entry.
                decided.insert(r.trip_id, i);
            }
            let balance = balance_of(path, &r)?;
            state
                .restore(r.trip_id, &balance, r.seen, r.partition)
                .map_err(|e| corrupt(path, e.to_string()))?;
        }
        // This file's tombstones remove its own versions (applied after its trips), never a
        // newer file's.
        let removed: Vec<&str> = if head.format == 1 {
            Vec::new()
        } else {
            postcard::from_bytes(rest).map_err(|e| corrupt(path, e.to_string()))?
        };
        for t in removed {
            if decided.get(t).is_some_and(|&by| by > i) {
                continue;
            }
            state.forget(t);
            decided.insert(t, i);
        }
    }
    Ok(())
}

/// The fields before a state file's records.
struct FileHead<'a> {
    format: u32,
    full: bool,
    count: usize,
    records: &'a [u8],
}

fn file_head<'a>(path: &str, bytes: &'a [u8]) -> Result<FileHead<'a>, CodecError> {
    let err = |e: postcard::Error| corrupt(path, e.to_string());
    let (format, rest) = postcard::take_from_bytes::<u32>(bytes).map_err(err)?;
    if format != 1 && format != STATE_FORMAT {
        return Err(corrupt(
            path,
            format!("format {format} is not supported by this build (reads 1 to {STATE_FORMAT})"),
        ));
    }
    let (full, rest) = postcard::take_from_bytes::<bool>(rest).map_err(err)?;
    let (count, records) = postcard::take_from_bytes::<usize>(rest).map_err(err)?;
    Ok(FileHead {
        format,
        full,
        count,
        records,
    })
}

fn corrupt(path: &str, message: String) -> CodecError {
    CodecError::Corrupt {
        path: path.to_string(),
        message,
    }
}

/// Folds a chain of state files (a full file first, then deltas, oldest first) into one full
/// file that restores exactly what the chain restores: the newest version of each trip, without
/// the trips a tombstone removed. Deterministic (same chain, same bytes). See [`Fold`].
pub fn compact<B: AsRef<[u8]>>(files: &[(String, B)]) -> Result<Vec<u8>, CodecError> {
    let mut fold = Fold::default();
    for (i, (path, bytes)) in files.iter().enumerate().rev() {
        fold.add(path, bytes.as_ref(), i == 0)?;
    }
    Ok(fold.finish())
}

/// Bytes kept before a fold's records for its header: a `u32`, a `bool` and a `usize` as
/// varints take at most 5 + 1 + 10; the rest leaves room for the trailing length without a
/// reallocation.
const HEADER_ROOM: usize = 24;

/// A fold fed newest file first, one at a time: memory is the output, the set of trip ids
/// decided so far and the file being read, never the whole chain decoded. Runs off the
/// barrier (`crate::checkpoint::fold`).
#[derive(Default)]
pub struct Fold {
    decided: std::collections::HashSet<String, foldhash::fast::FixedState>,
    body: Vec<u8>,
    count: usize,
}

impl Fold {
    /// Adds the next older file of the chain (`oldest`: the chain's first, full file).
    pub fn add(&mut self, path: &str, bytes: &[u8], oldest: bool) -> Result<(), CodecError> {
        use std::collections::HashSet;
        let corrupt = |message: String| CodecError::Corrupt {
            path: path.to_string(),
            message,
        };
        let take_err = |e: postcard::Error| corrupt(e.to_string());
        let (format, rest) = postcard::take_from_bytes::<u32>(bytes).map_err(take_err)?;
        if format != 1 && format != STATE_FORMAT {
            return Err(corrupt(format!(
                "format {format} is not supported by this build (reads 1 to {STATE_FORMAT})"
            )));
        }
        let (full, rest) = postcard::take_from_bytes::<bool>(rest).map_err(take_err)?;
        if oldest != full {
            return Err(corrupt(
                "a state chain must be one full file followed by deltas".into(),
            ));
        }
        let (n, trips) = postcard::take_from_bytes::<usize>(rest).map_err(take_err)?;
        // Pass 1: skip the trips to reach this file's tombstones (applied after its trips).
        let mut rest = trips;
        for _ in 0..n {
            rest = postcard::take_from_bytes::<TripRecord>(rest)
                .map_err(take_err)?
                .1;
        }
        let removed: Vec<String> = if format == 1 {
            Vec::new()
        } else {
            postcard::from_bytes(rest).map_err(take_err)?
        };
        let removed: HashSet<String> = removed.into_iter().collect();
        if self.body.is_empty() {
            // Room for the header, written in place by `finish` (no copy of the body).
            self.body.resize(HEADER_ROOM, 0);
        }
        if oldest {
            // The full file is most of the output: one allocation of the right size rather
            // than doublings (each of which holds the old and the new buffer at once).
            self.body.reserve_exact(trips.len());
        }
        // Pass 2: a trip no newer file decided and this file did not remove is kept.
        let mut rest = trips;
        for _ in 0..n {
            let (r, more) = postcard::take_from_bytes::<TripRecord>(rest).map_err(take_err)?;
            rest = more;
            if removed.contains(&r.trip_id) || self.decided.contains(&r.trip_id) {
                continue;
            }
            self.body =
                postcard::to_extend(&r, std::mem::take(&mut self.body)).map_err(take_err)?;
            self.count += 1;
            if !oldest {
                // Nothing older than the full file is read: its trips need no memory.
                self.decided.insert(r.trip_id);
            }
        }
        self.decided.extend(removed);
        Ok(())
    }

    /// Adds the chain's full file (its oldest, the last added) read chunk by chunk from
    /// `next` (`None`: the end): one chunk and one record in memory at a time, not the file.
    /// A full file carries no tombstones; one that does is refused as corrupt. `len`: the
    /// file's size, the most it adds to the output (reserved at once: no doubling).
    pub fn add_full_chunks(
        &mut self,
        path: &str,
        len: usize,
        next: impl FnMut() -> Result<Option<bytes::Bytes>, CodecError>,
    ) -> Result<(), CodecError> {
        let mut r = ChunkReader {
            path,
            buf: Vec::new(),
            at: 0,
            next,
            ended: false,
        };
        let format: u32 = r.take()?;
        if format != 1 && format != STATE_FORMAT {
            return Err(corrupt(
                path,
                format!(
                    "format {format} is not supported by this build (reads 1 to {STATE_FORMAT})"
                ),
            ));
        }
        if !r.take::<bool>()? {
            let message = "a state chain must be one full file followed by deltas".into();
            return Err(corrupt(path, message));
        }
        let n: usize = r.take()?;
        if self.body.is_empty() {
            self.body.resize(HEADER_ROOM, 0);
        }
        self.body.reserve_exact(len);
        for _ in 0..n {
            let t: TripRecord = r.take()?;
            if self.decided.contains(&t.trip_id) {
                continue;
            }
            let body = std::mem::take(&mut self.body);
            self.body = postcard::to_extend(&t, body).map_err(|e| corrupt(path, e.to_string()))?;
            self.count += 1;
        }
        if format != 1 {
            let evicted: Vec<String> = r.take()?;
            if !evicted.is_empty() {
                let message = format!("a full file lists {} tombstones", evicted.len());
                return Err(corrupt(path, message));
            }
        }
        Ok(())
    }

    /// The full file.
    pub fn finish(self) -> Vec<u8> {
        // The fields of a full `StateFile`, in order: format, full, trips (length + records),
        // evicted (empty). The header goes into the room left before the records, and the
        // records move down over what is left of it: the file is built in the body's buffer.
        let header =
            postcard::to_stdvec(&(STATE_FORMAT, true, self.count)).expect("header encodes");
        let mut body = self.body;
        if body.is_empty() {
            body.resize(HEADER_ROOM, 0);
        }
        let start = HEADER_ROOM - header.len();
        body[start..HEADER_ROOM].copy_from_slice(&header);
        body.drain(..start);
        body.extend(postcard::to_stdvec(&0usize).expect("length encodes"));
        body
    }
}

/// Decodes records from a file read in chunks, pulling the next chunk when a record does not
/// fit in what is buffered.
struct ChunkReader<'p, F> {
    path: &'p str,
    buf: Vec<u8>,
    at: usize,
    next: F,
    ended: bool,
}

impl<F: FnMut() -> Result<Option<bytes::Bytes>, CodecError>> ChunkReader<'_, F> {
    fn take<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, CodecError> {
        // Every pass either decodes, fails, or consumes a chunk; a stream ends.
        loop {
            match postcard::take_from_bytes::<T>(&self.buf[self.at..]) {
                Ok((value, rest)) => {
                    self.at = self.buf.len() - rest.len();
                    return Ok(value);
                }
                Err(postcard::Error::DeserializeUnexpectedEnd) if !self.ended => {
                    self.buf.drain(..self.at);
                    self.at = 0;
                    match (self.next)()? {
                        Some(chunk) => self.buf.extend_from_slice(&chunk),
                        None => self.ended = true,
                    }
                }
                Err(e) => return Err(corrupt(self.path, e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests;
