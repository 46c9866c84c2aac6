//! What the committer has committed to every table, per task: `<prefix>/<job>/commits/tasks.json`,
//! written after every table holds a commit sequence. Workers prune their task's log up to it
//! (a pruned task checkpoint's files are then referenced by the tables' metadata, so no orphan
//! cleanup deletes them). It only ever allows less pruning when stale, never more.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::checkpoint::log::{CheckpointLog, LogError};
use crate::ids::{CheckpointId, Generation};

/// The committed progress record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The commit sequence every table holds.
    pub sequence: CheckpointId,
    /// The committer generation that recorded it.
    pub generation: Generation,
    /// Per task, the newest task checkpoint the tables hold.
    pub tasks: BTreeMap<u32, CheckpointId>,
}

const RECORD: &str = "commits/tasks.json";

/// Writes the record beside the committer's log (overwrites: only the newest matters).
pub async fn write(log: &CheckpointLog, committed: &Committed) -> Result<(), LogError> {
    let bytes = serde_json::to_vec(committed).expect("the record serialises");
    log.store()
        .put(&log.path_of(RECORD), Bytes::from(bytes))
        .await?;
    Ok(())
}

/// Reads the record; `None` before the first commit. An unreadable record reads as `None`
/// (pruning waits), with a warning.
pub async fn read(log: &CheckpointLog) -> Result<Option<Committed>, LogError> {
    let p = log.path_of(RECORD);
    let Some(bytes) = log.store().get(&p).await? else {
        return Ok(None);
    };
    match serde_json::from_slice(&bytes) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            tracing::warn!(path = %p, error = %e, "the committer's progress record does not parse; task logs are not pruned until it is rewritten");
            Ok(None)
        }
    }
}
