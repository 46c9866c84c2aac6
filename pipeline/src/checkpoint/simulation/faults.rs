//! The simulation's faulty world: a seeded fault source, and the checkpoint store, catalog and
//! warehouse as one process sees them (each call can fail, lose its reply, lie or kill the
//! process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use iceberg::table::Table;
use iceberg::{Catalog, TableCommit, TableIdent};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::presence::FileSizes;
use crate::checkpoint::store::{CheckpointStore, Created, ObjectCheckpointStore, StoreError};

/// Fault rates of one run, drawn from its seed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rates {
    /// Call fails before acting.
    pub(super) fail: f64,
    /// Call acts, then its reply is lost.
    pub(super) lost: f64,
    /// Catalog says a commit landed when it did not.
    pub(super) liar: f64,
    /// Process dies at this call.
    pub(super) crash: f64,
}

/// Shared, seeded source of faults; each process has its own `dead` flag.
pub(super) struct Faults {
    pub(super) rng: Mutex<ChaCha8Rng>,
    pub(super) rates: Rates,
    pub(super) enabled: AtomicBool,
}

#[derive(Debug, PartialEq)]
pub(super) enum Fault {
    None,
    FailBefore,
    LostReply,
    Liar,
    Crash,
}

impl Faults {
    pub(super) fn roll(&self, dead: &AtomicBool, may_lie: bool) -> Fault {
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

pub(super) fn injected(op: &'static str, path: &str) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_string(),
        source: object_store::Error::Generic {
            store: "sim",
            source: "injected fault".into(),
        },
    }
}

pub(super) struct FaultyStore {
    pub(super) inner: ObjectCheckpointStore,
    pub(super) faults: Arc<Faults>,
    pub(super) dead: Arc<AtomicBool>,
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

pub(super) fn catalog_fault(what: &str) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("injected fault: {what}"),
    )
}

/// The catalog as one process sees it: every call can fail, lose its reply, or lie.
pub(super) struct FaultyCatalog {
    pub(super) inner: Arc<dyn Catalog>,
    pub(super) faults: Arc<Faults>,
    pub(super) dead: Arc<AtomicBool>,
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

/// The simulated warehouse: the data files written so far and their sizes. A question about a
/// file can meet the "file missing" fault (answered `None`, as if an operator had deleted it
/// and restored it later): publishing must then stop without committing anything.
pub(super) struct Warehouse {
    pub(super) files: Arc<Mutex<HashMap<String, u64>>>,
    pub(super) faults: Arc<Faults>,
    pub(super) dead: Arc<AtomicBool>,
}

#[async_trait]
impl FileSizes for Warehouse {
    async fn size_bytes(&self, uri: &str) -> Result<Option<u64>, String> {
        match self.faults.roll(&self.dead, false) {
            Fault::None | Fault::Liar | Fault::LostReply => {
                Ok(self.files.lock().unwrap().get(uri).copied())
            }
            Fault::FailBefore => Ok(None),
            Fault::Crash => Err("injected fault: crash".into()),
        }
    }
}
