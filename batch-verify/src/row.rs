//! The compact rows that travel through the spill files: events, dead letters, balances and
//! positions, as both the truth and the lakehouse describe them.
//!
//! Fields a corrupted lakehouse row could hold wrongly (currency, event type) are kept in a
//! form that can represent any value, so a bad row becomes a finding, never a crash. Money is
//! the unscaled integer of `decimal(18, 3)` ([`recon_schemas::money`]): exact, and small.

use recon_schemas::event::{Event, EventType};
use recon_schemas::money;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a record sits on Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Which topic: 0 is the one the job reads now, `n` the one it read before its last `n`
    /// accepted topic resets ([`crate::epochs`]); positions of different topics never clash.
    pub topics_ago: u32,
}

impl Position {
    /// A position in the topic the job reads now.
    pub fn new(partition: i32, offset: i64) -> Position {
        Position {
            partition,
            offset,
            topics_ago: 0,
        }
    }

    /// The order the job read records in: older topics first (a topic reset starts offsets
    /// over), then partition and offset. Not the derived `Ord`, which compares offsets first.
    pub fn log_order(&self) -> (std::cmp::Reverse<u32>, i32, i64) {
        (
            std::cmp::Reverse(self.topics_ago),
            self.partition,
            self.offset,
        )
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)?;
        if self.topics_ago > 0 {
            write!(f, " (topic of {} reset(s) ago)", self.topics_ago)?;
        }
        Ok(())
    }
}

/// Code of an unknown event type in [`EventRow::event_type`].
pub const UNKNOWN_TYPE: u8 = u8::MAX;

/// One event, as a truth source or a `ledger_events` row states it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// Idempotency key.
    pub event_id: Uuid,
    /// Index into [`EventType::ALL`], or [`UNKNOWN_TYPE`].
    pub event_type: u8,
    /// Trip.
    pub trip_id: String,
    /// Amount, unscaled at [`money::SCALE`].
    pub amount: i64,
    /// Currency code as stored (may be invalid on a corrupted row).
    pub currency: String,
    /// Business time, microseconds since the epoch (UTC).
    pub occurred_at_us: i64,
    /// [`extra_digest`] of the rider, driver, payment and payout ids and the envelope version:
    /// compared, never displayed, so they need not travel through the spill files.
    pub extra: u64,
}

/// Digest of the fields of an event that are only ever compared: the four optional ids (with
/// their presence) and `schema_version`.
pub fn extra_digest(ids: [Option<&str>; 4], schema_version: i32) -> u64 {
    let mut bytes = Vec::with_capacity(96);
    for id in ids {
        match id {
            None => bytes.push(0),
            Some(s) => {
                bytes.push(1);
                bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
                bytes.extend_from_slice(s.as_bytes());
            }
        }
    }
    bytes.extend_from_slice(&schema_version.to_le_bytes());
    recon_schemas::event::fnv1a64(&bytes)
}

impl EventRow {
    /// The row of a valid event. `None` if the amount does not fit the money column.
    pub fn from_event(e: &Event) -> Option<EventRow> {
        let amount = i64::try_from(money::to_unscaled(e.amount)?).ok()?;
        Some(EventRow {
            event_id: e.event_id,
            event_type: type_code(e.event_type),
            trip_id: e.trip_id.clone(),
            amount,
            currency: e.currency.code().to_string(),
            occurred_at_us: e.occurred_at.timestamp_micros(),
            extra: extra_digest(
                [
                    e.rider_id.as_deref(),
                    e.driver_id.as_deref(),
                    e.payment_id.as_deref(),
                    e.payout_id.as_deref(),
                ],
                e.schema_version,
            ),
        })
    }

    /// The event type's wire name, or `"?"`.
    pub fn type_name(&self) -> &'static str {
        EventType::ALL
            .get(usize::from(self.event_type))
            .map_or("?", EventType::as_str)
    }

    /// The amount as a decimal string at scale 3.
    pub fn amount_text(&self) -> String {
        money::from_unscaled(i128::from(self.amount)).map_or_else(|| "?".into(), |d| d.to_string())
    }
}

/// Index of `t` in [`EventType::ALL`].
pub fn type_code(t: EventType) -> u8 {
    EventType::ALL
        .iter()
        .position(|x| *x == t)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(UNKNOWN_TYPE)
}

/// The code of a wire name, or [`UNKNOWN_TYPE`].
pub fn type_code_of(name: &str) -> u8 {
    EventType::parse(name).map_or(UNKNOWN_TYPE, type_code)
}

/// Whether a dead letter belongs to the business day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Dated inside the day.
    InDay,
    /// Dated outside the day.
    OutOfDay,
    /// No readable date; only a Kafka truth (record timestamps) can place it.
    Undated,
}

/// How a truth dead letter and a lakehouse dead letter are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchKey {
    /// By Kafka position (the truth knows it: Kafka).
    Position(Position),
    /// By digest of key and payload (the truth does not know positions: files, PostgreSQL).
    Digest([u8; 16]),
}

/// Which side a row comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// The source of truth.
    Truth,
    /// The lakehouse.
    Lake,
}

/// One dead letter (a bad record, or the second version of a conflicting duplicate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectRow {
    /// Truth or lakehouse.
    pub side: Side,
    /// Pairing key.
    pub key: MatchKey,
    /// Reason code (`RejectReason::as_str`, or `conflicting_duplicate`).
    pub reason: String,
    /// Event id, where one could be read.
    pub event_id: Option<String>,
    /// Trip id, where one could be read.
    pub trip_id: Option<String>,
    /// Kafka position, where known.
    pub position: Option<Position>,
    /// Digest of key and payload.
    pub digest: [u8; 16],
    /// Whether it belongs to the day.
    pub scope: Scope,
}

/// The digest that pairs dead letters by content: SHA-256 of the key (with its presence) and
/// the payload, cut to 128 bits.
pub fn reject_digest(key: Option<&[u8]>, payload: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match key {
        None => h.update([0u8]),
        Some(k) => {
            h.update([1u8]);
            h.update((k.len() as u64).to_le_bytes());
            h.update(k);
        }
    }
    h.update(payload);
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// One `trip_balances` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceRow {
    /// Trip.
    pub trip_id: String,
    /// Currency code.
    pub currency: String,
    /// charged, collected, refunded, paid_out, fees, adjusted (unscaled).
    pub sums: [i64; 6],
    /// `status`.
    pub status: String,
    /// `discrepancy_reason`.
    pub reason: Option<String>,
    /// `event_count`.
    pub event_count: i32,
    /// `last_occurred_at` in microseconds.
    pub last_occurred_at_us: i64,
    /// `checkpoint_id`: the latest per trip is current.
    pub checkpoint_id: i64,
}

/// Names of [`BalanceRow::sums`], in order.
pub const SUM_NAMES: [&str; 6] = [
    "charged",
    "collected",
    "refunded",
    "paid_out",
    "fees",
    "adjusted",
];

/// Items of the event-id spill: every version of an event id from both sides.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EventItem {
    /// A truth version; `order` is its place in the truth (Kafka position, or seq).
    Truth {
        /// The event.
        row: EventRow,
        /// Kafka position, when the truth knows it.
        position: Option<Position>,
        /// Order among versions: first seen wins.
        order: (i32, i64),
    },
    /// A `ledger_events` row of the day.
    Ledger {
        /// The event.
        row: EventRow,
        /// Its Kafka position.
        position: Position,
        /// The checkpoint that committed it.
        checkpoint_id: i64,
    },
    /// A conflicting-duplicate dead letter from the lakehouse (Kafka mode: paired here with the
    /// truth's later versions).
    Conflict(RejectRow),
}

/// Items of the trip spill.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TripItem {
    /// A ledger row of a trip.
    Ledger {
        /// The event.
        row: EventRow,
        /// Its Kafka position (log order for the fold).
        position: Position,
    },
    /// A balance row.
    Balance(BalanceRow),
    /// An event the job dead-lettered as `balance_overflow` (decoded from the `rejected_events`
    /// payload): the fold must refuse it at this position too.
    Refused {
        /// The event.
        row: EventRow,
        /// Its Kafka position.
        position: Position,
    },
}

/// The borrowed form of [`TripItem::Ledger`]: encodes to the same bytes, so a ledger row can be
/// spilled to the trip family without a copy (see the round-trip test).
#[derive(Clone, Debug, Serialize)]
pub enum TripItemRef<'a> {
    /// As [`TripItem::Ledger`].
    Ledger {
        /// The event.
        row: &'a EventRow,
        /// Its Kafka position.
        position: Position,
    },
}

/// Items of the position spill: who claims a Kafka position in the lakehouse.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PositionItem {
    /// The position.
    pub position: Position,
    /// The ledger row's event id, or `None` for a dead letter.
    pub event_id: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use recon_schemas::currency::Currency;
    use std::str::FromStr;

    #[test]
    fn event_row_round_trip() {
        let e = Event {
            event_id: Uuid::from_str("6f1c1b5e-8a43-4f0e-9d6b-2a7c6f0b9e11").unwrap(),
            event_type: EventType::Refund,
            trip_id: "t".into(),
            amount: rust_decimal::Decimal::from_str("12.3").unwrap(),
            currency: Currency::KWD,
            occurred_at: DateTime::from_timestamp_micros(1_741_000_000_123_456).unwrap(),
            rider_id: Some("r".into()),
            driver_id: None,
            payment_id: None,
            payout_id: Some("p".into()),
            schema_version: 1,
        };
        let row = EventRow::from_event(&e).unwrap();
        assert_eq!(row.amount, 12_300);
        assert_eq!(row.type_name(), "refund");
        assert_eq!(
            (row.currency.as_str(), row.occurred_at_us, row.amount_text()),
            ("KWD", 1_741_000_000_123_456, "12.300".to_string())
        );
        let mut other = e.clone();
        other.driver_id = Some("d".into());
        assert_ne!(EventRow::from_event(&other).unwrap().extra, row.extra);
        let bytes = postcard::to_stdvec(&row).unwrap();
        assert_eq!(postcard::from_bytes::<EventRow>(&bytes).unwrap(), row);
    }

    #[test]
    fn borrowed_trip_item_encodes_as_the_owned_one() {
        let row = EventRow {
            event_id: Uuid::from_u128(7),
            event_type: 2,
            trip_id: "t".into(),
            amount: 5,
            currency: "USD".into(),
            occurred_at_us: 1,
            extra: 9,
        };
        let position = Position::new(1, 2);
        let bytes = postcard::to_stdvec(&TripItemRef::Ledger {
            row: &row,
            position,
        })
        .unwrap();
        match postcard::from_bytes::<TripItem>(&bytes).unwrap() {
            TripItem::Ledger {
                row: r,
                position: p,
            } => assert_eq!((r, p), (row, position)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn digest_tells_missing_key_from_empty_key() {
        assert_ne!(reject_digest(None, b"x"), reject_digest(Some(b""), b"x"));
        assert_ne!(
            reject_digest(Some(b"a"), b"bc"),
            reject_digest(Some(b"ab"), b"c")
        );
    }
}
