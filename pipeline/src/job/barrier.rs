//! The barrier: turn what the job has consumed since the last cut into a complete checkpoint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::checkpoint::manifest::{Counts, FORMAT_VERSION, Manifest};
use crate::config::DeliveryMode;
use crate::crash::CrashPoint;
use crate::source::InputGuard;
use crate::state::{TripState, codec};

use super::{Job, JobError, completing};

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
            && self.report.checkpoints + u64::from(self.completing.is_some()) > 0
            && self.counts.records == 0
            && self.checkpointed_at.elapsed() < IDLE_TASK_CHECKPOINT_EVERY
        {
            return Ok(());
        }
        // One checkpoint completes at a time.
        self.settle().await?;
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
        let mut phases = Phases::new(started);
        // The trips changed since the last cut, copied: their balance rows and state delta
        // are built off the job's thread while the next interval is read. A full file (the
        // job's first checkpoint) is built from the copies too when every trip changed (a new
        // job); after a restore it reads every trip, so it is encoded here.
        let all_changed = full && self.state.all_changed();
        let changed = self.state.take_changed();
        let trips: Vec<TripState> = changed
            .iter()
            .map(|c| self.state.trip(*c).clone())
            .collect();
        phases.mark("copy");
        let file = match (full, all_changed) {
            (false, _) => completing::StateFile::Delta,
            (true, true) => completing::StateFile::FullOfCopies,
            (true, false) => completing::StateFile::Encoded(codec::encode_full(&self.state)),
        };
        self.counts.balance_rows = changed.len() as u64;
        phases.mark("full");
        // The writers get the interval's last batches and close their files on tasks of their
        // own; the balances writer gets its batch from the completion.
        let closing = self.sink.close_later(id)?;
        phases.mark("close");
        let rows = completing::Rows {
            trips,
            evicted: evicted.iter().map(|e| e.trip_id.to_string()).collect(),
            file,
            current_balances: self.outputs.current_balances_on(),
            schema: self.sink.balances_schema(),
            at: chrono::Utc::now(),
        };

        // The cold tier changes here, in the cut (trips brought back while the next interval
        // is read must find what this checkpoint evicted): only when trips left memory.
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
        phases.mark("cold");
        let chain = if full {
            Vec::new()
        } else {
            self.state_chain.clone()
        };
        // A file of an older manifest without checksums stays unchecked (None): never invented.
        let sums: BTreeMap<String, String> = chain
            .iter()
            .filter_map(|p| Some((p.clone(), self.state_sha256.get(p)?.clone())))
            .collect();
        let alerts = self.take_alerts(id);
        let manifest = Manifest {
            format: FORMAT_VERSION,
            job_id: self.cfg.job_id.clone(),
            checkpoint_id: id,
            generation: self.generation,
            partitions: self.cuts.clone(),
            pending: BTreeMap::new(),
            state_chain: Vec::new(),
            state_sha256: BTreeMap::new(),
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
            alerts: None,
            input_epoch: self.input_epoch,
            topic_id: input.topic_id(),
            fleet_tasks: BTreeMap::new(),
        };
        let mut cut = completing::Cut {
            id,
            started,
            paused: Duration::ZERO,
            full,
            changed_trips: changed.len(),
            counts: self.counts,
            offsets: self.cuts.iter().map(|(p, c)| (*p, c.end)).collect(),
        };
        // The next interval starts here.
        // A partition whose replay is over carries no replay bound into the next checkpoint.
        let cuts = &self.cuts;
        self.replay_until
            .retain(|p, u| cuts.get(p).is_none_or(|c| c.end < *u));
        self.counts = Counts::default();
        for c in self.cuts.values_mut() {
            *c = c.continued();
        }
        let work = completing::Work {
            closing,
            rows,
            chain,
            sums,
            log: self.log.clone(),
            generation: self.generation,
            input: input.clone(),
            received,
            manifest,
            alerts,
            delivery: self.cfg.delivery,
            crash: self.crash.clone(),
        };
        cut.paused = started.elapsed();
        phases.mark("rest");
        tracing::debug!(checkpoint = %id, phases = %phases, "checkpoint cut");
        self.completing = Some(completing::Completing::start(cut, work));
        if self.cfg.delivery != DeliveryMode::ExactlyOnce {
            // Other modes append or record their offsets around the entry: in the cut.
            self.settle().await?;
        }
        Ok(())
    }

    /// A completion ended: the checkpoint counts from here on (other modes write its entry
    /// here), its outputs are emitted and a publish starts when due; its error stops the job.
    pub(super) async fn land_checkpoint(
        &mut self,
        (cut, ended): (completing::Cut, Result<completing::Completed, JobError>),
    ) -> Result<(), JobError> {
        let done = ended?;
        self.crash.take_visits(&done.crash);
        let (id, manifest, files) = (cut.id, done.manifest, done.files);
        if self.cfg.delivery == DeliveryMode::AtLeastOnce {
            // Files first, offsets after: a crash in between replays the interval (duplicates).
            self.publish_plain(id, files.clone()).await?;
        }
        if self.cfg.delivery != DeliveryMode::ExactlyOnce {
            completing::write_entry(&self.log, &manifest, &mut self.crash).await?;
        }
        let took = cut.started.elapsed();
        // Other modes complete inside the barrier: the input stood still throughout.
        let paused = match self.cfg.delivery {
            DeliveryMode::ExactlyOnce => cut.paused,
            _ => took,
        };
        self.report.checkpoint_durations.push(took);
        self.report.checkpoint_pauses.push(paused);
        crate::telemetry::checkpoint_pause(paused);
        crate::telemetry::checkpoint(
            id.0,
            took,
            done.state_bytes,
            self.uncommitted
                .values()
                .chain(std::iter::once(&manifest))
                .map(|m| m.pending.values().map(|p| p.files.len()).sum::<usize>())
                .sum::<usize>(),
            done.pending_bytes,
            self.state.trips(),
        );
        self.last = id;
        self.checkpointed_at = Instant::now();
        self.state_chain = manifest.state_chain.clone();
        self.state_sha256 = manifest.state_sha256.clone();
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
        add_counts(&mut self.report.counts, &cut.counts);
        tracing::info!(
            checkpoint = %id,
            generation = %self.generation,
            records = cut.counts.records,
            events = cut.counts.events,
            rejected = cut.counts.rejected,
            duplicates = cut.counts.duplicates,
            changed_trips = cut.changed_trips,
            state_bytes = done.state_bytes,
            full_state = cut.full,
            pending_bytes = done.pending_bytes,
            input_confirm_us = done.input_confirm_us,
            pause_ms = paused.as_millis() as u64,
            duration_ms = took.as_millis() as u64,
            "checkpoint complete"
        );
        match self.cfg.delivery {
            // Offsets first, files after: a crash in between loses the interval.
            DeliveryMode::AtMostOnce => self.publish_plain(id, files).await,
            DeliveryMode::AtLeastOnce => Ok(()),
            DeliveryMode::ExactlyOnce => {
                self.emit_outputs(&manifest, done.alerts, done.balance_rows, cut.offsets)
                    .await?;
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
                Ok(())
            }
        }
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

/// Where a cut's time went, for the debug log.
struct Phases {
    at: Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new(at: Instant) -> Phases {
        Phases {
            at,
            took: Vec::new(),
        }
    }

    /// Ends phase `name` now.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.took.push((name, now - self.at));
        self.at = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, d)) in self.took.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={:.1}ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

fn add_counts(total: &mut Counts, c: &Counts) {
    total.records += c.records;
    total.events += c.events;
    total.duplicates += c.duplicates;
    total.rejected += c.rejected;
    total.balance_rows += c.balance_rows;
}
