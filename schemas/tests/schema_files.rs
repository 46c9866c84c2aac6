//! The schema files and the Rust code must not drift: each rule stated in
//! `event.schema.json` / `event.avsc` is checked against the types and the decoder here.

use std::collections::BTreeSet;

use proptest::prelude::*;
use recon_schemas::currency::Currency;
use recon_schemas::decode::{AMOUNT_PATTERN, Limits, RejectReason, decode};
use recon_schemas::event::{
    AVRO_SCHEMA, EventType, FIELDS, JSON_SCHEMA, REQUIRED_FIELDS, SCHEMA_VERSION,
};
use serde_json::{Value, json};

fn json_schema() -> Value {
    serde_json::from_str(JSON_SCHEMA).expect("event.schema.json is JSON")
}

fn avsc() -> Value {
    serde_json::from_str(AVRO_SCHEMA).expect("event.avsc is JSON")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn set<I: IntoIterator<Item = S>, S: ToString>(it: I) -> BTreeSet<String> {
    it.into_iter().map(|s| s.to_string()).collect()
}

#[test]
fn json_schema_fields_equal_the_event_struct() {
    let s = json_schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(
        s["additionalProperties"], true,
        "unknown fields are accepted"
    );
    let props = s["properties"].as_object().unwrap();
    assert_eq!(set(props.keys()), set(FIELDS));
    assert_eq!(set(strings(&s["required"])), set(REQUIRED_FIELDS));
    assert_eq!(
        strings(&props["event_type"]["enum"]),
        EventType::ALL.map(|t| t.as_str().to_string())
    );
    assert_eq!(
        strings(&props["currency"]["enum"]),
        Currency::all()
            .map(|c| c.code().to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        props["amount"]["type"], "string",
        "amounts are never JSON numbers"
    );
    assert_eq!(props["amount"]["pattern"], AMOUNT_PATTERN);
    assert_eq!(props["schema_version"]["const"], SCHEMA_VERSION);
    let id_max = Limits::default().id_bytes_max;
    for f in [
        "trip_id",
        "rider_id",
        "driver_id",
        "payment_id",
        "payout_id",
    ] {
        assert_eq!(props[f]["maxLength"], id_max, "{f}");
        assert_eq!(props[f]["minLength"], 1, "{f}");
        let nullable = props[f]["type"] == json!(["string", "null"]);
        assert_eq!(
            nullable,
            !REQUIRED_FIELDS.contains(&f),
            "{f}: null iff optional"
        );
    }
}

#[test]
fn json_schema_scale_rules_equal_the_currency_table() {
    let s = json_schema();
    let mut covered = BTreeSet::new();
    for rule in s["allOf"].as_array().unwrap() {
        let codes = strings(&rule["if"]["properties"]["currency"]["enum"]);
        let pattern = rule["then"]["properties"]["amount"]["pattern"]
            .as_str()
            .unwrap();
        let units: BTreeSet<u32> = codes
            .iter()
            .map(|c| Currency::parse(c).unwrap().minor_units())
            .collect();
        assert_eq!(units.len(), 1, "one minor-unit count per rule: {codes:?}");
        let u = *units.first().unwrap();
        let frac = match u {
            0 => String::new(),
            n => format!(r"(\.[0-9]{{1,{n}}})?"),
        };
        assert_eq!(
            pattern,
            format!("^(0|[1-9][0-9]{{0,14}}){frac}$"),
            "{u} minor units"
        );
        covered.extend(codes);
    }
    assert_eq!(covered, set(Currency::all().map(|c| c.code())));
}

#[test]
fn avro_fields_equal_the_json_schema() {
    apache_avro::Schema::parse_str(AVRO_SCHEMA).expect("event.avsc is a valid Avro schema");
    let a = avsc();
    let fields = a["fields"].as_array().unwrap();
    let names: Vec<String> = fields
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, FIELDS, "Avro field order is the canonical order");
    let js = json_schema();
    assert_eq!(
        set(&names),
        set(js["properties"].as_object().unwrap().keys())
    );
    for f in fields {
        let name = f["name"].as_str().unwrap();
        let optional = f["type"] == json!(["null", "string"]) && f["default"].is_null();
        assert_eq!(optional, !REQUIRED_FIELDS.contains(&name), "{name}");
        if name == "event_type" {
            assert_eq!(
                strings(&f["type"]["symbols"]),
                js["properties"]["event_type"]["enum"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(fields[FIELDS.len() - 1]["type"], "int", "schema_version");
}

/// A payload with `amount` and `currency` replaced.
fn payload(amount: &str, currency: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": "0b6f3c5e-2a1d-4c8e-9f7a-1d2e3f4a5b6c",
        "event_type": "refund",
        "trip_id": "t-1",
        "amount": amount,
        "currency": currency,
        "occurred_at": "2030-01-01T00:00:00Z",
        "schema_version": 1
    }))
    .unwrap()
}

/// The JSON Schema's amount rule for `currency`: base pattern and the currency's scale pattern.
fn schema_accepts(amount: &str, currency: &str) -> bool {
    let s = json_schema();
    let base = regex::Regex::new(AMOUNT_PATTERN).unwrap();
    let rule = s["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            strings(&r["if"]["properties"]["currency"]["enum"])
                .iter()
                .any(|c| c == currency)
        })
        .expect("every currency has a rule");
    let scale = regex::Regex::new(
        rule["then"]["properties"]["amount"]["pattern"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    base.is_match(amount) && scale.is_match(amount)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The decoder accepts an amount exactly when the JSON Schema does.
    #[test]
    fn decoder_amount_rules_equal_the_json_schema(
        amount in prop_oneof![
            "[-0-9.]{0,6}",
            "(0|[1-9][0-9]{0,16})(\\.[0-9]{1,5})?",
            "[0-9 e+.,-]{0,24}",
        ],
        currency in prop::sample::select(Currency::all().map(|c| c.code()).collect::<Vec<_>>()),
    ) {
        let decoded = decode(None, &payload(&amount, currency), &Limits::default());
        prop_assert_eq!(decoded.is_ok(), schema_accepts(&amount, currency), "{:?} in {}: {:?}", amount, currency, decoded);
        if let Err(e) = decoded {
            let amount_class = matches!(e.reason(),
                RejectReason::InvalidAmount | RejectReason::NegativeAmount
                | RejectReason::AmountScale | RejectReason::AmountOverflow);
            prop_assert!(amount_class, "{}", e);
        }
    }

    /// The decoder accepts an event_id exactly when the JSON Schema's pattern does.
    #[test]
    fn decoder_uuid_rule_equals_the_json_schema(id in prop_oneof![
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        "[0-9a-gA-G{}-]{30,40}",
        "urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ]) {
        let s = json_schema();
        let pattern = regex::Regex::new(s["properties"]["event_id"]["pattern"].as_str().unwrap()).unwrap();
        let mut v: Value = serde_json::from_slice(&payload("1.00", "USD")).unwrap();
        v["event_id"] = json!(id);
        let decoded = decode(None, &serde_json::to_vec(&v).unwrap(), &Limits::default());
        prop_assert_eq!(decoded.is_ok(), pattern.is_match(&id), "{:?}: {:?}", id, decoded);
    }
}
