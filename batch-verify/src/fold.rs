//! The verifier's own fold of a trip's ledger rows: the rules below (those `recon_schemas::balance`
//! documents), implemented separately over the verifier's rows. Sums are integers of thousandths
//! (`i128`), never `Decimal`; the event type is read by its wire name; no code is shared.
//! The job folds with `recon_schemas::balance::TripBalance::apply`; a proof that used the same
//! function would only show that the job agrees with itself. Property tests
//! ([`differs_from_reference`]: `fold_tests.rs` on arbitrary rows, `recon-tests`'
//! `verify_fold.rs` on the job's generated traffic) hold the two folds equal.
//!
//! Rules, per trip, over its rows in Kafka log order:
//! - the trip's currency is that of its first row;
//! - a row whose event id was seen is skipped when its content is the same (an exact re-send),
//!   and sets `conflicting_duplicate` when it differs (never summed);
//! - a row in another currency sets `currency_mismatch` and is not summed (its id counts as seen);
//! - a row whose amount would take a sum or a balance beyond `decimal(18,3)` is refused
//!   ([`Step::Overflow`]) and changes nothing;
//! - otherwise its amount is added to the sum of its type, `events` counts it and
//!   `last_occurred_at` is the latest summed time.
//!
//! Status: a conflicting duplicate, then a currency mismatch, then a negative rider balance
//! (`charged + adjusted - collected`), then a negative settlement balance
//! (`charged + adjusted - refunded - paid_out - fees`) make a `DISCREPANCY` with that reason;
//! both balances zero with something charged is `BALANCED`; anything else is `OPEN`.

use std::collections::HashMap;

use crate::row::EventRow;

/// Largest magnitude `decimal(18,3)` holds, in thousandths.
pub const UNSCALED_MAX: i128 = 999_999_999_999_999_999;

/// Index of each sum in [`Ledger::sums`]: charged, collected, refunded, paid_out, fees, adjusted.
const CHARGED: usize = 0;
const COLLECTED: usize = 1;
const REFUNDED: usize = 2;
const PAID_OUT: usize = 3;
const FEES: usize = 4;
const ADJUSTED: usize = 5;

/// The sum an event type adds to, by wire name; `None` for a name no event has.
fn sum_of(type_name: &str) -> Option<usize> {
    Some(match type_name {
        "trip_charge" => CHARGED,
        "rider_payment" => COLLECTED,
        "refund" => REFUNDED,
        "driver_payout" => PAID_OUT,
        "platform_fee" => FEES,
        "adjustment" => ADJUSTED,
        _ => return None,
    })
}

/// One trip's balance as the verifier computes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// Currency code of the first row.
    pub currency: String,
    /// charged, collected, refunded, paid_out, fees, adjusted, in thousandths.
    pub sums: [i128; 6],
    /// Rows summed.
    pub events: u32,
    /// Latest `occurred_at` of a summed row, microseconds since the epoch.
    pub last_occurred_at_us: Option<i64>,
    /// A seen event id came back with other content.
    pub conflicting_duplicate: bool,
    /// A row in another currency arrived.
    pub currency_mismatch: bool,
}

/// What one row did to the fold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Added to its sum.
    Summed,
    /// An exact re-send of a seen event: skipped.
    Resent,
    /// A seen event id with other content: flagged, not summed.
    Conflict,
    /// Another currency: flagged, not summed.
    CurrencyMismatch,
    /// Would leave `decimal(18,3)`: refused, nothing changed.
    Overflow,
    /// A value no event can have (unknown type or currency, amount or time out of range).
    Unreadable,
}

impl Ledger {
    fn new(currency: &str) -> Ledger {
        Ledger {
            currency: currency.to_string(),
            sums: [0; 6],
            events: 0,
            last_occurred_at_us: None,
            conflicting_duplicate: false,
            currency_mismatch: false,
        }
    }

    /// `charged + adjusted - collected`: what the rider still owes.
    pub fn rider_balance(&self) -> i128 {
        self.sums[CHARGED] + self.sums[ADJUSTED] - self.sums[COLLECTED]
    }

    /// `charged + adjusted - refunded - paid_out - fees`: net fare not yet split.
    pub fn settlement_balance(&self) -> i128 {
        self.sums[CHARGED] + self.sums[ADJUSTED]
            - self.sums[REFUNDED]
            - self.sums[PAID_OUT]
            - self.sums[FEES]
    }

    /// `(status, discrepancy_reason)` as `trip_balances` stores them.
    pub fn status(&self) -> (&'static str, Option<&'static str>) {
        let discrepancy = |reason| ("DISCREPANCY", Some(reason));
        if self.conflicting_duplicate {
            return discrepancy("conflicting_duplicate");
        }
        if self.currency_mismatch {
            return discrepancy("currency_mismatch");
        }
        let (rider, settlement) = (self.rider_balance(), self.settlement_balance());
        if rider < 0 {
            discrepancy("rider_overpaid")
        } else if settlement < 0 {
            discrepancy("driver_overpaid")
        } else if rider == 0 && settlement == 0 && self.events > 0 && self.sums[CHARGED] > 0 {
            ("BALANCED", None)
        } else {
            ("OPEN", None)
        }
    }

    fn fits(&self) -> bool {
        self.sums
            .iter()
            .chain(&[self.rider_balance(), self.settlement_balance()])
            .all(|v| v.abs() <= UNSCALED_MAX)
    }
}

/// Folds rows one at a time, in log order.
#[derive(Debug, Default)]
pub struct Fold<'a> {
    seen: HashMap<uuid::Uuid, &'a EventRow>,
    /// The balance so far; `None` before the first readable row.
    pub ledger: Option<Ledger>,
}

impl<'a> Fold<'a> {
    /// Applies the next row.
    pub fn step(&mut self, row: &'a EventRow) -> Step {
        let Some(sum) = sum_of(row.type_name()) else {
            return Step::Unreadable;
        };
        let readable = recon_schemas::currency::Currency::parse(&row.currency).is_some()
            && i128::from(row.amount).abs() <= UNSCALED_MAX
            && chrono::DateTime::from_timestamp_micros(row.occurred_at_us).is_some();
        if !readable {
            return Step::Unreadable;
        }
        let ledger = self
            .ledger
            .get_or_insert_with(|| Ledger::new(&row.currency));
        match self.seen.get(&row.event_id) {
            Some(first) if *first == row => return Step::Resent,
            Some(_) => {
                ledger.conflicting_duplicate = true;
                return Step::Conflict;
            }
            None => {
                self.seen.insert(row.event_id, row);
            }
        }
        if row.currency != ledger.currency {
            ledger.currency_mismatch = true;
            return Step::CurrencyMismatch;
        }
        ledger.sums[sum] += i128::from(row.amount);
        if !ledger.fits() {
            ledger.sums[sum] -= i128::from(row.amount);
            return Step::Overflow;
        }
        ledger.events = ledger.events.saturating_add(1);
        ledger.last_occurred_at_us = ledger.last_occurred_at_us.max(Some(row.occurred_at_us));
        Step::Summed
    }
}

/// Folds `events` with this module and with the reference fold (`recon_schemas::balance`, the
/// one the job uses) and names the first field where they differ. For the property tests that
/// hold the two equal (here and in `recon-tests`, over the job's generated traffic); the
/// verifier itself never calls the reference.
pub fn differs_from_reference(
    events: &[recon_schemas::event::Event],
) -> std::result::Result<(), String> {
    let rows: Vec<EventRow> = events
        .iter()
        .map(|e| EventRow::from_event(e).ok_or_else(|| format!("{e:?} does not fit a row")))
        .collect::<std::result::Result<_, _>>()?;
    let mut ours = Fold::default();
    for r in &rows {
        if ours.step(r) == Step::Unreadable {
            return Err(format!("ours finds {r:?} unreadable"));
        }
    }
    let reference = recon_schemas::balance::fold(events.iter());
    let (o, r) = match (ours.ledger, reference) {
        (None, None) => return Ok(()),
        (Some(o), Some(r)) => (o, r),
        (o, r) => return Err(format!("ours {o:?}, reference {r:?}")),
    };
    let status = r.status();
    let sums = [
        r.charged,
        r.collected,
        r.refunded,
        r.paid_out,
        r.fees,
        r.adjusted,
    ]
    .map(recon_schemas::money::to_unscaled);
    let same = [
        (
            "status",
            o.status() == (status.as_str(), status.reason().map(|x| x.as_str())),
        ),
        ("currency", o.currency == r.currency.code()),
        ("sums", sums.iter().zip(o.sums).all(|(a, b)| *a == Some(b))),
        ("events", o.events == r.events),
        (
            "last_occurred_at",
            o.last_occurred_at_us == r.last_occurred_at.map(|t| t.timestamp_micros()),
        ),
        (
            "conflicting_duplicate",
            o.conflicting_duplicate == r.conflicting_duplicate,
        ),
        (
            "currency_mismatch",
            o.currency_mismatch == r.currency_mismatch,
        ),
    ];
    match same.iter().find(|(_, ok)| !ok) {
        None => Ok(()),
        Some((field, _)) => Err(format!("{field} differs: ours {o:?}, reference {r:?}")),
    }
}

#[cfg(test)]
#[path = "fold_tests.rs"]
mod tests;
