//! The running source: the consumer thread that polls Kafka and hands batches to the job, the
//! monitor thread beside it ([`super::monitor`]), and the [`InputGuard`] the barrier asks
//! before a checkpoint becomes durable.
//!
//! Caller sequence: [`Source::open`] (before recovery claims anything: it learns the topic's
//! id) -> compare [`Source::topic_id`] with the id the newest checkpoint recorded ->
//! [`Source::start`] -> [`Source::next`] until the job stops; at every barrier,
//! [`InputGuard::confirm`] before the log entry is written -> [`Source::stop`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::mpsc;

use super::monitor::{self, Identity, Shared};
use super::security::{SECURITY_HINT, SecurityWatch, is_security_error};
use super::topic_id::{self, Described, TopicId};
use super::{Input, Record, SourceError, client_config};
use crate::config::{RawSource, StartFrom};
use crate::ids::{Offset, PartitionId};

/// Longest wait for the topic id at start and at a barrier.
const TOPIC_ID_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the consumer thread publishes its positions and looks at the monitor's requests.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Confirms, before a checkpoint becomes durable, that the topic is still the one the job
/// started on (same topic id). Cheap to clone.
#[derive(Clone)]
pub struct InputGuard {
    shared: Arc<Shared>,
    client: Arc<BaseConsumer<SecurityWatch>>,
}

impl InputGuard {
    /// The topic id every record consumed so far came from; `None` when the broker reports no
    /// ids (then only the start-time record check protects against a recreated topic).
    pub fn topic_id(&self) -> Option<TopicId> {
        self.shared
            .identity
            .lock()
            .ok()
            .and_then(|i| i.expected.clone())
    }

    /// Ok when every record received up to `received_until` (when the job got its newest
    /// batch; `None`: none yet) is known to come from the topic the job started on: the monitor
    /// or an earlier call confirmed the id after that instant, or one `DescribeTopics` request
    /// now does. Fails with [`SourceError::NotTheSavedInput`] (operator needed) when the topic
    /// was deleted or recreated, [`SourceError::Unreachable`] (transient) when nobody answers.
    pub async fn confirm(&self, received_until: Option<Instant>) -> Result<(), SourceError> {
        if let Some(e) = self.shared.take_fault() {
            // A stop the monitor found (topic deleted or recreated, stalled).
            return Err(e);
        }
        let covered = {
            let i = self.shared.identity.lock().map_err(|_| poisoned())?;
            if i.expected.is_none() {
                return Ok(());
            }
            match (received_until, i.verified_at) {
                (None, _) => true,
                (Some(r), Some(v)) => v >= r,
                (Some(_), None) => false,
            }
        };
        if covered {
            return Ok(());
        }
        let (shared, client) = (self.shared.clone(), self.client.clone());
        tokio::task::spawn_blocking(move || confirm_now(&shared, &client, "barrier"))
            .await
            .map_err(|e| SourceError::Read {
                topic: self.shared.topic.clone(),
                message: format!("the topic id check panicked: {e}"),
            })?
    }
}

fn poisoned() -> SourceError {
    SourceError::Config("the topic identity lock was poisoned by a panic".into())
}

/// Asks now (twice at most, for a "no such topic" that may be a broker still loading).
/// `by` names the caller in the log line of a stop (`barrier`, `consumer`).
fn confirm_now(
    shared: &Shared,
    client: &BaseConsumer<SecurityWatch>,
    by: &str,
) -> Result<(), SourceError> {
    if shared
        .identity
        .lock()
        .map_err(|_| poisoned())?
        .expected
        .is_none()
    {
        return Ok(());
    }
    for _ in 0..monitor::MISSING_ANSWERS_MAX {
        let asked = Instant::now();
        let answer =
            topic_id::describe(client.client(), &shared.topic, TOPIC_ID_TIMEOUT).map_err(|e| {
                SourceError::Unreachable {
                    brokers: String::new(),
                    timeout: TOPIC_ID_TIMEOUT,
                    message: format!(
                        "{e}; the checkpoint was not written because the topic's identity could not be confirmed"
                    ),
                }
            })?;
        let mut i = shared.identity.lock().map_err(|_| poisoned())?;
        if let Some(stop) = monitor::judge_answer(&shared.topic, &mut i, asked, &answer) {
            tracing::error!(topic = %shared.topic, by, "{stop}");
            return Err(stop);
        }
        if i.verified_at.is_some_and(|v| v >= asked) {
            return Ok(());
        }
        drop(i);
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(SourceError::Unreachable {
        brokers: String::new(),
        timeout: TOPIC_ID_TIMEOUT,
        message: format!(
            "topic {:?}: its id could not be confirmed after {} answers; the checkpoint was not written",
            shared.topic,
            monitor::MISSING_ANSWERS_MAX
        ),
    })
}

/// The running source.
pub struct Source {
    cfg: RawSource,
    shared: Arc<Shared>,
    client: Arc<BaseConsumer<SecurityWatch>>,
    rx: Option<mpsc::Receiver<Result<Vec<Input>, SourceError>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Source {
    /// Connects a metadata client and learns the topic's id (blocking, bounded). Reads nothing.
    pub fn open(cfg: &RawSource, partitions: &[PartitionId]) -> Result<Source, SourceError> {
        let client: BaseConsumer<SecurityWatch> = client_config(cfg, "recon-monitor")
            .create_with_context(SecurityWatch::default())
            .map_err(|e| SourceError::Config(crate::secrets::kafka_error_text(&e)))?;
        let unreachable = |e: topic_id::DescribeFailed| SourceError::Unreachable {
            brokers: cfg.brokers.clone(),
            timeout: TOPIC_ID_TIMEOUT,
            message: e.to_string(),
        };
        let expected = if !topic_id::has_controller(&client, &cfg.topic, TOPIC_ID_TIMEOUT)
            .map_err(unreachable)?
        {
            // librdkafka's mock cluster (the demo): info, not a warning on every demo start.
            tracing::info!(topic = %cfg.topic, "the cluster names no controller to ask for topic ids (librdkafka's mock cluster?): a topic recreated while the job runs is detected only at the next start");
            None
        } else {
            match topic_id::describe(client.client(), &cfg.topic, TOPIC_ID_TIMEOUT) {
                Ok(Described::Id(id)) => Some(id),
                Ok(Described::Missing) => {
                    return Err(SourceError::NoTopic {
                        topic: cfg.topic.clone(),
                        brokers: cfg.brokers.clone(),
                    });
                }
                Ok(Described::Unsupported(why)) => {
                    tracing::warn!(topic = %cfg.topic, "the broker reports no topic ids ({why}): a topic recreated while the job runs is detected only at the next start");
                    None
                }
                Err(e) => return Err(unreachable(e)),
            }
        };
        let owned: Vec<i32> = partitions.iter().map(|p| p.0).collect();
        let shared = Arc::new(Shared {
            topic: cfg.topic.clone(),
            not_at_end: AtomicUsize::new(owned.len()),
            owned,
            positions: Mutex::new(BTreeMap::new()),
            at_end: Mutex::new(BTreeSet::new()),
            blocked_ms: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            fault: Mutex::new(None),
            recover: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            identity: Mutex::new(Identity {
                verified_at: expected.as_ref().map(|_| Instant::now()),
                expected,
                missing: 0,
            }),
        });
        Ok(Source {
            cfg: cfg.clone(),
            shared,
            client: Arc::new(client),
            rx: None,
            threads: Vec::new(),
        })
    }

    /// How long the consumer thread waited, in all, for the job to take a batch.
    pub fn blocked(&self) -> Duration {
        Duration::from_millis(self.shared.blocked_ms.load(Ordering::Relaxed))
    }

    /// How long the consumer thread spent taking and decoding records, in all (from each
    /// batch's first record until the batch is complete).
    pub fn busy(&self) -> Duration {
        Duration::from_micros(self.shared.busy_us.load(Ordering::Relaxed))
    }

    /// The topic id found at [`Source::open`]; `None` when the broker reports none.
    pub fn topic_id(&self) -> Option<TopicId> {
        self.guard().topic_id()
    }

    /// What the barrier asks before a checkpoint becomes durable.
    pub fn guard(&self) -> InputGuard {
        InputGuard {
            shared: self.shared.clone(),
            client: self.client.clone(),
        }
    }

    /// Starts reading the owned partitions, each from its saved offset or `start_from`, and the
    /// monitor thread.
    pub fn start(
        &mut self,
        group: &str,
        saved: &BTreeMap<PartitionId, Offset>,
        limits: &recon_schemas::decode::Limits,
    ) -> Result<(), SourceError> {
        let mut starts = BTreeMap::new();
        let mut positions = BTreeMap::new();
        for p in &self.shared.owned {
            let off = match saved.get(&PartitionId(*p)) {
                Some(o) => {
                    positions.insert(*p, o.0);
                    KafkaOffset::Offset(o.0)
                }
                None => match self.cfg.start_from {
                    StartFrom::Earliest => KafkaOffset::Beginning,
                    StartFrom::Latest => KafkaOffset::End,
                },
            };
            starts.insert(*p, off);
        }
        if let Ok(mut p) = self.shared.positions.lock() {
            *p = positions;
        }
        let reader = Reader {
            cfg: self.cfg.clone(),
            group: group.to_string(),
            starts,
            shared: self.shared.clone(),
            limits: limits.clone(),
        };
        let consumer = reader.connect()?;
        let (tx, rx) = mpsc::channel(self.cfg.queue_batches_max);
        self.rx = Some(rx);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| SourceError::Config(format!("cannot start thread {name}: {e}")))
        };
        self.threads.push(spawn(
            "recon-source",
            Box::new(move || reader.run(consumer, tx)),
        )?);
        let (client, shared) = (self.client.clone(), self.shared.clone());
        let bound = Duration::from_millis(self.cfg.stall_timeout_ms);
        let from_earliest = self.cfg.start_from == StartFrom::Earliest;
        self.threads.push(spawn(
            "recon-source-monitor",
            Box::new(move || monitor::run(client, shared, bound, from_earliest)),
        )?);
        Ok(())
    }

    /// The next batch; `None` once the consumer thread has stopped.
    pub async fn next(&mut self) -> Option<Result<Vec<Input>, SourceError>> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Whether everything is read: every owned partition reached its end (end-of-partition
    /// event after its last record) and no batch waits for the job.
    pub fn drained(&self) -> bool {
        // The consumer thread lowers the count only after sending the batch before the event,
        // so reading it first and the queue second cannot miss a batch.
        let at_end = self.shared.not_at_end.load(Ordering::Acquire) == 0;
        at_end && self.rx.as_ref().is_none_or(|rx| rx.is_empty())
    }

    /// Owned partitions not yet at their end, for the idle exit's log line.
    pub fn partitions_not_at_end(&self) -> usize {
        self.shared.not_at_end.load(Ordering::Acquire)
    }

    /// Stops both threads and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(rx) = &mut self.rx {
            rx.close();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The consumer thread's configuration.
struct Reader {
    cfg: RawSource,
    group: String,
    starts: BTreeMap<i32, KafkaOffset>,
    shared: Arc<Shared>,
    /// Records are decoded here, beside the job's loop.
    limits: recon_schemas::decode::Limits,
}

impl Reader {
    /// A consumer assigned to every owned partition at its current position (the saved or
    /// start offset until a record was delivered).
    fn connect(&self) -> Result<BaseConsumer<SecurityWatch>, SourceError> {
        let consumer: BaseConsumer<SecurityWatch> = client_config(&self.cfg, &self.group)
            .create_with_context(SecurityWatch::default())
            .map_err(|e| SourceError::Config(crate::secrets::kafka_error_text(&e)))?;
        let positions = self
            .shared
            .positions
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        for (p, start) in &self.starts {
            let off = positions.get(p).map_or(*start, |o| KafkaOffset::Offset(*o));
            tpl.add_partition_offset(&self.cfg.topic, *p, off)
                .map_err(|e| SourceError::Config(e.to_string()))?;
        }
        consumer.assign(&tpl).map_err(|e| SourceError::Read {
            topic: self.cfg.topic.clone(),
            message: format!("assign: {e}"),
        })?;
        Ok(consumer)
    }

    fn fail(&self, tx: &mpsc::Sender<Result<Vec<Input>, SourceError>>, e: SourceError) {
        let _ = tx.blocking_send(Err(e));
    }

    fn run(
        self,
        mut consumer: BaseConsumer<SecurityWatch>,
        tx: mpsc::Sender<Result<Vec<Input>, SourceError>>,
    ) {
        let batch_max = self.cfg.poll_batch_records_max;
        let topic = self.cfg.topic.clone();
        let mut batch = Vec::with_capacity(batch_max);
        // Next offset per partition, from the records delivered.
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        // Partitions at their end; `eof_seen` holds the ones whose event came after the records
        // in `batch`, published once that batch is sent.
        let mut at_end: BTreeSet<i32> = BTreeSet::new();
        let mut eof_seen: BTreeSet<i32> = BTreeSet::new();
        let mut published = Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            if published.elapsed() >= PUBLISH_EVERY {
                published = Instant::now();
                if let Ok(mut p) = self.shared.positions.lock() {
                    p.extend(next.iter().map(|(k, v)| (*k, *v)));
                }
                if let Ok(mut a) = self.shared.at_end.lock() {
                    a.clone_from(&at_end);
                }
                if let Some(e) = self.shared.take_fault() {
                    return self.fail(&tx, e);
                }
                if self.shared.recover.swap(false, Ordering::Relaxed) {
                    // A new client: new connections, fetch sessions and partition state.
                    drop(consumer);
                    consumer = match self.connect() {
                        Ok(c) => c,
                        Err(e) => return self.fail(&tx, e),
                    };
                    at_end.clear();
                    self.shared
                        .not_at_end
                        .store(self.shared.owned.len(), Ordering::Release);
                    tracing::info!(topic = %topic, "Kafka consumer recreated at its current positions");
                }
            }
            // Block briefly for the first record, then drain what is already fetched.
            let mut wait = Duration::from_millis(50);
            let mut busy_since: Option<Instant> = None;
            while batch.len() < batch_max {
                match consumer.poll(wait) {
                    None => break,
                    Some(Ok(m)) => {
                        // Busy from the batch's first record on (the wait before it is the
                        // fetch's).
                        busy_since.get_or_insert_with(Instant::now);
                        let p = m.partition();
                        next.insert(p, m.offset() + 1);
                        eof_seen.remove(&p);
                        if at_end.remove(&p) {
                            self.shared.not_at_end.fetch_add(1, Ordering::AcqRel);
                        }
                        let record = Record {
                            partition: p,
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            payload: m.payload().map(<[u8]>::to_vec),
                            timestamp_ms: m.timestamp().to_millis(),
                        };
                        batch.push(Input::decode(record, &self.limits));
                    }
                    // The end of a partition: expected, not an error (issue 13, finding 9).
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        eof_seen.insert(p);
                    }
                    Some(Err(e)) => match self.on_error(&consumer, e) {
                        Some(stop) => return self.fail(&tx, stop),
                        None => break,
                    },
                }
                wait = Duration::ZERO;
            }
            if let Some(t) = busy_since {
                self.shared
                    .busy_us
                    .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            if !batch.is_empty() {
                let out = std::mem::replace(&mut batch, Vec::with_capacity(batch_max));
                let sending = Instant::now();
                let sent = tx.blocking_send(Ok(out));
                self.shared
                    .blocked_ms
                    .fetch_add(sending.elapsed().as_millis() as u64, Ordering::Relaxed);
                if sent.is_err() {
                    return;
                }
            }
            for p in std::mem::take(&mut eof_seen) {
                if self.shared.owned.contains(&p) && at_end.insert(p) {
                    self.shared.not_at_end.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// A consumer error: `Some` to stop with it, `None` to carry on (librdkafka retries).
    fn on_error(
        &self,
        consumer: &BaseConsumer<SecurityWatch>,
        e: KafkaError,
    ) -> Option<SourceError> {
        let topic = &self.cfg.topic;
        let code = e.rdkafka_error_code();
        if matches!(
            code,
            Some(RDKafkaErrorCode::OffsetOutOfRange)
                | Some(RDKafkaErrorCode::AutoOffsetReset)
                | Some(RDKafkaErrorCode::Fatal)
        ) {
            // A topic recreated under the job first looks like this (the new, still short
            // partition ends before the saved offset): name that cause when it is the one.
            if let Err(stop @ SourceError::NotTheSavedInput { .. }) =
                confirm_now(&self.shared, consumer, "consumer")
            {
                return Some(stop);
            }
            return Some(SourceError::Read {
                topic: topic.clone(),
                message: format!(
                    "{e}; a saved offset is no longer in the topic (retention?) — stopping rather than skipping data"
                ),
            });
        }
        // Credentials revoked or rotated while running: stop; a restart reads the current secret.
        if is_security_error(code) {
            let reason = consumer
                .context()
                .failure()
                .unwrap_or_else(|| e.to_string());
            return Some(SourceError::Read {
                topic: topic.clone(),
                message: format!("the broker refused the connection: {reason}; {SECURITY_HINT}"),
            });
        }
        if matches!(
            code,
            Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                | Some(RDKafkaErrorCode::UnknownTopic)
                | Some(RDKafkaErrorCode::UnknownPartition)
        ) {
            // Deleted? The monitor's topic id check decides (a broker restarting may say this
            // for a moment); the barrier confirms before anything becomes durable.
            tracing::warn!(topic = %topic, error = %e, "Kafka says the topic or a partition is unknown; the topic id check decides whether it was deleted");
            return None;
        }
        tracing::warn!(error = %e, "Kafka consumer error (librdkafka retries)");
        None
    }
}
