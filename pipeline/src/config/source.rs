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
            properties: BTreeMap::new(),
            sasl_password: String::new(),
            sasl_password_file: String::new(),
        }
    }
}
