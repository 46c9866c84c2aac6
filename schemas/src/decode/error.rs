//! The error classes of [`super::decode`]: [`DecodeError`] carries the offending values,
//! [`RejectReason`] is its stable, label-safe class.

use rust_decimal::Decimal;
use thiserror::Error;

/// Why a payload was rejected. Every variant carries the offending value or field.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Payload larger than [`super::Limits::payload_bytes_max`]; checked before parsing.
    #[error("payload is {size_bytes} bytes, over the limit of {limit_bytes} bytes")]
    PayloadTooLarge {
        /// Payload size.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// Payload is not valid UTF-8.
    #[error("payload is not UTF-8: invalid byte at offset {offset}")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// Payload is not JSON.
    #[error("payload is not JSON: {detail}")]
    NotJson {
        /// The parser's message (line and column).
        detail: String,
    },
    /// Payload is JSON but not an object.
    #[error("payload is JSON {found}, expected an object")]
    NotObject {
        /// The JSON kind found (`array`, `string`, ...).
        found: &'static str,
    },
    /// The same key appears twice in the object; which one counts would be ambiguous.
    #[error("field {field:?} appears more than once")]
    DuplicateField {
        /// The repeated field.
        field: String,
    },
    /// A required field is absent.
    #[error("field {field:?} is missing")]
    MissingField {
        /// The absent field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field {field:?}: expected {expected}, found {found}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The JSON type required.
        expected: &'static str,
        /// The JSON type found (with the value when short).
        found: String,
    },
    /// `event_type` is not one of the six known types.
    #[error("field \"event_type\": unknown event type {value:?}")]
    UnknownEventType {
        /// The value found.
        value: String,
    },
    /// `event_id` is not a hyphenated UUID.
    #[error("field \"event_id\": {value:?} is not a hyphenated UUID")]
    InvalidEventId {
        /// The value found.
        value: String,
    },
    /// An id field is the empty string.
    #[error("field {field:?} is empty")]
    EmptyId {
        /// The field.
        field: &'static str,
    },
    /// An id field is longer than [`super::Limits::id_bytes_max`].
    #[error("field {field:?} is {size_bytes} bytes, over the limit of {limit_bytes} bytes")]
    IdTooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// `amount` is not a plain decimal string (`digits[.digits]`).
    #[error("field \"amount\": {value:?} is not a decimal string like \"12.34\"")]
    InvalidAmount {
        /// The value found.
        value: String,
    },
    /// `amount` is negative; the event type carries the direction.
    #[error("field \"amount\": {value:?} is negative; amounts must be >= 0")]
    NegativeAmount {
        /// The value found.
        value: String,
    },
    /// `amount` has more decimals than the currency's minor units.
    #[error(
        "field \"amount\": {value:?} has {decimals} decimals but {currency} allows {minor_units}"
    )]
    AmountScale {
        /// The value found.
        value: String,
        /// Its number of decimals.
        decimals: u32,
        /// The event's currency code.
        currency: &'static str,
        /// The currency's minor units.
        minor_units: u32,
    },
    /// `amount` has more integer digits than the money column holds.
    #[error("field \"amount\": {value:?} exceeds the largest storable amount {max}")]
    AmountOverflow {
        /// The value found.
        value: String,
        /// The largest storable amount.
        max: Decimal,
    },
    /// `currency` is not a supported ISO 4217 code.
    #[error("field \"currency\": unknown currency {value:?} (upper-case ISO 4217 code expected)")]
    UnknownCurrency {
        /// The value found.
        value: String,
    },
    /// `occurred_at` is not an RFC 3339 timestamp.
    #[error("field \"occurred_at\": {value:?} is not an RFC 3339 timestamp: {detail}")]
    InvalidTimestamp {
        /// The value found.
        value: String,
        /// The parser's message.
        detail: String,
    },
    /// `occurred_at` is outside 2000-01-01 .. 2100-01-01 (UTC).
    #[error(
        "field \"occurred_at\": {value:?} is outside 2000-01-01T00:00:00Z..2100-01-01T00:00:00Z"
    )]
    TimestampOutOfRange {
        /// The value found.
        value: String,
    },
    /// `schema_version` is not one this decoder understands.
    #[error(
        "field \"schema_version\": version {version} is not supported (supported: {supported})"
    )]
    UnsupportedSchemaVersion {
        /// The version found.
        version: i64,
        /// The supported version.
        supported: i32,
    },
    /// The Kafka key is not the event's `trip_id`.
    #[error("Kafka key {key:?} does not match field \"trip_id\" {trip_id:?}")]
    KeyMismatch {
        /// The key (lossy UTF-8).
        key: String,
        /// The event's trip id.
        trip_id: String,
    },
}

/// `rejected_events.reason` of a record that decoded, but whose event id was seen before with
/// other content: the first version stands and the trip is flagged.
pub const CONFLICTING_DUPLICATE: &str = "conflicting_duplicate";

/// `rejected_events.reason` of a record that decoded, but whose amount would take one of its
/// trip's sums or balances beyond `decimal(18,3)`
/// ([`Applied::Overflow`](crate::balance::Applied::Overflow)): not summed, the trip's balance
/// unchanged, the rest of the stream flows.
pub const BALANCE_OVERFLOW: &str = "balance_overflow";

/// `rejected_events.reason` of a record that decoded, but whose event id the job already
/// accepted on another trip: an event id is one event across the whole job, so the first trip
/// to carry it keeps it and every copy on another trip is dead-lettered (neither trip's balance
/// changes). Which trip is first follows the order the job read its partitions in.
pub const EVENT_ID_REUSED: &str = "event_id_reused";

/// `rejected_events.reason` of a record that decoded, but that came later than the job's
/// configured horizon (`[state] late_horizon_ms`): its `occurred_at` is older than the
/// horizon behind the newest event the job accepted, or its trip had no event for longer than
/// the horizon (the trip is closed; its state may be gone). Not summed, not dropped: every
/// such record is here, and batch-verify counts them.
pub const BEYOND_HORIZON: &str = "beyond_horizon";

/// Reasons of records that decoded but whose event was not applied; with [`RejectReason::ALL`]
/// (the decoding errors), every reason a `rejected_events` row can carry.
pub const EVENT_REASONS: [&str; 4] = [
    CONFLICTING_DUPLICATE,
    BALANCE_OVERFLOW,
    EVENT_ID_REUSED,
    BEYOND_HORIZON,
];

/// Every `rejected_events.reason` code: the decoding errors, then [`EVENT_REASONS`].
pub fn every_reason() -> impl Iterator<Item = &'static str> {
    RejectReason::ALL
        .iter()
        .map(RejectReason::as_str)
        .chain(EVENT_REASONS)
}

/// Stable class of a [`DecodeError`], written to `rejected_events.reason` and used as a metric
/// label. Codes never change meaning; new classes get new codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// See [`DecodeError::PayloadTooLarge`].
    PayloadTooLarge,
    /// See [`DecodeError::NotUtf8`].
    NotUtf8,
    /// See [`DecodeError::NotJson`].
    NotJson,
    /// See [`DecodeError::NotObject`].
    NotObject,
    /// See [`DecodeError::DuplicateField`].
    DuplicateField,
    /// See [`DecodeError::MissingField`].
    MissingField,
    /// See [`DecodeError::WrongType`].
    WrongType,
    /// See [`DecodeError::UnknownEventType`].
    UnknownEventType,
    /// See [`DecodeError::InvalidEventId`].
    InvalidEventId,
    /// See [`DecodeError::EmptyId`].
    EmptyId,
    /// See [`DecodeError::IdTooLong`].
    IdTooLong,
    /// See [`DecodeError::InvalidAmount`].
    InvalidAmount,
    /// See [`DecodeError::NegativeAmount`].
    NegativeAmount,
    /// See [`DecodeError::AmountScale`].
    AmountScale,
    /// See [`DecodeError::AmountOverflow`].
    AmountOverflow,
    /// See [`DecodeError::UnknownCurrency`].
    UnknownCurrency,
    /// See [`DecodeError::InvalidTimestamp`].
    InvalidTimestamp,
    /// See [`DecodeError::TimestampOutOfRange`].
    TimestampOutOfRange,
    /// See [`DecodeError::UnsupportedSchemaVersion`].
    UnsupportedSchemaVersion,
    /// See [`DecodeError::KeyMismatch`].
    KeyMismatch,
}

impl RejectReason {
    /// Every reason, for metric pre-registration and docs.
    pub const ALL: [RejectReason; 20] = [
        RejectReason::PayloadTooLarge,
        RejectReason::NotUtf8,
        RejectReason::NotJson,
        RejectReason::NotObject,
        RejectReason::DuplicateField,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::UnknownEventType,
        RejectReason::InvalidEventId,
        RejectReason::EmptyId,
        RejectReason::IdTooLong,
        RejectReason::InvalidAmount,
        RejectReason::NegativeAmount,
        RejectReason::AmountScale,
        RejectReason::AmountOverflow,
        RejectReason::UnknownCurrency,
        RejectReason::InvalidTimestamp,
        RejectReason::TimestampOutOfRange,
        RejectReason::UnsupportedSchemaVersion,
        RejectReason::KeyMismatch,
    ];

    /// Stable snake_case code.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::PayloadTooLarge => "payload_too_large",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::NotJson => "not_json",
            RejectReason::NotObject => "not_object",
            RejectReason::DuplicateField => "duplicate_field",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::InvalidEventId => "invalid_event_id",
            RejectReason::EmptyId => "empty_id",
            RejectReason::IdTooLong => "id_too_long",
            RejectReason::InvalidAmount => "invalid_amount",
            RejectReason::NegativeAmount => "negative_amount",
            RejectReason::AmountScale => "amount_scale",
            RejectReason::AmountOverflow => "amount_overflow",
            RejectReason::UnknownCurrency => "unknown_currency",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::UnsupportedSchemaVersion => "unsupported_schema_version",
            RejectReason::KeyMismatch => "key_mismatch",
        }
    }
}

impl DecodeError {
    /// The stable class of this error.
    pub fn reason(&self) -> RejectReason {
        match self {
            DecodeError::PayloadTooLarge { .. } => RejectReason::PayloadTooLarge,
            DecodeError::NotUtf8 { .. } => RejectReason::NotUtf8,
            DecodeError::NotJson { .. } => RejectReason::NotJson,
            DecodeError::NotObject { .. } => RejectReason::NotObject,
            DecodeError::DuplicateField { .. } => RejectReason::DuplicateField,
            DecodeError::MissingField { .. } => RejectReason::MissingField,
            DecodeError::WrongType { .. } => RejectReason::WrongType,
            DecodeError::UnknownEventType { .. } => RejectReason::UnknownEventType,
            DecodeError::InvalidEventId { .. } => RejectReason::InvalidEventId,
            DecodeError::EmptyId { .. } => RejectReason::EmptyId,
            DecodeError::IdTooLong { .. } => RejectReason::IdTooLong,
            DecodeError::InvalidAmount { .. } => RejectReason::InvalidAmount,
            DecodeError::NegativeAmount { .. } => RejectReason::NegativeAmount,
            DecodeError::AmountScale { .. } => RejectReason::AmountScale,
            DecodeError::AmountOverflow { .. } => RejectReason::AmountOverflow,
            DecodeError::UnknownCurrency { .. } => RejectReason::UnknownCurrency,
            DecodeError::InvalidTimestamp { .. } => RejectReason::InvalidTimestamp,
            DecodeError::TimestampOutOfRange { .. } => RejectReason::TimestampOutOfRange,
            DecodeError::UnsupportedSchemaVersion { .. } => RejectReason::UnsupportedSchemaVersion,
            DecodeError::KeyMismatch { .. } => RejectReason::KeyMismatch,
        }
    }
}
