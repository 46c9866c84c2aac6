//! The asynchronous half of a barrier: what completes a checkpoint after its cut, while the
//! job reads the next interval (Flink's asynchronous snapshot).
//!
//! The cut (`barrier.rs`) is synchronous and short: the changed trips' rows and state delta,
//! the offsets and counts, and a close request to every table's writer. Closing the Parquet
//! files, writing the state file, confirming the topic and writing the manifest and the log
//! entry run here, beside the input. One checkpoint completes at a time: the next cut waits for
//! this one to land, and nothing of the next interval reaches the log before it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use iceberg::spec::DataFile;

use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::manifest::{AlertsFile, Counts, EntryKind, Manifest};
use crate::config::DeliveryMode;
use crate::crash::CrashPoint;
use crate::ids::{CheckpointId, Generation, Offset, PartitionId};
use crate::outputs::alerts::{self as alerts_file, Alert};
use crate::outputs::balances_pg::BalanceRow;
use crate::sink::rows::BalanceRows;
use crate::sink::{SinkClosing, SinkError};
use crate::source::InputGuard;
use crate::state::{TripState, codec};
use arrow_array::RecordBatch;

use super::{CrashPlan, Job, JobError};

/// What the cut took from the job, for the completion and for landing it.
pub(super) struct Cut {
    /// The checkpoint being completed.
    pub id: CheckpointId,
    /// When its barrier began.
    pub started: Instant,
    /// How long the input stood still for the cut.
    pub paused: Duration,
    /// A full state file (the job's first checkpoint) rather than a delta.
    pub full: bool,
    /// Trips whose rows and delta records the checkpoint holds.
    pub changed_trips: usize,
    /// Counts of the interval.
    pub counts: Counts,
    /// Each read partition's next offset at the cut (the outputs' progress).
    pub offsets: BTreeMap<PartitionId, Offset>,
}

/// The state file a checkpoint writes.
pub(super) enum StateFile {
    /// The changed trips and the tombstones, built from the copies.
    Delta,
    /// A full file built from the copies: every trip in memory changed (a new job's first
    /// checkpoint), so they are the whole state.
    FullOfCopies,
    /// A full file the cut encoded (a first checkpoint after a restore: most trips did not
    /// change, and the file reads them all).
    Encoded(Vec<u8>),
}

/// What the balance rows and the state file are built from, off the job's thread.
pub(super) struct Rows {
    /// Copies of the trips the interval changed.
    pub trips: Vec<TripState>,
    /// Ids of the trips that left memory at the cut (the delta's tombstones).
    pub evicted: Vec<String>,
    /// Which state file the checkpoint writes.
    pub file: StateFile,
    /// Whether the current-balance output is on (its rows are built from the copies too).
    pub current_balances: bool,
    /// Arrow schema of `trip_balances`.
    pub schema: arrow_schema::SchemaRef,
    /// The rows' `updated_at`.
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Rows {
    /// The `trip_balances` batch of checkpoint `id` (`None`: no trip changed), the state
    /// file (the full one given, else the delta of the changed trips and tombstones) and, with
    /// the output on, the current-balance rows.
    fn build(self, id: CheckpointId) -> Result<Built, JobError> {
        // Each trip's id and balance once, for the table's row and, with the output on, the
        // current-balance row.
        let mut rows = BalanceRows::default();
        let mut current: Vec<BalanceRow> = Vec::new();
        for t in &self.trips {
            let (trip_id, balance) = (t.trip_id().to_string(), t.balance());
            if self.current_balances {
                current.push(BalanceRow {
                    trip_id: trip_id.clone(),
                    balance: balance.clone(),
                    partition: t.partition,
                });
            }
            rows.push(trip_id, balance, t.partition);
        }
        let batch = if rows.is_empty() {
            None
        } else {
            let cid = i64::try_from(id.0).expect("checkpoint id fits i64");
            Some(
                rows.take_batch(&self.schema, cid, self.at)
                    .map_err(SinkError::from)?,
            )
        };
        let bytes = match self.file {
            StateFile::Encoded(b) => b,
            StateFile::FullOfCopies => codec::encode_full_of(&self.trips),
            StateFile::Delta => {
                codec::encode_delta(&self.trips, self.evicted.iter().map(String::as_str))
            }
        };
        Ok((batch, bytes, current))
    }
}

/// What [`Rows::build`] makes: the `trip_balances` batch, the state file, the current-balance
/// rows.
type Built = (Option<RecordBatch>, Vec<u8>, Vec<BalanceRow>);

/// What a completion needs, owned: it runs beside the job.
pub(super) struct Work {
    pub closing: SinkClosing,
    pub rows: Rows,
    /// The chain the new state file extends (empty for a full file).
    pub chain: Vec<String>,
    pub sums: BTreeMap<String, String>,
    pub log: CheckpointLog,
    pub generation: Generation,
    pub input: InputGuard,
    pub received: Option<Instant>,
    /// The manifest as the cut knows it: files, chain and alerts are filled in here.
    pub manifest: Manifest,
    /// The interval's alerts, written beside the manifest.
    pub alerts: Vec<Alert>,
    pub delivery: DeliveryMode,
    pub crash: CrashPlan,
}

/// A checkpoint whose files, state and (exactly-once) log entry are written.
pub(super) struct Completed {
    pub manifest: Manifest,
    /// The closed files per table name.
    pub files: BTreeMap<String, Vec<DataFile>>,
    pub pending_bytes: u64,
    pub state_bytes: usize,
    pub input_confirm_us: u64,
    /// The interval's alerts, written beside the manifest (emitted once it is durable).
    pub alerts: Vec<Alert>,
    /// The changed trips' current-balance rows (emitted once it is durable; empty with the
    /// output off).
    pub balance_rows: Vec<BalanceRow>,
    /// The completion's copy of the crash plan (the visits it counted).
    pub crash: CrashPlan,
}

/// A completion running beside the input (polled by the main loop, like a publish).
pub(super) struct Completing {
    pub cut: Cut,
    run: Pin<Box<dyn Future<Output = Result<Completed, JobError>>>>,
}

impl Completing {
    /// Starts completing `cut` with `work`.
    pub(super) fn start(cut: Cut, work: Work) -> Completing {
        let id = cut.id;
        Completing {
            cut,
            run: Box::pin(complete(id, work)),
        }
    }
}

/// Waits for the completion in `slot` (never, when none runs: a branch of the main loop).
/// Cancel-safe: dropped before it ends, the completion stays in `slot`.
pub(super) async fn running(slot: &mut Option<Completing>) -> (Cut, Result<Completed, JobError>) {
    let Some(c) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let ended = (&mut c.run).await;
    let c = slot.take().expect("a completion was running");
    (c.cut, ended)
}

/// Closes the files, writes the state file, confirms the topic, writes the alerts file and,
/// exactly-once, the manifest and the log entry (the checkpoint is then durable). Other modes
/// write the entry when landing: at-least-once appends the files before it.
async fn complete(id: CheckpointId, w: Work) -> Result<Completed, JobError> {
    let Work {
        closing,
        rows,
        mut chain,
        mut sums,
        log,
        generation,
        input,
        received,
        mut manifest,
        alerts,
        delivery,
        mut crash,
    } = w;
    let (batch, state, balance_rows) = tokio::task::spawn_blocking(move || rows.build(id))
        .await
        .map_err(|e| JobError::Panicked {
        what: "building a checkpoint's balance rows and state file".into(),
        message: e.to_string(),
    })??;
    let closed = closing.finish(batch).await?;
    crash.hit(CrashPoint::AfterFilesWritten)?;
    let state_bytes = state.len();
    let checksum = crate::checkpoint::manifest::state_checksum(&state);
    let path = log.write_state(id, generation, state).await?;
    chain.push(path.clone());
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
    if !alerts.is_empty() {
        let count = alerts.len() as u64;
        let bytes = alerts_file::encode(&alerts);
        let path = log
            .write_file(id, generation, "alerts.jsonl", bytes)
            .await?;
        manifest.alerts = Some(AlertsFile { path, count });
    }
    let exactly_once = delivery == DeliveryMode::ExactlyOnce;
    // Only exactly-once keeps files pending for the marker-guarded commit.
    if exactly_once {
        manifest.pending = pending;
    }
    manifest.state_chain = chain;
    manifest.state_sha256 = sums;
    if exactly_once {
        write_entry(&log, &manifest, &mut crash).await?;
    }
    Ok(Completed {
        manifest,
        files,
        pending_bytes,
        state_bytes,
        input_confirm_us,
        alerts,
        balance_rows,
        crash,
    })
}

/// Writes the manifest and creates its log entry: the checkpoint is durable.
pub(super) async fn write_entry(
    log: &CheckpointLog,
    manifest: &Manifest,
    crash: &mut CrashPlan,
) -> Result<(), JobError> {
    let entry = log.write_manifest(manifest, EntryKind::Checkpoint).await?;
    crash.hit(CrashPoint::BeforeCheckpointComplete)?;
    log.complete(&entry).await?;
    crash.hit(CrashPoint::AfterCheckpointDurable)?;
    Ok(())
}

impl Job {
    /// The checkpoint the input read now belongs to.
    pub(super) fn filling(&self) -> CheckpointId {
        self.completing
            .as_ref()
            .map_or(self.last, |c| c.cut.id)
            .next()
    }

    /// Waits for the completion beside the input to end. Cancel-safe (see [`running`]).
    pub(super) async fn completed(&mut self) -> (Cut, Result<Completed, JobError>) {
        running(&mut self.completing).await
    }

    /// Waits for the running completion, if any, and lands it.
    pub(super) async fn settle(&mut self) -> Result<(), JobError> {
        if self.completing.is_some() {
            let done = self.completed().await;
            self.land_checkpoint(done).await?;
        }
        Ok(())
    }
}
