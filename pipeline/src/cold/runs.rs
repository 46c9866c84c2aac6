//! The cold tier as immutable runs (`state::run`): durable in the checkpoint store, read from a
//! local working copy.
//!
//! A barrier that evicts trips writes one run of them (`ckpt/<id>-g<gen>/cold-<n>.run`) before
//! its manifest, and the manifest lists every run the state needs (`cold_runs`, oldest first,
//! each with its size and SHA-256): the run is part of the checkpoint exactly like a state
//! delta, so a crash before the manifest leaves an unreferenced file and nothing else. Lookups
//! read blocks from local copies (`pread`, the page cache; named by checksum): a Bloom filter per run answers
//! "absent" for almost every new trip and event, so the common case costs no I/O. A start
//! downloads the runs its manifest lists that the local directory lacks, each checked against
//! its recorded checksum.
//!
//! Runs are merged size-tiered, off the barrier (`merge`): a merge keeps the newest record of
//! each trip, and the runs it replaces are deleted once no retained checkpoint lists them.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::manifest::state_checksum;
use crate::ids::{CheckpointId, Generation};
use crate::state::evict::Evicted;
use crate::state::run::{self, RunBuilder, RunIndex, TRAILER_LEN};

use super::{ColdError, ColdLookup};

/// A run as a manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    /// Path relative to the job root.
    pub path: String,
    /// File size.
    pub bytes: u64,
    /// SHA-256 (hex) of the file, checked when a start downloads it.
    pub sha256: String,
    /// Trip records in it.
    pub trips: u64,
    /// Event-id entries in it (0 in runs of older builds: unknown).
    #[serde(default)]
    pub ids: u64,
    /// The newest `last_occurred_at` (µs) of its trips; once the late horizon passes it, every
    /// trip in the run is closed and the run is rewritten without ids (`cold::merge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_us_max: Option<i64>,
}

pub(super) struct OpenRun {
    pub(super) r: RunRef,
    pub(super) index: RunIndex,
    file: File,
}

/// The runs of the current state, oldest first, with their in-memory indexes.
pub struct ColdTier {
    pub(super) dir: PathBuf,
    pub(super) runs: Vec<OpenRun>,
    pub(super) merge_bytes_max: u64,
    /// The merge running in the background, if any.
    pub(super) merging: Option<super::merge::Running>,
    /// Runs merged away, deleted once no retained checkpoint lists them.
    pub(super) retired: Vec<super::merge::Retired>,
}

pub(super) fn io(what: &str, e: impl std::fmt::Display) -> ColdError {
    ColdError::Io(format!("{what}: {e}"))
}

fn corrupt(e: impl std::fmt::Display) -> ColdError {
    ColdError::Corrupt(e.to_string())
}

/// The local file name of a run: its checksum (content-addressed, so a copy left by another
/// job or store in the same directory can never be taken for this one).
pub(super) fn local_name(r: &RunRef) -> String {
    format!("{}.run", r.sha256)
}

impl ColdTier {
    /// Opens the runs `refs` lists, downloading into `dir` those it lacks; `retired` are the
    /// runs merged away that retained checkpoints may still list (`Manifest::cold_retired`).
    pub async fn open(
        log: &CheckpointLog,
        dir: &Path,
        refs: &[RunRef],
        retired: &[super::merge::Retired],
        merge_bytes_max: u64,
    ) -> Result<ColdTier, ColdError> {
        std::fs::create_dir_all(dir).map_err(|e| io(&dir.display().to_string(), e))?;
        let mut tier = ColdTier {
            dir: dir.to_path_buf(),
            runs: Vec::with_capacity(refs.len()),
            merge_bytes_max,
            merging: None,
            retired: retired.to_vec(),
        };
        tier.sweep_local(refs);
        for r in refs {
            let local = tier.dir.join(local_name(r));
            let present = std::fs::metadata(&local).is_ok_and(|m| m.len() == r.bytes);
            if !present {
                let bytes = log.read_state(&r.path).await.map_err(|e| io(&r.path, e))?;
                let found = state_checksum(&bytes);
                if found != r.sha256 || bytes.len() as u64 != r.bytes {
                    return Err(ColdError::Corrupt(format!(
                        "run {} has SHA-256 {found} and {} bytes, its manifest recorded {} and {} bytes",
                        r.path,
                        bytes.len(),
                        r.sha256,
                        r.bytes
                    )));
                }
                write_local(&local, &bytes)?;
            }
            tier.runs.push(open_local(r.clone(), &local)?);
        }
        Ok(tier)
    }

    /// Deletes the local copies no run of `refs` or the retired list is (a merge or a write
    /// that a crash cut short, runs deleted while this process was down). Only names this tier
    /// writes (`<sha256>.run`, `<sha256>.tmp`) are touched: the directory may be shared.
    fn sweep_local(&self, refs: &[RunRef]) {
        let keep: HashSet<&str> = refs
            .iter()
            .map(|r| r.sha256.as_str())
            .chain(self.retired.iter().map(|r| r.sha256.as_str()))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some((sha, ext)) = name.to_str().and_then(|n| n.rsplit_once('.')) else {
                continue;
            };
            let ours = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
            if ours
                && (ext == "tmp" || (ext == "run" && !keep.contains(sha)))
                && let Err(err) = std::fs::remove_file(e.path())
            {
                tracing::warn!(path = %e.path().display(), error = %err, "cannot delete a stale local cold run copy");
            }
        }
    }

    /// Whether no trip is cold (lookups can be skipped).
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The runs, oldest first, for the manifest.
    pub fn refs(&self) -> Vec<RunRef> {
        self.runs.iter().map(|r| r.r.clone()).collect()
    }

    /// Bytes the runs' indexes hold in memory.
    pub fn memory_bytes(&self) -> usize {
        self.runs.iter().map(|r| r.index.memory_bytes()).sum()
    }

    /// Trip records in all runs (a trip that left twice counts twice until a merge).
    pub fn records(&self) -> u64 {
        self.runs.iter().map(|r| r.r.trips).sum()
    }

    /// Writes what left memory at checkpoint `id` as a new run (nothing when every trip's cold
    /// copy was current); the caller lists [`ColdTier::refs`] in the manifest. Merging is
    /// [`ColdTier::maintain`]'s, off the barrier.
    pub async fn add(
        &mut self,
        log: &CheckpointLog,
        id: CheckpointId,
        generation: Generation,
        evicted: &[Evicted],
    ) -> Result<(), ColdError> {
        let mut b = RunBuilder::new();
        let mut meta = RunMeta::default();
        for e in evicted {
            if let Some(rec) = &e.record {
                b.trip(e.key, rec.clone());
                meta.trip(e.last_us);
                for k in &e.ids {
                    b.id(*k, e.key);
                }
                meta.ids += e.ids.len() as u64;
            }
        }
        if b.trips() == 0 {
            return Ok(());
        }
        let r = put_run(
            log,
            &self.dir,
            (id, generation),
            "cold-0.run",
            meta,
            b.finish(),
        )
        .await?;
        self.runs.push(r);
        Ok(())
    }

    /// The trips of the runs written after checkpoint `after` (every run when `None`), the
    /// newest record of each: the trips that left memory since. A merged run counts as written
    /// at its merge (it may hold older trips too: their records are their newest as well).
    pub fn trips_written_after(
        &self,
        after: Option<CheckpointId>,
    ) -> Result<Vec<crate::state::codec::Restored>, ColdError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for run in self.runs.iter().rev() {
            let written = crate::checkpoint::manifest::parse_checkpoint_dir(&run.r.path)
                .map(|(id, _)| id)
                .ok_or_else(|| corrupt(format!("run {} is outside a checkpoint", run.r.path)))?;
            if after.is_some_and(|a| written <= a) {
                continue;
            }
            for range in run.index.trip_blocks() {
                let block = ColdTier::read(run, range)?;
                for (_, rec) in run::block_trips(&run.r.path, &block).map_err(corrupt)? {
                    let restored = crate::state::codec::decode_trip(&run.r.path, &rec)?;
                    if seen.insert(restored.0.clone()) {
                        out.push(restored);
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) fn read(run: &OpenRun, range: std::ops::Range<u64>) -> Result<Vec<u8>, ColdError> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        run.file
            .read_exact_at(&mut buf, range.start)
            .map_err(|e| io(&run.r.path, e))?;
        Ok(buf)
    }
}

/// What a run's [`RunRef`] says of its content, counted while it is built.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RunMeta {
    pub(super) trips: u64,
    pub(super) ids: u64,
    pub(super) last_us_max: Option<i64>,
}

impl RunMeta {
    /// Counts a trip record whose last event is `last_us`.
    pub(super) fn trip(&mut self, last_us: Option<i64>) {
        self.trips += 1;
        if let Some(l) = last_us {
            self.last_us_max = Some(self.last_us_max.map_or(l, |m| m.max(l)));
        }
    }
}

/// Writes a run into the checkpoint store (`ckpt/<id>-g<gen>/<name>`) and the local copy, and
/// opens it.
pub(super) async fn put_run(
    log: &CheckpointLog,
    dir: &Path,
    (id, generation): (CheckpointId, Generation),
    name: &str,
    meta: RunMeta,
    bytes: Vec<u8>,
) -> Result<OpenRun, ColdError> {
    let r = RunRef {
        path: String::new(),
        bytes: bytes.len() as u64,
        sha256: state_checksum(&bytes),
        trips: meta.trips,
        ids: meta.ids,
        last_us_max: meta.last_us_max,
    };
    // One buffer for both writes (a merged run is tens of MiB).
    let bytes = bytes::Bytes::from(bytes);
    let path = log
        .write_file(id, generation, name, bytes.clone())
        .await
        .map_err(|e| io(name, e))?;
    let r = RunRef { path, ..r };
    let local = dir.join(local_name(&r));
    write_local(&local, &bytes)?;
    open_local(r, &local)
}

fn write_local(local: &Path, bytes: &[u8]) -> Result<(), ColdError> {
    let tmp = local.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, local).map_err(|e| io(&local.display().to_string(), e))
}

pub(super) fn open_local(r: RunRef, local: &Path) -> Result<OpenRun, ColdError> {
    let file = File::open(local).map_err(|e| io(&local.display().to_string(), e))?;
    let len = r.bytes;
    if len < TRAILER_LEN as u64 {
        return Err(ColdError::Corrupt(format!(
            "run {} is shorter than its trailer",
            r.path
        )));
    }
    let mut trailer = vec![0u8; TRAILER_LEN];
    file.read_exact_at(&mut trailer, len - TRAILER_LEN as u64)
        .map_err(|e| io(&r.path, e))?;
    let footer_len = run::footer_len(&r.path, &trailer).map_err(corrupt)? as u64;
    let start = len
        .checked_sub(TRAILER_LEN as u64 + footer_len)
        .ok_or_else(|| {
            ColdError::Corrupt(format!("run {}: footer longer than the file", r.path))
        })?;
    let mut footer = vec![0u8; footer_len as usize];
    file.read_exact_at(&mut footer, start)
        .map_err(|e| io(&r.path, e))?;
    let index = RunIndex::parse(&r.path, &footer).map_err(corrupt)?;
    Ok(OpenRun { r, index, file })
}

impl ColdLookup for ColdTier {
    async fn trip_records(&mut self, key: u64) -> Result<Vec<(String, Vec<u8>)>, ColdError> {
        let mut out = Vec::new();
        for run in self.runs.iter().rev() {
            let Some(range) = run.index.trip_block(key) else {
                continue;
            };
            let block = ColdTier::read(run, range)?;
            for v in run::find_trips(&run.r.path, &block, key).map_err(corrupt)? {
                out.push((run.r.path.clone(), v));
            }
        }
        Ok(out)
    }

    async fn id_holders(&mut self, event_key: u64) -> Result<Vec<u64>, ColdError> {
        let mut out = Vec::new();
        for run in self.runs.iter().rev() {
            let Some(range) = run.index.id_block(event_key) else {
                continue;
            };
            let block = ColdTier::read(run, range)?;
            for k in run::find_ids(&run.r.path, &block, event_key).map_err(corrupt)? {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }
}
