//! The streaming job: recovery, then the loop `source -> decode -> state -> sink`, with a
//! barrier every `checkpoint.interval` that pre-commits files, completes a checkpoint, and
//! commits to Iceberg when the commit cadence says so.
//!
//! Commit sequence of one barrier (exactly-once mode), with the named crash points:
//! 1. stop taking input (the loop is single-threaded, so the cut is where it stands)
//!    — `mid-batch` fires while processing input;
//! 2. close every open Parquet file -> `DataFile`s — `after-files-written`;
//! 3. write the state (delta or full) and the manifest — `before-checkpoint-complete`;
//! 4. create the log entry (create-if-absent): the checkpoint is now durable —
//!    `after-checkpoint-durable`;
//! 5. per table, one guarded `fast_append` of the files of every checkpoint the table lacks —
//!    `during-commit` fires between the first table and the others;
//! 6. record the commit and prune — `after-commit-before-record`.
//!
//! A crash anywhere resumes from the newest complete checkpoint: files of an incomplete one are
//! orphans (never referenced), and a complete one is committed by whoever runs next, exactly
//! once thanks to the markers.

mod barrier;
mod compaction;
mod completing;
mod error;
mod input;
mod outputs;
pub(crate) mod preflight;
pub(crate) mod publish;
pub(crate) mod recovery;
mod replay;
mod report;
mod stop;

pub use error::JobError;
pub use report::{LoopTimes, RunReport};
pub use stop::{StopClass, log_class, refusal_class, refusals_class};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceberg::Catalog;
use recon_schemas::decode::{self, Limits};
use tokio::sync::watch;

use crate::checkpoint::commit::Committer;
use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::manifest::{Counts, LastRecord, Manifest, PartitionCut};
use crate::checkpoint::store::CheckpointStore;
use crate::config::Config;
use crate::crash::{self, CrashPoint};
use crate::ids::{CheckpointId, Generation, Offset, PartitionId};
use crate::sink::rows::Rejected;
use crate::sink::{Sink, SinkError};
use crate::source::{Decoded, Input, InputGuard, Record, Source};
use crate::state::{Applying, Outcome, State};

/// How a test or the demo injects a crash without killing the process.
#[derive(Clone, Debug, Default)]
pub struct CrashPlan {
    /// Point and 1-based visit at which the job returns [`JobError::SimulatedCrash`].
    pub at: Option<(CrashPoint, u64)>,
    hits: u64,
}

impl CrashPlan {
    /// Crash at the `nth` visit of `point`.
    pub fn at(point: CrashPoint, nth: u64) -> CrashPlan {
        CrashPlan {
            at: Some((point, nth.max(1))),
            hits: 0,
        }
    }

    /// Takes in the visits a copy counted (a publish runs on a copy beside the input; one
    /// point is armed, visited by one side only).
    pub(crate) fn take_visits(&mut self, copy: &CrashPlan) {
        self.hits = self.hits.max(copy.hits);
    }

    pub(crate) fn hit(&mut self, point: CrashPoint) -> Result<(), JobError> {
        crash::maybe_crash(point);
        if let Some((p, nth)) = self.at
            && p == point
        {
            self.hits += 1;
            if self.hits == nth {
                return Err(JobError::SimulatedCrash(point));
            }
        }
        Ok(())
    }
}

/// External parts and knobs of one run.
pub struct JobEnv {
    /// Iceberg catalog.
    pub catalog: Arc<dyn Catalog>,
    /// Checkpoint store.
    pub store: Arc<dyn CheckpointStore>,
    /// Prefix inside the store (the job's log lives under `<prefix>/<job>/`).
    pub store_prefix: String,
    /// Crash injection.
    pub crash: CrashPlan,
    /// Set to `true` to stop gracefully (final checkpoint and commit).
    pub shutdown: watch::Receiver<bool>,
    /// Stop gracefully after this long without input (tests, demo, batch backfills).
    pub idle_exit: Option<Duration>,
    /// Set when this run is one task of a fleet (`[fleet]`): it commits nothing to Iceberg,
    /// its committer does.
    pub fleet: Option<crate::fleet::FleetTask>,
}

/// A running job: everything between recovery and stop.
pub(crate) struct Job {
    cfg: Config,
    log: CheckpointLog,
    committer: Committer,
    generation: Generation,
    sink: Sink,
    state: State,
    limits: Limits,
    crash: CrashPlan,
    /// Last completed checkpoint.
    last: CheckpointId,
    /// Manifests of completed checkpoints not yet known committed everywhere.
    uncommitted: BTreeMap<CheckpointId, Manifest>,
    /// The warehouse, asked whether pending files exist before they are committed.
    files: Arc<dyn crate::checkpoint::presence::FileSizes>,
    /// State files the next checkpoint extends.
    state_chain: Vec<String>,
    /// SHA-256 of each file of `state_chain` (into every manifest, checked on restore).
    state_sha256: BTreeMap<String, String>,
    /// Current cut: per partition, offsets since the last checkpoint.
    cuts: BTreeMap<PartitionId, PartitionCut>,
    /// Counts since the last checkpoint.
    counts: Counts,
    /// After a rewind: offsets below which records are replayed into state only.
    replay_until: BTreeMap<PartitionId, Offset>,
    /// The replayed records the tables hold as `event_id_reused` (skipped by the replay).
    replay_skips: replay::ReplaySkips,
    /// Trips that left memory (`None`: eviction off and nothing cold).
    cold: Option<crate::cold::runs::ColdTier>,
    /// When trips leave memory.
    evict: crate::state::evict::EvictPolicy,
    /// Topic resets accepted so far (written into every manifest).
    input_epoch: u32,
    report: RunReport,
    /// The optional exactly-once outputs (alerts topic, current balances).
    outputs: outputs::Outputs,
    /// One task of a fleet: publishing follows the committer instead of committing.
    fleet: Option<crate::fleet::FleetTask>,
    /// The background fold of the state chain.
    compaction: crate::checkpoint::fold::ChainFold,
    /// The state files each kept checkpoint's chain reads (for pruning).
    chains: BTreeMap<CheckpointId, Vec<String>>,
    /// State files left in pruned checkpoints' directories because a kept chain read them;
    /// deleted once none does (after a restart, the start's sweep does).
    lingering: std::collections::BTreeSet<String>,
    since_commit: u32,
    oldest_uncommitted: Option<Instant>,
    started: Instant,
    /// When the newest checkpoint completed (an idle fleet task skips barriers until long).
    checkpointed_at: Instant,
    /// The publish running beside the input (exactly-once, one process).
    publishing: Option<publish::Publishing>,
    /// The checkpoint completing beside the input (its cut is taken).
    completing: Option<completing::Completing>,
}

/// Runs the job until shutdown, idle exit, or an error.
pub async fn run(cfg: &Config, mut env: JobEnv) -> Result<RunReport, JobError> {
    let started = Instant::now();
    // Kafka first: an unreachable broker or a missing topic must not cost a generation.
    let partitions = recovery::owned_partitions(cfg)?;
    // The topic id before the record check: a topic recreated after this answer is caught by
    // the record check or, while running, by the monitor and the barrier.
    let mut source = Source::open(&cfg.source, &partitions)?;
    // Then the topic's identity, before claiming: a recreated topic must not cost a generation
    // either, and nothing may be consumed from it.
    let verified = recovery::verify_head_input(cfg, &env, &partitions).await?;
    // The records named each partition's difference; the recorded topic id also covers what
    // they cannot verify (records removed by retention, checkpoints of older builds).
    input::check_recorded_topic_id(cfg, &env, &source).await?;
    // Then the tables against the log, read-only: a table ahead of the log, rolled back behind
    // its marker, or owned by another job stops here, before the claim writes anything.
    crate::lakehouse::ensure_tables(env.catalog.as_ref(), &cfg.catalog.namespace).await?;
    let log = CheckpointLog::new(env.store.clone(), &env.store_prefix, cfg.job_id.clone());
    if let Some(task) = &env.fleet {
        // A task commits nothing: its log must not be behind what the committer recorded.
        crate::fleet::worker::before_claim(task, &log).await?;
    } else {
        // A job created as a fleet is not one process's to take over.
        crate::fleet::layout::refuse_if_fleet(&log)
            .await
            .map_err(crate::fleet::FleetError::from)?;
        preflight::before_claim(cfg, env.catalog.as_ref(), &log).await?;
        // And the pending files, before claiming: a missing one must not cost a generation
        // either.
        recovery::verify_pending_files(cfg, &env).await?;
    }
    let (mut job, cleanup) = recovery::recover(cfg, &env, &partitions).await?;
    // A fleet task cleans up beside its run: with many tasks recovering at once, listing the
    // warehouse per task held every task's first checkpoint back (64 tasks on 2 cores: 19 s).
    let mut cleanup = if env.fleet.is_some() {
        Some(Box::pin(cleanup.run()))
    } else {
        cleanup.run().await;
        None
    };
    if recovery::positions(&job.cuts) != verified {
        // Another instance completed a checkpoint between the check and the claim.
        recovery::verify_input(cfg, job.last, &job.cuts, &partitions).await?;
    }
    job.report.recovery = started.elapsed();
    job.report.trips_restored = job.state.trips();
    job.started = started;
    crate::telemetry::recovered(job.generation.0, job.state.trips(), job.report.recovery);
    tracing::info!(
        generation = %job.generation,
        resumed_at = %job.last,
        trips = job.state.trips(),
        recovery_ms = job.report.recovery.as_millis() as u64,
        "recovered"
    );
    let saved: BTreeMap<PartitionId, Offset> = job.cuts.iter().map(|(p, c)| (*p, c.end)).collect();
    let group = format!("recon-{}", cfg.job_id);
    source.start(&group, &saved, &job.limits)?;
    let result = match cleanup.as_mut() {
        None => job.main_loop(&mut source, &mut env).await,
        Some(c) => {
            let main = job.main_loop(&mut source, &mut env);
            tokio::pin!(main);
            let mut cleaning = true;
            loop {
                tokio::select! {
                    r = &mut main => break r,
                    _ = c.as_mut(), if cleaning => cleaning = false,
                }
            }
        }
    };
    job.report.loop_times.source_blocked = source.blocked();
    job.report.loop_times.source_busy = source.busy();
    let stopping = Instant::now();
    source.stop();
    result?;
    job.report.stop += stopping.elapsed();
    job.report.trips = job.state.trips();
    job.report.last_checkpoint = job.last;
    Ok(job.report)
}

impl Job {
    async fn main_loop(&mut self, source: &mut Source, env: &mut JobEnv) -> Result<(), JobError> {
        let interval = self.cfg.checkpoint_interval;
        let mut next_barrier = tokio::time::Instant::now() + interval;
        let mut last_input = Instant::now();
        // When the newest batch arrived: the barrier confirms the topic's identity after it.
        let mut received: Option<Instant> = None;
        let guard = source.guard();
        let idle_tick = Duration::from_millis(50);
        loop {
            tokio::select! {
                biased;
                _ = env.shutdown.changed() => {
                    tracing::info!("shutdown requested: final checkpoint and commit");
                    return self.finish(&guard, received).await;
                }
                _ = tokio::time::sleep_until(next_barrier) => {
                    let t = Instant::now();
                    self.barrier(&guard, received).await?;
                    self.report.loop_times.barrier += t.elapsed();
                    next_barrier = tokio::time::Instant::now() + interval;
                }
                // The checkpoint completing beside the input is durable (or failed: the job
                // stops).
                done = completing::running(&mut self.completing) => {
                    let t = Instant::now();
                    self.land_checkpoint(done).await?;
                    self.report.loop_times.landing += t.elapsed();
                }
                // The publish beside the input landed (or failed: the job stops).
                ended = publish::running(&mut self.publishing) => {
                    let t = Instant::now();
                    self.land(ended).await?;
                    self.report.loop_times.landing += t.elapsed();
                }
                batch = source.next() => {
                    match batch {
                        Some(Ok(records)) => {
                            last_input = Instant::now();
                            received = Some(last_input);
                            self.report.last_input = Some(self.started.elapsed());
                            self.report.first_input = self.report.first_input.or(self.report.last_input);
                            self.report.loop_times.batches += 1;
                            let waited = self.report.loop_times.sink_wait;
                            self.process(records).await?;
                            let waited = self.report.loop_times.sink_wait - waited;
                            self.report.loop_times.process += last_input.elapsed().saturating_sub(waited);
                        }
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(JobError::ConsumerStopped),
                    }
                }
                _ = tokio::time::sleep(idle_tick), if env.idle_exit.is_some() => {
                    // Idle only when every owned partition is at its end and nothing waits in
                    // the queue: a slow consumer is not an idle one (issue 13, finding 8).
                    if let Some(idle) = env.idle_exit
                        && last_input.elapsed() >= idle
                        && source.drained()
                    {
                        tracing::info!(idle_ms = idle.as_millis() as u64, "no input and every partition at its end: final checkpoint and commit");
                        return self.finish(&guard, received).await;
                    }
                }
            }
        }
    }

    async fn finish(
        &mut self,
        guard: &InputGuard,
        received: Option<Instant>,
    ) -> Result<(), JobError> {
        let stopping = Instant::now();
        self.barrier(guard, received).await?;
        self.settle().await?;
        self.publish().await?;
        self.flush_outputs().await?;
        self.report.stop = stopping.elapsed();
        Ok(())
    }

    /// Decodes and applies a batch of records; routes each to a table or the dead-letter table.
    async fn process(&mut self, records: Vec<Input>) -> Result<(), JobError> {
        let next_id = self.filling();
        let half = records.len() / 2;
        // The horizon's high-water mark is clamped to the wall clock, read once per batch.
        self.state.set_clock(chrono::Utc::now().timestamp_micros());
        let before = self.counts;
        // The identity of the last record per partition, recorded in the checkpoint so that a
        // restart can tell the topic still holds it (one fingerprint per partition per batch).
        let mut lasts: BTreeMap<PartitionId, LastRecord> = BTreeMap::new();
        for Input { record: r, .. } in records.iter().rev() {
            lasts
                .entry(PartitionId(r.partition))
                .or_insert_with(|| r.identity());
        }
        let mut by_type = [0u64; 6];
        for (i, Input { record: r, decoded }) in records.into_iter().enumerate() {
            if i == half {
                self.crash.hit(CrashPoint::MidBatch)?;
            }
            let pid = PartitionId(r.partition);
            let cut = self.cuts.entry(pid).or_insert(PartitionCut {
                start: Offset(r.offset),
                end: Offset(r.offset),
                records: 0,
                last: None,
            });
            if r.offset < cut.end.0 {
                return Err(JobError::OffsetsBackwards {
                    partition: pid,
                    offset: r.offset,
                    expected: cut.end,
                });
            }
            cut.end = Offset(r.offset + 1);
            cut.records += 1;
            self.counts.records += 1;
            let payload = r.payload.as_deref().unwrap_or(&[]);
            if self.replay_until.get(&pid).is_some_and(|u| r.offset < u.0) {
                // Already in the tables (a rewind): rebuild state, write nothing.
                // Each record gets the decision its checkpoint committed (`replay`).
                if let Ok(d) = &decoded
                    && !self
                        .replay_skips
                        .take(r.partition, r.offset, &d.event.event_id)
                {
                    self.bring_back(&d.event).await?;
                    self.state.apply_known(
                        &d.event,
                        d.fingerprint,
                        r.partition,
                        Applying::Replayed,
                    )?;
                }
                self.report.replayed += 1;
                continue;
            }
            if let Ok(d) = &decoded {
                self.bring_back(&d.event).await?;
            }
            match decoded {
                Ok(Decoded {
                    event: ev,
                    fingerprint,
                }) => match self.apply_tracked(&ev, fingerprint, &r, next_id)? {
                    Outcome::Accepted => {
                        self.counts.events += 1;
                        by_type[event_type_index(ev.event_type)] += 1;
                        self.sink
                            .ledger
                            .push(ev, r.partition, r.offset)
                            .map_err(SinkError::from)?;
                    }
                    Outcome::ExactDuplicate => self.counts.duplicates += 1,
                    Outcome::ConflictingDuplicate => {
                        let why = format!(
                            "event_id {} was seen before with different content; the first version stands and trip {} is flagged",
                            ev.event_id, ev.trip_id
                        );
                        self.reject_event(&r, &ev, decode::CONFLICTING_DUPLICATE, why);
                    }
                    Outcome::BalanceOverflow => {
                        let why = format!(
                            "{} {} {} would take a sum or balance of trip {} beyond decimal({},{}); not summed, the trip's balance is unchanged",
                            ev.event_type.as_str(),
                            ev.amount,
                            ev.currency.code(),
                            ev.trip_id,
                            recon_schemas::money::PRECISION,
                            recon_schemas::money::SCALE
                        );
                        self.reject_event(&r, &ev, decode::BALANCE_OVERFLOW, why);
                    }
                    Outcome::BeyondHorizon { trip_closed } => {
                        let cutoff = self
                            .state
                            .horizon_cutoff_us()
                            .and_then(chrono::DateTime::from_timestamp_micros)
                            .map_or_else(|| "-".to_string(), |t| t.to_rfc3339());
                        let why = if trip_closed {
                            format!(
                                "trip {} is closed: it had no event for longer than the late horizon (state.late_horizon_ms = {}), so this {} is not applied (the trip's balance is unchanged)",
                                ev.trip_id,
                                self.cfg.state.late_horizon_ms,
                                ev.event_type.as_str()
                            )
                        } else {
                            format!(
                                "occurred_at {} is before the late horizon {cutoff} (state.late_horizon_ms = {} behind the newest event accepted); not applied to trip {}",
                                ev.occurred_at.to_rfc3339(),
                                self.cfg.state.late_horizon_ms,
                                ev.trip_id
                            )
                        };
                        self.reject_event(&r, &ev, decode::BEYOND_HORIZON, why);
                    }
                    Outcome::EventIdReused { holder } => {
                        let first_trip = self.state.trip(holder).trip_id().to_string();
                        let why = format!(
                            "event_id {} was already accepted on trip {first_trip}; an event id is one event across the job, so this copy on trip {} is not applied (neither trip changes)",
                            ev.event_id, ev.trip_id
                        );
                        self.reject_event(&r, &ev, decode::EVENT_ID_REUSED, why);
                    }
                },
                Err(e) => {
                    self.counts.rejected += 1;
                    crate::telemetry::rejected(e.reason().as_str());
                    let (event_id, trip_id) = decode::salvage_ids(payload, &self.limits);
                    self.sink.rejected.push(Rejected {
                        partition: r.partition,
                        offset: r.offset,
                        key: r.key.clone(),
                        payload: payload.to_vec(),
                        reason: e.reason().as_str(),
                        error: e.to_string(),
                        event_id,
                        trip_id,
                    });
                }
            }
        }
        for (p, last) in lasts {
            if let Some(cut) = self.cuts.get_mut(&p) {
                cut.last = Some(last);
            }
        }
        crate::telemetry::records(
            self.counts.events - before.events,
            self.counts.duplicates - before.duplicates,
            self.counts.rejected - before.rejected,
        );
        for (t, n) in recon_schemas::event::EventType::ALL.iter().zip(by_type) {
            if n > 0 {
                metrics::counter!("recon_events_total", "type" => t.as_str()).increment(n);
            }
        }
        let t = Instant::now();
        self.sink.flush_full(next_id).await?;
        self.report.loop_times.sink_wait += t.elapsed();
        Ok(())
    }
}

impl Job {
    /// Dead-letters a decoded record whose event state refused (`reason`: one of
    /// `recon_schemas::decode::EVENT_REASONS`), counted like every rejected record.
    fn reject_event(
        &mut self,
        r: &Record,
        ev: &recon_schemas::event::Event,
        reason: &'static str,
        error: String,
    ) {
        self.counts.rejected += 1;
        crate::telemetry::rejected(reason);
        self.sink.rejected.push(Rejected {
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            payload: r.payload.clone().unwrap_or_default(),
            reason,
            error,
            event_id: Some(ev.event_id.hyphenated().to_string()),
            trip_id: Some(ev.trip_id.clone()),
        });
    }

    /// Brings back from the cold tier the event's trip and its id's holder, if they left memory.
    async fn bring_back(&mut self, ev: &recon_schemas::event::Event) -> Result<(), JobError> {
        let Some(cold) = self.cold.as_mut().filter(|c| !c.is_empty()) else {
            return Ok(());
        };
        let b = crate::cold::bring_back(&mut self.state, cold, ev).await?;
        self.report.brought_back += u64::from(b.trip) + u64::from(b.holder);
        Ok(())
    }

    /// Applies a decoded event to state; with alerts on, records the alert its status
    /// transition raises (exact duplicates change nothing).
    fn apply_tracked(
        &mut self,
        ev: &recon_schemas::event::Event,
        fingerprint: u64,
        r: &Record,
        checkpoint: crate::ids::CheckpointId,
    ) -> Result<Outcome, JobError> {
        let tracking = self.outputs.tracking();
        let before = if tracking {
            self.state.get(&ev.trip_id).map(|t| t.balance().status())
        } else {
            None
        };
        let outcome = self
            .state
            .apply_known(ev, fingerprint, r.partition, Applying::New)?;
        // An exact duplicate or an id held by another trip changes no trip (the second may not
        // even have one).
        let changed = !matches!(
            outcome,
            Outcome::ExactDuplicate | Outcome::EventIdReused { .. } | Outcome::BeyondHorizon { .. }
        );
        if tracking && changed {
            let after = self
                .state
                .get(&ev.trip_id)
                .expect("an applied event's trip is in state")
                .balance();
            self.outputs.observe(
                (r.partition, r.offset, checkpoint.0, self.input_epoch),
                ev,
                before,
                &after,
            );
        }
        Ok(outcome)
    }
}

fn event_type_index(t: recon_schemas::event::EventType) -> usize {
    recon_schemas::event::EventType::ALL
        .iter()
        .position(|x| *x == t)
        .expect("every event type is in ALL")
}
