//! The Kafka source: a consumer thread that reads the assigned partitions from the offsets the
//! checkpoint gives, and hands batches of records to the job over a bounded channel.
//!
//! Partitions are *assigned* (no consumer-group rebalancing): the job's checkpoint, not Kafka,
//! owns the offsets, and `enable.auto.commit` is off. Reads are `read_committed`, so records of
//! aborted upstream transactions never reach the job. A saved offset that is no longer in the
//! log (retention) is an error, never a silent reset (`auto.offset.reset=error`). Before
//! reading, recovery checks that the topic still holds the records the checkpoint consumed
//! ([`identity`], [`probe`]): offsets of a recreated topic are valid but mean other records.

mod consumer;
pub mod identity;
mod monitor;
pub mod probe;
pub mod topic_id;

pub use consumer::{InputGuard, Source};

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::RawSource;
use crate::ids::{Offset, PartitionId};

pub use recon_common::security;
use security::{SECURITY_HINT, SecurityWatch};

/// How long metadata lookups may take before the broker counts as unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// One metadata attempt within [`METADATA_TIMEOUT`]; between attempts, a refused login is noticed.
const METADATA_ATTEMPT: Duration = Duration::from_millis(500);

/// One Kafka record, owned.
#[derive(Clone, Debug)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Kafka timestamp, ms since the Unix epoch (UTC), when the record has one.
    pub timestamp_ms: Option<i64>,
}

/// One record as the job receives it: its bytes, and its value decoded by the consumer thread
/// (beside the job's loop) or why it is not an event.
#[derive(Clone, Debug)]
pub struct Input {
    /// The record.
    pub record: Record,
    /// Its event, or why it is none.
    pub decoded: Result<Decoded, recon_schemas::decode::DecodeError>,
}

/// A record's event and its [`fingerprint`](recon_schemas::event::Event::fingerprint), both
/// computed on the consumer thread.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The event.
    pub event: recon_schemas::event::Event,
    /// Its fingerprint (the dedup state compares it).
    pub fingerprint: u64,
}

impl Input {
    /// A record as the consumer thread delivers it, its value decoded under `limits`.
    pub fn decode(record: Record, limits: &recon_schemas::decode::Limits) -> Input {
        let payload = record.payload.as_deref().unwrap_or(&[]);
        let decoded =
            recon_schemas::decode::decode(record.key.as_deref(), payload, limits).map(|event| {
                Decoded {
                    fingerprint: event.fingerprint(),
                    event,
                }
            });
        Input { record, decoded }
    }
}

impl Record {
    /// Its identity for the checkpoint: offset and fingerprint of key, value and timestamp.
    pub fn identity(&self) -> crate::checkpoint::manifest::LastRecord {
        crate::checkpoint::manifest::LastRecord {
            offset: Offset(self.offset),
            fingerprint: identity::fingerprint(
                self.key.as_deref(),
                self.payload.as_deref(),
                self.timestamp_ms,
            ),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// Errors of the source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The consumer could not be created (bad property).
    #[error("Kafka consumer configuration: {0}")]
    Config(String),
    /// The brokers did not answer.
    #[error(
        "cannot reach Kafka at {brokers} within {timeout:?}: {message}; check source.brokers and that the broker is up"
    )]
    Unreachable {
        /// Bootstrap servers.
        brokers: String,
        /// Wait.
        timeout: Duration,
        /// Cause.
        message: String,
    },
    /// The broker refused the client's credentials or TLS handshake.
    #[error("Kafka at {brokers} refused the connection: {reason}; {SECURITY_HINT}")]
    Refused {
        /// Bootstrap servers.
        brokers: String,
        /// librdkafka's reason (e.g. "SASL authentication error: ... invalid credentials").
        reason: String,
    },
    /// The topic does not exist.
    #[error("topic {topic:?} does not exist on {brokers}; create it or fix source.topic")]
    NoTopic {
        /// Topic.
        topic: String,
        /// Brokers.
        brokers: String,
    },
    /// The topic does not hold the records the checkpoint consumed (recreated or truncated).
    #[error("{message}")]
    NotTheSavedInput {
        /// What differs, per partition, and what to do ([`identity::stop_message`]).
        message: String,
    },
    /// Reading failed in a way that needs an operator (offset out of range, fatal client error).
    #[error("reading {topic}: {message}")]
    Read {
        /// Topic.
        topic: String,
        /// Cause.
        message: String,
    },
    /// Records are waiting but none arrived for `source.stall_timeout_ms`, even after the
    /// consumer was recreated. Transient: a restart (new process, new connections) resumes from
    /// the last checkpoint.
    #[error(
        "reading {topic}: partitions {partitions:?} have records waiting but delivered none for {stalled:.0?}, even after the Kafka consumer was recreated; stopping so that the supervisor restarts the job (it resumes from the last checkpoint). Check the broker's logs and `recon_source_stalled_seconds`"
    )]
    Stalled {
        /// Topic.
        topic: String,
        /// The partitions that made no progress.
        partitions: Vec<i32>,
        /// How long they made none.
        stalled: Duration,
    },
}

fn client_config(cfg: &RawSource, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "error")
        // End-of-partition events tell the idle exit that a partition is drained; the consumer
        // thread consumes them silently.
        .set("enable.partition.eof", "true")
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "65536")
        // librdkafka 2.x postpones a partition's next fetch by `fetch.queue.backoff.ms`
        // (default 1000 ms) whenever its pre-fetch queue is above a threshold. Draining a
        // backlog, the job empties the queue long before that second is over and then waits:
        // 110k events/s with the default, 230k with 10 ms (bench, 1M noisy records, 4
        // partitions, docs/bench-2026-12-08-source-decode/).
        .set("fetch.queue.backoff.ms", "10");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Lists the topic's partitions, failing within [`METADATA_TIMEOUT`] if no broker answers, and
/// at once (with [`SourceError::Refused`]) when the broker refuses the login or TLS handshake.
pub fn topic_partitions(cfg: &RawSource) -> Result<Vec<PartitionId>, SourceError> {
    let consumer: BaseConsumer<SecurityWatch> = client_config(cfg, "recon-metadata")
        .create_with_context(SecurityWatch::default())
        .map_err(|e| SourceError::Config(crate::secrets::kafka_error_text(&e)))?;
    let deadline = Instant::now() + METADATA_TIMEOUT;
    let md = loop {
        let attempt = consumer.fetch_metadata(Some(&cfg.topic), METADATA_ATTEMPT);
        if let Some(reason) = security::refusal(&consumer) {
            return Err(SourceError::Refused {
                brokers: cfg.brokers.clone(),
                reason,
            });
        }
        match attempt {
            Ok(md) => break md,
            Err(e) if Instant::now() >= deadline => {
                return Err(SourceError::Unreachable {
                    brokers: cfg.brokers.clone(),
                    timeout: METADATA_TIMEOUT,
                    message: e.to_string(),
                });
            }
            Err(_) => {}
        }
    };
    let topic = md.topics().iter().find(|t| t.name() == cfg.topic);
    match topic {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            let mut ps: Vec<_> = t.partitions().iter().map(|p| PartitionId(p.id())).collect();
            ps.sort();
            Ok(ps)
        }
        _ => Err(SourceError::NoTopic {
            topic: cfg.topic.clone(),
            brokers: cfg.brokers.clone(),
        }),
    }
}
