//! The Kafka source: a consumer thread that reads the assigned partitions from the offsets the
//! checkpoint gives, and hands batches of records to the job over a bounded channel.
//!
//! Partitions are *assigned* (no consumer-group rebalancing): the job's checkpoint, not Kafka,
//! owns the offsets, and `enable.auto.commit` is off. Reads are `read_committed`, so records of
//! aborted upstream transactions never reach the job. A saved offset that is no longer in the
//! log (retention) is an error, never a silent reset (`auto.offset.reset=error`). Before
//! reading, recovery checks that the topic still holds the records the checkpoint consumed
//! ([`identity`], [`probe`]): offsets of a recreated topic are valid but mean other records.

pub mod identity;
pub mod probe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::{RawSource, StartFrom};
use crate::ids::{Offset, PartitionId};

pub mod security;
use security::{SECURITY_HINT, SecurityWatch, is_security_error};

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
}

fn client_config(cfg: &RawSource, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "65536");
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

/// The running consumer thread.
pub struct Source {
    rx: mpsc::Receiver<Result<Vec<Record>, SourceError>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Source {
    /// Starts reading `partitions`, each from its saved offset or `start_from`.
    pub fn start(
        cfg: &RawSource,
        group: &str,
        partitions: &[PartitionId],
        saved: &BTreeMap<PartitionId, Offset>,
    ) -> Result<Source, SourceError> {
        let consumer: BaseConsumer<SecurityWatch> = client_config(cfg, group)
            .create_with_context(SecurityWatch::default())
            .map_err(|e| SourceError::Config(crate::secrets::kafka_error_text(&e)))?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let off = match saved.get(p) {
                Some(o) => KafkaOffset::Offset(o.0),
                None => match cfg.start_from {
                    StartFrom::Earliest => KafkaOffset::Beginning,
                    StartFrom::Latest => KafkaOffset::End,
                },
            };
            tpl.add_partition_offset(&cfg.topic, p.0, off)
                .map_err(|e| SourceError::Config(e.to_string()))?;
        }
        consumer.assign(&tpl).map_err(|e| SourceError::Read {
            topic: cfg.topic.clone(),
            message: format!("assign: {e}"),
        })?;
        let (tx, rx) = mpsc::channel(cfg.queue_batches_max);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let batch_max = cfg.poll_batch_records_max;
        let topic = cfg.topic.clone();
        let thread = std::thread::Builder::new()
            .name("recon-source".into())
            .spawn(move || poll_loop(consumer, tx, stop2, batch_max, topic))
            .map_err(|e| SourceError::Config(format!("cannot start the consumer thread: {e}")))?;
        Ok(Source {
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The next batch; `None` once the thread has stopped.
    pub async fn next(&mut self) -> Option<Result<Vec<Record>, SourceError>> {
        self.rx.recv().await
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How often consumer lag is measured.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// Lag per assigned partition: high watermark minus the consumer's position.
fn report_lag(consumer: &BaseConsumer<SecurityWatch>, topic: &str) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    for e in positions.elements_for_topic(topic) {
        let Some(pos) = e.offset().to_raw() else {
            continue;
        };
        if let Ok((_, high)) =
            consumer.fetch_watermarks(topic, e.partition(), Duration::from_millis(500))
        {
            crate::telemetry::lag(e.partition(), high - pos.max(0));
        }
    }
}

fn poll_loop(
    consumer: BaseConsumer<SecurityWatch>,
    tx: mpsc::Sender<Result<Vec<Record>, SourceError>>,
    stop: Arc<AtomicBool>,
    batch_max: usize,
    topic: String,
) {
    let mut batch = Vec::with_capacity(batch_max);
    let mut lag_at = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if lag_at.elapsed() >= LAG_EVERY {
            lag_at = std::time::Instant::now();
            report_lag(&consumer, &topic);
        }
        // Block briefly for the first record, then drain what is already fetched.
        let mut wait = Duration::from_millis(50);
        while batch.len() < batch_max {
            match consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => batch.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    timestamp_ms: m.timestamp().to_millis(),
                }),
                Some(Err(e)) => {
                    let code = e.rdkafka_error_code();
                    let fatal = matches!(
                        code,
                        Some(rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange)
                            | Some(rdkafka::types::RDKafkaErrorCode::AutoOffsetReset)
                            | Some(rdkafka::types::RDKafkaErrorCode::Fatal)
                    );
                    if fatal {
                        let _ = tx.blocking_send(Err(SourceError::Read {
                            topic: topic.clone(),
                            message: format!(
                                "{e}; a saved offset is no longer in the topic (retention?) — stopping rather than skipping data"
                            ),
                        }));
                        return;
                    }
                    // Credentials revoked or rotated while running: stop; a restart reads the
                    // current secret.
                    if is_security_error(code) {
                        let reason = consumer
                            .context()
                            .failure()
                            .unwrap_or_else(|| e.to_string());
                        let _ = tx.blocking_send(Err(SourceError::Read {
                            topic: topic.clone(),
                            message: format!(
                                "the broker refused the connection: {reason}; {SECURITY_HINT}"
                            ),
                        }));
                        return;
                    }
                    tracing::warn!(error = %e, "Kafka consumer error (librdkafka retries)");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if !batch.is_empty() {
            let out = std::mem::replace(&mut batch, Vec::with_capacity(batch_max));
            if tx.blocking_send(Ok(out)).is_err() {
                return;
            }
        }
    }
}
