//! Fleet scenarios (`recon-chaos --fleet`): one job split into K = 8 tasks over a 16-partition
//! topic, run by several worker processes and one committer (docs/ARCHITECTURE.md, "Fleet"),
//! under a seeded sequence of 3-6 process and broker faults. Drawn from the scenario's seed
//! alone, so `--replay SEED --fleet` runs the same scenario again.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recon_pipeline::crash::CrashPoint;

use super::{Filter, Knobs, Plan, Scale};
use crate::traffic::Hostile;

/// Tasks of a fleet scenario's job.
pub const TASKS: u32 = 8;
/// Partitions of a fleet scenario's topic (>= [`TASKS`]).
pub const PARTITIONS: i32 = 16;
/// Workers at the start.
pub const WORKERS: usize = 3;
/// Fewest workers a fault may leave (a paused worker's tasks need somewhere to go).
pub const MIN_WORKERS: usize = 2;
/// Most workers an added worker may make.
pub const MAX_WORKERS: usize = 5;

/// Worker crash points (every task reaches them).
pub const WORKER_POINTS: [CrashPoint; 4] = [
    CrashPoint::MidBatch,
    CrashPoint::AfterFilesWritten,
    CrashPoint::BeforeCheckpointComplete,
    CrashPoint::AfterCheckpointDurable,
];

/// One fault of a fleet scenario. (Durations in milliseconds.)
#[derive(Clone, Debug, serde::Serialize)]
#[allow(missing_docs)]
pub enum FleetFault {
    /// SIGKILL a random worker `delay_ms` into a load; it comes back.
    WorkerKill { delay_ms: u64 },
    /// A random worker is SIGKILLed and comes back armed with `RECON_CRASH_AT=<point>:<nth>`:
    /// it must die there (SIGKILL, log line), then it comes back unarmed.
    WorkerCrashPoint { point: &'static str, nth: u64 },
    /// SIGKILL the committer `delay_ms` into a load; it comes back.
    CommitterKill { delay_ms: u64 },
    /// The committer is SIGKILLed and comes back armed at a committer point: it must die
    /// there, then it comes back unarmed.
    CommitterCrashPoint { point: &'static str, nth: u64 },
    /// SIGSTOP a worker that owns tasks for `pause_ms` (past the group's session timeout),
    /// then SIGCONT: its tasks moved meanwhile, and it must hear that it lost them.
    WorkerPaused { pause_ms: u64 },
    /// A worker joins and gets tasks.
    WorkerAdded,
    /// A worker leaves: SIGTERM, final checkpoints, exit 0; not restarted.
    WorkerRemoved,
    /// A second committer starts: the first must stop fenced (exit 4); the second stays.
    SecondCommitter,
    /// The Kafka broker stopped (SIGTERM or SIGKILL) for `down_ms`, `delay_ms` into a load.
    BrokerRestart {
        hard: bool,
        delay_ms: u64,
        down_ms: u64,
    },
    /// The operator rewinds the running fleet to the committer's commit sequence `back` before
    /// its newest, during a load: every task's rewind entry fences its running owner, whose
    /// worker restarts it from the entry (records since replayed into state only).
    Rewind { back: u64 },
    /// The operator reshards the fleet offline to `to` tasks: SIGTERM every worker, then the
    /// committer (everything committed), `reshard --tasks <to> --yes` (first killed at
    /// `crash`, when set, then run again to finish), K = `to` in the configuration, and the
    /// same number of workers and a committer started again.
    Reshard {
        to: u32,
        crash: Option<&'static str>,
    },
}

impl FleetFault {
    /// Name in the report.
    pub fn kind(&self) -> String {
        match self {
            FleetFault::WorkerKill { .. } => "fleet_worker_sigkill_random_time".into(),
            FleetFault::WorkerCrashPoint { point, .. } => {
                format!("fleet_worker_sigkill_at_{point}")
            }
            FleetFault::CommitterKill { .. } => "fleet_committer_sigkill_random_time".into(),
            FleetFault::CommitterCrashPoint { point, .. } => format!("fleet_sigkill_at_{point}"),
            FleetFault::WorkerPaused { .. } => "fleet_worker_paused_past_session_timeout".into(),
            FleetFault::WorkerAdded => "fleet_worker_added".into(),
            FleetFault::WorkerRemoved => "fleet_worker_removed_sigterm".into(),
            FleetFault::SecondCommitter => "fleet_second_committer_fences_first".into(),
            FleetFault::BrokerRestart { hard: true, .. } => {
                "fleet_kafka_broker_sigkill_restart".into()
            }
            FleetFault::BrokerRestart { hard: false, .. } => "fleet_kafka_broker_stop_start".into(),
            FleetFault::Rewind { .. } => "fleet_rewind_while_running".into(),
            FleetFault::Reshard { .. } => "fleet_reshard_offline".into(),
        }
    }
}

/// The fleet part of a plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FleetPlan {
    /// Tasks K.
    pub tasks: u32,
    /// Workers at the start.
    pub workers: usize,
    /// `[fleet] commit_interval_ms`.
    pub commit_interval_ms: u64,
    /// Faults, in order.
    pub faults: Vec<FleetFault>,
    /// The optional outputs on (alerts topic, current balances): each task emits its own, and
    /// batch-verify's checks (g)/(h) judge them at the end.
    pub outputs: bool,
}

impl FleetPlan {
    /// The scenario kind in the report.
    pub const KIND: &'static str = "fleet";

    /// The configuration section.
    pub fn toml(&self) -> String {
        let mut t = format!(
            "\n[fleet]\ntasks = {}\ncommit_interval_ms = {}\n",
            self.tasks, self.commit_interval_ms
        );
        if self.outputs {
            // The default alerts topic, shared by the scenarios (batch-verify reads a job's own
            // alerts by job id); current balances in the catalog's database.
            t.push_str("\n[alerts]\nenabled = true\n\n[current_balances]\nenabled = true\nbatch_rows = 500\n");
        }
        t
    }
}

/// Every fleet fault kind (`--only` / `--exclude` names).
pub fn kinds() -> Vec<String> {
    let mut v: Vec<String> = [
        FleetFault::WorkerKill { delay_ms: 0 },
        FleetFault::CommitterKill { delay_ms: 0 },
        FleetFault::WorkerPaused { pause_ms: 0 },
        FleetFault::WorkerAdded,
        FleetFault::WorkerRemoved,
        FleetFault::SecondCommitter,
        FleetFault::BrokerRestart {
            hard: true,
            delay_ms: 0,
            down_ms: 0,
        },
        FleetFault::BrokerRestart {
            hard: false,
            delay_ms: 0,
            down_ms: 0,
        },
        FleetFault::Rewind { back: 0 },
        FleetFault::Reshard { to: 0, crash: None },
    ]
    .iter()
    .map(FleetFault::kind)
    .collect();
    for p in WORKER_POINTS {
        v.push(
            FleetFault::WorkerCrashPoint {
                point: p.name(),
                nth: 1,
            }
            .kind(),
        );
    }
    for p in CrashPoint::COMMITTER {
        v.push(
            FleetFault::CommitterCrashPoint {
                point: p.name(),
                nth: 1,
            }
            .kind(),
        );
    }
    v
}

fn draw_fault(rng: &mut ChaCha8Rng, workers: usize) -> Option<FleetFault> {
    let f = match rng.random_range(0..100) {
        0..=13 => FleetFault::WorkerKill {
            delay_ms: rng.random_range(200..4_000),
        },
        14..=29 => FleetFault::WorkerCrashPoint {
            point: WORKER_POINTS[rng.random_range(0..WORKER_POINTS.len())].name(),
            nth: rng.random_range(1..=3),
        },
        30..=39 => FleetFault::CommitterKill {
            delay_ms: rng.random_range(200..4_000),
        },
        40..=53 => FleetFault::CommitterCrashPoint {
            point: CrashPoint::COMMITTER[rng.random_range(0..CrashPoint::COMMITTER.len())].name(),
            nth: rng.random_range(1..=3),
        },
        54..=64 => FleetFault::WorkerPaused {
            pause_ms: rng.random_range(14_000..17_000),
        },
        65..=73 if workers < MAX_WORKERS => FleetFault::WorkerAdded,
        74..=81 if workers > MIN_WORKERS => FleetFault::WorkerRemoved,
        82..=90 => FleetFault::SecondCommitter,
        91..=99 => FleetFault::BrokerRestart {
            hard: rng.random_bool(0.5),
            delay_ms: rng.random_range(200..2_000),
            down_ms: rng.random_range(1_000..12_000),
        },
        _ => return None,
    };
    Some(f)
}

/// A fleet scenario: 16 partitions, K = 8, 3 workers and a committer, 3-6 faults.
pub fn random(index: u32, seed: u64, scale: Scale, controllable: bool, filter: &Filter) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x666c_6565_7400_0001);
    let trips = rng.random_range(scale.trips_min..=scale.trips_max);
    let knobs = Knobs {
        // Eight tasks per worker checkpoint to one S3 server: a second apart, as in
        // tests/tests/fleet.rs.
        checkpoint_interval_ms: [700, 1_000, 1_500][rng.random_range(0..3)],
        commit_attempts_max: [5, 10][rng.random_range(0..2)],
        full_state_every: [1, 3, 10][rng.random_range(0..3)],
        commit_every_checkpoints: 1,
        poll_batch_records_max: [200, 500][rng.random_range(0..2)],
    };
    let n = rng.random_range(3..=6);
    let mut faults = Vec::new();
    let mut workers = WORKERS;
    let mut tries = 0;
    while faults.len() < n && tries < 10_000 {
        tries += 1;
        let Some(f) = draw_fault(&mut rng, workers) else {
            continue;
        };
        if matches!(f, FleetFault::BrokerRestart { .. }) && !controllable {
            continue;
        }
        if !filter.allows(&f.kind()) {
            continue;
        }
        match f {
            FleetFault::WorkerAdded => workers += 1,
            FleetFault::WorkerRemoved => workers -= 1,
            _ => {}
        }
        faults.push(f);
    }
    // Drawn from streams of their own: the draws above (and so earlier reports' seeds) stay as
    // they were.
    let mut extra = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7769_6e64_0001);
    let rewind = FleetFault::Rewind {
        back: extra.random_range(0..=3),
    };
    // Asked for by name (`--only fleet_rewind_while_running`): in every scenario.
    let asked = filter.only.iter().any(|o| *o == rewind.kind());
    if (extra.random_bool(0.3) || asked) && filter.allows(&rewind.kind()) {
        let at = extra.random_range(0..=faults.len());
        faults.insert(at, rewind);
    }
    // A reshard (25 %; every scenario when asked for by name), from a stream of its own too.
    let mut more = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7368_6172_6401);
    let reshard = FleetFault::Reshard {
        to: [2, 3, 4, 5, 6, 12, 16][more.random_range(0..7)],
        crash: [
            None,
            Some(CrashPoint::ReshardAfterShares.name()),
            Some(CrashPoint::ReshardAfterRecord.name()),
        ][more.random_range(0..3)],
    };
    let asked = filter.only.iter().any(|o| *o == reshard.kind());
    if (more.random_bool(0.25) || asked) && filter.allows(&reshard.kind()) {
        let at = more.random_range(0..=faults.len());
        faults.insert(at, reshard);
    }
    let mut hostile = Vec::new();
    let k = rng.random_range(0..=2);
    while hostile.len() < k {
        let h = Hostile::ALL[rng.random_range(0..Hostile::ALL.len())];
        if !hostile.contains(&h) {
            hostile.push(h);
        }
    }
    if rng.random_bool(0.3) {
        hostile.push(Hostile::ReusedId);
    }
    hostile.sort();
    Plan {
        index,
        seed,
        trips,
        partitions: PARTITIONS,
        hostile,
        faults: Vec::new(),
        terminal: None,
        operator: None,
        knobs,
        bounded: None,
        fleet: Some(FleetPlan {
            tasks: TASKS,
            workers: WORKERS,
            commit_interval_ms: 1_000,
            faults,
            // A stream of its own: the draws above (and so earlier reports' seeds) stay as they were.
            outputs: ChaCha8Rng::seed_from_u64(seed ^ 0x6f75_7470_7574_7301).random_bool(0.5),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const SCALE: Scale = Scale {
        trips_min: 150,
        trips_max: 700,
    };

    #[test]
    fn plans_are_replayable_and_keep_workers_in_bounds() {
        let filter = Filter {
            fleet: true,
            ..Filter::default()
        };
        let mut drawn = BTreeSet::new();
        for i in 0..300 {
            let seed = super::super::derive_seed(9, i);
            let p = super::super::random(i, seed, SCALE, true, &filter);
            let again = super::super::random(i, seed, SCALE, true, &filter);
            assert_eq!(format!("{p:?}"), format!("{again:?}"));
            assert_eq!(p.partitions, PARTITIONS);
            assert!(p.faults.is_empty() && p.terminal.is_none() && p.operator.is_none());
            let f = p.fleet.expect("a fleet plan");
            assert!((3..=8).contains(&f.faults.len()), "{f:?}");
            let mut workers = f.workers;
            for x in &f.faults {
                match x {
                    FleetFault::WorkerAdded => workers += 1,
                    FleetFault::WorkerRemoved => workers -= 1,
                    _ => {}
                }
                assert!((MIN_WORKERS..=MAX_WORKERS).contains(&workers), "{f:?}");
                drawn.insert(x.kind());
            }
        }
        assert_eq!(drawn, kinds().into_iter().collect(), "every kind is drawn");
        let env = super::super::random(0, 1, SCALE, false, &filter);
        assert!(
            !env.fleet
                .unwrap()
                .faults
                .iter()
                .any(|f| matches!(f, FleetFault::BrokerRestart { .. })),
            "no broker restart on services the harness does not control"
        );
    }
}
