//! What the job's checkpoint log still needs from the warehouse: the data files every retained
//! checkpoint lists (for a complete checkpoint not yet committed they are referenced by no
//! snapshot, and deleting them would make the next commit point at missing files), and the
//! newest generation (files a running process is writing for its next checkpoint are named
//! with it).
//!
//! Read the log **before** loading any table: the job prunes a checkpoint only after committing
//! it, so a checkpoint missing from this read was committed before it, and a table loaded
//! afterwards references its files.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use crate::checkpoint::log::{CheckpointLog, LogError};
use crate::ids::{CheckpointId, Generation};
use crate::maintain::references::object_key;

/// Most log entries read (the log keeps `checkpoint.keep_last` plus what is uncommitted).
pub const LOG_ENTRIES_MAX: usize = 100_000;

/// What the log protects.
#[derive(Debug, Default)]
pub struct Pending {
    /// Object keys of data files listed by retained checkpoints.
    pub keys: HashSet<String>,
    /// The head: newest checkpoint and its generation, `None` for an empty log.
    pub head: Option<(CheckpointId, Generation)>,
    /// Entries whose manifest could not be read although the entry is still there (pruning
    /// deletes the manifest first). Harmless only if every table's marks reach them: the
    /// sweep checks that, and refuses otherwise.
    pub unreadable: Vec<CheckpointId>,
    /// Checkpoints read.
    pub checkpoints: usize,
    /// Every entry read and the generation that wrote it (checkpoints, claims, rewinds):
    /// recovery's orphan rule asks whether the writer of a file completed its checkpoint.
    pub entries: BTreeMap<CheckpointId, Generation>,
}

/// Only the path of a serialized `DataFile` is needed here.
#[derive(Deserialize)]
struct FilePath {
    file_path: String,
}

/// Reads every retained checkpoint of the log.
pub async fn read(log: &CheckpointLog) -> Result<Pending, String> {
    let ids = log.ids_after(None).await.map_err(|e| e.to_string())?;
    if ids.len() > LOG_ENTRIES_MAX {
        return Err(format!(
            "the checkpoint log of job {} holds {} entries (more than {LOG_ENTRIES_MAX}); is pruning working?",
            log.job(),
            ids.len()
        ));
    }
    let mut pending = Pending::default();
    for id in ids {
        let Some(entry) = log.entry(id).await.map_err(|e| e.to_string())? else {
            continue; // pruned between the listing and this read
        };
        let head = (entry.checkpoint_id, entry.generation);
        pending.head = pending.head.max(Some(head));
        pending
            .entries
            .insert(entry.checkpoint_id, entry.generation);
        let manifest = match log.manifest(&entry).await {
            Ok(m) => m,
            // Pruning deletes the manifest before the entry.
            Err(LogError::Corrupt { .. }) if log.entry(id).await.ok().flatten().is_none() => {
                continue;
            }
            Err(LogError::Corrupt { .. }) => {
                pending.unreadable.push(id);
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        pending.checkpoints += 1;
        for (table, files) in &manifest.pending {
            for json in &files.files {
                let f: FilePath = serde_json::from_str(json).map_err(|e| {
                    format!("checkpoint {id}, table {table}: a pending file is unreadable: {e}")
                })?;
                let key = object_key(&f.file_path).ok_or_else(|| {
                    format!(
                        "checkpoint {id}: pending file {:?} is not a URL",
                        f.file_path
                    )
                })?;
                pending.keys.insert(key);
            }
        }
    }
    Ok(pending)
}
