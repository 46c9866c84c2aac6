//! A rewind's replay gives every record the decision its checkpoint committed.
//!
//! Records below a rewind's replay bound are in the tables already; the replay only rebuilds
//! state from them. Within one trip (one partition) the replay reads them in the order the
//! first run did, so every per-trip decision comes out the same. The job-wide event-id rule is
//! the one decision that spans partitions: the first trip read with an id keeps it, and
//! partitions are read in no fixed order. So the replay does not ask the rule again: it reads
//! which records the tables hold as `event_id_reused` dead letters and skips exactly those
//! (their trips never changed), and applies every other record to its own trip
//! ([`State::apply_replayed`](crate::state::State::apply_replayed)). The late horizon's
//! decisions depend on the job-wide high-water mark, so `beyond_horizon` records are skipped
//! the same way, and the replay never asks the horizon again.

use std::collections::{BTreeMap, HashMap};

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use futures::TryStreamExt;
use iceberg::expr::Reference;
use iceberg::spec::Datum;
use iceberg::table::Table;
use recon_schemas::decode::{BEYOND_HORIZON, EVENT_ID_REUSED};
use uuid::Uuid;

use crate::checkpoint::manifest::PartitionCut;
use crate::ids::{Offset, PartitionId};
use crate::lakehouse::LakehouseError;

use super::JobError;

/// Dead letters read at most: every one names a replayed record, so more than this is a
/// replay range of more reused ids than a job should ever see; the start stops and says so.
pub(super) const SKIPS_MAX: usize = 50_000_000;

/// The replayed records the tables hold as `event_id_reused` or `beyond_horizon` (decisions that
/// did not change the record's trip): (partition, offset) -> event id.
#[derive(Debug, Default)]
pub(super) struct ReplaySkips(HashMap<(i32, i64), Uuid>);

impl ReplaySkips {
    /// Reads `event_id_reused` and `beyond_horizon` dead letters of `rejected` whose position lies in a partition's
    /// replay range: from the restored cut's end up to `replay_until`.
    pub(super) async fn load(
        rejected: &Table,
        cuts: &BTreeMap<PartitionId, PartitionCut>,
        replay_until: &BTreeMap<PartitionId, Offset>,
    ) -> Result<ReplaySkips, JobError> {
        let mut skips = ReplaySkips::default();
        if replay_until.is_empty() || rejected.metadata().current_snapshot().is_none() {
            return Ok(skips);
        }
        let what = rejected.identifier().to_string();
        let err = |op: &'static str| {
            let what = what.clone();
            move |source| JobError::from(LakehouseError::Catalog { op, what, source })
        };
        let mut batches = rejected
            .scan()
            .select(["kafka_partition", "kafka_offset", "event_id"])
            .with_filter(
                Reference::new("reason")
                    .equal_to(Datum::string(EVENT_ID_REUSED))
                    .or(Reference::new("reason").equal_to(Datum::string(BEYOND_HORIZON))),
            )
            .build()
            .map_err(err("scan reused ids"))?
            .to_arrow()
            .await
            .map_err(err("scan reused ids"))?;
        while let Some(b) = batches.try_next().await.map_err(err("scan reused ids"))? {
            let parts = b.column(0).as_primitive::<Int32Type>();
            let offsets = b.column(1).as_primitive::<Int64Type>();
            let ids = b.column(2).as_string::<i32>();
            for i in 0..b.num_rows() {
                let (p, o) = (parts.value(i), offsets.value(i));
                let pid = PartitionId(p);
                let Some(until) = replay_until.get(&pid) else {
                    continue;
                };
                let from = cuts.get(&pid).map_or(0, |c| c.end.0);
                if o < from || o >= until.0 {
                    continue;
                }
                // The job writes the id of every `event_id_reused` letter (it decoded the event).
                let Some(id) = ids
                    .is_valid(i)
                    .then(|| ids.value(i))
                    .and_then(|s| Uuid::parse_str(s).ok())
                else {
                    continue;
                };
                if skips.0.len() >= SKIPS_MAX {
                    return Err(JobError::ReplayTooLarge {
                        what: what.to_string(),
                        max: SKIPS_MAX,
                    });
                }
                skips.0.insert((p, o), id);
            }
        }
        Ok(skips)
    }

    /// Whether the record at (`partition`, `offset`) carrying `event_id` was committed as
    /// `event_id_reused` (the replay leaves state as it is). Each position answers once.
    pub(super) fn take(&mut self, partition: i32, offset: i64, event_id: &Uuid) -> bool {
        match self.0.remove(&(partition, offset)) {
            Some(id) => id == *event_id,
            None => false,
        }
    }

    /// Positions not yet replayed.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}
