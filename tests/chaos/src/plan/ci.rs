//! The fixed CI list of scenario shapes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::bounded::{Bounded, ColdDirOnRestart, cold_run_crash};
use super::{Ambiguity, DiskTarget, Fault, Knobs, Plan, Scale, Terminal, derive_seed};
use crate::traffic::Hostile;

/// The bounded CI pass: a fixed list of scenario shapes that together inject every fault kind and
/// every hostile class at least once, then two operator faults, then one scenario with bounded
/// state on (SIGKILLs at the barrier that wrote a cold run, a random one, restarts with the
/// local cold_dir wiped and kept, a late phase for evicted trips); `seed` varies traffic and
/// timings.
pub fn ci(seed: u64, scale: Scale, controllable: bool) -> Vec<Plan> {
    use crate::operator::{Condition, OperatorFault as O};
    use Fault as F;
    let shapes: Vec<(Vec<Fault>, Vec<Hostile>, Option<Terminal>)> = vec![
        (
            vec![
                F::CrashPoint {
                    point: "after-commit-before-record",
                    nth: 2,
                },
                F::KillRandom { delay_ms: 700 },
            ],
            vec![Hostile::PoisonFlood],
            None,
        ),
        (
            vec![
                F::AmbiguousCommit {
                    how: Ambiguity::KillJob,
                },
                F::AmbiguousCommit {
                    how: Ambiguity::LoseReply,
                },
                F::CrashPoint {
                    point: "during-commit",
                    nth: 1,
                },
            ],
            vec![Hostile::DuplicateBurst, Hostile::ReusedId],
            None,
        ),
        (
            vec![
                F::BrokerStop {
                    hard: true,
                    delay_ms: 500,
                    down_ms: 4_000,
                },
                F::GracefulRestart,
            ],
            vec![Hostile::HugePayloads],
            None,
        ),
        (
            vec![F::PartitionAdded { add: 1 }],
            vec![Hostile::ClockSkew],
            None,
        ),
        (
            vec![
                F::PgRestart {
                    immediate: true,
                    mid_commit: true,
                    delay_ms: 0,
                },
                F::CatalogRefuse {
                    delay_ms: 300,
                    down_ms: 12_000,
                },
            ],
            vec![Hostile::TwoCurrencies],
            None,
        ),
        (
            vec![
                F::Zombie { paused: true },
                F::Rewind {
                    back: 3,
                    running: false,
                },
                F::StorageFaults {
                    rate: 0.08,
                    for_ms: 5_000,
                },
            ],
            vec![],
            None,
        ),
        (
            vec![
                F::DiskFull {
                    target: DiskTarget::Checkpoints,
                    hold_ms: 1_000,
                },
                F::Zombie { paused: false },
            ],
            vec![Hostile::PoisonFlood],
            None,
        ),
        (vec![], vec![], Some(Terminal::LogTruncated)),
    ];
    // Two cheap operator faults: a second job id, and a crash loop over a deleted log entry.
    let operators = [
        O::SecondJobId,
        O::CrashLoop {
            condition: Condition::NewestEntryDeleted,
            restarts: 4,
        },
    ];
    // Appended last, so the seeds of the shapes above are unchanged.
    let bounded = (
        vec![cold_run_crash(2), F::KillRandom { delay_ms: 900 }],
        vec![Hostile::ReusedId],
        Bounded {
            settled_after_ms: 10 * 60_000,
            idle_after_ms: 40 * 60_000,
            scan_per_barrier: 64,
            cold_dir_on_restart: ColdDirOnRestart::Alternate,
            concurrent_trips: 16,
            late_records: 30,
            late_fault: Some(cold_run_crash(1)),
            late_phase: true,
        },
    );
    let shapes = shapes
        .into_iter()
        .map(|(f, h, t)| (f, h, t, None, None))
        .chain(operators.map(|o| (vec![], vec![], None, Some(o), None)))
        .chain([(bounded.0, bounded.1, None, None, Some(bounded.2))]);
    shapes
        .enumerate()
        .map(|(i, (faults, hostile, terminal, operator, bounded))| {
            let s = derive_seed(seed, i as u32);
            let mut rng = ChaCha8Rng::seed_from_u64(s);
            let faults: Vec<Fault> = faults
                .into_iter()
                .filter(|f| controllable || !f.needs_service_control())
                .collect();
            Plan {
                index: i as u32,
                seed: s,
                trips: rng.random_range(scale.trips_min..=scale.trips_max),
                partitions: rng.random_range(2..=3),
                hostile,
                faults,
                terminal,
                operator,
                knobs: Knobs {
                    checkpoint_interval_ms: 250,
                    commit_attempts_max: 5,
                    full_state_every: 3,
                    commit_every_checkpoints: 1,
                    poll_batch_records_max: 200,
                },
                bounded,
                fleet: None,
            }
        })
        .collect()
}
