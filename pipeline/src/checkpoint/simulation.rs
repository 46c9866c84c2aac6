//! Seeded simulation of the exactly-once protocol under faults.
//!
//! Thousands of runs, each from a seed: a job (the real [`CheckpointLog`], [`Committer`] and
//! [`Publisher`], on an in-memory object store and iceberg's in-memory catalog) consumes two
//! partitions of numbered records through checkpoints and commits into two tables, while a
//! fault injector makes store and catalog calls fail before acting, act and then lose the
//! reply, report a commit that never happened (iceberg-rust#3061), or kill the process between
//! any two calls. Processes restart from the log; sometimes the old one is only paused and
//! comes back as a zombie. At the end a fault-free process drains the input, and the oracle
//! checks that each table holds every record exactly once: the committed files' record ranges
//! tile `[0, n)` per partition, with no gap and no overlap.
//!
//! A failure prints its seed; `RECON_SIM_SEED=<seed>` replays one run, `RECON_SIM_RUNS=<n>`
//! runs more.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use iceberg::memory::{MEMORY_CATALOG_WAREHOUSE, MemoryCatalogBuilder};
use iceberg::spec::{
    DataContentType, DataFileBuilder, DataFileFormat, FormatVersion, NestedField, PrimitiveType,
    Schema, StructType, Type, serialize_data_file_to_json,
};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCommit, TableCreation, TableIdent};
use iceberg_storage_opendal::OpenDalStorageFactory;
use object_store::memory::InMemory;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::commit::Committer;
use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::manifest::{
    Counts, EntryKind, FORMAT_VERSION, Manifest, PartitionCut, PendingFiles,
};
use crate::checkpoint::publish::Publisher;
use crate::checkpoint::store::{CheckpointStore, Created, ObjectCheckpointStore, StoreError};
use crate::ids::{CheckpointId, Generation, JobId, Offset, PartitionId};

pub(super) const TABLES: [&str; 2] = ["ledger", "balances"];
const PARTITIONS: i32 = 2;

/// Fault rates of one run, drawn from its seed.
#[derive(Clone, Copy, Debug)]
struct Rates {
    /// Call fails before acting.
    fail: f64,
    /// Call acts, then its reply is lost.
    lost: f64,
    /// Catalog says a commit landed when it did not.
    liar: f64,
    /// Process dies at this call.
    crash: f64,
}

/// Shared, seeded source of faults; each process has its own `dead` flag.
struct Faults {
    rng: Mutex<ChaCha8Rng>,
    rates: Rates,
    enabled: AtomicBool,
}

#[derive(Debug, PartialEq)]
enum Fault {
    None,
    FailBefore,
    LostReply,
    Liar,
    Crash,
}

impl Faults {
    fn roll(&self, dead: &AtomicBool, may_lie: bool) -> Fault {
        if dead.load(Ordering::SeqCst) {
            return Fault::Crash;
        }
        if !self.enabled.load(Ordering::SeqCst) {
            return Fault::None;
        }
        let mut rng = self.rng.lock().unwrap();
        let r: f64 = rng.random();
        let Rates {
            fail,
            lost,
            liar,
            crash,
        } = self.rates;
        if r < crash {
            dead.store(true, Ordering::SeqCst);
            Fault::Crash
        } else if r < crash + fail {
            Fault::FailBefore
        } else if r < crash + fail + lost {
            Fault::LostReply
        } else if may_lie && r < crash + fail + lost + liar {
            Fault::Liar
        } else {
            Fault::None
        }
    }
}

fn injected(op: &'static str, path: &str) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_string(),
        source: object_store::Error::Generic {
            store: "sim",
            source: "injected fault".into(),
        },
    }
}

struct FaultyStore {
    inner: ObjectCheckpointStore,
    faults: Arc<Faults>,
    dead: Arc<AtomicBool>,
}

#[async_trait]
impl CheckpointStore for FaultyStore {
    async fn create(&self, path: &str, bytes: Bytes) -> Result<Created, StoreError> {
        match self.faults.roll(&self.dead, false) {
            Fault::None | Fault::Liar => self.inner.create(path, bytes).await,
            Fault::LostReply => {
                self.inner.create(path, bytes).await?;
                Err(injected("create", path))
            }
            _ => Err(injected("create", path)),
        }
    }
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), StoreError> {
        match self.faults.roll(&self.dead, false) {
            Fault::None | Fault::Liar => self.inner.put(path, bytes).await,
            Fault::LostReply => {
                self.inner.put(path, bytes).await?;
                Err(injected("put", path))
            }
            _ => Err(injected("put", path)),
        }
    }
    async fn get(&self, path: &str) -> Result<Option<Bytes>, StoreError> {
        match self.faults.roll(&self.dead, false) {
            Fault::None | Fault::Liar | Fault::LostReply => self.inner.get(path).await,
            _ => Err(injected("get", path)),
        }
    }
    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        match self.faults.roll(&self.dead, false) {
            Fault::None | Fault::Liar | Fault::LostReply => {
                self.inner.list_after(prefix, after).await
            }
            _ => Err(injected("list", prefix)),
        }
    }
    async fn delete(&self, path: &str) -> Result<(), StoreError> {
        match self.faults.roll(&self.dead, false) {
            Fault::None | Fault::Liar => self.inner.delete(path).await,
            Fault::LostReply => {
                self.inner.delete(path).await?;
                Err(injected("delete", path))
            }
            _ => Err(injected("delete", path)),
        }
    }
}

fn catalog_fault(what: &str) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("injected fault: {what}"),
    )
}

/// The catalog as one process sees it: every call can fail, lose its reply, or lie.
struct FaultyCatalog {
    inner: Arc<dyn Catalog>,
    faults: Arc<Faults>,
    dead: Arc<AtomicBool>,
}

impl std::fmt::Debug for FaultyCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyCatalog")
    }
}

crate::catalog_passthrough! {
impl Catalog for FaultyCatalog {
    async fn load_table(&self, t: &TableIdent) -> iceberg::Result<Table> {
        match self.faults.roll(&self.dead, false) {
            Fault::None | Fault::Liar | Fault::LostReply => self.inner.load_table(t).await,
            _ => Err(catalog_fault("load_table")),
        }
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        match self.faults.roll(&self.dead, true) {
            Fault::None => self.inner.update_table(commit).await,
            Fault::LostReply => {
                self.inner.update_table(commit).await?;
                Err(catalog_fault("update_table reply lost"))
            }
            Fault::Liar => {
                // Report success for a commit that was never applied (iceberg-rust#3061).
                let current = self.inner.load_table(commit.identifier()).await?;
                commit.apply(current)
            }
            _ => Err(catalog_fault("update_table")),
        }
    }
}}

/// One process of the simulated job.
struct Process {
    log: CheckpointLog,
    committer: Committer,
    generation: Generation,
    last: CheckpointId,
    cuts: BTreeMap<PartitionId, PartitionCut>,
    uncommitted: BTreeMap<CheckpointId, Manifest>,
    tables: Vec<Table>,
    dead: Arc<AtomicBool>,
}

struct World {
    store: ObjectCheckpointStore,
    catalog: Arc<dyn Catalog>,
    faults: Arc<Faults>,
    job: JobId,
    input: BTreeMap<PartitionId, i64>,
}

type SimResult<T> = Result<T, String>;

impl World {
    async fn start(&self) -> SimResult<Process> {
        let dead = Arc::new(AtomicBool::new(false));
        let store: Arc<dyn CheckpointStore> = Arc::new(FaultyStore {
            inner: self.store.clone(),
            faults: self.faults.clone(),
            dead: dead.clone(),
        });
        let catalog: Arc<dyn Catalog> = Arc::new(FaultyCatalog {
            inner: self.catalog.clone(),
            faults: self.faults.clone(),
            dead: dead.clone(),
        });
        let log = CheckpointLog::new(store, "sim", self.job.clone());
        let claimed = log.claim(None).await.map_err(|e| e.to_string())?;
        let generation = claimed.entry.generation;
        let committer = Committer::new(
            catalog.clone(),
            self.job.clone(),
            generation,
            4,
            Duration::from_secs(5),
        );
        let mut tables = Vec::new();
        for t in TABLES {
            let ident = TableIdent::from_strs(["sim", t]).unwrap();
            tables.push(
                catalog
                    .load_table(&ident)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let mut p = Process {
            log,
            committer,
            generation,
            last: claimed.entry.checkpoint_id,
            cuts: claimed.manifest.partitions.clone(),
            uncommitted: BTreeMap::new(),
            tables,
            dead,
        };
        p.publish().await?;
        Ok(p)
    }
}

impl Process {
    /// Consumes a random number of records per partition and completes a checkpoint.
    async fn barrier(
        &mut self,
        rng: &mut ChaCha8Rng,
        input: &BTreeMap<PartitionId, i64>,
    ) -> SimResult<()> {
        let id = self.last.next();
        let mut cuts = self.cuts.clone();
        let mut pending: BTreeMap<String, PendingFiles> = BTreeMap::new();
        for (p, n) in input {
            let cut = cuts.entry(*p).or_insert(PartitionCut {
                start: Offset(0),
                end: Offset(0),
                records: 0,
                last: None,
            });
            let start = cut.end.0;
            let take = rng.random_range(0..=4).min(n - start);
            *cut = PartitionCut {
                start: Offset(start),
                end: Offset(start + take),
                records: take as u64,
                last: None,
            };
            if take == 0 {
                continue;
            }
            for t in TABLES {
                let file = DataFileBuilder::default()
                    .content(DataContentType::Data)
                    .file_path(format!(
                        "memory://sim/{t}/data/p{}-{start}-{}-g{}-c{}-{}.parquet",
                        p.0,
                        start + take,
                        self.generation,
                        id,
                        rng.random::<u32>()
                    ))
                    .file_format(DataFileFormat::Parquet)
                    .record_count(take as u64)
                    .file_size_in_bytes(take as u64 * 100)
                    .build()
                    .unwrap();
                let json =
                    serialize_data_file_to_json(file, &StructType::new(vec![]), FormatVersion::V2)
                        .unwrap();
                let e = pending.entry(t.to_string()).or_default();
                e.files.push(json);
                e.rows += take as u64;
            }
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            job_id: self.log.job().clone(),
            checkpoint_id: id,
            generation: self.generation,
            partitions: cuts.clone(),
            pending,
            state_chain: Vec::new(),
            counts: Counts::default(),
            replay_until: Default::default(),
            alerts: None,
            input_epoch: 0,
            topic_id: None,
        };
        let entry = self
            .log
            .write_manifest(&manifest, EntryKind::Checkpoint)
            .await
            .map_err(|e| e.to_string())?;
        self.log.complete(&entry).await.map_err(|e| e.to_string())?;
        self.last = id;
        self.cuts = cuts;
        self.uncommitted.insert(id, manifest);
        Ok(())
    }

    async fn publish(&mut self) -> SimResult<()> {
        let publisher = Publisher {
            committer: &self.committer,
            log: &self.log,
            uncommitted: &self.uncommitted,
        };
        for t in &self.tables {
            publisher
                .table(t, self.last)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.uncommitted.clear();
        Ok(())
    }

    fn drained(&self, input: &BTreeMap<PartitionId, i64>) -> bool {
        input
            .iter()
            .all(|(p, n)| self.cuts.get(p).is_some_and(|c| c.end.0 == *n))
    }
}

/// An in-memory catalog with the namespace `sim` and the tables of [`TABLES`].
pub(super) async fn memory_catalog() -> Arc<dyn Catalog> {
    let catalog = MemoryCatalogBuilder::default()
        .with_storage_factory(Arc::new(OpenDalStorageFactory::Memory))
        .load(
            "sim",
            HashMap::from([(
                MEMORY_CATALOG_WAREHOUSE.to_string(),
                "memory://sim".to_string(),
            )]),
        )
        .await
        .unwrap();
    let ns = NamespaceIdent::new("sim".into());
    catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
    let schema = Schema::builder()
        .with_fields(vec![
            NestedField::required(1, "x", Type::Primitive(PrimitiveType::Long)).into(),
        ])
        .build()
        .unwrap();
    for t in TABLES {
        let c = TableCreation::builder()
            .name(t.to_string())
            .schema(schema.clone())
            .build();
        catalog.create_table(&ns, c).await.unwrap();
    }
    Arc::new(catalog)
}

/// Per table and partition, the record ranges of every committed file.
async fn committed_ranges(catalog: &dyn Catalog) -> BTreeMap<(String, i32), Vec<(i64, i64)>> {
    let mut out: BTreeMap<(String, i32), Vec<(i64, i64)>> = BTreeMap::new();
    for t in TABLES {
        let table = catalog
            .load_table(&TableIdent::from_strs(["sim", t]).unwrap())
            .await
            .unwrap();
        if table.metadata().current_snapshot().is_none() {
            continue;
        }
        let tasks: Vec<_> = table
            .scan()
            .build()
            .unwrap()
            .plan_files()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for task in tasks {
            let name = task.data_file_path.rsplit('/').next().unwrap().to_string();
            let mut parts = name.trim_start_matches('p').split('-');
            let p: i32 = parts.next().unwrap().parse().unwrap();
            let a: i64 = parts.next().unwrap().parse().unwrap();
            let b: i64 = parts.next().unwrap().parse().unwrap();
            out.entry((t.to_string(), p)).or_default().push((a, b));
        }
    }
    out
}

/// One seeded run; returns a description of the violation, if any.
async fn run_seed(seed: u64) -> Result<(u32, u32), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rates = Rates {
        fail: rng.random_range(0.0..0.06),
        lost: rng.random_range(0.0..0.06),
        liar: rng.random_range(0.0..0.05),
        crash: rng.random_range(0.0..0.03),
    };
    let faults = Arc::new(Faults {
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15)),
        rates,
        enabled: AtomicBool::new(true),
    });
    let input: BTreeMap<PartitionId, i64> = (0..PARTITIONS)
        .map(|p| (PartitionId(p), rng.random_range(5..40)))
        .collect();
    let world = World {
        store: ObjectCheckpointStore::new(Arc::new(InMemory::new())),
        catalog: memory_catalog().await,
        faults: faults.clone(),
        job: JobId::new("sim").unwrap(),
        input: input.clone(),
    };
    let mut restarts = 0u32;
    let mut zombies_fenced = 0u32;
    let mut zombie: Option<Process> = None;
    // Faulty phase: bounded number of process starts and steps.
    'starts: for _ in 0..40 {
        restarts += 1;
        let Ok(mut p) = world.start().await else {
            continue;
        };
        for _ in 0..30 {
            // A paused process may come back at any step; its work must be fenced or harmless.
            if let Some(z) = zombie.as_mut()
                && rng.random_bool(0.3)
            {
                let r = if rng.random_bool(0.5) {
                    z.barrier(&mut rng, &world.input).await
                } else {
                    z.publish().await
                };
                if r.is_err() {
                    zombies_fenced += 1;
                    zombie = None;
                }
            }
            let step = if rng.random_bool(0.6) {
                p.barrier(&mut rng, &world.input).await
            } else {
                p.publish().await
            };
            if step.is_err() {
                continue 'starts;
            }
            if p.drained(&world.input) && rng.random_bool(0.2) {
                break 'starts;
            }
            if zombie.is_none() && !p.dead.load(Ordering::SeqCst) && rng.random_bool(0.05) {
                // Pause this process (GC pause, partition) and start a replacement.
                zombie = Some(p);
                continue 'starts;
            }
        }
    }
    // Clean phase: faults off, one process drains and publishes everything.
    faults.enabled.store(false, Ordering::SeqCst);
    let mut p = world
        .start()
        .await
        .map_err(|e| format!("clean start failed: {e}"))?;
    for _ in 0..1000 {
        if p.drained(&world.input) {
            break;
        }
        p.barrier(&mut rng, &world.input)
            .await
            .map_err(|e| format!("clean barrier: {e}"))?;
    }
    p.publish()
        .await
        .map_err(|e| format!("clean publish: {e}"))?;
    // A late zombie must not be able to change anything now either.
    if let Some(mut z) = zombie.take() {
        z.dead.store(false, Ordering::SeqCst);
        if z.barrier(&mut rng, &world.input).await.is_ok() && z.publish().await.is_ok() {
            // Only harmless if it had nothing left to add; the oracle below decides.
        }
    }

    // Oracle: every record of every partition exactly once in every table.
    let ranges = committed_ranges(world.catalog.as_ref()).await;
    for t in TABLES {
        for (p, n) in &input {
            let mut rs = ranges
                .get(&(t.to_string(), p.0))
                .cloned()
                .unwrap_or_default();
            rs.sort();
            let mut next = 0;
            for (a, b) in &rs {
                if *a != next {
                    return Err(format!(
                        "table {t} partition {p}: expected a file starting at {next}, found [{a},{b}) — {} (ranges {rs:?})",
                        if *a < next { "DUPLICATE" } else { "LOSS" }
                    ));
                }
                next = *b;
            }
            if next != *n {
                return Err(format!(
                    "table {t} partition {p}: records {next}..{n} never committed (LOSS)"
                ));
            }
        }
    }
    Ok((restarts, zombies_fenced))
}

// Paused time: backoff sleeps in the commit loop complete at once, so thousands of faulty
// runs take seconds, deterministically.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn exactly_once_under_seeded_faults() {
    let seeds: Vec<u64> = match std::env::var("RECON_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RECON_SIM_SEED is a number")],
        Err(_) => {
            let runs: u64 = std::env::var("RECON_SIM_RUNS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(100);
            (0..runs).collect()
        }
    };
    let (mut restarts, mut fenced) = (0u64, 0u64);
    for seed in &seeds {
        match run_seed(*seed).await {
            Ok((r, z)) => {
                restarts += u64::from(r);
                fenced += u64::from(z);
            }
            Err(e) => panic!(
                "simulation seed {seed} failed: {e}\nreplay: RECON_SIM_SEED={seed} cargo test -p recon-pipeline exactly_once_under_seeded_faults"
            ),
        }
    }
    println!(
        "simulation: {} seeds, {restarts} process starts, {fenced} zombies stopped",
        seeds.len()
    );
    assert!(
        restarts as usize > seeds.len(),
        "faults must have forced restarts"
    );
}
