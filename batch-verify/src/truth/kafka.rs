//! The Kafka truth: re-read the topic's committed records and keep those of the day.
//!
//! The day is selected by the **business time each record carries** (`occurred_at`), never by
//! broker timestamps: a record's timestamp is when it was published, which says nothing about
//! the business day of a late event or a replayed backlog. Every window therefore ends at the
//! **log end** (the high watermark when the run starts; `read_committed` stops at the last
//! stable offset), so events at a partition's tail that the job has not consumed are read and
//! reported `missing` with the job's lag. Where it starts:
//! - [`KafkaScan::Full`] (default): the log start. Bounded by `--truth-records-max`.
//! - [`KafkaScan::Timestamps`]: the first record the broker timestamps at or after the day's
//!   start minus the margin. Only a lower bound, valid when no producer stamps a record more than
//!   the margin *before* its `occurred_at` (publish time is never earlier than business time).
//!
//! After the lakehouse scan each window is extended, contiguously, over every position the
//! day's lakehouse rows claim ([`uncovered`]), so a row can never look phantom merely because
//! it lies outside the window, and a window never claims offsets that were not read.
//!
//! Reads are `read_committed`: records of aborted transactions are not truth. Each record is
//! decoded with the pipeline's own decoder and limits; whether a decoded version is the event,
//! an exact re-send or a conflicting version is decided per event id in the bucket phase.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use recon_common::security::{SECURITY_HINT, SecurityWatch, refusal};
use recon_schemas::decode::{self, Limits};

use super::TruthSink;
use crate::error::{Result, VerifyError};
use crate::row::{EventRow, Position};

/// Time allowed for one metadata or offset lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait of one poll.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// Where each partition's window starts (it always ends at the log end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaScan {
    /// At the first record the broker timestamps at or after the day's start minus the margin:
    /// a lower bound that assumes no record is stamped more than the margin before its
    /// business time.
    Timestamps,
    /// At the log start: the whole retained log (default; no assumption about timestamps).
    Full,
}

/// Where and how to read.
#[derive(Clone, Debug)]
pub struct KafkaTruth {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// Extra librdkafka properties (TLS, SASL), from the pipeline's `[source] properties`.
    pub properties: BTreeMap<String, String>,
    /// The pipeline's payload limit, so decoding agrees with it.
    pub payload_bytes_max: usize,
    /// Window mode.
    pub scan: KafkaScan,
    /// Most time the whole read may take.
    pub timeout: Duration,
}

/// Per partition, `[start, end)` offsets.
pub type Windows = BTreeMap<i32, (i64, i64)>;

fn err(message: impl ToString) -> VerifyError {
    VerifyError::truth("kafka", message)
}

impl KafkaTruth {
    fn consumer(&self) -> Result<BaseConsumer<SecurityWatch>> {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("batch-verify-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error");
        c.create_with_context(SecurityWatch::default())
            .map_err(|e| {
                err(format!(
                    "creating the consumer: {}",
                    recon_common::secrets::kafka_error_text(&e)
                ))
            })
    }

    /// Finds each partition's window: from the log start (or, with [`KafkaScan::Timestamps`],
    /// the first record stamped at or after `from`) to the log end.
    pub fn window(&self, from: DateTime<Utc>) -> Result<Windows> {
        let consumer = self.consumer()?;
        // In short attempts, so that a refused login (SASL, TLS) stops at once with its reason.
        let deadline = Instant::now() + LOOKUP_TIMEOUT;
        let md = loop {
            let attempt = consumer.fetch_metadata(Some(&self.topic), Duration::from_millis(500));
            if let Some(reason) = refusal(&consumer) {
                return Err(err(format!(
                    "Kafka at {} refused the connection: {reason}; {SECURITY_HINT}",
                    self.brokers
                )));
            }
            match attempt {
                Ok(md) => break md,
                Err(e) if Instant::now() >= deadline => {
                    return Err(err(format!(
                        "cannot reach {} within {LOOKUP_TIMEOUT:?}: {e}; check source.brokers",
                        self.brokers
                    )));
                }
                Err(_) => {}
            }
        };
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(err(format!(
                "topic {:?} has no partitions on {}; check source.topic",
                self.topic, self.brokers
            )));
        }
        let mut windows = Windows::new();
        let mut marks = BTreeMap::new();
        for p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, *p, LOOKUP_TIMEOUT)
                .map_err(|e| err(format!("watermarks of partition {p}: {e}")))?;
            marks.insert(*p, (low, high));
        }
        if self.scan == KafkaScan::Full {
            return Ok(marks);
        }
        let lookup = |t: DateTime<Utc>| -> Result<BTreeMap<i32, Offset>> {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(&self.topic, *p, Offset::Offset(t.timestamp_millis()))
                    .map_err(|e| err(e.to_string()))?;
            }
            let found = consumer
                .offsets_for_times(tpl, LOOKUP_TIMEOUT)
                .map_err(|e| err(format!("looking offsets up by time {t}: {e}")))?;
            Ok(found
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect())
        };
        let starts = lookup(from)?;
        for p in partitions {
            let (low, high) = marks[&p];
            let start = match starts.get(&p) {
                Some(Offset::Offset(o)) => (*o).clamp(low, high),
                // No record stamped at or after the time: nothing of the day can follow.
                _ => high,
            };
            // Never ends by time: late events and an unconsumed backlog are at the tail.
            windows.insert(p, (start, high));
        }
        Ok(windows)
    }

    /// Reads the committed records in `ranges` into `sink`; returns what was read.
    pub fn read_ranges(&self, ranges: &Windows, sink: &mut TruthSink) -> Result<u64> {
        let live: BTreeMap<i32, (i64, i64)> = ranges
            .iter()
            .filter(|(_, (s, e))| s < e)
            .map(|(p, r)| (*p, *r))
            .collect();
        if live.is_empty() {
            return Ok(0);
        }
        let consumer = self.consumer()?;
        let mut tpl = TopicPartitionList::new();
        for (p, (start, _)) in &live {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*start))
                .map_err(|e| err(e.to_string()))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| err(format!("assigning partitions: {e}")))?;
        let limits = Limits {
            payload_bytes_max: self.payload_bytes_max,
            ..Limits::default()
        };
        let deadline = Instant::now() + self.timeout;
        let mut open: BTreeSet<i32> = live.keys().copied().collect();
        let mut read = 0u64;
        while !open.is_empty() {
            if Instant::now() > deadline {
                return Err(VerifyError::Limit {
                    limit: "--kafka-timeout-s",
                    value: self.timeout.as_secs(),
                    message: format!("partitions {open:?} not read to their window end in time"),
                });
            }
            let Some(polled) = consumer.poll(POLL_TIMEOUT) else {
                continue;
            };
            let msg = match polled {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    // Committed records end here (high watermark or last stable offset).
                    open.remove(&p);
                    continue;
                }
                Err(e) => return Err(err(format!("reading {}: {e}", self.topic))),
            };
            let p = msg.partition();
            let Some(&(_, end)) = live.get(&p) else {
                continue;
            };
            if msg.offset() >= end {
                open.remove(&p);
                continue;
            }
            if msg.offset() + 1 >= end {
                open.remove(&p);
            }
            sink.record()?;
            read += 1;
            let position = Position::new(p, msg.offset());
            let payload = msg.payload().unwrap_or(&[]);
            let time = msg
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis);
            match decode::decode(msg.key(), payload, &limits) {
                Ok(ev) => match EventRow::from_event(&ev) {
                    Some(row) => sink.event(row, Some(position), (p, msg.offset()))?,
                    None => {
                        return Err(err(format!(
                            "record at {position}: amount {} does not fit decimal(18, 3)",
                            ev.amount
                        )));
                    }
                },
                Err(e) => {
                    let (event_id, trip_id) = decode::salvage_ids(payload, &limits);
                    sink.reject(
                        e.reason().as_str(),
                        event_id,
                        trip_id,
                        msg.key(),
                        payload,
                        Some(position),
                        time,
                    )?;
                }
            }
        }
        Ok(read)
    }
}

/// What must still be read so that each partition's window covers `wanted` and stays one
/// contiguous range: the range from `wanted`'s start up to the window's start, and the range
/// from the window's end up to `wanted`'s end (two maps, at most one range per partition). An
/// empty window `(s, s)` still has a place: the gap between it and `wanted` is read too, so
/// [`extend`] never makes a window claim offsets that were not read.
pub fn uncovered(have: &Windows, wanted: &Windows) -> (Windows, Windows) {
    let (mut before, mut after) = (Windows::new(), Windows::new());
    for (p, (ws, we)) in wanted {
        if ws >= we {
            continue;
        }
        match have.get(p).copied() {
            None => {
                before.insert(*p, (*ws, *we));
            }
            Some((hs, he)) => {
                let he = he.max(hs);
                if *ws < hs {
                    before.insert(*p, (*ws, hs));
                }
                if *we > he {
                    after.insert(*p, (he, *we));
                }
            }
        }
    }
    (before, after)
}

/// Extends `have` over `wanted` once [`uncovered`]'s ranges were read: each window becomes the
/// hull of both, which is exactly what was read.
pub fn extend(have: &mut Windows, wanted: &Windows) {
    for (p, (ws, we)) in wanted {
        if ws >= we {
            continue;
        }
        let w = have.entry(*p).or_insert((*ws, *we));
        w.1 = w.1.max(w.0).max(*we);
        w.0 = w.0.min(*ws);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncovered_ranges() {
        let have = Windows::from([(0, (10, 20)), (1, (5, 5))]);
        let wanted = Windows::from([(0, (8, 25)), (1, (3, 9)), (2, (0, 4))]);
        let (before, after) = uncovered(&have, &wanted);
        assert_eq!(
            before,
            Windows::from([(0, (8, 10)), (1, (3, 5)), (2, (0, 4))])
        );
        assert_eq!(after, Windows::from([(0, (20, 25)), (1, (5, 9))]));
        let (b, a) = uncovered(&have, &Windows::from([(0, (12, 18))]));
        assert!(b.is_empty() && a.is_empty());
    }

    /// The false alarm of 2026-12: an empty window at the log end, lakehouse rows well before
    /// it. The hull used to claim the offsets in between without reading them.
    #[test]
    fn an_empty_window_is_joined_to_the_rows_by_reading_the_gap() {
        let have = Windows::from([(0, (900, 900))]);
        let wanted = Windows::from([(0, (100, 200))]);
        let (before, after) = uncovered(&have, &wanted);
        assert_eq!(before, Windows::from([(0, (100, 900))]));
        assert!(after.is_empty());
        let mut w = have.clone();
        extend(&mut w, &wanted);
        assert_eq!(w, Windows::from([(0, (100, 900))]));
        // Rows past the end (the job committed after the watermarks were taken).
        let (before, after) = uncovered(&have, &Windows::from([(0, (950, 960))]));
        assert!(before.is_empty());
        assert_eq!(after, Windows::from([(0, (900, 960))]));
    }
}
