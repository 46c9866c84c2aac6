//! Per-trip balances: order-independent sums of a trip's events, and the trip's status.
//!
//! Each event type adds its amount to one sum:
//!
//! | event type | sum |
//! |---|---|
//! | `trip_charge` | `charged` |
//! | `rider_payment` | `collected` |
//! | `refund` | `refunded` |
//! | `driver_payout` | `paid_out` |
//! | `platform_fee` | `fees` |
//! | `adjustment` | `adjusted` (a post-trip amount added to the fare: toll, tip) |
//!
//! and the two balances are
//!
//! - `rider_balance = (charged + adjusted) - collected`: what the rider still owes,
//! - `settlement_balance = (charged + adjusted - refunded) - paid_out - fees`: net fare not yet
//!   split between driver and platform.
//!
//! Sums are commutative, so replaying a trip's distinct events in any order gives the same
//! balance. Deduplication by `event_id` is [`fold`]'s job (and the pipeline's state), not
//! [`TripBalance::apply`]'s.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::currency::Currency;
use crate::event::{Event, EventType};

/// Running sums of one trip. All sums are in [`TripBalance::currency`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TripBalance {
    /// The trip's currency: that of its first event in log order.
    pub currency: Currency,
    /// Sum of `trip_charge` amounts.
    pub charged: Decimal,
    /// Sum of `rider_payment` amounts.
    pub collected: Decimal,
    /// Sum of `refund` amounts.
    pub refunded: Decimal,
    /// Sum of `driver_payout` amounts.
    pub paid_out: Decimal,
    /// Sum of `platform_fee` amounts.
    pub fees: Decimal,
    /// Sum of `adjustment` amounts (added to the fare).
    pub adjusted: Decimal,
    /// Number of events summed (duplicates and currency mismatches are not counted).
    pub events: u32,
    /// Latest `occurred_at` among the summed events.
    pub last_occurred_at: Option<DateTime<Utc>>,
    /// An event in another currency arrived; it was not summed.
    pub currency_mismatch: bool,
    /// An event reused a seen `event_id` with different content; it was not summed.
    pub conflicting_duplicate: bool,
}

/// What [`TripBalance::apply`] did with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The amount was added to its sum.
    Summed,
    /// The event's currency differs from the trip's: nothing summed, `currency_mismatch` set.
    CurrencyMismatch,
    /// Summing the amount would take a sum or a balance beyond `decimal(18,3)` (what
    /// `trip_balances` can hold): nothing summed, the balance unchanged. The event goes to
    /// `rejected_events` as [`BALANCE_OVERFLOW`](crate::decode::BALANCE_OVERFLOW).
    Overflow,
}

/// Where a trip stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TripStatus {
    /// Not yet charged, or charged and not yet fully collected and split.
    Open,
    /// Charged, fully collected, and the net fare split exactly into payout plus fees.
    Balanced,
    /// Something went the wrong way; see the reason.
    Discrepancy(DiscrepancyReason),
}

impl TripStatus {
    /// `"OPEN"`, `"BALANCED"` or `"DISCREPANCY"`, as written to `trip_balances.status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TripStatus::Open => "OPEN",
            TripStatus::Balanced => "BALANCED",
            TripStatus::Discrepancy(_) => "DISCREPANCY",
        }
    }

    /// The reason of a discrepancy, `None` otherwise.
    pub fn reason(&self) -> Option<DiscrepancyReason> {
        match self {
            TripStatus::Discrepancy(r) => Some(*r),
            _ => None,
        }
    }
}

/// Why a trip is in discrepancy, in order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiscrepancyReason {
    /// A seen `event_id` came back with different content.
    ConflictingDuplicate,
    /// An event's currency differs from the trip's.
    CurrencyMismatch,
    /// The rider paid more than charged plus adjusted (`rider_balance < 0`).
    RiderOverpaid,
    /// Payouts plus fees exceed the net fare (`settlement_balance < 0`).
    DriverOverpaid,
}

impl DiscrepancyReason {
    /// Stable snake_case code, as written to `trip_balances.discrepancy_reason`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DiscrepancyReason::ConflictingDuplicate => "conflicting_duplicate",
            DiscrepancyReason::CurrencyMismatch => "currency_mismatch",
            DiscrepancyReason::RiderOverpaid => "rider_overpaid",
            DiscrepancyReason::DriverOverpaid => "driver_overpaid",
        }
    }
}

impl TripBalance {
    /// An empty balance in `currency`.
    pub fn new(currency: Currency) -> TripBalance {
        TripBalance {
            currency,
            charged: Decimal::ZERO,
            collected: Decimal::ZERO,
            refunded: Decimal::ZERO,
            paid_out: Decimal::ZERO,
            fees: Decimal::ZERO,
            adjusted: Decimal::ZERO,
            events: 0,
            last_occurred_at: None,
            currency_mismatch: false,
            conflicting_duplicate: false,
        }
    }

    /// Adds `ev`'s amount to its sum, unless its currency differs from the trip's or the result
    /// would not fit `decimal(18,3)` ([`Applied::Overflow`]: the balance is left unchanged).
    /// Does not deduplicate: the caller applies each distinct event once.
    pub fn apply(&mut self, ev: &Event) -> Applied {
        if ev.currency != self.currency {
            self.currency_mismatch = true;
            return Applied::CurrencyMismatch;
        }
        let sum = match ev.event_type {
            EventType::TripCharge => &mut self.charged,
            EventType::RiderPayment => &mut self.collected,
            EventType::Refund => &mut self.refunded,
            EventType::DriverPayout => &mut self.paid_out,
            EventType::PlatformFee => &mut self.fees,
            EventType::Adjustment => &mut self.adjusted,
        };
        let before = *sum;
        // Cannot overflow `Decimal` itself: sums stay below 10^15 and amounts are validated.
        *sum += ev.amount;
        if !self.representable() {
            self.set_sum(ev.event_type, before);
            return Applied::Overflow;
        }
        self.events = self.events.saturating_add(1);
        self.last_occurred_at = self.last_occurred_at.max(Some(ev.occurred_at));
        Applied::Summed
    }

    /// Whether every sum and both balances fit the money columns of `trip_balances`.
    pub fn representable(&self) -> bool {
        let max = crate::money::max_abs();
        [
            self.charged,
            self.collected,
            self.refunded,
            self.paid_out,
            self.fees,
            self.adjusted,
            self.rider_balance(),
            self.settlement_balance(),
        ]
        .iter()
        .all(|v| v.abs() <= max)
    }

    fn set_sum(&mut self, t: EventType, value: Decimal) {
        match t {
            EventType::TripCharge => self.charged = value,
            EventType::RiderPayment => self.collected = value,
            EventType::Refund => self.refunded = value,
            EventType::DriverPayout => self.paid_out = value,
            EventType::PlatformFee => self.fees = value,
            EventType::Adjustment => self.adjusted = value,
        }
    }

    /// What the rider still owes: `(charged + adjusted) - collected`. Negative = overpaid.
    pub fn rider_balance(&self) -> Decimal {
        (self.charged + self.adjusted) - self.collected
    }

    /// Net fare not yet split: `(charged + adjusted - refunded) - paid_out - fees`.
    /// Negative = driver and platform got more than the net fare.
    pub fn settlement_balance(&self) -> Decimal {
        (self.charged + self.adjusted - self.refunded) - self.paid_out - self.fees
    }

    /// The trip's status; see [`DiscrepancyReason`] for precedence.
    pub fn status(&self) -> TripStatus {
        if self.conflicting_duplicate {
            return TripStatus::Discrepancy(DiscrepancyReason::ConflictingDuplicate);
        }
        if self.currency_mismatch {
            return TripStatus::Discrepancy(DiscrepancyReason::CurrencyMismatch);
        }
        let rider = self.rider_balance();
        let settlement = self.settlement_balance();
        if rider < Decimal::ZERO {
            TripStatus::Discrepancy(DiscrepancyReason::RiderOverpaid)
        } else if settlement < Decimal::ZERO {
            TripStatus::Discrepancy(DiscrepancyReason::DriverOverpaid)
        } else if rider.is_zero()
            && settlement.is_zero()
            && self.events > 0
            && self.charged > Decimal::ZERO
        {
            TripStatus::Balanced
        } else {
            TripStatus::Open
        }
    }
}

/// Folds one trip's events, given in log order, into its balance; `None` for no events.
///
/// The trip's currency is that of the first event. An exact duplicate (seen `event_id`, same
/// [`Event::fingerprint`]) is counted once; a seen `event_id` with a different fingerprint is
/// not summed and sets `conflicting_duplicate`; an event in another currency is not summed and
/// sets `currency_mismatch`; an event that would overflow the trip ([`Applied::Overflow`]) is
/// not summed (its id counts as seen: a re-send is an exact duplicate). This is the reference
/// the pipeline's state and batch-verify must agree with.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<TripBalance> {
    let mut seen: HashMap<Uuid, u64> = HashMap::new();
    let mut balance: Option<TripBalance> = None;
    for ev in events {
        let b = balance.get_or_insert_with(|| TripBalance::new(ev.currency));
        let fp = ev.fingerprint();
        match seen.get(&ev.event_id) {
            Some(&first) if first == fp => continue,
            Some(_) => {
                b.conflicting_duplicate = true;
                continue;
            }
            None => {
                seen.insert(ev.event_id, fp);
            }
        }
        b.apply(ev);
    }
    balance
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
