//! The state chain folded off the barrier: a checkpoint costs what changed.
//!
//! Every checkpoint writes a delta (the trips changed in it, and tombstones of the trips that
//! left memory). Restoring reads the chain a manifest lists: one full file, then deltas. Left
//! alone the chain grows by one file per checkpoint, so once it holds `full_state_every`
//! deltas a background task folds it (`codec::compact`: newest record of each trip, tombstones
//! applied) into one full file, `state-base.bin`, in the directory of the last checkpoint it
//! folds. It reads the files back from the checkpoint store (never the live state, so input
//! never waits for it) and writes with create-if-absent: a fold of the same chain is the same
//! bytes, so a restart or a zombie that folded the same chain wrote what this one would.
//!
//! The next barrier takes a finished fold in: the chain's folded prefix becomes the new full
//! file, and that checkpoint's manifest lists it. Until then, and if the fold fails or dies
//! with the process, nothing changes: a folded file no manifest lists is deleted with its
//! checkpoint's directory (`CheckpointLog::prune`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::checkpoint::log::{CheckpointLog, STATE_BASE_FILE};
use crate::checkpoint::manifest::state_checksum;
use crate::ids::CheckpointId;
use crate::state::codec;

/// A finished fold.
#[derive(Debug)]
pub struct Folded {
    /// The chain prefix it replaces, oldest first.
    pub replaces: Vec<String>,
    /// The full file that replaces them.
    pub path: String,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// Its size.
    pub bytes: usize,
    /// How long the fold took.
    pub took: Duration,
}

/// The fold in flight, if any.
#[derive(Default)]
pub struct ChainFold {
    task: Option<JoinHandle<Result<Folded, String>>>,
}

impl ChainFold {
    /// A finished fold, if one is (a running one is left running); `Err`: it failed, and
    /// the next [`ChainFold::start`] tries again.
    pub async fn take_finished(&mut self) -> Result<Option<Folded>, String> {
        match self.task.take_if(|t| t.is_finished()) {
            Some(task) => Self::join(task).await.map(Some),
            None => Ok(None),
        }
    }

    /// Waits for a running fold (benchmarks and tests; the job never waits).
    pub async fn wait(&mut self) -> Result<Option<Folded>, String> {
        match self.task.take() {
            Some(task) => Self::join(task).await.map(Some),
            None => Ok(None),
        }
    }

    async fn join(task: JoinHandle<Result<Folded, String>>) -> Result<Folded, String> {
        task.await
            .map_err(|e| format!("the fold task ended abnormally: {e}"))?
    }

    /// Starts folding `chain` (checked against `sums`, as listed by checkpoint `by`) when it
    /// holds at least `deltas_max` deltas and no fold is running; `true` when it started.
    pub fn start(
        &mut self,
        log: &CheckpointLog,
        chain: &[String],
        sums: &BTreeMap<String, String>,
        by: CheckpointId,
        deltas_max: usize,
    ) -> bool {
        if self.task.is_some() || chain.len().saturating_sub(1) < deltas_max.max(1) {
            return false;
        }
        let chain = chain.to_vec();
        let sums: Vec<Option<String>> = chain.iter().map(|p| sums.get(p).cloned()).collect();
        let log = log.clone();
        self.task = Some(tokio::spawn(async move {
            let started = Instant::now();
            // Newest first, one delta in memory at a time; the full file (the oldest, most of
            // the chain's bytes) in chunks.
            let mut fold = codec::Fold::default();
            for (i, (p, sum)) in chain.iter().zip(&sums).enumerate().rev() {
                if i == 0 {
                    fold = fold_full(&log, p, sum.as_ref(), by, fold).await?;
                    continue;
                }
                let bytes = log
                    .read_checked(p, sum.as_ref(), by)
                    .await
                    .map_err(|e| e.to_string())?;
                let path = p.clone();
                fold = tokio::task::spawn_blocking(move || {
                    fold.add(&path, &bytes, false).map(|()| fold)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            }
            let bytes = fold.finish();
            // The file is the size of the whole state: no second copy of it is made.
            let (sha256, len) = (state_checksum(&bytes), bytes.len());
            let last = chain.last().expect("a chain with deltas");
            let (path, there) = log
                .create_file_in(last, STATE_BASE_FILE, bytes)
                .await
                .map_err(|e| e.to_string())?;
            if there.len() != len || state_checksum(&there) != sha256 {
                return Err(format!(
                    "{path} already holds other bytes than this fold of the same chain (written by another build?); left in place, not used"
                ));
            }
            Ok(Folded {
                replaces: chain,
                sha256,
                bytes: len,
                path,
                took: started.elapsed(),
            })
        }));
        true
    }
}

/// Adds the chain's full file to `fold`, read in chunks on a blocking thread and hashed on
/// the way; the fold is returned only if the file's checksum is the one checkpoint `by`
/// recorded (nothing read is used before that).
async fn fold_full(
    log: &CheckpointLog,
    path: &str,
    sum: Option<&String>,
    by: CheckpointId,
    mut fold: codec::Fold,
) -> Result<codec::Fold, String> {
    use futures::StreamExt;
    use sha2::{Digest, Sha256};
    let (len, mut chunks) = log
        .read_state_chunks(path)
        .await
        .map_err(|e| e.to_string())?;
    let handle = tokio::runtime::Handle::current();
    let rel = path.to_string();
    let (fold, found) = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut next = || match handle.block_on(chunks.next()) {
            Some(Ok(chunk)) => {
                hasher.update(&chunk);
                Ok(Some(chunk))
            }
            Some(Err(e)) => Err(codec::CodecError::Corrupt {
                path: rel.clone(),
                message: format!("cannot read it: {e}"),
            }),
            None => Ok(None),
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        fold.add_full_chunks(&rel, len, &mut next)?;
        // Hash what is left after the last record (nothing, in a sound file).
        while next()?.is_some() {}
        Ok::<_, codec::CodecError>((fold, hex::encode(hasher.finalize())))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    log.check_sum(path, sum, Some(found), by)
        .map_err(|e| e.to_string())?;
    Ok(fold)
}

/// Takes a fold into a chain and its checksums: the folded prefix becomes the full file.
/// `false` (nothing changed) when the chain no longer starts with what was folded.
pub fn install(
    chain: &mut Vec<String>,
    sums: &mut BTreeMap<String, String>,
    done: &Folded,
) -> bool {
    if !chain.starts_with(&done.replaces) {
        return false;
    }
    let rest = chain.split_off(done.replaces.len());
    for p in &done.replaces {
        sums.remove(p);
    }
    *chain = std::iter::once(done.path.clone()).chain(rest).collect();
    sums.insert(done.path.clone(), done.sha256.clone());
    true
}
