//! The publisher against in-memory catalogs and stores.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::spec::{
    DataContentType, DataFileBuilder, DataFileFormat, FormatVersion, StructType,
    serialize_data_file_to_json,
};
use object_store::memory::InMemory;

use super::*;
use crate::checkpoint::log::{ClaimKind, CommitPermit};
use crate::checkpoint::manifest::{EntryKind, PartitionCut, PendingFiles};
use crate::checkpoint::protocol::{PROP_CHECKPOINT_FIRST, PROP_CHECKPOINT_ID, PROP_INPUT_EPOCH};
use crate::checkpoint::simulation::{TABLES, memory_catalog};
use crate::checkpoint::store::ObjectCheckpointStore;
use crate::ids::{JobId, Offset, PartitionId};

/// Completes a checkpoint that consumed `[start, end)` of partition 0 (one file per table).
async fn checkpoint(log: &CheckpointLog, base: &Manifest, start: i64, end: i64) -> Manifest {
    let id = CheckpointId(base.checkpoint_id.0 + 1);
    let mut m = base.continuation(id, base.generation);
    m.partitions.insert(
        PartitionId(0),
        PartitionCut {
            start: Offset(start),
            end: Offset(end),
            records: (end - start) as u64,
            last: None,
        },
    );
    for t in TABLES {
        let file = DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(format!("memory://sim/{t}/data/p0-{start}-{end}.parquet"))
            .file_format(DataFileFormat::Parquet)
            .record_count((end - start) as u64)
            .file_size_in_bytes(100)
            .build()
            .unwrap();
        let json =
            serialize_data_file_to_json(file, &StructType::new(vec![]), FormatVersion::V2).unwrap();
        m.pending.insert(
            t.to_string(),
            PendingFiles {
                files: vec![json],
                ..PendingFiles::default()
            },
        );
    }
    let entry = log.write_manifest(&m, EntryKind::Checkpoint).await.unwrap();
    log.complete(&entry).await.unwrap();
    m
}

/// Checkpoints of the old topic not yet committed when an operator accepts a topic reset:
/// the next publish lands them and the new topic's checkpoints in two appends, each stamped
/// with its own epoch and offsets.
#[tokio::test]
async fn no_commit_spans_a_topic_reset() {
    let catalog = memory_catalog().await;
    let store = Arc::new(ObjectCheckpointStore::new(Arc::new(InMemory::new())));
    let log = CheckpointLog::new(store, "t", JobId::new("epochs").unwrap());
    let first = log.claim(None).await.unwrap();
    let c2 = checkpoint(&log, &first.manifest, 0, 10).await;
    let c3 = checkpoint(&log, &c2, 10, 25).await;
    // The job stops before committing; the topic is recreated; the operator accepts it.
    let reset = log
        .claim_as(&ClaimKind::TopicReset {
            judged: c3.checkpoint_id,
            restart: BTreeMap::from([(PartitionId(0), Some(Offset(0)))]),
            reason: "test".into(),
        })
        .await
        .unwrap();
    assert_eq!(reset.manifest.input_epoch, 1);
    let c5 = checkpoint(&log, &reset.manifest, 0, 4).await;
    assert_eq!(c5.input_epoch, 1);

    let committer = Committer::new(catalog.clone(), &reset.permit, 4, Duration::from_secs(5));
    let uncommitted = BTreeMap::new();
    let publisher = Publisher::new(&committer, &log, &uncommitted, None);
    for t in TABLES {
        let ident = TableIdent::from_strs(["sim", t]).unwrap();
        let table = catalog.load_table(&ident).await.unwrap();
        assert_eq!(
            publisher.table(&table, c5.checkpoint_id).await.unwrap(),
            Published::Committed
        );
        let table = catalog.load_table(&ident).await.unwrap();
        let md = table.metadata();
        let mut stamps: Vec<_> = md
            .snapshots()
            .map(|s| s.summary().additional_properties.clone())
            .collect();
        stamps.sort_by_key(|p| p[PROP_CHECKPOINT_ID].parse::<u64>().unwrap());
        let got: Vec<_> = stamps
            .iter()
            .map(|p| {
                (
                    p[PROP_CHECKPOINT_FIRST].as_str(),
                    p[PROP_CHECKPOINT_ID].as_str(),
                    p.get(PROP_INPUT_EPOCH).map(String::as_str),
                    p[protocol::PROP_OFFSETS].as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("1", "3", None, r#"{"0":{"end":25,"records":25,"start":0}}"#),
                (
                    "4",
                    "5",
                    Some("1"),
                    r#"{"0":{"end":4,"records":4,"start":0}}"#
                ),
            ],
            "table {t}"
        );
    }
}

/// One owner per table, on the commit path itself (past any pre-flight): a commit stamps
/// `recon.owner` and the checkpoint's sha; another job's commit attempt is refused by the
/// guard and appends nothing.
#[tokio::test]
async fn the_guard_refuses_another_jobs_table_and_commits_stamp_owner_and_sha() {
    use crate::checkpoint::commit::CommitError;
    use crate::checkpoint::protocol::{PROP_CHECKPOINT_SHA256, PROP_OWNER, Refusal};
    use crate::ids::Generation;

    let catalog = memory_catalog().await;
    let ident = TableIdent::from_strs(["sim", TABLES[0]]).unwrap();
    let req = CommitRequest {
        through_sha256: Some("abc".into()),
        ..first_commit(&ident)
    };
    let committer = |job: &str| {
        Committer::new(
            catalog.clone(),
            &CommitPermit::unclaimed_for_tests(JobId::new(job).unwrap(), Generation(1)),
            3,
            Duration::from_secs(5),
        )
    };
    assert_eq!(
        committer("first").commit(&req).await.unwrap(),
        CommitOutcome::Committed
    );
    let t = catalog.load_table(&ident).await.unwrap();
    let md = t.metadata();
    assert_eq!(md.properties()[PROP_OWNER], "first");
    let current = md.current_snapshot().unwrap();
    assert_eq!(
        current.summary().additional_properties[PROP_CHECKPOINT_SHA256],
        "abc"
    );
    match committer("second").commit(&req).await {
        Err(CommitError::Refused {
            refusal: Refusal::NotOwner { other, .. },
        }) => assert_eq!(other, "first"),
        other => panic!("a second job id must be refused: {other:?}"),
    }
    let after = catalog.load_table(&ident).await.unwrap();
    assert_eq!(
        after.metadata().current_snapshot_id(),
        Some(current.snapshot_id()),
        "nothing appended"
    );
}

/// The warehouse as a map of path -> size.
struct Sizes(std::collections::HashMap<String, u64>);

#[async_trait::async_trait]
impl FileSizes for Sizes {
    async fn size_bytes(&self, uri: &str) -> Result<Option<u64>, String> {
        Ok(self.0.get(uri).copied())
    }
}

/// Issue 13, finding 3: a pending file of the second table is gone. Publishing stops before
/// the first commit, naming it; no table changes, the first one included. Once the file is
/// back, publishing commits everything.
#[tokio::test]
async fn a_missing_pending_file_commits_nothing_anywhere() {
    let catalog = memory_catalog().await;
    let store = Arc::new(ObjectCheckpointStore::new(Arc::new(InMemory::new())));
    let log = CheckpointLog::new(store, "t", JobId::new("gone").unwrap());
    let first = log.claim(None).await.unwrap();
    let c2 = checkpoint(&log, &first.manifest, 0, 10).await;
    let committer = Committer::new(catalog.clone(), &first.permit, 4, Duration::from_secs(5));
    let mut tables = Vec::new();
    for t in TABLES {
        let ident = TableIdent::from_strs(["sim", t]).unwrap();
        tables.push(catalog.load_table(&ident).await.unwrap());
    }
    let mut sizes = Sizes(
        TABLES
            .iter()
            .map(|t| (format!("memory://sim/{t}/data/p0-0-10.parquet"), 100))
            .collect(),
    );
    let gone = format!("memory://sim/{}/data/p0-0-10.parquet", TABLES[1]);
    sizes.0.remove(&gone);
    let uncommitted = BTreeMap::new();
    let publisher = Publisher::new(&committer, &log, &uncommitted, Some(&sizes));
    let e = publisher
        .check_pending(&tables, c2.checkpoint_id)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PublishError::PendingFile(p) if p.needs_operator()),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("pending data file {gone} of checkpoint 2")),
        "{e}"
    );
    for t in &tables {
        let now = catalog.load_table(t.identifier()).await.unwrap();
        assert_eq!(
            now.metadata().current_snapshot_id(),
            None,
            "{}",
            t.identifier()
        );
    }
    // A publish that skips the pre-check still checks each request.
    let e = publisher
        .table(&tables[1], c2.checkpoint_id)
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::PendingFile(_)), "{e}");

    sizes.0.insert(gone, 100);
    let publisher = Publisher::new(&committer, &log, &uncommitted, Some(&sizes));
    publisher
        .check_pending(&tables, c2.checkpoint_id)
        .await
        .unwrap();
    for t in &tables {
        let done = publisher.table(t, c2.checkpoint_id).await.unwrap();
        assert_eq!(done, Published::Committed);
    }
}

/// Only a claimed generation commits: the pre-flight's read-only committer refuses, and the
/// table stays as it was.
#[tokio::test]
async fn a_read_only_committer_refuses_to_commit() {
    use crate::checkpoint::commit::CommitError;
    use crate::ids::Generation;
    let catalog = memory_catalog().await;
    let job = JobId::new("ro").unwrap();
    let c = Committer::read_only(
        catalog.clone(),
        job,
        Generation(1),
        3,
        Duration::from_secs(5),
    );
    let ident = TableIdent::from_strs(["sim", TABLES[0]]).unwrap();
    let req = first_commit(&ident);
    let err = c.commit(&req).await.unwrap_err();
    assert!(matches!(err, CommitError::Protocol { .. }), "{err}");
    let table = catalog.load_table(&ident).await.unwrap();
    assert!(
        table.metadata().current_snapshot().is_none(),
        "nothing written"
    );
}

/// The (empty) commit of checkpoint 1 to `table`.
fn first_commit(table: &TableIdent) -> crate::checkpoint::commit::CommitRequest {
    crate::checkpoint::commit::CommitRequest {
        table: table.clone(),
        after: None,
        first: CheckpointId(1),
        through: CheckpointId(1),
        files: vec![],
        offsets_json: "{}".into(),
        input_epoch: 0,
        through_sha256: None,
    }
}
