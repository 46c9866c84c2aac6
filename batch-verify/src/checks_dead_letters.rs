//! The dead letters of records that decoded (check (c) for events): later versions of an id on
//! its trip (`conflicting_duplicate`) and copies of an id on another trip (`event_id_reused`),
//! matched by position against `rejected_events`.

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
