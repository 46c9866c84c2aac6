//! Files in the checkpoint store that nothing can read any more, deleted at start.
//!
//! A crash can leave files that no checkpoint lists: the state delta and cold run of a barrier
//! whose manifest was never written (its directory has no log entry), the run of a cold merge
//! that was never taken in, files of a prune cut short. Each one is small, but a supervisor
//! restarting a crashing job in a loop would pile them up without end. So every start, once
//! it has claimed its generation (no older process can complete a checkpoint after that), lists
//! `ckpt/` once and deletes each file that:
//! - sits in the directory of no retained checkpoint (its log entry's manifest directory), nor
//!   of a file a retained manifest lists (state chain, cold runs live or retired: retired runs
//!   are `cold::merge`'s to delete, once no retained checkpoint lists them);
//! - was written by an older generation than this process's (a newer one's files are never
//!   touched: this process would be the zombie).
//!
//! Best effort: a failure leaves garbage for the next start, never deletes a listed file.

use std::collections::HashSet;

use super::log::{CheckpointLog, LogError};
use super::manifest::parse_checkpoint_dir;
use crate::ids::Generation;

/// What a sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Files under `ckpt/` listed.
    pub listed: usize,
    /// Files deleted.
    pub deleted: usize,
}

/// Deletes the files of `ckpt/` that no retained checkpoint can read (see the module doc).
/// `generation` is this process's, claimed before the call.
pub async fn sweep(log: &CheckpointLog, generation: Generation) -> Result<Swept, LogError> {
    let files = log.files_under("ckpt").await?;
    let mut dirs: HashSet<String> = HashSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    for id in log.ids_after(None).await? {
        // A retained entry whose manifest cannot be read keeps the whole sweep from deciding:
        // nothing is deleted this time.
        let Some(c) = log.completed(id).await? else {
            continue;
        };
        dirs.insert(dir_of(&c.entry.manifest).to_string());
        let m = c.manifest;
        listed.extend(m.state_chain);
        listed.extend(m.cold_runs.into_iter().map(|r| r.path));
        listed.extend(m.cold_retired.into_iter().map(|r| r.path));
    }
    dirs.extend(listed.iter().map(|p| dir_of(p).to_string()));
    let mut swept = Swept {
        listed: files.len(),
        deleted: 0,
    };
    for f in files {
        let Some((_, written_by)) = parse_checkpoint_dir(&f) else {
            continue;
        };
        if written_by >= generation || dirs.contains(dir_of(&f)) || listed.contains(&f) {
            continue;
        }
        log.delete_file(&f).await?;
        swept.deleted += 1;
    }
    Ok(swept)
}

/// `ckpt/<id>-g<generation>` of a path under it.
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(d, _)| d)
}
