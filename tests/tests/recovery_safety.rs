//! Operator faults that must stop the job loudly, write nothing, and stay stopped at every
//! restart (issue 13, findings 1, 4 and 5), against the real broker, PostgreSQL catalog and S3.
//!
//! - `an_older_checkpoint_store_copy_is_refused_at_every_start` (finding 1): the tables hold
//!   checkpoints a restored older copy of the checkpoint store does not reach. Each of five
//!   starts (a supervisor's restart loop) exits 3 (operator needed); the checkpoint store, the
//!   tables' metadata and the warehouse's files stay byte-identical: no claim, no commit, no
//!   deletion. Before the fix each failed start claimed a generation and the third one corrupted
//!   the tables.
//! - `deleting_the_newest_log_entry_is_refused_at_every_start` (finding 1): the same with only
//!   the newest log entry deleted.
//! - `a_rolled_back_table_is_refused` (finding 4): a table rolled back to an older snapshot (its
//!   marker property still names the newer checkpoint) is named, nothing is appended on top.
//! - `a_second_job_id_on_the_same_tables_is_refused` (finding 5): a second job id on the same
//!   topic and tables is refused; no row is written twice.
//!
//! `RECON_PIPELINE_BIN=<older build>` runs these against another binary (to see them fail).

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt;
use iceberg::MetadataLocation;
use iceberg::spec::{MAIN_BRANCH, SnapshotReference, SnapshotRetention};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use recon_pipeline::checkpoint::commit::marks_of;
use recon_pipeline::checkpoint::log::CheckpointLog;
use recon_pipeline::checkpoint::manifest::log_path;
use recon_pipeline::config::Config;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{checkpoint, demo, lakehouse};
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::traffic::{create_topic, default_traffic};
use recon_tests::{Services, services_or_skip};

const PARTITIONS: i32 = 3;
const TABLES: [&str; 3] = ["ledger_events", "trip_balances", "rejected_events"];
/// Exit code of `recon-pipeline run` for "operator needed" (docs/CONFIGURATION.md).
const OPERATOR_NEEDED: i32 = 3;

/// Every object under `prefix` of `bucket`, with its bytes.
async fn objects(s: &Services, bucket: &str, prefix: &str) -> BTreeMap<String, bytes::Bytes> {
    let store = s.s3.object_store(bucket).expect("s3");
    let metas: Vec<_> = store
        .list(Some(&Path::from(prefix)))
        .try_collect()
        .await
        .expect("list");
    let mut out = BTreeMap::new();
    for m in metas {
        let bytes = store
            .get(&m.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        out.insert(m.location.to_string(), bytes);
    }
    out
}

/// Key and size of every object under `prefix` of `bucket` (the warehouse: data and metadata).
async fn listing(s: &Services, bucket: &str, prefix: &str) -> BTreeMap<String, u64> {
    let store = s.s3.object_store(bucket).expect("s3");
    let metas: Vec<_> = store
        .list(Some(&Path::from(prefix)))
        .try_collect()
        .await
        .expect("list");
    metas
        .into_iter()
        .map(|m| (m.location.to_string(), m.size))
        .collect()
}

/// Per table: metadata location, current snapshot, every snapshot id.
async fn tables(cfg: &Config) -> Vec<(String, Option<i64>, Vec<i64>)> {
    let catalog = lakehouse::open_catalog(cfg).await.expect("catalog");
    let mut out = Vec::new();
    for name in TABLES {
        let t = catalog
            .load_table(&lakehouse::table_ident(cfg, name))
            .await
            .expect("table");
        let mut ids: Vec<i64> = t.metadata().snapshots().map(|s| s.snapshot_id()).collect();
        ids.sort_unstable();
        out.push((
            t.metadata_location().unwrap_or_default().to_string(),
            t.metadata().current_snapshot_id(),
            ids,
        ));
    }
    out
}

/// Everything a refused start must leave as it was.
#[derive(Debug, PartialEq)]
struct World {
    store: BTreeMap<String, bytes::Bytes>,
    warehouse: BTreeMap<String, u64>,
    tables: Vec<(String, Option<i64>, Vec<i64>)>,
}

async fn world(s: &Services, setup: &JobSetup, cfg: &Config) -> World {
    World {
        store: objects(s, &s.s3.checkpoint_bucket, &setup.name).await,
        warehouse: listing(s, &s.s3.warehouse_bucket, &setup.name).await,
        tables: tables(cfg).await,
    }
}

/// Runs the job until it idles out; asserts a clean stop.
fn run_ok(setup: &JobSetup, logdir: &FsPath, name: &str) {
    let log = logdir.join(format!("{name}.log"));
    let child = setup.spawn(3_000, &[], &log);
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(120));
    assert!(
        status.success() && out.contains("stopped cleanly"),
        "{name}:\n{out}"
    );
}

/// Starts the job `n` times; each start must exit "operator needed" with `expect` in its
/// output and leave `before` exactly as it was.
fn refused_every_time(
    rt: &tokio::runtime::Runtime,
    s: &Services,
    setup: &JobSetup,
    cfg: &Config,
    logdir: &FsPath,
    n: u32,
    expect: &[&str],
) {
    let before = rt.block_on(world(s, setup, cfg));
    for i in 1..=n {
        let log = logdir.join(format!("refused-{i}.log"));
        let child = setup.spawn(3_000, &[], &log);
        let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(60));
        // What was written first (the finding), then how the stop was reported.
        let after = rt.block_on(world(s, setup, cfg));
        assert_eq!(
            after.store.keys().collect::<Vec<_>>(),
            before.store.keys().collect::<Vec<_>>(),
            "start {i} changed the checkpoint store's objects:\n{out}"
        );
        assert!(
            after.store == before.store,
            "start {i} changed a checkpoint store object's bytes"
        );
        assert_eq!(
            after.tables, before.tables,
            "start {i} changed a table's metadata:\n{out}"
        );
        assert_eq!(
            after.warehouse, before.warehouse,
            "start {i} wrote or deleted warehouse files"
        );
        assert_eq!(
            status.code(),
            Some(OPERATOR_NEEDED),
            "start {i} must exit {OPERATOR_NEEDED} (operator needed):\n{out}"
        );
        for want in expect.iter().chain(&["class operator-needed (exit 3)"]) {
            assert!(out.contains(want), "start {i}: {want:?} missing:\n{out}");
        }
        assert!(
            !out.contains("start under a new job_id"),
            "advice that leads to duplicates:\n{out}"
        );
        if i == 1
            && let Some(l) = out.lines().find(|l| l.contains("recon-pipeline: stopped"))
        {
            println!("{l}");
        }
    }
}

struct Fixture {
    s: Services,
    setup: JobSetup,
    cfg: Config,
    rt: tokio::runtime::Runtime,
    logdir: tempfile::TempDir,
    expected: Expected,
    seed: u64,
}

impl Fixture {
    fn new(s: Services, prefix: &str) -> Fixture {
        let setup = JobSetup::new(&s, prefix, 300);
        let cfg = Config::load(Some(&setup.config)).expect("config");
        create_topic(&s.kafka_bootstrap, &setup.topic, PARTITIONS);
        Fixture {
            s,
            setup,
            cfg,
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            logdir: tempfile::tempdir().expect("tempdir"),
            expected: Expected::default(),
            seed: u64::from(uuid::Uuid::new_v4().as_u128() as u32),
        }
    }

    /// Publishes `trips` more trips and runs the job over them.
    fn feed_and_run(&mut self, trips: u64, name: &str) {
        self.seed += 1;
        demo::publish(
            &self.s.kafka_bootstrap,
            &self.setup.topic,
            &default_traffic(&self.setup.topic, trips, self.seed, PARTITIONS),
            &mut self.expected,
        )
        .expect("publish");
        run_ok(&self.setup, self.logdir.path(), name);
    }

    fn log(&self) -> CheckpointLog {
        let (store, prefix) = checkpoint::store::open(&self.cfg).expect("checkpoint store");
        CheckpointLog::new(store, &prefix, self.cfg.job_id.clone())
    }

    fn reconcile_clean(&self) {
        let rec = self.rt.block_on(async {
            let catalog = lakehouse::open_catalog(&self.cfg).await.expect("catalog");
            reconcile::check(catalog.as_ref(), &self.cfg, &self.expected)
                .await
                .expect("reconcile")
        });
        assert!(rec.is_clean(), "{rec}");
    }
}

#[test]
fn an_older_checkpoint_store_copy_is_refused_at_every_start() {
    let Some(s) = services_or_skip("an_older_checkpoint_store_copy_is_refused_at_every_start")
    else {
        return;
    };
    let mut f = Fixture::new(s, "restore_old_store");
    f.feed_and_run(150, "first");
    let copy =
        f.rt.block_on(objects(&f.s, &f.s.s3.checkpoint_bucket, &f.setup.name));
    f.feed_and_run(150, "second");
    f.reconcile_clean();
    // The operator restores the older copy of the checkpoint store.
    f.rt.block_on(async {
        let store = f.s.s3.object_store(&f.s.s3.checkpoint_bucket).unwrap();
        for key in objects(&f.s, &f.s.s3.checkpoint_bucket, &f.setup.name)
            .await
            .keys()
        {
            store.delete(&Path::from(key.as_str())).await.unwrap();
        }
        for (key, bytes) in &copy {
            store
                .put(&Path::from(key.as_str()), PutPayload::from(bytes.clone()))
                .await
                .unwrap();
        }
    });
    refused_every_time(
        &f.rt,
        &f.s,
        &f.setup,
        &f.cfg,
        f.logdir.path(),
        5,
        &["but the checkpoint log ends at", "Restore the newest copy"],
    );
    f.reconcile_clean();
}

#[test]
fn deleting_the_newest_log_entry_is_refused_at_every_start() {
    let Some(s) = services_or_skip("deleting_the_newest_log_entry_is_refused_at_every_start")
    else {
        return;
    };
    let mut f = Fixture::new(s, "delete_newest_entry");
    f.feed_and_run(150, "first");
    let log = f.log();
    let head = f.rt.block_on(log.head()).unwrap().expect("a head");
    let committed = f.rt.block_on(async {
        let catalog = lakehouse::open_catalog(&f.cfg).await.unwrap();
        let t = catalog
            .load_table(&lakehouse::table_ident(&f.cfg, "ledger_events"))
            .await
            .unwrap();
        marks_of(&f.cfg.job_id, &t).unwrap().committed
    });
    assert_eq!(
        committed,
        Some(head.entry.checkpoint_id),
        "the table holds the head"
    );
    f.rt.block_on(async {
        let store = f.s.s3.object_store(&f.s.s3.checkpoint_bucket).unwrap();
        let key = format!(
            "{}/{}/{}",
            f.setup.name,
            f.cfg.job_id,
            log_path(head.entry.checkpoint_id)
        );
        store.delete(&Path::from(key.as_str())).await.unwrap();
    });
    refused_every_time(
        &f.rt,
        &f.s,
        &f.setup,
        &f.cfg,
        f.logdir.path(),
        5,
        &[&format!("holds checkpoint {}", head.entry.checkpoint_id)],
    );
    f.reconcile_clean();
}

/// Rolls `name` back to `snapshot` the way an engine's `rollback_to_snapshot` does: a new
/// metadata file whose `main` points at the older snapshot, swapped in the SQL catalog with a
/// compare-and-swap on the metadata location. Table properties (the job's marker) stay.
async fn roll_back(s: &Services, cfg: &Config, name: &str, snapshot: i64) {
    let catalog = lakehouse::open_catalog(cfg).await.expect("catalog");
    let ident = lakehouse::table_ident(cfg, name);
    let t = catalog.load_table(&ident).await.expect("table");
    let old = t
        .metadata_location()
        .expect("metadata location")
        .to_string();
    let metadata = t
        .metadata()
        .clone()
        .into_builder(Some(old.clone()))
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(snapshot, SnapshotRetention::branch(None, None, None)),
        )
        .expect("set main")
        .build()
        .expect("metadata")
        .metadata;
    let new = MetadataLocation::from_str(&old)
        .expect("location")
        .with_next_version()
        .with_new_metadata(&metadata);
    metadata
        .write_to(t.file_io(), &new)
        .await
        .expect("write metadata");
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&s.pg_catalog_url)
        .await
        .expect("postgres");
    let done = sqlx::query(
        "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
         WHERE table_namespace = $3 AND table_name = $4 AND metadata_location = $2",
    )
    .bind(new.to_string())
    .bind(&old)
    .bind(&cfg.catalog.namespace)
    .bind(name)
    .execute(&mut c)
    .await
    .expect("swap metadata");
    assert_eq!(done.rows_affected(), 1, "rollback of {name} swapped in");
}

#[test]
fn a_rolled_back_table_is_refused() {
    let Some(s) = services_or_skip("a_rolled_back_table_is_refused") else {
        return;
    };
    let mut f = Fixture::new(s, "rolled_back");
    f.feed_and_run(150, "first");
    let (old_snapshot, old_marks) = f.rt.block_on(async {
        let catalog = lakehouse::open_catalog(&f.cfg).await.unwrap();
        let t = catalog
            .load_table(&lakehouse::table_ident(&f.cfg, "ledger_events"))
            .await
            .unwrap();
        (
            t.metadata().current_snapshot_id().expect("a snapshot"),
            marks_of(&f.cfg.job_id, &t).unwrap(),
        )
    });
    f.feed_and_run(150, "second");
    f.rt.block_on(roll_back(&f.s, &f.cfg, "ledger_events", old_snapshot));
    let old = old_marks.committed.expect("committed").0;
    refused_every_time(
        &f.rt,
        &f.s,
        &f.setup,
        &f.cfg,
        f.logdir.path(),
        2,
        &[
            "was rolled back",
            &format!("current snapshot {old_snapshot} holds checkpoint {old}"),
            "roll the table forward to snapshot",
        ],
    );
}

#[test]
fn a_second_job_id_on_the_same_tables_is_refused() {
    let Some(s) = services_or_skip("a_second_job_id_on_the_same_tables_is_refused") else {
        return;
    };
    let mut f = Fixture::new(s, "second_job");
    f.feed_and_run(150, "first");
    f.reconcile_clean();
    // The same topic and tables, another job id (its own, empty checkpoint log).
    let toml = std::fs::read_to_string(&f.setup.config).unwrap();
    let second = toml.replacen(
        &format!("job_id = \"{}\"", f.setup.name),
        &format!("job_id = \"{}-second\"", f.setup.name),
        1,
    );
    assert_ne!(toml, second);
    std::fs::write(&f.setup.config, second).unwrap();
    let cfg2 = Config::load(Some(&f.setup.config)).unwrap();
    refused_every_time(
        &f.rt,
        &f.s,
        &f.setup,
        &cfg2,
        f.logdir.path(),
        2,
        &[&format!("is written by job {}", f.setup.name)],
    );
    // No row written twice: the tables reconcile exactly against what was published once.
    f.reconcile_clean();
}

/// The exit codes of `recon-pipeline run` as a supervisor sees them: 2 for a configuration
/// error, 1 for an unreachable broker (restart), each with the class on the final line.
#[test]
fn exit_codes_name_the_stop_class() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &FsPath| {
        let out = std::process::Command::new(recon_tests::pipeline::binary())
            .args(["run", "--config"])
            .arg(config)
            // The default catalog and warehouse are relative to the working directory.
            .current_dir(dir.path())
            .env("RUST_LOG", "off")
            .output()
            .expect("spawn recon-pipeline");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&dir.path().join("missing.toml"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("stopped: class config (exit 2)"), "{err}");
    let unreachable = dir.path().join("unreachable.toml");
    std::fs::write(
        &unreachable,
        "job_id = \"exit-codes\"\n[source]\nbrokers = \"127.0.0.1:1\"\ntopic = \"t\"\n",
    )
    .unwrap();
    let (code, err) = run(&unreachable);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stopped: class transient (exit 1)"), "{err}");
    // An operator command's refusal is not "restart and it may help": exit 3, what to change.
    let out = std::process::Command::new(recon_tests::pipeline::binary())
        .args([
            "rewind",
            "--to-checkpoint",
            "5",
            "--reason",
            "test",
            "--config",
        ])
        .arg(&unreachable)
        .current_dir(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .expect("spawn recon-pipeline rewind");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("nothing to rewind") && err.contains("class operator-needed (exit 3)"),
        "{err}"
    );
}

/// `GET path` over HTTP/1.0; `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// `run --hold-on-stop` (Kubernetes, compose): an operator-needed stop keeps the process up,
/// live but not ready, with the reason and a metric; it writes nothing; SIGTERM exits 3.
#[test]
fn hold_on_stop_stays_up_not_ready_and_writes_nothing() {
    let Some(s) = services_or_skip("hold_on_stop_stays_up_not_ready_and_writes_nothing") else {
        return;
    };
    let mut f = Fixture::new(s, "hold_on_stop");
    f.feed_and_run(50, "first");
    let toml = std::fs::read_to_string(&f.setup.config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let second = toml.replacen(
        &format!("job_id = \"{}\"", f.setup.name),
        &format!("job_id = \"{}-second\"", f.setup.name),
        1,
    ) + &format!("\n[observability]\nlisten = \"127.0.0.1:{port}\"\n");
    std::fs::write(&f.setup.config, second).unwrap();
    let cfg2 = Config::load(Some(&f.setup.config)).unwrap();
    let before = f.rt.block_on(world(&f.s, &f.setup, &cfg2));
    let log = f.logdir.path().join("held.log");
    let child = f
        .setup
        .spawn(3_000, &[("RECON_HOLD_ON_STOP", "true".to_string())], &log);
    let pid = child.id();
    let reason = f.rt.block_on(recon_tests::wait_until(
        "/readyz to answer 503 with the stop",
        Duration::from_secs(60),
        || async {
            match get(port, "/readyz") {
                Some((503, body)) if body.contains("operator-needed") => Some(body),
                _ => None,
            }
        },
    ));
    assert!(reason.contains("is written by job"), "{reason}");
    assert_eq!(get(port, "/healthz").map(|(c, _)| c), Some(200));
    let metrics = get(port, "/metrics").expect("metrics").1;
    assert!(
        metrics.contains("recon_stopped{class=\"operator-needed\"} 1"),
        "{metrics}"
    );
    assert_eq!(f.rt.block_on(world(&f.s, &f.setup, &cfg2)), before);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(30));
    assert_eq!(status.code(), Some(OPERATOR_NEEDED), "{out}");
    assert_eq!(f.rt.block_on(world(&f.s, &f.setup, &cfg2)), before);
}
