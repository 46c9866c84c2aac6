//! A fleet job against the real services for the e2e tests (`tests/tests/fleet*.rs`): 16
//! partitions, K = 8 tasks, workers and a committer as separate processes, noisy traffic in
//! chunks, and the end-to-end check of everything a fleet promises.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use recon_pipeline::config::Config;
use recon_pipeline::crash::CrashPoint;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{demo, lakehouse};
use recon_schemas::tables::TableName;

use crate::pipeline::{JobSetup, wait_with_deadline};
use crate::traffic::{create_topic, traffic};

/// Partitions of a fleet test topic.
pub const PARTITIONS: i32 = 16;

pub struct Fleet {
    pub setup: JobSetup,
    pub logs: tempfile::TempDir,
    pub n: usize,
    pub brokers: String,
    pub chunks: Vec<Vec<recon_pipeline::generate::Record>>,
    pub expected: Expected,
    /// With the optional outputs on: the alerts topic.
    pub alerts_topic: Option<String>,
    /// batch-verify's truth is the topic (false once a test deleted some of the input).
    pub kafka_is_truth: bool,
    /// Every process started: killed when the test ends, passed or not.
    pub pids: Vec<u32>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Fleet {
    /// A fleet job (K = 8) on a fresh 16-partition topic with `trips` trips of noisy traffic,
    /// published in `parts` chunks; `outputs`: with alerts and current balances on.
    pub fn new(s: &crate::Services, name: &str, trips: u64, parts: usize, outputs: bool) -> Fleet {
        // One checkpoint a second per task: eight tasks checkpointing every 300 ms would keep
        // the test's S3 server (one Python process) busy with empty checkpoints.
        let setup = JobSetup::new(s, name, 1000);
        setup.append_config("[fleet]\ntasks = 8\ncommit_interval_ms = 1000\n");
        let alerts_topic = outputs.then(|| crate::outputs::enable(&setup.config, &setup.name));
        create_topic(&s.kafka_bootstrap, &setup.topic, PARTITIONS);
        let seed = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
        let records = traffic(&setup.topic, trips, seed, PARTITIONS);
        let chunks = records
            .chunks(records.len().div_ceil(parts))
            .map(<[_]>::to_vec)
            .collect();
        Fleet {
            setup,
            logs: tempfile::tempdir().unwrap(),
            n: 0,
            brokers: s.kafka_bootstrap.clone(),
            chunks,
            expected: Expected::default(),
            alerts_topic,
            kafka_is_truth: true,
            pids: Vec::new(),
        }
    }

    /// Starts a process of `role` (`worker`, `committer`), armed with a crash point.
    pub fn start(&mut self, role: &str, crash: Option<String>) -> (Child, PathBuf) {
        self.n += 1;
        let log = self.logs.path().join(format!("{}-{role}.log", self.n));
        let env: Vec<(&str, String)> = crash
            .map(|c| vec![("RECON_CRASH_AT", c)])
            .unwrap_or_default();
        let child = self.setup.spawn_with(&["--role", role], &env, &log);
        self.pids.push(child.id());
        (child, log)
    }

    /// Publishes the next chunk of traffic; false when none is left.
    pub fn publish(&mut self) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let c = self.chunks.remove(0);
        demo::publish(&self.brokers, &self.setup.topic, &c, &mut self.expected).expect("publish");
        true
    }

    /// The last `n` lines of every process's log, for a failure's message.
    pub fn log_tails(&self, n: usize) -> String {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.logs.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.sort();
        let mut out = String::new();
        for p in paths {
            let text = read(&p);
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", p.display()));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until every event published so far is committed (the fleet has no idle exit).
    pub fn wait_committed(&self) {
        let cfg = Config::load(Some(&self.setup.config)).expect("config");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let catalog = rt.block_on(lakehouse::open_catalog(&cfg)).expect("catalog");
        let want = self.expected.events.len() as u64;
        let mut rows = 0;
        let start = Instant::now();
        while rows < want {
            assert!(
                start.elapsed() < 4 * MINUTE,
                "{rows} of {want} events committed after {:?}; the processes' logs:\n{}",
                start.elapsed(),
                self.log_tails(40)
            );
            std::thread::sleep(Duration::from_secs(2));
            rows = rt
                .block_on(reconcile::check(catalog.as_ref(), &cfg, &self.expected))
                .expect("reconcile")
                .ledger_rows;
        }
    }

    /// Stops the workers gracefully (final checkpoints), then the committer (a last commit),
    /// and checks everything the module's documentation promises.
    pub fn drain_and_check(&mut self, workers: Vec<(Child, PathBuf)>, committer: (Child, PathBuf)) {
        while self.publish() {}
        let cfg = Config::load(Some(&self.setup.config)).expect("config");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let catalog = rt.block_on(lakehouse::open_catalog(&cfg)).expect("catalog");
        self.wait_committed();
        for (w, log) in workers {
            stop(&w);
            let (status, out) = wait_with_deadline(w, &log, 3 * MINUTE);
            assert!(status.success(), "worker: {status:?}\n{out}");
            assert!(out.contains("worker stopped cleanly"), "{out}");
        }
        let (c, log) = committer;
        stop(&c);
        let (status, out) = wait_with_deadline(c, &log, 3 * MINUTE);
        assert!(status.success(), "committer: {status:?}\n{out}");
        let expected = &self.expected;
        let rec = rt
            .block_on(reconcile::check(catalog.as_ref(), &cfg, expected))
            .expect("reconcile");
        println!("{rec}");
        assert!(expected.poison > 0 && expected.duplicates > 0 && expected.conflicts > 0);
        assert!(rec.is_clean(), "{rec}");
        assert_eq!(rec.ledger_rows, expected.events.len() as u64);
        assert_eq!(rec.rejected_rows, expected.poison + expected.conflicts);
        rt.block_on(one_snapshot_per_sequence(catalog.as_ref(), &cfg));
        if let Some(alerts_topic) = &self.alerts_topic {
            let (alerts, trips) = rt.block_on(crate::outputs::check_exact(
                &cfg,
                catalog.as_ref(),
                &self.brokers,
                &self.setup.topic,
                alerts_topic,
                cfg.current_balances_url
                    .as_deref()
                    .expect("current balances on"),
                expected.records,
            ));
            println!("outputs: {alerts} alerts once each, {trips} current balances exact");
        }
        if !self.kafka_is_truth {
            return;
        }
        let mut days: BTreeMap<chrono::NaiveDate, u64> = BTreeMap::new();
        for e in expected.events.values() {
            *days.entry(e.occurred_at.date_naive()).or_default() += 1;
        }
        for (day, on_day) in days {
            let r = rt.block_on(crate::verify_day::kafka_day(
                &cfg,
                catalog.clone(),
                &day.to_string(),
                batch_verify::truth::kafka::KafkaScan::Full,
                4,
            ));
            assert_eq!(r.status, batch_verify::report::Status::Clean, "{day}:\n{r}");
            assert_eq!(r.ledger_events, on_day, "{day}");
        }
    }
}

/// A minute.
pub const MINUTE: Duration = Duration::from_secs(60);

/// A process log so far.
pub fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Polls `log` until it contains `needle` `times` times (panics with the log at the deadline).
pub fn wait_for(log: &Path, needle: &str, times: usize, deadline: Duration) {
    let start = Instant::now();
    loop {
        let text = read(log);
        if text.matches(needle).count() >= times {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{needle:?} x{times} not in {} within {deadline:?}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a process armed with `RECON_CRASH_AT` to die by SIGKILL at `point`.
pub fn died_at(point: CrashPoint, (child, log): (Child, PathBuf)) {
    let (status, out) = wait_with_deadline(child, &log, 3 * MINUTE);
    assert_eq!(
        status.signal(),
        Some(9),
        "{}: {status:?}\n{out}",
        point.name()
    );
    assert!(
        out.contains(&format!("crash point {} reached", point.name())),
        "{out}"
    );
}

/// SIGTERM: the graceful stop.
pub fn stop(child: &Child) {
    signal(child, "-TERM");
}

/// Sends `sig` (`-STOP`, `-KILL`...) to a process.
pub fn signal(child: &Child, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// Waits until the committer's newest record holds every task's head; its commit sequence.
pub fn sequence_holding_every_task_head(cfg: &Config) -> u64 {
    use recon_pipeline::checkpoint::log::CheckpointLog;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, prefix) = recon_pipeline::checkpoint::store::open(cfg).expect("store");
        let committer = CheckpointLog::new(store.clone(), &prefix, cfg.job_id.clone());
        crate::wait_until(
            "the committer to hold every task's head",
            2 * MINUTE,
            || async {
                let head = committer.head().await.ok()??;
                for t in 0..cfg.fleet.tasks {
                    let task =
                        CheckpointLog::new(store.clone(), &prefix, cfg.job_id.task(t).unwrap());
                    let id = task.head().await.ok()??.entry.checkpoint_id;
                    if head.manifest.fleet_tasks.get(&t) != Some(&id) {
                        return None;
                    }
                }
                Some(head.entry.checkpoint_id.0)
            },
        )
        .await
    })
}

/// Every commit sequence of the committer is in exactly one snapshot of each table, and the
/// sequences run from 1 without a gap.
pub async fn one_snapshot_per_sequence(catalog: &dyn iceberg::Catalog, cfg: &Config) {
    use recon_common::stamps::{PROP_CHECKPOINT_FIRST, PROP_CHECKPOINT_ID, PROP_JOB_ID};
    for name in [
        TableName::LedgerEvents,
        TableName::TripBalances,
        TableName::RejectedEvents,
    ] {
        let table = lakehouse::load_table(catalog, &lakehouse::table_ident(cfg, name))
            .await
            .expect("table");
        let mut ranges: Vec<(u64, u64)> = table
            .metadata()
            .snapshots()
            .filter_map(|s| {
                let p = &s.summary().additional_properties;
                (p.get(PROP_JOB_ID)? == cfg.job_id.as_str()).then(|| {
                    (
                        p[PROP_CHECKPOINT_FIRST].parse().unwrap(),
                        p[PROP_CHECKPOINT_ID].parse().unwrap(),
                    )
                })
            })
            .collect();
        ranges.sort();
        assert!(!ranges.is_empty(), "{name:?}: no committer snapshot");
        let mut next = 1;
        for (first, through) in &ranges {
            assert_eq!(*first, next, "{name:?}: sequences {ranges:?}");
            assert!(through >= first, "{name:?}: {ranges:?}");
            next = through + 1;
        }
    }
}
