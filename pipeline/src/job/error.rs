//! Why the job stopped: [`JobError`], one variant per cause, each saying what to do (its class
//! and exit code: `stop.rs`).

use crate::checkpoint::commit::CommitError;
use crate::checkpoint::log::LogError;
use crate::crash::CrashPoint;
use crate::ids::{Offset, PartitionId};
use crate::lakehouse::LakehouseError;
use crate::sink::SinkError;
use crate::source::SourceError;

/// Why the job stopped with an error. Every variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Configuration or connection problem at start.
    #[error(transparent)]
    Lakehouse(#[from] LakehouseError),
    /// Checkpoint log problem (store down, corrupt record, fenced).
    #[error(transparent)]
    Log(#[from] LogError),
    /// Commit problem (fenced, exhausted, table ahead of the log).
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// Publishing problem.
    #[error(transparent)]
    Publish(#[from] crate::checkpoint::publish::PublishError),
    /// Kafka problem.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// An optional output (alerts topic, current balances) failed or is fenced.
    #[error(transparent)]
    Output(#[from] crate::outputs::OutputError),
    /// Writing data files failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Recovery's checks refused to write (table ahead of the log, rolled back, another job's
    /// table, fenced); nothing was written. One line per table.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; also: "))]
    Refused(Vec<crate::checkpoint::protocol::Refusal>),
    /// The configuration does not fit what was found (e.g. a partition the topic lacks).
    #[error("configuration: {0}")]
    Config(String),
    /// The Kafka consumer thread ended without an error (it should never): restart.
    #[error("the Kafka consumer thread stopped")]
    ConsumerStopped,
    /// The cold tier failed: unreadable (corrupt, operator needed) or its store did not
    /// answer (transient).
    #[error(transparent)]
    Cold(#[from] crate::cold::ColdError),
    /// The checkpoint's state files did not decode (their checksums matched: written so by a
    /// bug or another build); nothing was written.
    #[error(
        "{0}; rewind to an older checkpoint (`recon-pipeline checkpoints list`, then `recon-pipeline rewind`)"
    )]
    State(#[from] crate::state::codec::CodecError),
    /// A partition's offsets went backwards within a run: stopping rather than counting twice.
    #[error(
        "partition {partition}: offset {offset} is before the expected {expected}; offsets moved backwards (topic recreated or reset?). Stopping rather than double-counting; if the topic was recreated, see `recon-pipeline accept-topic-reset`"
    )]
    OffsetsBackwards {
        /// The partition.
        partition: PartitionId,
        /// The offset read.
        offset: i64,
        /// The next offset expected.
        expected: Offset,
    },
    /// A fleet's shape, membership or committer refused (see the message).
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// A trip's sums no longer fit the state's exact integers (the fold refused before
    /// state changed: a bug or state written by another build).
    #[error("{0}; nothing was written for it: report it with the log")]
    Overflow(#[from] crate::state::Overflow),
    /// The topic identity check answered for fewer partitions than it was asked about (a bug).
    #[error(
        "the topic identity check returned nothing for partition {partition}; this is a bug, please report it with the log"
    )]
    IdentityIncomplete {
        /// The partition without an answer.
        partition: PartitionId,
    },
    /// The warehouse's object store could not be opened to check pending files.
    #[error(
        "cannot open the warehouse {warehouse} to check pending files: {message}; check catalog.warehouse and its credentials"
    )]
    Warehouse {
        /// `catalog.warehouse`.
        warehouse: String,
        /// The object store's error.
        message: String,
    },
    /// A rewind's replay range holds more dead letters to skip than memory allows.
    #[error(
        "{what}: more than {max} event_id_reused/beyond_horizon dead letters in the rewind's replay range; rewind to a newer checkpoint"
    )]
    ReplayTooLarge {
        /// Which table and range.
        what: String,
        /// The limit.
        max: usize,
    },
    /// A completed checkpoint's alerts file does not decode (operator needed).
    #[error("alerts file {path} is unreadable: {message}; rewind to an older checkpoint")]
    AlertsUnreadable {
        /// The file.
        path: String,
        /// The decoder's error.
        message: String,
    },
    /// A completed checkpoint's alerts file holds another count than its manifest records.
    #[error(
        "alerts file {path} holds {found} alerts, its manifest says {recorded}; rewind to an older checkpoint"
    )]
    AlertsCount {
        /// The file.
        path: String,
        /// Alerts decoded.
        found: u64,
        /// Alerts the manifest records.
        recorded: u64,
    },
    /// A thread or runtime could not be started (resources): restarting may help.
    #[error("{what}: cannot start: {message}")]
    Spawn {
        /// What was starting.
        what: String,
        /// The system's error.
        message: String,
    },
    /// A task of the job panicked (a bug: report it with the log).
    #[error("{what} panicked: {message}; this is a bug, please report it with the log")]
    Panicked {
        /// What was running.
        what: String,
        /// The panic's message.
        message: String,
    },
    /// A simulated crash (tests and demo only).
    #[error("simulated crash at {}", .0.name())]
    SimulatedCrash(CrashPoint),
}
