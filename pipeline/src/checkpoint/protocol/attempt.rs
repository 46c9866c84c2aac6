//! One commit attempt, decided: what the caller does with the catalog's answer, and then with
//! the table read again. `Committer::commit` (`checkpoint/commit.rs`) only performs.
//!
//! The catalog's answer is never trusted alone: a lost reply can hide a landed commit and an
//! "ok" can come from a commit the table does not hold. The table, read again, decides; the
//! answer only tells whether the append that landed was this attempt's.

use super::AttemptVerdict;
use crate::ids::{CheckpointId, Generation};

/// What the catalog answered to one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The commit call returned success.
    Ok,
    /// It returned an error.
    Failed {
        /// The error, for the log and the final error.
        message: String,
        /// Iceberg's `DataInvalid` (what it answers to a snapshot older than the table's last
        /// update: a clock skew, worth naming).
        data_invalid: bool,
    },
    /// No answer within the commit timeout.
    NoAnswer {
        /// Why, for the log.
        message: String,
    },
}

impl Answer {
    /// The answer as the log and the final error say it.
    pub fn describe(&self) -> &str {
        match self {
            Answer::Ok => "ok",
            Answer::Failed { message, .. } | Answer::NoAnswer { message } => message,
        }
    }
}

/// What the caller does once the catalog answered, before reading the table again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnAnswer {
    /// A newer generation committed (the guard saw it on the attempt's base): stop.
    Fenced {
        /// The generation found.
        theirs: Generation,
    },
    /// The base moved the way the plan did not assume: re-plan from `committed`.
    Stale {
        /// What the base holds.
        committed: Option<CheckpointId>,
    },
    /// Ask whether the clocks are skewed (Iceberg refused the snapshot as too old); if they
    /// are not, read the table again.
    CheckClock,
    /// Read the table again: it decides.
    Reload,
}

/// Decides from the answer and what the guard saw on the attempt's base (`None`: the attempt
/// never reached the guard). A guard's refusal of another job's table is handled before.
pub fn on_answer(answer: &Answer, guard: Option<AttemptVerdict>) -> OnAnswer {
    match guard {
        Some(AttemptVerdict::Fenced { theirs }) => OnAnswer::Fenced { theirs },
        Some(AttemptVerdict::Stale { committed }) => OnAnswer::Stale { committed },
        _ if matches!(
            answer,
            Answer::Failed {
                data_invalid: true,
                ..
            }
        ) =>
        {
            OnAnswer::CheckClock
        }
        _ => OnAnswer::Reload,
    }
}

/// The attempt's outcome, as the table read again says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This attempt's append landed.
    Committed,
    /// The table holds the checkpoints, but not by this attempt's doing (a lost reply of an
    /// earlier attempt, or another process of this job).
    AlreadyCommitted,
    /// A newer generation committed: stop.
    Fenced {
        /// The generation found.
        theirs: Generation,
    },
    /// The table moved: re-plan from `committed`.
    Stale {
        /// What the table holds.
        committed: Option<CheckpointId>,
    },
    /// Nothing landed: try again. `phantom`: the catalog said "ok" for a commit the table
    /// does not hold (worth an error in the log).
    Retry {
        /// The catalog reported success.
        phantom: bool,
    },
}

/// Decides from the answer, what the guard saw on the base, and the verdict of the table read
/// again against the same plan.
pub fn on_reload(answer: &Answer, guard: Option<AttemptVerdict>, table: AttemptVerdict) -> Outcome {
    let ok = *answer == Answer::Ok;
    match table {
        AttemptVerdict::AlreadyCommitted if ok && guard == Some(AttemptVerdict::Proceed) => {
            Outcome::Committed
        }
        AttemptVerdict::AlreadyCommitted => Outcome::AlreadyCommitted,
        AttemptVerdict::Fenced { theirs } => Outcome::Fenced { theirs },
        AttemptVerdict::Stale { committed } => Outcome::Stale { committed },
        AttemptVerdict::Proceed => Outcome::Retry { phantom: ok },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(data_invalid: bool) -> Answer {
        Answer::Failed {
            message: "boom".into(),
            data_invalid,
        }
    }

    #[test]
    fn the_guard_decides_before_the_answer() {
        let theirs = Generation(9);
        let fenced = Some(AttemptVerdict::Fenced { theirs });
        for answer in [Answer::Ok, failed(true), failed(false)] {
            assert_eq!(on_answer(&answer, fenced), OnAnswer::Fenced { theirs });
            let stale = Some(AttemptVerdict::Stale { committed: None });
            assert_eq!(
                on_answer(&answer, stale),
                OnAnswer::Stale { committed: None }
            );
        }
        let proceed = Some(AttemptVerdict::Proceed);
        assert_eq!(on_answer(&failed(true), proceed), OnAnswer::CheckClock);
        assert_eq!(on_answer(&failed(true), None), OnAnswer::CheckClock);
        assert_eq!(on_answer(&failed(false), proceed), OnAnswer::Reload);
        assert_eq!(on_answer(&Answer::Ok, proceed), OnAnswer::Reload);
        let silent = Answer::NoAnswer {
            message: "no answer within 5s".into(),
        };
        assert_eq!(on_answer(&silent, None), OnAnswer::Reload);
    }

    /// Committed only when the table holds the checkpoints, the call said ok and the guard let
    /// this very attempt through; an ok the table does not show is retried, loudly.
    #[test]
    fn the_table_read_again_decides() {
        let held = AttemptVerdict::AlreadyCommitted;
        let proceed = Some(AttemptVerdict::Proceed);
        assert_eq!(on_reload(&Answer::Ok, proceed, held), Outcome::Committed);
        assert_eq!(
            on_reload(&failed(false), proceed, held),
            Outcome::AlreadyCommitted
        );
        assert_eq!(
            on_reload(&Answer::Ok, None, held),
            Outcome::AlreadyCommitted
        );
        let absent = AttemptVerdict::Proceed;
        let phantom = Outcome::Retry { phantom: true };
        assert_eq!(on_reload(&Answer::Ok, proceed, absent), phantom);
        let retry = Outcome::Retry { phantom: false };
        assert_eq!(on_reload(&failed(false), proceed, absent), retry);
        let theirs = Generation(4);
        let fenced = AttemptVerdict::Fenced { theirs };
        assert_eq!(
            on_reload(&Answer::Ok, proceed, fenced),
            Outcome::Fenced { theirs }
        );
        let committed = Some(CheckpointId(3));
        let stale = AttemptVerdict::Stale { committed };
        assert_eq!(
            on_reload(&failed(true), None, stale),
            Outcome::Stale { committed }
        );
    }
}
