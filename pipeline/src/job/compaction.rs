//! The state chain compacted off the barrier: a checkpoint costs what changed.
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

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::checkpoint::log::STATE_BASE_FILE;
use crate::checkpoint::manifest::state_checksum;
use crate::state::codec;

use super::Job;

/// A finished fold.
pub(super) struct Compacted {
    /// The chain prefix it replaces, oldest first.
    replaces: Vec<String>,
    /// The full file that replaces them.
    path: String,
    sha256: String,
    bytes: usize,
    took: Duration,
}

/// The compaction in flight, if any.
#[derive(Default)]
pub(super) struct Compaction {
    task: Option<JoinHandle<Result<Compacted, String>>>,
}

impl Job {
    /// At a barrier, before the chain is extended: takes a finished fold in (a running one is
    /// left running; the barrier never waits for it).
    pub(super) async fn take_compaction(&mut self) {
        let Some(task) = self
            .compaction
            .task
            .take_if(|t| t.is_finished())
        else {
            return;
        };
        let done = match task.await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "state compaction failed; the chain stays as it is and the next checkpoint tries again");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "state compaction task ended abnormally; the next checkpoint tries again");
                return;
            }
        };
        if !self.state_chain.starts_with(&done.replaces) {
            return;
        }
        let rest = self.state_chain.split_off(done.replaces.len());
        for p in &done.replaces {
            self.state_sha256.remove(p);
        }
        self.state_chain = std::iter::once(done.path.clone()).chain(rest).collect();
        self.state_sha256.insert(done.path.clone(), done.sha256);
        self.report.compactions += 1;
        tracing::info!(
            files = done.replaces.len(),
            path = %done.path,
            bytes = done.bytes,
            took_ms = done.took.as_millis() as u64,
            chain = self.state_chain.len(),
            "state chain compacted"
        );
    }

    /// After a checkpoint counts: folds the chain in the background once it holds
    /// `full_state_every` deltas and no fold is running.
    pub(super) fn start_compaction(&mut self) {
        let deltas = self.state_chain.len().saturating_sub(1);
        if self.compaction.task.is_some() || deltas < self.cfg.full_state_every.max(1) as usize {
            return;
        }
        let chain = self.state_chain.clone();
        let sums: Vec<Option<String>> = chain
            .iter()
            .map(|p| self.state_sha256.get(p).cloned())
            .collect();
        let log = self.log.clone();
        let by = self.last;
        self.compaction.task = Some(tokio::spawn(async move {
            let started = Instant::now();
            let mut files = Vec::with_capacity(chain.len());
            for (p, sum) in chain.iter().zip(&sums) {
                let bytes = log
                    .read_checked(p, sum.as_ref(), by)
                    .await
                    .map_err(|e| e.to_string())?;
                files.push((p.clone(), bytes));
            }
            let bytes = tokio::task::spawn_blocking(move || codec::compact(&files))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let last = chain.last().expect("a chain with deltas");
            let (path, there) = log
                .create_file_in(last, STATE_BASE_FILE, bytes.clone())
                .await
                .map_err(|e| e.to_string())?;
            if there != bytes {
                return Err(format!(
                    "{path} already holds other bytes than this fold of the same chain (written by another build?); left in place, not used"
                ));
            }
            Ok(Compacted {
                replaces: chain,
                sha256: state_checksum(&bytes),
                bytes: bytes.len(),
                path,
                took: started.elapsed(),
            })
        }));
    }
}
