//! Unit tests of the pre-flight decisions.

use std::collections::HashMap;

use super::*;

fn job() -> JobId {
    JobId::new("job").unwrap()
}

fn stamp(generation: u64, through: u64) -> Stamp {
    Stamp {
        generation: Generation(generation),
        first: CheckpointId(1),
        through: CheckpointId(through),
    }
}

fn marks(generation: u64, through: u64) -> TableMarks {
    TableMarks {
        committed: Some(CheckpointId(through)),
        generation: Some(Generation(generation)),
    }
}

fn at(generation: u64, through: u64, sha: Option<&str>) -> AncestryEnd {
    AncestryEnd::Stamp {
        stamp: stamp(generation, through),
        snapshot: 100 + through as i64,
        checkpoint_sha256: sha.map(str::to_string),
    }
}

#[test]
fn the_ancestry_decides_and_the_property_only_fills_in() {
    let check = |end: AncestryEnd, property: Option<TableMarks>, expected: MarksVerdict| {
        assert_eq!(
            judge_marks(&end, property),
            expected,
            "{end:?} {property:?}"
        );
    };
    // Stamp and property agree, or there is no property (tables from before it existed).
    check(
        at(2, 7, None),
        Some(marks(2, 7)),
        MarksVerdict::Trust(marks(2, 7)),
    );
    check(at(2, 7, None), None, MarksVerdict::Trust(marks(2, 7)));
    // A stamp below the property: rolled back.
    check(
        at(2, 5, None),
        Some(marks(3, 7)),
        MarksVerdict::BehindMarker {
            marker: marks(3, 7),
            found: Some(stamp(2, 5)),
        },
    );
    // The root reached with no stamp while the property names a checkpoint: rolled back to
    // before the job's first commit.
    check(
        AncestryEnd::Root,
        Some(marks(1, 3)),
        MarksVerdict::BehindMarker {
            marker: marks(1, 3),
            found: None,
        },
    );
    check(
        AncestryEnd::Root,
        None,
        MarksVerdict::Trust(TableMarks::default()),
    );
    // Expiry (a compaction after the last append, then expire_snapshots): the property fills in.
    check(
        AncestryEnd::Expired,
        Some(marks(3, 7)),
        MarksVerdict::Trust(marks(3, 7)),
    );
    check(
        AncestryEnd::Limit,
        Some(marks(3, 7)),
        MarksVerdict::Trust(marks(3, 7)),
    );
    check(
        AncestryEnd::Expired,
        None,
        MarksVerdict::Trust(TableMarks::default()),
    );
}

#[test]
fn ownership_comes_from_the_owner_property_then_from_other_jobs_markers() {
    let props = |kv: &[(&str, &str)]| -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(ownership(&job(), &props(&[])), Ownership::Unclaimed);
    assert_eq!(
        ownership(&job(), &props(&[("recon.marker.job", "1:3")])),
        Ownership::Unclaimed
    );
    assert_eq!(
        ownership(&job(), &props(&[(PROP_OWNER, "job")])),
        Ownership::Ours
    );
    assert_eq!(
        ownership(&job(), &props(&[(PROP_OWNER, "other")])),
        Ownership::OwnedBy("other".into())
    );
    assert_eq!(
        ownership(&job(), &props(&[("recon.marker.other", "1:3")])),
        Ownership::MarkedBy("other".into())
    );
    // The owner property decides when present.
    assert_eq!(
        ownership(
            &job(),
            &props(&[(PROP_OWNER, "job"), ("recon.marker.old", "1:1")])
        ),
        Ownership::Ours
    );
    assert!(Ownership::Ours.may_write() && Ownership::Unclaimed.may_write());
    assert!(!Ownership::OwnedBy("x".into()).may_write());
    assert!(!Ownership::MarkedBy("x".into()).may_write());
}

fn table(end: AncestryEnd, property: Option<TableMarks>) -> TableFindings {
    TableFindings {
        table: "ns.ledger_events".into(),
        ownership: Ownership::Ours,
        end,
        property,
        current_snapshot: Some(42),
        marker_snapshot: Some(107),
        log_sha256: None,
    }
}

fn verdict(stage: Stage, ours: u64, head: Option<u64>, t: TableFindings) -> PreflightVerdict {
    preflight(
        stage,
        Generation(ours),
        head.map(CheckpointId),
        &job(),
        &[t],
    )
}

#[test]
fn a_table_ahead_of_the_log_is_refused_before_the_claim() {
    // Log restored to an older copy: head 5 of generation 1; the table holds 7 of generation 2.
    let t = table(at(2, 7, None), Some(marks(2, 7)));
    let v = verdict(Stage::BeforeClaim, 2, Some(5), t.clone());
    let PreflightVerdict::StopForOperator(r) = v else {
        panic!("{v:?}")
    };
    assert_eq!(
        r,
        vec![Refusal::TableAhead {
            table: "ns.ledger_events".into(),
            job: "job".into(),
            committed: CheckpointId(7),
            head: Some(CheckpointId(5)),
        }]
    );
    let m = r[0].to_string();
    assert!(
        m.contains("holds checkpoint 7") && m.contains("ends at 5"),
        "{m}"
    );
    assert!(
        m.contains("NEW tables") && !m.contains("start under a new job_id"),
        "advice must never lead to duplicates: {m}"
    );
    // Several failed starts later (generations not in the log) it is still "ahead", not fenced.
    let v = verdict(Stage::BeforeClaim, 2, Some(5), table(at(9, 7, None), None));
    assert!(matches!(v, PreflightVerdict::StopForOperator(_)), "{v:?}");
    // The same table with the log intact: proceed.
    assert_eq!(
        verdict(Stage::BeforeClaim, 3, Some(7), t.clone()),
        PreflightVerdict::Proceed
    );
    // After a claim at 6 (resuming 5), a table at 6 or 7 is ahead: nobody committed our claim.
    let v = verdict(Stage::AfterClaim, 2, Some(5), table(at(1, 6, None), None));
    assert!(matches!(v, PreflightVerdict::StopForOperator(_)), "{v:?}");
}

#[test]
fn a_newer_generation_is_fenced() {
    // Before the claim: table not ahead, but a generation above ours (claims raced).
    let v = verdict(Stage::BeforeClaim, 3, Some(7), table(at(4, 7, None), None));
    assert!(matches!(
        v,
        PreflightVerdict::StopFenced(Refusal::Fenced { .. })
    ));
    // After the claim, a later claim that already committed past our resume point: fenced.
    let v = verdict(Stage::AfterClaim, 3, Some(7), table(at(4, 9, None), None));
    assert!(
        matches!(v, PreflightVerdict::StopFenced(Refusal::Fenced { .. })),
        "{v:?}"
    );
}

#[test]
fn a_rolled_back_table_is_named_with_both_checkpoints_and_snapshots() {
    let v = verdict(
        Stage::BeforeClaim,
        4,
        Some(9),
        table(at(2, 5, None), Some(marks(3, 7))),
    );
    let PreflightVerdict::StopForOperator(r) = v else {
        panic!("{v:?}")
    };
    assert_eq!(
        r,
        vec![Refusal::BehindMarker {
            table: "ns.ledger_events".into(),
            marker: CheckpointId(7),
            found: Some(CheckpointId(5)),
            current_snapshot: Some(42),
            marker_snapshot: Some(107),
        }]
    );
    let m = r[0].to_string();
    for want in [
        "rolled back",
        "checkpoint 7",
        "checkpoint 5",
        "snapshot 42",
        "snapshot 107",
    ] {
        assert!(m.contains(want), "{want:?} missing: {m}");
    }
}

#[test]
fn another_jobs_table_is_refused_and_named() {
    for ownership in [
        Ownership::OwnedBy("other".into()),
        Ownership::MarkedBy("other".into()),
    ] {
        let mut t = table(AncestryEnd::Root, None);
        t.ownership = ownership;
        let v = verdict(Stage::BeforeClaim, 1, None, t);
        let PreflightVerdict::StopForOperator(r) = v else {
            panic!("{v:?}")
        };
        let m = r[0].to_string();
        assert!(m.contains("job other") && m.contains("twice"), "{m}");
    }
}

#[test]
fn a_checkpoint_with_another_manifest_under_the_same_number_is_refused() {
    let mut t = table(at(2, 7, Some("aaa")), Some(marks(2, 7)));
    t.log_sha256 = Some("bbb".into());
    let v = verdict(Stage::BeforeClaim, 3, Some(7), t.clone());
    assert!(
        matches!(&v, PreflightVerdict::StopForOperator(r) if matches!(r[0], Refusal::NotTheLogsCheckpoint { .. })),
        "{v:?}"
    );
    // Same sha, an entry already pruned, or a stamp from before the key: proceed.
    t.log_sha256 = Some("aaa".into());
    assert_eq!(
        verdict(Stage::BeforeClaim, 3, Some(7), t.clone()),
        PreflightVerdict::Proceed
    );
    t.log_sha256 = None;
    assert_eq!(
        verdict(Stage::BeforeClaim, 3, Some(7), t),
        PreflightVerdict::Proceed
    );
    let mut old = table(at(2, 7, None), None);
    old.log_sha256 = Some("bbb".into());
    assert_eq!(
        verdict(Stage::BeforeClaim, 3, Some(7), old),
        PreflightVerdict::Proceed
    );
}
