//! Test traffic and topics for the real-service tests.

use clap::Parser;
use recon_pipeline::generate::{self, GenerateArgs};
use std::time::Duration;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    args: GenerateArgs,
}

/// The generator's records for `trips` trips of `seed` on `partitions`, plus `extra` flags.
fn plan(
    topic: &str,
    trips: u64,
    seed: u64,
    partitions: i32,
    extra: &[&str],
) -> Vec<generate::Record> {
    let (trips, seed, partitions) = (trips.to_string(), seed.to_string(), partitions.to_string());
    let mut argv = vec![
        "generate",
        "--topic",
        topic,
        "--trips",
        &trips,
        "--seed",
        &seed,
        "--partitions",
        &partitions,
    ];
    argv.extend_from_slice(extra);
    let args = Wrap::parse_from(argv).args;
    let (traffic, _, _) = args.resolve().expect("generator args");
    generate::plan(&traffic).collect()
}

/// The generator's records for `trips` trips with every kind of noise switched on.
pub fn traffic(topic: &str, trips: u64, seed: u64, partitions: i32) -> Vec<generate::Record> {
    plan(
        topic,
        trips,
        seed,
        partitions,
        &[
            "--duplicate-rate",
            "0.03",
            "--conflict-rate",
            "0.005",
            "--out-of-order-rate",
            "0.05",
            "--poison-rate",
            "0.01",
        ],
    )
}

/// The generator's records for `trips` trips with its default noise.
pub fn default_traffic(
    topic: &str,
    trips: u64,
    seed: u64,
    partitions: i32,
) -> Vec<generate::Record> {
    plan(topic, trips, seed, partitions, &[])
}

/// Creates `topic` with `partitions` partitions (replication 1) on `brokers`; panics on failure.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        ))
        .expect("create topic");
    for r in res {
        r.expect("topic created");
    }
}

/// One record read back from a topic.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Reads every committed record of `topic` (`read_committed`), partition by partition in
/// offset order, until each partition reports its end; panics after `deadline`.
pub fn read_topic(brokers: &str, topic: &str, deadline: Duration) -> Vec<ReadRecord> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("read-{topic}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    assert!(!parts.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let start = std::time::Instant::now();
    let mut at_end = std::collections::HashSet::new();
    let mut out = Vec::new();
    while at_end.len() < parts.len() {
        assert!(
            start.elapsed() < deadline,
            "reading {topic}: only {} of {} partitions reached their end within {deadline:?}",
            at_end.len(),
            parts.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}
