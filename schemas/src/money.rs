//! The one decimal type money is stored as in Iceberg: `decimal(18, 3)`.
//!
//! Why `(18, 3)`: scale 3 holds every supported currency's minor units exactly (the largest is 3:
//! KWD, BHD, JOD, OMR, TND; a test checks it against [`crate::currency::TABLE`]), and precision 18
//! is the largest that Parquet stores as a plain INT64, which every engine (Spark, Trino, DuckDB,
//! pyiceberg) reads. That leaves 15 integer digits: up to 999,999,999,999,999.999 per value,
//! far beyond any single fare, including in 0-minor-unit currencies such as KRW or VND.
//!
//! Every money column (event amounts and the per-trip sums and balances) uses this type, so a
//! value moves between tables without rescaling. In Arrow it is `Decimal128(18, 3)`; use
//! [`to_unscaled`] / [`from_unscaled`] to cross that boundary. There are no floats anywhere.

use rust_decimal::Decimal;

/// Total decimal digits of a money column.
pub const PRECISION: u32 = 18;
/// Digits after the decimal point of a money column.
pub const SCALE: u32 = 3;
/// Digits before the decimal point a money value may have.
pub const INTEGER_DIGITS: u32 = PRECISION - SCALE;

/// The largest absolute money value a column can hold: 999,999,999,999,999.999.
pub fn max_abs() -> Decimal {
    // 10^18 - 1 units of 10^-3.
    Decimal::from_i128_with_scale(10_i128.pow(PRECISION) - 1, SCALE)
}

/// True when `value` can be stored in a money column without rounding or overflow.
pub fn fits(value: Decimal) -> bool {
    value.normalize().scale() <= SCALE && value.abs() <= max_abs()
}

/// The unscaled integer of `value` at [`SCALE`], as Arrow's `Decimal128(18, 3)` stores it
/// (`12.34` -> `12340`). `None` if the value does not [`fits`].
pub fn to_unscaled(value: Decimal) -> Option<i128> {
    if !fits(value) {
        return None;
    }
    let mut v = value;
    v.rescale(SCALE);
    debug_assert_eq!(v.scale(), SCALE);
    Some(v.mantissa())
}

/// The inverse of [`to_unscaled`]: `12340` -> `12.340`. `None` beyond [`PRECISION`] digits.
pub fn from_unscaled(unscaled: i128) -> Option<Decimal> {
    if unscaled.unsigned_abs() >= 10_u128.pow(PRECISION) {
        return None;
    }
    Some(Decimal::from_i128_with_scale(unscaled, SCALE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currency::TABLE;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn scale_covers_every_currency() {
        let widest = TABLE.iter().map(|(_, u)| *u).max().unwrap();
        assert_eq!(
            widest, SCALE,
            "money scale must equal the widest minor units"
        );
    }

    #[test]
    fn unscaled_round_trip() {
        for (s, u) in [("12.34", 12340), ("0", 0), ("1.005", 1005), ("-7", -7000)] {
            assert_eq!(to_unscaled(d(s)), Some(u), "{s}");
            assert_eq!(from_unscaled(u), Some(d(s)), "{s}");
        }
        assert_eq!(to_unscaled(max_abs()), Some(999_999_999_999_999_999));
        assert_eq!(to_unscaled(d("1000000000000000")), None);
        assert_eq!(to_unscaled(d("0.0001")), None);
        assert_eq!(to_unscaled(d("0.1000")), Some(100));
        assert_eq!(from_unscaled(1_000_000_000_000_000_000), None);
    }
}
