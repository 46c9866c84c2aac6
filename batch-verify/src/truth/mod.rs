//! Sources of truth: what the upstream says happened on the day, read into the spill files.
//!
//! - [`kafka`]: the topic itself, committed records only, the day's offset window found by
//!   timestamp with a safety margin; it knows every record's position, so dead letters pair by
//!   position and exact re-sends and conflicting versions are told apart here, as the pipeline
//!   does (first seen in log order wins).
//! - [`postgres`]: the upstream payments ledger, by a configurable query.
//! - [`files`]: Parquet or JSON Lines exports (the generator's truth formats) on a local
//!   directory or any `object_store` URL.
//!
//! Each source pushes rows into a [`TruthSink`], which routes them to the right bucket and
//! enforces the record limit.

pub mod files;
pub mod kafka;
pub mod postgres;

use chrono::{DateTime, Utc};

use crate::day::{BusinessDay, payload_time};
use crate::error::{Result, VerifyError};
use crate::row::{EventItem, EventRow, MatchKey, Position, RejectRow, Scope, Side, reject_digest};
use crate::spill::{SpillWriter, hash_bytes};

/// What a truth source read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TruthStats {
    /// Records (or rows) read.
    pub records: u64,
    /// Event versions pushed.
    pub events: u64,
    /// Dead letters pushed.
    pub rejects: u64,
}

/// Receives the truth's rows and spills them by bucket.
pub struct TruthSink {
    /// Event versions, by event id.
    pub events: SpillWriter<EventItem>,
    /// Dead letters, by match key.
    pub rejects: SpillWriter<RejectRow>,
    /// The day.
    pub day: BusinessDay,
    /// Counts.
    pub stats: TruthStats,
    /// Most records accepted.
    pub records_max: u64,
    /// Which source, for errors.
    pub source_name: &'static str,
}

impl TruthSink {
    /// Counts one record read; fails past the limit.
    pub fn record(&mut self) -> Result<()> {
        self.stats.records += 1;
        if self.stats.records > self.records_max {
            return Err(VerifyError::Limit {
                limit: "--truth-records-max",
                value: self.records_max,
                message: format!(
                    "the {} truth holds more records than allowed; raise the limit if the day really is that large",
                    self.source_name
                ),
            });
        }
        Ok(())
    }

    /// Pushes one event version. `order` ranks versions of one id: first seen wins.
    pub fn event(
        &mut self,
        row: EventRow,
        position: Option<Position>,
        order: (i32, i64),
    ) -> Result<()> {
        self.stats.events += 1;
        let hash = hash_bytes(row.event_id.as_bytes());
        self.events.push(
            hash,
            &EventItem::Truth {
                row,
                position,
                order,
            },
        )
    }

    /// Pushes one dead letter. `record_time` is the Kafka timestamp, when the source knows it:
    /// it dates a dead letter whose payload carries no readable `occurred_at`.
    #[allow(clippy::too_many_arguments)]
    pub fn reject(
        &mut self,
        reason: &str,
        event_id: Option<String>,
        trip_id: Option<String>,
        key: Option<&[u8]>,
        payload: &[u8],
        position: Option<Position>,
        record_time: Option<DateTime<Utc>>,
    ) -> Result<()> {
        self.stats.rejects += 1;
        let digest = reject_digest(key, payload);
        let scope = scope_of(&self.day, payload, record_time);
        let key = match position {
            Some(p) => MatchKey::Position(p),
            None => MatchKey::Digest(digest),
        };
        let row = RejectRow {
            side: Side::Truth,
            key,
            reason: reason.to_string(),
            event_id,
            trip_id,
            position,
            digest,
            scope,
        };
        self.rejects.push(match_hash(&key), &row)
    }
}

/// Dates a dead letter: by the `occurred_at` its payload carries, else by `record_time`.
pub fn scope_of(day: &BusinessDay, payload: &[u8], record_time: Option<DateTime<Utc>>) -> Scope {
    match payload_time(payload).or(record_time) {
        Some(t) if day.contains(t) => Scope::InDay,
        Some(_) => Scope::OutOfDay,
        None => Scope::Undated,
    }
}

/// The bucket hash of a dead letter's match key.
pub fn match_hash(key: &MatchKey) -> u64 {
    match key {
        MatchKey::Position(p) => position_hash(*p),
        MatchKey::Digest(d) => u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8])),
    }
}

/// The bucket hash of a Kafka position.
pub fn position_hash(p: Position) -> u64 {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&p.partition.to_le_bytes());
    bytes[4..].copy_from_slice(&p.offset.to_le_bytes());
    hash_bytes(&bytes)
}
