//! `[maintenance]` (defaults of `recon-pipeline maintain`) and `[observability]` (metrics and
//! health endpoints).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One day in milliseconds.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The shortest orphan age the configuration accepts: a younger unreferenced file may be one a
/// running writer is about to commit. (`maintain --force-min-age` goes below it, once.)
pub const ORPHAN_AGE_MIN: Duration = Duration::from_secs(3600);

/// `[maintenance]`: defaults of `recon-pipeline maintain` (snapshot expiry, orphan files).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    /// Snapshots older than this are expired (the job's newest marker is always kept).
    pub expire_older_than_ms: u64,
    /// Newest snapshots of each table kept whatever their age; at least 1.
    pub retain_last: usize,
    /// Unreferenced files are deleted only when older than this; at least one hour.
    pub orphan_older_than_ms: u64,
}

/// `[observability]`: metrics and health endpoints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    /// Address serving `/metrics`, `/healthz`, `/readyz` (e.g. `0.0.0.0:9464`); empty = off.
    pub listen: String,
}

impl Default for RawMaintenance {
    fn default() -> Self {
        RawMaintenance {
            expire_older_than_ms: 7 * DAY_MS,
            retain_last: 1,
            orphan_older_than_ms: 3 * DAY_MS,
        }
    }
}
