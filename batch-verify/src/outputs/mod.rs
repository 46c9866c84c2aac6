//! Checks (g) and (h): the optional exactly-once outputs of the job, when its configuration has
//! them on, against the lakehouse.
//!
//! (g) `[current_balances]`: every trip's row in the PostgreSQL table equals its latest
//! `trip_balances` row (sums and status); a row that differs only because it is newer than
//! the last committed Iceberg checkpoint (the job upserts at every checkpoint, commits to
//! Iceberg on its cadence) is counted as in flight, not as a discrepancy.
//!
//! (h) `[alerts]`: every alert id is in the topic once, and each trip's last alert agrees with
//! its latest status: a trip now in a watched status (e.g. `DISCREPANCY`) has an alert that
//! entered it; a trip not in one has none, or its last one left it. Alerts of checkpoints not
//! yet committed to Iceberg are in flight.
//!
//! Both read the whole output (they hold current state, not a day's history); the day's
//! ledger proof is checks (a)-(f). Memory is bounded the way the day's checks are: every side
//! (`trip_balances` rows, current-balance rows, alerts) is spilled into bucket files by a hash
//! of the trip id ([`crate::spill`]), then judged one bucket at a time. Everything here is
//! batch-verify's own code: the readers decode what the job writes from the wire and table
//! formats, never with the job's types.

pub mod judge;
pub mod read;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use iceberg::table::Table;
use serde::{Deserialize, Serialize};

use crate::error::{Result, VerifyError};
use crate::report::Findings;
use crate::spill::{SpillWriter, hash_bytes};
use recon_common::config::Config;

pub use judge::{judge_alerts, judge_balances};
pub use read::current_balances;

/// What checks (g) and (h) looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutputsChecked {
    /// Rows of the current-balance table compared.
    pub current_balances_checked: u64,
    /// Of those, rows newer than the lakehouse (not judged).
    pub current_balances_in_flight: u64,
    /// Alerts read from the alerts topic for this job.
    pub alerts_checked: u64,
    /// Trips whose last alert is newer than the lakehouse (not judged).
    pub alerts_in_flight: u64,
}

/// Sums in thousandths, in `recon_schemas::tables` column order: charged, collected, refunded,
/// paid_out, fees, adjusted.
pub type Sums = [i64; 6];

/// One `trip_balances` row, as far as (g) and (h) need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeBalance {
    /// The trip.
    pub trip_id: String,
    /// Checkpoint that wrote the row; a trip's latest row has the highest.
    pub checkpoint_id: i64,
    /// Sums after the checkpoint.
    pub sums: Sums,
    /// Status after the checkpoint.
    pub status: String,
    /// Partition that owns the trip (in a fleet: which task numbered the checkpoint).
    pub kafka_partition: i32,
}

/// The newest checkpoint the lakehouse holds, per numberer of checkpoint ids. A single-process
/// job numbers them all; in a fleet (`[fleet] tasks = K`) each task numbers its own, and
/// partition `p` belongs to task `p mod K`, so an output row is judged against its own task's
/// newest committed checkpoint (task 3's checkpoint 50 says nothing about task 5's 48).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    tasks: u32,
    newest: HashMap<u32, i64>,
}

impl Committed {
    /// Nothing committed yet, for a job of `tasks` tasks (0: a single process).
    pub fn new(tasks: u32) -> Committed {
        Committed {
            tasks,
            newest: HashMap::new(),
        }
    }

    fn numberer(&self, partition: i32) -> u32 {
        if self.tasks == 0 {
            0
        } else {
            partition.rem_euclid(self.tasks as i32) as u32
        }
    }

    /// Records a lakehouse row of `partition` written at `checkpoint`.
    pub fn add(&mut self, partition: i32, checkpoint: i64) {
        let n = self.newest.entry(self.numberer(partition)).or_default();
        *n = (*n).max(checkpoint);
    }

    /// Whether an output row of `partition` at `checkpoint` is newer than the lakehouse.
    pub fn in_flight(&self, partition: i32, checkpoint: i64) -> bool {
        checkpoint
            > self
                .newest
                .get(&self.numberer(partition))
                .copied()
                .unwrap_or(0)
    }
}

/// One row of the job's current-balance table in PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRow {
    /// The trip.
    pub trip_id: String,
    /// Sums the row holds.
    pub sums: Sums,
    /// Status the row holds.
    pub status: String,
    /// Checkpoint that upserted it.
    pub checkpoint_id: i64,
    /// Partition that owns the trip.
    pub kafka_partition: i32,
}

/// One alert as the alerts topic carries it (JSON; fields the checks do not use are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Deterministic id of the alert.
    pub alert_id: uuid::Uuid,
    /// The job that raised it.
    pub job_id: String,
    /// The trip.
    pub trip_id: String,
    /// Status before the record that raised it.
    pub from_status: String,
    /// Status after it.
    pub to_status: String,
    /// Event id of the record.
    pub event_id: String,
    /// Kafka partition of the record.
    pub kafka_partition: i32,
    /// Kafka offset of the record.
    pub kafka_offset: i64,
    /// Checkpoint that carries the alert.
    pub checkpoint_id: u64,
}

/// Where (g)/(h) spill and how many buckets.
#[derive(Clone, Copy, Debug)]
pub struct SpillAt<'a> {
    /// The run's private scratch directory.
    pub dir: &'a Path,
    /// Buckets per side (memory is about rows / buckets).
    pub buckets: usize,
}

/// Runs (g) and/or (h) for the outputs `cfg` has on; adds what disagrees to `findings`.
pub async fn check(
    cfg: &Config,
    balances: &Table,
    spill: SpillAt<'_>,
    kafka_timeout: Duration,
    records_max: u64,
    findings: &mut Findings,
) -> Result<Option<OutputsChecked>> {
    if cfg.current_balances_url.is_none() && cfg.alerts_watch.is_none() {
        return Ok(None);
    }
    let n = spill.buckets.max(1);
    let mut lake = SpillWriter::<LakeBalance>::create(spill.dir, "outputs-lake", n)?;
    let mut committed = Committed::new(cfg.fleet.tasks);
    read::lake_balances(balances, |row| {
        committed.add(row.kafka_partition, row.checkpoint_id);
        lake.push(hash_bytes(row.trip_id.as_bytes()), &row)
    })
    .await?;
    let lake = lake.finish()?;
    let current = match &cfg.current_balances_url {
        Some(url) => {
            let mut w = SpillWriter::<CurrentRow>::create(spill.dir, "outputs-current", n)?;
            let table = &cfg.current_balances.table;
            read::current_balances(url, table, cfg.job_id.as_str(), records_max, |row| {
                w.push(hash_bytes(row.trip_id.as_bytes()), &row)
            })
            .await?;
            Some(w.finish()?)
        }
        None => None,
    };
    let alerts = match &cfg.alerts_watch {
        Some(_) => {
            let (brokers, topic, props) = (
                cfg.source.brokers.clone(),
                cfg.alerts.topic.clone(),
                cfg.source.properties.clone(),
            );
            let (job, dir) = (cfg.job_id.to_string(), spill.dir.to_path_buf());
            let files = tokio::task::spawn_blocking(move || {
                let mut w = SpillWriter::<AlertRecord>::create(&dir, "outputs-alerts", n)?;
                read::alerts(
                    &brokers,
                    &topic,
                    &props,
                    &job,
                    kafka_timeout,
                    records_max,
                    |a| w.push(hash_bytes(a.trip_id.as_bytes()), &a),
                )?;
                w.finish()
            })
            .await
            .map_err(|e| VerifyError::truth("kafka", format!("alerts reader: {e}")))??;
            Some(files)
        }
        None => None,
    };
    let mut out = OutputsChecked::default();
    let watch = cfg.alerts_watch.as_deref().unwrap_or_default();
    for b in 0..n {
        let mut latest: HashMap<String, LakeBalance> = HashMap::new();
        lake.read(b, |row| {
            match latest.get(&row.trip_id) {
                Some(l) if l.checkpoint_id >= row.checkpoint_id => {}
                _ => {
                    latest.insert(row.trip_id.clone(), row);
                }
            }
            Ok(())
        })?;
        if let Some(files) = &current {
            let mut rows = Vec::new();
            files.read_into(b, &mut rows)?;
            judge_balances(&latest, &rows, &committed, &mut out, findings);
        }
        if let Some(files) = &alerts {
            let mut bucket = Vec::new();
            files.read_into(b, &mut bucket)?;
            judge_alerts(&latest, bucket, watch, &committed, &mut out, findings);
        }
    }
    Ok(Some(out))
}
