//! Publishing end to end against librdkafka's in-process mock cluster: every planned record is
//! on the topic, keyed records of a trip share a partition, and the truth matches what was read.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use recon_schemas::decode::{Limits, decode};

use super::config::{Ppm, PublishConfig};
use super::*;

const TOPIC: &str = "recon.test-events";
const PARTITIONS: i32 = 4;

fn publish_config(brokers: String) -> PublishConfig {
    PublishConfig {
        brokers,
        topic: TOPIC.into(),
        partitions: PARTITIONS,
        replication_factor: 1,
        create_topic: false,
        rate_per_s: None,
        linger: Duration::from_millis(5),
        batch_size_bytes: 1_000_000,
        compression: "lz4".into(),
        queue_messages_max: 1_000,
        flush_timeout: Duration::from_secs(30),
    }
}

/// Reads every partition from the beginning until `expected` records arrived or 30 s passed.
fn read_back(brokers: &str, expected: usize) -> Vec<(i32, Option<Vec<u8>>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "generate-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push((
                m.partition(),
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

#[test]
fn publishes_every_record_to_the_mock_cluster() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    assert_eq!(
        kafka::topic_partitions(&brokers, TOPIC).unwrap(),
        PARTITIONS
    );

    let traffic = TrafficConfig {
        trips: 1_000,
        partitions: PARTITIONS,
        duplicate: Ppm::new(20_000).unwrap(),
        poison: Ppm::new(10_000).unwrap(),
        ..TrafficConfig::default()
    };
    let planned: Vec<Record> = plan(&traffic).collect();
    // A small producer queue forces the queue-full path many times over.
    let published = publish_plan(
        &traffic,
        &publish_config(brokers.clone()),
        TruthRecorder::new("mock"),
        false,
    )
    .unwrap();
    assert_eq!(published.tally.records(), planned.len() as u64);
    assert_eq!(published.delivery.delivered, planned.len() as u64);
    assert!(planned.len() > 4_000, "{} records", planned.len());

    let read = read_back(&brokers, planned.len());
    assert_eq!(
        read.len(),
        planned.len(),
        "every record is on the topic, none twice"
    );
    let sent: HashMap<Vec<u8>, usize> = planned.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.payload.clone()).or_default() += 1;
        m
    });
    let got: HashMap<Vec<u8>, usize> = read.iter().fold(HashMap::new(), |mut m, (_, _, p)| {
        *m.entry(p.clone()).or_default() += 1;
        m
    });
    assert!(sent == got, "the topic holds exactly the planned payloads");

    // One trip, one partition: the order the pipeline needs for first-seen-wins.
    let mut trip_partition: HashMap<Vec<u8>, i32> = HashMap::new();
    for (partition, key, _) in &read {
        if let Some(k) = key {
            let p = *trip_partition.entry(k.clone()).or_insert(*partition);
            assert_eq!(
                p,
                *partition,
                "trip {} spans partitions",
                String::from_utf8_lossy(k)
            );
        }
    }
    let valid: HashSet<uuid::Uuid> = read
        .iter()
        .filter_map(|(_, k, p)| decode(k.as_deref(), p, &Limits::default()).ok())
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        valid.len() as u64,
        published.truth.events,
        "distinct valid events = truth events"
    );
}

#[test]
fn rate_limit_paces_publishing() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let traffic = TrafficConfig {
        trips: 1_000,
        events_max: std::num::NonZeroU64::new(1_200),
        partitions: PARTITIONS,
        ..TrafficConfig::default()
    };
    let publish = PublishConfig {
        rate_per_s: std::num::NonZeroU64::new(2_000),
        ..publish_config(cluster.bootstrap_servers())
    };
    let published = publish_plan(&traffic, &publish, TruthRecorder::new("rate"), false).unwrap();
    assert_eq!(published.delivery.delivered, 1_200);
    // 1,200 records at 2,000/s with a 40-record burst: at least ~0.58 s.
    assert!(
        published.elapsed >= Duration::from_millis(550),
        "{:?}",
        published.elapsed
    );
}
