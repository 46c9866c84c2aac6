//! The binary's contract with schedulers and alerting: exit 0 clean, 1 discrepancies, 2 could
//! not verify (with the reason), 3 an empty day, and the JSON report's keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use arrow_array::Array;
use recon_pipeline::generate::truth::TruthRecorder;
use recon_pipeline::generate::{TrafficConfig, plan};
use recon_tests::verify_fixture::{Lakehouse, place, simulate};
use rust_decimal::Decimal;

const KEYS: [&str; 11] = [
    "status",
    "business_date",
    "truth_events",
    "ledger_events",
    "rejected_events",
    "duplicates",
    "missing",
    "phantom",
    "amount_mismatches",
    "balance_mismatches",
    "offset_gaps",
];

/// One run's outcome: exit code, stdout, the JSON report, and the metrics textfile parsed into
/// `series -> value` (series as written, e.g. `recon_verify_exit_code{job="recon",truth="files"}`).
type Outcome = (
    i32,
    String,
    Option<serde_json::Value>,
    BTreeMap<String, f64>,
);

fn run(dir: &Path, truth: &str, extra: &[&str]) -> Outcome {
    run_on(dir, "2025-03-03", truth, extra)
}

fn run_on(dir: &Path, date: &str, truth: &str, extra: &[&str]) -> Outcome {
    let report = dir.join(format!("report-{}.json", uuid::Uuid::new_v4()));
    let metrics = dir.join(format!("metrics-{}.prom", uuid::Uuid::new_v4()));
    let out = Command::new(recon_tests::security::batch_verify_binary())
        .args([
            "--config",
            &dir.join("recon.toml").display().to_string(),
            "--date",
            date,
            "--tz",
            "UTC",
        ])
        .args([
            "--truth",
            "files",
            "--truth-url",
            truth,
            "--no-progress",
            "--buckets",
            "4",
        ])
        .args(["--report", &report.display().to_string()])
        .args(["--metrics-textfile", &metrics.display().to_string()])
        .args(extra)
        .output()
        .unwrap();
    // Not a terminal: no ANSI colour codes in the summary nor the log lines.
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !stream.contains(&0x1b),
            "{}",
            String::from_utf8_lossy(stream)
        );
    }
    let json = std::fs::read(&report)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap());
    let text =
        std::fs::read_to_string(&metrics).expect("the metrics textfile is written on every run");
    let metrics = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_string(), value.parse::<f64>().expect("a number"))
        })
        .collect();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        json,
        metrics,
    )
}

/// The textfile says what the report says: exit code, events checked, every discrepancy kind,
/// duration, the day, and a timestamp of this run.
fn assert_metrics_match(m: &BTreeMap<String, f64>, code: i32, json: &serde_json::Value) {
    let l = "{job=\"recon\",truth=\"files\"}";
    let get = |name: &str| {
        *m.get(name)
            .unwrap_or_else(|| panic!("{name} missing in {m:#?}"))
    };
    assert_eq!(get(&format!("recon_verify_exit_code{l}")), f64::from(code));
    let now = chrono::Utc::now().timestamp() as f64;
    let ts = get(&format!("recon_verify_last_run_timestamp_seconds{l}"));
    assert!(
        ts <= now + 1.0 && ts > now - 300.0,
        "timestamp {ts}, now {now}"
    );
    assert_eq!(
        get(
            "recon_verify_business_day{job=\"recon\",truth=\"files\",business_date=\"2025-03-03\",time_zone=\"UTC\"}"
        ),
        1.0
    );
    let checks: Vec<_> = m
        .keys()
        .filter(|k| k.starts_with("recon_verify_discrepancies{"))
        .collect();
    if json["status"] == "error" {
        assert!(checks.is_empty(), "{checks:?}");
        assert!(
            !m.keys()
                .any(|k| k.starts_with("recon_verify_events_checked"))
        );
        return;
    }
    assert_eq!(
        get(&format!("recon_verify_events_checked{l}")),
        json["truth_events"].as_f64().unwrap()
    );
    assert_eq!(
        get(&format!("recon_verify_duration_seconds{l}")),
        json["elapsed_ms"].as_f64().unwrap() / 1000.0
    );
    assert_eq!(checks.len(), batch_verify::Kind::ALL.len(), "{checks:?}");
    for kind in batch_verify::Kind::ALL {
        let want = json["discrepancies_by_kind"][kind.as_str()]
            .as_f64()
            .unwrap_or(0.0);
        let series = format!(
            "recon_verify_discrepancies{{job=\"recon\",truth=\"files\",check=\"{}\"}}",
            kind.as_str()
        );
        assert_eq!(get(&series), want, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_report_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let records: Vec<_> = plan(&TrafficConfig {
        trips: 150,
        seed: 3,
        partitions: 2,
        ..TrafficConfig::default()
    })
    .collect();
    let truth = d.join("truth.jsonl");
    let mut rec = TruthRecorder::new("cli").with_jsonl(&truth).unwrap();
    for r in &records {
        rec.observe(r).unwrap();
    }
    rec.finish().unwrap();
    let mut sim = simulate(&place(
        records
            .iter()
            .map(|r| (r.partition_hint, r.key.clone(), r.payload.clone())),
        2,
    ));
    std::fs::write(
        d.join("recon.toml"),
        format!(
            "[source]\nbrokers = \"unused:9092\"\ntopic = \"unused\"\n[catalog]\nuri = \"sqlite://{0}/catalog.db?mode=rwc\"\nwarehouse = \"file://{0}/warehouse\"\n",
            d.display()
        ),
    )
    .unwrap();
    let lake = Lakehouse::create(d, "unused:9092", "unused").await.unwrap();
    lake.commit(1, &sim.ledger, &sim.rejected, &sim.balances(), &sim.offsets)
        .await
        .unwrap();
    let truth = truth.display().to_string();

    let (code, stdout, json, metrics) = run(d, &truth, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("CLEAN"), "{stdout}");
    let json = json.unwrap();
    assert_metrics_match(&metrics, code, &json);
    for k in KEYS {
        assert!(json.get(k).is_some(), "report lacks {k}: {json}");
    }
    assert_eq!(json["status"], "clean");
    assert_eq!(json["truth_events"], json["ledger_events"]);

    // One cent off in a second lakehouse.
    let d2 = tempfile::tempdir().unwrap();
    std::fs::write(
        d2.path().join("recon.toml"),
        std::fs::read_to_string(d.join("recon.toml"))
            .unwrap()
            .replace(&d.display().to_string(), &d2.path().display().to_string()),
    )
    .unwrap();
    sim.ledger[0].0.amount += Decimal::new(1, 2);
    let lake2 = Lakehouse::create(d2.path(), "unused:9092", "unused")
        .await
        .unwrap();
    lake2
        .commit(1, &sim.ledger, &sim.rejected, &sim.balances(), &sim.offsets)
        .await
        .unwrap();
    let page = d2.path().join("report.html");
    let (code, stdout, json, metrics) =
        run(d2.path(), &truth, &["--html", &page.display().to_string()]);
    assert_eq!(code, 1, "{stdout}");
    let json = json.unwrap();
    assert_page_shows(&page, &json);
    assert_metrics_match(&metrics, code, &json);
    assert_eq!(
        metrics["recon_verify_discrepancies{job=\"recon\",truth=\"files\",check=\"amount_mismatch\"}"],
        1.0
    );
    assert_eq!(json["status"], "discrepancies");
    assert_eq!(json["amount_mismatches"], 1);
    assert!(stdout.contains("amount_mismatch"), "{stdout}");

    // No truth: could not verify, and says why.
    let (code, stdout, json, metrics) = run(d, &d.join("nowhere").display().to_string(), &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stdout.contains("COULD NOT VERIFY") && stdout.contains("nowhere"),
        "{stdout}"
    );
    let json = json.unwrap();
    assert_eq!(json["status"], "error");
    assert_metrics_match(&metrics, code, &json);
    // The clean run and the failed one are both history in verification_runs.
    assert_eq!(statuses(&lake).await, vec!["clean", "error"], "{stdout}");

    // A day with nothing in the truth nor in the lakehouse (a wrong date, a job that never ran)
    // is not CLEAN: exit 3, unless the schedule says such a day is expected.
    let (code, stdout, json, metrics) = run_on(d, "2030-01-01", &truth, &[]);
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.contains("EMPTY"), "{stdout}");
    assert_eq!(json.unwrap()["status"], "empty");
    assert_eq!(
        metrics["recon_verify_exit_code{job=\"recon\",truth=\"files\"}"],
        3.0
    );
    let (code, stdout, json, _) = run_on(d, "2030-01-01", &truth, &["--allow-empty"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(json.unwrap()["status"], "empty");
    assert_eq!(
        statuses(&lake).await,
        vec!["clean", "empty", "empty", "error"]
    );

    // Where a result cannot be written, nothing runs: no "clean" recorded for a run that then
    // fails to report (found 2026-12-05: a missing --report directory recorded status=clean).
    let bin = &recon_tests::security::batch_verify_binary();
    let config = d.join("recon.toml").display().to_string();
    let base = [
        "--config",
        &config,
        "--date",
        "2025-03-03",
        "--truth",
        "files",
        "--truth-url",
        &truth,
        "--no-progress",
    ];
    let missing_dir = d.join("no-such-dir").join("r.json").display().to_string();
    let a_dir = d.display().to_string();
    for (option, path) in [
        ("--report", &missing_dir),
        ("--report", &a_dir),
        ("--metrics-textfile", &missing_dir),
    ] {
        let out = Command::new(bin)
            .args(base)
            .args([option, path.as_str()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{option} {path}: {stderr}");
        assert!(
            stderr.contains(option) && stderr.contains("nothing was read or recorded"),
            "{stderr}"
        );
    }
    assert_eq!(
        statuses(&lake).await,
        vec!["clean", "empty", "empty", "error"],
        "a refused run records nothing"
    );

    // --truth-run-id: only with the PostgreSQL truth, and only a plain id.
    for (truth_args, why) in [
        (
            vec!["--truth", "files", "--truth-url", &truth],
            "postgres only",
        ),
        (
            vec![
                "--truth",
                "postgres",
                "--truth-url",
                "postgres://127.0.0.1:1/x",
            ],
            "is not a run id",
        ),
    ] {
        let out = Command::new(bin)
            .args(["--config", &config, "--date", "2025-03-03", "--no-progress"])
            .args(truth_args)
            .args(["--truth-run-id", "x' OR '1'='1"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{stdout}");
        assert!(stdout.contains(why), "{stdout}");
    }
}

/// `verification_runs.status` of every recorded run, sorted.
async fn statuses(lake: &Lakehouse) -> Vec<String> {
    let runs = recon_pipeline::lakehouse::scan(
        lake.catalog.as_ref(),
        &recon_pipeline::lakehouse::table_ident(&lake.cfg, "verification_runs"),
        &["status"],
    )
    .await
    .unwrap();
    let mut statuses: Vec<String> = runs
        .iter()
        .flat_map(|b| {
            let a = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    statuses.sort();
    statuses
}

/// The DOM of `page` as headless Chromium renders it (`None`, loudly, where Chromium is absent
/// outside the full test command, which installs it).
fn rendered(page: &Path) -> Option<String> {
    let Some(chromium) = ["chromium-headless-shell", "chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var("RECON_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "no headless Chromium: infra/local/install installs chromium-headless-shell"
        );
        println!("*** SKIPPED the HTML rendering check: no headless Chromium. It did NOT run ***");
        return None;
    };
    let profile = tempfile::tempdir().unwrap();
    // `timeout` bounds a browser that hangs.
    let out = Command::new("timeout")
        .args([
            "120",
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &format!("file://{}", page.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// The text of the element with `id` in `dom`.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    &rest[start..start + end]
}

/// The page shows the JSON report's figures: status, every count, every kind, the totals, and
/// the run in the history.
fn assert_page_shows(page: &Path, json: &serde_json::Value) {
    let Some(dom) = rendered(page) else {
        return;
    };
    assert_eq!(text_of(&dom, "status"), json["status"].as_str().unwrap());
    assert_eq!(text_of(&dom, "run-id"), json["run_id"].as_str().unwrap());
    for key in [
        "truth_events",
        "ledger_events",
        "truth_rejects",
        "rejected_events",
        "duplicates",
        "missing",
        "phantom",
        "amount_mismatches",
        "balances_checked",
        "balance_mismatches",
        "offset_gaps",
    ] {
        assert_eq!(
            text_of(&dom, &format!("count-{key}")),
            json[key].to_string(),
            "{key}"
        );
    }
    for (kind, n) in json["discrepancies_by_kind"].as_object().unwrap() {
        assert_eq!(
            text_of(&dom, &format!("kind-{kind}")),
            n.to_string(),
            "{kind}"
        );
    }
    for t in json["totals"].as_array().unwrap() {
        for amount in [&t["truth_amount"], &t["ledger_amount"]] {
            assert!(dom.contains(amount.as_str().unwrap()), "{amount} not shown");
        }
        let chart = format!("id=\"chart-{}\"", t["currency"].as_str().unwrap());
        assert!(dom.contains(&chart), "no chart {chart}");
    }
    assert!(
        dom.contains(&format!(">{}<", json["business_date"].as_str().unwrap())),
        "the run is in the history"
    );
}
