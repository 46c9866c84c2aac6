//! Is the topic still the input the checkpoint consumed? Pure decisions, no I/O.
//!
//! Offsets alone cannot tell: a topic deleted and recreated under the same name (or truncated
//! and refilled) has valid offsets that point at different records, and resuming there skips
//! every new record below them without a word. So each checkpoint records, per partition, the
//! [`LastRecord`] the job consumed (offset + [`fingerprint`] of key, value and timestamp), and
//! recovery, before consuming, reads that one record back ([`crate::source::probe`]) and
//! [`judge`]s what it found.
//!
//! Caller sequence: watermarks per saved partition -> [`probe_offset`] says which record to
//! read -> read it -> [`judge`] -> stop on any [`Verdict::Stop`] ([`stop_message`]), warn on
//! [`Verdict::Unverified`].
//!
//! Kafka topic ids would say "recreated" directly, but rdkafka 0.39 does not expose them
//! (librdkafka has them only in the admin `DescribeTopics` result, reachable through raw FFI);
//! the fingerprint needs nothing from the broker beyond a fetch, and also catches a topic
//! truncated and refilled, which a topic id would not.

use std::fmt;

use chrono::DateTime;

use crate::checkpoint::manifest::{LastRecord, PartitionCut, RecordFingerprint};
use crate::ids::{Offset, PartitionId};

/// FNV-1a, 64-bit, over a framed encoding of key, value and timestamp: presence byte, then
/// length (u64 LE) and bytes; the timestamp as presence byte and i64 LE. Framing keeps
/// `("ab", "c")` and `("a", "bc")` apart. The value is a compatibility promise: it is stored in
/// checkpoints and compared by later builds.
pub fn fingerprint(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    timestamp_ms: Option<i64>,
) -> RecordFingerprint {
    let mut h = Fnv1a64::new();
    for part in [key, payload] {
        match part {
            None => h.write(&[0]),
            Some(b) => {
                h.write(&[1]);
                h.write(&(b.len() as u64).to_le_bytes());
                h.write(b);
            }
        }
    }
    match timestamp_ms {
        None => h.write(&[0]),
        Some(t) => {
            h.write(&[1]);
            h.write(&t.to_le_bytes());
        }
    }
    RecordFingerprint(h.0)
}

/// Incremental FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3), so a record
/// is hashed in place, without concatenating its parts.
struct Fnv1a64(u64);

impl Fnv1a64 {
    fn new() -> Fnv1a64 {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Low and high watermark of a partition as the broker reports them now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// First offset still in the log (retention moves it up).
    pub low: Offset,
    /// Offset the next record will get.
    pub high: Offset,
}

/// What reading one record at an offset found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtOffset {
    /// A record at exactly that offset.
    Record(LastRecord),
    /// No committed record at that offset: the next one is at `next` (`None`: none before the
    /// end of the partition).
    Gone {
        /// Offset of the first committed record after it, if any.
        next: Option<Offset>,
    },
    /// The read did not finish (deadline, client error).
    Unread {
        /// Why, for the operator.
        cause: String,
    },
}

/// What the broker says about one partition the checkpoint has a position in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The topic has no such partition any more.
    NoPartition,
    /// Watermarks, and the record at the saved last-consumed offset if [`probe_offset`] asked
    /// for it.
    Partition {
        /// Current watermarks.
        watermarks: Watermarks,
        /// The read at [`probe_offset`], when it asked for one.
        at_last: Option<AtOffset>,
    },
}

/// Why a partition could not be verified; recovery carries on with a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unverified {
    /// Written by a build that did not record record identities.
    NoIdentity {
        /// The saved next offset.
        end: Offset,
    },
    /// Retention removed the last consumed record; the saved offset itself is checked by the
    /// consumer (`auto.offset.reset=error`).
    RemovedByRetention {
        /// Offset of the last consumed record.
        offset: Offset,
        /// Current low watermark.
        low: Offset,
    },
}

/// Why the topic is not (or cannot be shown to be) the input the checkpoint consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The partition is gone.
    NoPartition,
    /// The partition ends before the saved offset: records the job consumed are not there.
    EndsBeforeSavedOffset {
        /// Saved next offset.
        saved: Offset,
        /// Current high watermark.
        high: Offset,
    },
    /// The partition now starts after the saved offset: records the job had not read yet were
    /// removed (retention, `kafka-delete-records`) while it was stopped. Resuming would skip
    /// them silently.
    SavedOffsetRemoved {
        /// Saved next offset.
        saved: Offset,
        /// Current low watermark.
        low: Offset,
    },
    /// The last consumed record's offset holds no committed record, though retention has not
    /// reached it.
    RecordGone {
        /// The record the checkpoint consumed.
        expected: LastRecord,
        /// Where the next committed record is.
        next: Option<Offset>,
    },
    /// A different record sits at the last consumed record's offset.
    DifferentRecord {
        /// The record the checkpoint consumed.
        expected: LastRecord,
        /// The record there now.
        found: LastRecord,
    },
    /// The record could not be read back, so nothing is proven.
    Unreadable {
        /// Offset that was to be read.
        offset: Offset,
        /// Why.
        cause: String,
    },
}

/// The decision for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing consumed from it yet: nothing to check.
    NothingConsumed,
    /// The record at the saved last-consumed offset is the one the job consumed.
    Verified,
    /// Cannot be checked; resume and warn.
    Unverified(Unverified),
    /// Do not resume: the job would skip or misread records.
    Stop(Mismatch),
}

/// The offset whose record must be read back to judge `saved`, given the watermarks; `None`
/// when the watermarks alone decide (or there is nothing to check).
pub fn probe_offset(saved: &PartitionCut, w: Watermarks) -> Option<Offset> {
    let last = saved.last?;
    (w.high >= saved.end && w.low <= last.offset).then_some(last.offset)
}

/// Judges one partition the checkpoint has a position in (`saved`) against what the broker
/// shows now (`seen`).
pub fn judge(saved: &PartitionCut, seen: &Seen) -> Verdict {
    let (w, at_last) = match seen {
        Seen::NoPartition if saved.end.0 == 0 && saved.last.is_none() => {
            return Verdict::NothingConsumed;
        }
        Seen::NoPartition => return Verdict::Stop(Mismatch::NoPartition),
        Seen::Partition {
            watermarks,
            at_last,
        } => (*watermarks, at_last),
    };
    if w.high < saved.end {
        return Verdict::Stop(Mismatch::EndsBeforeSavedOffset {
            saved: saved.end,
            high: w.high,
        });
    }
    if w.low > saved.end {
        // Checked before the claim: otherwise the consumer only finds it (offset out of range)
        // after a generation was claimed and the tables were published.
        return Verdict::Stop(Mismatch::SavedOffsetRemoved {
            saved: saved.end,
            low: w.low,
        });
    }
    let Some(expected) = saved.last else {
        return if saved.end.0 == 0 {
            Verdict::NothingConsumed
        } else {
            Verdict::Unverified(Unverified::NoIdentity { end: saved.end })
        };
    };
    if w.low > expected.offset {
        return Verdict::Unverified(Unverified::RemovedByRetention {
            offset: expected.offset,
            low: w.low,
        });
    }
    match at_last {
        None => Verdict::Stop(Mismatch::Unreadable {
            offset: expected.offset,
            cause: "it was not read (a bug: probe_offset asked for it)".into(),
        }),
        Some(AtOffset::Unread { cause }) => Verdict::Stop(Mismatch::Unreadable {
            offset: expected.offset,
            cause: cause.clone(),
        }),
        Some(AtOffset::Gone { next }) => Verdict::Stop(Mismatch::RecordGone {
            expected,
            next: *next,
        }),
        Some(AtOffset::Record(found)) if *found == expected => Verdict::Verified,
        Some(AtOffset::Record(found)) => Verdict::Stop(Mismatch::DifferentRecord {
            expected,
            found: *found,
        }),
    }
}

/// A record identity for operators: offset, fingerprint, timestamp in UTC.
struct Shown<'a>(&'a LastRecord);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(f, "offset {} fingerprint {}", r.offset, r.fingerprint)?;
        match r.timestamp_ms.and_then(DateTime::from_timestamp_millis) {
            Some(t) => write!(f, " timestamp {}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            None => write!(f, " no timestamp"),
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::NoPartition => write!(f, "the topic no longer has this partition"),
            Mismatch::EndsBeforeSavedOffset { saved, high } => write!(
                f,
                "the checkpoint resumes at offset {saved}, but the partition ends at {high} (high watermark)"
            ),
            Mismatch::SavedOffsetRemoved { saved, low } => write!(
                f,
                "the checkpoint resumes at offset {saved}, but the partition now starts at {low} (low watermark): records {saved}..{low} were removed (retention or delete-records) before the job read them"
            ),
            Mismatch::RecordGone { expected, next } => {
                write!(
                    f,
                    "expected the consumed record ({}), found no committed record at offset {}",
                    Shown(expected),
                    expected.offset
                )?;
                match next {
                    Some(n) => write!(f, " (the next one is at {n})"),
                    None => write!(f, " (none after it either)"),
                }
            }
            Mismatch::DifferentRecord { expected, found } => write!(
                f,
                "expected the consumed record ({}), found a different one ({})",
                Shown(expected),
                Shown(found)
            ),
            Mismatch::Unreadable { offset, cause } => write!(
                f,
                "could not read the record at offset {offset} to verify it: {cause}"
            ),
        }
    }
}

impl fmt::Display for Unverified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unverified::NoIdentity { end } => write!(
                f,
                "the checkpoint (resuming at offset {end}) has no last consumed record for this partition (written by an older build, or a topic reset started it mid-topic); it cannot be verified until the partition has been read again"
            ),
            Unverified::RemovedByRetention { offset, low } => write!(
                f,
                "the last consumed record (offset {offset}) was removed by retention (low watermark {low}); it cannot be verified"
            ),
        }
    }
}

/// The one-paragraph error for the partitions that must stop the job: topic, checkpoint, each
/// partition's expected vs found, and what an operator should do.
pub fn stop_message(topic: &str, checkpoint: u64, stops: &[(PartitionId, Mismatch)]) -> String {
    let each: Vec<String> = stops
        .iter()
        .map(|(p, m)| format!("partition {p}: {m}"))
        .collect();
    let only_unreadable = stops
        .iter()
        .all(|(_, m)| matches!(m, Mismatch::Unreadable { .. }));
    let advice = if only_unreadable {
        "Nothing was consumed. Retry when the broker answers; if an open upstream transaction \
         blocks the read, wait for it to finish."
            .to_string()
    } else {
        format!(
            "The topic was deleted and recreated, or truncated, under the same name: resuming at \
             the saved offsets would skip records silently, so nothing was consumed. If the topic \
             now holds the input this job should read, run `recon-pipeline accept-topic-reset \
             --config <file> --reason \"...\" --yes` (it keeps the job's state and reads every \
             partition that does not match from its earliest offset); otherwise restore topic \
             {topic:?} and restart."
        )
    };
    format!(
        "topic {topic:?} is not the input checkpoint {checkpoint} consumed: {}. {advice}",
        each.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(offset: i64, fp: u64) -> LastRecord {
        LastRecord {
            offset: Offset(offset),
            fingerprint: RecordFingerprint(fp),
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    fn cut(end: i64, last: Option<LastRecord>) -> PartitionCut {
        PartitionCut {
            start: Offset(0),
            end: Offset(end),
            records: 0,
            last,
        }
    }

    fn seen(low: i64, high: i64, at_last: Option<AtOffset>) -> Seen {
        Seen::Partition {
            watermarks: Watermarks {
                low: Offset(low),
                high: Offset(high),
            },
            at_last,
        }
    }

    /// One table of cases through one helper: saved cut, what the broker shows, the verdict.
    fn check(saved: PartitionCut, s: Seen, expected: Verdict) {
        assert_eq!(judge(&saved, &s), expected, "saved {saved:?}, seen {s:?}");
    }

    #[test]
    fn verdicts() {
        let l = last(9, 0xabc);
        let found = |r: LastRecord| Some(AtOffset::Record(r));
        // The same record at the same offset: resume.
        check(cut(10, Some(l)), seen(0, 50, found(l)), Verdict::Verified);
        // Recreated with more records than before: a different record at the old offset.
        let other = last(9, 0xdef);
        check(
            cut(10, Some(l)),
            seen(0, 500, found(other)),
            Verdict::Stop(Mismatch::DifferentRecord {
                expected: l,
                found: other,
            }),
        );
        // Same key and value but a new timestamp is a different record, too.
        let restamped = LastRecord {
            timestamp_ms: Some(1),
            ..l
        };
        assert!(matches!(
            judge(&cut(10, Some(l)), &seen(0, 50, found(restamped))),
            Verdict::Stop(Mismatch::DifferentRecord { .. })
        ));
        // Recreated with fewer records: the partition ends before the saved offset.
        check(
            cut(10, Some(l)),
            seen(0, 4, None),
            Verdict::Stop(Mismatch::EndsBeforeSavedOffset {
                saved: Offset(10),
                high: Offset(4),
            }),
        );
        // The offset holds no committed record (aborted, marker) though retention is below it.
        check(
            cut(10, Some(l)),
            seen(
                0,
                50,
                Some(AtOffset::Gone {
                    next: Some(Offset(12)),
                }),
            ),
            Verdict::Stop(Mismatch::RecordGone {
                expected: l,
                next: Some(Offset(12)),
            }),
        );
        // Retention removed the last record: warn, do not stop for that alone.
        check(
            cut(10, Some(l)),
            seen(10, 50, None),
            Verdict::Unverified(Unverified::RemovedByRetention {
                offset: Offset(9),
                low: Offset(10),
            }),
        );
        // Records the job had not read yet were removed (retention, delete-records): stop
        // before the claim, whether or not the last consumed record is still known.
        check(
            cut(10, Some(l)),
            seen(14, 50, None),
            Verdict::Stop(Mismatch::SavedOffsetRemoved {
                saved: Offset(10),
                low: Offset(14),
            }),
        );
        check(
            cut(10, None),
            seen(11, 50, None),
            Verdict::Stop(Mismatch::SavedOffsetRemoved {
                saved: Offset(10),
                low: Offset(11),
            }),
        );
        // ... but a partition that ends before the saved offset stops even then.
        check(
            cut(10, Some(l)),
            seen(10, 9, None),
            Verdict::Stop(Mismatch::EndsBeforeSavedOffset {
                saved: Offset(10),
                high: Offset(9),
            }),
        );
        // A checkpoint of the previous format: resume with a warning, unless provably short.
        check(
            cut(10, None),
            seen(0, 50, None),
            Verdict::Unverified(Unverified::NoIdentity { end: Offset(10) }),
        );
        check(
            cut(10, None),
            seen(0, 3, None),
            Verdict::Stop(Mismatch::EndsBeforeSavedOffset {
                saved: Offset(10),
                high: Offset(3),
            }),
        );
        check(cut(0, None), seen(0, 0, None), Verdict::NothingConsumed);
        // A partition the topic lost.
        check(
            cut(10, Some(l)),
            Seen::NoPartition,
            Verdict::Stop(Mismatch::NoPartition),
        );
        check(cut(0, None), Seen::NoPartition, Verdict::NothingConsumed);
        // A read that did not finish proves nothing: stop (the next start retries).
        check(
            cut(10, Some(l)),
            seen(
                0,
                50,
                Some(AtOffset::Unread {
                    cause: "deadline".into(),
                }),
            ),
            Verdict::Stop(Mismatch::Unreadable {
                offset: Offset(9),
                cause: "deadline".into(),
            }),
        );
        assert!(matches!(
            judge(&cut(10, Some(l)), &seen(0, 50, None)),
            Verdict::Stop(Mismatch::Unreadable { .. })
        ));
    }

    #[test]
    fn probe_offset_asks_only_when_the_record_can_be_there() {
        let w = |low, high| Watermarks {
            low: Offset(low),
            high: Offset(high),
        };
        let l = last(9, 1);
        assert_eq!(probe_offset(&cut(10, Some(l)), w(0, 50)), Some(Offset(9)));
        assert_eq!(probe_offset(&cut(10, Some(l)), w(9, 10)), Some(Offset(9)));
        assert_eq!(
            probe_offset(&cut(10, Some(l)), w(10, 50)),
            None,
            "retention"
        );
        assert_eq!(probe_offset(&cut(10, Some(l)), w(0, 9)), None, "too short");
        assert_eq!(probe_offset(&cut(10, None), w(0, 50)), None, "old format");
    }

    #[test]
    fn fingerprint_is_pinned_and_sees_every_part() {
        // Pinned: a change here invalidates every stored checkpoint's identity.
        assert_eq!(fingerprint(None, None, None).0, 0xd94d_1218_6c0f_2fb7);
        let base = fingerprint(Some(b"trip-1"), Some(b"{}"), Some(5));
        assert_eq!(base, fingerprint(Some(b"trip-1"), Some(b"{}"), Some(5)));
        for other in [
            fingerprint(Some(b"trip-2"), Some(b"{}"), Some(5)),
            fingerprint(Some(b"trip-1"), Some(b"{ }"), Some(5)),
            fingerprint(Some(b"trip-1"), Some(b"{}"), Some(6)),
            fingerprint(Some(b"trip-1"), Some(b"{}"), None),
            fingerprint(None, Some(b"{}"), Some(5)),
            fingerprint(Some(b"trip-1{"), Some(b"}"), Some(5)),
        ] {
            assert_ne!(base, other);
        }
        assert_ne!(
            fingerprint(Some(b""), None, None),
            fingerprint(None, Some(b""), None)
        );
    }

    #[test]
    fn the_stop_message_names_topic_partition_both_records_and_the_way_out() {
        let msg = stop_message(
            "money",
            12,
            &[(
                PartitionId(2),
                Mismatch::DifferentRecord {
                    expected: last(9, 0xabc),
                    found: LastRecord {
                        timestamp_ms: None,
                        ..last(9, 0xdef)
                    },
                },
            )],
        );
        for part in [
            "topic \"money\"",
            "checkpoint 12",
            "partition 2",
            "offset 9 fingerprint 0000000000000abc timestamp 2023-11-14T22:13:20.000Z",
            "offset 9 fingerprint 0000000000000def no timestamp",
            "accept-topic-reset",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        let retry = stop_message(
            "money",
            12,
            &[(
                PartitionId(0),
                Mismatch::Unreadable {
                    offset: Offset(3),
                    cause: "no answer within 10s".into(),
                },
            )],
        );
        assert!(retry.contains("Retry"), "{retry}");
        assert!(!retry.contains("accept-topic-reset"), "{retry}");
    }
}
