//! Scenario plans: which faults, which hostile input, which storage and job knobs, all drawn from
//! one seed so that a failing scenario is replayed by its seed alone.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recon_pipeline::crash::CrashPoint;

use crate::operator::OperatorFault;
use crate::traffic::Hostile;

pub mod bounded;
mod ci;
pub mod fleet;
pub use bounded::Bounded;
pub use ci::ci;

/// How the catalog commit is made ambiguous (in the PostgreSQL proxy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Ambiguity {
    /// The commit lands; the job is SIGKILLed before it hears the answer.
    KillJob,
    /// The commit lands; the answer is lost (connection reset).
    LoseReply,
    /// The COMMIT never reaches the server; the connection is reset.
    DropCommit,
}

/// Where a full disk strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum DiskTarget {
    /// The local checkpoint directory.
    Checkpoints,
    /// The local warehouse directory.
    Warehouse,
}

/// One injected fault. (Field meanings are in each variant's line; durations in milliseconds.)
#[derive(Clone, Debug, serde::Serialize)]
#[allow(missing_docs)]
pub enum Fault {
    /// SIGKILL `delay_ms` after the load starts.
    KillRandom { delay_ms: u64 },
    /// SIGKILL at the `nth` visit of a named crash point.
    CrashPoint { point: &'static str, nth: u64 },
    /// The catalog commit is made ambiguous.
    AmbiguousCommit { how: Ambiguity },
    /// Kafka broker stopped (SIGTERM or SIGKILL) for `down_ms`.
    BrokerStop {
        hard: bool,
        delay_ms: u64,
        down_ms: u64,
    },
    /// Partitions added to the topic while the job runs.
    PartitionAdded { add: i32 },
    /// PostgreSQL restarted (`immediate` = crash + recovery), at a random time or while a catalog
    /// commit is in flight.
    PgRestart {
        immediate: bool,
        mid_commit: bool,
        delay_ms: u64,
    },
    /// The catalog refuses connections for `down_ms`.
    CatalogRefuse { delay_ms: u64, down_ms: u64 },
    /// A second instance of the same job: the first is paused (SIGSTOP) and resumed after the
    /// second took over, or both run at once.
    Zombie { paused: bool },
    /// Object-store faults on `rate` of S3 requests for `for_ms`.
    StorageFaults { rate: f64, for_ms: u64 },
    /// The local checkpoint or warehouse directory runs out of space; freed after `hold_ms`.
    DiskFull { target: DiskTarget, hold_ms: u64 },
    /// SIGTERM: final checkpoint and commit, exit 0, restart.
    GracefulRestart,
    /// `recon-pipeline rewind --to-checkpoint <head - back>` by an operator: with the job stopped
    /// (SIGTERM first), or while it runs (it must then be fenced).
    Rewind { back: u32, running: bool },
}

impl Fault {
    /// Name in the report.
    pub fn kind(&self) -> String {
        match self {
            Fault::KillRandom { .. } => "sigkill_random_time".into(),
            Fault::CrashPoint { point, .. } => format!("sigkill_at_{point}"),
            Fault::AmbiguousCommit { how } => match how {
                Ambiguity::KillJob => "ambiguous_commit_job_killed_before_reply".into(),
                Ambiguity::LoseReply => "ambiguous_commit_reply_lost".into(),
                Ambiguity::DropCommit => "catalog_commit_dropped".into(),
            },
            Fault::BrokerStop { hard, .. } => {
                if *hard {
                    "kafka_broker_sigkill_restart".into()
                } else {
                    "kafka_broker_stop_start".into()
                }
            }
            Fault::PartitionAdded { .. } => "kafka_partition_added".into(),
            Fault::PgRestart {
                immediate,
                mid_commit,
                ..
            } => format!(
                "postgres_restart_{}{}",
                if *immediate { "immediate" } else { "fast" },
                if *mid_commit { "_mid_commit" } else { "" }
            ),
            Fault::CatalogRefuse { .. } => "catalog_refusing_connections".into(),
            Fault::Zombie { paused } => {
                if *paused {
                    "zombie_paused_then_resumed".into()
                } else {
                    "zombie_concurrent".into()
                }
            }
            Fault::StorageFaults { .. } => "object_store_faults".into(),
            Fault::DiskFull { target, .. } => match target {
                DiskTarget::Checkpoints => "disk_full_checkpoint_dir".into(),
                DiskTarget::Warehouse => "disk_full_warehouse_dir".into(),
            },
            Fault::GracefulRestart => "sigterm_graceful_restart".into(),
            Fault::Rewind { running, .. } => {
                if *running {
                    "rewind_request_while_running".into()
                } else {
                    "rewind_request".into()
                }
            }
        }
    }

    /// Needs control of the broker or of PostgreSQL (a private service set).
    pub fn needs_service_control(&self) -> bool {
        matches!(self, Fault::BrokerStop { .. } | Fault::PgRestart { .. })
    }
}

/// A scenario that ends with the job stopped on purpose (an operator must decide).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Terminal {
    /// Records the job has not read yet are deleted (retention): the saved offset is gone.
    LogTruncated,
    /// The topic is deleted and created again, and holds more records than the saved offsets.
    TopicRecreated,
}

impl Terminal {
    /// Name in the report.
    pub fn kind(self) -> &'static str {
        match self {
            Terminal::LogTruncated => "saved_offset_truncated_away",
            Terminal::TopicRecreated => "topic_deleted_and_recreated",
        }
    }
}

/// Knobs of the job.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Knobs {
    /// Checkpoint interval.
    pub checkpoint_interval_ms: u64,
    /// Commit attempts before the job stops.
    pub commit_attempts_max: u32,
    /// Full state every n checkpoints.
    pub full_state_every: u32,
    /// Commit every n checkpoints.
    pub commit_every_checkpoints: u32,
    /// Records per consumer batch.
    pub poll_batch_records_max: u32,
}

/// One scenario.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    /// Position in the run.
    pub index: u32,
    /// Its own seed (replay: `--replay SEED`).
    pub seed: u64,
    /// Trips of traffic.
    pub trips: u64,
    /// Initial partitions.
    pub partitions: i32,
    /// Hostile input.
    pub hostile: Vec<Hostile>,
    /// Faults, in order.
    pub faults: Vec<Fault>,
    /// A terminal stop instead of faults.
    pub terminal: Option<Terminal>,
    /// An operator fault instead of faults (the scenario then ends exact after the remedy).
    pub operator: Option<OperatorFault>,
    /// Knobs.
    pub knobs: Knobs,
    /// Bounded state on (eviction, cold tier, a late phase): see [`bounded`].
    pub bounded: Option<Bounded>,
    /// A fleet of workers and one committer instead of one process (`--fleet`): see [`fleet`].
    pub fleet: Option<fleet::FleetPlan>,
}

/// Sizes of traffic.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Fewest trips per scenario.
    pub trips_min: u64,
    /// Most trips per scenario.
    pub trips_max: u64,
}

/// splitmix64: derives scenario seeds from the run seed.
pub fn derive_seed(run_seed: u64, index: u32) -> u64 {
    let mut z = run_seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(u64::from(index) + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn knobs(rng: &mut ChaCha8Rng) -> Knobs {
    Knobs {
        checkpoint_interval_ms: [150, 250, 400, 700][rng.random_range(0..4)],
        commit_attempts_max: [3, 5, 10][rng.random_range(0..3)],
        full_state_every: [1, 3, 10][rng.random_range(0..3)],
        commit_every_checkpoints: if rng.random_bool(0.8) { 1 } else { 3 },
        poll_batch_records_max: [50, 200, 500][rng.random_range(0..3)],
    }
}

/// Which kinds a random run may draw (`--exclude`, `--only`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Never these.
    pub exclude: Vec<String>,
    /// Only these, when not empty.
    pub only: Vec<String>,
    /// Every scenario with bounded state on (`--bounded`).
    pub force_bounded: bool,
    /// Every scenario a fleet scenario (`--fleet`).
    pub fleet: bool,
}

impl Filter {
    /// Whether `kind` may be drawn.
    pub fn allows(&self, kind: &str) -> bool {
        !self.exclude.iter().any(|e| e == kind)
            && (self.only.is_empty() || self.only.iter().any(|o| o == kind))
    }
}

/// Every kind [`draw_fault`] can produce.
pub fn drawable_kinds() -> Vec<String> {
    let mut v: Vec<String> = CrashPoint::ALL
        .iter()
        .map(|p| {
            Fault::CrashPoint {
                point: p.name(),
                nth: 1,
            }
            .kind()
        })
        .collect();
    for f in [
        Fault::KillRandom { delay_ms: 0 },
        Fault::AmbiguousCommit {
            how: Ambiguity::KillJob,
        },
        Fault::AmbiguousCommit {
            how: Ambiguity::LoseReply,
        },
        Fault::AmbiguousCommit {
            how: Ambiguity::DropCommit,
        },
        Fault::BrokerStop {
            hard: true,
            delay_ms: 0,
            down_ms: 0,
        },
        Fault::BrokerStop {
            hard: false,
            delay_ms: 0,
            down_ms: 0,
        },
        Fault::PartitionAdded { add: 1 },
        Fault::CatalogRefuse {
            delay_ms: 0,
            down_ms: 0,
        },
        Fault::Zombie { paused: true },
        Fault::Zombie { paused: false },
        Fault::StorageFaults {
            rate: 0.0,
            for_ms: 0,
        },
        Fault::DiskFull {
            target: DiskTarget::Checkpoints,
            hold_ms: 0,
        },
        Fault::DiskFull {
            target: DiskTarget::Warehouse,
            hold_ms: 0,
        },
        Fault::GracefulRestart,
    ] {
        v.push(f.kind());
    }
    for immediate in [false, true] {
        for mid_commit in [false, true] {
            v.push(
                Fault::PgRestart {
                    immediate,
                    mid_commit,
                    delay_ms: 0,
                }
                .kind(),
            );
        }
    }
    v
}

/// Draws one fault (only kinds `filter` allows; at least one must be drawable).
pub fn draw_fault(rng: &mut ChaCha8Rng, controllable: bool, filter: &Filter) -> Fault {
    loop {
        let f = match rng.random_range(0..100) {
            0..=11 => Fault::KillRandom {
                delay_ms: rng.random_range(200..4_000),
            },
            12..=29 => Fault::CrashPoint {
                point: CrashPoint::ALL[rng.random_range(0..CrashPoint::ALL.len())].name(),
                nth: rng.random_range(1..=3),
            },
            30..=39 => Fault::AmbiguousCommit {
                how: [
                    Ambiguity::KillJob,
                    Ambiguity::LoseReply,
                    Ambiguity::DropCommit,
                ][rng.random_range(0..3)],
            },
            40..=47 => Fault::BrokerStop {
                hard: rng.random_bool(0.5),
                delay_ms: rng.random_range(200..2_000),
                down_ms: rng.random_range(1_000..15_000),
            },
            48..=52 => Fault::PartitionAdded {
                add: rng.random_range(1..=2),
            },
            53..=61 => Fault::PgRestart {
                immediate: rng.random_bool(0.5),
                mid_commit: rng.random_bool(0.5),
                delay_ms: rng.random_range(200..3_000),
            },
            62..=70 => Fault::CatalogRefuse {
                delay_ms: rng.random_range(200..2_000),
                down_ms: rng.random_range(1_000..25_000),
            },
            71..=78 => Fault::Zombie {
                paused: rng.random_bool(0.6),
            },
            79..=88 => Fault::StorageFaults {
                rate: [0.01, 0.03, 0.08, 0.15][rng.random_range(0..4)],
                for_ms: rng.random_range(2_000..10_000),
            },
            89..=94 => Fault::DiskFull {
                target: if rng.random_bool(0.5) {
                    DiskTarget::Checkpoints
                } else {
                    DiskTarget::Warehouse
                },
                hold_ms: rng.random_range(500..5_000),
            },
            _ => Fault::GracefulRestart,
        };
        if (controllable || !f.needs_service_control()) && filter.allows(&f.kind()) {
            return f;
        }
    }
}

/// A random scenario of the kinds `filter` allows.
pub fn random(index: u32, seed: u64, scale: Scale, controllable: bool, filter: &Filter) -> Plan {
    if filter.fleet {
        return fleet::random(index, seed, scale, controllable, filter);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let trips = rng.random_range(scale.trips_min..=scale.trips_max);
    let partitions = rng.random_range(1..=4);
    let knobs = knobs(&mut rng);
    let terminal = match rng.random_range(0..100) {
        0..=3 => Some(Terminal::LogTruncated),
        4..=7 => Some(Terminal::TopicRecreated),
        _ => None,
    }
    .filter(|t| filter.allows(t.kind()));
    let drawable = drawable_kinds().iter().any(|k| {
        filter.allows(k)
            && (controllable
                || !(k.starts_with("postgres_restart") || k.starts_with("kafka_broker")))
    });
    // `--only` a terminal kind and nothing drawable: every scenario is that terminal.
    let terminal = terminal.or_else(|| {
        [Terminal::LogTruncated, Terminal::TopicRecreated]
            .into_iter()
            .find(|t| !drawable && !filter.only.is_empty() && filter.allows(t.kind()))
    });
    // `--only` operator kinds alone: no terminal either.
    let terminal = terminal.filter(|_| {
        filter.only.is_empty()
            || !filter
                .only
                .iter()
                .all(|o| crate::operator::KINDS.contains(&o.as_str()))
    });
    let mut faults = Vec::new();
    if terminal.is_none() && drawable {
        let n = rng.random_range(1..=3);
        let mut disk = false;
        while faults.len() < n {
            let f = draw_fault(&mut rng, controllable, filter);
            // One disk target per scenario: the storage layout is chosen for it.
            if let Fault::DiskFull { .. } = f {
                if disk {
                    continue;
                }
                disk = true;
            }
            faults.push(f);
        }
    }
    // Rewinds come from their own stream, so that adding them left every other plan as it was.
    let mut rw = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7769_6e64_0001);
    let rewind_only =
        !filter.only.is_empty() && filter.only.iter().any(|o| o.starts_with("rewind_request"));
    if terminal.is_none() && (rw.random_bool(0.08) || rewind_only) {
        let mut f = Fault::Rewind {
            back: rw.random_range(1..=5),
            running: rw.random_bool(0.3),
        };
        if !filter.allows(&f.kind())
            && let Fault::Rewind { running, .. } = &mut f
        {
            *running = !*running;
        }
        if filter.allows(&f.kind()) {
            let at = rw.random_range(0..=faults.len());
            faults.insert(at, f);
        }
    }
    // Operator faults come from their own stream too, and replace the faults when drawn.
    let mut op = ChaCha8Rng::seed_from_u64(seed ^ 0x6f70_6572_6174_6f72);
    let op_only = !filter.only.is_empty()
        && filter
            .only
            .iter()
            .all(|o| crate::operator::KINDS.contains(&o.as_str()));
    let operator = if terminal.is_none() && (op.random_bool(0.25) || op_only) {
        OperatorFault::draw(&mut op, filter)
    } else {
        None
    };
    if operator.is_some() {
        faults.clear();
    }
    let order_safe = faults
        .iter()
        .any(|f| matches!(f, Fault::PartitionAdded { .. }));
    let mut hostile = Vec::new();
    let k = match rng.random_range(0..10) {
        0..=2 => 0,
        3..=7 => 1,
        _ => 2,
    };
    while hostile.len() < k {
        let h = Hostile::ALL[rng.random_range(0..Hostile::ALL.len())];
        if order_safe && matches!(h, Hostile::DuplicateBurst | Hostile::TwoCurrencies) {
            continue;
        }
        // Part of a recreated topic is lost: a second currency's verdict depends on it.
        if operator == Some(OperatorFault::TopicRecreatedWhileRunning)
            && h == Hostile::TwoCurrencies
        {
            continue;
        }
        if !hostile.contains(&h) {
            hostile.push(h);
        }
    }
    // Copies of an event id on another trip, on a stream of their own (older seeds keep their
    // plans). Not with a partition added (the copy must share its original's partition) nor a
    // topic recreated while running (the original may be lost with the old topic).
    let mut reuse = ChaCha8Rng::seed_from_u64(seed ^ 0x7265_7573_6564_6964);
    if reuse.random_bool(0.3)
        && !order_safe
        && operator != Some(OperatorFault::TopicRecreatedWhileRunning)
    {
        hostile.push(Hostile::ReusedId);
    }
    hostile.sort();
    // Bounded state, on a stream of its own too; with it maybe one more SIGKILL, at the barrier
    // that wrote a cold run.
    let (bounded, extra) = bounded::draw(seed, filter, terminal.is_none() && operator.is_none());
    if let Some(f) = extra {
        let at = (seed % (faults.len() as u64 + 1)) as usize;
        faults.insert(at, f);
    }
    Plan {
        index,
        seed,
        trips,
        partitions,
        hostile,
        faults,
        terminal,
        operator,
        knobs,
        bounded,
        fleet: None,
    }
}
