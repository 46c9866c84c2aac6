//! `[sink]` (Parquet writers) and `[state]` (per-trip state).

use serde::{Deserialize, Serialize};

/// `[sink]`: Parquet writers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// Rows buffered per table before an Arrow batch goes to the Parquet writer.
    pub batch_rows: usize,
    /// Target size of a data file; larger files roll over.
    pub file_size_bytes_target: usize,
    /// ZSTD level of Parquet pages (1 is as small as 3 and faster on this data).
    pub zstd_level: i32,
}

/// `[state]`: per-trip state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// Largest accepted payload; larger records are dead-lettered.
    pub payload_bytes_max: usize,
    /// A `BALANCED` trip leaves memory for the cold tier once its last event is this many
    /// milliseconds of event time old; 0 = settled trips stay. Default: one day.
    #[serde(default = "settled_default")]
    pub evict_settled_after_ms: u64,
    /// Any trip leaves memory once its last event is this many milliseconds of event time
    /// old; 0 = idle trips stay. Default: seven days.
    #[serde(default = "idle_default")]
    pub evict_idle_after_ms: u64,
    /// The late horizon, in milliseconds of event time; 0 = none. A record whose `occurred_at`
    /// is older than this behind the newest event accepted, or whose trip had no event for
    /// this long (a closed trip), is dead-lettered as `beyond_horizon`: never summed, never
    /// dropped. Closed trips leave memory and their event ids are forgotten, which bounds the
    /// id index to the horizon.
    #[serde(default)]
    pub late_horizon_ms: u64,
    /// Trips looked at per barrier for eviction (a round-robin scan; above the trips in memory,
    /// every barrier looks at every trip).
    #[serde(default = "scan_default")]
    pub evict_scan_per_barrier: usize,
    /// Local working copy of the cold tier's runs (read by lookups; the checkpoint store holds
    /// the durable copy). Empty: `<temp dir>/recon-cold/<job_id>`.
    #[serde(default)]
    pub cold_dir: String,
    /// Runs are merged while the result stays under this size.
    #[serde(default = "merge_default")]
    pub cold_merge_bytes_max: u64,
}

fn settled_default() -> u64 {
    86_400_000
}

fn idle_default() -> u64 {
    7 * 86_400_000
}

fn scan_default() -> usize {
    2_000_000
}

fn merge_default() -> u64 {
    256 << 20
}

impl Default for RawSink {
    fn default() -> Self {
        RawSink {
            batch_rows: 8192,
            file_size_bytes_target: 128 * 1024 * 1024,
            zstd_level: 1,
        }
    }
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            payload_bytes_max: 64 * 1024,
            evict_settled_after_ms: settled_default(),
            evict_idle_after_ms: idle_default(),
            late_horizon_ms: 0,
            evict_scan_per_barrier: scan_default(),
            cold_dir: String::new(),
            cold_merge_bytes_max: merge_default(),
        }
    }
}
