//! Bounded state (issue 15) in a scenario: the job runs with `[state] evict_settled_after_ms` /
//! `evict_idle_after_ms` spans small enough against the traffic's event time that many trips
//! leave memory for the cold tier while the scenario runs; restarts wipe or keep the local
//! `cold_dir`; and, after the faults, a *late phase* sends records that need trips which left
//! memory (late refunds and adjustments, exact and conflicting re-sends, their event ids reused
//! on other trips) while the job is killed again.
//!
//! Drawn on a stream of its own (older seeds keep their faults, hostile input and knobs), in
//! [`BOUNDED_SHARE`] of random scenarios, or in every one with `--bounded`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recon_pipeline::crash::CrashPoint;

use super::{Fault, Filter};

/// Share of random scenarios that run with eviction on.
pub const BOUNDED_SHARE: f64 = 0.3;

/// The named crash point that exists only with eviction on.
pub const COLD_RUN_POINT: &str = "after-cold-run-written";

/// What happens to the job's local `cold_dir` before each restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ColdDirOnRestart {
    /// Left as it is (the runs are read from the local copy).
    Kept,
    /// Deleted (a new machine: every run listed must come back from the checkpoint store).
    Wiped,
    /// Deleted before the 1st, 3rd, ... restart, kept before the others.
    Alternate,
}

/// The bounded-state knobs of a scenario.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Bounded {
    /// `state.evict_settled_after_ms` (event time).
    pub settled_after_ms: u64,
    /// `state.evict_idle_after_ms` (event time; 0 = off).
    pub idle_after_ms: u64,
    /// `state.evict_scan_per_barrier`.
    pub scan_per_barrier: u32,
    /// The local working copy before each restart.
    pub cold_dir_on_restart: ColdDirOnRestart,
    /// Trips in flight at once in the generator (small: the stream runs in event-time order,
    /// so trips settle and leave while the traffic still flows).
    pub concurrent_trips: u32,
    /// Records of the late phase (at most; fewer when fewer trips left memory).
    pub late_records: u32,
    /// The fault while the late phase's records flow (`None`: no fault).
    pub late_fault: Option<Fault>,
    /// Whether the late phase runs (not with a terminal or operator fault: those end or
    /// reshape the scenario).
    pub late_phase: bool,
}

impl Bounded {
    /// Kind name in the report.
    pub const KIND: &'static str = "bounded_state";

    /// The `[state]` keys of the job's configuration.
    pub fn state_toml(&self, cold_dir: &std::path::Path) -> String {
        format!(
            "\n[state]\nevict_settled_after_ms = {}\nevict_idle_after_ms = {}\nevict_scan_per_barrier = {}\ncold_dir = \"{}\"\n",
            self.settled_after_ms,
            self.idle_after_ms,
            self.scan_per_barrier,
            cold_dir.display()
        )
    }
}

/// Minutes in milliseconds.
const fn min(m: u64) -> u64 {
    m * 60_000
}

/// Draws the bounded knobs of scenario `seed` (or `None`), and maybe one more fault: a SIGKILL
/// at [`COLD_RUN_POINT`] while the traffic flows. `late_phase`: the scenario runs its faults to
/// the end (no terminal, no operator fault).
pub fn draw(seed: u64, filter: &Filter, late_phase: bool) -> (Option<Bounded>, Option<Fault>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x626f_756e_6465_6473);
    // Drawn whatever `--bounded` says, so the knobs of a seed are the same with and without it.
    let on = rng.random_bool(BOUNDED_SHARE);
    let cold_only = filter.only.iter().any(|o| o == &cold_run_kind());
    let forced = filter.force_bounded || cold_only;
    let settled_after_ms = [min(5), min(15), min(30), min(60)][rng.random_range(0..4)];
    let idle_after_ms = [0, min(20), min(45), min(120)][rng.random_range(0..4)];
    let scan_per_barrier = [64, 200_000][rng.random_range(0..2)];
    let cold_dir_on_restart = [
        ColdDirOnRestart::Kept,
        ColdDirOnRestart::Wiped,
        ColdDirOnRestart::Alternate,
    ][rng.random_range(0..3)];
    let concurrent_trips = [8, 16, 32][rng.random_range(0..3)];
    let late_records = rng.random_range(12..=40);
    let late_fault = match rng.random_range(0..10) {
        0..=3 => Some(cold_run_crash(rng.random_range(1..=2))),
        4..=6 => Some(Fault::KillRandom {
            delay_ms: rng.random_range(300..2_500),
        }),
        7 => Some(Fault::CrashPoint {
            point: CrashPoint::ALL[rng.random_range(0..CrashPoint::ALL.len())].name(),
            nth: rng.random_range(1..=2),
        }),
        8 => Some(Fault::GracefulRestart),
        _ => None,
    }
    .filter(|f| filter.allows(&f.kind()));
    let extra = (rng.random_bool(0.5) || cold_only)
        .then(|| cold_run_crash(rng.random_range(1..=3)))
        .filter(|f| late_phase && filter.allows(&f.kind()));
    if !(on || forced) {
        return (None, None);
    }
    (
        Some(Bounded {
            settled_after_ms,
            idle_after_ms,
            scan_per_barrier,
            cold_dir_on_restart,
            concurrent_trips,
            late_records,
            late_fault: late_fault.filter(|_| late_phase),
            late_phase,
        }),
        extra,
    )
}

/// A SIGKILL at the `nth` barrier that wrote a cold run.
pub fn cold_run_crash(nth: u64) -> Fault {
    Fault::CrashPoint {
        point: COLD_RUN_POINT,
        nth,
    }
}

/// The report name of a SIGKILL at [`COLD_RUN_POINT`].
pub fn cold_run_kind() -> String {
    cold_run_crash(1).kind()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cold_run_point_is_the_pipelines() {
        let names: Vec<&str> = CrashPoint::BOUNDED.iter().map(|p| p.name()).collect();
        assert_eq!(names, [COLD_RUN_POINT]);
    }

    #[test]
    fn forcing_keeps_the_knobs_of_a_seed() {
        let forced = Filter {
            force_bounded: true,
            ..Filter::default()
        };
        let mut drawn = 0;
        for seed in 0..200u64 {
            let (free, _) = draw(seed, &Filter::default(), true);
            let (all, _) = draw(seed, &forced, true);
            let all = all.expect("forced");
            if let Some(free) = free {
                drawn += 1;
                assert_eq!(
                    serde_json::to_string(&free).unwrap(),
                    serde_json::to_string(&all).unwrap()
                );
            }
            assert!(all.settled_after_ms >= min(5) && all.late_records >= 12);
        }
        // About BOUNDED_SHARE of 200.
        assert!((30..=90).contains(&drawn), "{drawn}");
    }

    #[test]
    fn without_a_late_phase_no_fault_is_added() {
        let forced = Filter {
            force_bounded: true,
            ..Filter::default()
        };
        for seed in 0..50u64 {
            let (b, extra) = draw(seed, &forced, false);
            let b = b.expect("forced");
            assert!(extra.is_none() && b.late_fault.is_none() && !b.late_phase);
        }
    }
}
