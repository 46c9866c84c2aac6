//! The checkpoint store: a small object-store contract the protocol relies on.
//!
//! Contract (every implementation must honour it; `tests` below run it against each one):
//! - **read-after-write**: a `get` after a successful `put` returns the bytes put;
//! - **create-if-absent**: `create` succeeds for exactly one writer of a path; every other
//!   writer gets [`Created::AlreadyExists`] with the bytes that won, so a retry after an
//!   ambiguous failure can tell "I already did this" from "someone else did";
//! - **atomic objects**: a reader never sees a partial object;
//! - `list_after` returns every path under a prefix whose name sorts after a given one.
//!
//! The store is `object_store`: a local directory by default, S3 with the same code.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Most objects one `list` may return: the log is pruned, so more means something is wrong.
pub const LIST_OBJECTS_MAX: usize = 100_000;

/// What a conditional create found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// This call created the object.
    Created,
    /// The object already existed; these are its bytes.
    AlreadyExists(Bytes),
}

/// Errors of the checkpoint store, classified for the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with an error; the outcome of a write is unknown.
    #[error("checkpoint store {op} {path}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The object path.
        path: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// A listing returned more objects than [`LIST_OBJECTS_MAX`].
    #[error(
        "checkpoint store listing of {prefix} returned more than {LIST_OBJECTS_MAX} objects; prune old checkpoints"
    )]
    TooMany {
        /// The listed prefix.
        prefix: String,
    },
}

/// An object read in chunks ([`CheckpointStore::get_chunks`]).
pub type Chunks = futures::stream::BoxStream<'static, Result<Bytes, StoreError>>;

/// The operations the checkpoint protocol needs from durable storage.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Writes `bytes` at `path` only if nothing is there yet.
    async fn create(&self, path: &str, bytes: Bytes) -> Result<Created, StoreError>;
    /// Writes `bytes` at `path`, replacing whatever is there (for attempt-unique paths only).
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), StoreError>;
    /// Reads the object at `path`, `None` when absent.
    async fn get(&self, path: &str) -> Result<Option<Bytes>, StoreError>;
    /// Reads the object at `path` as a stream of chunks, `None` when absent: a large file is
    /// read without holding all of it; with its size. The default reads it whole (one chunk).
    async fn get_chunks(&self, path: &str) -> Result<Option<(u64, Chunks)>, StoreError> {
        let whole = self.get(path).await?;
        Ok(whole.map(|b| {
            let len = b.len() as u64;
            (len, futures::stream::once(async move { Ok(b) }).boxed())
        }))
    }
    /// Lists paths under `prefix` that sort strictly after `after` (all of them when `None`), sorted.
    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
    /// Deletes the object at `path`; deleting an absent object is not an error.
    async fn delete(&self, path: &str) -> Result<(), StoreError>;
}

/// [`CheckpointStore`] over any `object_store` backend (local directory, S3, memory).
#[derive(Clone, Debug)]
pub struct ObjectCheckpointStore {
    inner: Arc<dyn ObjectStore>,
}

impl ObjectCheckpointStore {
    /// Wraps an object store. For S3, conditional puts must be supported (the default ETag mode).
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        ObjectCheckpointStore { inner }
    }
}

fn io(op: &'static str, path: &str, source: object_store::Error) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_string(),
        source,
    }
}

#[async_trait]
impl CheckpointStore for ObjectCheckpointStore {
    async fn create(&self, path: &str, bytes: Bytes) -> Result<Created, StoreError> {
        let location = Path::from(path);
        let opts = PutOptions::from(PutMode::Create);
        match self
            .inner
            .put_opts(&location, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                let existing = self.get(path).await?.ok_or_else(|| {
                    io(
                        "create",
                        path,
                        object_store::Error::Generic {
                            store: "checkpoint",
                            source: "object reported as existing but cannot be read".into(),
                        },
                    )
                })?;
                Ok(Created::AlreadyExists(existing))
            }
            Err(e) => Err(io("create", path, e)),
        }
    }

    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&Path::from(path), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| io("put", path, e))
    }

    async fn get(&self, path: &str) -> Result<Option<Bytes>, StoreError> {
        match self.inner.get(&Path::from(path)).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| io("get", path, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io("get", path, e)),
        }
    }

    async fn get_chunks(&self, path: &str) -> Result<Option<(u64, Chunks)>, StoreError> {
        match self.inner.get(&Path::from(path)).await {
            Ok(r) => {
                let (len, path) = (r.meta.size, path.to_string());
                let chunks = r.into_stream().map_err(move |e| io("get", &path, e));
                Ok(Some((len, chunks.boxed())))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io("get", path, e)),
        }
    }

    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let prefix_path = Path::from(prefix);
        let mut stream = match after {
            Some(a) => self
                .inner
                .list_with_offset(Some(&prefix_path), &Path::from(a)),
            None => self.inner.list(Some(&prefix_path)),
        };
        let mut out = Vec::new();
        while let Some(meta) = stream.try_next().await.map_err(|e| io("list", prefix, e))? {
            let p = meta.location.to_string();
            // Some backends ignore the offset: filter again.
            if after.is_some_and(|a| p.as_str() <= a) {
                continue;
            }
            out.push(p);
            if out.len() > LIST_OBJECTS_MAX {
                return Err(StoreError::TooMany {
                    prefix: prefix.to_string(),
                });
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, path: &str) -> Result<(), StoreError> {
        match self.inner.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io("delete", path, e)),
        }
    }
}

/// Opens the configured checkpoint store; returns it with the key prefix to use inside it.
pub fn open(cfg: &crate::config::Config) -> Result<(Arc<dyn CheckpointStore>, String), StoreError> {
    use crate::config::StoreLocation;
    let (inner, prefix): (Arc<dyn ObjectStore>, String) = match &cfg.checkpoint_store {
        StoreLocation::Local(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                io(
                    "open",
                    &dir.display().to_string(),
                    object_store::Error::Generic {
                        store: "checkpoint",
                        source: Box::new(e),
                    },
                )
            })?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| io("open", &dir.display().to_string(), e))?;
            // fsync: a checkpoint is durable only once its bytes are on disk.
            (Arc::new(fs.with_fsync(true)), String::new())
        }
        StoreLocation::Url(url) => {
            let parsed = url::Url::parse(url).map_err(|e| {
                io(
                    "open",
                    url,
                    object_store::Error::Generic {
                        store: "checkpoint",
                        source: Box::new(e),
                    },
                )
            })?;
            let opts: Vec<(String, String)> = cfg
                .checkpoint_store_options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let (store, path) = if parsed.scheme() == "s3" {
                // Credentials and region come from the standard AWS environment unless given.
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
                for (k, v) in &opts {
                    let key = k.parse().map_err(|e| io("open", url, e))?;
                    b = b.with_config(key, v);
                }
                let s = b.build().map_err(|e| io("open", url, e))?;
                let path = object_store::path::Path::from_url_path(parsed.path())
                    .map_err(|e| io("open", url, e.into()))?;
                (Arc::new(s) as Arc<dyn ObjectStore>, path)
            } else {
                object_store::parse_url_opts(&parsed, opts)
                    .map(|(s, p)| (Arc::from(s) as Arc<dyn ObjectStore>, p))
                    .map_err(|e| io("open", url, e))?
            };
            (store, path.to_string())
        }
    };
    Ok((Arc::new(ObjectCheckpointStore::new(inner)), prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    fn stores() -> Vec<(
        &'static str,
        ObjectCheckpointStore,
        Option<tempfile::TempDir>,
    )> {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        vec![
            (
                "memory",
                ObjectCheckpointStore::new(Arc::new(InMemory::new())),
                None,
            ),
            (
                "local",
                ObjectCheckpointStore::new(Arc::new(local)),
                Some(dir),
            ),
        ]
    }

    /// The contract suite, run against every implementation.
    #[tokio::test]
    async fn contract_holds_for_every_store() {
        for (name, store, _dir) in stores() {
            assert_eq!(store.get("a/x").await.unwrap(), None, "{name}");
            store.put("a/x", Bytes::from_static(b"1")).await.unwrap();
            assert_eq!(store.get("a/x").await.unwrap().unwrap(), "1", "{name}");

            let c1 = store
                .create("a/log/1", Bytes::from_static(b"mine"))
                .await
                .unwrap();
            assert_eq!(c1, Created::Created, "{name}");
            let c2 = store
                .create("a/log/1", Bytes::from_static(b"theirs"))
                .await
                .unwrap();
            assert_eq!(
                c2,
                Created::AlreadyExists(Bytes::from_static(b"mine")),
                "{name}"
            );

            store
                .create("a/log/2", Bytes::from_static(b"2"))
                .await
                .unwrap();
            store
                .create("a/log/3", Bytes::from_static(b"3"))
                .await
                .unwrap();
            let all = store.list_after("a/log", None).await.unwrap();
            assert_eq!(all, vec!["a/log/1", "a/log/2", "a/log/3"], "{name}");
            let after = store.list_after("a/log", Some("a/log/1")).await.unwrap();
            assert_eq!(after, vec!["a/log/2", "a/log/3"], "{name}");

            store.delete("a/log/2").await.unwrap();
            store.delete("a/log/2").await.unwrap();
            assert_eq!(store.get("a/log/2").await.unwrap(), None, "{name}");
        }
    }

    /// Sixteen racing creators: exactly one wins, every loser sees the winner's bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_have_one_winner() {
        for (name, store, _dir) in stores() {
            let mut tasks = Vec::new();
            for i in 0..16u8 {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    (i, s.create("race/1", Bytes::from(vec![i])).await.unwrap())
                }));
            }
            let mut winners = Vec::new();
            let mut seen = Vec::new();
            for t in tasks {
                let (i, outcome) = t.await.unwrap();
                match outcome {
                    Created::Created => winners.push(i),
                    Created::AlreadyExists(b) => seen.push(b[0]),
                }
            }
            assert_eq!(winners.len(), 1, "{name}: winners {winners:?}");
            assert!(seen.iter().all(|b| *b == winners[0]), "{name}");
        }
    }
}
