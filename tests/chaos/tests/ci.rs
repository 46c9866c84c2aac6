//! The bounded chaos pass that `cargo test --workspace` (and so `infra/local/test`) runs: the
//! fixed CI list of scenarios (every fault kind and every hostile-input class at least once)
//! against a private service set, each verified by reconcile and batch-verify. Skips loudly
//! without `RECON_SERVICES=1` (fails instead with `RECON_REQUIRE_SERVICES=1`), like every
//! real-service test. `RECON_CHAOS_SEED` varies traffic and timings (default: a fixed seed).

use recon_chaos::plan::Scale;
use recon_chaos::services::ServiceMode;
use recon_chaos::{Mode, Options};

#[test]
fn chaos_ci_pass() {
    let Some(_) = recon_tests::services_or_skip("chaos_ci_pass") else {
        return;
    };
    let seed: u64 = std::env::var("RECON_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_128);
    let work = tempfile::Builder::new()
        .prefix("recon-chaos-ci-")
        .tempdir()
        .unwrap();
    let report_path = work.path().join("chaos-report.json");
    let opts = Options {
        seed,
        mode: Mode::Ci,
        scale: Scale {
            trips_min: 80,
            trips_max: 160,
        },
        services: ServiceMode::Private,
        work: work.path().join("work"),
        report: Some(report_path.clone()),
        keep_all: false,
        keep_services: false,
        fail_fast: false,
        verbose: true,
        exclude: Vec::new(),
    };
    let report = recon_chaos::run(&opts).expect("the chaos harness could run");
    println!("{report}");
    if !report.passed() {
        // Keep the logs of failing scenarios for the CI artifacts.
        eprintln!("chaos: logs kept in {}", work.path().display());
        let _ = work.keep();
    }
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(written["scenarios_run"], report.scenarios_run);
    assert_eq!(report.scenarios_run, report.scenarios_requested, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert_eq!(report.losses, 0, "{report}");
    assert!(report.events_checked > 0, "{report}");
    assert!(report.passed(), "{report}");
}
