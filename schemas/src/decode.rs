//! The validating decoder: Kafka key + JSON payload -> [`Event`], or one typed error per class
//! of bad input ([`DecodeError`], classified by [`RejectReason`]).
//!
//! Checks run in a fixed order, so the reported class is deterministic:
//!
//! 1. payload size, before any parsing ([`Limits::payload_bytes_max`]);
//! 2. UTF-8, then JSON, then "is an object", then no known field repeated;
//! 3. each field in envelope order: `event_id`, `event_type`, `trip_id`, `amount` (syntax, sign,
//!    integer digits), `currency`, then the amount's decimals against the currency,
//!    `occurred_at`, the optional ids, `schema_version`;
//! 4. the Kafka key against `trip_id`.
//!
//! Rules the schema files state too (`schemas/event.schema.json`):
//!
//! - `amount` is a JSON string matching [`AMOUNT_PATTERN`] (no sign, exponent, leading zeros or
//!   spaces), with at most the currency's minor units of decimals (`"12.30"` and `"12.3"` are
//!   valid USD, `"12.300"` is not) and at most [`money::INTEGER_DIGITS`] integer digits.
//! - `event_id` is a hyphenated UUID (either case); ids are non-empty and at most
//!   [`Limits::id_bytes_max`] bytes.
//! - `occurred_at` is RFC 3339 with an offset, within 2000-01-01T00:00:00Z (inclusive) ..
//!   2100-01-01T00:00:00Z (exclusive); it is converted to UTC and truncated to microseconds,
//!   Iceberg's timestamp precision. The range is fixed, never relative to the clock, so decoding
//!   the same bytes always gives the same answer, in the pipeline and in batch-verify.
//! - Optional fields may be absent or `null`. A required field that is `null` is a wrong type.
//! - Unknown extra fields are accepted and ignored (forward compatibility: a producer may add a
//!   field before consumers know it). A known field given twice is rejected, because which copy
//!   counts would be ambiguous.

mod error;
mod object;

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

pub use self::error::{
    BALANCE_OVERFLOW, BEYOND_HORIZON, CONFLICTING_DUPLICATE, DecodeError, EVENT_ID_REUSED,
    EVENT_REASONS, RejectReason, every_reason,
};
use self::object::TopLevel;
use crate::currency::Currency;
use crate::event::{Event, EventType, SCHEMA_VERSION};
use crate::money;

/// The grammar of `amount`, as a regular expression (also in `event.schema.json`).
pub const AMOUNT_PATTERN: &str = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$";

/// Earliest accepted `occurred_at`: 2000-01-01T00:00:00Z.
pub const OCCURRED_AT_MIN: &str = "2000-01-01T00:00:00Z";
/// First rejected `occurred_at` after the range: 2100-01-01T00:00:00Z.
pub const OCCURRED_AT_END: &str = "2100-01-01T00:00:00Z";

/// Longest value quoted in an error message; longer ones are clipped (the raw payload is kept
/// in the dead-letter table anyway).
const QUOTE_BYTES_MAX: usize = 64;

/// Size limits, checked before values are used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes (default 64 KiB).
    pub payload_bytes_max: usize,
    /// Largest id (`event_id`, `trip_id`, `rider_id`, ...) accepted, in UTF-8 bytes (default 128).
    pub id_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            payload_bytes_max: 64 * 1024,
            id_bytes_max: 128,
        }
    }
}

/// Decodes and validates one Kafka message. `key` is the Kafka key (`None`: no key, accepted);
/// when present it must equal the event's `trip_id` byte for byte.
pub fn decode(key: Option<&[u8]>, payload: &[u8], limits: &Limits) -> Result<Event, DecodeError> {
    let fields = parse_object(payload, limits)?;
    let get = |field| TopLevel::get(&fields, field);

    let event_id = {
        let s = id("event_id", required(get("event_id"), "event_id")?, limits)?;
        parse_uuid(s).ok_or_else(|| DecodeError::InvalidEventId { value: clip(s) })?
    };
    let event_type = {
        let s = string("event_type", required(get("event_type"), "event_type")?)?;
        EventType::parse(s).ok_or_else(|| DecodeError::UnknownEventType { value: clip(s) })?
    };
    let trip_id = id("trip_id", required(get("trip_id"), "trip_id")?, limits)?.to_string();
    let amount_text = string("amount", required(get("amount"), "amount")?)?;
    let decimals = check_amount_syntax(amount_text)?;
    let currency = {
        let s = string("currency", required(get("currency"), "currency")?)?;
        Currency::parse(s).ok_or_else(|| DecodeError::UnknownCurrency { value: clip(s) })?
    };
    let amount = parse_amount(amount_text, decimals, currency)?;
    let occurred_at = parse_timestamp(string(
        "occurred_at",
        required(get("occurred_at"), "occurred_at")?,
    )?)?;
    let optional_id = |field: &'static str| -> Result<Option<String>, DecodeError> {
        match get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(id(field, v, limits)?.to_string())),
        }
    };
    let rider_id = optional_id("rider_id")?;
    let driver_id = optional_id("driver_id")?;
    let payment_id = optional_id("payment_id")?;
    let payout_id = optional_id("payout_id")?;
    let schema_version = parse_schema_version(required(get("schema_version"), "schema_version")?)?;

    if let Some(key) = key
        && key != trip_id.as_bytes()
    {
        return Err(DecodeError::KeyMismatch {
            key: clip(&String::from_utf8_lossy(key)),
            trip_id: clip(&trip_id),
        });
    }

    Ok(Event {
        event_id,
        event_type,
        trip_id,
        amount,
        currency,
        occurred_at,
        rider_id,
        driver_id,
        payment_id,
        payout_id,
        schema_version,
    })
}

/// `event_id` and `trip_id` of a payload, where they can be read even though the payload was
/// rejected: for the dead-letter table's optional columns. Each is a string within the id limit,
/// or `None`; nothing else is validated.
pub fn salvage_ids(payload: &[u8], limits: &Limits) -> (Option<String>, Option<String>) {
    let Ok(fields) = parse_object(payload, limits) else {
        return (None, None);
    };
    let pick = |field| {
        TopLevel::get(&fields, field)
            .and_then(|v| id(field, v, limits).ok())
            .map(str::to_string)
    };
    (pick("event_id"), pick("trip_id"))
}

/// Steps 1 and 2: size, UTF-8, JSON object, no repeated known field.
fn parse_object(
    payload: &[u8],
    limits: &Limits,
) -> Result<Vec<(&'static str, Value)>, DecodeError> {
    if payload.len() > limits.payload_bytes_max {
        return Err(DecodeError::PayloadTooLarge {
            size_bytes: payload.len(),
            limit_bytes: limits.payload_bytes_max,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|e| DecodeError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    match serde_json::from_str::<TopLevel>(text) {
        Err(e) => Err(DecodeError::NotJson {
            detail: e.to_string(),
        }),
        Ok(TopLevel::Other(found)) => Err(DecodeError::NotObject { found }),
        Ok(TopLevel::Object {
            duplicate: Some(field),
            ..
        }) => Err(DecodeError::DuplicateField {
            field: field.to_string(),
        }),
        Ok(TopLevel::Object { fields, .. }) => Ok(fields),
    }
}

fn required<'a>(value: Option<&'a Value>, field: &'static str) -> Result<&'a Value, DecodeError> {
    value.ok_or(DecodeError::MissingField { field })
}

fn string<'a>(field: &'static str, value: &'a Value) -> Result<&'a str, DecodeError> {
    value.as_str().ok_or_else(|| DecodeError::WrongType {
        field,
        expected: "string",
        found: describe(value),
    })
}

/// A string id: non-empty, within [`Limits::id_bytes_max`].
fn id<'a>(field: &'static str, value: &'a Value, limits: &Limits) -> Result<&'a str, DecodeError> {
    let s = string(field, value)?;
    if s.is_empty() {
        return Err(DecodeError::EmptyId { field });
    }
    if s.len() > limits.id_bytes_max {
        return Err(DecodeError::IdTooLong {
            field,
            size_bytes: s.len(),
            limit_bytes: limits.id_bytes_max,
        });
    }
    Ok(s)
}

/// A hyphenated UUID (`8-4-4-4-12` hex digits, either case); other spellings the `uuid` crate
/// accepts (simple, braced, URN) are refused so one event has one spelling.
fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// Checks `amount` against [`AMOUNT_PATTERN`], its sign and integer digits; returns its number
/// of decimals.
fn check_amount_syntax(s: &str) -> Result<u32, DecodeError> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let well_formed =
        digits(int) && (int == "0" || !int.starts_with('0')) && frac.is_none_or(digits);
    if !well_formed {
        return Err(DecodeError::InvalidAmount { value: clip(s) });
    }
    if negative {
        return Err(DecodeError::NegativeAmount { value: clip(s) });
    }
    if int.len() > money::INTEGER_DIGITS as usize {
        return Err(DecodeError::AmountOverflow {
            value: clip(s),
            max: money::max_abs(),
        });
    }
    Ok(frac.map_or(0, |f| u32::try_from(f.len()).unwrap_or(u32::MAX)))
}

/// Checks the decimals of a syntactically valid amount against `currency` and parses it.
fn parse_amount(s: &str, decimals: u32, currency: Currency) -> Result<Decimal, DecodeError> {
    if decimals > currency.minor_units() {
        return Err(DecodeError::AmountScale {
            value: clip(s),
            decimals,
            currency: currency.code(),
            minor_units: currency.minor_units(),
        });
    }
    // At most 15 integer digits and 3 decimals: always exact in a Decimal.
    let amount = Decimal::from_str(s).map_err(|_| DecodeError::InvalidAmount { value: clip(s) })?;
    debug_assert!(money::fits(amount));
    Ok(amount)
}

fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, DecodeError> {
    let parsed = DateTime::parse_from_rfc3339(s).map_err(|e| DecodeError::InvalidTimestamp {
        value: clip(s),
        detail: e.to_string(),
    })?;
    let utc = parsed.with_timezone(&Utc);
    let min = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
    let end = Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).single();
    let in_range = min.is_some_and(|m| utc >= m) && end.is_some_and(|e| utc < e);
    if !in_range {
        return Err(DecodeError::TimestampOutOfRange { value: clip(s) });
    }
    // Iceberg timestamps are microseconds: truncate here so the event equals what is stored.
    DateTime::from_timestamp_micros(utc.timestamp_micros())
        .ok_or_else(|| DecodeError::TimestampOutOfRange { value: clip(s) })
}

fn parse_schema_version(value: &Value) -> Result<i32, DecodeError> {
    let version = value.as_i64().ok_or_else(|| DecodeError::WrongType {
        field: "schema_version",
        expected: "integer",
        found: describe(value),
    })?;
    if version != i64::from(SCHEMA_VERSION) {
        return Err(DecodeError::UnsupportedSchemaVersion {
            version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(SCHEMA_VERSION)
}

/// A JSON value's kind, with the value itself when it is a short scalar: `number 12.5`.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {}", clip(&n.to_string())),
        Value::String(s) => format!("string {:?}", clip(s)),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// `s`, cut to at most [`QUOTE_BYTES_MAX`] bytes at a character boundary, with `…` if cut.
fn clip(s: &str) -> String {
    if s.len() <= QUOTE_BYTES_MAX {
        return s.to_string();
    }
    let mut end = QUOTE_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests;
