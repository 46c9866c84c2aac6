//! The dead letters of records that decoded (check (c) for events): later versions of an id on
//! its trip (`conflicting_duplicate`), copies of an id on another trip (`event_id_reused`) and
//! records that came later than the job's horizon (`beyond_horizon`), matched by position
//! against `rejected_events`.

use uuid::Uuid;

use super::{Group, Outcome};
use crate::day::BusinessDay;
use crate::report::{Discrepancy, Kind};
use crate::row::{EventRow, Position, RejectRow, Scope};

/// An event id is one event across the job: the trip that holds it (its `ledger_events` row's,
/// else the first truth trip the job did not dead-letter as `event_id_reused`, else the first)
/// keeps its truth versions in `g.truth`; the versions on other trips are returned, each
/// expected in `rejected_events` as `event_id_reused`. Which trip holds the id follows the
/// order the job read its partitions in, so any trip the truth has may be the holder.
pub(super) fn split_owner<'a>(g: &mut Group<'a>) -> Vec<(&'a EventRow, Option<Position>)> {
    let trips = |t: &str| g.truth.iter().any(|(v, _, _)| v.trip_id == t);
    let dead_lettered =
        |pos: &Option<Position>| pos.is_some() && g.reused.iter().any(|r| r.position == *pos);
    let owner = g
        .ledger
        .first()
        .map(|(l, _)| l.trip_id.as_str())
        .filter(|t| trips(t))
        .or_else(|| {
            g.truth
                .iter()
                .find(|(_, pos, _)| !dead_lettered(pos))
                .map(|(v, _, _)| v.trip_id.as_str())
        })
        .or_else(|| g.truth.first().map(|(v, _, _)| v.trip_id.as_str()))
        .map(str::to_string);
    let Some(owner) = owner else {
        return Vec::new();
    };
    let mut others = Vec::new();
    g.truth.retain(|(v, pos, _)| {
        let mine = v.trip_id == owner;
        if !mine {
            others.push((*v, *pos));
        }
        mine
    });
    others
}

/// `beyond_horizon` dead letters (Kafka truth): the job dead-letters a record that came later
/// than its horizon without looking at its content, so the row can stand for any truth version
/// of the id. Each row accounts for the truth version at its own position, and takes the place
/// of what that version would otherwise have had:
///
/// - the owner's first version, when it has no `ledger_events` row and no `balance_overflow`
///   refusal (`first_free`): the event itself, never summed (returns `true`: not missing);
/// - a later version on the owner's trip (removed from `g.truth`): an exact re-send (not
///   dropped, then) or a conflicting version (no `conflicting_duplicate` expected);
/// - a copy on another trip (removed from `reused`): no `event_id_reused` expected.
///
/// A matched row counts, when its truth version is of the day, as a dead letter on both sides
/// and in [`Outcome::beyond_horizon`]. A row at a position where the truth has no version of the
/// id, or that a ledger row (or refusal) also claims, is a [`Kind::PhantomReject`] when dated in
/// the day. A truth version with no row at all is left to the other checks (missing, missing
/// dead letter) as before.
pub(super) fn beyond_horizon<'a>(
    g: &mut Group<'a>,
    reused: &mut Vec<(&'a EventRow, Option<Position>)>,
    first_free: bool,
    day: &BusinessDay,
    out: &mut Outcome,
) -> bool {
    let mut first_late = false;
    let late = std::mem::take(&mut g.late);
    for r in late {
        let at = |pos: &Option<Position>| r.position.is_some() && *pos == r.position;
        let why = if g.ledger.iter().any(|(_, p)| at(&Some(*p))) {
            Some("the record at this position is in ledger_events")
        } else if let Some(i) = g.truth.iter().position(|(_, pos, _)| at(pos)) {
            if i > 0 {
                let (v, _, _) = g.truth.remove(i);
                late_counted(v, day, out);
                None
            } else if first_free && !first_late && g.ledger.is_empty() {
                first_late = true;
                late_counted(g.truth[0].0, day, out);
                None
            } else {
                Some(
                    "the event is accounted for already (ledger_events, balance_overflow or another row)",
                )
            }
        } else if let Some(i) = reused.iter().position(|(_, pos)| at(pos)) {
            let (v, _) = reused.remove(i);
            late_counted(v, day, out);
            None
        } else {
            Some("no truth version of this event at this position (or another row accounts for it)")
        };
        if let Some(why) = why
            && r.scope == Scope::InDay
        {
            out.lake_rejects += 1;
            out.findings.add(phantom_reject(r, why));
        }
    }
    first_late
}

/// Counts a truth version the job dead-lettered as `beyond_horizon`, as `balance_overflow`
/// refusals are counted: on both sides when it is of the day.
fn late_counted(v: &EventRow, day: &BusinessDay, out: &mut Outcome) {
    if day.contains_micros(v.occurred_at_us) {
        out.truth_rejects += 1;
        out.lake_rejects += 1;
        out.beyond_horizon += 1;
    }
}

/// Which dead letters [`dead_letters`] matches.
#[derive(Clone, Copy)]
pub(super) enum DeadLetter {
    /// Later versions of the id on its trip with other content: `conflicting_duplicate`.
    Conflict,
    /// Copies of the id on another trip: `event_id_reused`.
    Reused,
}

pub(super) fn dead_letters(
    id: Uuid,
    expected: Vec<(&EventRow, Option<Position>)>,
    mut lake: Vec<&RejectRow>,
    what: DeadLetter,
    day: &BusinessDay,
    out: &mut Outcome,
) {
    for r in &lake {
        if r.scope == Scope::InDay {
            out.lake_rejects += 1;
        }
    }
    for (v, pos) in expected {
        let in_day = day.contains_micros(v.occurred_at_us);
        if in_day {
            out.truth_rejects += 1;
        }
        if let Some(i) = lake.iter().position(|r| r.position == pos) {
            lake.swap_remove(i);
        } else if in_day {
            let version = format!("{} {} {}", v.type_name(), v.amount_text(), v.currency);
            let detail = match what {
                DeadLetter::Conflict => {
                    format!("conflicting version ({version}) not in rejected_events")
                }
                DeadLetter::Reused => format!(
                    "copy on another trip ({version}) not in rejected_events as event_id_reused"
                ),
            };
            let mut d = Discrepancy::new(Kind::MissingReject, detail)
                .event(id)
                .trip(&v.trip_id);
            if let Some(p) = pos {
                d = d.at(p.partition, p.offset);
            }
            out.findings.add(d);
        }
    }
    let why = match what {
        DeadLetter::Conflict => "no conflicting version of this event in the truth",
        DeadLetter::Reused => "no copy of this event id on another trip in the truth",
    };
    for r in lake.into_iter().filter(|r| r.scope == Scope::InDay) {
        out.findings.add(phantom_reject(r, why));
    }
}

pub(super) fn phantom_reject(r: &RejectRow, why: &str) -> Discrepancy {
    let mut d = Discrepancy::new(
        Kind::PhantomReject,
        format!("rejected_events row ({}): {why}", r.reason),
    );
    if let Some(e) = &r.event_id {
        d = d.event(e);
    }
    if let Some(t) = &r.trip_id {
        d = d.trip(t);
    }
    if let Some(p) = r.position {
        d = d.at(p.partition, p.offset);
    }
    d
}
