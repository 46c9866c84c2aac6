//! The alerts topic's transactional producer.
//!
//! One `transactional.id` per job (`recon-<job>-alerts` unless configured). `init_transactions`
//! at start bumps the producer epoch: every older instance's producer is fenced and its open
//! transaction aborted (or, if its commit was already under way, completed) before this one
//! reads its progress. Each transaction carries a checkpoint's alerts **and** commits, for the
//! consumer group named like the transactional id, the checkpoint's input offsets with the
//! metadata `recon-checkpoint=<id>`: the alerts and the record of having sent them land
//! together or not at all.
//!
//! librdkafka cannot resume another process's open transaction (Flink's Kafka sink does so
//! with reflection into the Java client), so alerts are not produced during the interval:
//! they are made durable in the checkpoint and produced once it is complete. A crash between
//! the two leaves an aborted (or no) transaction, and recovery produces them again.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Offset as KOffset;
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::OutputError;
use super::alerts::Alert;
use crate::config::Config;
use crate::ids::{CheckpointId, Offset, PartitionId};

const METADATA_PREFIX: &str = "recon-checkpoint=";

/// A connected, initialised transactional producer for one job's alerts.
pub struct AlertsProducer {
    producer: ThreadedProducer<DefaultProducerContext>,
    group: BaseConsumer,
    topic: String,
    input_topic: String,
    partitions: Vec<PartitionId>,
    transactional_id: String,
    timeout: Duration,
}

fn kafka(what: &'static str, e: KafkaError, txn: &str) -> OutputError {
    let fenced = match &e {
        KafkaError::Transaction(r) => matches!(
            r.code(),
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        ),
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        ),
    };
    if fenced {
        OutputError::Fenced {
            output: "alerts",
            message: format!(
                "transactional.id {txn} was taken over by a newer instance ({what}: {e}); this process stops"
            ),
        }
    } else {
        OutputError::Kafka {
            what,
            message: crate::secrets::kafka_error_text(&e),
        }
    }
}

impl AlertsProducer {
    /// The transactional id of `cfg`'s job.
    pub fn transactional_id(cfg: &Config) -> String {
        if cfg.alerts.transactional_id.trim().is_empty() {
            format!("recon-{}-alerts", cfg.job_id)
        } else {
            cfg.alerts.transactional_id.clone()
        }
    }

    /// Creates the topic if missing, then `init_transactions`, which fences older instances.
    /// Bounded by `alerts.call_timeout_ms` per call.
    pub async fn connect(
        cfg: &Config,
        partitions: &[PartitionId],
    ) -> Result<AlertsProducer, OutputError> {
        let a = &cfg.alerts;
        let txn = Self::transactional_id(cfg);
        let timeout = Duration::from_millis(a.call_timeout_ms);
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &cfg.source.brokers);
        for (k, v) in &cfg.source.properties {
            // Security and network settings are shared; consumer-only keys are not.
            if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                base.set(k, v);
            }
        }
        create_topic(&base, &a.topic, a.partitions, timeout).await?;
        let (topic, input_topic, props) = (
            a.topic.clone(),
            cfg.source.topic.clone(),
            a.properties.clone(),
        );
        let (txn_ms, partitions) = (a.transaction_timeout_ms, partitions.to_vec());
        tokio::task::spawn_blocking(move || {
            Self::init(
                base,
                txn,
                txn_ms,
                props,
                timeout,
                topic,
                input_topic,
                partitions,
            )
        })
        .await
        .map_err(|e| OutputError::Panicked {
            what: "the alerts producer's start",
            message: e.to_string(),
        })?
    }

    #[allow(clippy::too_many_arguments)]
    fn init(
        base: ClientConfig,
        txn: String,
        txn_timeout_ms: u64,
        properties: BTreeMap<String, String>,
        timeout: Duration,
        topic: String,
        input_topic: String,
        partitions: Vec<PartitionId>,
    ) -> Result<AlertsProducer, OutputError> {
        let mut pc = base.clone();
        pc.set("transactional.id", &txn)
            .set("enable.idempotence", "true")
            .set("transaction.timeout.ms", txn_timeout_ms.to_string())
            .set("linger.ms", "5");
        for (k, v) in &properties {
            pc.set(k, v);
        }
        let producer: ThreadedProducer<DefaultProducerContext> =
            pc.create().map_err(|e| OutputError::Kafka {
                what: "create the alerts producer",
                message: crate::secrets::kafka_error_text(&e),
            })?;
        producer
            .init_transactions(timeout)
            .map_err(|e| kafka("init_transactions", e, &txn))?;
        let group: BaseConsumer = base
            .clone()
            .set("group.id", &txn)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| OutputError::Kafka {
                what: "create the alerts progress reader",
                message: crate::secrets::kafka_error_text(&e),
            })?;
        Ok(AlertsProducer {
            producer,
            group,
            topic,
            input_topic,
            partitions,
            transactional_id: txn,
            timeout,
        })
    }

    /// The newest checkpoint whose alerts transaction committed, from the group's committed
    /// offsets' metadata; `None` if none ever did.
    pub fn committed(&self) -> Result<Option<CheckpointId>, OutputError> {
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            tpl.add_partition(&self.input_topic, p.0);
        }
        let got = self
            .group
            .committed_offsets(tpl, self.timeout)
            .map_err(|e| kafka("read committed alert progress", e, &self.transactional_id))?;
        let mut newest: Option<CheckpointId> = None;
        for el in got.elements() {
            if let Some(id) = el
                .metadata()
                .strip_prefix(METADATA_PREFIX)
                .and_then(|s| s.parse::<u64>().ok())
            {
                newest = newest.max(Some(CheckpointId(id)));
            }
        }
        Ok(newest)
    }

    /// Opens a transaction, produces `alerts` and adds the progress of checkpoint `through`
    /// (its input offsets). Nothing is visible until [`AlertsProducer::commit`].
    pub fn stage(
        &self,
        alerts: &[Alert],
        through: CheckpointId,
        offsets: &BTreeMap<PartitionId, Offset>,
    ) -> Result<(), OutputError> {
        let txn = &self.transactional_id;
        self.producer
            .begin_transaction()
            .map_err(|e| kafka("begin_transaction", e, txn))?;
        for a in alerts {
            let payload = serde_json::to_vec(a).expect("an alert serializes");
            let id = a.alert_id.hyphenated().to_string();
            let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "recon-alert-id",
                value: Some(id.as_bytes()),
            });
            let mut record = BaseRecord::to(&self.topic)
                .key(a.trip_id.as_bytes())
                .payload(&payload)
                .headers(headers);
            // A full local queue is the only retriable send error: wait for room, bounded.
            let deadline = std::time::Instant::now() + self.timeout;
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if std::time::Instant::now() < deadline =>
                    {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(kafka("produce an alert", e, txn)),
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.input_topic, p.0, KOffset::Offset(o.0))
                .map_err(|e| kafka("offsets", e, txn))?;
            if let Some(mut el) = tpl.find_partition(&self.input_topic, p.0) {
                el.set_metadata(format!("{METADATA_PREFIX}{}", through.0));
            }
        }
        let meta = self
            .group
            .group_metadata()
            .ok_or_else(|| OutputError::Kafka {
                what: "group metadata",
                message: "the progress reader has no group metadata".into(),
            })?;
        self.producer
            .send_offsets_to_transaction(&tpl, &meta, self.timeout)
            .map_err(|e| kafka("send_offsets_to_transaction", e, txn))
    }

    /// Commits the staged transaction; on failure the caller stops and recovery decides.
    pub fn commit(&self) -> Result<(), OutputError> {
        self.producer
            .commit_transaction(self.timeout)
            .map_err(|e| kafka("commit_transaction", e, &self.transactional_id))
    }
}

async fn create_topic(
    base: &ClientConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), OutputError> {
    let admin: AdminClient<DefaultClientContext> =
        base.create().map_err(|e| OutputError::Kafka {
            what: "create an admin client",
            message: crate::secrets::kafka_error_text(&e),
        })?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let res = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(-1),
            )],
            &opts,
        )
        .await
        .map_err(|e| OutputError::Kafka {
            what: "create the alerts topic",
            message: e.to_string(),
        })?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(OutputError::Kafka {
                    what: "create the alerts topic",
                    message: format!("{t}: {code}"),
                });
            }
        }
    }
    Ok(())
}
