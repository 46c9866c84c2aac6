//! The event envelope: one money movement of one trip, as it travels on Kafka.
//!
//! The wire form is JSON (see `schemas/event.schema.json`); [`Event::to_json`] writes its
//! canonical form and [`crate::decode::decode`] reads and validates any conforming form.
//! [`Event::fingerprint`] hashes the canonical form, so it tells an exact duplicate (same
//! `event_id`, same content) from a conflicting one (same `event_id`, different content).

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::currency::Currency;

/// `schemas/event.schema.json`: the envelope as JSON Schema (draft 2020-12).
pub const JSON_SCHEMA: &str = include_str!("../event.schema.json");

/// `schemas/event.avsc`: the envelope as an Avro record schema.
pub const AVRO_SCHEMA: &str = include_str!("../event.avsc");

/// The envelope version this crate writes and the only one it accepts.
pub const SCHEMA_VERSION: i32 = 1;

/// Envelope field names, in canonical order. Tests check them against the schema files.
pub const FIELDS: [&str; 11] = [
    "event_id",
    "event_type",
    "trip_id",
    "amount",
    "currency",
    "occurred_at",
    "rider_id",
    "driver_id",
    "payment_id",
    "payout_id",
    "schema_version",
];

/// Fields every event must carry; the others are optional (absent or `null`).
pub const REQUIRED_FIELDS: [&str; 7] = [
    "event_id",
    "event_type",
    "trip_id",
    "amount",
    "currency",
    "occurred_at",
    "schema_version",
];

/// What kind of money movement an event records. All amounts are non-negative; the type says
/// which way the money moves (see [`crate::balance`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The rider is charged the fare.
    TripCharge,
    /// The rider's payment is captured (money collected from the rider).
    RiderPayment,
    /// The driver is paid out.
    DriverPayout,
    /// The platform keeps its fee.
    PlatformFee,
    /// Part of the fare is given back to the rider.
    Refund,
    /// A post-trip amount added to the fare, e.g. a toll or a tip: it raises what the rider owes
    /// and what is split between driver and platform, exactly like a charge.
    Adjustment,
}

impl EventType {
    /// Every event type, in declaration order.
    pub const ALL: [EventType; 6] = [
        EventType::TripCharge,
        EventType::RiderPayment,
        EventType::DriverPayout,
        EventType::PlatformFee,
        EventType::Refund,
        EventType::Adjustment,
    ];

    /// The wire name, e.g. `"trip_charge"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::TripCharge => "trip_charge",
            EventType::RiderPayment => "rider_payment",
            EventType::DriverPayout => "driver_payout",
            EventType::PlatformFee => "platform_fee",
            EventType::Refund => "refund",
            EventType::Adjustment => "adjustment",
        }
    }

    /// Parses a wire name; `None` for anything else (names are case-sensitive).
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One money event. Build valid ones through [`crate::decode::decode`]; code that builds them
/// directly (generators, tests) must keep the invariants the decoder checks: non-negative
/// `amount` with no more decimals than `currency` allows, `occurred_at` at microsecond precision
/// within 2000-01-01..2100-01-01, non-empty ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Idempotency key of the business event: the same id twice is one event.
    pub event_id: Uuid,
    /// Kind of money movement.
    pub event_type: EventType,
    /// The trip; also the Kafka message key.
    pub trip_id: String,
    /// Non-negative amount in `currency`, at most `currency.minor_units()` decimals.
    pub amount: Decimal,
    /// Currency of `amount`; all events of a trip share it.
    pub currency: Currency,
    /// Business time; the business day is taken from it.
    pub occurred_at: DateTime<Utc>,
    /// The rider, where the event concerns one.
    pub rider_id: Option<String>,
    /// The driver, where the event concerns one.
    pub driver_id: Option<String>,
    /// The payment-processor reference of a rider payment or refund.
    pub payment_id: Option<String>,
    /// The payout reference of a driver payout.
    pub payout_id: Option<String>,
    /// Envelope version; [`SCHEMA_VERSION`] is the only one accepted.
    pub schema_version: i32,
}

impl Event {
    /// The canonical JSON form: fields in [`FIELDS`] order, no whitespace, absent optional
    /// fields omitted, `event_id` as lower-case hyphenated UUID, `amount` as a decimal string
    /// with exactly the currency's minor-unit scale (`"12.30"`, `"1200"`, `"1.500"`), and
    /// `occurred_at` as RFC 3339 in UTC with a `Z` and microseconds
    /// (`"2024-05-01T12:00:00.000000Z"`). [`crate::decode::decode`] reads it back to an equal event.
    /// For an event that breaks the invariants (more decimals than the currency allows,
    /// sub-microsecond time), which the decoder never produces, the extra digits are rounded away.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(320);
        self.write_json(&mut out);
        out
    }

    /// A 64-bit FNV-1a hash of [`Event::to_json`]: the same on every run and platform, equal for
    /// equal events, so the dedup state can compare a replayed event with the one it saw. The
    /// canonical form is hashed as it is written, never held in memory.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv1a64::default();
        self.write_json(&mut h);
        h.0
    }

    /// Writes [`Event::to_json`]'s bytes to `out`, with no allocation of its own.
    fn write_json(&self, out: &mut impl Sink) {
        let mut amount = self.amount;
        amount.rescale(self.currency.minor_units());
        out.put(b"{");
        let mut uuid = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let uuid = self.event_id.hyphenated().encode_lower(&mut uuid);
        put_field(out, "event_id", uuid);
        put_field(out, "event_type", self.event_type.as_str());
        put_field(out, "trip_id", &self.trip_id);
        // `Decimal`'s `Display` formats into a stack buffer.
        let mut digits = Stack::<64>::default();
        put_field(out, "amount", digits.format(format_args!("{amount}")));
        put_field(out, "currency", self.currency.code());
        let mut time = Stack::<64>::default();
        put_field(
            out,
            "occurred_at",
            rfc3339_micros(&self.occurred_at, &mut time),
        );
        for (name, value) in [
            ("rider_id", &self.rider_id),
            ("driver_id", &self.driver_id),
            ("payment_id", &self.payment_id),
            ("payout_id", &self.payout_id),
        ] {
            if let Some(v) = value {
                put_field(out, name, v);
            }
        }
        out.put(b"\"schema_version\":");
        let mut version = Stack::<16>::default();
        out.put(
            version
                .format(format_args!("{}", self.schema_version))
                .as_bytes(),
        );
        out.put(b"}");
    }
}

/// Where the canonical form goes: a buffer, or a hash.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// FNV-1a over the bytes put, in order ([`fnv1a64`] of their concatenation).
struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(FNV_OFFSET)
    }
}

impl Sink for Fnv1a64 {
    fn put(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
}

impl std::io::Write for &mut dyn Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.put(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A small formatting buffer on the stack (numbers and timestamps of the canonical form).
struct Stack<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Stack<N> {
    fn default() -> Self {
        Stack {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> fmt::Write for Stack<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let room = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<const N: usize> Stack<N> {
    /// Formats `args` into the buffer and returns the text. The values formatted here (a
    /// 96-bit decimal, an `i32`, a timestamp) fit; should one not, it is cut short, which a
    /// test would catch.
    fn format(&mut self, args: fmt::Arguments<'_>) -> &str {
        self.len = 0;
        let _ = fmt::Write::write_fmt(self, args);
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// `t.to_rfc3339_opts(SecondsFormat::Micros, true)` without an allocation, for the years
/// 0..=9999 and no leap second; other instants take chrono's own (allocating) path.
fn rfc3339_micros<'a>(t: &DateTime<Utc>, buf: &'a mut Stack<64>) -> &'a str {
    use chrono::{Datelike, Timelike};
    let nanos = t.nanosecond();
    if (0..=9999).contains(&t.year()) && nanos < 1_000_000_000 {
        buf.format(format_args!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            nanos / 1_000
        ))
    } else {
        let text = t.to_rfc3339_opts(SecondsFormat::Micros, true);
        buf.format(format_args!("{text}"))
    }
}

/// Puts `"name":"value",` with JSON string escaping (serde_json's, as before).
fn put_field(out: &mut impl Sink, name: &str, value: &str) {
    out.put(b"\"");
    out.put(name.as_bytes());
    out.put(b"\":");
    if value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        let mut w: &mut dyn Sink = out;
        // Writing a &str to a sink that cannot fail cannot fail.
        let _ = serde_json::to_writer(&mut w, value);
    } else {
        // Nothing serde_json would escape: the text as it is, quoted.
        out.put(b"\"");
        out.put(value.as_bytes());
        out.put(b"\"");
    }
    out.put(b",");
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a64::default();
    h.put(bytes);
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    pub(crate) fn sample() -> Event {
        Event {
            event_id: Uuid::from_str("6f1c1b5e-8a43-4f0e-9d6b-2a7c6f0b9e11").unwrap(),
            event_type: EventType::TripCharge,
            trip_id: "trip-1".into(),
            amount: Decimal::from_str("12.3").unwrap(),
            currency: Currency::USD,
            occurred_at: DateTime::parse_from_rfc3339("2024-05-01T12:00:00.5Z")
                .unwrap()
                .with_timezone(&Utc),
            rider_id: Some("rider-\"7\"".into()),
            driver_id: None,
            payment_id: None,
            payout_id: None,
            schema_version: SCHEMA_VERSION,
        }
    }

    #[test]
    fn event_type_names() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!(EventType::parse("TRIP_CHARGE"), None);
    }

    /// The allocation-free timestamp is chrono's RFC 3339 form, to the byte, at any instant
    /// (leap seconds and years beyond 9999 included).
    #[test]
    fn timestamps_match_chrono() {
        use proptest::prelude::*;
        let check = |secs: i64, nanos: u32| {
            let Some(t) = DateTime::<Utc>::from_timestamp(secs, nanos) else {
                return;
            };
            let mut buf = Stack::<64>::default();
            assert_eq!(
                rfc3339_micros(&t, &mut buf),
                t.to_rfc3339_opts(SecondsFormat::Micros, true)
            );
        };
        check(0, 0);
        check(1_714_564_800, 500_000_000);
        check(1_714_564_799, 1_999_999_999); // a leap second
        check(-62_135_596_800, 1); // 0001-01-01
        check(253_402_300_800, 0); // year 10000
        proptest!(|(secs in -70_000_000_000i64..300_000_000_000, nanos in 0u32..2_000_000_000)| {
            check(secs, nanos);
        });
    }

    /// Text with nothing to escape is written as it is; anything else as serde_json escapes
    /// it: both are serde_json's bytes.
    #[test]
    fn fields_are_serde_json_strings() {
        for text in [
            "trip-1",
            "é ü ✓",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{1}",
            "/",
            "",
        ] {
            let mut out = Vec::new();
            put_field(&mut out, "f", text);
            let expected = format!("\"f\":{},", serde_json::to_string(text).unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{text:?}");
        }
    }

    #[test]
    fn canonical_json() {
        let json = String::from_utf8(sample().to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"event_id":"6f1c1b5e-8a43-4f0e-9d6b-2a7c6f0b9e11","event_type":"trip_charge","trip_id":"trip-1","amount":"12.30","currency":"USD","occurred_at":"2024-05-01T12:00:00.500000Z","rider_id":"rider-\"7\"","schema_version":1}"#
        );
        let mut jpy = sample();
        jpy.currency = Currency::JPY;
        jpy.amount = Decimal::from(1200);
        assert!(
            String::from_utf8(jpy.to_json())
                .unwrap()
                .contains(r#""amount":"1200""#)
        );
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let a = sample();
        // Pinned: changing the canonical form or the hash changes every stored fingerprint.
        assert_eq!(a.fingerprint(), fnv1a64(&a.to_json()));
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut b = a.clone();
        b.amount = Decimal::from_str("12.30").unwrap();
        assert_eq!(
            a.fingerprint(),
            b.fingerprint(),
            "scale does not change the value"
        );
        b.amount = Decimal::from_str("12.31").unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.driver_id = Some("d".into());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
