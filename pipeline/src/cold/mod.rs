//! The cold tier: where trips that left memory are kept, and how they come back.
//!
//! [`State::evict`](crate::state::State::evict) takes settled and idle trips out of memory at a
//! barrier; the job writes them into an immutable *run* (`runs`) on the checkpoint store, listed
//! by the checkpoint's manifest with the rest of its state. Before an event is applied,
//! [`bring_back`] asks the cold tier for the event's trip and for the trip holding its event id,
//! when memory lacks them, so every decision (duplicate, conflict, overflow, the job-wide id
//! rule) is taken on the state it would have had if nothing had left memory.
//!
//! Lookups go through [`ColdLookup`]; the run-backed tier answers "certainly absent" from
//! in-memory Bloom filters for almost every event, so a brand-new trip costs no I/O.

pub mod memory;
pub mod merge;
pub mod runs;
pub mod split;

use recon_schemas::event::Event;

use crate::state::codec::{self, CodecError};
use crate::state::evict::trip_key;
use crate::state::{State, event_key};

/// A failure reading the cold tier.
#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    /// A record or run did not decode (its checksum or format is wrong).
    #[error(
        "the cold tier is corrupt: {0}; restore the checkpoint store's files or rewind to a checkpoint before them"
    )]
    Corrupt(String),
    /// The store did not answer.
    #[error("cannot read the cold tier: {0}")]
    Io(String),
}

impl From<CodecError> for ColdError {
    fn from(e: CodecError) -> Self {
        ColdError::Corrupt(e.to_string())
    }
}

/// Read access to the trips that left memory.
#[allow(async_fn_in_trait)]
pub trait ColdLookup {
    /// The records stored under a trip key, newest first, each with a name for errors. A key
    /// can hold several trips (a hash collision): the caller compares the ids.
    async fn trip_records(&mut self, key: u64) -> Result<Vec<(String, Vec<u8>)>, ColdError>;
    /// The trip keys recorded as holding an event key (a superset: a caller checks the record).
    async fn id_holders(&mut self, event_key: u64) -> Result<Vec<u64>, ColdError>;
}

/// What [`bring_back`] did, for counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Brought {
    /// The event's own trip came back.
    pub trip: bool,
    /// The trip holding the event's id came back (another trip, or the same one).
    pub holder: bool,
}

/// Brings back, before `ev` is applied, its trip and the trip holding its event id, when
/// memory lacks them and the cold tier has them.
pub async fn bring_back(
    state: &mut State,
    cold: &mut impl ColdLookup,
    ev: &Event,
) -> Result<Brought, ColdError> {
    let mut brought = Brought::default();
    if !state.is_hot(&ev.trip_id) {
        for (name, rec) in cold.trip_records(trip_key(&ev.trip_id)).await? {
            let (id, ..) = codec::decode_trip(&name, &rec)?;
            if id == ev.trip_id {
                brought.trip = state.rehydrate(&name, &rec)?;
                break;
            }
        }
    }
    let key = event_key(&ev.event_id);
    if !state.holds_id(key) {
        'holders: for holder in cold.id_holders(key).await? {
            // Only a trip's newest record counts: an older one may hold ids the trip has
            // since forgotten (it closed beyond the horizon).
            let mut trips: Vec<String> = Vec::new();
            for (name, rec) in cold.trip_records(holder).await? {
                let (id, _, seen, _) = codec::decode_trip(&name, &rec)?;
                if trips.contains(&id) {
                    continue;
                }
                trips.push(id.clone());
                // A trip in memory answers for itself: had it held the id, memory would have
                // said so above. Its cold record may be older than memory (it let the id go
                // to a later trip since), so it is no evidence: look further.
                if state.is_hot(&id) {
                    continue;
                }
                if seen.iter().any(|(k, _)| *k == key) {
                    brought.holder |= state.rehydrate(&name, &rec)?;
                    break 'holders;
                }
            }
        }
    }
    Ok(brought)
}

#[cfg(test)]
mod tests;
