//! Reads what recovery needs to judge the topic's identity ([`super::identity`]): watermarks
//! of every partition the checkpoint has a position in, and the one record at each saved
//! last-consumed offset. Blocking (librdkafka); every call is bounded by one deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::identity::{self, AtOffset, Seen, Watermarks};
use super::security::SecurityWatch;
use super::{METADATA_TIMEOUT, SourceError, client_config};
use crate::checkpoint::manifest::{LastRecord, PartitionCut};
use crate::config::RawSource;
use crate::ids::{Offset, PartitionId};

/// Total time for the whole probe (metadata, every watermark query, every record read).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest single poll, so the deadline is checked often.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// What the broker shows for each partition in `saved`, within [`PROBE_TIMEOUT`].
///
/// An unreachable broker is an error (nothing proven); a record read that does not finish in
/// time is reported per partition as [`AtOffset::Unread`], which the judge turns into a stop.
pub fn observe(
    cfg: &RawSource,
    group: &str,
    saved: &BTreeMap<PartitionId, PartitionCut>,
) -> Result<BTreeMap<PartitionId, Seen>, SourceError> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .min(METADATA_TIMEOUT)
    };
    let mut config = client_config(cfg, group);
    // The end of a partition must be an answer, not a wait until the deadline.
    config.set("enable.partition.eof", "true");
    // SecurityWatch: its error callback drops the end-of-partition events this probe waits for.
    let consumer: BaseConsumer<SecurityWatch> = config
        .create_with_context(SecurityWatch::default())
        .map_err(|e| SourceError::Config(crate::secrets::kafka_error_text(&e)))?;
    let unreachable = |e: KafkaError, what: &str| SourceError::Unreachable {
        brokers: cfg.brokers.clone(),
        timeout: PROBE_TIMEOUT,
        message: format!("{what}: {e}"),
    };
    let md = consumer
        .fetch_metadata(Some(&cfg.topic), left())
        .map_err(|e| unreachable(e, "topic metadata"))?;
    let present: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == cfg.topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();

    let mut seen = BTreeMap::new();
    let mut to_read: BTreeMap<PartitionId, Offset> = BTreeMap::new();
    for (p, cut) in saved {
        if !present.contains(&p.0) {
            seen.insert(*p, Seen::NoPartition);
            continue;
        }
        let (low, high) = consumer
            .fetch_watermarks(&cfg.topic, p.0, left())
            .map_err(|e| unreachable(e, &format!("watermarks of partition {p}")))?;
        let watermarks = Watermarks {
            low: Offset(low),
            high: Offset(high),
        };
        if let Some(o) = identity::probe_offset(cut, watermarks) {
            to_read.insert(*p, o);
        }
        seen.insert(
            *p,
            Seen::Partition {
                watermarks,
                at_last: None,
            },
        );
    }
    for (p, at) in read_at(&consumer, &cfg.topic, &to_read, deadline)? {
        if let Some(Seen::Partition { at_last, .. }) = seen.get_mut(&p) {
            *at_last = Some(at);
        }
    }
    Ok(seen)
}

/// Reads the first committed record at or after each offset in `wanted`, until `deadline`.
fn read_at(
    consumer: &BaseConsumer<SecurityWatch>,
    topic: &str,
    wanted: &BTreeMap<PartitionId, Offset>,
    deadline: Instant,
) -> Result<BTreeMap<PartitionId, AtOffset>, SourceError> {
    let mut found = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in wanted {
        tpl.add_partition_offset(topic, p.0, KafkaOffset::Offset(o.0))
            .map_err(|e| SourceError::Config(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| SourceError::Read {
        topic: topic.to_string(),
        message: format!("assign for the identity check: {e}"),
    })?;
    let mut last_error = None;
    while found.len() < wanted.len() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match consumer.poll(POLL_SLICE.min(deadline - now)) {
            None => {}
            Some(Ok(m)) => {
                let p = PartitionId(m.partition());
                let Some(want) = wanted.get(&p) else { continue };
                if found.contains_key(&p) || m.offset() < want.0 {
                    continue;
                }
                let at = if m.offset() == want.0 {
                    let ts = m.timestamp().to_millis();
                    AtOffset::Record(LastRecord {
                        offset: Offset(m.offset()),
                        fingerprint: identity::fingerprint(m.key(), m.payload(), ts),
                        timestamp_ms: ts,
                    })
                } else {
                    AtOffset::Gone {
                        next: Some(Offset(m.offset())),
                    }
                };
                found.insert(p, at);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                found
                    .entry(PartitionId(p))
                    .or_insert(AtOffset::Gone { next: None });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Kafka error while reading back the last consumed records");
                last_error = Some(e.to_string());
            }
        }
    }
    let cause = match last_error {
        Some(e) => format!("no answer within {PROBE_TIMEOUT:?} (last error: {e})"),
        None => format!("no answer within {PROBE_TIMEOUT:?}"),
    };
    for p in wanted.keys() {
        found.entry(*p).or_insert_with(|| AtOffset::Unread {
            cause: cause.clone(),
        });
    }
    Ok(found)
}
