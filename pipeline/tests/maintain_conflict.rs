//! Snapshot expiry racing the job's commit, both ways, made deterministic: a catalog wrapper
//! lands the other side's commit right before the first commit it forwards. Neither commit
//! may be lost, and the job's marks only move forward. (Against PostgreSQL with a running job:
//! `tests/tests/maintain.rs`.)

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use iceberg::table::Table;
use iceberg::{Catalog, TableCommit, TableIdent};
use recon_pipeline::checkpoint::commit::{CommitOutcome, CommitRequest, Committer, marks_of};
use recon_pipeline::checkpoint::log::{CheckpointLog, CommitPermit};
use recon_pipeline::checkpoint::store::ObjectCheckpointStore;
use recon_pipeline::config::{Config, RawCatalog, RawConfig};
use recon_pipeline::ids::{CheckpointId, JobId};
use recon_pipeline::lakehouse;
use recon_pipeline::maintain::expire::Expirer;
use recon_pipeline::maintain::retention::RetentionPolicy;

type Interloper = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Forwards everything; the first `update_table` first runs the interloper to completion.
struct Interleave {
    inner: Arc<dyn Catalog>,
    interloper: tokio::sync::Mutex<Option<Interloper>>,
}

impl std::fmt::Debug for Interleave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interleave")
    }
}

recon_pipeline::catalog_passthrough! {
impl Catalog for Interleave {
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        self.inner.load_table(table).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        let interloper = self.interloper.lock().await.take();
        if let Some(f) = interloper {
            f.await;
        }
        self.inner.update_table(commit).await
    }
}}

struct Fixture {
    _dir: tempfile::TempDir,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    job: JobId,
    /// The job's generation, claimed in a checkpoint log of its own.
    permit: CommitPermit,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = RawConfig::default();
    let cfg = Config::resolve(RawConfig {
        catalog: RawCatalog {
            uri: format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display()),
            warehouse: format!("file://{}/warehouse", dir.path().display()),
            ..d.catalog
        },
        ..d
    })
    .unwrap();
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    lakehouse::ensure_tables(catalog.as_ref(), &cfg.catalog.namespace)
        .await
        .unwrap();
    let job = JobId::new("jc").unwrap();
    let store = ObjectCheckpointStore::new(Arc::new(object_store::memory::InMemory::new()));
    let log = CheckpointLog::new(Arc::new(store), "ckpt", job.clone());
    let f = Fixture {
        _dir: dir,
        ident: lakehouse::table_ident(&cfg, "ledger_events"),
        job,
        permit: log.claim(None).await.unwrap().permit,
        catalog,
    };
    for c in 1..=4 {
        let outcome = commit(f.catalog.clone(), &f.ident, &f.permit, c).await;
        assert_eq!(outcome, CommitOutcome::Committed);
    }
    f
}

/// The job's (empty, stamped) commit of checkpoint `through`.
async fn commit(
    catalog: Arc<dyn Catalog>,
    table: &TableIdent,
    permit: &CommitPermit,
    through: u64,
) -> CommitOutcome {
    let committer = Committer::new(catalog, permit, 5, Duration::from_secs(10));
    let req = CommitRequest {
        table: table.clone(),
        after: (through > 1).then_some(CheckpointId(through - 1)),
        first: CheckpointId(through),
        through: CheckpointId(through),
        files: vec![],
        offsets_json: "{}".into(),
        input_epoch: 0,
        through_sha256: None,
    };
    committer.commit(&req).await.unwrap()
}

fn expirer(f: &Fixture, catalog: Arc<dyn Catalog>) -> Expirer {
    Expirer {
        catalog,
        job: f.job.clone(),
        policy: RetentionPolicy {
            // Everything is old: only retain_last and the marker keep a snapshot.
            expire_before_ms: chrono::Utc::now().timestamp_millis() + 3_600_000,
            retain_last: NonZeroUsize::MIN,
        },
        attempts_max: 5,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn a_job_commit_landing_first_makes_the_expiry_replan_and_survives() {
    let f = fixture().await;
    let before: Vec<i64> = {
        let t = f.catalog.load_table(&f.ident).await.unwrap();
        t.metadata().snapshots().map(|s| s.snapshot_id()).collect()
    };
    let job_side = {
        let (catalog, ident, permit) = (f.catalog.clone(), f.ident.clone(), f.permit.clone());
        Box::pin(async move {
            let outcome = commit(catalog, &ident, &permit, 5).await;
            assert_eq!(outcome, CommitOutcome::Committed);
        }) as Interloper
    };
    let racing = Arc::new(Interleave {
        inner: f.catalog.clone(),
        interloper: tokio::sync::Mutex::new(Some(job_side)),
    });
    let done = expirer(&f, racing).expire(&f.ident, false).await.unwrap();
    assert_eq!(
        done.attempts, 2,
        "the first attempt lost the race and re-planned"
    );
    let t = f.catalog.load_table(&f.ident).await.unwrap();
    let marks = marks_of(&f.job, &t).unwrap();
    assert_eq!(
        marks.committed,
        Some(CheckpointId(5)),
        "the job's commit is kept"
    );
    assert_eq!(t.metadata().snapshots().len(), 1);
    let mut expired = done.plan.expire.clone();
    expired.sort_unstable();
    let mut all = before.clone();
    all.sort_unstable();
    assert_eq!(
        expired, all,
        "all four older snapshots expired, re-planned on the new base"
    );
}

#[tokio::test]
async fn an_expiry_landing_first_does_not_disturb_the_jobs_commit() {
    let f = fixture().await;
    let maintain_side = {
        let e = expirer(&f, f.catalog.clone());
        let ident = f.ident.clone();
        Box::pin(async move {
            let done = e.expire(&ident, false).await.unwrap();
            assert_eq!((done.attempts, done.plan.expire.len()), (1, 3));
        }) as Interloper
    };
    let racing: Arc<dyn Catalog> = Arc::new(Interleave {
        inner: f.catalog.clone(),
        interloper: tokio::sync::Mutex::new(Some(maintain_side)),
    });
    assert_eq!(
        commit(racing, &f.ident, &f.permit, 5).await,
        CommitOutcome::Committed
    );
    let t = f.catalog.load_table(&f.ident).await.unwrap();
    let marks = marks_of(&f.job, &t).unwrap();
    assert_eq!(marks.committed, Some(CheckpointId(5)));
    assert_eq!(
        t.metadata().snapshots().len(),
        2,
        "the survivor of expiry and the job's new commit"
    );
    let current = t.metadata().current_snapshot().unwrap();
    assert!(
        t.metadata()
            .snapshot_by_id(current.parent_snapshot_id().unwrap())
            .is_some()
    );
}
