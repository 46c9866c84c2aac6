//! The claim decisions, each on its own.

use chrono::DateTime;

use super::*;
use crate::checkpoint::manifest::{FORMAT_VERSION, LogEntry};

fn job() -> JobId {
    JobId::new("j").unwrap()
}

fn cut(start: i64, end: i64) -> PartitionCut {
    PartitionCut {
        start: Offset(start),
        end: Offset(end),
        records: (end - start) as u64,
        last: None,
    }
}

/// A completed checkpoint `id` reading partitions 0 and 1 up to `ends`.
fn completed(id: u64, ends: [i64; 2]) -> Completed {
    let mut manifest = Manifest::empty(job(), CheckpointId(id), Generation(3));
    manifest.partitions.insert(PartitionId(0), cut(0, ends[0]));
    manifest.partitions.insert(PartitionId(1), cut(0, ends[1]));
    manifest.state_chain = vec![format!("ckpt/{id:020}-g3/state.bin")];
    manifest.topic_id = Some(crate::source::topic_id::TopicId("topic-a".into()));
    let entry = LogEntry {
        format: FORMAT_VERSION,
        job_id: job(),
        checkpoint_id: CheckpointId(id),
        generation: Generation(3),
        kind: EntryKind::GenerationStart { resumes: None },
        manifest: format!("ckpt/{id:020}-g3/manifest.json"),
        manifest_sha256: "00".into(),
        completed_at: DateTime::from_timestamp(0, 0).unwrap(),
    };
    Completed { entry, manifest }
}

const NEXT: (CheckpointId, Generation) = (CheckpointId(10), Generation(4));

#[test]
fn a_first_claim_starts_empty_and_a_resume_continues_the_head() {
    let (m, kind) = plan(&ClaimKind::Resume, None, None, NEXT, &job()).unwrap();
    assert_eq!(kind, EntryKind::GenerationStart { resumes: None });
    assert!(m.partitions.is_empty() && m.state_chain.is_empty());
    assert_eq!(
        (m.checkpoint_id, m.generation, m.input_epoch),
        (NEXT.0, NEXT.1, 0)
    );

    let head = completed(9, [100, 200]);
    let (m, kind) = plan(&ClaimKind::Resume, Some(&head), None, NEXT, &job()).unwrap();
    let resumes = Some(CheckpointId(9));
    assert_eq!(kind, EntryKind::GenerationStart { resumes });
    assert_eq!(m.resume_offsets(), head.manifest.resume_offsets());
    assert_eq!(m.state_chain, head.manifest.state_chain);
    assert!(
        m.replay_until.is_empty(),
        "a resume replays nothing into state only"
    );
}

/// A rewind restarts from the target's offsets and state, and replays into state only up to
/// the head's cut, or further where an earlier rewind's bound reaches.
#[test]
fn a_rewind_continues_the_target_and_replays_up_to_the_head() {
    let target = completed(4, [40, 50]);
    let mut head = completed(9, [100, 200]);
    head.manifest
        .replay_until
        .insert(PartitionId(0), Offset(150));
    let kind = ClaimKind::Rewind {
        to: CheckpointId(4),
        reason: "bad deploy".into(),
    };
    let (m, entry) = plan(&kind, Some(&head), Some(&target.manifest), NEXT, &job()).unwrap();
    assert_eq!(
        entry,
        EntryKind::Rewind {
            to: CheckpointId(4),
            reason: "bad deploy".into()
        }
    );
    assert_eq!(m.resume_offsets(), target.manifest.resume_offsets());
    assert_eq!(m.state_chain, target.manifest.state_chain);
    let until: Vec<_> = m.replay_until.into_iter().collect();
    assert_eq!(
        until,
        [(PartitionId(0), Offset(150)), (PartitionId(1), Offset(200))]
    );

    let missing = plan(&kind, Some(&head), None, NEXT, &job());
    let to = CheckpointId(4);
    assert_eq!(missing, Err(ClaimRefusal::RewindTargetMissing { to }));
}

#[test]
fn a_topic_reset_moves_listed_partitions_and_refuses_a_moved_head() {
    let mut head = completed(9, [100, 200]);
    head.manifest
        .replay_until
        .insert(PartitionId(0), Offset(90));
    head.manifest
        .replay_until
        .insert(PartitionId(1), Offset(90));
    let restart = BTreeMap::from([(PartitionId(0), Some(Offset(7))), (PartitionId(1), None)]);
    let kind = ClaimKind::TopicReset {
        judged: CheckpointId(9),
        restart,
        reason: "recreated".into(),
    };
    let (m, entry) = plan(&kind, Some(&head), None, NEXT, &job()).unwrap();
    let reason = "recreated".to_string();
    assert_eq!(entry, EntryKind::TopicReset { reason });
    assert_eq!(m.input_epoch, head.manifest.input_epoch + 1);
    assert_eq!(
        m.topic_id, None,
        "the next checkpoint records the new topic's id"
    );
    assert_eq!(m.partitions.len(), 1, "partition 1 is forgotten");
    assert_eq!(m.partitions[&PartitionId(0)].start, Offset(7));
    assert_eq!(m.partitions[&PartitionId(0)].end, Offset(7));
    assert!(
        m.replay_until.is_empty(),
        "old offsets bound nothing on the new topic"
    );
    assert_eq!(m.state_chain, head.manifest.state_chain, "state is kept");

    let moved = completed(11, [100, 200]);
    let judged = CheckpointId(9);
    let refused = plan(&kind, Some(&moved), None, NEXT, &job());
    let head = Some(CheckpointId(11));
    assert_eq!(refused, Err(ClaimRefusal::Moved { judged, head }));
    let head = None;
    let refused = plan(&kind, None, None, NEXT, &job());
    assert_eq!(refused, Err(ClaimRefusal::Moved { judged, head }));
}

/// Two claims computed the same next (id, generation) from one head (found by the fleet chaos
/// harness: `rewind` on a running fleet while a worker restarted the same task). The second
/// manifest write must not replace the first: the winner's entry records the first's checksum,
/// so an overwrite made the log unreadable ("manifest ... has checksum X, the log says Y").
#[tokio::test]
async fn two_claims_of_one_generation_never_overwrite_each_others_manifest() {
    use std::sync::Arc;

    use crate::checkpoint::log::{CheckpointLog, LogError};
    use crate::checkpoint::store::{CheckpointStore, ObjectCheckpointStore};

    let store: Arc<dyn CheckpointStore> = Arc::new(ObjectCheckpointStore::new(Arc::new(
        object_store::memory::InMemory::new(),
    )));
    let a = CheckpointLog::new(store.clone(), "p", job());
    let b = CheckpointLog::new(store, "p", job());
    a.claim(None).await.unwrap();
    let head = a.head().await.unwrap().unwrap();
    let next = (
        head.entry.checkpoint_id.next(),
        head.entry.generation.next(),
    );
    // Both plan on the same head: a resume and a rewind-like claim with different contents.
    let (ma, ka) = plan(&ClaimKind::Resume, Some(&head), None, next, &job()).unwrap();
    let mut mb = ma.clone();
    mb.partitions.insert(PartitionId(7), cut(0, 1));
    let ea = a.write_manifest(&ma, ka.clone()).await.unwrap();
    assert!(
        matches!(
            b.write_manifest(&mb, ka.clone()).await,
            Err(LogError::ManifestTaken { at, generation, .. }) if (at, generation) == next
        ),
        "the second writer of one (id, generation) must not overwrite the first"
    );
    // The same bytes again (a retried write) are fine.
    a.write_manifest(&ma, ka).await.unwrap();
    a.complete(&ea).await.unwrap();
    let now = b.head().await.expect("the log stays readable").unwrap();
    assert_eq!(now.manifest, ma);
    // The loser's claim goes on from the new head.
    let c = b.claim(None).await.unwrap();
    assert_eq!(c.entry.checkpoint_id, next.0.next());
}
