//! The source's monitor thread: everything about the input that needs the broker but must not
//! slow the consumer down.
//!
//! Every [`MONITOR_EVERY`] it
//! - asks for the topic's id ([`super::topic_id`], one request): a different id means the
//!   topic was deleted and recreated, no topic (twice in a row) means it was deleted. Either is
//!   a [`SourceError::NotTheSavedInput`] the consumer thread hands to the job, which stops
//!   before it checkpoints anything read from the new topic (the barrier confirms the id too,
//!   [`super::InputGuard`]);
//! - reads the end of every owned partition with one batched `ListOffsets` per broker
//!   (`offsets_for_times`, read_committed: the last stable offset) and publishes the lag;
//! - runs the progress watchdog: a partition with lag > 0 whose position has not moved for
//!   `source.stall_timeout_ms` (time the consumer thread spent blocked on a full queue to the
//!   job does not count) first makes the consumer thread recreate its client at the current
//!   positions; if it stalls again, the source stops with [`SourceError::Stalled`] (transient:
//!   the supervisor restarts the job).
//!
//! Before, the consumer thread itself queried one partition's watermarks at a time every 5 s;
//! at 1,000 partitions that blocked it for seconds per round (issue 13, finding 8).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::SourceError;
use super::security::SecurityWatch;
use super::topic_id::{self, Described, TopicId};

/// How often the monitor checks the topic id, the lag and the watchdog.
pub const MONITOR_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for one monitor request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive "no such topic" answers that count as deleted (one may be a broker that has not
/// loaded its metadata yet after a restart).
pub(super) const MISSING_ANSWERS_MAX: u32 = 2;

/// What the topic's identity check knows, shared by the monitor and the barrier.
#[derive(Debug, Default)]
pub(super) struct Identity {
    /// The id the job consumes from; `None` when the broker reports no ids.
    pub expected: Option<TopicId>,
    /// When the newest request that confirmed `expected` was sent.
    pub verified_at: Option<Instant>,
    /// Consecutive "no such topic" answers.
    pub missing: u32,
}

/// State shared by the consumer thread, the monitor thread and the job.
pub(super) struct Shared {
    /// Topic.
    pub topic: String,
    /// Owned partitions.
    pub owned: Vec<i32>,
    /// Next offset to deliver per partition, as the consumer thread last published it
    /// (partitions that have no known position yet are absent).
    pub positions: Mutex<BTreeMap<i32, i64>>,
    /// Partitions at their end (end-of-partition event after their last record), as the
    /// consumer thread last published them. Their lag is 0 whatever the offsets say: after a
    /// transaction's commit marker the end offset stays one past the last record forever.
    pub at_end: Mutex<BTreeSet<i32>>,
    /// Owned partitions not known to be at their end. The consumer thread lowers it for an
    /// end-of-partition event only after the batch before that event was sent.
    pub not_at_end: AtomicUsize,
    /// Total time the consumer thread spent waiting for room in the queue to the job, ms.
    pub blocked_ms: AtomicU64,
    /// Total time the consumer thread spent taking and decoding records, µs (the bench reports
    /// it).
    pub busy_us: AtomicU64,
    /// A reason to stop, for the consumer thread to hand to the job.
    pub fault: Mutex<Option<SourceError>>,
    /// Set by the watchdog: recreate the client at the current positions.
    pub recover: AtomicBool,
    /// Set to stop both threads.
    pub stop: AtomicBool,
    /// The identity check.
    pub identity: Mutex<Identity>,
}

impl Shared {
    /// Records a reason to stop (the first one wins).
    pub fn fail(&self, e: SourceError) {
        if let Ok(mut f) = self.fault.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
    }

    /// Takes the reason to stop, if any.
    pub fn take_fault(&self) -> Option<SourceError> {
        self.fault.lock().ok().and_then(|mut f| f.take())
    }
}

/// The message of a stop for a topic whose identity changed while the job ran.
pub(super) fn identity_stop(topic: &str, expected: &TopicId, now: &Described) -> SourceError {
    let what = match now {
        Described::Id(id) => format!(
            "topic {topic:?} was deleted and recreated while the job ran (topic id {expected}, now {id})"
        ),
        Described::Missing => {
            format!("topic {topic:?} (topic id {expected}) was deleted while the job ran")
        }
        Described::Unsupported(why) => {
            format!("topic {topic:?} (topic id {expected}) no longer reports a topic id ({why})")
        }
    };
    SourceError::NotTheSavedInput {
        message: format!(
            "{what}; nothing read since the last checkpoint was kept. If the topic now holds the \
             input this job should read, run `recon-pipeline accept-topic-reset --config <file> \
             --reason \"...\" --yes` (it keeps the job's state and reads the new topic from its \
             earliest offset); otherwise restore topic {topic:?} and restart."
        ),
    }
}

/// Judges one answer of the topic id check against `identity`; returns the stop it calls for.
/// `asked` is when the request was sent (a confirmation covers records fetched before it).
pub(super) fn judge_answer(
    topic: &str,
    identity: &mut Identity,
    asked: Instant,
    answer: &Described,
) -> Option<SourceError> {
    let expected = identity.expected.clone()?;
    match answer {
        Described::Id(id) if *id == expected => {
            identity.missing = 0;
            identity.verified_at = Some(identity.verified_at.map_or(asked, |v| v.max(asked)));
            None
        }
        Described::Missing => {
            identity.missing += 1;
            (identity.missing >= MISSING_ANSWERS_MAX)
                .then(|| identity_stop(topic, &expected, answer))
        }
        other => Some(identity_stop(topic, &expected, other)),
    }
}

/// Per partition: the position last seen and since when it has not moved while behind.
struct Track {
    position: i64,
    since: Instant,
    blocked_ms_at: u64,
}

/// The watchdog's memory across ticks.
pub(super) struct Watchdog {
    bound: Duration,
    tracks: BTreeMap<i32, Track>,
    /// When the consumer was last recreated for a stall (one attempt per stall episode).
    recovered_at: Option<Instant>,
}

/// What the watchdog decided on one tick.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing stalled past the bound.
    Carry,
    /// Recreate the consumer at its current positions.
    Recover(Vec<i32>),
    /// Still stalled after a recovery: stop (transient).
    Stop(Vec<i32>),
}

impl Watchdog {
    /// A watchdog that acts after `bound` without progress.
    pub fn new(bound: Duration) -> Watchdog {
        Watchdog {
            bound,
            tracks: BTreeMap::new(),
            recovered_at: None,
        }
    }

    /// One tick: `behind` holds, per partition with a known position, `(position, lag)`;
    /// `blocked_ms` is the consumer's total time blocked on the job. Returns the longest stall
    /// and what to do.
    pub fn tick(
        &mut self,
        now: Instant,
        behind: &BTreeMap<i32, (i64, i64)>,
        blocked_ms: u64,
    ) -> (Duration, Action) {
        let mut longest = Duration::ZERO;
        let mut stalled = Vec::new();
        self.tracks.retain(|p, _| behind.contains_key(p));
        for (p, (position, lag)) in behind {
            let t = self.tracks.entry(*p).or_insert(Track {
                position: *position,
                since: now,
                blocked_ms_at: blocked_ms,
            });
            if *lag <= 0 || t.position != *position {
                *t = Track {
                    position: *position,
                    since: now,
                    blocked_ms_at: blocked_ms,
                };
                continue;
            }
            let blocked = Duration::from_millis(blocked_ms.saturating_sub(t.blocked_ms_at));
            let stall = now
                .saturating_duration_since(t.since)
                .saturating_sub(blocked);
            longest = longest.max(stall);
            if stall >= self.bound {
                stalled.push(*p);
            }
        }
        if stalled.is_empty() {
            if self.recovered_at.is_some_and(|r| {
                now.saturating_duration_since(r) >= self.bound && longest < self.bound / 2
            }) {
                self.recovered_at = None;
            }
            return (longest, Action::Carry);
        }
        if self.recovered_at.is_some() {
            return (longest, Action::Stop(stalled));
        }
        self.recovered_at = Some(now);
        // The recreated consumer gets a full bound of its own.
        for t in self.tracks.values_mut() {
            t.since = now;
            t.blocked_ms_at = blocked_ms;
        }
        (longest, Action::Recover(stalled))
    }
}

/// The monitor thread's body: runs until `shared.stop`.
/// `from_earliest`: partitions without a saved offset start at their beginning
/// (`start_from = "earliest"`); until their first record the watchdog takes the low watermark as
/// their position.
pub(super) fn run(
    client: Arc<BaseConsumer<SecurityWatch>>,
    shared: Arc<Shared>,
    stall_bound: Duration,
    from_earliest: bool,
) {
    let mut watchdog = Watchdog::new(stall_bound);
    crate::telemetry::source_recovered(0);
    crate::telemetry::source_stalled(Duration::ZERO);
    let mut next = Instant::now();
    let mut warned_unverified = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        next = now + MONITOR_EVERY;
        check_identity(&client, &shared, &mut warned_unverified);
        let behind = lag(&client, &shared, from_earliest);
        let blocked = shared.blocked_ms.load(Ordering::Relaxed);
        let (longest, action) = watchdog.tick(Instant::now(), &behind, blocked);
        crate::telemetry::source_stalled(longest);
        match action {
            Action::Carry => {}
            Action::Recover(ps) => {
                tracing::warn!(topic = %shared.topic, partitions = ?ps, stalled_s = longest.as_secs(),
                    "source stalled: records are waiting but none arrived; recreating the Kafka consumer at its current positions");
                crate::telemetry::source_recovered(1);
                shared.recover.store(true, Ordering::Relaxed);
            }
            Action::Stop(ps) => {
                shared.fail(SourceError::Stalled {
                    topic: shared.topic.clone(),
                    partitions: ps,
                    stalled: longest,
                });
            }
        }
        // The client's own events (logs, errors) are served here; it has no assignment.
        for _ in 0..64 {
            if client.poll(Duration::ZERO).is_none() {
                break;
            }
        }
    }
}

fn check_identity(client: &BaseConsumer<SecurityWatch>, shared: &Shared, warned: &mut bool) {
    let has_expected = shared
        .identity
        .lock()
        .map(|i| i.expected.is_some())
        .unwrap_or(false);
    if !has_expected {
        return;
    }
    let asked = Instant::now();
    match topic_id::describe(client.client(), &shared.topic, REQUEST_TIMEOUT) {
        Ok(answer) => {
            let stop = match shared.identity.lock() {
                Ok(mut i) => judge_answer(&shared.topic, &mut i, asked, &answer),
                Err(_) => None,
            };
            if let Some(e) = stop {
                tracing::error!(topic = %shared.topic, by = "monitor", "{e}");
                shared.fail(e);
            }
            *warned = false;
        }
        Err(e) if !*warned => {
            *warned = true;
            tracing::warn!(error = %e, "topic id check failed; the next checkpoint asks again");
        }
        Err(_) => {}
    }
}

/// Publishes the lag of every owned partition; returns `(position, lag)` for the watchdog.
fn lag(
    client: &BaseConsumer<SecurityWatch>,
    shared: &Shared,
    from_earliest: bool,
) -> BTreeMap<i32, (i64, i64)> {
    let mut out = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &shared.owned {
        if tpl
            .add_partition_offset(&shared.topic, *p, KafkaOffset::End)
            .is_err()
        {
            return out;
        }
    }
    // One ListOffsets request per partition leader, not one per partition.
    let ends = match client.offsets_for_times(tpl, REQUEST_TIMEOUT) {
        Ok(ends) => ends,
        Err(e) => {
            tracing::debug!(error = %e, "partition ends not available this round");
            return out;
        }
    };
    let mut positions = shared
        .positions
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    if from_earliest {
        // Not read yet: the first record to come is at the low watermark.
        let mut unknown = TopicPartitionList::new();
        for p in shared.owned.iter().filter(|p| !positions.contains_key(p)) {
            let _ = unknown.add_partition_offset(&shared.topic, *p, KafkaOffset::Beginning);
        }
        if unknown.count() > 0
            && let Ok(lows) = client.offsets_for_times(unknown, REQUEST_TIMEOUT)
        {
            for e in lows.elements_for_topic(&shared.topic) {
                if let Some(low) = e.offset().to_raw().filter(|o| *o >= 0) {
                    positions.insert(e.partition(), low);
                }
            }
        }
    }
    let at_end = shared.at_end.lock().map(|a| a.clone()).unwrap_or_default();
    for e in ends.elements_for_topic(&shared.topic) {
        let (Some(end), Some(pos)) = (e.offset().to_raw(), positions.get(&e.partition())) else {
            continue;
        };
        if end < 0 || e.error().is_err() {
            continue;
        }
        let lag = if at_end.contains(&e.partition()) {
            0
        } else {
            (end - pos).max(0)
        };
        crate::telemetry::lag(e.partition(), lag);
        out.insert(e.partition(), (*pos, lag));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind(items: &[(i32, i64, i64)]) -> BTreeMap<i32, (i64, i64)> {
        items
            .iter()
            .map(|(p, pos, lag)| (*p, (*pos, *lag)))
            .collect()
    }

    #[test]
    fn the_watchdog_recovers_once_then_stops() {
        let bound = Duration::from_secs(10);
        let mut w = Watchdog::new(bound);
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            w.tick(s(0), &behind(&[(0, 5, 3), (1, 9, 0)]), 0).1,
            Action::Carry
        );
        // Partition 1 has no lag: never stalled however long it sits.
        assert_eq!(
            w.tick(s(9), &behind(&[(0, 5, 3), (1, 9, 0)]), 0).1,
            Action::Carry
        );
        let (longest, a) = w.tick(s(10), &behind(&[(0, 5, 3), (1, 9, 0)]), 0);
        assert_eq!((longest, a), (bound, Action::Recover(vec![0])));
        // After the recovery the clock starts again; still stuck after a full bound: stop.
        assert_eq!(w.tick(s(19), &behind(&[(0, 5, 3)]), 0).1, Action::Carry);
        assert_eq!(
            w.tick(s(20), &behind(&[(0, 5, 3)]), 0).1,
            Action::Stop(vec![0])
        );
    }

    #[test]
    fn progress_or_time_blocked_on_the_job_is_no_stall() {
        let bound = Duration::from_secs(10);
        let mut w = Watchdog::new(bound);
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        w.tick(s(0), &behind(&[(0, 5, 3)]), 0);
        // Moving forward resets the clock.
        w.tick(s(8), &behind(&[(0, 6, 3)]), 0);
        assert_eq!(w.tick(s(17), &behind(&[(0, 6, 3)]), 0).1, Action::Carry);
        // 15 s without progress, but 6 of them blocked on a full queue to the job: 9 s.
        let (longest, a) = w.tick(s(23), &behind(&[(0, 6, 3)]), 6_000);
        assert_eq!((longest, a), (Duration::from_secs(9), Action::Carry));
        // A recovery that worked: after a quiet bound, a new stall gets a new recovery.
        let (_, a) = w.tick(s(30), &behind(&[(0, 6, 3)]), 6_000);
        assert_eq!(a, Action::Recover(vec![0]));
        w.tick(s(31), &behind(&[(0, 7, 0)]), 6_000);
        w.tick(s(45), &behind(&[(0, 7, 0)]), 6_000);
        w.tick(s(46), &behind(&[(0, 7, 2)]), 6_000);
        assert_eq!(
            w.tick(s(56), &behind(&[(0, 7, 2)]), 6_000).1,
            Action::Recover(vec![0])
        );
    }

    #[test]
    fn a_changed_or_missing_topic_id_stops_and_a_confirmation_is_dated() {
        let id = TopicId("AAAAAAAAAAAAAAAAAAAAAQ".into());
        let mut i = Identity {
            expected: Some(id.clone()),
            ..Identity::default()
        };
        let t = Instant::now();
        assert!(judge_answer("money", &mut i, t, &Described::Id(id.clone())).is_none());
        assert_eq!(i.verified_at, Some(t));
        // One "missing" may be a broker still loading its metadata; two stop.
        assert!(judge_answer("money", &mut i, t, &Described::Missing).is_none());
        let e = judge_answer("money", &mut i, t, &Described::Missing).expect("stop");
        assert!(
            e.to_string().contains("was deleted while the job ran"),
            "{e}"
        );
        let e = judge_answer("money", &mut i, t, &Described::Id(TopicId("other".into())))
            .expect("stop");
        for part in ["deleted and recreated", "now other", "accept-topic-reset"] {
            assert!(e.to_string().contains(part), "{part:?} missing from {e}");
        }
        // No expected id (a broker without ids): nothing to judge.
        let mut none = Identity::default();
        assert!(judge_answer("money", &mut none, t, &Described::Missing).is_none());
    }
}
