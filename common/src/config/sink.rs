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
        }
    }
}
