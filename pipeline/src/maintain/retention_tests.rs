//! Retention rules, example by example, then as properties over random histories.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroUsize;

use proptest::prelude::*;

use super::*;
use crate::checkpoint::protocol::{marker_property, marker_value, stamp_properties};
use crate::ids::{CheckpointId, Generation};

const HOUR_MS: i64 = 3_600_000;

/// A snapshot in a test history: `stamp` = (job, generation, checkpoint).
struct Snap {
    ts_hours: i64,
    stamp: Option<(&'static str, u64, u64)>,
}

fn snap(ts_hours: i64) -> Snap {
    Snap {
        ts_hours,
        stamp: None,
    }
}

fn stamped(ts_hours: i64, job: &'static str, generation: u64, through: u64) -> Snap {
    Snap {
        ts_hours,
        stamp: Some((job, generation, through)),
    }
}

/// A linear history: ids 1..=n, each the parent of the next, the last current.
fn chain(snaps: &[Snap]) -> TableFacts {
    let mut facts = TableFacts::default();
    for (i, s) in snaps.iter().enumerate() {
        let id = i as i64 + 1;
        let summary = match s.stamp {
            Some((job, g, c)) => stamp_properties(
                &JobId::new(job).unwrap(),
                Generation(g),
                CheckpointId(c),
                CheckpointId(c),
                "{}".into(),
            ),
            None => HashMap::new(),
        };
        facts.snapshots.insert(
            id,
            SnapshotFacts {
                id,
                parent: (id > 1).then_some(id - 1),
                timestamp_ms: s.ts_hours * HOUR_MS,
                summary,
            },
        );
        facts.current = Some(id);
    }
    facts
}

fn with_marker(mut facts: TableFacts, job: &str, generation: u64, through: u64) -> TableFacts {
    facts.properties.insert(
        marker_property(&JobId::new(job).unwrap()),
        marker_value(Generation(generation), CheckpointId(through)),
    );
    facts
}

/// Expire before hour `cutoff_hours`, keep `retain_last`, for job `j`.
fn check(facts: &TableFacts, cutoff_hours: i64, retain_last: usize) -> ExpiryPlan {
    let policy = RetentionPolicy {
        expire_before_ms: cutoff_hours * HOUR_MS,
        retain_last: NonZeroUsize::new(retain_last).unwrap(),
    };
    plan(facts, &JobId::new("j").unwrap(), &policy).unwrap()
}

#[test]
fn old_snapshots_go_newest_and_young_stay() {
    let facts = with_marker(
        chain(&[
            stamped(1, "j", 1, 1),
            stamped(2, "j", 1, 2),
            stamped(3, "j", 1, 3),
            stamped(10, "j", 1, 4),
            stamped(11, "j", 1, 5),
        ]),
        "j",
        1,
        5,
    );
    // Cutoff at hour 5: 1..=3 are old; 4 and 5 are young.
    let p = check(&facts, 5, 1);
    assert_eq!(p.expire, vec![1, 2, 3]);
    assert_eq!((p.kept, p.held_for_markers), (2, 0));
    assert_eq!(p.marks.committed, Some(CheckpointId(5)));
    assert_eq!(p.marker_snapshot, Some(5));
    // Everything old: the newest `retain_last` stay.
    assert_eq!(check(&facts, 100, 1).expire, vec![1, 2, 3, 4]);
    assert_eq!(check(&facts, 100, 3).expire, vec![1, 2]);
    // Nothing old enough: nothing expires.
    assert!(check(&facts, 0, 1).expire.is_empty());
}

#[test]
fn the_jobs_newest_stamp_and_everything_above_it_stay() {
    // Two unstamped snapshots (a compaction, a rewrite of manifests) on top of the stamp.
    let facts = with_marker(
        chain(&[
            stamped(1, "j", 1, 1),
            stamped(2, "j", 2, 7),
            snap(3),
            snap(4),
        ]),
        "j",
        2,
        7,
    );
    let p = check(&facts, 100, 1);
    assert_eq!(p.expire, vec![1]);
    assert_eq!(p.marker_snapshot, Some(2));
    assert_eq!(
        p.held_for_markers, 2,
        "snapshots 2 and 3 stay for the marker only"
    );
    assert_eq!(
        p.marks,
        TableMarks {
            committed: Some(CheckpointId(7)),
            generation: Some(Generation(2)),
        }
    );
}

#[test]
fn another_jobs_stamp_stays_only_when_its_marks_depend_on_it() {
    let history = [stamped(1, "other", 4, 9), stamped(2, "j", 1, 1), snap(3)];
    // No marker property for `other`: its stamp is all it has.
    let facts = chain(&history);
    assert!(check(&facts, 100, 1).expire.is_empty());
    // With its property the stamp is redundant and may go.
    let facts = with_marker(chain(&history), "other", 4, 9);
    assert_eq!(check(&facts, 100, 1).expire, vec![1]);
}

#[test]
fn snapshots_reachable_from_another_ref_stay_and_strays_go_by_age() {
    let mut facts = chain(&[snap(1), snap(2), snap(3), snap(4)]);
    // A branch at 2, and a stray snapshot (a failed branch) off 1.
    facts.other_refs.insert("audit".into(), 2);
    facts.snapshots.insert(
        99,
        SnapshotFacts {
            id: 99,
            parent: Some(1),
            timestamp_ms: 50 * HOUR_MS,
            summary: HashMap::new(),
        },
    );
    assert_eq!(check(&facts, 100, 1).expire, vec![3, 99]);
    assert_eq!(check(&facts, 40, 1).expire, vec![3], "the stray is young");
}

#[test]
fn a_young_ancestor_below_old_ones_keeps_the_run_unbroken() {
    // Clock skew: snapshot 2 claims to be younger than 3 and 4.
    let facts = chain(&[snap(1), snap(50), snap(3), snap(4)]);
    assert_eq!(check(&facts, 40, 1).expire, vec![1]);
}

#[test]
fn an_empty_table_plans_nothing() {
    let p = check(&TableFacts::default(), 100, 1);
    assert_eq!(p, ExpiryPlan::default());
}

#[test]
fn an_unparsable_stamp_of_the_job_refuses() {
    let mut facts = chain(&[stamped(1, "j", 1, 1), snap(2)]);
    facts
        .snapshots
        .get_mut(&1)
        .unwrap()
        .summary
        .insert(protocol::PROP_CHECKPOINT_ID.into(), "x".into());
    let policy = RetentionPolicy {
        expire_before_ms: 100 * HOUR_MS,
        retain_last: NonZeroUsize::MIN,
    };
    let e = plan(&facts, &JobId::new("j").unwrap(), &policy).unwrap_err();
    assert!(e.to_string().contains("recon.checkpoint-id"), "{e}");
}

/// A random linear history of up to 40 snapshots by jobs `j` and `k`, stamps increasing per
/// job, some unstamped (compactions), marker properties present, missing or current.
fn history() -> impl Strategy<Value = (TableFacts, i64, usize)> {
    (
        prop::collection::vec((0u8..4, 1i64..5), 1..40),
        0u8..3,
        0u8..3,
        0i64..200,
        1usize..4,
    )
        .prop_map(|(steps, j_prop, k_prop, cutoff_hours, retain_last)| {
            let mut ts = 0;
            let mut through: BTreeMap<&'static str, u64> = BTreeMap::new();
            let snaps: Vec<Snap> = steps
                .iter()
                .map(|(kind, dt)| {
                    ts += dt;
                    let job = match kind {
                        0 => return snap(ts),
                        1 | 2 => "j",
                        _ => "k",
                    };
                    let c = through.entry(job).or_insert(0);
                    *c += 1;
                    stamped(ts, job, 1 + *c / 5, *c)
                })
                .collect();
            let mut facts = chain(&snaps);
            for (job, choice) in [("j", j_prop), ("k", k_prop)] {
                let Some(c) = through.get(job).copied() else {
                    continue;
                };
                // 0: no property (older tables), 1: current, 2: behind (impossible today).
                match choice {
                    1 => facts = with_marker(facts, job, 1 + c / 5, c),
                    2 if c > 1 => facts = with_marker(facts, job, 1 + (c - 1) / 5, c - 1),
                    _ => {}
                }
            }
            (facts, cutoff_hours, retain_last)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn expiry_never_changes_marks_nor_breaks_the_ancestry((facts, cutoff_hours, retain_last) in history()) {
        let p = check(&facts, cutoff_hours, retain_last);
        let removed: HashSet<i64> = p.expire.iter().copied().collect();
        let none = HashSet::new();
        for job in ["j", "k"] {
            let job = JobId::new(job).unwrap();
            prop_assert_eq!(facts.marks(&job, &removed).unwrap(), facts.marks(&job, &none).unwrap());
        }
        let ancestry = facts.ancestry(facts.current, &none).unwrap();
        // Kept ancestors are one newest-first run, holding the newest `retain_last`.
        let kept = ancestry.iter().take_while(|id| !removed.contains(id)).count();
        prop_assert!(ancestry[kept..].iter().all(|id| removed.contains(id)));
        prop_assert!(kept >= retain_last.min(ancestry.len()));
        // Nothing young goes, and everything that goes is old.
        for s in facts.snapshots.values() {
            if s.timestamp_ms >= cutoff_hours * HOUR_MS {
                prop_assert!(!removed.contains(&s.id));
            }
        }
        // The job's newest stamp stays.
        if let Some(m) = p.marker_snapshot {
            prop_assert!(!removed.contains(&m));
        }
        prop_assert_eq!(p.kept + p.expire.len(), facts.snapshots.len());
    }
}

/// Expiry never looks like a rollback: whatever it removes, the job's marks read the same
/// (the walk ends at a missing parent, never at the root). A table already rolled back behind
/// the job's marker is refused: the snapshot to roll forward to must not be expired.
#[test]
fn expiry_never_looks_like_a_rollback_and_a_rolled_back_table_is_left_alone() {
    // Stamps at 2 (checkpoint 3) and 4 (checkpoint 7); a compaction (5) on top; marker 7.
    let facts = with_marker(
        chain(&[
            snap(1),
            stamped(2, "j", 1, 3),
            snap(3),
            stamped(4, "j", 2, 7),
            snap(5),
        ]),
        "j",
        2,
        7,
    );
    let p = check(&facts, 100, 1);
    assert_eq!(p.marks.committed, Some(CheckpointId(7)));
    let removed: HashSet<i64> = p.expire.iter().copied().collect();
    assert_eq!(
        facts.verdict(&JobId::new("j").unwrap(), &removed).unwrap(),
        facts
            .verdict(&JobId::new("j").unwrap(), &HashSet::new())
            .unwrap()
    );
    // Rolled back to snapshot 3 (below the stamp of checkpoint 7, marker still 7).
    let mut rolled = facts.clone();
    rolled.current = Some(3);
    let policy = RetentionPolicy {
        expire_before_ms: 100 * HOUR_MS,
        retain_last: NonZeroUsize::MIN,
    };
    let err = plan(&rolled, &JobId::new("j").unwrap(), &policy).unwrap_err();
    assert!(matches!(err, RetentionError::BehindMarker { .. }), "{err}");
}
