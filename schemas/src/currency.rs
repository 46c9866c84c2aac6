//! ISO 4217 currencies recon accepts, with their minor units.
//!
//! A [`Currency`] can only be made from a code in [`TABLE`], so holding one proves the code is
//! supported and its minor units are known. Codes are upper case, exactly as ISO 4217 spells
//! them; `"usd"` is not a currency.
//!
//! The largest minor-unit count in the table is 3 (KWD, BHD, ...), which is why money is stored
//! at scale 3 (see [`crate::money`]). A test keeps the two in step.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The supported ISO 4217 codes and their minor units (digits after the decimal point).
pub const TABLE: &[(&str, u32)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UGX", 0),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

/// A supported ISO 4217 currency. Serializes as its code, e.g. `"USD"`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(u8);

impl Currency {
    /// US dollar (2 minor units).
    pub const USD: Currency = Currency::from_table("USD");
    /// Euro (2 minor units).
    pub const EUR: Currency = Currency::from_table("EUR");
    /// Pound sterling (2 minor units).
    pub const GBP: Currency = Currency::from_table("GBP");
    /// Japanese yen (0 minor units).
    pub const JPY: Currency = Currency::from_table("JPY");
    /// Kuwaiti dinar (3 minor units).
    pub const KWD: Currency = Currency::from_table("KWD");

    /// Looks `code` up in [`TABLE`] at compile time; fails the build if it is absent.
    const fn from_table(code: &str) -> Currency {
        let mut i = 0;
        while i < TABLE.len() {
            let c = TABLE[i].0.as_bytes();
            let w = code.as_bytes();
            if c.len() == w.len() && c[0] == w[0] && c[1] == w[1] && c[2] == w[2] {
                return Currency(i as u8);
            }
            i += 1;
        }
        panic!("currency code not in TABLE");
    }

    /// Parses an upper-case ISO 4217 code; `None` if it is not in [`TABLE`].
    pub fn parse(code: &str) -> Option<Currency> {
        // The table is in code order (a test checks): a binary search, not ~60 comparisons
        // for every event and every restored trip.
        TABLE
            .binary_search_by(|(c, _)| (*c).cmp(code))
            .ok()
            .map(|i| Currency(i as u8))
    }

    /// The ISO 4217 code, e.g. `"USD"`.
    pub fn code(&self) -> &'static str {
        TABLE[self.0 as usize].0
    }

    /// Digits after the decimal point an amount in this currency may have (USD 2, JPY 0, KWD 3).
    pub fn minor_units(&self) -> u32 {
        TABLE[self.0 as usize].1
    }

    /// Every supported currency, in code order.
    pub fn all() -> impl Iterator<Item = Currency> {
        (0..TABLE.len()).map(|i| Currency(i as u8))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Currency::parse(&code)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown currency {code:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_upper_case() {
        for w in TABLE.windows(2) {
            assert!(w[0].0 < w[1].0, "{} before {}", w[0].0, w[1].0);
        }
        for (code, units) in TABLE {
            assert_eq!(code.len(), 3);
            assert!(code.bytes().all(|b| b.is_ascii_uppercase()), "{code}");
            assert!(*units <= 3, "{code}");
        }
        assert!(TABLE.len() <= u8::MAX as usize);
    }

    #[test]
    fn known_minor_units() {
        let check = |code: &str, units: u32| {
            let c = Currency::parse(code).unwrap_or_else(|| panic!("{code} missing"));
            assert_eq!(c.minor_units(), units, "{code}");
            assert_eq!(c.code(), code);
            assert_eq!(c.to_string(), code);
        };
        for (code, units) in [
            ("USD", 2),
            ("EUR", 2),
            ("GBP", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("BHD", 3),
            ("INR", 2),
            ("BRL", 2),
            ("MXN", 2),
        ] {
            check(code, units);
        }
        assert_eq!(Currency::USD.code(), "USD");
        assert_eq!(Currency::KWD.minor_units(), 3);
        assert_eq!(Currency::parse("usd"), None);
        assert_eq!(Currency::parse("XXX"), None);
        assert_eq!(Currency::parse(""), None);
        assert_eq!(Currency::all().count(), TABLE.len());
    }

    #[test]
    fn serde_as_code() {
        assert_eq!(serde_json::to_string(&Currency::JPY).unwrap(), "\"JPY\"");
        let c: Currency = serde_json::from_str("\"EUR\"").unwrap();
        assert_eq!(c, Currency::EUR);
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
        assert_eq!(format!("{:?}", Currency::USD), "Currency(USD)");
    }
}
