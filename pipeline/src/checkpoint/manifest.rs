//! On-disk records of the checkpoint log. These formats are a compatibility promise: a newer
//! build must restore checkpoints an older build wrote (`format` is checked on read).
//!
//! Layout under `<root>/<job>/`:
//! - `log/<id:020>.json`: a [`LogEntry`], created with create-if-absent. Its existence is what
//!   makes checkpoint `<id>` complete; the log is a total order of completed checkpoints.
//! - `ckpt/<id:020>-g<gen>/manifest.json`: the [`Manifest`] the entry points to (offsets,
//!   pending files, state chain), written before the entry.
//! - `ckpt/<id:020>-g<gen>/state.bin`: a state file (full or delta) of that checkpoint.
//! - `ckpt/<id:020>-g<gen>/alerts.jsonl`: the alerts it raised (`[alerts]` on, when any).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CheckpointId, Generation, JobId, Offset, PartitionId};

/// Version of the manifest and log-entry formats this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a log entry exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EntryKind {
    /// A barrier cut: new offsets, state and pending files.
    Checkpoint,
    /// A process claimed a new generation; state and offsets are those of `resumes`.
    GenerationStart {
        /// The checkpoint this generation resumes from (`None` on a fresh start).
        resumes: Option<CheckpointId>,
    },
    /// An operator accepted that the topic was recreated or truncated
    /// (`recon-pipeline accept-topic-reset`): state is the head's, partitions that no longer
    /// hold the consumed records restart at the new topic's earliest offset, and the
    /// manifest's `input_epoch` grows by one.
    TopicReset {
        /// Why, as the operator said it.
        reason: String,
    },
    /// An operator changed a fleet's number of tasks (`recon-pipeline reshard`). In a new task
    /// log it is the first entry: the task's share of the old tasks' state and offsets. In the
    /// committer's log it is the record that makes the new shape the job's: its `fleet_tasks`
    /// name the new task logs' first entries, and nothing of the old tasks is left to commit.
    Reshard {
        /// K before.
        from_tasks: u32,
        /// K after.
        to_tasks: u32,
        /// Per old task, the checkpoint its share was taken from (every one committed); a
        /// list of pairs, not a map: the entry's kind is flattened, and serde reads a
        /// flattened map's integer keys back as strings.
        sources: Vec<(u32, CheckpointId)>,
        /// Why, as the operator said it.
        reason: String,
    },
    /// An operator rewound the job on purpose to an older checkpoint.
    Rewind {
        /// The checkpoint whose state and offsets the job restarts from.
        to: CheckpointId,
        /// Why, as the operator said it.
        reason: String,
    },
}

/// The completion marker of a checkpoint (`log/<id>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Format version, [`FORMAT_VERSION`].
    pub format: u32,
    /// The job this log belongs to.
    pub job_id: JobId,
    /// Position in the log.
    pub checkpoint_id: CheckpointId,
    /// Generation of the process that completed it.
    pub generation: Generation,
    /// Why the entry exists.
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Path of the manifest, relative to the job's root.
    pub manifest: String,
    /// SHA-256 of the manifest bytes, checked on read.
    pub manifest_sha256: String,
    /// When it was completed (wall clock, informative only).
    pub completed_at: DateTime<Utc>,
}

/// What one checkpoint consumed from one Kafka partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCut {
    /// Next offset to read at the previous cut (first offset this checkpoint could consume).
    pub start: Offset,
    /// Next offset to read at this cut.
    pub end: Offset,
    /// Records consumed in `[start, end)`; offsets have gaps, so this is counted, not computed.
    pub records: u64,
    /// The last record the job consumed on this partition (in this or an earlier checkpoint),
    /// so that recovery can prove the topic still holds the input the offsets refer to.
    /// `None` in manifests written before it existed (then recovery cannot verify and warns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastRecord>,
}

impl PartitionCut {
    /// The cut that continues `self` with nothing consumed yet: starts where `self` ends and
    /// keeps the identity of the last record consumed.
    pub fn continued(&self) -> PartitionCut {
        PartitionCut {
            start: self.end,
            end: self.end,
            records: 0,
            last: self.last,
        }
    }
}

/// Identity of one consumed Kafka record: where it was and what it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRecord {
    /// Its offset.
    pub offset: Offset,
    /// [`RecordFingerprint`] of its key, value and timestamp.
    pub fingerprint: RecordFingerprint,
    /// Its Kafka timestamp (ms since the Unix epoch, UTC), when it had one; shown to operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
}

/// A 64-bit fingerprint of a Kafka record's key, value and timestamp
/// (`crate::source::identity::fingerprint`). Stored as 16 hex digits, so JSON tools that read
/// numbers as doubles cannot corrupt it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordFingerprint(pub u64);

impl std::fmt::Display for RecordFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for RecordFingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordFingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 16 {
            return Err(serde::de::Error::custom(format!(
                "record fingerprint {text:?} is not 16 hex digits"
            )));
        }
        u64::from_str_radix(&text, 16)
            .map(RecordFingerprint)
            .map_err(|e| {
                serde::de::Error::custom(format!("record fingerprint {text:?} is not hex: {e}"))
            })
    }
}

/// Data files of one table, written and closed (pre-committed) but not yet committed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFiles {
    /// Partition spec id the files were written with.
    pub spec_id: i32,
    /// Schema id the files were written with.
    pub schema_id: i32,
    /// Each `DataFile` as `iceberg::spec::serialize_data_file_to_json` wrote it.
    pub files: Vec<String>,
    /// Rows across the files.
    pub rows: u64,
    /// Bytes across the files.
    pub bytes: u64,
}

/// Record counts of one checkpoint, for logs, metrics and `checkpoints show`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Records consumed.
    pub records: u64,
    /// Events accepted into `ledger_events`.
    pub events: u64,
    /// Exact duplicates dropped (same event id, same content).
    pub duplicates: u64,
    /// Records sent to `rejected_events`.
    pub rejected: u64,
    /// Rows written to `trip_balances`.
    pub balance_rows: u64,
}

/// The durable content of one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, [`FORMAT_VERSION`].
    pub format: u32,
    /// The job.
    pub job_id: JobId,
    /// The checkpoint.
    pub checkpoint_id: CheckpointId,
    /// Generation of the writer.
    pub generation: Generation,
    /// Per-partition cut. A partition absent here has never been read.
    pub partitions: BTreeMap<PartitionId, PartitionCut>,
    /// Pending files per table name.
    pub pending: BTreeMap<String, PendingFiles>,
    /// State files to read in order (a full file first, then deltas), relative to the job root.
    pub state_chain: Vec<String>,
    /// SHA-256 (hex) of each file of `state_chain`, by path, checked on restore: a state file
    /// edited in place would otherwise be restored and could accept a re-sent event twice.
    /// Empty in manifests written before it existed (those restore with a warning).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub state_sha256: BTreeMap<String, String>,
    /// The cold tier's runs (trips that left memory), oldest first: part of the state, like
    /// `state_chain`. Empty when nothing ever left memory (and in older manifests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold_runs: Vec<crate::cold::runs::RunRef>,
    /// Cold runs merged away that older retained checkpoints may still list; deleted once
    /// every checkpoint before their `at` is pruned (`cold::merge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold_retired: Vec<crate::cold::merge::Retired>,
    /// The state's event-time high-water mark (µs): the newest `occurred_at` accepted, which
    /// eviction ages trips against. Kept here because the trips that set it may have left
    /// memory; absent in older manifests (a start then takes it from the restored trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_water_us: Option<i64>,
    /// Per Kafka partition, the newest `occurred_at` (µs) accepted: the late horizon's
    /// watermark is their minimum. Empty in older manifests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_event_time_us: BTreeMap<i32, i64>,
    /// The late horizon's watermark (µs): the oldest partition mark, never moving back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_us: Option<i64>,
    /// Counts of this checkpoint.
    pub counts: Counts,
    /// After a rewind: per partition, the offset below which records were already committed
    /// to the tables. They are replayed into state only, never written again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replay_until: BTreeMap<PartitionId, Offset>,
    /// `[alerts]` on: the alerts this checkpoint raised, to be produced once it is durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsFile>,
    /// How many times an operator accepted a topic reset before this checkpoint. Offsets of
    /// different epochs belong to different topics: no commit spans two epochs, and commits
    /// are stamped with it (`recon.input-epoch`) when it is not 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub input_epoch: u32,
    /// Kafka topic id (KIP-516) of the topic every record of this checkpoint came from, when
    /// the broker reports one. A start that finds another id stops (the topic was deleted and
    /// recreated). Absent in checkpoints of older builds, of brokers without ids, and after a
    /// topic reset (the next checkpoint records the new topic's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<crate::source::topic_id::TopicId>,
    /// A fleet committer's record only: per task, the newest task checkpoint this commit
    /// sequence and the ones before it hold (cumulative). Workers prune their task's log up
    /// to it once it is committed; a task log whose head is below it was restored from an
    /// older copy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fleet_tasks: BTreeMap<u32, CheckpointId>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The alerts of one checkpoint, kept beside its state (`ckpt/<id>-g<gen>/alerts.jsonl`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsFile {
    /// Path relative to the job root.
    pub path: String,
    /// Alerts in the file.
    pub count: u64,
}

impl Manifest {
    /// Next offset to read per partition after this checkpoint.
    pub fn resume_offsets(&self) -> BTreeMap<PartitionId, Offset> {
        self.partitions.iter().map(|(p, c)| (*p, c.end)).collect()
    }

    /// The manifest of nothing: no partitions read, no files, no state (a job's first claim;
    /// tests build on it).
    pub fn empty(job_id: JobId, checkpoint_id: CheckpointId, generation: Generation) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            job_id,
            checkpoint_id,
            generation,
            partitions: BTreeMap::new(),
            pending: BTreeMap::new(),
            state_chain: Vec::new(),
            state_sha256: BTreeMap::new(),
            cold_runs: Vec::new(),
            cold_retired: Vec::new(),
            high_water_us: None,
            partition_event_time_us: BTreeMap::new(),
            watermark_us: None,
            counts: Counts::default(),
            replay_until: BTreeMap::new(),
            alerts: None,
            input_epoch: 0,
            topic_id: None,
            fleet_tasks: BTreeMap::new(),
        }
    }

    /// A manifest that continues `self` with nothing new: same offsets and state, no files.
    /// Used for generation starts and rewinds.
    pub fn continuation(&self, checkpoint_id: CheckpointId, generation: Generation) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            job_id: self.job_id.clone(),
            checkpoint_id,
            generation,
            partitions: self
                .partitions
                .iter()
                .map(|(p, c)| (*p, c.continued()))
                .collect(),
            pending: BTreeMap::new(),
            state_chain: self.state_chain.clone(),
            state_sha256: self.state_sha256.clone(),
            cold_runs: self.cold_runs.clone(),
            cold_retired: self.cold_retired.clone(),
            high_water_us: self.high_water_us,
            partition_event_time_us: self.partition_event_time_us.clone(),
            watermark_us: self.watermark_us,
            counts: Counts::default(),
            replay_until: self.replay_until.clone(),
            alerts: None,
            input_epoch: self.input_epoch,
            topic_id: self.topic_id.clone(),
            fleet_tasks: self.fleet_tasks.clone(),
        }
    }
}

/// The checksum recorded for a state file in [`Manifest::state_sha256`]: SHA-256, hex.
pub fn state_checksum(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Path of the log entry of `id`, relative to the job root.
pub fn log_path(id: CheckpointId) -> String {
    format!("log/{:020}.json", id.0)
}

/// Parses the checkpoint id back out of a log path (any prefix before `log/`).
pub fn parse_log_path(path: &str) -> Option<CheckpointId> {
    let name = path.rsplit('/').next()?;
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 20).then_some(())?;
    digits.parse().ok().map(CheckpointId)
}

/// Directory of the files of checkpoint `id` written by generation `generation`.
pub fn checkpoint_dir(id: CheckpointId, generation: Generation) -> String {
    format!("ckpt/{:020}-g{}", id.0, generation.0)
}

/// Parses the checkpoint and generation back out of a path under a checkpoint directory
/// (`ckpt/<id>-g<generation>/<file>`, relative to the job root); `None` for anything else.
pub fn parse_checkpoint_dir(rel: &str) -> Option<(CheckpointId, Generation)> {
    let mut parts = rel.split('/');
    (parts.next()? == "ckpt").then_some(())?;
    let (id, generation) = parts.next()?.split_once("-g")?;
    (id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit())).then_some(())?;
    (!generation.is_empty() && generation.bytes().all(|b| b.is_ascii_digit())).then_some(())?;
    Some((
        CheckpointId(id.parse().ok()?),
        Generation(generation.parse().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_dirs_parse_back() {
        for (id, g) in [(0, 0), (7, 1), (u64::MAX, u64::MAX), (12_345, 40)] {
            let dir = checkpoint_dir(CheckpointId(id), Generation(g));
            let want = Some((CheckpointId(id), Generation(g)));
            assert_eq!(parse_checkpoint_dir(&format!("{dir}/state.bin")), want);
            assert_eq!(parse_checkpoint_dir(&dir), want);
        }
        for other in [
            "log/00000000000000000001.json",
            "ckpt/1-g1/state.bin",
            "ckpt/00000000000000000001-g/state.bin",
            "ckpt/00000000000000000001-gx/state.bin",
            "ckpt/0000000000000000000x-g1/state.bin",
            "x/ckpt/00000000000000000001-g1/state.bin",
        ] {
            assert_eq!(parse_checkpoint_dir(other), None, "{other}");
        }
    }

    #[test]
    fn log_paths_sort_numerically_and_parse_back() {
        let a = log_path(CheckpointId(9));
        let b = log_path(CheckpointId(10));
        assert!(a < b);
        assert_eq!(
            parse_log_path(&format!("root/job/{b}")),
            Some(CheckpointId(10))
        );
        assert_eq!(parse_log_path("root/job/log/12.json"), None);
    }

    #[test]
    fn a_cut_written_before_record_identities_still_reads() {
        let old = r#"{"start":3,"end":9,"records":4}"#;
        let cut: PartitionCut = serde_json::from_str(old).unwrap();
        assert_eq!(cut.last, None);
        assert_eq!(cut.end, Offset(9));
        // And a cut without an identity writes the old form.
        assert_eq!(serde_json::to_string(&cut).unwrap(), old);
    }

    #[test]
    fn a_cut_with_its_last_record_round_trips() {
        let cut = PartitionCut {
            start: Offset(3),
            end: Offset(9),
            records: 4,
            last: Some(LastRecord {
                offset: Offset(8),
                fingerprint: RecordFingerprint(0xfeed_0000_0000_0001),
                timestamp_ms: Some(1_700_000_000_000),
            }),
        };
        let json = serde_json::to_string(&cut).unwrap();
        assert!(
            json.contains(r#""fingerprint":"feed000000000001""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<PartitionCut>(&json).unwrap(), cut);
        let next = cut.continued();
        assert_eq!(
            (next.start, next.end, next.records),
            (Offset(9), Offset(9), 0)
        );
        assert_eq!(
            next.last, cut.last,
            "the identity carries over an empty interval"
        );
        let bad = json.replace("feed000000000001", "feed");
        let err = serde_json::from_str::<PartitionCut>(&bad).unwrap_err();
        assert!(err.to_string().contains("16 hex digits"), "{err}");
    }

    /// A manifest written before state checksums existed still reads (with none), and a
    /// continuation carries the checksums of the state it reuses.
    #[test]
    fn state_checksums_are_optional_and_carried_on() {
        let old = r#"{"format":1,"job_id":"j","checkpoint_id":4,"generation":1,"partitions":{},
            "pending":{},"state_chain":["ckpt/00000000000000000004-g1/state.bin"],
            "counts":{"records":0,"events":0,"duplicates":0,"rejected":0,"balance_rows":0}}"#;
        let mut m: Manifest = serde_json::from_str(old).unwrap();
        assert!(m.state_sha256.is_empty());
        let rel = m.state_chain[0].clone();
        m.state_sha256.insert(rel.clone(), state_checksum(b"state"));
        let next = m.continuation(CheckpointId(5), Generation(2));
        assert_eq!(next.state_sha256[&rel], state_checksum(b"state"));
        assert_ne!(state_checksum(b"state"), state_checksum(b"statf"));
    }

    #[test]
    fn entry_round_trips_through_json() {
        let e = LogEntry {
            format: FORMAT_VERSION,
            job_id: JobId::new("j").unwrap(),
            checkpoint_id: CheckpointId(3),
            generation: Generation(2),
            kind: EntryKind::Rewind {
                to: CheckpointId(1),
                reason: "bad deploy".into(),
            },
            manifest: "ckpt/x/manifest.json".into(),
            manifest_sha256: "00".into(),
            completed_at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"kind\":\"rewind\""), "{json}");
        assert_eq!(serde_json::from_str::<LogEntry>(&json).unwrap(), e);
    }
}
