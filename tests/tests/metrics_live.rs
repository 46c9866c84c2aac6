//! The metrics and health endpoints of the real binary while it runs on the real services:
//! readiness flips only after recovery and a first checkpoint; the record counters equal what
//! was produced; the commit-staleness gauge grows between commits and resets at each commit.

use std::io::{Read, Write};
use std::time::Duration;

use recon_pipeline::demo;
use recon_pipeline::reconcile::Expected;
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::traffic::{create_topic, traffic};
use recon_tests::{services_or_skip, wait_until};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` over HTTP/1.0; `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Sum of every series of `name` (any labels) in a Prometheus text body.
fn sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics(port: u16) -> String {
    match get(port, "/metrics") {
        Some((200, body)) => body,
        other => panic!("/metrics answered {other:?}"),
    }
}

#[test]
fn metrics_follow_a_running_job() {
    let Some(s) = services_or_skip("metrics_follow_a_running_job") else {
        return;
    };
    let setup = JobSetup::new(&s, "metrics_live", 500);
    let port = free_port();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&setup.config)
        .unwrap();
    write!(
        f,
        "\n[observability]\nlisten = \"127.0.0.1:{port}\"\n\n[commit]\nevery_checkpoints = 3\n"
    )
    .unwrap();
    drop(f);
    create_topic(&s.kafka_bootstrap, &setup.topic, 2);
    let records = traffic(&setup.topic, 800, 77, 2);
    let mut chunks = records.chunks(records.len().div_ceil(4));
    let mut expected = Expected::default();
    demo::publish(
        &s.kafka_bootstrap,
        &setup.topic,
        chunks.next().unwrap(),
        &mut expected,
    )
    .expect("publish");

    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("run.log");
    let child = setup.spawn(120_000, &[], &log);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Readiness: never 200 before the job logged its recovery and a checkpoint after it.
    rt.block_on(wait_until(
        "/readyz to answer 200",
        Duration::from_secs(90),
        || async {
            let answer = get(port, "/readyz");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            match answer {
                Some((200, _)) => {
                    let recovered = text.find("recovered");
                    let checkpoint = text.rfind("checkpoint complete");
                    assert!(
                        recovered.is_some() && checkpoint > recovered,
                        "ready before recovery and a first checkpoint:\n{text}"
                    );
                    Some(())
                }
                Some((503, _)) | None => None,
                other => panic!("/readyz answered {other:?}"),
            }
        },
    ));
    assert_eq!(get(port, "/healthz").map(|a| a.0), Some(200));

    let counted = |want: u64| {
        rt.block_on(wait_until(
            "the record counters to reach what was produced",
            Duration::from_secs(60),
            || async { (sum(&metrics(port), "recon_records_total") as u64 == want).then_some(()) },
        ))
    };
    counted(expected.records);
    // Each round: idle, the staleness gauge grows past 1 s; new input, and the next commit
    // resets it (and counts).
    for chunk in chunks {
        rt.block_on(wait_until(
            "seconds since the last commit to grow past 1",
            Duration::from_secs(30),
            || async {
                (sum(&metrics(port), "recon_seconds_since_last_commit") >= 1.0).then_some(())
            },
        ));
        let commits_before = sum(&metrics(port), "recon_commits_total");
        demo::publish(&s.kafka_bootstrap, &setup.topic, chunk, &mut expected).expect("publish");
        counted(expected.records);
        rt.block_on(wait_until(
            "a commit to reset seconds since the last commit",
            Duration::from_secs(30),
            || async {
                let m = metrics(port);
                (sum(&m, "recon_commits_total") > commits_before
                    && sum(&m, "recon_seconds_since_last_commit") < 1.0)
                    .then_some(())
            },
        ));
    }
    let m = metrics(port);
    let accepted = sum(&m, "recon_records_total{outcome=\"accepted\"}");
    let by_type = sum(&m, "recon_events_total");
    let rejected = sum(&m, "recon_rejected_total");
    assert_eq!(accepted as u64, expected.events.len() as u64, "{m}");
    assert_eq!(by_type as u64, expected.events.len() as u64, "{m}");
    assert_eq!(rejected as u64, expected.poison + expected.conflicts, "{m}");

    // SIGTERM: a final checkpoint and commit, exit 0.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{out}");
}
