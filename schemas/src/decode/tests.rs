//! One `check` per error class, each asserting the reason code and a message fragment, plus the
//! accepting cases.

use serde_json::{Map, Value, json};

use super::*;

const TRIP: &str = "trip-42";

/// A valid payload as a JSON map, to be edited per case.
fn base() -> Map<String, Value> {
    let v = json!({
        "event_id": "0b6f3c5e-2a1d-4c8e-9f7a-1d2e3f4a5b6c",
        "event_type": "trip_charge",
        "trip_id": TRIP,
        "amount": "12.34",
        "currency": "USD",
        "occurred_at": "2024-05-01T12:00:00Z",
        "rider_id": "rider-1",
        "schema_version": 1
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// `base()` with `field` set to `value` (`None` removes it), serialized.
fn with(field: &str, value: Option<Value>) -> Vec<u8> {
    let mut m = base();
    match value {
        Some(v) => m.insert(field.to_string(), v),
        None => m.remove(field),
    };
    serde_json::to_vec(&Value::Object(m)).unwrap()
}

/// Decodes `payload` under `key` and asserts the rejection class and a message fragment.
fn check(key: Option<&[u8]>, payload: &[u8], reason: &str, fragment: &str) {
    let limits = Limits::default();
    match decode(key, payload, &limits) {
        Ok(ev) => panic!(
            "expected {reason}, decoded {ev:?} from {}",
            String::from_utf8_lossy(payload)
        ),
        Err(e) => {
            assert_eq!(e.reason().as_str(), reason, "message: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(fragment),
                "{reason}: message {msg:?} lacks {fragment:?}"
            );
        }
    }
}

fn ok(key: Option<&[u8]>, payload: &[u8]) -> Event {
    decode(key, payload, &Limits::default())
        .unwrap_or_else(|e| panic!("{e} for {}", String::from_utf8_lossy(payload)))
}

#[test]
fn rejects_each_class_with_a_clear_message() {
    let key = Some(TRIP.as_bytes());
    let s = |v: &str| Some(json!(v));
    let big = vec![b' '; 64 * 1024 + 1];
    check(
        key,
        &big,
        "payload_too_large",
        "payload is 65537 bytes, over the limit of 65536",
    );
    check(
        key,
        b"{\"a\":\"\xff\"}",
        "not_utf8",
        "invalid byte at offset 6",
    );
    check(
        key,
        b"{\"event_id\":",
        "not_json",
        "payload is not JSON: EOF",
    );
    check(key, b"", "not_json", "not JSON");
    check(
        key,
        b"[1,2]",
        "not_object",
        "payload is JSON array, expected an object",
    );
    check(key, b"\"x\"", "not_object", "JSON string");
    check(key, b"null", "not_object", "JSON null");
    let dup = br#"{"amount":"1.00","amount":"100.00"}"#;
    check(
        key,
        dup,
        "duplicate_field",
        r#"field "amount" appears more than once"#,
    );
    check(
        key,
        &with("amount", None),
        "missing_field",
        r#"field "amount" is missing"#,
    );
    check(
        key,
        &with("event_id", None),
        "missing_field",
        r#""event_id" is missing"#,
    );
    check(
        key,
        &with("schema_version", None),
        "missing_field",
        "schema_version",
    );
    check(
        key,
        &with("amount", Some(json!(12.34))),
        "wrong_type",
        r#"field "amount": expected string, found number 12.34"#,
    );
    check(
        key,
        &with("trip_id", Some(Value::Null)),
        "wrong_type",
        r#"field "trip_id": expected string, found null"#,
    );
    check(
        key,
        &with("rider_id", Some(json!(7))),
        "wrong_type",
        r#""rider_id": expected string, found number 7"#,
    );
    check(
        key,
        &with("schema_version", s("1")),
        "wrong_type",
        r#""schema_version": expected integer, found string "1""#,
    );
    check(
        key,
        &with("schema_version", Some(json!(1.0))),
        "wrong_type",
        "expected integer, found number 1.0",
    );
    check(
        key,
        &with("event_type", s("tip")),
        "unknown_event_type",
        r#"unknown event type "tip""#,
    );
    check(
        key,
        &with("event_type", s("TRIP_CHARGE")),
        "unknown_event_type",
        "TRIP_CHARGE",
    );
    check(
        key,
        &with("event_id", s("not-a-uuid")),
        "invalid_event_id",
        r#""not-a-uuid" is not a hyphenated UUID"#,
    );
    check(
        key,
        &with("event_id", s("0b6f3c5e2a1d4c8e9f7a1d2e3f4a5b6c")),
        "invalid_event_id",
        "hyphenated",
    );
    check(
        key,
        &with("event_id", s("")),
        "empty_id",
        r#"field "event_id" is empty"#,
    );
    check(
        None,
        &with("trip_id", s("")),
        "empty_id",
        r#"field "trip_id" is empty"#,
    );
    check(
        key,
        &with("driver_id", s("")),
        "empty_id",
        r#"field "driver_id" is empty"#,
    );
    check(
        None,
        &with("trip_id", s(&"t".repeat(129))),
        "id_too_long",
        r#"field "trip_id" is 129 bytes, over the limit of 128 bytes"#,
    );
    check(
        key,
        &with("payout_id", s(&"é".repeat(65))),
        "id_too_long",
        r#""payout_id" is 130 bytes"#,
    );
    check(
        key,
        &with("amount", s("1e3")),
        "invalid_amount",
        r#""1e3" is not a decimal string"#,
    );
    for bad in [
        "", " 1.00", "1.", ".5", "01.00", "+1", "1,00", "NaN", "--1", "1.2.3", "١",
    ] {
        check(
            key,
            &with("amount", s(bad)),
            "invalid_amount",
            "is not a decimal string",
        );
    }
    check(
        key,
        &with("amount", s("-5.00")),
        "negative_amount",
        r#""-5.00" is negative; amounts must be >= 0"#,
    );
    check(
        key,
        &with("amount", s("12.345")),
        "amount_scale",
        r#"field "amount": "12.345" has 3 decimals but USD allows 2"#,
    );
    let jpy = |amount: &str| {
        let mut m = base();
        m.insert("currency".into(), json!("JPY"));
        m.insert("amount".into(), json!(amount));
        serde_json::to_vec(&Value::Object(m)).unwrap()
    };
    check(
        key,
        &jpy("1200.0"),
        "amount_scale",
        r#""1200.0" has 1 decimals but JPY allows 0"#,
    );
    check(
        key,
        &with("amount", s("1000000000000000")),
        "amount_overflow",
        r#""1000000000000000" exceeds the largest storable amount 999999999999999.999"#,
    );
    check(
        key,
        &with("currency", s("usd")),
        "unknown_currency",
        r#"unknown currency "usd""#,
    );
    check(key, &with("currency", s("XBT")), "unknown_currency", "XBT");
    check(
        key,
        &with("occurred_at", s("yesterday")),
        "invalid_timestamp",
        r#"field "occurred_at": "yesterday" is not an RFC 3339 timestamp"#,
    );
    check(
        key,
        &with("occurred_at", s("2024-05-01 12:00:00")),
        "invalid_timestamp",
        "RFC 3339",
    );
    check(
        key,
        &with("occurred_at", s("2024-05-01T12:00:00")),
        "invalid_timestamp",
        "RFC 3339",
    );
    check(
        key,
        &with("occurred_at", s("1999-12-31T23:59:59Z")),
        "timestamp_out_of_range",
        r#""1999-12-31T23:59:59Z" is outside 2000-01-01T00:00:00Z..2100-01-01T00:00:00Z"#,
    );
    check(
        key,
        &with("occurred_at", s("2100-01-01T00:00:00Z")),
        "timestamp_out_of_range",
        "outside",
    );
    check(
        key,
        &with("occurred_at", s("2000-01-01T00:30:00+01:00")),
        "timestamp_out_of_range",
        "outside",
    );
    check(
        key,
        &with("schema_version", Some(json!(2))),
        "unsupported_schema_version",
        r#"field "schema_version": version 2 is not supported (supported: 1)"#,
    );
    check(
        Some(b"trip-7"),
        &with("amount", s("1.00")),
        "key_mismatch",
        r#"Kafka key "trip-7" does not match field "trip_id" "trip-42""#,
    );
    check(Some(b""), &base_bytes(), "key_mismatch", r#"Kafka key """#);
}

fn base_bytes() -> Vec<u8> {
    serde_json::to_vec(&Value::Object(base())).unwrap()
}

#[test]
fn every_reason_is_checked_above() {
    // The codes are a compatibility promise: dead-letter rows and dashboards use them.
    let src = include_str!("tests.rs");
    for r in RejectReason::ALL {
        assert!(
            src.contains(&format!("\"{}\"", r.as_str())),
            "no check for {}",
            r.as_str()
        );
    }
    let mut codes: Vec<_> = super::every_reason().collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(
        codes.len(),
        RejectReason::ALL.len() + super::EVENT_REASONS.len()
    );
}

#[test]
fn accepts_valid_variants() {
    let key = Some(TRIP.as_bytes());
    let ev = ok(key, &base_bytes());
    assert_eq!(ev.trip_id, TRIP);
    assert_eq!(ev.amount.to_string(), "12.34");
    assert_eq!(ev.rider_id.as_deref(), Some("rider-1"));
    assert_eq!(ev.driver_id, None);
    // No key is accepted; nulls for optional fields; unknown fields ignored, even duplicated.
    let mut m = base();
    m.insert("driver_id".into(), Value::Null);
    m.insert(
        "future_field".into(),
        json!({"nested": [1, 2, {"x": null}]}),
    );
    let extra = serde_json::to_vec(&Value::Object(m)).unwrap();
    assert_eq!(ok(None, &extra), ev);
    let raw = br#"{"x":1,"x":2,"event_id":"0B6F3C5E-2A1D-4C8E-9F7A-1D2E3F4A5B6C","event_type":"trip_charge","trip_id":"trip-42","amount":"12.34","currency":"USD","occurred_at":"2024-05-01T14:00:00+02:00","rider_id":"rider-1","schema_version":1}"#;
    assert_eq!(ok(key, raw), ev, "upper-case UUID and offsets normalize");
    // Fewer decimals than allowed, zero, and each currency's full scale.
    assert_eq!(
        ok(key, &with("amount", Some(json!("12.3"))))
            .amount
            .to_string(),
        "12.3"
    );
    assert!(ok(key, &with("amount", Some(json!("0")))).amount.is_zero());
    let kwd = {
        let mut m = base();
        m.insert("currency".into(), json!("KWD"));
        m.insert("amount".into(), json!("999999999999999.999"));
        serde_json::to_vec(&Value::Object(m)).unwrap()
    };
    assert_eq!(ok(key, &kwd).amount, money::max_abs());
    // Range edges and sub-microsecond truncation.
    let at = |s: &str| ok(key, &with("occurred_at", Some(json!(s)))).occurred_at;
    assert_eq!(
        at("2000-01-01T00:00:00Z").to_rfc3339(),
        "2000-01-01T00:00:00+00:00"
    );
    assert_eq!(
        at("2099-12-31T23:59:59.999999999Z").timestamp_micros(),
        at("2099-12-31T23:59:59.999999Z").timestamp_micros()
    );
    // Whitespace around the JSON and ids exactly at the limit.
    let mut padded = b" \n".to_vec();
    padded.extend(base_bytes());
    padded.extend(b"\t ");
    assert_eq!(ok(key, &padded), ev);
    ok(None, &with("trip_id", Some(json!("t".repeat(128)))));
}

#[test]
fn custom_limits_apply() {
    let limits = Limits {
        payload_bytes_max: 16,
        id_bytes_max: 4,
    };
    let e = decode(None, &base_bytes(), &limits).unwrap_err();
    assert_eq!(e.reason(), RejectReason::PayloadTooLarge);
    let limits = Limits {
        payload_bytes_max: 1 << 20,
        id_bytes_max: 4,
    };
    let e = decode(None, &base_bytes(), &limits).unwrap_err();
    assert_eq!(e.reason(), RejectReason::IdTooLong, "{e}");
}

#[test]
fn long_values_are_clipped_in_messages() {
    let long = "x".repeat(1000);
    let e = decode(
        None,
        &with("event_type", Some(json!(long))),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(e.to_string().len() < 200, "{e}");
    assert!(e.to_string().contains('…'));
    assert_eq!(clip("ééé"), "ééé");
    let cut = clip(&"é".repeat(40));
    assert!(cut.ends_with('…') && cut.len() <= QUOTE_BYTES_MAX + '…'.len_utf8());
}

#[test]
fn salvages_ids_from_rejected_payloads() {
    let limits = Limits::default();
    let bad = with("amount", Some(json!("-1")));
    let (event_id, trip_id) = salvage_ids(&bad, &limits);
    assert_eq!(
        event_id.as_deref(),
        Some("0b6f3c5e-2a1d-4c8e-9f7a-1d2e3f4a5b6c")
    );
    assert_eq!(trip_id.as_deref(), Some(TRIP));
    assert_eq!(salvage_ids(b"nope", &limits), (None, None));
    let (e, t) = salvage_ids(&with("trip_id", Some(json!(5))), &limits);
    assert!(e.is_some() && t.is_none());
}
