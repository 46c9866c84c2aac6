//! Checks (a) to (d), one bucket at a time: every truth event in `ledger_events` exactly once
//! and identical, nothing there without a truth event, no duplicate ids or positions, the
//! dead letters in `rejected_events`, and the totals per event type and currency.
//!
//! Each function takes the items of one bucket and adds to an [`Outcome`]; they do no I/O, so
//! the tests drive them with plain rows.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::day::BusinessDay;
use crate::report::{Discrepancy, Findings, Kind, TotalLine};
use crate::row::{EventItem, EventRow, MatchKey, Position, PositionItem, RejectRow, Scope, Side};
use crate::truth::kafka::Windows;

use dead_letters::{DeadLetter, beyond_horizon, dead_letters, phantom_reject, split_owner};

#[path = "checks_dead_letters.rs"]
mod dead_letters;

/// Count and unscaled sum per (event type code, currency).
pub type Totals = BTreeMap<(u8, String), (u64, i128)>;

/// Adds `row` to `totals`.
pub fn add_total(totals: &mut Totals, row: &EventRow) {
    let e = totals
        .entry((row.event_type, row.currency.clone()))
        .or_default();
    e.0 += 1;
    e.1 += i128::from(row.amount);
}

/// What the bucket checks add up to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Discrepancies.
    pub findings: Findings,
    /// Distinct truth events of the day.
    pub truth_events: u64,
    /// Truth exact re-sends.
    pub truth_resends: u64,
    /// Truth dead letters of the day.
    pub truth_rejects: u64,
    /// `rejected_events` rows of the day.
    pub lake_rejects: u64,
    /// Dead letters that could not be dated.
    pub rejects_undated: u64,
    /// Truth versions of the day the job dead-lettered as `beyond_horizon`, each matched with
    /// its `rejected_events` row (also in `truth_rejects` and `lake_rejects`).
    pub beyond_horizon: u64,
    /// Truth totals.
    pub truth_totals: Totals,
}

impl Outcome {
    /// An outcome keeping at most `keep_max` discrepancies.
    pub fn new(keep_max: usize) -> Outcome {
        Outcome {
            findings: Findings::new(keep_max),
            ..Outcome::default()
        }
    }

    /// Adds another bucket's outcome.
    pub fn merge(&mut self, o: Outcome) {
        self.findings.merge(o.findings);
        self.truth_events += o.truth_events;
        self.truth_resends += o.truth_resends;
        self.truth_rejects += o.truth_rejects;
        self.lake_rejects += o.lake_rejects;
        self.rejects_undated += o.rejects_undated;
        self.beyond_horizon += o.beyond_horizon;
        for (k, (n, s)) in o.truth_totals {
            let e = self.truth_totals.entry(k).or_default();
            e.0 += n;
            e.1 += s;
        }
    }
}

/// The rows of one event id, borrowed from the bucket.
#[derive(Default)]
struct Group<'a> {
    truth: Vec<(&'a EventRow, Option<Position>, (i32, i64))>,
    ledger: Vec<(&'a EventRow, Position)>,
    conflicts: Vec<&'a RejectRow>,
    /// `balance_overflow` dead letters: the job refused the event itself.
    refused: Vec<&'a RejectRow>,
    /// `event_id_reused` dead letters: copies of the id on trips other than the one holding it.
    reused: Vec<&'a RejectRow>,
    /// `beyond_horizon` dead letters: records that came later than the job's horizon.
    late: Vec<&'a RejectRow>,
}

impl Group<'_> {
    fn clear(&mut self) {
        self.truth.clear();
        self.ledger.clear();
        self.conflicts.clear();
        self.refused.clear();
        self.reused.clear();
        self.late.clear();
    }
}

/// The event id an item is grouped by (a dead letter without a readable id groups under nil).
fn item_id(item: &EventItem) -> Uuid {
    match item {
        EventItem::Truth { row, .. } | EventItem::Ledger { row, .. } => row.event_id,
        EventItem::Conflict(r) => r
            .event_id
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_default(),
    }
}

/// (a), (b), (c) for event ids, and the Kafka truth's conflicting versions against the
/// lakehouse's `conflicting_duplicate` dead letters.
///
/// Items are grouped by sorting an index of (event id, position in the bucket), not by a map
/// of vectors: no allocation per event, and the rows stay where they were read.
pub fn check_events(items: Vec<EventItem>, day: &BusinessDay, out: &mut Outcome) {
    let mut index: Vec<(Uuid, u32)> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (item_id(it), u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    assert!(
        items.len() < u32::MAX as usize,
        "a bucket of {} items",
        items.len()
    );
    index.sort_unstable();
    let mut g = Group::default();
    let mut at = 0;
    while at < index.len() {
        let id = index[at].0;
        g.clear();
        while at < index.len() && index[at].0 == id {
            match &items[index[at].1 as usize] {
                EventItem::Truth {
                    row,
                    position,
                    order,
                } => g.truth.push((row, *position, *order)),
                EventItem::Ledger { row, position, .. } => g.ledger.push((row, *position)),
                EventItem::Conflict(r) if r.reason == recon_schemas::decode::BALANCE_OVERFLOW => {
                    g.refused.push(r);
                }
                EventItem::Conflict(r) if r.reason == recon_schemas::decode::EVENT_ID_REUSED => {
                    g.reused.push(r);
                }
                EventItem::Conflict(r) if r.reason == recon_schemas::decode::BEYOND_HORIZON => {
                    g.late.push(r);
                }
                EventItem::Conflict(r) => g.conflicts.push(r),
            }
            at += 1;
        }
        check_group(id, &mut g, day, out);
    }
}

fn check_group(id: Uuid, g: &mut Group<'_>, day: &BusinessDay, out: &mut Outcome) {
    {
        g.truth.sort_by_key(|t| t.2);
        g.ledger.sort_by_key(|l| l.1);
        let mut expected_reused = split_owner(g);
        // The job refused the event (balance overflow): it is a dead letter on both sides,
        // not a ledger event; check (e) proves the refusal by folding the trip.
        let refusal = match g.truth.first() {
            Some((_, tpos, _)) if g.ledger.is_empty() => g
                .refused
                .iter()
                .position(|r| tpos.is_none() || r.position == *tpos)
                .map(|i| g.refused.swap_remove(i))
                .is_some(),
            _ => false,
        };
        for r in g.refused.iter().filter(|r| r.scope == Scope::InDay) {
            out.findings.add(phantom_reject(
                r,
                "no truth event the job could have refused at this position (or it is also in ledger_events)",
            ));
        }
        // Records beyond the job's horizon: each takes the place of what its version would
        // have had (ledger row, drop, or dead letter); counted there, removed from here.
        let first_late = beyond_horizon(g, &mut expected_reused, !refusal, day, out);
        let mut expected_conflicts: Vec<(&EventRow, Option<Position>)> = Vec::new();
        if let Some((first, rest)) = g.truth.split_first() {
            for (v, pos, _) in rest {
                if *v == first.0 {
                    out.truth_resends += 1;
                } else {
                    expected_conflicts.push((v, *pos));
                }
            }
        }
        match g.truth.first() {
            Some(_) if first_late => {}
            Some((t, _, _)) if refusal => {
                if day.contains_micros(t.occurred_at_us) {
                    out.truth_rejects += 1;
                    out.lake_rejects += 1;
                }
            }
            Some((t, tpos, _)) if day.contains_micros(t.occurred_at_us) => {
                out.truth_events += 1;
                add_total(&mut out.truth_totals, t);
                match g.ledger.first() {
                    None => {
                        let mut d = Discrepancy::new(
                            Kind::Missing,
                            format!(
                                "{} {} {} not in ledger_events",
                                t.type_name(),
                                t.amount_text(),
                                t.currency
                            ),
                        )
                        .event(id)
                        .trip(&t.trip_id);
                        if let Some(p) = tpos {
                            d = d.at(p.partition, p.offset);
                        }
                        out.findings.add(d);
                    }
                    Some((l, lpos)) => compare(t, *tpos, l, *lpos, &mut out.findings),
                }
                duplicates(id, &g.ledger, &mut out.findings);
            }
            Some((t, _, _)) => {
                for (l, lpos) in &g.ledger {
                    out.findings.add(
                        Discrepancy::new(
                            Kind::ContentMismatch,
                            format!(
                                "occurred_at: truth {} (outside the day), ledger {}",
                                micros_text(t.occurred_at_us),
                                micros_text(l.occurred_at_us)
                            ),
                        )
                        .event(id)
                        .trip(&l.trip_id)
                        .at(lpos.partition, lpos.offset),
                    );
                }
                duplicates(id, &g.ledger, &mut out.findings);
            }
            None => {
                for (l, lpos) in &g.ledger {
                    out.findings.add(
                        Discrepancy::new(
                            Kind::Phantom,
                            format!(
                                "{} {} {} in ledger_events has no truth event",
                                l.type_name(),
                                l.amount_text(),
                                l.currency
                            ),
                        )
                        .event(id)
                        .trip(&l.trip_id)
                        .at(lpos.partition, lpos.offset),
                    );
                }
            }
        }
        dead_letters(
            id,
            expected_conflicts,
            g.conflicts.clone(),
            DeadLetter::Conflict,
            day,
            out,
        );
        dead_letters(
            id,
            expected_reused,
            g.reused.clone(),
            DeadLetter::Reused,
            day,
            out,
        );
    }
}

fn duplicates(id: Uuid, ledger: &[(&EventRow, Position)], findings: &mut Findings) {
    if let Some(((first, fpos), rest)) = ledger.split_first() {
        for (_, pos) in rest {
            findings.add(
                Discrepancy::new(
                    Kind::DuplicateEventId,
                    format!("event id also at {fpos} in ledger_events"),
                )
                .event(id)
                .trip(&first.trip_id)
                .at(pos.partition, pos.offset),
            );
        }
    }
}

fn micros_text(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)
        .map_or_else(|| us.to_string(), |t| t.to_rfc3339())
}

/// Compares a truth event with its ledger row.
fn compare(
    t: &EventRow,
    tpos: Option<Position>,
    l: &EventRow,
    lpos: Position,
    findings: &mut Findings,
) {
    let key = |kind, detail: String| {
        Discrepancy::new(kind, detail)
            .event(t.event_id)
            .trip(&t.trip_id)
            .at(lpos.partition, lpos.offset)
    };
    if t.amount != l.amount {
        findings.add(key(
            Kind::AmountMismatch,
            format!(
                "amount: truth {}, ledger {}",
                t.amount_text(),
                l.amount_text()
            ),
        ));
    }
    if t.currency != l.currency {
        findings.add(key(
            Kind::CurrencyMismatch,
            format!("currency: truth {}, ledger {}", t.currency, l.currency),
        ));
    }
    let mut fields = Vec::new();
    if t.event_type != l.event_type {
        fields.push(format!(
            "event_type: truth {}, ledger {}",
            t.type_name(),
            l.type_name()
        ));
    }
    if t.trip_id != l.trip_id {
        fields.push(format!(
            "trip_id: truth {}, ledger {}",
            t.trip_id, l.trip_id
        ));
    }
    if t.occurred_at_us != l.occurred_at_us {
        fields.push(format!(
            "occurred_at: truth {}, ledger {}",
            micros_text(t.occurred_at_us),
            micros_text(l.occurred_at_us)
        ));
    }
    if t.extra != l.extra {
        fields.push("rider/driver/payment/payout id or schema_version differ".into());
    }
    if let Some(tp) = tpos
        && tp != lpos
    {
        fields.push(format!("Kafka position: truth {tp}, ledger {lpos}"));
    }
    if !fields.is_empty() {
        findings.add(key(Kind::ContentMismatch, fields.join("; ")));
    }
}

/// (a), (b) for dead letters paired by match key. `windows` is the Kafka truth's window (empty
/// for other truths): an undated lakehouse dead letter inside it must match a truth one.
pub fn check_rejects(items: Vec<RejectRow>, windows: &Windows, out: &mut Outcome) {
    let mut groups: HashMap<MatchKey, (Vec<RejectRow>, Vec<RejectRow>)> = HashMap::new();
    for r in items {
        let g = groups.entry(r.key).or_default();
        match r.side {
            Side::Truth => g.0.push(r),
            Side::Lake => g.1.push(r),
        }
    }
    for (_, (truth, lake)) in groups {
        let paired = truth.len().min(lake.len());
        for (i, t) in truth.iter().enumerate() {
            if t.scope == Scope::Undated {
                out.rejects_undated += 1;
            }
            let in_day = t.scope == Scope::InDay;
            if in_day {
                out.truth_rejects += 1;
            }
            if i < paired {
                let l = &lake[i];
                if in_day {
                    out.lake_rejects += 1;
                    if l.reason != t.reason || l.digest != t.digest {
                        let what = if l.reason != t.reason {
                            format!("reason: truth {}, rejected_events {}", t.reason, l.reason)
                        } else {
                            "key or payload bytes differ from the truth's".to_string()
                        };
                        let mut d = Discrepancy::new(Kind::RejectMismatch, what);
                        if let Some(p) = l.position {
                            d = d.at(p.partition, p.offset);
                        }
                        if let Some(e) = &t.event_id {
                            d = d.event(e);
                        }
                        out.findings.add(d);
                    }
                }
            } else if in_day {
                let mut d = Discrepancy::new(
                    Kind::MissingReject,
                    format!("dead letter ({}) not in rejected_events", t.reason),
                );
                if let Some(p) = t.position {
                    d = d.at(p.partition, p.offset);
                }
                if let Some(e) = &t.event_id {
                    d = d.event(e);
                }
                if let Some(tr) = &t.trip_id {
                    d = d.trip(tr);
                }
                out.findings.add(d);
            }
        }
        for l in lake.iter().skip(paired) {
            let in_window = l.position.is_some_and(|p| {
                windows
                    .get(&p.partition)
                    .is_some_and(|(s, e)| *s <= p.offset && p.offset < *e)
            });
            let phantom = match l.scope {
                Scope::InDay => true,
                Scope::Undated => in_window,
                Scope::OutOfDay => false,
            };
            if phantom {
                out.lake_rejects += 1;
                out.findings
                    .add(phantom_reject(l, "no such dead letter in the truth"));
            } else if l.scope == Scope::Undated {
                out.rejects_undated += 1;
            }
        }
    }
}

/// (c) for positions: two different rows must never claim one Kafka position. Rows of one
/// event id at one position are [`Kind::DuplicateEventId`] already.
pub fn check_positions(mut items: Vec<PositionItem>, findings: &mut Findings) {
    items.sort_unstable_by_key(|i| i.position);
    for run in items.chunk_by(|a, b| a.position == b.position) {
        if run.len() < 2 {
            continue;
        }
        let pos = run[0].position;
        let claims: Vec<Option<Uuid>> = run.iter().map(|i| i.event_id).collect();
        let same_event = claims[0].is_some() && claims.iter().all(|c| *c == claims[0]);
        if same_event {
            continue;
        }
        let who: Vec<String> = claims
            .iter()
            .map(|c| c.map_or_else(|| "a rejected_events row".to_string(), |u| u.to_string()))
            .collect();
        let mut d = Discrepancy::new(
            Kind::DuplicatePosition,
            format!("claimed by {}", who.join(", ")),
        )
        .at(pos.partition, pos.offset);
        if let Some(Some(e)) = claims.first() {
            d = d.event(e);
        }
        findings.add(d);
    }
}

/// An unscaled amount (thousandths) as a decimal with its three places, at any size: a day's
/// total can exceed what `decimal(18, 3)` holds.
pub fn scaled(unscaled: i128) -> String {
    let scale = 10u128.pow(recon_schemas::money::SCALE);
    let abs = unscaled.unsigned_abs();
    let sign = if unscaled < 0 { "-" } else { "" };
    let width = recon_schemas::money::SCALE as usize;
    format!("{sign}{}.{:0width$}", abs / scale, abs % scale)
}

/// (d): totals per event type and currency, truth against ledger.
pub fn check_totals(truth: &Totals, ledger: &Totals, findings: &mut Findings) -> Vec<TotalLine> {
    let mut keys: Vec<&(u8, String)> = truth.keys().chain(ledger.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut lines = Vec::new();
    for k in keys {
        let t = truth.get(k).copied().unwrap_or_default();
        let l = ledger.get(k).copied().unwrap_or_default();
        let name = recon_schemas::event::EventType::ALL
            .get(usize::from(k.0))
            .map_or("?", |t| t.as_str());
        let amount = scaled;
        if t != l {
            findings.add(Discrepancy::new(
                Kind::TotalMismatch,
                format!(
                    "{name} {}: truth {} events {} , ledger {} events {}",
                    k.1,
                    t.0,
                    amount(t.1),
                    l.0,
                    amount(l.1)
                ),
            ));
        }
        lines.push(TotalLine {
            event_type: name.to_string(),
            currency: k.1.clone(),
            truth_count: t.0,
            truth_amount: amount(t.1),
            ledger_count: l.0,
            ledger_amount: amount(l.1),
        });
    }
    lines
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
