//! The optional exactly-once outputs inside the job: alerts collected while processing,
//! written into the checkpoint at the barrier, emitted once the checkpoint is durable, and
//! re-emitted by recovery where the output lacks them (see `crate::outputs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recon_schemas::balance::TripStatus;
use recon_schemas::event::Event;

use crate::checkpoint::manifest::Manifest;
use crate::checkpoint::protocol::{OutputPlan, plan_output};
use crate::crash::CrashPoint;
use crate::ids::{CheckpointId, JobId, Offset, PartitionId};
use crate::outputs::OutputError;
use crate::outputs::alerts::{self, Alert, At, Watch};
use crate::outputs::alerts_kafka::AlertsProducer;
use crate::outputs::balances_pg::{BalanceRow, BalancesPg, Staged};

use super::{Job, JobError};

/// An alerts transaction runs at least this often even without alerts, so the consumer
/// group's committed progress never ages out (`offsets.retention.minutes`).
const ALERTS_KEEPALIVE: Duration = Duration::from_secs(60);

/// The alerts output of a running job, pipelined with the next interval like the current
/// balances: once a checkpoint is durable its alerts join a backlog, and one Kafka transaction
/// at a time (on a blocking thread) produces the backlog with the progress of its newest
/// checkpoint while the job reads on.
pub(super) struct AlertsOut {
    producer: Arc<AlertsProducer>,
    /// The job the alerts belong to (a fleet's, not the task's): part of each alert's id.
    owner: JobId,
    watch: Watch,
    /// Alerts raised since the last barrier.
    pending: Vec<Alert>,
    /// When the last transaction was sent (the keepalive's clock).
    last_txn: Instant,
    /// Durable checkpoints' alerts not yet sent.
    backlog: Vec<Alert>,
    /// The newest durable checkpoint in `backlog`, with its offsets.
    backlog_at: Option<(CheckpointId, BTreeMap<PartitionId, Offset>)>,
    /// The transaction producing an earlier backlog.
    in_flight: Option<tokio::task::JoinHandle<Result<(), JobError>>>,
}

/// Alerts of durable checkpoints waiting for the transaction in flight, above which the
/// barrier waits for it.
const ALERTS_BACKLOG_MAX: usize = 65_536;

/// Rows of durable checkpoints waiting for the transaction in flight, above which the barrier
/// waits for it (backpressure: ~300 B a row, so ~80 MB).
const BALANCES_BACKLOG_ROWS_MAX: usize = 262_144;

/// The current-balance output of a running job, pipelined with the next interval: once a
/// checkpoint is durable its rows join a backlog (latest row per trip) and one transaction at a
/// time applies the backlog as of its newest checkpoint, in the background, while the job reads
/// on. When PostgreSQL keeps up that is one transaction per checkpoint; when it does not, the
/// checkpoints that became durable meanwhile go in the next one together (each transaction still
/// moves the progress rows with its rows, so the table is always exactly some checkpoint's).
pub(super) struct BalancesOut {
    pg: Arc<BalancesPg>,
    /// Durable checkpoints' rows not yet sent, oldest first (the transaction keeps the latest
    /// per trip, off the job's loop).
    backlog: Vec<Vec<BalanceRow>>,
    /// Rows in `backlog`.
    backlog_rows: usize,
    /// The newest durable checkpoint in `backlog`, with its offsets.
    backlog_at: Option<(CheckpointId, BTreeMap<PartitionId, Offset>)>,
    /// The transaction applying an earlier backlog.
    in_flight: Option<tokio::task::JoinHandle<Result<(), OutputError>>>,
}

/// Both optional outputs.
#[derive(Default)]
pub(super) struct Outputs {
    pub(super) alerts: Option<AlertsOut>,
    pub(super) balances: Option<BalancesOut>,
}

impl Outputs {
    /// Whether alerts are on (the hot loop then tracks each trip's status).
    pub(super) fn tracking(&self) -> bool {
        self.alerts.is_some()
    }

    /// Records the alert (if any) of an event that moved its trip from `before`.
    pub(super) fn observe(
        &mut self,
        at: (i32, i64, u64, u32),
        ev: &Event,
        before: Option<TripStatus>,
        after: &recon_schemas::balance::TripBalance,
    ) {
        let Some(a) = self.alerts.as_mut() else {
            return;
        };
        let at = At {
            job: &a.owner,
            partition: at.0,
            offset: at.1,
            checkpoint_id: at.2,
            input_epoch: at.3,
        };
        if let Some(alert) = alerts::check(&a.watch, at, &ev.trip_id, &ev.event_id, before, after) {
            metrics::counter!("recon_alerts_raised_total", "transition" => if alert.transition == "entered" { "entered" } else { "left" }).increment(1);
            a.pending.push(alert);
        }
    }

    /// Whether the current-balance output is on: the completion builds its rows.
    pub(super) fn current_balances_on(&self) -> bool {
        self.balances.is_some()
    }
}

fn blocking_err(e: tokio::task::JoinError) -> JobError {
    JobError::Output(OutputError::Panicked {
        what: "an alerts producer call",
        message: e.to_string(),
    })
}

impl Job {
    /// The job whose tables and outputs this run writes: a fleet task writes its fleet's (its
    /// own id names only its log, claims and output fences).
    pub(super) fn owner(&self) -> &JobId {
        self.fleet.as_ref().map_or(&self.cfg.job_id, |t| &t.job)
    }

    /// Connects the enabled outputs for this generation (the alerts producer's
    /// `init_transactions` fences older instances) and emits what the newest checkpoint left.
    pub(super) async fn recover_outputs(
        &mut self,
        partitions: &[PartitionId],
    ) -> Result<(), JobError> {
        if let Some(watch) = self.cfg.alerts_watch.clone() {
            let producer = Arc::new(AlertsProducer::connect(&self.cfg, partitions).await?);
            self.outputs.alerts = Some(AlertsOut {
                producer,
                owner: self.owner().clone(),
                watch: Watch::new(watch),
                pending: Vec::new(),
                last_txn: Instant::now(),
                backlog: Vec::new(),
                backlog_at: None,
                in_flight: None,
            });
            self.recover_alerts().await?;
        }
        if let Some(url) = self.cfg.current_balances_url.clone() {
            let pg = BalancesPg::connect(
                &url,
                &self.cfg.current_balances,
                self.owner().clone(),
                self.cfg.job_id.clone(),
                self.generation,
                Duration::from_millis(self.cfg.commit.timeout_ms),
            )
            .await?;
            let held = pg.claim().await?;
            self.outputs.balances = Some(BalancesOut {
                pg: Arc::new(pg),
                backlog: Vec::new(),
                backlog_rows: 0,
                backlog_at: None,
                in_flight: None,
            });
            self.recover_balances(held).await?;
        }
        Ok(())
    }

    async fn recover_alerts(&mut self) -> Result<(), JobError> {
        let Some(out) = self.outputs.alerts.as_ref() else {
            return Ok(());
        };
        let producer = out.producer.clone();
        let done = tokio::task::spawn_blocking({
            let p = producer.clone();
            move || p.committed()
        })
        .await
        .map_err(blocking_err)??;
        let head = self.last;
        if let OutputPlan::Ahead { held } = plan_output(done, head) {
            return Err(JobError::Output(OutputError::Ahead {
                output: "the alerts topic".into(),
                job: self.cfg.job_id.to_string(),
                held,
                head,
            }));
        }
        let mut missing = Vec::new();
        for id in self.log.ids_after(done).await? {
            if id > head {
                break;
            }
            let Some(c) = self.log.completed(id).await? else {
                continue;
            };
            if let Some(f) = &c.manifest.alerts {
                let bytes = self.log.read_state(&f.path).await?;
                let got = alerts::decode_lines(&bytes).map_err(|e| JobError::AlertsUnreadable {
                    path: f.path.clone(),
                    message: e.to_string(),
                })?;
                if got.len() as u64 != f.count {
                    return Err(JobError::AlertsCount {
                        path: f.path.clone(),
                        found: got.len() as u64,
                        recorded: f.count,
                    });
                }
                missing.extend(got);
            }
        }
        tracing::info!(
            emitted_through = ?done.map(|d| d.0),
            head = %head,
            re_emitted = missing.len(),
            "alerts recovered"
        );
        if !missing.is_empty() {
            self.emit_alerts(head, missing).await?;
        }
        Ok(())
    }

    async fn recover_balances(&mut self, held: Option<CheckpointId>) -> Result<(), JobError> {
        let head = self.last;
        match plan_output(held, head) {
            OutputPlan::Ahead { held } => {
                return Err(JobError::Output(OutputError::Ahead {
                    output: self.cfg.current_balances.table.clone(),
                    job: self.cfg.job_id.to_string(),
                    held,
                    head,
                }));
            }
            OutputPlan::UpToDate => {
                tracing::info!(checkpoint = %head, "current balances already hold the head");
                return Ok(());
            }
            OutputPlan::Behind { .. } => {}
        }
        // Behind: the restored state is every trip's balance as of the head: the trips in
        // memory, and those that left it since what the table holds (a trip whose row was
        // still in the backlog when a crash came may have left memory at the next barrier).
        let mut rows: Vec<BalanceRow> = self
            .state
            .iter()
            .map(|t| BalanceRow {
                trip_id: t.trip_id().to_string(),
                balance: t.balance(),
                partition: t.partition,
            })
            .collect();
        if let Some(cold) = self.cold.as_ref() {
            let hot: std::collections::HashSet<String> =
                rows.iter().map(|r| r.trip_id.clone()).collect();
            let gone = cold.trips_written_after(held).map_err(JobError::from)?;
            tracing::info!(held = ?held.map(|h| h.0), trips = gone.len(), "current balances: trips that left memory since are upserted too");
            rows.extend(gone.into_iter().filter(|(id, ..)| !hot.contains(id)).map(
                |(trip_id, balance, _, partition)| BalanceRow {
                    trip_id,
                    balance,
                    partition,
                },
            ));
        }
        tracing::info!(held = ?held.map(|h| h.0), head = %head, trips = rows.len(), "current balances behind the head: upserting the restored state");
        let Some(out) = self.outputs.balances.as_ref() else {
            return Ok(());
        };
        apply_balances(out.pg.clone(), head, rows, self.offsets()).await?;
        Ok(())
    }

    /// At the cut of checkpoint `id`: takes the alerts its interval raised.
    pub(super) fn take_alerts(&mut self, id: CheckpointId) -> Vec<Alert> {
        let Some(out) = self.outputs.alerts.as_mut() else {
            return Vec::new();
        };
        let mut taken = std::mem::take(&mut out.pending);
        for a in &mut taken {
            a.checkpoint_id = id.0;
        }
        taken
    }

    /// Once checkpoint `id` is durable: emits its alerts and current balances.
    /// `alerts` are its interval's, `offsets` each read partition's next offset at its cut.
    pub(super) async fn emit_outputs(
        &mut self,
        manifest: &Manifest,
        pending: Vec<Alert>,
        balance_rows: Vec<BalanceRow>,
        offsets: BTreeMap<PartitionId, Offset>,
    ) -> Result<(), JobError> {
        let id = manifest.checkpoint_id;
        if let Some(out) = self.outputs.alerts.as_mut() {
            // Nothing read yet: nothing raised and no progress to record.
            let due = !pending.is_empty() || out.last_txn.elapsed() >= ALERTS_KEEPALIVE;
            if due && !offsets.is_empty() {
                out.backlog.extend(pending);
                out.backlog_at = Some((id, offsets.clone()));
                out.last_txn = Instant::now();
            } else if out.in_flight.is_none() && out.backlog_at.is_none() {
                // Nothing to send: the topic holds everything up to this checkpoint.
                metrics::gauge!("recon_output_checkpoint", "output" => "alerts").set(id.0 as f64);
            }
            pump_alerts(out, false).await?;
        }
        if let Some(out) = self.outputs.balances.as_mut() {
            out.backlog_rows += balance_rows.len();
            out.backlog.push(balance_rows);
            out.backlog_at = Some((id, offsets));
            pump_balances(out, false).await?;
        }
        Ok(())
    }

    /// At a graceful stop: waits until the outputs hold the newest checkpoint.
    pub(super) async fn flush_outputs(&mut self) -> Result<(), JobError> {
        if let Some(out) = self.outputs.alerts.as_mut() {
            pump_alerts(out, true).await?;
        }
        if let Some(out) = self.outputs.balances.as_mut() {
            pump_balances(out, true).await?;
        }
        Ok(())
    }

    /// Each read partition's next offset.
    fn offsets(&self) -> BTreeMap<PartitionId, Offset> {
        self.cuts.iter().map(|(p, c)| (*p, c.end)).collect()
    }

    /// Recovery: one Kafka transaction of `alerts` plus the progress "through checkpoint `id`",
    /// waited for.
    async fn emit_alerts(&mut self, id: CheckpointId, alerts: Vec<Alert>) -> Result<(), JobError> {
        let offsets = self.offsets();
        let Some(out) = self.outputs.alerts.as_mut() else {
            return Ok(());
        };
        if offsets.is_empty() {
            // Nothing read yet, so nothing raised and no progress to record.
            return Ok(());
        }
        let p = out.producer.clone();
        tokio::task::spawn_blocking(move || produce_alerts(&p, id, &alerts, &offsets))
            .await
            .map_err(blocking_err)??;
        out.last_txn = Instant::now();
        Ok(())
    }
}

/// [`pump_balances`] for the alerts: collects the transaction in flight when done (or waits,
/// with `wait` or the backlog over its bound), then sends the backlog as the next one.
async fn pump_alerts(out: &mut AlertsOut, wait: bool) -> Result<(), JobError> {
    loop {
        if let Some(h) = out.in_flight.as_ref() {
            if !(wait || h.is_finished() || out.backlog.len() > ALERTS_BACKLOG_MAX) {
                return Ok(());
            }
            let h = out.in_flight.take().expect("checked above");
            h.await.map_err(blocking_err)??;
        }
        let Some((id, offsets)) = out.backlog_at.take() else {
            return Ok(());
        };
        let alerts = std::mem::take(&mut out.backlog);
        let p = out.producer.clone();
        out.in_flight = Some(tokio::task::spawn_blocking(move || {
            produce_alerts(&p, id, &alerts, &offsets)
        }));
        if !wait {
            return Ok(());
        }
    }
}

/// One Kafka transaction (blocking): `alerts` plus the progress "through checkpoint `id`".
fn produce_alerts(
    p: &AlertsProducer,
    id: CheckpointId,
    alerts: &[Alert],
    offsets: &BTreeMap<PartitionId, Offset>,
) -> Result<(), JobError> {
    let started = Instant::now();
    p.stage(alerts, id, offsets)?;
    crate::crash::maybe_crash(CrashPoint::BeforeAlertsCommit);
    if let Err(e) = p.commit() {
        metrics::counter!("recon_alerts_transactions_total", "outcome" => "failed").increment(1);
        return Err(e.into());
    }
    let n = alerts.len() as u64;
    metrics::counter!("recon_alerts_transactions_total", "outcome" => "committed").increment(1);
    metrics::counter!("recon_alerts_produced_total").increment(n);
    metrics::gauge!("recon_output_checkpoint", "output" => "alerts").set(id.0 as f64);
    tracing::info!(checkpoint = %id, alerts = n, duration_ms = started.elapsed().as_millis() as u64, "alerts committed");
    Ok(())
}

/// Collects the transaction in flight when it is done (or, with `wait`, or with the backlog
/// over its bound, waits for it), then sends the backlog as the next one; with `wait`, until
/// nothing is left. A failed transaction stops the job with its error (fenced, PostgreSQL
/// unreachable...); its checkpoints are re-applied by the next start's recovery.
async fn pump_balances(out: &mut BalancesOut, wait: bool) -> Result<(), JobError> {
    loop {
        if let Some(h) = out.in_flight.as_ref() {
            if !(wait || h.is_finished() || out.backlog_rows > BALANCES_BACKLOG_ROWS_MAX) {
                return Ok(());
            }
            let h = out.in_flight.take().expect("checked above");
            h.await.map_err(|e| {
                JobError::Output(OutputError::Panicked {
                    what: "the current-balance transaction",
                    message: e.to_string(),
                })
            })??;
        }
        let Some((id, offsets)) = out.backlog_at.take() else {
            return Ok(());
        };
        let checkpoints = std::mem::take(&mut out.backlog);
        out.backlog_rows = 0;
        let pg = out.pg.clone();
        out.in_flight = Some(tokio::spawn(async move {
            apply_balances(pg, id, latest_per_trip(checkpoints), offsets).await
        }));
        if !wait {
            return Ok(());
        }
    }
}

/// The rows of several durable checkpoints (oldest first) as one row per trip, the newest.
fn latest_per_trip(mut checkpoints: Vec<Vec<BalanceRow>>) -> Vec<BalanceRow> {
    if checkpoints.len() == 1 {
        // One checkpoint's rows name each changed trip once.
        return checkpoints.pop().unwrap_or_default();
    }
    let mut latest: HashMap<String, BalanceRow> = HashMap::new();
    for row in checkpoints.into_iter().flatten() {
        latest.insert(row.trip_id.clone(), row);
    }
    latest.into_values().collect()
}

/// One PostgreSQL transaction: `rows` plus the progress rows at checkpoint `id`.
async fn apply_balances(
    pg: Arc<BalancesPg>,
    id: CheckpointId,
    rows: Vec<BalanceRow>,
    offsets: BTreeMap<PartitionId, Offset>,
) -> Result<(), OutputError> {
    let started = Instant::now();
    match pg.stage(id, &rows, &offsets).await? {
        Staged::AlreadyApplied(held) => {
            tracing::info!(checkpoint = %id, held = %held, "current balances already applied (replay)");
        }
        Staged::Open(tx) => {
            crate::crash::maybe_crash(CrashPoint::BeforeBalancesCommit);
            tx.commit().await?;
            metrics::counter!("recon_current_balances_transactions_total").increment(1);
            metrics::counter!("recon_current_balances_rows_total").increment(rows.len() as u64);
            tracing::debug!(checkpoint = %id, rows = rows.len(), duration_ms = started.elapsed().as_millis() as u64, "current balances committed");
        }
    }
    metrics::gauge!("recon_output_checkpoint", "output" => "current_balances").set(id.0 as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use recon_schemas::balance::TripBalance;
    use recon_schemas::currency::Currency;

    fn row(trip: &str, partition: i32) -> BalanceRow {
        BalanceRow {
            trip_id: trip.into(),
            balance: TripBalance::new(Currency::USD),
            partition,
        }
    }

    /// Several durable checkpoints in one transaction: one row per trip, the newest checkpoint's.
    #[test]
    fn the_newest_row_of_each_trip_wins() {
        let older = vec![row("a", 1), row("b", 1)];
        let newer = vec![row("b", 2), row("c", 2)];
        let mut got = latest_per_trip(vec![older.clone(), newer]);
        got.sort_by(|x, y| x.trip_id.cmp(&y.trip_id));
        assert_eq!(got, vec![row("a", 1), row("b", 2), row("c", 2)]);
        assert_eq!(latest_per_trip(vec![older.clone()]), older);
        assert!(latest_per_trip(Vec::new()).is_empty());
    }
}
