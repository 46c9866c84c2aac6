//! The barrier: turn what the job has consumed since the last cut into a complete checkpoint.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::checkpoint::manifest::{Counts, EntryKind, FORMAT_VERSION, Manifest};
use crate::config::DeliveryMode;
use crate::crash::CrashPoint;
use crate::outputs::balances_pg::BalanceRow;
use crate::source::InputGuard;
use crate::state::codec;

use super::{Job, JobError};

/// An idle fleet task checkpoints at least this often (the checkpoint-age alert waits 120 s).
const IDLE_TASK_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Job {
    /// Completes checkpoint `last + 1`, then publishes if the commit cadence says so.
    ///
    /// `input` confirms, before anything of this checkpoint is published or its log entry
    /// written, that every record received up to `received` came from the topic the job
    /// started on: a topic deleted or recreated while the job ran stops it here, with nothing
    /// of the new topic durable (issue 13, finding 2).
    pub(super) async fn barrier(
        &mut self,
        input: &InputGuard,
        received: Option<Instant>,
    ) -> Result<(), JobError> {
        let started = Instant::now();
        // A fleet task with nothing new since its last checkpoint skips the barrier (K idle
        // tasks would each write a checkpoint per interval for the committer to read), except
        // its first one on this worker and one per [`IDLE_TASK_CHECKPOINT_EVERY`] (liveness).
        if self.fleet.is_some()
            && self.report.checkpoints > 0
            && self.counts.records == 0
            && self.checkpointed_at.elapsed() < IDLE_TASK_CHECKPOINT_EVERY
        {
            return Ok(());
        }
        let id = self.last.next();
        // A fold of the chain finished in the background: its full file starts the chain.
        self.take_compaction().await;
        // State: the changed trips only (a delta); a full file only for a job's first
        // checkpoint. The chain is folded off the barrier (`compaction`).
        let full = self.state_chain.is_empty();
        // Trips settled or idle leave memory first (a trip changed since the last cut stays:
        // its row and delta record come below).
        let evicted = match self.cold {
            Some(_) if self.evict.enabled() => {
                let now_us = chrono::Utc::now().timestamp_micros();
                let watermark = self.state.high_water_us().unwrap_or(0).min(now_us);
                self.state.evict(watermark, &self.evict)
            }
            _ => Vec::new(),
        };
        // Balance changelog rows for every trip changed since the last cut.
        let changed = self.state.take_changed();
        for t in changed.iter().map(|c| self.state.trip(*c)) {
            self.sink
                .balances
                .push(t.trip_id().to_string(), t.balance(), t.partition);
            self.outputs.push_row(|| BalanceRow {
                trip_id: t.trip_id().to_string(),
                balance: t.balance(),
                partition: t.partition,
            });
        }
        // The writers encode the last batches on their tasks while the delta is encoded here.
        self.sink.flush_all(id).await?;
        let (bytes, changed_trips) = {
            let bytes = if full {
                codec::encode_full(&self.state)
            } else {
                codec::encode_delta(
                    changed.iter().map(|c| self.state.trip(*c)),
                    evicted.iter().map(|e| e.trip_id.as_str()),
                )
            };
            (bytes, changed.len())
        };
        self.counts.balance_rows = changed_trips as u64;
        let closed = self.sink.close(id).await?;
        self.crash.hit(CrashPoint::AfterFilesWritten)?;

        if let Some(cold) = self.cold.as_mut() {
            if !evicted.is_empty() {
                cold.add(&self.log, id, self.generation, &evicted).await?;
                self.report.evicted += evicted.len() as u64;
                self.crash.hit(CrashPoint::AfterColdRunWritten)?;
            }
            // A merge finished in the background is taken in; the next one starts.
            cold.maintain(
                &self.log,
                (id, self.generation),
                self.state.horizon_cutoff_us(),
            )
            .await?;
        }
        let state_bytes = bytes.len();
        let checksum = crate::checkpoint::manifest::state_checksum(&bytes);
        let path = self.log.write_state(id, self.generation, bytes).await?;
        let chain = if full {
            vec![path.clone()]
        } else {
            let mut c = self.state_chain.clone();
            c.push(path.clone());
            c
        };
        // A file of an older manifest without checksums stays unchecked (None): never invented.
        let mut sums: BTreeMap<String, String> = chain
            .iter()
            .filter_map(|p| Some((p.clone(), self.state_sha256.get(p)?.clone())))
            .collect();
        sums.insert(path, checksum);

        let mut pending = BTreeMap::new();
        let mut files = BTreeMap::new();
        let mut pending_bytes = 0;
        for (table, (p, data_files)) in closed {
            pending_bytes += p.bytes;
            pending.insert(table.clone(), p);
            files.insert(table, data_files);
        }
        let confirming = Instant::now();
        input.confirm(received).await?;
        let input_confirm_us = confirming.elapsed().as_micros() as u64;
        let alerts = self.stage_alerts(id).await?;
        let exactly_once = self.cfg.delivery == DeliveryMode::ExactlyOnce;
        if self.cfg.delivery == DeliveryMode::AtLeastOnce {
            // Files first, offsets after: a crash in between replays the interval (duplicates).
            self.publish_plain(id, files.clone()).await?;
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            job_id: self.cfg.job_id.clone(),
            checkpoint_id: id,
            generation: self.generation,
            partitions: self.cuts.clone(),
            // Only exactly-once keeps files pending for the marker-guarded commit.
            pending: if exactly_once {
                pending
            } else {
                BTreeMap::new()
            },
            state_chain: chain.clone(),
            state_sha256: sums.clone(),
            cold_runs: self.cold.as_ref().map(|c| c.refs()).unwrap_or_default(),
            cold_retired: self
                .cold
                .as_ref()
                .map(|c| c.retired().to_vec())
                .unwrap_or_default(),
            high_water_us: self.state.high_water_us(),
            partition_event_time_us: self.state.partition_high(),
            watermark_us: self.state.watermark_us(),
            counts: self.counts,
            replay_until: self.replay_until.clone(),
            alerts,
            input_epoch: self.input_epoch,
            topic_id: input.topic_id(),
            fleet_tasks: BTreeMap::new(),
        };
        let entry = self
            .log
            .write_manifest(&manifest, EntryKind::Checkpoint)
            .await?;
        // A partition whose replay is over carries no replay bound into the next checkpoint.
        let cuts = &self.cuts;
        self.replay_until
            .retain(|p, u| cuts.get(p).is_none_or(|c| c.end < *u));
        self.crash.hit(CrashPoint::BeforeCheckpointComplete)?;
        self.log.complete(&entry).await?;
        self.crash.hit(CrashPoint::AfterCheckpointDurable)?;

        self.report.checkpoint_durations.push(started.elapsed());
        crate::telemetry::checkpoint(
            id.0,
            started.elapsed(),
            state_bytes,
            self.uncommitted
                .values()
                .map(|m| m.pending.values().map(|p| p.files.len()).sum::<usize>())
                .sum::<usize>()
                + manifest
                    .pending
                    .values()
                    .map(|p| p.files.len())
                    .sum::<usize>(),
            pending_bytes,
            self.state.trips(),
        );
        // The checkpoint counts from here on.
        self.last = id;
        self.checkpointed_at = Instant::now();
        self.state_chain = chain;
        self.state_sha256 = sums;
        self.start_compaction();
        self.report.checkpoints += 1;
        if self.report.checkpoints == 1
            && let Some(task) = &self.fleet
        {
            let took = task.assigned_at.elapsed();
            crate::telemetry::task_handover(took);
            tracing::info!(
                task = task.task,
                handover_ms = took.as_millis() as u64,
                "task's first checkpoint on this worker"
            );
        }
        add_counts(&mut self.report.counts, &self.counts);
        tracing::info!(
            checkpoint = %id,
            generation = %self.generation,
            records = self.counts.records,
            events = self.counts.events,
            rejected = self.counts.rejected,
            duplicates = self.counts.duplicates,
            changed_trips,
            state_bytes,
            full_state = full,
            pending_bytes,
            input_confirm_us,
            duration_ms = started.elapsed().as_millis() as u64,
            "checkpoint complete"
        );
        self.counts = Counts::default();
        for cut in self.cuts.values_mut() {
            *cut = cut.continued();
        }
        if self.cfg.delivery == DeliveryMode::AtMostOnce {
            // Offsets first, files after: a crash in between loses the interval.
            return self.publish_plain(id, files).await;
        }
        if exactly_once {
            self.emit_outputs(&manifest).await?;
            self.uncommitted.insert(id, manifest);
            self.since_commit += 1;
            self.oldest_uncommitted.get_or_insert_with(Instant::now);
            if self.commit_due() {
                if self.fleet.is_some() {
                    self.publish().await?;
                } else {
                    // Beside the input: the next interval reads while the tables commit.
                    self.start_publish();
                }
            }
        }
        Ok(())
    }

    pub(super) fn commit_due(&self) -> bool {
        let c = &self.cfg.commit;
        let bytes: u64 = self
            .uncommitted
            .values()
            .flat_map(|m| m.pending.values())
            .map(|p| p.bytes)
            .sum();
        let records: u64 = self.uncommitted.values().map(|m| m.counts.records).sum();
        let aged = self
            .oldest_uncommitted
            .is_some_and(|t| t.elapsed().as_millis() as u64 >= c.interval_ms_max);
        if bytes == 0 && records == 0 {
            // Nothing new: stamp the tables only now and then, so an idle job keeps its
            // markers fresh without a snapshot per checkpoint.
            return aged;
        }
        self.since_commit >= c.every_checkpoints || bytes >= c.pending_bytes_max || aged
    }
}

fn add_counts(total: &mut Counts, c: &Counts) {
    total.records += c.records;
    total.events += c.events;
    total.duplicates += c.duplicates;
    total.rejected += c.rejected;
    total.balance_rows += c.balance_rows;
}
