//! Which tasks this worker owns, from Kafka's group coordinator.
//!
//! The workers of a job are one consumer group subscribed to the tasks topic, whose K
//! partitions stand for the K tasks: the coordinator's assignment of partition `t` is this
//! worker's ownership of task `t`. Nothing is ever produced to that topic; the consumer only
//! keeps the membership alive. The rebalance callbacks do no I/O: they post a [`Change`] and
//! return. Membership is not a fence (a worker cut off from the coordinator keeps running until
//! it hears): the task's generation claim is.
//!
//! **A lost membership is probed, not only awaited.** librdkafka does not always call the
//! rebalance callback when the coordinator dropped the member (found by the fleet chaos soak:
//! after a broker stop/start a worker kept tasks 0-2 for five minutes while the coordinator gave
//! them to two others; each restarted the task after being fenced and fenced the other back, and
//! nothing was committed). So every [`PROBE_EVERY`] the consumer commits offset 0 of its assigned
//! tasks-topic partitions (the topic carries no data): a commit answered "unknown member" or
//! "fenced member epoch" means the coordinator no longer counts this worker, and its tasks are
//! revoked here, once, until librdkafka rebalances again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::Config;
use crate::config::fleet::GroupProtocol;

use super::FleetError;
use super::layout::Current;

/// A change of this worker's tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The coordinator gave these tasks.
    Assigned(Vec<u32>),
    /// The coordinator took these tasks (or the membership was lost).
    Revoked(Vec<u32>),
}

/// How long one poll of the membership consumer waits.
const POLL: Duration = Duration::from_millis(200);
/// How often the membership is probed with a commit (see the module documentation).
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Time allowed for creating or describing the tasks topic.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The tasks topic of `cfg` in the job's shape: after a reshard, a topic of its own (one
/// partition per task of the new K), named with the reshard's suffix.
pub fn tasks_topic(cfg: &Config, shape: &Current) -> String {
    if cfg.fleet.tasks_topic.is_empty() {
        format!("recon-tasks.{}{}", cfg.job_id, shape.suffix())
    } else {
        format!("{}{}", cfg.fleet.tasks_topic, shape.suffix())
    }
}

struct Ctx {
    topic: String,
    tx: UnboundedSender<Change>,
    /// A probe found the membership lost and revoked the tasks; a rebalance clears it.
    lost: AtomicBool,
}

/// Whether a commit's answer says the coordinator no longer counts this member.
fn membership_lost(result: &KafkaResult<()>) -> bool {
    matches!(
        result,
        Err(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::FencedMemberEpoch
        ))
    )
}

impl Ctx {
    fn tasks(&self, tpl: &rdkafka::TopicPartitionList) -> Vec<u32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition() as u32)
            .collect()
    }
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.lost.store(false, Ordering::Relaxed);
        // Revocations before the coordinator hands the tasks on: stop them first.
        if let Rebalance::Revoke(tpl) = rebalance {
            let _ = self.tx.send(Change::Revoked(self.tasks(tpl)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let _ = self.tx.send(Change::Assigned(self.tasks(tpl)));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "fleet rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &rdkafka::TopicPartitionList) {
        if membership_lost(&result) && !self.lost.swap(true, Ordering::Relaxed) {
            let tasks = self.tasks(offsets);
            tracing::warn!(tasks = ?tasks, error = ?result, "the group coordinator no longer counts this worker (no rebalance was announced): its tasks stop until it is given tasks again");
            crate::telemetry::worker_rebalance("lost", tasks.len());
            let _ = self.tx.send(Change::Revoked(tasks));
        }
    }
}

/// Commits offset 0 of every assigned tasks-topic partition, asynchronously (the answer comes
/// to [`Ctx::commit_callback`] in a later poll).
fn probe(consumer: &BaseConsumer<Ctx>) {
    let Ok(assigned) = consumer.assignment() else {
        return;
    };
    if assigned.count() == 0 {
        return;
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for e in assigned.elements() {
        let _ = tpl.add_partition_offset(e.topic(), e.partition(), rdkafka::Offset::Offset(0));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "fleet membership probe not sent");
    }
}

/// The membership consumer's thread; stopping it leaves the group (its tasks move at once).
pub struct Membership {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Membership {
    /// Makes sure the tasks topic has K partitions, joins the group, and posts changes to `tx`.
    pub async fn start(
        cfg: &Config,
        shape: &Current,
        tx: UnboundedSender<Change>,
    ) -> Result<Membership, FleetError> {
        let topic = tasks_topic(cfg, shape);
        ensure_topic(cfg, &topic).await?;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cfg.source.brokers)
            .set(
                "group.id",
                format!("recon-fleet.{}{}", cfg.job_id, shape.suffix()),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest");
        match cfg.fleet.group_protocol {
            GroupProtocol::Consumer => {
                c.set("group.protocol", "consumer");
            }
            GroupProtocol::Classic => {
                c.set("partition.assignment.strategy", "cooperative-sticky")
                    .set(
                        "session.timeout.ms",
                        cfg.fleet.session_timeout_ms.to_string(),
                    )
                    .set(
                        "heartbeat.interval.ms",
                        (cfg.fleet.session_timeout_ms / 4).max(500).to_string(),
                    );
            }
        }
        // Security settings of the source apply to the group too (SASL, TLS).
        for (k, v) in &cfg.source.properties {
            if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                c.set(k, v);
            }
        }
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(Ctx {
                topic: topic.clone(),
                tx,
                lost: AtomicBool::new(false),
            })
            .map_err(|e| FleetError::Membership(crate::secrets::kafka_error_text(&e)))?;
        consumer
            .subscribe(&[&topic])
            .map_err(|e| FleetError::Membership(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("recon-fleet-membership".into())
            .spawn(move || {
                let mut next_probe = Instant::now() + PROBE_EVERY;
                while !flag.load(Ordering::Relaxed) {
                    if let Some(Err(e)) = consumer.poll(POLL) {
                        tracing::warn!(error = %e, "fleet membership poll");
                    }
                    if Instant::now() >= next_probe {
                        next_probe = Instant::now() + PROBE_EVERY;
                        probe(&consumer);
                    }
                }
                // Leave the group: the coordinator moves this worker's tasks now rather than
                // after the session timeout.
                consumer.unsubscribe();
                for _ in 0..10 {
                    consumer.poll(Duration::from_millis(50));
                }
            })
            .map_err(|e| FleetError::Membership(format!("cannot start its thread: {e}")))?;
        Ok(Membership {
            stop,
            thread: Some(thread),
        })
    }

    /// Leaves the group.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates the tasks topic with K partitions, or checks the one there has K.
async fn ensure_topic(cfg: &Config, topic: &str) -> Result<(), FleetError> {
    let k = cfg.fleet.tasks as i32;
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", &cfg.source.brokers);
    for (key, v) in &cfg.source.properties {
        if key.starts_with("security.") || key.starts_with("sasl.") || key.starts_with("ssl.") {
            base.set(key, v);
        }
    }
    let admin: AdminClient<DefaultClientContext> = base
        .create()
        .map_err(|e| FleetError::Membership(crate::secrets::kafka_error_text(&e)))?;
    let opts = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let res = admin
        .create_topics(
            &[NewTopic::new(topic, k, TopicReplication::Fixed(-1))],
            &opts,
        )
        .await
        .map_err(|e| FleetError::Membership(format!("create the tasks topic {topic}: {e}")))?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(FleetError::Membership(format!(
                    "create the tasks topic {t}: {code}"
                )));
            }
        }
    }
    // A topic another worker has just created may not list its partitions yet (found by the
    // chaos harness: three workers starting together, one read 0 partitions and stopped for an
    // operator). Only a definite partition count is judged; until then, ask again.
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    let found = loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5));
        let n = md.ok().and_then(|md| {
            md.topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
        });
        match n {
            Some(n) if n > 0 => break n,
            _ if std::time::Instant::now() >= deadline => {
                return Err(FleetError::Membership(format!(
                    "the tasks topic {topic} lists no partitions within {ADMIN_TIMEOUT:?}"
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    if found != k {
        return Err(FleetError::Shape(super::layout::ShapeRefusal::Unreadable {
            path: format!("Kafka topic {topic}"),
            message: format!(
                "it has {found} partitions but fleet.tasks = {k}: each partition stands for one task. Delete the topic (it holds no data) or name another with fleet.tasks_topic"
            ),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an answer that says the coordinator dropped the member stops the tasks: an
    /// unreachable broker, a rebalance in progress or a stale epoch (the client is catching up)
    /// do not.
    #[test]
    fn only_a_dropped_membership_counts_as_lost() {
        let commit = |c| Err(KafkaError::ConsumerCommit(c));
        assert!(membership_lost(&commit(RDKafkaErrorCode::UnknownMemberId)));
        assert!(membership_lost(&commit(
            RDKafkaErrorCode::FencedMemberEpoch
        )));
        for c in [
            RDKafkaErrorCode::StaleMemberEpoch,
            RDKafkaErrorCode::RebalanceInProgress,
            RDKafkaErrorCode::IllegalGeneration,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert!(!membership_lost(&commit(c)), "{c:?}");
        }
        assert!(!membership_lost(&Ok(())));
    }
}
