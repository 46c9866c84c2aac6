//! The job's shape: K, the partition count and the reshards, judged at every start.

use super::*;

#[test]
fn every_partition_has_exactly_one_task() {
    let all: Vec<_> = (0..16).map(PartitionId).collect();
    let mut seen = Vec::new();
    for t in 0..8 {
        let mine = partitions_of(t, 8, &all);
        assert_eq!(mine.len(), 2, "task {t}");
        seen.extend(mine);
    }
    seen.sort();
    assert_eq!(seen, all);
    assert_eq!(task_of(PartitionId(13), 8), 5);
}

#[test]
fn a_changed_shape_is_refused() {
    let job = JobId::new("j").unwrap();
    let rec = Shape {
        tasks: 8,
        partitions: 16,
    };
    assert!(judge(&job, "t", &rec, &rec.clone()).is_ok());
    let k = Shape {
        tasks: 4,
        ..rec.clone()
    };
    assert!(matches!(
        judge(&job, "t", &rec, &k),
        Err(ShapeRefusal::TasksChanged {
            recorded: 8,
            configured: 4,
            ..
        })
    ));
    let p = Shape {
        partitions: 32,
        ..rec.clone()
    };
    let e = judge(&job, "t", &rec, &p).unwrap_err();
    assert!(e.to_string().contains("32 partitions"), "{e}");
}

#[tokio::test]
async fn the_first_start_records_and_later_ones_compare() {
    let store: std::sync::Arc<dyn crate::checkpoint::store::CheckpointStore> =
        std::sync::Arc::new(crate::checkpoint::store::ObjectCheckpointStore::new(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
        ));
    let log = CheckpointLog::new(store, "p", JobId::new("j").unwrap());
    let s = Shape {
        tasks: 4,
        partitions: 8,
    };
    ensure(&log, "t", &s).await.unwrap();
    ensure(&log, "t", &s).await.unwrap();
    let other = Shape {
        tasks: 2,
        ..s.clone()
    };
    assert!(ensure(&log, "t", &other).await.is_err());
    let many = Shape {
        tasks: 9,
        partitions: 8,
    };
    assert!(matches!(
        ensure(&log, "t", &many).await,
        Err(ShapeRefusal::TooManyTasks { .. })
    ));
    // A single process refuses the fleet's job.
    assert!(matches!(
        refuse_if_fleet(&log).await,
        Err(ShapeRefusal::WasFleet { tasks: 4, .. })
    ));
}

#[tokio::test]
async fn a_single_process_job_is_not_switched_to_a_fleet_in_place() {
    let store: std::sync::Arc<dyn crate::checkpoint::store::CheckpointStore> =
        std::sync::Arc::new(crate::checkpoint::store::ObjectCheckpointStore::new(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
        ));
    let job = JobId::new("j").unwrap();
    let log = CheckpointLog::new(store, "p", job.clone());
    refuse_if_fleet(&log).await.unwrap();
    let m = crate::checkpoint::manifest::Manifest::empty(
        job,
        crate::ids::CheckpointId(1),
        crate::ids::Generation(1),
    );
    let e = log
        .write_manifest(&m, crate::checkpoint::manifest::EntryKind::Checkpoint)
        .await
        .unwrap();
    log.complete(&e).await.unwrap();
    let s = Shape {
        tasks: 2,
        partitions: 4,
    };
    let refused = ensure(&log, "t", &s).await.unwrap_err();
    assert!(
        matches!(refused, ShapeRefusal::WasSingle { .. }),
        "{refused}"
    );
    // Nothing was recorded: the single process still starts.
    refuse_if_fleet(&log).await.unwrap();
}

fn memory_log() -> CheckpointLog {
    let store: std::sync::Arc<dyn crate::checkpoint::store::CheckpointStore> =
        std::sync::Arc::new(crate::checkpoint::store::ObjectCheckpointStore::new(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
        ));
    CheckpointLog::new(store, "p", JobId::new("j").unwrap())
}

/// After a reshard the job's shape is the reshard's: the old K is refused, task logs and the
/// tasks topic get new names, and a process started before it stops at its next task start.
#[tokio::test]
async fn a_reshard_is_the_shape_from_its_record_on() {
    let log = memory_log();
    let eight = Shape {
        tasks: 8,
        partitions: 16,
    };
    let before = ensure(&log, "t", &eight).await.unwrap();
    assert_eq!((before.sequence(), before.suffix()), (0, String::new()));
    assert_eq!(before.task_job(log.job(), 3).unwrap().as_str(), "j.t0003");
    let three = Shape {
        tasks: 3,
        partitions: 16,
    };
    let r = Reshard {
        sequence: 12,
        from_tasks: 8,
        shape: three.clone(),
        reason: "r".into(),
    };
    // The committer's record of the reshard, then the shape record.
    let m = crate::checkpoint::manifest::Manifest::empty(
        log.job().clone(),
        crate::ids::CheckpointId(12),
        crate::ids::Generation(2),
    );
    let e = log
        .write_manifest(&m, crate::checkpoint::manifest::EntryKind::Checkpoint)
        .await
        .unwrap();
    log.complete(&e).await.unwrap();
    record_reshard(&log, &r).await.unwrap();
    // The same record again (a second run of the command) is fine; another K is not.
    record_reshard(&log, &r).await.unwrap();
    let other = Reshard {
        shape: Shape {
            tasks: 4,
            partitions: 16,
        },
        ..r.clone()
    };
    assert!(record_reshard(&log, &other).await.is_err());
    assert!(matches!(
        ensure(&log, "t", &eight).await,
        Err(ShapeRefusal::TasksChanged {
            configured: 8,
            recorded: 3,
            ..
        })
    ));
    let after = ensure(&log, "t", &three).await.unwrap();
    assert_eq!(after.sequence(), 12);
    assert_eq!(after.suffix(), ".r12-3");
    assert_eq!(
        after.task_job(log.job(), 2).unwrap().as_str(),
        "j.r12-3.t0002"
    );
    assert_eq!(current(&log).await.unwrap(), Some(after.clone()));
    // A worker that read the old shape stops at its next task start.
    assert!(matches!(
        still(&log, &before).await,
        Err(ShapeRefusal::Resharded {
            tasks: 3,
            sequence: 12,
            ..
        })
    ));
    still(&log, &after).await.unwrap();
}

/// The command stopped between the committer's reshard record and the shape record: every
/// start refuses until it is run again.
#[tokio::test]
async fn an_interrupted_reshard_stops_every_start() {
    let log = memory_log();
    let eight = Shape {
        tasks: 8,
        partitions: 16,
    };
    ensure(&log, "t", &eight).await.unwrap();
    let m = crate::checkpoint::manifest::Manifest::empty(
        log.job().clone(),
        crate::ids::CheckpointId(1),
        crate::ids::Generation(1),
    );
    let kind = crate::checkpoint::manifest::EntryKind::Reshard {
        from_tasks: 8,
        to_tasks: 3,
        sources: Vec::new(),
        reason: "r".into(),
    };
    let e = log.write_manifest(&m, kind).await.unwrap();
    log.complete(&e).await.unwrap();
    let refused = ensure(&log, "t", &eight).await.unwrap_err();
    assert!(
        matches!(
            refused,
            ShapeRefusal::ReshardInterrupted {
                tasks: 3,
                sequence: 1,
                ..
            }
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("reshard --tasks 3"),
        "{refused}"
    );
    // Finished: the shape record names the record.
    let r = Reshard {
        sequence: 1,
        from_tasks: 8,
        shape: Shape {
            tasks: 3,
            partitions: 16,
        },
        reason: "r".into(),
    };
    record_reshard(&log, &r).await.unwrap();
    ensure(&log, "t", &r.shape).await.unwrap();
    // An older copy of the committer's log restored (it ends before the reshard's record):
    // every start refuses.
    let restored = log.sibling(JobId::new("j2").unwrap());
    ensure(&restored, "t", &eight).await.unwrap();
    record_reshard(
        &restored,
        &Reshard {
            sequence: 5,
            ..r.clone()
        },
    )
    .await
    .unwrap();
    let refused = ensure(&restored, "t", &r.shape).await.unwrap_err();
    assert!(
        matches!(
            refused,
            ShapeRefusal::LogBeforeReshard {
                head: 0,
                sequence: 5,
                ..
            }
        ),
        "{refused}"
    );
}
