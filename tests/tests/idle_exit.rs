//! `run --exit-when-idle-ms` must not stop while a partition still has records to read (issue
//! 13, finding 8: at 1,000 partitions the job exited 0 as "idle" with 17,501 events unread,
//! because the consumer delivered nothing for longer than the idle span while it queried
//! watermarks). Against the real broker: a topic of 200 partitions with a backlog, and the
//! shortest idle span, so that any pause in delivery (the first fetch of 200 partitions, a
//! barrier) would end the run if "idle" meant only "nothing arrived lately". The run must read
//! every record of every partition before it exits, and land each exactly once.

use std::time::Duration;

use recon_pipeline::config::Config;
use recon_pipeline::ids::PartitionId;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{checkpoint, demo, lakehouse};
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::services_or_skip;
use recon_tests::traffic::{create_topic, default_traffic};

const PARTITIONS: i32 = 200;

/// High watermark of every partition of `topic`, with one batched ListOffsets request.
fn highs(brokers: &str, topic: &str) -> Vec<(i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::End)
            .expect("partition");
    }
    let ends = c
        .offsets_for_times(tpl, Duration::from_secs(20))
        .expect("partition ends");
    ends.elements_for_topic(topic)
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().expect("an offset")))
        .collect()
}

#[test]
fn the_idle_exit_waits_until_every_partition_is_read() {
    let Some(s) = services_or_skip("the_idle_exit_waits_until_every_partition_is_read") else {
        return;
    };
    let brokers = s.kafka_bootstrap.clone();
    let setup = JobSetup::new(&s, "idle_exit", 1_000);
    let cfg = Config::load(Some(&setup.config)).expect("config");
    create_topic(&brokers, &setup.topic, PARTITIONS);
    let seed = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
    let mut expected = Expected::default();
    demo::publish(
        &brokers,
        &setup.topic,
        &default_traffic(&setup.topic, 4_000, seed, PARTITIONS),
        &mut expected,
    )
    .expect("publish");
    let ends = highs(&brokers, &setup.topic);
    let with_records = ends.iter().filter(|(_, h)| *h > 0).count();
    assert!(
        with_records > PARTITIONS as usize / 2,
        "precondition: most partitions hold records ({with_records} of {PARTITIONS})"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let child = setup.spawn(1, &[], &log);
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(120));
    assert!(
        status.success() && out.contains("stopped cleanly"),
        "run:\n{out}"
    );
    assert!(
        !out.contains("PartitionEOF"),
        "reaching the end of a partition is no error (issue 13, finding 9):\n{out}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let head = rt.block_on(async {
        let (store, prefix) = checkpoint::store::open(&cfg).expect("checkpoint store");
        checkpoint::log::CheckpointLog::new(store, &prefix, cfg.job_id.clone())
            .head()
            .await
            .expect("log")
            .expect("a checkpoint")
    });
    let unread: Vec<(i32, i64, i64)> = ends
        .iter()
        .filter_map(|(p, high)| {
            let end = head
                .manifest
                .partitions
                .get(&PartitionId(*p))
                .map_or(0, |c| c.end.0);
            (end < *high).then_some((*p, end, *high))
        })
        .collect();
    assert!(
        unread.is_empty(),
        "the idle exit left {} partitions unread (partition, read up to, end): {:?}",
        unread.len(),
        &unread[..unread.len().min(10)]
    );
    let rec = rt.block_on(async {
        let catalog = lakehouse::open_catalog(&cfg).await.expect("catalog");
        reconcile::check(catalog.as_ref(), &cfg, &expected)
            .await
            .expect("reconcile")
    });
    assert!(rec.is_clean(), "{rec}");
}
