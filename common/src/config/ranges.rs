//! The allowed range of every numeric key, checked when the configuration is resolved.
//!
//! One table ([`numeric_keys`]) holds each key's value, bounds and the reason for them, so the
//! check, its message and its test cannot drift apart. Bounds keep values where the code is
//! known to work: an unchecked `poll_batch_records_max` of 2^63 made the consumer thread panic
//! (capacity overflow) and a huge `queue_batches_max` aborted the process (tokio's semaphore
//! refuses more than `usize::MAX >> 3` permits), an `interval_ms` of `i64::MAX` was accepted and
//! never checkpointed. The upper bounds are generous (10x to 1000x the defaults) rather than
//! tight: they exist to refuse typos and overflows, not to second-guess tuning.

use super::{ConfigError, ORPHAN_AGE_MIN, RawConfig};

/// One day in milliseconds.
const DAY_MS: i128 = 24 * 60 * 60 * 1000;
/// One mebibyte.
const MIB: i128 = 1 << 20;

/// Numeric pool properties the SQL catalog reads from `[catalog.properties]`:
/// `(name, min, max, why)`.
pub const CATALOG_POOL_PROPERTIES: &[(&str, i128, i128, &str)] = &[
    (
        "pool.max-connections",
        1,
        100,
        "connections of the catalog pool; the job makes a few calls at a time",
    ),
    (
        "pool.idle-timeout",
        1,
        86_400,
        "seconds an idle catalog connection is kept",
    ),
];

/// A numeric key: its dotted name, its value, its inclusive bounds and why they are so.
#[derive(Clone, Copy, Debug)]
pub struct NumericKey {
    /// Dotted key, e.g. `source.poll_batch_records_max`.
    pub key: &'static str,
    /// Value in the configuration (every integer type fits in `i128`).
    pub value: i128,
    /// Smallest accepted value.
    pub min: i128,
    /// Largest accepted value.
    pub max: i128,
    /// Why the bounds are what they are (ends the error message).
    pub why: &'static str,
}

/// Every numeric key of `raw` with its bounds.
pub fn numeric_keys(raw: &RawConfig) -> Vec<NumericKey> {
    let k = |key, value: i128, min, max, why| NumericKey {
        key,
        value,
        min,
        max,
        why,
    };
    let (s, cp, c) = (&raw.source, &raw.checkpoint, &raw.commit);
    let (m, a) = (&raw.maintenance, &raw.alerts);
    vec![
        k(
            "source.poll_batch_records_max",
            s.poll_batch_records_max as i128,
            1,
            65_536,
            "one batch is allocated at this size and a barrier waits behind it; larger batches amortise nothing more",
        ),
        k(
            "source.queue_batches_max",
            s.queue_batches_max as i128,
            1,
            1_024,
            "the queue holds up to queue_batches_max x poll_batch_records_max records in memory",
        ),
        k(
            "source.stall_timeout_ms",
            s.stall_timeout_ms as i128,
            10_000,
            86_400_000,
            "at least 10 s (a broker restart or a rebalance of leaders is not a stall); at most a day",
        ),
        k(
            "checkpoint.interval_ms",
            cp.interval_ms as i128,
            10,
            3_600_000,
            "at least 10 ms (use 10000 in production); at most one hour, the work a crash replays",
        ),
        k(
            "checkpoint.full_state_every",
            cp.full_state_every as i128,
            1,
            10_000,
            "recovery reads about this many delta files after the last full state (more while a background fold is running)",
        ),
        k(
            "checkpoint.keep_last",
            cp.keep_last as i128,
            0,
            10_000,
            "every kept checkpoint is a log entry that recovery and `maintain` read",
        ),
        k(
            "commit.every_checkpoints",
            c.every_checkpoints as i128,
            1,
            10_000,
            "uncommitted checkpoints hold pending files and delay what readers see",
        ),
        k(
            "commit.pending_bytes_max",
            c.pending_bytes_max as i128,
            1,
            1 << 40,
            "at least 1 byte; at most 1 TiB of data files waiting for one commit",
        ),
        k(
            "commit.interval_ms_max",
            c.interval_ms_max as i128,
            10,
            DAY_MS,
            "at most one day between commits, so the table never lags further",
        ),
        k(
            "commit.attempts_max",
            c.attempts_max as i128,
            1,
            100,
            "each attempt may wait commit.timeout_ms; beyond 100 a stuck catalog holds the job for hours",
        ),
        k(
            "commit.timeout_ms",
            c.timeout_ms as i128,
            100,
            600_000,
            "one catalog call; at most 10 minutes before its outcome counts as unknown",
        ),
        k(
            "sink.batch_rows",
            raw.sink.batch_rows as i128,
            1,
            1 << 20,
            "rows buffered per table before an Arrow batch is written",
        ),
        k(
            "sink.file_size_bytes_target",
            raw.sink.file_size_bytes_target as i128,
            MIB,
            16 << 30,
            "data files between 1 MiB (smaller ones slow every reader) and 16 GiB",
        ),
        k(
            "sink.zstd_level",
            raw.sink.zstd_level as i128,
            1,
            22,
            "the levels ZSTD defines",
        ),
        k(
            "state.payload_bytes_max",
            raw.state.payload_bytes_max as i128,
            64,
            16 * MIB,
            "a money event is a few hundred bytes; records are held in memory (Kafka's default limit is 1 MiB)",
        ),
        k(
            "state.evict_settled_after_ms",
            raw.state.evict_settled_after_ms as i128,
            0,
            3650 * DAY_MS,
            "0 (off) to ten years of event time",
        ),
        k(
            "state.evict_idle_after_ms",
            raw.state.evict_idle_after_ms as i128,
            0,
            3650 * DAY_MS,
            "0 (off) to ten years of event time",
        ),
        k(
            "state.late_horizon_ms",
            raw.state.late_horizon_ms as i128,
            0,
            3650 * DAY_MS,
            "0 (off) to ten years of event time",
        ),
        k(
            "state.evict_scan_per_barrier",
            raw.state.evict_scan_per_barrier as i128,
            1,
            100_000_000,
            "a scan of up to 100 million slots per barrier",
        ),
        k(
            "state.cold_merge_bytes_max",
            raw.state.cold_merge_bytes_max as i128,
            MIB,
            64 << 30,
            "runs between 1 MiB and 64 GiB (a merge reads both runs' trip keys into memory)",
        ),
        k(
            "maintenance.expire_older_than_ms",
            m.expire_older_than_ms as i128,
            0,
            3650 * DAY_MS,
            "at most ten years",
        ),
        k(
            "fleet.tasks",
            raw.fleet.tasks as i128,
            0,
            4_096,
            "0 is one process; each task has its own checkpoint log and consumer, and K is fixed at creation",
        ),
        k(
            "fleet.session_timeout_ms",
            raw.fleet.session_timeout_ms as i128,
            3_000,
            300_000,
            "how long a silent worker keeps its tasks; the broker bounds it too",
        ),
        k(
            "fleet.commit_interval_ms",
            raw.fleet.commit_interval_ms as i128,
            0,
            3_600_000,
            "0 follows checkpoint.interval_ms; at most an hour",
        ),
        k(
            "maintenance.retain_last",
            m.retain_last as i128,
            1,
            10_000,
            "at least 1: the current snapshot",
        ),
        k(
            "maintenance.orphan_older_than_ms",
            m.orphan_older_than_ms as i128,
            ORPHAN_AGE_MIN.as_millis() as i128,
            3650 * DAY_MS,
            "at least one hour: a younger unreferenced file may be one a writer is about to commit; use 259200000 (3 days)",
        ),
        k(
            "alerts.partitions",
            a.partitions as i128,
            1,
            10_000,
            "partitions of the alerts topic when the job creates it",
        ),
        k(
            "alerts.transaction_timeout_ms",
            a.transaction_timeout_ms as i128,
            1_000,
            900_000,
            "brokers refuse more than transaction.max.timeout.ms (15 minutes by default)",
        ),
        k(
            "alerts.call_timeout_ms",
            a.call_timeout_ms as i128,
            100,
            600_000,
            "one transactional call; at most 10 minutes",
        ),
        k(
            "current_balances.batch_rows",
            raw.current_balances.batch_rows as i128,
            1,
            100_000,
            "rows per COPY chunk, buffered as text",
        ),
    ]
}

/// Refuses the first numeric key outside its range, naming the key, the value, the range, the
/// default and why.
pub fn check(raw: &RawConfig) -> Result<(), ConfigError> {
    let defaults = numeric_keys(&RawConfig::default());
    for (n, d) in numeric_keys(raw).iter().zip(&defaults) {
        if !(n.min..=n.max).contains(&n.value) {
            return Err(ConfigError(format!(
                "{} = {} is outside {}..={} ({}); the default is {}",
                n.key, n.value, n.min, n.max, n.why, d.value
            )));
        }
    }
    // The SQL catalog parses these with `unwrap()`: a bad value would panic at open.
    for (name, min, max, why) in CATALOG_POOL_PROPERTIES {
        let Some(v) = raw.catalog.properties.get(*name) else {
            continue;
        };
        match v.trim().parse::<i128>() {
            Ok(n) if (*min..=*max).contains(&n) && v.trim() == n.to_string() => {}
            _ => {
                return Err(ConfigError(format!(
                    "catalog.properties.\"{name}\" = {v:?} is not a whole number within {min}..={max} ({why})"
                )));
            }
        }
    }
    if let Some(v) = raw.catalog.properties.get("pool.test-before-acquire")
        && v.parse::<bool>().is_err()
    {
        return Err(ConfigError(format!(
            "catalog.properties.\"pool.test-before-acquire\" = {v:?} must be true or false"
        )));
    }
    for p in &raw.source.partitions {
        if *p < 0 {
            return Err(ConfigError(format!(
                "source.partitions holds {p}; Kafka partition numbers start at 0"
            )));
        }
    }
    Ok(())
}
