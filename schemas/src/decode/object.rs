//! Reads the top level of a payload as a JSON object of the envelope's known fields, noting a
//! repeated known field instead of silently keeping the last one (serde_json's `Map` would).
//! Unknown fields are skipped without being kept.

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::event::FIELDS;

/// The top level of a payload.
pub(super) enum TopLevel {
    /// An object: its known fields in input order, and the first known field seen twice.
    Object {
        /// `(field, value)` for each field in [`FIELDS`] present in the input.
        fields: Vec<(&'static str, Value)>,
        /// The first field of [`FIELDS`] that appeared more than once.
        duplicate: Option<&'static str>,
    },
    /// Any other JSON value, by kind (`"array"`, `"string"`, ...).
    Other(&'static str),
}

impl TopLevel {
    /// The value of `field`, if present.
    pub(super) fn get<'a>(fields: &'a [(&'static str, Value)], field: &str) -> Option<&'a Value> {
        fields.iter().find(|(f, _)| *f == field).map(|(_, v)| v)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut fields: Vec<(&'static str, Value)> = Vec::with_capacity(FIELDS.len());
        let mut duplicate = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match FIELDS.iter().find(|f| **f == key) {
                Some(&field) => {
                    let value: Value = map.next_value()?;
                    if fields.iter().any(|(f, _)| *f == field) {
                        duplicate = duplicate.or(Some(field));
                    } else {
                        fields.push((field, value));
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(TopLevel::Object { fields, duplicate })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("array"))
    }

    fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("string"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("number"))
    }

    fn visit_unit<E>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("null"))
    }
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TopLevel, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }
}
