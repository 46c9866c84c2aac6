//! Topic administration for scenarios: create, add partitions, truncate, delete, watermarks.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?)
}

fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let a = admin(brokers)?;
    for r in a
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &opts(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Grows `topic` to `total` partitions.
pub async fn add_partitions(brokers: &str, topic: &str, total: usize) -> anyhow::Result<()> {
    let a = admin(brokers)?;
    for r in a
        .create_partitions(&[NewPartitions::new(topic, total)], &opts())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("adding partitions to {t}: {e}"))?;
    }
    Ok(())
}

/// Deletes `topic` (best effort is not enough for recreation: the caller waits for it to be gone).
pub async fn delete_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let a = admin(brokers)?;
    for r in a.delete_topics(&[topic], &opts()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("deleting topic {t}: {e}"))?;
    }
    Ok(())
}

/// Deletes every record before `before[p]` in each partition `p` (what retention does).
pub async fn delete_records(
    brokers: &str,
    topic: &str,
    before: &BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    let a = admin(brokers)?;
    let mut tpl = TopicPartitionList::new();
    for (p, o) in before {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    let out = a.delete_records(&tpl, &opts()).await?;
    for e in out.elements() {
        ensure!(
            e.error().is_ok(),
            "deleting records of {topic}/{}: {:?}",
            e.partition(),
            e.error()
        );
    }
    Ok(())
}

/// `(low, high)` watermarks per partition.
pub fn watermarks(brokers: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "recon-chaos-watermarks")
        .create()?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(15))
        .context("topic metadata")?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("topic {topic} not in metadata"))?;
    let mut out = BTreeMap::new();
    for p in t.partitions() {
        let w = c.fetch_watermarks(topic, p.id(), Duration::from_secs(15))?;
        out.insert(p.id(), w);
    }
    Ok(out)
}

/// Whether `topic` exists.
pub fn exists(brokers: &str, topic: &str) -> anyhow::Result<bool> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(15))?;
    Ok(md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}
