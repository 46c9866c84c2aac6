//! `recon-chaos`: run randomized fault scenarios against real services and report.
//!
//! ```text
//! recon-chaos --seed 7 --scenarios 200 --report chaos-report.json      # soak
//! recon-chaos --ci --report ci.json                                     # the bounded CI list
//! recon-chaos --replay 1234567890                                       # one scenario by its seed
//! recon-chaos --bounded --seed 7 --scenarios 20                         # every one with eviction on
//! recon-chaos --fleet --seed 7 --scenarios 5                            # workers + one committer
//! ```
//! Exit code: 0 when every scenario was clean (no duplicate, no loss, the job always came back or
//! stopped loudly where it must); 1 otherwise; 2 when the harness could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use recon_chaos::plan::Scale;
use recon_chaos::services::ServiceMode;
use recon_chaos::{Mode, Options};

/// Fault harness for recon: crashes, broker / catalog / storage faults, zombies, full disks and
/// hostile input, each scenario verified by reconcile and batch-verify.
#[derive(Parser, Debug)]
#[command(name = "recon-chaos", version)]
struct Cli {
    /// Run seed: scenario seeds derive from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Random scenarios to run.
    #[arg(long, default_value_t = 10)]
    scenarios: u32,
    /// Run the fixed CI list instead (every fault kind and hostile class at least once).
    #[arg(long, conflicts_with = "replay")]
    ci: bool,
    /// Run one scenario by its own seed (the `seed` of a scenario in a report).
    #[arg(long)]
    replay: Option<u64>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Fewest trips per scenario.
    #[arg(long, default_value_t = 150)]
    trips_min: u64,
    /// Most trips per scenario.
    #[arg(long, default_value_t = 700)]
    trips_max: u64,
    /// `private`: start a private Kafka/PostgreSQL/S3 set on free ports (every fault available);
    /// `env`: use the services of `infra/local/env` (no broker stops or PostgreSQL restarts).
    #[arg(long, default_value = "private")]
    services: String,
    /// Working directory (logs of failing scenarios are kept here).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Keep the logs of clean scenarios too.
    #[arg(long)]
    keep_all: bool,
    /// Leave the private services running at the end.
    #[arg(long)]
    keep_services: bool,
    /// Stop at the first failing scenario.
    #[arg(long)]
    fail_fast: bool,
    /// Less output on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Never draw this fault, terminal or operator kind (repeatable; names as in the report), e.g.
    /// `--exclude kafka_partition_added`.
    #[arg(long)]
    exclude: Vec<String>,
    /// Draw only these fault / terminal / operator kinds (repeatable), e.g. `--only
    /// rewind_request` or `--only table_rolled_back`.
    #[arg(long)]
    only: Vec<String>,
    /// List the kinds `--only` / `--exclude` accept, and exit.
    #[arg(long)]
    list_kinds: bool,
    /// Every random (or replayed) scenario runs with bounded state on: trips evicted to the
    /// cold tier, restarts with the local cold_dir wiped or kept, a late phase of records for
    /// evicted trips (a share of scenarios draw it without this flag too).
    #[arg(long, conflicts_with = "ci")]
    bounded: bool,
    /// Every random (or replayed) scenario is a fleet scenario: 16 partitions, K = 8 tasks, 3
    /// workers and one committer (separate processes), 3-6 faults among worker and committer
    /// kills (random or at named crash points), a worker paused past the session timeout,
    /// workers added and removed, a second committer, broker restarts.
    #[arg(long, conflicts_with_all = ["ci", "bounded"])]
    fleet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut kinds = recon_chaos::plan::drawable_kinds();
    kinds.extend(
        [
            "rewind_request",
            "rewind_request_while_running",
            "saved_offset_truncated_away",
            "topic_deleted_and_recreated",
        ]
        .map(String::from),
    );
    kinds.push(recon_chaos::plan::bounded::cold_run_kind());
    kinds.extend(recon_chaos::operator::KINDS.map(String::from));
    kinds.extend(recon_chaos::plan::fleet::kinds());
    if cli.list_kinds {
        for k in &kinds {
            println!("{k}");
        }
        return ExitCode::SUCCESS;
    }
    if let Some(bad) = cli
        .exclude
        .iter()
        .chain(&cli.only)
        .find(|k| !kinds.contains(k))
    {
        eprintln!("recon-chaos: unknown kind {bad:?}; --list-kinds shows them");
        return ExitCode::from(2);
    }
    let services = match cli.services.as_str() {
        "private" => ServiceMode::Private,
        "env" => ServiceMode::Env,
        other => {
            eprintln!("recon-chaos: --services must be private or env, got {other:?}");
            return ExitCode::from(2);
        }
    };
    if cli.trips_min == 0 || cli.trips_min > cli.trips_max {
        eprintln!("recon-chaos: need 0 < --trips-min <= --trips-max");
        return ExitCode::from(2);
    }
    let work = cli.work.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("recon-chaos-{}-{}", cli.seed, std::process::id()))
    });
    let opts = Options {
        seed: cli.seed,
        mode: match (cli.ci, cli.replay) {
            (true, _) => Mode::Ci,
            (_, Some(s)) => Mode::Replay(s),
            _ => Mode::Random(cli.scenarios),
        },
        scale: Scale {
            trips_min: cli.trips_min,
            trips_max: cli.trips_max,
        },
        services,
        work,
        report: cli.report,
        keep_all: cli.keep_all,
        keep_services: cli.keep_services,
        fail_fast: cli.fail_fast,
        verbose: !cli.quiet,
        filter: recon_chaos::plan::Filter {
            exclude: cli.exclude,
            only: cli.only,
            force_bounded: cli.bounded,
            fleet: cli.fleet,
        },
    };
    match recon_chaos::run(&opts) {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("recon-chaos: could not run: {e:#}");
            ExitCode::from(2)
        }
    }
}
