//! The checkpoint log of one job, read and extended through a [`CheckpointStore`].
//!
//! Caller sequence: [`CheckpointLog::claim`] once at start (new generation), then per barrier
//! [`CheckpointLog::write_state`] -> [`CheckpointLog::write_manifest`] ->
//! [`CheckpointLog::complete`]. Only a completed entry counts; everything else is garbage that
//! [`CheckpointLog::prune`] may remove once nothing refers to it.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use sha2::{Digest, Sha256};

pub use crate::checkpoint::claim::ClaimKind;
use crate::checkpoint::claim::{self, ClaimRefusal};
use crate::checkpoint::manifest::{
    self, EntryKind, FORMAT_VERSION, LogEntry, Manifest, checkpoint_dir, log_path,
};
use crate::checkpoint::protocol::{self, Completion};
use crate::checkpoint::store::{CheckpointStore, Chunks, Created};
use crate::ids::{CheckpointId, Generation, JobId};

/// "checkpoint N" for a state file path `ckpt/<id:020>-g<gen>/state.bin`, else the path.
fn state_writer(rel: &str) -> String {
    manifest::parse_checkpoint_dir(rel)
        .map_or_else(|| rel.to_string(), |(id, _)| format!("checkpoint {}", id.0))
}

/// Attempts to claim a generation when other processes keep winning the race.
pub const CLAIM_ATTEMPTS_MAX: u32 = 16;

pub use super::log_error::LogError;

/// A completed checkpoint as read back: its entry and verified manifest.
#[derive(Clone, Debug)]
pub struct Completed {
    /// The log entry.
    pub entry: LogEntry,
    /// Its manifest (checksum verified).
    pub manifest: Manifest,
}

/// The right to commit to the tables as one generation of one job. Only
/// [`CheckpointLog::claim_as`] issues one, once that generation's claim is complete in the log:
/// a [`Committer`](super::commit::Committer) that appends is built from a permit, so no code
/// path commits as a generation it did not claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPermit {
    job: JobId,
    generation: Generation,
}

impl CommitPermit {
    /// The job it commits for.
    pub fn job(&self) -> &JobId {
        &self.job
    }

    /// The generation it commits as.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// A permit no claim backs, for unit tests of the commit path alone.
    #[cfg(test)]
    pub(crate) fn unclaimed_for_tests(job: JobId, generation: Generation) -> CommitPermit {
        CommitPermit { job, generation }
    }
}

/// A generation this process claimed: the claim as completed in the log, and the permit to
/// commit as it.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The claim's log entry.
    pub entry: LogEntry,
    /// The claim's manifest (what the generation starts from).
    pub manifest: Manifest,
    /// The right to commit as the claimed generation.
    pub permit: CommitPermit,
}

/// The log of one job.
#[derive(Clone)]
pub struct CheckpointLog {
    store: Arc<dyn CheckpointStore>,
    root: String,
    job: JobId,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl CheckpointLog {
    /// The log of `job` under `<prefix>/<job>/` in `store`.
    pub fn new(store: Arc<dyn CheckpointStore>, prefix: &str, job: JobId) -> CheckpointLog {
        let prefix = prefix.trim_matches('/');
        let root = if prefix.is_empty() {
            job.to_string()
        } else {
            format!("{prefix}/{job}")
        };
        CheckpointLog { store, root, job }
    }

    /// The job.
    pub fn job(&self) -> &JobId {
        &self.job
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }

    /// The log of another job beside this one (same store, same prefix).
    pub fn sibling(&self, job: JobId) -> CheckpointLog {
        let prefix = self
            .root
            .strip_suffix(self.job.as_str())
            .unwrap_or("")
            .trim_end_matches('/');
        CheckpointLog {
            store: self.store.clone(),
            root: if prefix.is_empty() {
                job.to_string()
            } else {
                format!("{prefix}/{job}")
            },
            job,
        }
    }

    /// The store the log lives in.
    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.store
    }

    /// The store path of `rel` under the job's root (records beside the log, e.g. a fleet's
    /// `fleet.json`).
    pub fn path_of(&self, rel: &str) -> String {
        self.path(rel)
    }

    fn corrupt(&self, message: String) -> LogError {
        LogError::Corrupt {
            job: self.job.clone(),
            message,
        }
    }

    /// Ids of every entry in the log after `after` (all when `None`), ascending.
    pub async fn ids_after(
        &self,
        after: Option<CheckpointId>,
    ) -> Result<Vec<CheckpointId>, LogError> {
        let from = after.map(|a| self.path(&log_path(a)));
        let paths = self
            .store
            .list_after(&self.path("log"), from.as_deref())
            .await?;
        let mut ids = Vec::with_capacity(paths.len());
        for p in paths {
            let id = manifest::parse_log_path(&p)
                .ok_or_else(|| self.corrupt(format!("unexpected object {p} in the log")))?;
            ids.push(id);
        }
        ids.sort();
        Ok(ids)
    }

    /// Reads one entry, `None` when absent.
    pub async fn entry(&self, id: CheckpointId) -> Result<Option<LogEntry>, LogError> {
        let path = self.path(&log_path(id));
        let Some(bytes) = self.store.get(&path).await? else {
            return Ok(None);
        };
        self.parse_entry(&path, &bytes).map(Some)
    }

    fn parse_entry(&self, path: &str, bytes: &[u8]) -> Result<LogEntry, LogError> {
        let e: LogEntry =
            serde_json::from_slice(bytes).map_err(|err| self.corrupt(format!("{path}: {err}")))?;
        if e.format != FORMAT_VERSION {
            return Err(self.corrupt(format!(
                "{path}: format {} is not {FORMAT_VERSION}",
                e.format
            )));
        }
        if e.job_id != self.job {
            return Err(self.corrupt(format!("{path} belongs to job {}", e.job_id)));
        }
        Ok(e)
    }

    /// Reads and verifies the manifest of an entry.
    pub async fn manifest(&self, entry: &LogEntry) -> Result<Manifest, LogError> {
        let path = self.path(&entry.manifest);
        let bytes = self.store.get(&path).await?.ok_or_else(|| {
            self.corrupt(format!(
                "manifest {path} of checkpoint {} is missing",
                entry.checkpoint_id
            ))
        })?;
        let sum = sha256_hex(&bytes);
        if sum != entry.manifest_sha256 {
            return Err(self.corrupt(format!(
                "manifest {path} has checksum {sum}, the log says {}",
                entry.manifest_sha256
            )));
        }
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| self.corrupt(format!("{path}: {e}")))?;
        if m.checkpoint_id != entry.checkpoint_id || m.generation != entry.generation {
            return Err(self.corrupt(format!("manifest {path} does not match its log entry")));
        }
        Ok(m)
    }

    /// A completed checkpoint by id.
    pub async fn completed(&self, id: CheckpointId) -> Result<Option<Completed>, LogError> {
        let Some(entry) = self.entry(id).await? else {
            return Ok(None);
        };
        let manifest = self.manifest(&entry).await?;
        Ok(Some(Completed { entry, manifest }))
    }

    /// The newest completed checkpoint.
    pub async fn head(&self) -> Result<Option<Completed>, LogError> {
        match self.ids_after(None).await?.last() {
            Some(id) => self.completed(*id).await,
            None => Ok(None),
        }
    }

    /// Writes a state file of checkpoint `id`; returns its path relative to the job root.
    pub async fn write_state(
        &self,
        id: CheckpointId,
        generation: Generation,
        bytes: Vec<u8>,
    ) -> Result<String, LogError> {
        self.write_file(id, generation, "state.bin", bytes).await
    }

    /// Writes a file of checkpoint `id` (e.g. `alerts.jsonl`) beside its state; returns its
    /// path relative to the job root.
    pub async fn write_file(
        &self,
        id: CheckpointId,
        generation: Generation,
        name: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<String, LogError> {
        let rel = format!("{}/{name}", checkpoint_dir(id, generation));
        self.store.put(&self.path(&rel), bytes.into()).await?;
        Ok(rel)
    }

    /// Every file under `rel` (a folder relative to the job root), relative to the job root.
    pub async fn files_under(&self, rel: &str) -> Result<Vec<String>, LogError> {
        let root = format!("{}/", self.root);
        let paths = self.store.list_after(&self.path(rel), None).await?;
        Ok(paths
            .into_iter()
            .filter_map(|p| p.strip_prefix(&root).map(str::to_string))
            .collect())
    }

    /// Deletes a file by its path relative to the job root (absent: nothing to do).
    pub async fn delete_file(&self, rel: &str) -> Result<(), LogError> {
        self.store.delete(&self.path(rel)).await?;
        Ok(())
    }

    /// Reads a state file by its path relative to the job root.
    pub async fn read_state(&self, rel: &str) -> Result<Bytes, LogError> {
        self.store
            .get(&self.path(rel))
            .await?
            .ok_or_else(|| self.corrupt(format!("state file {rel} is missing")))
    }

    /// Reads the state chain of `m` in order, each file checked against the checksum `m`
    /// recorded ([`LogError::StateChecksum`] on a mismatch). A manifest written before
    /// checksums existed restores with a warning. Call it before anything is written: a
    /// mismatch must stop the job the same way at every start.
    pub async fn read_state_chain(&self, m: &Manifest) -> Result<Vec<(String, Bytes)>, LogError> {
        let mut out = Vec::with_capacity(m.state_chain.len());
        for rel in &m.state_chain {
            let bytes = self
                .read_checked(rel, m.state_sha256.get(rel), m.checkpoint_id)
                .await?;
            out.push((rel.clone(), bytes));
        }
        Ok(out)
    }

    /// Reads a state file listed by checkpoint `by`, checked against `expected` (SHA-256 hex;
    /// `None`: written by an older build, read with a warning).
    pub async fn read_checked(
        &self,
        rel: &str,
        expected: Option<&String>,
        by: CheckpointId,
    ) -> Result<Bytes, LogError> {
        let bytes = self.read_state(rel).await?;
        let found = expected.map(|_| manifest::state_checksum(&bytes));
        self.check_sum(rel, expected, found, by)?;
        Ok(bytes)
    }

    /// Reads a state file in chunks (a fold's full file, never all of it in memory); the
    /// caller hashes every chunk and checks the sum with [`CheckpointLog::check_sum`] before
    /// it uses anything it read.
    pub async fn read_state_chunks(&self, rel: &str) -> Result<(u64, Chunks), LogError> {
        self.store
            .get_chunks(&self.path(rel))
            .await?
            .ok_or_else(|| self.corrupt(format!("state file {rel} is missing")))
    }

    /// Checks the SHA-256 `found` of state file `rel` against the one checkpoint `by` recorded
    /// ([`LogError::StateChecksum`] on a mismatch; a warning when none was recorded).
    pub fn check_sum(
        &self,
        rel: &str,
        expected: Option<&String>,
        found: Option<String>,
        by: CheckpointId,
    ) -> Result<(), LogError> {
        match (expected, found) {
            (Some(expected), Some(found)) if &found != expected => Err(LogError::StateChecksum {
                job: self.job.clone(),
                checkpoint: by,
                path: rel.to_string(),
                written_by: state_writer(rel),
                expected: expected.clone(),
                found,
            }),
            (Some(_), Some(_)) => Ok(()),
            (Some(_), None) => Err(self.corrupt(format!("state file {rel} was not hashed"))),
            (None, _) => {
                tracing::warn!(
                    job = %self.job,
                    checkpoint = %by,
                    path = %rel,
                    "state file has no recorded checksum (written by an older build): restored unverified"
                );
                Ok(())
            }
        }
    }

    /// Writes a file into the directory of an existing checkpoint only if nothing is there yet;
    /// returns its path and the bytes that are there (ours, or an earlier writer's).
    pub async fn create_file_in(
        &self,
        dir_of: &str,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(String, Bytes), LogError> {
        let dir = dir_of.rsplit_once('/').map_or(dir_of, |(d, _)| d);
        let rel = format!("{dir}/{name}");
        let bytes = Bytes::from(bytes);
        let there = match self.store.create(&self.path(&rel), bytes.clone()).await? {
            Created::Created => bytes,
            Created::AlreadyExists(winner) => winner,
        };
        Ok((rel, there))
    }

    /// Writes a manifest (only if nothing is at its path: a retry of the same bytes is fine,
    /// another writer's bytes are [`LogError::ManifestTaken`]) and returns the entry that would
    /// complete it.
    pub async fn write_manifest(
        &self,
        m: &Manifest,
        kind: EntryKind,
    ) -> Result<LogEntry, LogError> {
        let rel = format!(
            "{}/manifest.json",
            checkpoint_dir(m.checkpoint_id, m.generation)
        );
        let bytes = serde_json::to_vec_pretty(m).expect("manifest serializes");
        let entry = LogEntry {
            format: FORMAT_VERSION,
            job_id: self.job.clone(),
            checkpoint_id: m.checkpoint_id,
            generation: m.generation,
            kind,
            manifest: rel.clone(),
            manifest_sha256: sha256_hex(&bytes),
            completed_at: Utc::now(),
        };
        let bytes = Bytes::from(bytes);
        match self.store.create(&self.path(&rel), bytes.clone()).await? {
            Created::Created => Ok(entry),
            Created::AlreadyExists(there) if there == bytes => Ok(entry),
            Created::AlreadyExists(_) => Err(LogError::ManifestTaken {
                job: self.job.clone(),
                at: m.checkpoint_id,
                generation: m.generation,
            }),
        }
    }

    /// Completes a checkpoint: the single atomic, conditional write that makes it count.
    pub async fn complete(&self, entry: &LogEntry) -> Result<(), LogError> {
        let id = entry.checkpoint_id;
        let prev = CheckpointId(id.0.checked_sub(1).expect("checkpoint ids start at 1"));
        let mut later = Vec::new();
        for l in self.ids_after(Some(prev)).await? {
            match self.entry(l).await? {
                Some(e) => later.push(e),
                None => continue,
            }
        }
        let existing = if later.iter().any(|e| e.checkpoint_id == id) {
            later.iter().find(|e| e.checkpoint_id == id).cloned()
        } else {
            let bytes = serde_json::to_vec(entry).expect("entry serializes");
            match self
                .store
                .create(&self.path(&log_path(id)), Bytes::from(bytes))
                .await?
            {
                Created::Created => None,
                Created::AlreadyExists(b) => Some(self.parse_entry(&log_path(id), &b)?),
            }
        };
        let later: Vec<LogEntry> = later
            .into_iter()
            .filter(|e| e.checkpoint_id != id)
            .collect();
        match protocol::judge_completion(entry, &later, existing.as_ref()) {
            Completion::Completed | Completion::AlreadyOurs => Ok(()),
            Completion::Fenced { by } => Err(LogError::Fenced {
                job: self.job.clone(),
                ours: entry.generation,
                by,
                at: id,
            }),
        }
    }

    /// Claims a new generation after the current head, writing a `GenerationStart` (or
    /// `Rewind`) entry. Returns the completed entry and its manifest.
    ///
    /// `rewind_to`: restart from that older checkpoint's state and offsets instead of the head.
    pub async fn claim(
        &self,
        rewind_to: Option<(CheckpointId, String)>,
    ) -> Result<Claimed, LogError> {
        let kind = match rewind_to {
            None => ClaimKind::Resume,
            Some((to, reason)) => ClaimKind::Rewind { to, reason },
        };
        self.claim_as(&kind).await
    }

    /// Claims a new generation after the current head, as `kind` says ([`claim::plan`]).
    /// Returns the completed entry and its manifest.
    pub async fn claim_as(&self, kind: &ClaimKind) -> Result<Claimed, LogError> {
        for _ in 0..CLAIM_ATTEMPTS_MAX {
            let head = self.head().await?;
            let next = protocol::claim(head.as_ref().map(|c| &c.entry));
            let target = match kind {
                ClaimKind::Rewind { to, .. } => self.completed(*to).await?.map(|c| c.manifest),
                _ => None,
            };
            let (manifest, entry_kind) =
                claim::plan(kind, head.as_ref(), target.as_ref(), next, &self.job)
                    .map_err(|r| self.refused(r))?;
            let entry = match self.write_manifest(&manifest, entry_kind).await {
                Ok(entry) => entry,
                // Another claim of the same (id, generation) got there first: the head moves.
                Err(LogError::ManifestTaken { .. }) => continue,
                Err(e) => return Err(e),
            };
            match self.complete(&entry).await {
                Ok(()) => {
                    let permit = CommitPermit {
                        job: self.job.clone(),
                        generation: entry.generation,
                    };
                    return Ok(Claimed {
                        entry,
                        manifest,
                        permit,
                    });
                }
                Err(LogError::Fenced { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(LogError::ClaimRace {
            job: self.job.clone(),
        })
    }

    fn refused(&self, refusal: ClaimRefusal) -> LogError {
        match refusal {
            ClaimRefusal::RewindTargetMissing { to } => self.corrupt(format!(
                "cannot rewind to checkpoint {to}: it is not in the log (pruned?)"
            )),
            ClaimRefusal::Moved { judged, head } => LogError::Moved {
                job: self.job.clone(),
                judged,
                head,
            },
        }
    }

    /// Records, informatively, that every table holds checkpoints through `through`
    /// (`commits/latest.json`). Recovery never trusts it: the tables' markers decide. It
    /// survives snapshot expiration, for operators and `checkpoints list`.
    pub async fn record_commit(
        &self,
        through: CheckpointId,
        generation: Generation,
    ) -> Result<(), LogError> {
        let body = serde_json::json!({
            "job_id": self.job.as_str(),
            "committed_through": through.0,
            "generation": generation.0,
            "recorded_at": Utc::now().to_rfc3339(),
        });
        self.store
            .put(
                &self.path("commits/latest.json"),
                Bytes::from(body.to_string()),
            )
            .await?;
        Ok(())
    }

    /// Deletes the files and entries of `ids` (as decided by [`protocol::prunable`]).
    pub async fn prune(&self, ids: &[CheckpointId]) -> Result<usize, LogError> {
        Ok(self.prune_keeping(ids, &HashSet::new()).await?.0)
    }

    /// [`CheckpointLog::prune`], leaving in place the files of `keep` (state files a kept
    /// checkpoint's chain reads from a pruned checkpoint's directory: a fold's base, an older
    /// delta). Returns how many checkpoints went and the files left for the caller to delete
    /// once nothing reads them.
    pub async fn prune_keeping(
        &self,
        ids: &[CheckpointId],
        keep: &HashSet<String>,
    ) -> Result<(usize, Vec<String>), LogError> {
        let mut removed = 0;
        let mut left = Vec::new();
        for id in ids {
            let Some(entry) = self.entry(*id).await? else {
                continue;
            };
            // The manifest and state first, the entry last: a crash in between leaves an entry
            // whose manifest is missing, which only an already-committed, unreferenced
            // checkpoint can have, and the next prune finishes it.
            let dir = checkpoint_dir(entry.checkpoint_id, entry.generation);
            for name in ["state.bin", STATE_BASE_FILE, "alerts.jsonl"] {
                let rel = format!("{dir}/{name}");
                if still_read(keep, &rel) {
                    left.push(rel);
                    continue;
                }
                self.store.delete(&self.path(&rel)).await?;
            }
            self.store.delete(&self.path(&entry.manifest)).await?;
            self.store.delete(&self.path(&log_path(*id))).await?;
            removed += 1;
        }
        Ok((removed, left))
    }
}

/// Whether a state file must stay, given the files kept chains `read`: one they read, or the
/// base beside a delta one reads (a background fold writes its base beside the last delta it
/// folds, and the next barrier takes it in: until then no chain lists it).
pub fn still_read(read: &HashSet<String>, path: &str) -> bool {
    read.contains(path)
        || path
            .strip_suffix(STATE_BASE_FILE)
            .is_some_and(|dir| read.contains(&format!("{dir}state.bin")))
}

/// The name of a compacted state chain (`crate::job::compaction`), written in the directory of
/// the last checkpoint whose delta it folds.
pub const STATE_BASE_FILE: &str = "state-base.bin";
