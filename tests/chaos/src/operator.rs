//! Operator faults: things an operator (or an accident) does to the job's own records —
//! restoring an old backup of the checkpoint store, deleting the newest log entry, rolling a
//! table back, recreating the topic under a running job, deleting a pending data file, starting
//! a second job id on the same tables — and a crash loop under a supervisor's restart policy
//! while such a condition holds. Each must stop the job with exit 3 (operator needed) and write
//! nothing, at every start; then the operator's documented remedy is applied and the job must
//! end exact. Drawn from their own seed stream so adding them left other plans as they were.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::plan::Filter;

/// A condition under which every start must be refused (exit 3, nothing written), and that the
/// operator can undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Condition {
    /// A copy of the checkpoint store taken earlier is put back after the job moved on and
    /// committed; `kill`: the job was SIGKILLed (else SIGTERMed) before. Remedy: restore the
    /// newer copy.
    OldStoreCopy {
        /// SIGKILL instead of SIGTERM before the restore.
        kill: bool,
    },
    /// The newest log entries down to the one the tables hold are deleted. Remedy: put them back.
    NewestEntryDeleted,
    /// `ledger_events`' main branch is set to an older snapshot of this job (`back` stamped
    /// snapshots back, at most the oldest). Remedy: set it forward again.
    TableRolledBack {
        /// How many stamped snapshots back.
        back: u32,
    },
    /// The job is killed at `after-checkpoint-durable` and one data file the newest manifest
    /// lists is deleted. Remedy: put the file back (the harness keeps a copy).
    PendingFileDeleted,
}

impl Condition {
    /// Name in the report.
    pub fn kind(self) -> &'static str {
        match self {
            Condition::OldStoreCopy { .. } => "checkpoint_store_restored_old_copy",
            Condition::NewestEntryDeleted => "newest_log_entry_deleted",
            Condition::TableRolledBack { .. } => "table_rolled_back",
            Condition::PendingFileDeleted => "pending_file_deleted",
        }
    }

    fn draw(rng: &mut ChaCha8Rng, which: usize) -> Condition {
        match which {
            0 => Condition::OldStoreCopy {
                kill: rng.random_bool(0.5),
            },
            1 => Condition::NewestEntryDeleted,
            2 => Condition::TableRolledBack {
                back: rng.random_range(1..=3),
            },
            _ => Condition::PendingFileDeleted,
        }
    }
}

/// One operator fault (a scenario has at most one, and then no other fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum OperatorFault {
    /// The condition holds; 2-3 starts must each be refused; then the remedy.
    Condition(Condition),
    /// The topic is deleted, created again and filled past the old offsets while the job runs:
    /// the running job must exit 3 before committing anything of the new topic, a restart too;
    /// then `accept-topic-reset`. The old topic's unread tail is lost with it (counted).
    TopicRecreatedWhileRunning,
    /// A second job id on the same namespace, topic and store: every start of it is refused
    /// and writes nothing; the first job continues exact.
    SecondJobId,
    /// The condition holds while a naive supervisor (`Restart=always`) restarts the job
    /// `restarts` times in a row: every start exits 3, the log does not grow, nothing is
    /// written. Then the shipped systemd unit's policy must not restart it after exit 3.
    CrashLoop {
        /// The operator-needed condition.
        condition: Condition,
        /// Starts under the naive supervisor.
        restarts: u32,
    },
}

/// Report names of every operator fault kind.
pub const KINDS: [&str; 7] = [
    "checkpoint_store_restored_old_copy",
    "newest_log_entry_deleted",
    "table_rolled_back",
    "topic_recreated_while_running",
    "pending_file_deleted",
    "second_job_id_same_tables",
    "crash_loop_restart_policy",
];

impl OperatorFault {
    /// Name in the report.
    pub fn kind(self) -> &'static str {
        match self {
            OperatorFault::Condition(c) => c.kind(),
            OperatorFault::TopicRecreatedWhileRunning => KINDS[3],
            OperatorFault::SecondJobId => KINDS[5],
            OperatorFault::CrashLoop { .. } => KINDS[6],
        }
    }

    /// A kind `filter` allows, uniformly among those; `None` when it allows none.
    pub fn draw(rng: &mut ChaCha8Rng, filter: &Filter) -> Option<OperatorFault> {
        let allowed: Vec<usize> = (0..KINDS.len())
            .filter(|i| filter.allows(KINDS[*i]))
            .collect();
        if allowed.is_empty() {
            return None;
        }
        Some(match allowed[rng.random_range(0..allowed.len())] {
            0 => OperatorFault::Condition(Condition::draw(rng, 0)),
            1 => OperatorFault::Condition(Condition::NewestEntryDeleted),
            2 => OperatorFault::Condition(Condition::draw(rng, 2)),
            3 => OperatorFault::TopicRecreatedWhileRunning,
            4 => OperatorFault::Condition(Condition::PendingFileDeleted),
            5 => OperatorFault::SecondJobId,
            _ => {
                let which = rng.random_range(0..4);
                OperatorFault::CrashLoop {
                    condition: Condition::draw(rng, which),
                    restarts: rng.random_range(4..=7),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, Scale};

    const SCALE: Scale = Scale {
        trips_min: 10,
        trips_max: 20,
    };

    #[test]
    fn only_an_operator_kind_draws_it_every_time_and_nothing_else() {
        let filter = Filter {
            exclude: vec![],
            only: vec!["table_rolled_back".into()],
            force_bounded: false,
            fleet: false,
        };
        for i in 0..50 {
            let p = plan::random(i, plan::derive_seed(3, i), SCALE, true, &filter);
            assert!(
                matches!(
                    p.operator,
                    Some(OperatorFault::Condition(Condition::TableRolledBack { .. }))
                ),
                "{p:?}"
            );
            assert!(p.faults.is_empty() && p.terminal.is_none(), "{p:?}");
        }
    }

    #[test]
    fn random_mode_draws_every_operator_kind_and_excludes_them_on_request() {
        let all = Filter::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut operator = 0;
        for i in 0..400 {
            let p = plan::random(i, plan::derive_seed(5, i), SCALE, true, &all);
            if let Some(o) = p.operator {
                operator += 1;
                seen.insert(o.kind());
                assert!(p.faults.is_empty() && p.terminal.is_none(), "{p:?}");
            }
        }
        assert_eq!(seen.len(), KINDS.len(), "{seen:?}");
        assert!((60..=140).contains(&operator), "{operator} of 400");
        let none = Filter {
            exclude: KINDS.map(String::from).to_vec(),
            only: vec![],
            force_bounded: false,
            fleet: false,
        };
        for i in 0..100 {
            let p = plan::random(i, plan::derive_seed(5, i), SCALE, true, &none);
            assert!(p.operator.is_none(), "{p:?}");
        }
    }

    #[test]
    fn ci_list_holds_two_operator_faults() {
        let ci = plan::ci(1, SCALE, true);
        let ops: Vec<&str> = ci
            .iter()
            .filter_map(|p| p.operator.map(|o| o.kind()))
            .collect();
        assert_eq!(
            ops,
            ["second_job_id_same_tables", "crash_loop_restart_policy"]
        );
    }
}
