//! The judgements of checks (g) and (h) on one bucket of trips (every row of a trip is in the
//! same bucket on every side).

use std::collections::{HashMap, HashSet};

use super::{AlertRecord, Committed, CurrentRow, LakeBalance, OutputsChecked, Sums};
use crate::checks::scaled;
use crate::report::{Discrepancy, Findings, Kind};

fn shown(sums: &Sums) -> String {
    let parts: Vec<String> = sums.iter().map(|s| scaled(i128::from(*s))).collect();
    format!("[{}]", parts.join(", "))
}

/// Check (g): `rows` of the current-balance table against each trip's `latest` lakehouse row.
pub fn judge_balances(
    latest: &HashMap<String, LakeBalance>,
    rows: &[CurrentRow],
    committed: &Committed,
    out: &mut OutputsChecked,
    findings: &mut Findings,
) {
    let mut seen = HashSet::with_capacity(rows.len());
    for row in rows {
        out.current_balances_checked += 1;
        seen.insert(row.trip_id.as_str());
        let lake = latest.get(&row.trip_id);
        if lake.is_some_and(|l| l.sums == row.sums && l.status == row.status) {
            continue;
        }
        if committed.in_flight(row.kafka_partition, row.checkpoint_id) {
            out.current_balances_in_flight += 1;
            continue;
        }
        let detail = match lake {
            Some(l) => format!(
                "current balance {} {} (checkpoint {}) != latest trip_balances {} {} (checkpoint {})",
                shown(&row.sums),
                row.status,
                row.checkpoint_id,
                shown(&l.sums),
                l.status,
                l.checkpoint_id
            ),
            None => format!(
                "current balance row (checkpoint {}) has no trip_balances row",
                row.checkpoint_id
            ),
        };
        findings.add(Discrepancy::new(Kind::CurrentBalanceMismatch, detail).trip(&row.trip_id));
    }
    let mut absent: Vec<&String> = latest
        .keys()
        .filter(|t| !seen.contains(t.as_str()))
        .collect();
    absent.sort();
    for trip in absent {
        findings.add(
            Discrepancy::new(
                Kind::CurrentBalanceMismatch,
                "trip has trip_balances rows but no current balance row",
            )
            .trip(trip),
        );
    }
}

/// Check (h): the alerts of a bucket against each trip's `latest` lakehouse status.
pub fn judge_alerts(
    latest: &HashMap<String, LakeBalance>,
    alerts: Vec<AlertRecord>,
    watch: &[&str],
    committed: &Committed,
    out: &mut OutputsChecked,
    findings: &mut Findings,
) {
    let mut ids = HashSet::new();
    let mut last: HashMap<String, AlertRecord> = HashMap::new();
    for a in alerts {
        out.alerts_checked += 1;
        if !ids.insert(a.alert_id) {
            findings.add(
                Discrepancy::new(
                    Kind::AlertMismatch,
                    format!("alert {} is in the topic more than once", a.alert_id),
                )
                .trip(&a.trip_id)
                .event(&a.event_id)
                .at(a.kafka_partition, a.kafka_offset),
            );
            continue;
        }
        let newer = last.get(&a.trip_id).is_none_or(|l| {
            (a.kafka_partition, a.kafka_offset) > (l.kafka_partition, l.kafka_offset)
        });
        if newer {
            last.insert(a.trip_id.clone(), a);
        }
    }
    let mut trips: Vec<&LakeBalance> = latest.values().collect();
    trips.sort_by(|a, b| a.trip_id.cmp(&b.trip_id));
    for l in trips {
        let status = &l.status;
        let watched = watch.contains(&status.as_str());
        let alert = last.get(&l.trip_id);
        if alert.is_some_and(|a| committed.in_flight(a.kafka_partition, a.checkpoint_id as i64)) {
            out.alerts_in_flight += 1;
            continue;
        }
        let ok = match alert {
            Some(a) => {
                a.to_status == *status || (!watched && !watch.contains(&a.to_status.as_str()))
            }
            None => !watched,
        };
        if !ok {
            let detail = match alert {
                Some(a) => format!(
                    "latest status {status}, but the trip's last alert ({}) says {} -> {}",
                    a.alert_id, a.from_status, a.to_status
                ),
                None => format!("latest status {status} is watched, but the trip has no alert"),
            };
            findings.add(Discrepancy::new(Kind::AlertMismatch, detail).trip(&l.trip_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(trip: &str, offset: i64, from: &str, to: &str) -> AlertRecord {
        AlertRecord {
            alert_id: uuid::Uuid::from_u128(offset as u128),
            job_id: "j".into(),
            trip_id: trip.into(),
            from_status: from.into(),
            to_status: to.into(),
            event_id: "e".into(),
            kafka_partition: 0,
            kafka_offset: offset,
            checkpoint_id: 1,
        }
    }

    fn latest(rows: &[(&str, &str, i64)]) -> HashMap<String, LakeBalance> {
        rows.iter()
            .map(|(trip, status, unit)| {
                let l = LakeBalance {
                    trip_id: trip.to_string(),
                    checkpoint_id: 1,
                    sums: [*unit; 6],
                    status: status.to_string(),
                    kafka_partition: 0,
                };
                (trip.to_string(), l)
            })
            .collect()
    }

    fn committed(tasks: u32, rows: &[(i32, i64)]) -> Committed {
        let mut c = Committed::new(tasks);
        for (p, ckpt) in rows {
            c.add(*p, *ckpt);
        }
        c
    }

    /// In a fleet each task numbers its own checkpoints: a row is in flight when it is newer
    /// than its own task's newest committed checkpoint, whatever the other tasks reached.
    #[test]
    fn in_flight_is_judged_per_task_in_a_fleet() {
        // K = 4: partitions 1 and 5 are task 1 (committed through 7), 2 is task 2 (through 50).
        let c = committed(4, &[(1, 3), (5, 7), (2, 50)]);
        assert!(!c.in_flight(1, 7) && c.in_flight(1, 8), "task 1: through 7");
        assert!(
            !c.in_flight(6, 50) && c.in_flight(6, 51),
            "task 2: through 50"
        );
        assert!(c.in_flight(3, 1), "task 3 has nothing committed");
        // One process numbers every checkpoint: the newest of all.
        let one = committed(0, &[(1, 3), (5, 7), (2, 50)]);
        assert!(!one.in_flight(1, 50) && one.in_flight(3, 51));
        // A current row of task 1 at checkpoint 9 differs from the lake: in flight, not
        // reported, although task 2 committed checkpoint 50.
        let latest = latest(&[("a", "OPEN", 1)]);
        let row = CurrentRow {
            trip_id: "a".into(),
            sums: [2; 6],
            status: "OPEN".into(),
            checkpoint_id: 9,
            kafka_partition: 5,
        };
        let (mut f, mut out) = (Findings::new(10), OutputsChecked::default());
        judge_balances(&latest, std::slice::from_ref(&row), &c, &mut out, &mut f);
        assert_eq!(
            (
                f.count(Kind::CurrentBalanceMismatch),
                out.current_balances_in_flight
            ),
            (0, 1)
        );
        // Judged against the newest of all (the single-process rule) it would be a finding.
        let (mut f, mut out) = (Findings::new(10), OutputsChecked::default());
        judge_balances(&latest, &[row], &one, &mut out, &mut f);
        assert_eq!(f.count(Kind::CurrentBalanceMismatch), 1);
    }

    #[test]
    fn alerts_agree_with_latest_status_or_are_reported() {
        let watch = ["DISCREPANCY"];
        let latest = latest(&[
            ("ok-open", "OPEN", 1),
            ("ok-disc", "DISCREPANCY", 1),
            ("no-alert", "DISCREPANCY", 1),
            ("stale-left", "OPEN", 1),
        ]);
        let alerts = vec![
            alert("ok-open", 1, "NONE", "DISCREPANCY"),
            alert("ok-open", 2, "DISCREPANCY", "OPEN"),
            alert("ok-disc", 3, "OPEN", "DISCREPANCY"),
            alert("stale-left", 4, "OPEN", "DISCREPANCY"),
            alert("ok-disc", 3, "OPEN", "DISCREPANCY"),
        ];
        let mut f = Findings::new(10);
        let mut out = OutputsChecked::default();
        judge_alerts(
            &latest,
            alerts,
            &watch,
            &committed(0, &[(0, 1)]),
            &mut out,
            &mut f,
        );
        let mut trips: Vec<_> = f.kept.iter().filter_map(|d| d.trip_id.clone()).collect();
        trips.sort();
        assert_eq!(trips, ["no-alert", "ok-disc", "stale-left"], "{:?}", f.kept);
        assert!(f.kept.iter().any(|d| d.detail.contains("more than once")));
        assert_eq!(out.alerts_checked, 5);
    }

    #[test]
    fn a_current_balance_that_differs_is_reported_unless_in_flight() {
        let latest = latest(&[("a", "OPEN", 1000), ("b", "OPEN", 1000), ("d", "OPEN", 1)]);
        let row = |trip: &str, unit: i64, checkpoint_id: i64| CurrentRow {
            trip_id: trip.into(),
            sums: [unit; 6],
            status: "OPEN".into(),
            checkpoint_id,
            kafka_partition: 0,
        };
        let rows = [row("a", 1000, 1), row("b", 2000, 1), row("c", 2000, 9)];
        let mut f = Findings::new(10);
        let mut out = OutputsChecked::default();
        judge_balances(&latest, &rows, &committed(0, &[(0, 1)]), &mut out, &mut f);
        assert_eq!(f.count(Kind::CurrentBalanceMismatch), 2, "{:?}", f.kept);
        assert_eq!(f.kept[0].trip_id.as_deref(), Some("b"));
        assert!(
            f.kept[0].detail.contains("[2.000, 2.000"),
            "{}",
            f.kept[0].detail
        );
        assert_eq!(f.kept[1].trip_id.as_deref(), Some("d"), "no current row");
        assert_eq!(out.current_balances_in_flight, 1);
        assert_eq!(out.current_balances_checked, 3);
    }
}
