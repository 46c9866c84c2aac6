//! Topic administration for the tests that delete and recreate an input topic.

use std::time::{Duration, Instant};

pub fn admin(brokers: &str) -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client")
}

pub fn admin_opts() -> rdkafka::admin::AdminOptions {
    rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)))
}

/// Creates the topic with `partitions` partitions; while a deletion of the same name is still in progress the broker
/// refuses, so this retries until `deadline`.
pub async fn create_topic_retrying(
    brokers: &str,
    topic: &str,
    partitions: i32,
    deadline: Duration,
) {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let start = Instant::now();
    loop {
        let res = admin(brokers)
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &admin_opts(),
            )
            .await
            .expect("create_topics request");
        match res.into_iter().next().expect("one result") {
            Ok(_) => return,
            Err((_, e)) if start.elapsed() < deadline => {
                eprintln!("create {topic}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err((_, e)) => panic!("topic {topic} not created within {deadline:?}: {e}"),
        }
    }
}

/// Deletes the topic and waits (bounded) until the broker no longer lists it.
pub async fn delete_topic(brokers: &str, topic: &str) {
    for r in admin(brokers)
        .delete_topics(&[topic], &admin_opts())
        .await
        .expect("delete_topics request")
    {
        r.expect("topic deleted");
    }
    crate::wait_until(
        "the deleted topic to disappear from metadata",
        Duration::from_secs(60),
        || async { partitions_of(brokers, topic).is_empty().then_some(()) },
    )
    .await;
}

/// `(partition, high watermark)` of every partition of `topic` (empty when it does not exist).
pub fn partitions_of(brokers: &str, topic: &str) -> Vec<(i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let Some(t) = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        return Vec::new();
    };
    t.partitions()
        .iter()
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            (p.id(), high)
        })
        .collect()
}
