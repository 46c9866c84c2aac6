//! Alerts: one record per trip status transition (by default into or out of `DISCREPANCY`),
//! published exactly once to a Kafka topic by a transactional producer tied to the checkpoint.
//!
//! Transitions are taken **per record**, in partition order: the status before and after
//! each accepted event (or conflicting duplicate, which flags the trip). That makes the set of
//! alerts a pure function of the topic, independent of where barriers fell or how often the
//! job crashed, so a consumer and batch-verify can derive the same set from the ledger
//! ([`derive`]). The alert id is a UUID v5 of `(job, partition, offset)`: one record causes
//! at most one transition.
//!
//! The exactly-once protocol (see `docs/ARCHITECTURE.md`, "Outputs beyond Iceberg"):
//! the alerts of checkpoint `k` are part of the checkpoint (`alerts.jsonl` beside the state,
//! written before the checkpoint is durable); once it is durable they are produced in one Kafka
//! transaction that also commits, for the consumer group `<transactional.id>`, the input
//! offsets of `k` with the metadata `recon-checkpoint=k`. That committed metadata, read back
//! after `init_transactions` fenced every older producer, says which checkpoints' alerts are
//! in the topic; recovery produces the rest.

use recon_schemas::balance::{TripBalance, TripStatus};
use recon_schemas::decode::{self, Limits};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::ids::JobId;

/// One status transition of one trip, as written to the alerts topic (JSON, keyed by trip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic id: UUID v5 of `(job, partition, offset)` of the record that caused it.
    pub alert_id: uuid::Uuid,
    /// The job that raised it.
    pub job_id: String,
    /// The trip.
    pub trip_id: String,
    /// `entered` when the new status is watched, `left` when the old one was.
    pub transition: String,
    /// Status before the record (`NONE` for a trip's first record).
    pub from_status: String,
    /// Status after the record.
    pub to_status: String,
    /// Discrepancy reason after the record, when `to_status` is `DISCREPANCY`.
    pub reason: Option<String>,
    /// Rider balance after the record, decimal string.
    pub rider_balance: Decimal,
    /// Settlement balance after the record, decimal string.
    pub settlement_balance: Decimal,
    /// ISO 4217 currency of the trip.
    pub currency: String,
    /// The event id of the record that caused the transition.
    pub event_id: String,
    /// Kafka partition of that record.
    pub kafka_partition: i32,
    /// Kafka offset of that record.
    pub kafka_offset: i64,
    /// Checkpoint that carries the alert (informative: it depends on where barriers fell).
    pub checkpoint_id: u64,
}

/// Which statuses raise an alert when a trip enters or leaves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    statuses: Vec<&'static str>,
}

impl Watch {
    /// Watches the given status names (`OPEN`, `BALANCED`, `DISCREPANCY`).
    pub fn new(statuses: Vec<&'static str>) -> Watch {
        Watch { statuses }
    }

    /// `Some("entered" | "left")` if going from `before` to `after` raises an alert.
    pub fn transition(&self, before: Option<&str>, after: &str) -> Option<&'static str> {
        if before == Some(after) {
            return None;
        }
        if self.statuses.contains(&after) {
            Some("entered")
        } else if before.is_some_and(|b| self.statuses.contains(&b)) {
            Some("left")
        } else {
            None
        }
    }
}

/// The deterministic id of the alert caused by the record at `(partition, offset)` of input
/// epoch 0 (the topic as first read).
pub fn alert_id(job: &str, partition: i32, offset: i64) -> uuid::Uuid {
    alert_id_in_epoch(job, 0, partition, offset)
}

/// The same for a record of input epoch `epoch`: after an accepted topic reset, offsets start
/// over, so the epoch is part of the id (epoch 0 keeps the plain form).
pub fn alert_id_in_epoch(job: &str, epoch: u32, partition: i32, offset: i64) -> uuid::Uuid {
    let name = if epoch == 0 {
        format!("recon-alert:{job}:{partition}:{offset}")
    } else {
        format!("recon-alert:{job}:e{epoch}:{partition}:{offset}")
    };
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes())
}

/// Where the record that may cause an alert sits.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    /// The job.
    pub job: &'a JobId,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// The checkpoint being built.
    pub checkpoint_id: u64,
    /// Input epoch of the record (topic resets accepted before it).
    pub input_epoch: u32,
}

/// Builds the alert for a trip that went from `before` to `after`, if the watch says so.
pub fn check(
    watch: &Watch,
    at: At<'_>,
    trip_id: &str,
    event_id: &uuid::Uuid,
    before: Option<TripStatus>,
    after: &TripBalance,
) -> Option<Alert> {
    let to = after.status();
    let transition = watch.transition(before.map(|b| b.as_str()), to.as_str())?;
    Some(Alert {
        alert_id: alert_id_in_epoch(at.job.as_str(), at.input_epoch, at.partition, at.offset),
        job_id: at.job.as_str().to_string(),
        trip_id: trip_id.to_string(),
        transition: transition.to_string(),
        from_status: before.map_or("NONE", |b| b.as_str()).to_string(),
        to_status: to.as_str().to_string(),
        reason: to.reason().map(|r| r.as_str().to_string()),
        rider_balance: after.rider_balance(),
        settlement_balance: after.settlement_balance(),
        currency: after.currency.code().to_string(),
        event_id: event_id.hyphenated().to_string(),
        kafka_partition: at.partition,
        kafka_offset: at.offset,
        checkpoint_id: at.checkpoint_id,
    })
}

/// Alerts as JSON Lines (the checkpoint's `alerts.jsonl`).
pub fn encode(alerts: &[Alert]) -> Vec<u8> {
    let mut out = Vec::with_capacity(alerts.len() * 400);
    for a in alerts {
        serde_json::to_writer(&mut out, a).expect("an alert serializes");
        out.push(b'\n');
    }
    out
}

/// Reads back [`encode`]'s output.
pub fn decode_lines(bytes: &[u8]) -> Result<Vec<Alert>, serde_json::Error> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect()
}

/// One input record, for [`derive`].
#[derive(Clone, Copy, Debug)]
pub struct InputRecord<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Payload.
    pub payload: &'a [u8],
}

/// The reference: every alert the topic's records must raise, folding each trip with
/// [`TripBalance`] in partition order (records of one trip share a partition). Exact
/// duplicates change nothing; a conflicting duplicate flags the trip; undecodable records are
/// skipped. Independent of the job's packed state, so tests compare the two.
pub fn derive<'a>(
    job: &JobId,
    watch: &Watch,
    records: impl IntoIterator<Item = InputRecord<'a>>,
    limits: &Limits,
) -> Vec<Alert> {
    let mut trips: HashMap<String, (TripBalance, HashMap<uuid::Uuid, u64>)> = HashMap::new();
    let mut holders: HashMap<uuid::Uuid, String> = HashMap::new();
    let mut out = Vec::new();
    for r in records {
        let Ok(ev) = decode::decode(r.key, r.payload, limits) else {
            continue;
        };
        let fp = ev.fingerprint();
        // An event id is one event across the job: a copy on another trip changes nothing.
        let own = trips
            .get(&ev.trip_id)
            .is_some_and(|(_, seen)| seen.contains_key(&ev.event_id));
        if !own && holders.get(&ev.event_id).is_some_and(|h| *h != ev.trip_id) {
            continue;
        }
        holders
            .entry(ev.event_id)
            .or_insert_with(|| ev.trip_id.clone());
        let (before, balance) = match trips.get_mut(&ev.trip_id) {
            None => {
                let mut b = TripBalance::new(ev.currency);
                b.apply(&ev);
                let seen = HashMap::from([(ev.event_id, fp)]);
                trips.insert(ev.trip_id.clone(), (b.clone(), seen));
                (None, b)
            }
            Some((b, seen)) => {
                let before = b.status();
                match seen.get(&ev.event_id) {
                    Some(f) if *f == fp => continue,
                    Some(_) => b.conflicting_duplicate = true,
                    None => {
                        seen.insert(ev.event_id, fp);
                        b.apply(&ev);
                    }
                }
                (Some(before), b.clone())
            }
        };
        let at = At {
            job,
            partition: r.partition,
            offset: r.offset,
            checkpoint_id: 0,
            input_epoch: 0,
        };
        if let Some(a) = check(watch, at, &ev.trip_id, &ev.event_id, before, &balance) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_raises_on_entering_and_leaving_only() {
        let w = Watch::new(vec!["DISCREPANCY"]);
        assert_eq!(w.transition(None, "DISCREPANCY"), Some("entered"));
        assert_eq!(w.transition(Some("OPEN"), "DISCREPANCY"), Some("entered"));
        assert_eq!(w.transition(Some("DISCREPANCY"), "OPEN"), Some("left"));
        assert_eq!(w.transition(Some("DISCREPANCY"), "DISCREPANCY"), None);
        assert_eq!(w.transition(Some("OPEN"), "BALANCED"), None);
        assert_eq!(w.transition(None, "OPEN"), None);
    }

    #[test]
    fn alert_ids_are_deterministic_and_distinct() {
        assert_eq!(alert_id("j", 1, 7), alert_id("j", 1, 7));
        assert_ne!(alert_id("j", 1, 7), alert_id("j", 1, 8));
        assert_ne!(alert_id("j", 1, 7), alert_id("k", 1, 7));
        assert_eq!(alert_id("j", 1, 7), alert_id_in_epoch("j", 0, 1, 7));
        assert_ne!(alert_id("j", 1, 7), alert_id_in_epoch("j", 1, 1, 7));
    }

    fn event(trip: &str, id: u128, kind: &str, amount: &str) -> Vec<u8> {
        serde_json::json!({
            "schema_version": 1,
            "event_id": uuid::Uuid::from_u128(id).to_string(),
            "event_type": kind,
            "trip_id": trip,
            "amount": amount,
            "currency": "EUR",
            "occurred_at": "2025-03-03T10:00:00Z",
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn derive_sees_a_payment_before_its_charge_enter_and_leave() {
        let job = JobId::new("j").unwrap();
        let w = Watch::new(vec!["DISCREPANCY"]);
        let recs = [
            event("t1", 1, "rider_payment", "10.00"),
            event("t1", 1, "rider_payment", "10.00"),
            event("t1", 2, "trip_charge", "10.00"),
            event("t1", 2, "trip_charge", "99.00"),
        ];
        let input = recs.iter().enumerate().map(|(i, p)| InputRecord {
            partition: 0,
            offset: i as i64,
            key: Some(b"t1"),
            payload: p,
        });
        let alerts = derive(&job, &w, input, &Limits::default());
        let got: Vec<_> = alerts
            .iter()
            .map(|a| {
                (
                    a.kafka_offset,
                    a.transition.as_str(),
                    a.reason.as_deref().unwrap_or("-"),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "entered", "rider_overpaid"),
                (2, "left", "-"),
                (3, "entered", "conflicting_duplicate"),
            ]
        );
        let back = decode_lines(&encode(&alerts)).unwrap();
        assert_eq!(back, alerts);
    }
}
