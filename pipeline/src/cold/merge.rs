//! Merging cold runs off the barrier, and deleting the runs no retained checkpoint lists.
//!
//! Runs are merged size-tiered: two adjacent runs whose newer is at least half the older, and
//! whose sum stays under `merge_bytes_max`, become one, so the number of runs grows with the
//! log of the cold data. A merge reads the two local copies and writes the merged run in a
//! background task ([`ColdTier::maintain`] starts it at a barrier and takes it in at a later
//! one); input never waits for it, and lookups use the two old runs until then.
//!
//! A merged-away run stays in the checkpoint store while any retained checkpoint lists it (a
//! restart or a rewind to that checkpoint reads it). It is *retired* at the checkpoint whose
//! manifest first omits it; once every checkpoint before that one is pruned,
//! [`ColdTier::collect`] deletes it, from the store and from the local directory. The retired
//! list is part of every manifest (`cold_retired`), so a restart finishes what a crash left.
//! A merge that a crash cut short leaves a file no manifest lists in its checkpoint's
//! directory (a leak bounded by the number of crashes; `maintain` sweeps do not see it).

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::checkpoint::log::CheckpointLog;
use crate::ids::{CheckpointId, Generation};

use super::ColdError;
use super::runs::{ColdTier, RunRef, io, local_name, merge, open_local, put_run};

/// A run merged away: no manifest from checkpoint `at` on lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// Path relative to the job root.
    pub path: String,
    /// Its SHA-256 (the local copy's name).
    pub sha256: String,
    /// The first checkpoint whose manifest does not list it.
    pub at: CheckpointId,
}

/// A finished merge: the run that replaces `older` and `newer` (paths).
pub(super) struct Merged {
    older: String,
    newer: String,
    run: RunRef,
    took_ms: u64,
}

/// The merge in flight.
pub(super) type Running = JoinHandle<Result<Merged, ColdError>>;

impl ColdTier {
    /// At the barrier of checkpoint `id`, before its manifest lists [`ColdTier::refs`]: takes a
    /// finished merge in (the two runs it replaces retire at `id`), then starts the next merge
    /// that is due. Never waits for a running merge. A failed merge is logged and tried again.
    pub async fn maintain(
        &mut self,
        log: &CheckpointLog,
        id: CheckpointId,
        generation: Generation,
    ) -> Result<(), ColdError> {
        if self.merging.as_ref().is_some_and(|t| t.is_finished()) {
            let task = self.merging.take().expect("a finished merge");
            self.take_in(task, id).await?;
        }
        if self.merging.is_none()
            && let Some(i) = self.merge_candidate()
        {
            let (older, newer) = (self.runs[i].r.clone(), self.runs[i + 1].r.clone());
            let dir = self.dir.clone();
            let log = log.clone();
            self.merging = Some(tokio::spawn(async move {
                let started = Instant::now();
                let (o, n) = (older.clone(), newer.clone());
                let d = dir.clone();
                let (trips, bytes) = tokio::task::spawn_blocking(move || {
                    let older = open_local(o.clone(), &d.join(local_name(&o)))?;
                    let newer = open_local(n.clone(), &d.join(local_name(&n)))?;
                    let b = merge(&newer, &older)?;
                    Ok::<_, ColdError>((b.trips() as u64, b.finish()))
                })
                .await
                .map_err(|e| ColdError::Io(format!("cold merge task: {e}")))??;
                let opened =
                    put_run(&log, &dir, id, generation, "cold-merge.run", trips, bytes).await?;
                Ok(Merged {
                    older: older.path,
                    newer: newer.path,
                    run: opened.r,
                    took_ms: started.elapsed().as_millis() as u64,
                })
            }));
        }
        Ok(())
    }

    /// Waits for a running merge and takes it in (benchmarks and tests that need a fixed
    /// shape; the job never waits).
    pub async fn finish_merge(&mut self, id: CheckpointId) -> Result<(), ColdError> {
        match self.merging.take() {
            Some(task) => self.take_in(task, id).await,
            None => Ok(()),
        }
    }

    async fn take_in(&mut self, task: Running, id: CheckpointId) -> Result<(), ColdError> {
        let done = match task.await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cold run merge failed; the runs stay as they are and a later checkpoint tries again");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "cold run merge task ended abnormally; a later checkpoint tries again");
                return Ok(());
            }
        };
        let Some(i) = self
            .runs
            .windows(2)
            .position(|w| w[0].r.path == done.older && w[1].r.path == done.newer)
        else {
            return Ok(());
        };
        let local = self.dir.join(local_name(&done.run));
        let merged = open_local(done.run, &local)?;
        let gone: Vec<RunRef> = self
            .runs
            .splice(i..i + 2, std::iter::once(merged))
            .map(|r| r.r)
            .collect();
        tracing::debug!(
            took_ms = done.took_ms,
            runs = self.runs.len(),
            "cold runs merged"
        );
        self.retired.extend(gone.into_iter().map(|r| Retired {
            path: r.path,
            sha256: r.sha256,
            at: id,
        }));
        Ok(())
    }

    /// The older run of the newest adjacent pair that is due for a merge.
    fn merge_candidate(&self) -> Option<usize> {
        (0..self.runs.len().saturating_sub(1)).rev().find(|&i| {
            let (older, newer) = (self.runs[i].r.bytes, self.runs[i + 1].r.bytes);
            newer * 2 >= older && older + newer <= self.merge_bytes_max
        })
    }

    /// Runs merged away that a retained checkpoint may still list (for the manifest).
    pub fn retired(&self) -> &[Retired] {
        &self.retired
    }

    /// Deletes the retired runs no retained checkpoint lists: those retired at or before
    /// `oldest_retained`, the oldest checkpoint the log still holds. Returns how many.
    pub async fn collect(
        &mut self,
        log: &CheckpointLog,
        oldest_retained: CheckpointId,
    ) -> Result<usize, ColdError> {
        let (doomed, kept): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| r.at <= oldest_retained);
        self.retired = kept;
        for (i, r) in doomed.iter().enumerate() {
            if let Err(e) = log.delete_file(&r.path).await {
                // Not deleted: keep it (and the rest) for the next prune.
                self.retired.extend(doomed[i..].iter().cloned());
                return Err(io(&r.path, e));
            }
            if !self.runs.iter().any(|o| o.r.sha256 == r.sha256) {
                let local: PathBuf = self.dir.join(format!("{}.run", r.sha256));
                if let Err(e) = std::fs::remove_file(&local)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %local.display(), error = %e, "cannot delete a local cold run copy");
                }
            }
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests;
