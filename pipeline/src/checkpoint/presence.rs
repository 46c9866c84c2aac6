//! Pending files are checked before they are committed: each data file a complete checkpoint
//! lists must exist in the warehouse with the size its manifest records.
//!
//! A commit only adds references; Iceberg does not look at the files. A pending file deleted
//! or truncated after its checkpoint completed (an operator's cleanup, a bucket lifecycle rule,
//! a restored bucket) would be committed all the same and make the table unreadable. So the
//! publisher asks the warehouse first, for every table before the first commit, and a missing
//! or wrong-size file stops the job with [`PendingFileError::Missing`] (an operator must act;
//! restarting finds it again) while nothing is committed anywhere.
//!
//! The check is a trait ([`FileSizes`]) so the seeded simulation, whose files live nowhere,
//! can model the warehouse; the job uses [`ObjectStoreSizes`] over the warehouse store.
//! Bounded: [`CHECKS_IN_FLIGHT`] requests at once, all within [`CHECK_DEADLINE`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::ids::{CheckpointId, JobId};

/// Size requests in flight at once.
pub const CHECKS_IN_FLIGHT: usize = 16;
/// Longest time one check of all pending files may take.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(60);

/// Where the check learns how large a file is.
#[async_trait]
pub trait FileSizes: Send + Sync {
    /// The size in bytes of the file at `uri` (a `DataFile`'s `file_path`), `None` if there is
    /// no such file. `Err` = the question could not be answered (store unreachable...).
    async fn size_bytes(&self, uri: &str) -> Result<Option<u64>, String>;
}

/// [`FileSizes`] over an object store of the warehouse (see `orphans::warehouse_store`).
pub struct ObjectStoreSizes(pub Arc<dyn ObjectStore>);

#[async_trait]
impl FileSizes for ObjectStoreSizes {
    async fn size_bytes(&self, uri: &str) -> Result<Option<u64>, String> {
        let url = url::Url::parse(uri).map_err(|e| format!("{uri:?} is not a URL: {e}"))?;
        let key = Path::from_url_path(url.path())
            .map_err(|e| format!("{uri:?} is not an object path: {e}"))?;
        match self.0.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// One pending file and what its checkpoint recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The checkpoint that lists it.
    pub checkpoint: CheckpointId,
    /// The table it is for.
    pub table: String,
    /// Its `file_path`.
    pub path: String,
    /// Its `file_size_in_bytes`.
    pub size_bytes: u64,
}

/// Why pending files cannot be committed.
#[derive(Debug, thiserror::Error)]
pub enum PendingFileError {
    /// A pending file is gone or has another size. Operator needed: restarting finds it again.
    #[error(
        "pending data file {path} of checkpoint {checkpoint} (table {table}, job {job}) {}: committing it would \
         make the table unreadable, so nothing was committed to any table{}. The table holds {}. \
         To go on, restore the file at that path from a backup or from the object store's versioning \
         (exactly {expected_bytes} bytes) and restart the job. `recon-pipeline rewind` does not rebuild it: \
         a rewind first commits every completed checkpoint, this one included. If the file cannot be \
         restored, no recon command rewrites it: checkpoint {checkpoint}'s records are still in Kafka at \
         the offsets `recon-pipeline checkpoints show {checkpoint}` lists",
        found_text(*found_bytes, *expected_bytes),
        others_text(*others),
        last_committed.map_or("none of the job's checkpoints".to_string(), |c| format!("checkpoints up to {c}"))
    )]
    Missing {
        /// The job.
        job: JobId,
        /// The checkpoint that lists the file.
        checkpoint: CheckpointId,
        /// The table.
        table: String,
        /// The file's path.
        path: String,
        /// The size the manifest records.
        expected_bytes: u64,
        /// The size found; `None` = no such file.
        found_bytes: Option<u64>,
        /// Other pending files missing or of the wrong size (not named here; the log of this
        /// stop lists each).
        others: usize,
        /// The newest checkpoint of the job the table holds.
        last_committed: Option<CheckpointId>,
    },
    /// The warehouse could not answer. Transient: nothing was committed; restart.
    #[error(
        "cannot check pending file {path} of checkpoint {checkpoint} (table {table}): {reason}; nothing was \
         committed. Is the warehouse store reachable?"
    )]
    Unreadable {
        /// The checkpoint that lists the file.
        checkpoint: CheckpointId,
        /// The table.
        table: String,
        /// The file's path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The check did not finish in time. Transient: nothing was committed; restart.
    #[error(
        "checking {files} pending files took longer than {deadline:?}; nothing was committed. Is the warehouse store slow?"
    )]
    Deadline {
        /// Files to check.
        files: usize,
        /// The deadline.
        deadline: Duration,
    },
}

impl PendingFileError {
    /// Whether an operator must act (restarting cannot help): a file missing or the wrong size.
    pub fn needs_operator(&self) -> bool {
        matches!(self, PendingFileError::Missing { .. })
    }
}

fn found_text(found: Option<u64>, expected: u64) -> String {
    match found {
        None => format!("is missing (the checkpoint recorded {expected} bytes)"),
        Some(f) => format!("is {f} bytes, the checkpoint recorded {expected}"),
    }
}

fn others_text(others: usize) -> String {
    match others {
        0 => String::new(),
        n => format!(" ({n} more pending files are missing or the wrong size, each logged)"),
    }
}

/// What the check found for one file, as a pure decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// There, with the recorded size.
    Present,
    /// Not there.
    Missing,
    /// There with another size.
    WrongSize(u64),
}

/// Judges one answer of the warehouse against the manifest's size.
pub fn judge(expected_bytes: u64, found: Option<u64>) -> Finding {
    match found {
        None => Finding::Missing,
        Some(f) if f == expected_bytes => Finding::Present,
        Some(f) => Finding::WrongSize(f),
    }
}

/// Checks every file of `files` (all of them, so the stop names a count); returns the first
/// missing or wrong-size one as [`PendingFileError::Missing`] with `last_committed` for its
/// table. `last_committed` = per table, the newest checkpoint it holds.
pub async fn verify(
    sizes: &dyn FileSizes,
    job: &JobId,
    files: &[Expected],
    last_committed: impl Fn(&str) -> Option<CheckpointId>,
) -> Result<(), PendingFileError> {
    let checks = futures::stream::iter(
        files
            .iter()
            .map(|f| async move { (f, sizes.size_bytes(&f.path).await) }),
    )
    .buffer_unordered(CHECKS_IN_FLIGHT)
    .collect::<Vec<_>>();
    let answers = tokio::time::timeout(CHECK_DEADLINE, checks)
        .await
        .map_err(|_| PendingFileError::Deadline {
            files: files.len(),
            deadline: CHECK_DEADLINE,
        })?;
    let mut bad = Vec::new();
    for (f, answer) in answers {
        let found = answer.map_err(|reason| PendingFileError::Unreadable {
            checkpoint: f.checkpoint,
            table: f.table.clone(),
            path: f.path.clone(),
            reason,
        })?;
        match judge(f.size_bytes, found) {
            Finding::Present => {}
            finding => {
                tracing::error!(checkpoint = %f.checkpoint, table = %f.table, path = %f.path,
                    expected_bytes = f.size_bytes, found = ?finding, "pending data file missing or the wrong size");
                bad.push((f, found));
            }
        }
    }
    // The lowest checkpoint first: the one the operator meets first.
    bad.sort_by(|a, b| (a.0.checkpoint, &a.0.path).cmp(&(b.0.checkpoint, &b.0.path)));
    match bad.first() {
        None => Ok(()),
        Some((f, found)) => Err(PendingFileError::Missing {
            job: job.clone(),
            checkpoint: f.checkpoint,
            table: f.table.clone(),
            path: f.path.clone(),
            expected_bytes: f.size_bytes,
            found_bytes: *found,
            others: bad.len() - 1,
            last_committed: last_committed(&f.table),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn size_must_match_exactly() {
        assert_eq!(judge(100, Some(100)), Finding::Present);
        assert_eq!(judge(100, None), Finding::Missing);
        assert_eq!(judge(100, Some(0)), Finding::WrongSize(0));
        assert_eq!(judge(100, Some(101)), Finding::WrongSize(101));
    }

    struct Sizes(HashMap<String, Result<u64, String>>);

    #[async_trait]
    impl FileSizes for Sizes {
        async fn size_bytes(&self, uri: &str) -> Result<Option<u64>, String> {
            self.0.get(uri).cloned().transpose()
        }
    }

    fn expected(checkpoint: u64, path: &str, size_bytes: u64) -> Expected {
        Expected {
            checkpoint: CheckpointId(checkpoint),
            table: "ns.ledger_events".into(),
            path: path.into(),
            size_bytes,
        }
    }

    #[tokio::test]
    async fn the_stop_names_the_first_bad_file_and_counts_the_others() {
        let job = JobId::new("j").unwrap();
        let sizes = Sizes(HashMap::from([
            ("s3://w/a".to_string(), Ok(10)),
            ("s3://w/b".to_string(), Ok(7)),
        ]));
        let files = [
            expected(5, "s3://w/a", 10),
            expected(6, "s3://w/c", 30),
            expected(5, "s3://w/b", 20),
        ];
        let e = verify(&sizes, &job, &files, |_| Some(CheckpointId(4)))
            .await
            .unwrap_err();
        assert!(e.needs_operator());
        let text = e.to_string();
        for want in [
            "pending data file s3://w/b of checkpoint 5",
            "is 7 bytes, the checkpoint recorded 20",
            "1 more pending files",
            "checkpoints up to 4",
            "exactly 20 bytes",
            "`recon-pipeline rewind` does not rebuild it",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        assert!(verify(&sizes, &job, &files[..1], |_| None).await.is_ok());
        let missing = verify(&sizes, &job, &files[1..2], |_| None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("is missing (the checkpoint recorded 30 bytes)"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn an_unanswered_question_is_transient() {
        let job = JobId::new("j").unwrap();
        let sizes = Sizes(HashMap::from([(
            "s3://w/a".to_string(),
            Err("connection refused".to_string()),
        )]));
        let e = verify(&sizes, &job, &[expected(5, "s3://w/a", 10)], |_| None)
            .await
            .unwrap_err();
        assert!(!e.needs_operator());
        assert!(e.to_string().contains("connection refused"), "{e}");
    }

    #[tokio::test]
    async fn local_files_are_found_by_their_uri() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("day=2025-03-03").join("a.parquet");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"12345").unwrap();
        let sizes = ObjectStoreSizes(Arc::new(object_store::local::LocalFileSystem::new()));
        let uri = format!("file://{}", file.display());
        assert_eq!(sizes.size_bytes(&uri).await, Ok(Some(5)));
        let gone = format!("file://{}", dir.path().join("b.parquet").display());
        assert_eq!(sizes.size_bytes(&gone).await, Ok(None));
    }
}
