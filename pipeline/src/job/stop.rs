//! Why the job stopped, classified for the supervisor: restart, fix the config, call an
//! operator, or step aside for the instance that took over.
//!
//! The exit codes of `recon-pipeline run` (`main.rs`), a compatibility promise documented in
//! docs/CONFIGURATION.md: 0 done, 1 [`StopClass::Transient`], 2 [`StopClass::Config`],
//! 3 [`StopClass::OperatorNeeded`], 4 [`StopClass::Fenced`]. Supervisors restart only on 1.

use crate::checkpoint::commit::CommitError;
use crate::checkpoint::log::LogError;
use crate::checkpoint::protocol::Refusal;
use crate::checkpoint::publish::PublishError;
use crate::checkpoint::store::StoreError;
use crate::lakehouse::LakehouseError;
use crate::outputs::OutputError;
use crate::sink::SinkError;
use crate::source::SourceError;

use super::JobError;

/// What a stop means for whoever restarts the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StopClass {
    /// Something outside was unreachable or slow (broker, catalog, store), or a crash: restart.
    Transient,
    /// The configuration is wrong: fix it; restarting as is will not help.
    Config,
    /// A safety stop: the data or the log is not what the job expects. Nothing was written; the
    /// same stop is found again at every restart until an operator acts.
    OperatorNeeded,
    /// Another instance of the same job took over: this one must stay stopped.
    Fenced,
}

impl StopClass {
    /// Every class, in exit-code order.
    pub const ALL: [StopClass; 4] = [
        StopClass::Transient,
        StopClass::Config,
        StopClass::OperatorNeeded,
        StopClass::Fenced,
    ];

    /// The process exit code of `recon-pipeline run` for this class.
    pub fn exit_code(self) -> u8 {
        match self {
            StopClass::Transient => 1,
            StopClass::Config => 2,
            StopClass::OperatorNeeded => 3,
            StopClass::Fenced => 4,
        }
    }

    /// The name in logs, the final error line and the `recon_stopped{class=...}` metric.
    pub fn name(self) -> &'static str {
        match self {
            StopClass::Transient => "transient",
            StopClass::Config => "config",
            StopClass::OperatorNeeded => "operator-needed",
            StopClass::Fenced => "fenced",
        }
    }

    /// Whether a supervisor should start the job again by itself.
    pub fn restart(self) -> bool {
        self == StopClass::Transient
    }

    /// What the operator does next, for the final error line.
    pub fn advice(self) -> &'static str {
        match self {
            StopClass::Transient => {
                "restarting is safe and may help (the supervisor restarts on exit 1)"
            }
            StopClass::Config => {
                "fix the configuration named above, then start again; restarting as is will not help"
            }
            StopClass::OperatorNeeded => {
                "nothing was written; do not restart in a loop: act as the message says, inspect with \
                 `recon-pipeline checkpoints list`, then start again (the same check runs first)"
            }
            StopClass::Fenced => {
                "another instance of this job_id is running: keep one; this one must stay stopped"
            }
        }
    }
}

impl std::fmt::Display for StopClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl JobError {
    /// How the supervisor must treat this stop.
    pub fn class(&self) -> StopClass {
        match self {
            JobError::Lakehouse(e) => lakehouse_class(e),
            JobError::Log(e) => log_class(e),
            JobError::Commit(e) => commit_class(e),
            JobError::Publish(e) => publish_class(e),
            JobError::Source(e) => source_class(e),
            JobError::Output(e) => output_class(e),
            JobError::Sink(e) => sink_class(e),
            JobError::Refused(r) => refusals_class(r),
            JobError::Config(_) => StopClass::Config,
            JobError::ConsumerStopped => StopClass::Transient,
            JobError::Cold(crate::cold::ColdError::Io(_)) => StopClass::Transient,
            JobError::Cold(crate::cold::ColdError::Corrupt(_)) => StopClass::OperatorNeeded,
            JobError::State(_) | JobError::OffsetsBackwards { .. } => StopClass::OperatorNeeded,
            JobError::Fleet(e) => e.class(),
            JobError::Overflow(_)
            | JobError::IdentityIncomplete { .. }
            | JobError::ReplayTooLarge { .. }
            | JobError::AlertsUnreadable { .. }
            | JobError::AlertsCount { .. }
            | JobError::Panicked { .. } => StopClass::OperatorNeeded,
            JobError::Warehouse { .. } => StopClass::Config,
            JobError::Spawn { .. } => StopClass::Transient,
            JobError::SimulatedCrash(_) => StopClass::Transient,
        }
    }
}

/// Fenced when any table says so (another instance took over), otherwise an operator's stop.
pub fn refusals_class(refusals: &[Refusal]) -> StopClass {
    if refusals
        .iter()
        .any(|r| refusal_class(r) == StopClass::Fenced)
    {
        StopClass::Fenced
    } else {
        StopClass::OperatorNeeded
    }
}

/// The class of one recovery refusal.
pub fn refusal_class(r: &Refusal) -> StopClass {
    match r {
        Refusal::Fenced { .. } => StopClass::Fenced,
        Refusal::TableAhead { .. }
        | Refusal::BehindMarker { .. }
        | Refusal::NotOwner { .. }
        | Refusal::NotTheLogsCheckpoint { .. } => StopClass::OperatorNeeded,
    }
}

fn lakehouse_class(e: &LakehouseError) -> StopClass {
    match e {
        LakehouseError::Open { .. }
        | LakehouseError::Catalog { .. }
        | LakehouseError::OpenTimeout { .. } => StopClass::Transient,
        // Two builds writing one namespace: an operator must say which schema is right.
        LakehouseError::SchemaMismatch { .. } => StopClass::OperatorNeeded,
    }
}

fn store_class(e: &StoreError) -> StopClass {
    match e {
        StoreError::Io { .. } => StopClass::Transient,
        StoreError::TooMany { .. } => StopClass::OperatorNeeded,
    }
}

/// The class of a checkpoint-log error (also for the operator commands that only touch the log).
pub fn log_class(e: &LogError) -> StopClass {
    match e {
        LogError::Store(s) => store_class(s),
        LogError::Corrupt { .. } | LogError::StateChecksum { .. } => StopClass::OperatorNeeded,
        LogError::Fenced { .. } | LogError::Moved { .. } | LogError::ManifestTaken { .. } => {
            StopClass::Fenced
        }
        LogError::ClaimRace { .. } => StopClass::Transient,
    }
}

fn commit_class(e: &CommitError) -> StopClass {
    match e {
        CommitError::Fenced { .. } => StopClass::Fenced,
        CommitError::Exhausted { .. } | CommitError::Unreachable { .. } => StopClass::Transient,
        CommitError::Refused { refusal } => refusal_class(refusal),
        CommitError::Protocol { .. } => StopClass::OperatorNeeded,
        // Only an operator can tell which clock is wrong once the wait is long.
        CommitError::ClockSkew { skew, .. } if skew.operator_needed() => StopClass::OperatorNeeded,
        CommitError::ClockSkew { .. } => StopClass::Transient,
    }
}

fn publish_class(e: &PublishError) -> StopClass {
    match e {
        PublishError::Commit(c) => commit_class(c),
        PublishError::Log(l) => log_class(l),
        PublishError::Refused(r) => refusal_class(r),
        PublishError::KeptMoving { .. } => StopClass::Transient,
        // A missing or wrong-size pending file needs an operator; a warehouse that did not
        // answer in time is transient.
        PublishError::PendingFile(p) if p.needs_operator() => StopClass::OperatorNeeded,
        PublishError::PendingFile(_) => StopClass::Transient,
        PublishError::CheckpointGone { .. } | PublishError::PendingUnreadable { .. } => {
            StopClass::OperatorNeeded
        }
    }
}

fn source_class(e: &SourceError) -> StopClass {
    match e {
        SourceError::Config(_) | SourceError::Refused { .. } => StopClass::Config,
        // A missing topic may be created by someone else: restarting then helps.
        SourceError::Unreachable { .. }
        | SourceError::NoTopic { .. }
        | SourceError::Stalled { .. } => StopClass::Transient,
        SourceError::NotTheSavedInput { .. } | SourceError::Read { .. } => {
            StopClass::OperatorNeeded
        }
    }
}

fn output_class(e: &OutputError) -> StopClass {
    match e {
        OutputError::Kafka { .. } | OutputError::Postgres { .. } => StopClass::Transient,
        OutputError::Fenced { .. } => StopClass::Fenced,
        // The upsert's count: rolled back, but a table that answers otherwise than staged (a
        // trigger, a rule) needs a look before anything is emitted again.
        OutputError::Ahead { .. }
        | OutputError::UpsertCount { .. }
        | OutputError::Panicked { .. } => StopClass::OperatorNeeded,
    }
}

fn sink_class(e: &SinkError) -> StopClass {
    match e {
        SinkError::Write { .. } => StopClass::Transient,
        // Rows that do not fit the table definition: the tables are not what the job writes.
        SinkError::Rows(_) => StopClass::OperatorNeeded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CheckpointId, Generation, JobId};

    fn job() -> JobId {
        JobId::new("j").unwrap()
    }

    #[test]
    fn every_class_has_its_own_exit_code_and_only_transient_restarts() {
        let codes: Vec<u8> = StopClass::ALL.iter().map(|c| c.exit_code()).collect();
        assert_eq!(codes, [1, 2, 3, 4]);
        let restart: Vec<bool> = StopClass::ALL.iter().map(|c| c.restart()).collect();
        assert_eq!(restart, [true, false, false, false]);
    }

    #[test]
    fn errors_map_to_their_class() {
        let check = |e: JobError, expected: StopClass| {
            assert_eq!(e.class(), expected, "{e}");
        };
        check(
            LogError::Corrupt {
                job: job(),
                message: "x".into(),
            }
            .into(),
            StopClass::OperatorNeeded,
        );
        check(
            LogError::Fenced {
                job: job(),
                ours: Generation(1),
                by: Generation(2),
                at: CheckpointId(3),
            }
            .into(),
            StopClass::Fenced,
        );
        check(
            CommitError::Fenced {
                table: "t".into(),
                job: job(),
                ours: Generation(1),
                theirs: Generation(2),
            }
            .into(),
            StopClass::Fenced,
        );
        check(
            LogError::Store(StoreError::Io {
                op: "get",
                path: "p".into(),
                source: object_store::Error::Generic {
                    store: "test",
                    source: "down".into(),
                },
            })
            .into(),
            StopClass::Transient,
        );
        check(
            CommitError::Unreachable {
                table: "t".into(),
                message: "timeout".into(),
            }
            .into(),
            StopClass::Transient,
        );
        let ahead = Refusal::TableAhead {
            table: "t".into(),
            job: "j".into(),
            committed: CheckpointId(7),
            head: Some(CheckpointId(5)),
        };
        check(
            PublishError::Refused(ahead.clone()).into(),
            StopClass::OperatorNeeded,
        );
        let io = crate::cold::ColdError::Io("store down".into());
        check(io.into(), StopClass::Transient);
        // What used to be an untyped protocol error, each in its own class.
        check(
            JobError::Warehouse {
                warehouse: "s3x://w".into(),
                message: "unknown scheme".into(),
            },
            StopClass::Config,
        );
        check(
            JobError::Spawn {
                what: "task 3's thread".into(),
                message: "Resource temporarily unavailable".into(),
            },
            StopClass::Transient,
        );
        for e in [
            JobError::IdentityIncomplete {
                partition: crate::ids::PartitionId(2),
            },
            JobError::ReplayTooLarge {
                what: "rejected_events".into(),
                max: 10,
            },
            JobError::AlertsCount {
                path: "a".into(),
                found: 1,
                recorded: 2,
            },
            crate::state::Overflow { trip: "t".into() }.into(),
        ] {
            check(e, StopClass::OperatorNeeded);
        }
        let corrupt = crate::cold::ColdError::Corrupt("run x: CRC".into());
        check(corrupt.into(), StopClass::OperatorNeeded);
        let gone = PublishError::CheckpointGone {
            id: CheckpointId(4),
        };
        check(gone.into(), StopClass::OperatorNeeded);
        let unreadable = PublishError::PendingUnreadable {
            table: "t".into(),
            what: "their schema 3 is gone".into(),
        };
        check(unreadable.into(), StopClass::OperatorNeeded);
        check(
            JobError::Refused(vec![ahead.clone()]),
            StopClass::OperatorNeeded,
        );
        check(
            JobError::Refused(vec![
                ahead,
                Refusal::Fenced {
                    table: "t".into(),
                    ours: Generation(1),
                    theirs: Generation(2),
                },
            ]),
            StopClass::Fenced,
        );
        check(JobError::Config("x".into()), StopClass::Config);
        check(JobError::ConsumerStopped, StopClass::Transient);
        check(
            SourceError::NotTheSavedInput {
                message: "x".into(),
            }
            .into(),
            StopClass::OperatorNeeded,
        );
        check(
            JobError::SimulatedCrash(crate::crash::CrashPoint::MidBatch),
            StopClass::Transient,
        );
    }
}
