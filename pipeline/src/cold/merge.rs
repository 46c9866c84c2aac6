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
//! directory: the next start's `checkpoint::sweep` deletes it once that checkpoint is pruned,
//! and the tier's local copy when it opens.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::checkpoint::log::CheckpointLog;
use crate::ids::{CheckpointId, Generation};

use super::ColdError;
use super::runs::{ColdTier, OpenRun, RunMeta, RunRef, io, local_name, open_local, put_run};
use crate::state::codec;
use crate::state::run::{self, RunBuilder, RunError};

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

/// A finished merge: the run that replaces adjacent runs (paths, oldest first).
pub(super) struct Merged {
    replaces: Vec<String>,
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
        (id, generation): (CheckpointId, Generation),
        cutoff_us: Option<i64>,
    ) -> Result<(), ColdError> {
        if self.merging.as_ref().is_some_and(|t| t.is_finished()) {
            let task = self.merging.take().expect("a finished merge");
            self.take_in(task, id).await?;
        }
        if self.merging.is_some() {
            return Ok(());
        }
        let Some(inputs) = self.merge_candidate(cutoff_us) else {
            return Ok(());
        };
        // Newest first: the first record of a trip met is the one kept.
        let refs: Vec<RunRef> = inputs.rev().map(|i| self.runs[i].r.clone()).collect();
        let dir = self.dir.clone();
        let log = log.clone();
        self.merging = Some(tokio::spawn(async move {
            let started = Instant::now();
            let (rs, d) = (refs.clone(), dir.clone());
            let (meta, bytes) = tokio::task::spawn_blocking(move || {
                let open = rs
                    .iter()
                    .map(|r| open_local(r.clone(), &d.join(local_name(r))))
                    .collect::<Result<Vec<_>, _>>()?;
                let (b, meta) = merge_runs(&open, cutoff_us)?;
                Ok::<_, ColdError>((meta, b.finish()))
            })
            .await
            .map_err(|e| ColdError::Io(format!("cold merge task: {e}")))??;
            let opened =
                put_run(&log, &dir, (id, generation), "cold-merge.run", meta, bytes).await?;
            Ok(Merged {
                replaces: refs.into_iter().rev().map(|r| r.path).collect(),
                run: opened.r,
                took_ms: started.elapsed().as_millis() as u64,
            })
        }));
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
        let n = done.replaces.len();
        let Some(i) = self
            .runs
            .windows(n)
            .position(|w| w.iter().map(|r| &r.r.path).eq(done.replaces.iter()))
        else {
            return Ok(());
        };
        let local = self.dir.join(local_name(&done.run));
        let merged = open_local(done.run, &local)?;
        let gone: Vec<RunRef> = self
            .runs
            .splice(i..i + n, std::iter::once(merged))
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

    /// The runs of the next merge (adjacent, oldest first): the newest adjacent pair that is
    /// due (size-tiered), else one run whose trips are all beyond the horizon and that still
    /// holds event ids (rewritten without them: the id index spans the horizon).
    fn merge_candidate(&self, cutoff_us: Option<i64>) -> Option<Range<usize>> {
        let pair = (0..self.runs.len().saturating_sub(1)).rev().find(|&i| {
            let (older, newer) = (self.runs[i].r.bytes, self.runs[i + 1].r.bytes);
            newer * 2 >= older && older + newer <= self.merge_bytes_max
        });
        if let Some(i) = pair {
            return Some(i..i + 2);
        }
        let c = cutoff_us?;
        self.runs
            .iter()
            .position(|r| r.r.ids > 0 && r.r.last_us_max.is_some_and(|l| l < c))
            .map(|i| i..i + 1)
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

/// A run's entries in key order, one block in memory at a time.
struct Cursor<'a, T> {
    run: &'a OpenRun,
    blocks: std::vec::IntoIter<Range<u64>>,
    entries: std::vec::IntoIter<T>,
    parse: fn(&str, &[u8]) -> Result<Vec<T>, RunError>,
}

impl<'a, T> Cursor<'a, T> {
    fn new(
        run: &'a OpenRun,
        blocks: Vec<Range<u64>>,
        parse: fn(&str, &[u8]) -> Result<Vec<T>, RunError>,
    ) -> Self {
        Cursor {
            run,
            blocks: blocks.into_iter(),
            entries: Vec::new().into_iter(),
            parse,
        }
    }

    fn next(&mut self) -> Result<Option<T>, ColdError> {
        loop {
            if let Some(e) = self.entries.next() {
                return Ok(Some(e));
            }
            let Some(range) = self.blocks.next() else {
                return Ok(None);
            };
            let block = ColdTier::read(self.run, range)?;
            let parsed = (self.parse)(&self.run.r.path, &block)
                .map_err(|e| ColdError::Corrupt(e.to_string()))?;
            self.entries = parsed.into_iter();
        }
    }
}

/// Merges `runs` (adjacent, newest first) into one: the newest record of each trip, each id
/// entry once. With `cutoff_us`, a trip whose last event is before it is closed: its record
/// loses its event ids and its id entries go. A streaming merge of sorted runs: memory is the
/// output and one block per input, plus the keys of the trips closed here.
pub(super) fn merge_runs(
    runs: &[OpenRun],
    cutoff_us: Option<i64>,
) -> Result<(RunBuilder, RunMeta), ColdError> {
    let runs: Vec<&OpenRun> = runs.iter().collect();
    let mut out = merge_routed(&runs, cutoff_us, 1, |_, _| Ok(0))?;
    Ok(out.pop().expect("one output"))
}

/// [`merge_runs`] into `outputs` runs: `route` names the output of each kept trip record (from
/// its path and bytes); an id entry goes to every output holding a record of its trip key with
/// ids. A reshard splits the cold tier this way (`fleet::reshard`).
pub(super) fn merge_routed(
    runs: &[&OpenRun],
    cutoff_us: Option<i64>,
    outputs: usize,
    mut route: impl FnMut(&str, &[u8]) -> Result<usize, ColdError>,
) -> Result<Vec<(RunBuilder, RunMeta)>, ColdError> {
    let mut outs: Vec<(RunBuilder, RunMeta)> = (0..outputs)
        .map(|_| (RunBuilder::new(), RunMeta::default()))
        .collect();
    // Trip keys whose kept records hold no ids: their id entries are dropped. With several
    // outputs, also the outputs holding a key's records with ids.
    let mut idless: HashSet<u64> = HashSet::new();
    let mut holders: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut cursors: Vec<_> = runs
        .iter()
        .map(|r| Cursor::new(r, r.index.trip_blocks(), run::block_trips))
        .collect();
    let mut heads = cursors
        .iter_mut()
        .map(Cursor::next)
        .collect::<Result<Vec<_>, _>>()?;
    let mut group: Vec<String> = Vec::new();
    while let Some(key) = heads.iter().flatten().map(|(k, _)| *k).min() {
        group.clear();
        let mut any_ids = false;
        for (head, cursor) in heads.iter_mut().zip(cursors.iter_mut()) {
            while head.as_ref().is_some_and(|(k, _)| *k == key) {
                let (_, value) = head.take().expect("a head");
                *head = cursor.next()?;
                let v = codec::view_record(&cursor.run.r.path, &value, cutoff_us)?;
                if group.contains(&v.trip_id) {
                    continue;
                }
                let o = if outputs == 1 {
                    0
                } else {
                    route(&cursor.run.r.path, &value)?
                };
                let (b, meta) = outs.get_mut(o).ok_or_else(|| {
                    ColdError::Corrupt(format!("trip {} routed to no output", v.trip_id))
                })?;
                any_ids |= v.ids > 0;
                if outputs > 1 && v.ids > 0 {
                    let h = holders.entry(key).or_default();
                    if !h.contains(&o) {
                        h.push(o);
                    }
                }
                meta.trip(v.last_us);
                meta.ids += v.ids as u64;
                group.push(v.trip_id);
                b.trip(key, v.closed.unwrap_or(value));
            }
        }
        if !any_ids {
            idless.insert(key);
        }
    }
    let mut cursors: Vec<_> = runs
        .iter()
        .map(|r| Cursor::new(r, r.index.id_blocks(), run::block_ids))
        .collect();
    let mut heads = cursors
        .iter_mut()
        .map(Cursor::next)
        .collect::<Result<Vec<_>, _>>()?;
    for (_, meta) in &mut outs {
        meta.ids = 0;
    }
    while let Some(entry) = heads.iter().flatten().copied().min() {
        for (head, cursor) in heads.iter_mut().zip(cursors.iter_mut()) {
            while *head == Some(entry) {
                *head = cursor.next()?;
            }
        }
        if idless.contains(&entry.1) {
            continue;
        }
        let to: &[usize] = if outputs == 1 {
            &[0]
        } else {
            holders.get(&entry.1).map_or(&[], Vec::as_slice)
        };
        for o in to {
            let (b, meta) = &mut outs[*o];
            b.id(entry.0, entry.1);
            meta.ids += 1;
        }
    }
    Ok(outs)
}

#[cfg(test)]
pub(crate) mod tests;
