//! The currency mix of new trips: `--currencies USD=85,EUR=8,JPY=4,KWD=3`.

use anyhow::{Context, bail, ensure};
use recon_schemas::currency::Currency;

/// Weighted currency choice for new trips.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrencyMix {
    /// (currency, weight) pairs; weights are positive.
    entries: Vec<(Currency, u32)>,
    /// Sum of the weights, positive.
    total: u32,
}

impl CurrencyMix {
    /// Parses `USD=85,EUR=8,JPY=4,KWD=3`; a code without `=WEIGHT` weighs 1.
    pub fn parse(spec: &str) -> anyhow::Result<CurrencyMix> {
        let mut entries = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (code, weight) = match part.split_once('=') {
                Some((c, w)) => (
                    c.trim(),
                    w.trim()
                        .parse::<u32>()
                        .with_context(|| format!("weight of {c:?} in --currencies"))?,
                ),
                None => (part, 1),
            };
            let currency = Currency::parse(code).with_context(|| {
                format!("--currencies: {code:?} is not a supported ISO 4217 code (upper case)")
            })?;
            ensure!(
                entries.iter().all(|(c, _)| *c != currency),
                "--currencies names {code} twice"
            );
            if weight > 0 {
                entries.push((currency, weight));
            }
        }
        let total = entries
            .iter()
            .try_fold(0u32, |acc, (_, w)| acc.checked_add(*w))
            .context("--currencies weights overflow")?;
        if total == 0 {
            bail!("--currencies needs at least one currency with a positive weight, got {spec:?}");
        }
        Ok(CurrencyMix { entries, total })
    }

    /// The currency a draw `r` in `0..total()` selects.
    pub fn pick(&self, r: u32) -> Currency {
        let mut acc = 0;
        for (c, w) in &self.entries {
            acc += w;
            if r < acc {
                return *c;
            }
        }
        // r >= total cannot happen for draws in range; fall back to the last entry.
        self.entries[self.entries.len() - 1].0
    }

    /// Sum of the weights: draws for [`CurrencyMix::pick`] are taken in `0..total()`.
    pub fn total(&self) -> u32 {
        self.total
    }
}

impl std::fmt::Display for CurrencyMix {
    /// The canonical spec, e.g. `USD=85,EUR=8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (c, w)) in self.entries.iter().enumerate() {
            write!(f, "{}{c}={w}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_mix_picks_by_weight() {
        let mix = CurrencyMix::parse("USD=2, JPY").unwrap();
        assert_eq!(mix.total(), 3);
        assert_eq!(mix.pick(0), Currency::USD);
        assert_eq!(mix.pick(1), Currency::USD);
        assert_eq!(mix.pick(2), Currency::JPY);
    }

    #[test]
    fn rejects_unknown_and_repeated_codes() {
        for spec in ["XYZ=1", "usd", "USD=0", "USD=1,USD=2", "", "USD=x"] {
            assert!(CurrencyMix::parse(spec).is_err(), "{spec:?}");
        }
        assert_eq!(
            CurrencyMix::parse("USD=85, EUR=8").unwrap().to_string(),
            "USD=85,EUR=8"
        );
    }
}
