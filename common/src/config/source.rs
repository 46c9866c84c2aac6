//! `[source]`: the Kafka topic to read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::catalog::redacted_if_set;
use crate::secrets::RedactedMap;

/// Where a partition without a checkpointed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The oldest retained record.
    Earliest,
    /// Only records produced after the job starts.
    Latest,
}

/// `[source]`: the Kafka topic to read.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Bootstrap servers, `host:port[,host:port]`, or `mock` for librdkafka's in-process
    /// mock cluster (demo only: it does not honour transactions).
    pub brokers: String,
    /// Topic of trip money events, keyed by trip id.
    pub topic: String,
    /// Partitions this instance owns; empty means every partition of the topic.
    pub partitions: Vec<i32>,
    /// Where a partition with no checkpointed offset starts: `earliest` or `latest`.
    pub start_from: StartFrom,
    /// Most records handed from the consumer thread to the job in one batch.
    pub poll_batch_records_max: usize,
    /// Batches buffered between the consumer thread and the job (back-pressure bound).
    pub queue_batches_max: usize,
    /// Progress watchdog: a partition with records waiting that delivers none for this long
    /// (time blocked on the job does not count) makes the source recreate its Kafka consumer;
    /// a second stall stops the job as transient (exit 1) so the supervisor restarts it.
    pub stall_timeout_ms: u64,
    /// Extra librdkafka properties (TLS, SASL...). Values are never logged.
    pub properties: BTreeMap<String, String>,
    /// SASL password (librdkafka `sasl.password`). Prefer `sasl_password_file` or the
    /// environment variable `RECON__SOURCE__SASL_PASSWORD` (read verbatim) to writing it here.
    pub sasl_password: String,
    /// File holding the SASL password (one trailing newline ignored), e.g. a mounted secret.
    pub sasl_password_file: String,
}

impl std::fmt::Debug for RawSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSource")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("start_from", &self.start_from)
            .field("poll_batch_records_max", &self.poll_batch_records_max)
            .field("queue_batches_max", &self.queue_batches_max)
            .field("stall_timeout_ms", &self.stall_timeout_ms)
            .field("properties", &RedactedMap(&self.properties))
            .field("sasl_password", &redacted_if_set(&self.sasl_password))
            .field("sasl_password_file", &self.sasl_password_file)
            .finish()
    }
}

impl Default for RawSource {
    fn default() -> Self {
        RawSource {
            brokers: "127.0.0.1:19092".into(),
            topic: "recon.trip-events".into(),
            partitions: Vec::new(),
            start_from: StartFrom::Earliest,
            poll_batch_records_max: 4096,
            queue_batches_max: 16,
            stall_timeout_ms: 120_000,
            properties: BTreeMap::new(),
            sasl_password: String::new(),
            sasl_password_file: String::new(),
        }
    }
}

/// librdkafka consumer properties the job sets itself (see `source::client_config`), refused in
/// `[source.properties]`: `(name, why the job owns it, what to set instead)`. Properties are
/// applied after the job's own, so each of these would silently override the job: e.g.
/// `auto.offset.reset = earliest` turns an offset lost to retention into a silent re-read.
pub const OWNED_CONSUMER_PROPERTIES: &[(&str, &str, &str)] = &[
    (
        "bootstrap.servers",
        "the job connects to source.brokers",
        "set source.brokers",
    ),
    (
        "metadata.broker.list",
        "the job connects to source.brokers",
        "set source.brokers",
    ),
    (
        "group.id",
        "the job names its consumer group after job_id; partitions are assigned, not balanced",
        "set job_id",
    ),
    (
        "auto.offset.reset",
        "the checkpoint owns the offsets; a saved offset no longer in the log must stop the job (`error`), never silently reset",
        "set source.start_from for partitions without a checkpoint",
    ),
    (
        "enable.auto.commit",
        "the checkpoint, not Kafka, records what was consumed",
        "remove it",
    ),
    (
        "auto.commit.enable",
        "the checkpoint, not Kafka, records what was consumed",
        "remove it",
    ),
    (
        "enable.auto.offset.store",
        "the checkpoint, not Kafka, records what was consumed",
        "remove it",
    ),
    (
        "isolation.level",
        "the job reads committed records only; `read_uncommitted` would count aborted transactions",
        "remove it",
    ),
    (
        "enable.partition.eof",
        "the job's reader and its topic probes set it each for their own use",
        "remove it",
    ),
    (
        "transactional.id",
        "a producer key; the alerts producer's transactional id is alerts.transactional_id",
        "set alerts.transactional_id",
    ),
    (
        "enable.idempotence",
        "a producer key; the alerts producer is always idempotent",
        "remove it",
    ),
];

/// Refuses a property of `properties` (the section `section`) that `owned` lists.
pub(crate) fn refuse_owned(
    section: &str,
    properties: &BTreeMap<String, String>,
    owned: &[(&str, &str, &str)],
) -> Result<(), super::ConfigError> {
    for name in properties.keys() {
        let normal = name.trim().to_ascii_lowercase();
        if let Some((_, why, instead)) = owned.iter().find(|(k, _, _)| *k == normal) {
            return Err(super::ConfigError(format!(
                "{section}.\"{name}\" is set by the job: {why}; {instead} and delete the property"
            )));
        }
    }
    Ok(())
}
