//! Bad input, one record per rejection class: bytes the decoder must reject for exactly that
//! [`RejectReason`] and no other.
//!
//! Each poison record starts from a valid event of its own trip (`poison-<seed>-<n>`, so bad
//! input never touches a real trip's balance) and breaks exactly one thing. The decoder checks in
//! a fixed order (size, UTF-8, JSON object, fields in envelope order, then the key), so each
//! breakage is placed where no earlier check can trip over it: for instance an unknown currency
//! goes with a whole-number amount, so no scale check can fire first.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use recon_schemas::currency::Currency;
use recon_schemas::decode::{Limits, RejectReason};
use recon_schemas::event::{Event, EventType, REQUIRED_FIELDS, SCHEMA_VERSION};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::trips::event_id;

/// A bad record as the upstream would send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poison {
    /// The class the decoder must report.
    pub reason: RejectReason,
    /// The trip the record pretends to belong to.
    pub trip_id: String,
    /// Kafka key, when the record has one.
    pub key: Option<Vec<u8>>,
    /// The bad payload.
    pub payload: Vec<u8>,
}

/// The class of the `index`-th poison record: cycles through [`RejectReason::ALL`].
pub fn class_of(index: u64) -> RejectReason {
    let all = RejectReason::ALL;
    // The modulo keeps the index below 20, so the cast is lossless.
    all[(index % all.len() as u64) as usize]
}

/// Makes the `index`-th poison record of a run; `at` is a plausible business time for it.
pub fn make(seed: u64, index: u64, at: DateTime<Utc>, rng: &mut ChaCha8Rng) -> Poison {
    let reason = class_of(index);
    let trip_id = format!("poison-{seed}-{index}");
    let base = Event {
        event_id: event_id(rng),
        event_type: EventType::ALL[rng.random_range(0..EventType::ALL.len())],
        trip_id: trip_id.clone(),
        amount: Decimal::new(rng.random_range(500..=8_000), 2),
        currency: Currency::USD,
        occurred_at: at,
        rider_id: Some(format!("rider-{}", rng.random_range(0..1_000))),
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: SCHEMA_VERSION,
    };
    let key = Some(trip_id.clone().into_bytes());
    let (key, payload) = match reason {
        RejectReason::PayloadTooLarge => {
            // A valid event padded by an (accepted) unknown field to just over the limit.
            let over = Limits::default().payload_bytes_max + rng.random_range(1..=4_096);
            let mut obj = object(&base);
            let fill = over.saturating_sub(base.to_json().len());
            obj.insert("note".into(), Value::String("x".repeat(fill)));
            (key, to_bytes(&obj))
        }
        RejectReason::NotUtf8 => {
            // A Latin-1 rider name: valid JSON structure, invalid UTF-8 bytes.
            let mut bytes = base.to_json();
            let needle = b"\"rider_id\":\"";
            let at = find(&bytes, needle).map_or(1, |i| i + needle.len());
            bytes.splice(at..at, [b'J', 0xF6, b'r', b'g', 0xFF]);
            (key, bytes)
        }
        RejectReason::NotJson => {
            // Truncated mid-object, as a crashed upstream writer leaves it; no key.
            let bytes = base.to_json();
            let cut = rng.random_range(1..bytes.len() - 1);
            (None, bytes[..cut].to_vec())
        }
        RejectReason::NotObject => {
            // A batch array where a single event was expected; no key.
            (
                None,
                format!("[{}]", String::from_utf8_lossy(&base.to_json())).into_bytes(),
            )
        }
        RejectReason::DuplicateField => {
            let mut bytes = base.to_json();
            bytes.splice(1..1, *b"\"amount\":\"1.00\",");
            (key, bytes)
        }
        RejectReason::MissingField => {
            let mut obj = object(&base);
            // Vary which required field is missing from one round of classes to the next.
            obj.remove(REQUIRED_FIELDS[(index / 20 % 7) as usize]);
            (key, to_bytes(&obj))
        }
        RejectReason::WrongType => field(&base, key, "occurred_at", Value::from(at.timestamp())),
        RejectReason::UnknownEventType => field(&base, key, "event_type", "tip_bonus".into()),
        RejectReason::InvalidEventId => {
            field(&base, key, "event_id", format!("evt-{index}").into())
        }
        RejectReason::EmptyId => field(&base, key, "rider_id", "".into()),
        RejectReason::IdTooLong => {
            let len = Limits::default().id_bytes_max + rng.random_range(1..=200);
            field(&base, key, "driver_id", "d".repeat(len).into())
        }
        RejectReason::InvalidAmount => field(&base, key, "amount", "12,50".into()),
        RejectReason::NegativeAmount => {
            field(&base, key, "amount", format!("-{}", base.amount).into())
        }
        RejectReason::AmountScale => field(&base, key, "amount", "12.345".into()),
        RejectReason::AmountOverflow => field(&base, key, "amount", "1000000000000000.00".into()),
        RejectReason::UnknownCurrency => {
            let mut obj = object(&base);
            obj.insert("amount".into(), "12".into());
            obj.insert("currency".into(), "XYZ".into());
            (key, to_bytes(&obj))
        }
        RejectReason::InvalidTimestamp => {
            field(&base, key, "occurred_at", "03/03/2025 12:00".into())
        }
        RejectReason::TimestampOutOfRange => {
            let past = at - Duration::days(365 * 200);
            field(&base, key, "occurred_at", past.to_rfc3339().into())
        }
        RejectReason::UnsupportedSchemaVersion => field(&base, key, "schema_version", 2.into()),
        RejectReason::KeyMismatch => {
            let other = format!("trip-{seed}-{}", rng.random_range(0..1_000_000));
            (Some(other.into_bytes()), base.to_json())
        }
    };
    Poison {
        reason,
        trip_id,
        key,
        payload,
    }
}

/// The canonical JSON of `event` as a mutable object.
fn object(event: &Event) -> Map<String, Value> {
    match serde_json::from_slice(&event.to_json()) {
        Ok(Value::Object(map)) => map,
        // Event::to_json always writes an object.
        other => unreachable!("canonical JSON is an object, got {other:?}"),
    }
}

/// `event` with one field replaced.
fn field(
    event: &Event,
    key: Option<Vec<u8>>,
    name: &str,
    value: Value,
) -> (Option<Vec<u8>>, Vec<u8>) {
    let mut obj = object(event);
    obj.insert(name.into(), value);
    (key, to_bytes(&obj))
}

/// Serializes a JSON object (cannot fail for string keys).
fn to_bytes(obj: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(obj).unwrap_or_default()
}

/// Position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use recon_schemas::decode::decode;

    /// Every class, several times over (different random bases and missing fields), is rejected
    /// for exactly its own reason.
    #[test]
    fn each_class_is_rejected_for_exactly_its_reason() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let at = DateTime::parse_from_rfc3339("2025-03-03T08:30:00Z")
            .unwrap()
            .to_utc();
        let limits = Limits::default();
        for index in 0..(RejectReason::ALL.len() as u64 * 7) {
            let p = make(5, index, at, &mut rng);
            assert_eq!(p.reason, class_of(index));
            match decode(p.key.as_deref(), &p.payload, &limits) {
                Ok(ev) => panic!("{:?} decoded: {ev:?}", p.reason),
                Err(e) => assert_eq!(
                    e.reason(),
                    p.reason,
                    "{e} for {}",
                    String::from_utf8_lossy(&p.payload[..p.payload.len().min(300)])
                ),
            }
        }
    }

    #[test]
    fn classes_cycle_through_all_reasons() {
        let classes: Vec<_> = (0..20).map(class_of).collect();
        assert_eq!(classes, RejectReason::ALL.to_vec());
        assert_eq!(class_of(20), RejectReason::ALL[0]);
    }
}
