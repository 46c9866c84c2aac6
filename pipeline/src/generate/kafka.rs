//! Publishing to Kafka: topic creation and a fast, bounded, idempotent producer.
//!
//! The producer is a librdkafka `BaseProducer` with `enable.idempotence=true` and `acks=all`, so
//! librdkafka's own retries never duplicate or reorder a record within a partition: the only
//! duplicates on the topic are the ones the plan injects on purpose. Records are handed over
//! without awaiting each one; librdkafka's queue (`queue.buffering.max.messages`) is the bound on
//! records in flight, and when it is full [`Publisher::send`] serves delivery reports until room
//! frees up, for at most `message.timeout.ms`. Delivery reports are counted; any failure fails
//! the run at [`Publisher::flush`], because the truth would then promise records the topic lacks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::config::PublishConfig;
use super::plan::Record;

/// Delivery reports are served every this many sends, so callbacks never pile up.
const POLL_EVERY_SENDS: u64 = 1_024;
/// Deadline of metadata and admin requests.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// librdkafka's per-record delivery deadline (`message.timeout.ms`), and so the longest
/// [`Publisher::send`] waits for room in a full queue.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(300);

/// The librdkafka settings of the generator's producer, every one passed explicitly.
pub fn producer_config(cfg: &PublishConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", "recon-generate")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Idempotence keeps order with up to 5 requests in flight per connection.
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", cfg.linger.as_millis().to_string())
        .set("batch.size", cfg.batch_size_bytes.to_string())
        .set("batch.num.messages", "100000")
        .set("compression.type", &cfg.compression)
        .set(
            "queue.buffering.max.messages",
            cfg.queue_messages_max.to_string(),
        )
        .set("queue.buffering.max.kbytes", "1048576")
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        )
        // The Java client's partitioner: the same key lands on the same partition whichever
        // client produces it.
        .set("partitioner", "murmur2_random");
    c
}

/// Makes sure `cfg.topic` exists, creating it with `cfg.partitions` if allowed; returns its
/// actual partition count. An existing topic is kept as is.
pub async fn ensure_topic(cfg: &PublishConfig) -> anyhow::Result<i32> {
    if cfg.create_topic {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .create()
            .context("creating the Kafka admin client")?;
        let topic = NewTopic::new(
            &cfg.topic,
            cfg.partitions,
            TopicReplication::Fixed(cfg.replication_factor),
        );
        let opts = AdminOptions::new()
            .request_timeout(Some(ADMIN_TIMEOUT))
            .operation_timeout(Some(ADMIN_TIMEOUT));
        let results = admin.create_topics([&topic], &opts).await.with_context(|| {
            format!("creating topic {} on {} (on the librdkafka mock cluster, create it with MockCluster::create_topic and pass --no-create-topic)", cfg.topic, cfg.brokers)
        })?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(topic = %cfg.topic, partitions = cfg.partitions, "created topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => bail!("creating topic {name}: {code}"),
            }
        }
    }
    let brokers = cfg.brokers.clone();
    let topic = cfg.topic.clone();
    tokio::task::spawn_blocking(move || topic_partitions(&brokers, &topic)).await?
}

/// The partition count of `topic`, read from the cluster's metadata.
pub fn topic_partitions(brokers: &str, topic: &str) -> anyhow::Result<i32> {
    let probe: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .context("creating a Kafka client for metadata")?;
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    // A freshly created topic can take a moment to appear in metadata: retry until the deadline.
    loop {
        let md = probe
            .client()
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .context("fetching topic metadata")?;
        if let Some(t) = md.topics().iter().find(|t| t.name() == topic)
            && t.error().is_none()
            && !t.partitions().is_empty()
        {
            return Ok(i32::try_from(t.partitions().len())?);
        }
        ensure!(
            Instant::now() < deadline,
            "topic {topic} does not exist on {brokers} (create it or drop --no-create-topic)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Counts delivery reports.
#[derive(Default)]
pub struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock()
                    && first.is_none()
                {
                    *first = Some(e.to_string());
                }
            }
        }
    }
}

/// Acknowledgements at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryStats {
    /// Records the broker acknowledged.
    pub delivered: u64,
    /// Records that failed for good.
    pub failed: u64,
    /// Bytes of keys and payloads handed to the producer.
    pub bytes: u64,
}

/// A producer bound to one topic.
pub struct Publisher {
    producer: BaseProducer<DeliveryCounter>,
    topic: String,
    sent: u64,
    bytes: u64,
}

impl Publisher {
    /// Creates the producer (connections are made lazily by librdkafka).
    pub fn connect(cfg: &PublishConfig) -> anyhow::Result<Publisher> {
        let producer = producer_config(cfg)
            .create_with_context(DeliveryCounter::default())
            .with_context(|| format!("creating the Kafka producer for {}", cfg.brokers))?;
        Ok(Publisher {
            producer,
            topic: cfg.topic.clone(),
            sent: 0,
            bytes: 0,
        })
    }

    /// Hands `record` to librdkafka; while its queue is full, serves delivery reports instead.
    pub fn send(&mut self, record: &Record) -> anyhow::Result<()> {
        let mut base: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.topic).payload(&record.payload[..]);
        if let Some(key) = &record.key {
            base = base.key(&key[..]);
        }
        if let Some(p) = record.partition_hint {
            base = base.partition(p);
        }
        let mut waited_since: Option<Instant> = None;
        loop {
            match self.producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    let since = *waited_since.get_or_insert_with(Instant::now);
                    ensure!(
                        since.elapsed() < MESSAGE_TIMEOUT,
                        "the producer queue stayed full for {MESSAGE_TIMEOUT:?}: is the broker at {} reachable?",
                        self.brokers_hint()
                    );
                    self.producer.poll(Duration::from_millis(5));
                    base = back;
                }
                Err((e, _)) => return Err(e).context("handing a record to the Kafka producer"),
            }
        }
        self.sent += 1;
        self.bytes += (record.payload.len() + record.key.as_ref().map_or(0, Vec::len)) as u64;
        if self.sent.is_multiple_of(POLL_EVERY_SENDS) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Serves delivery reports for up to `timeout` (used as the rate limiter's sleep).
    pub fn poll(&self, timeout: Duration) {
        self.producer.poll(timeout);
    }

    /// Records acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.producer.context().delivered.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for every record to be acknowledged; fails if any was not.
    pub fn flush(self, timeout: Duration) -> anyhow::Result<DeliveryStats> {
        self.producer
            .flush(timeout)
            .context("waiting for the broker to acknowledge every record")?;
        let ctx = self.producer.context();
        let stats = DeliveryStats {
            delivered: ctx.delivered.load(Ordering::Relaxed),
            failed: ctx.failed.load(Ordering::Relaxed),
            bytes: self.bytes,
        };
        if stats.failed > 0 || stats.delivered != self.sent {
            let first = ctx
                .first_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default();
            bail!(
                "{} of {} records were not delivered (first error: {first}); the truth lists them, so this run cannot be verified",
                self.sent - stats.delivered,
                self.sent
            );
        }
        Ok(stats)
    }

    fn brokers_hint(&self) -> String {
        self.producer
            .client()
            .fetch_metadata(None, Duration::from_secs(1))
            .map_or_else(
                |e| format!("(unreachable: {e})"),
                |md| {
                    md.brokers()
                        .iter()
                        .map(|b| format!("{}:{}", b.host(), b.port()))
                        .collect::<Vec<_>>()
                        .join(",")
                },
            )
    }
}
