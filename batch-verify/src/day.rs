//! The business day: a calendar date in an IANA time zone, turned into the UTC window
//! `[start, end)` that the partition filters and the truth queries use.
//!
//! A day is not always 24 hours: on a daylight-saving change it is 23 or 25. The window is
//! computed from the zone's own midnights, so such a day is neither cut short nor doubled.
//!
//! Also here: how a dead-lettered record is *dated*. A rejected record has no trustworthy
//! `occurred_at` (that is often why it was rejected), but most still carry one that can be read.
//! [`payload_time`] reads it leniently, byte for byte the same way on the truth's copy and on the
//! lakehouse's copy, so both sides put a reject on the same day.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::{Result, VerifyError};

/// One business day and its UTC window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusinessDay {
    /// The calendar date in `tz`.
    pub date: NaiveDate,
    /// The zone the date is taken in.
    pub tz: Tz,
    /// First instant of the day, in UTC (inclusive).
    pub start: DateTime<Utc>,
    /// First instant of the next day, in UTC (exclusive).
    pub end: DateTime<Utc>,
}

impl BusinessDay {
    /// The day `date` in zone `tz` (an IANA name such as `Europe/Paris`, or `UTC`).
    pub fn new(date: NaiveDate, tz: &str) -> Result<BusinessDay> {
        let tz: Tz = tz.parse().map_err(|_| VerifyError::Options {
            option: "--tz",
            message: format!("{tz:?} is not an IANA time zone; use e.g. UTC or America/Sao_Paulo"),
        })?;
        let next = date.succ_opt().ok_or_else(|| VerifyError::Options {
            option: "--date",
            message: format!("{date} has no next day"),
        })?;
        let start = midnight(tz, date)?;
        let end = midnight(tz, next)?;
        assert!(start < end, "a business day has positive length");
        Ok(BusinessDay {
            date,
            tz,
            start,
            end,
        })
    }

    /// Whether `t` falls in the day.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    /// Whether `micros` (since the epoch, UTC) falls in the day.
    pub fn contains_micros(&self, micros: i64) -> bool {
        self.start.timestamp_micros() <= micros && micros < self.end.timestamp_micros()
    }

    /// The window widened by `before` and `after`.
    pub fn widened(&self, before: Duration, after: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
        (self.start - before, self.end + after)
    }
}

/// The first instant of `date` in `tz`. Where midnight does not exist (a zone that skips it on
/// a daylight-saving change) the day starts at the first instant that does.
fn midnight(tz: Tz, date: NaiveDate) -> Result<DateTime<Utc>> {
    let naive = date.and_time(NaiveTime::MIN);
    // A skipped hour is at most a few hours long: look forward in 15-minute steps, bounded.
    for step in 0..=4 * 6 {
        let t = naive + Duration::minutes(15 * step);
        if let Some(local) = tz.from_local_datetime(&t).earliest() {
            return Ok(local.with_timezone(&Utc));
        }
    }
    Err(VerifyError::Options {
        option: "--date",
        message: format!("{date} has no midnight in {tz} within 6 hours"),
    })
}

/// The `occurred_at` a raw payload carries, read leniently: the first `"occurred_at"` key
/// followed by a JSON string that parses as RFC 3339. Works on truncated, non-UTF-8, oversized
/// and otherwise invalid payloads; `None` when there is no such value.
pub fn payload_time(payload: &[u8]) -> Option<DateTime<Utc>> {
    const KEY: &[u8] = b"\"occurred_at\"";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)?;
    let mut rest = &payload[at + KEY.len()..];
    rest = trim_ws(rest);
    rest = rest.strip_prefix(b":")?;
    rest = trim_ws(rest);
    rest = rest.strip_prefix(b"\"")?;
    // An RFC 3339 timestamp is at most ~40 bytes; bound the scan.
    let end = rest.iter().take(64).position(|b| *b == b'"')?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn trim_ws(mut s: &[u8]) -> &[u8] {
    while let Some((b, rest)) = s.split_first() {
        if b.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(date: &str, tz: &str) -> BusinessDay {
        BusinessDay::new(date.parse().unwrap(), tz).unwrap()
    }

    #[test]
    fn utc_day_is_24_hours() {
        let d = day("2025-03-03", "UTC");
        assert_eq!(d.start.to_rfc3339(), "2025-03-03T00:00:00+00:00");
        assert_eq!(d.end - d.start, Duration::hours(24));
    }

    #[test]
    fn daylight_saving_days_are_23_and_25_hours() {
        let spring = day("2025-03-30", "Europe/Paris");
        assert_eq!(spring.start.to_rfc3339(), "2025-03-29T23:00:00+00:00");
        assert_eq!(spring.end - spring.start, Duration::hours(23));
        let autumn = day("2025-10-26", "Europe/Paris");
        assert_eq!(autumn.end - autumn.start, Duration::hours(25));
        let sp = day("2025-03-03", "America/Sao_Paulo");
        assert_eq!(sp.start.to_rfc3339(), "2025-03-03T03:00:00+00:00");
    }

    #[test]
    fn bad_zone_is_named() {
        let e = BusinessDay::new("2025-03-03".parse().unwrap(), "Mars/Olympus").unwrap_err();
        assert!(e.to_string().contains("Mars/Olympus"), "{e}");
    }

    #[test]
    fn payload_time_is_lenient() {
        let t = |p: &[u8]| payload_time(p).map(|t| t.to_rfc3339());
        let want = Some("2025-03-03T08:30:00+00:00".to_string());
        assert_eq!(t(br#"{"a":1,"occurred_at":"2025-03-03T08:30:00Z"}"#), want);
        assert_eq!(
            t(b"{\"occurred_at\" : \"2025-03-03T09:30:00+01:00\"}"),
            want
        );
        assert_eq!(
            t(b"{\"x\":\"J\xf6rg\",\"occurred_at\":\"2025-03-03T08:30:00Z\""),
            want
        );
        assert_eq!(t(br#"{"occurred_at":1741000000}"#), None);
        assert_eq!(t(br#"{"occurred_at":"03/03/2025 12:00"}"#), None);
        assert_eq!(t(br#"{"occurred_at":"2025-03-0"#), None);
        assert_eq!(t(b"[]"), None);
    }
}
