//! Clock skew between this host and the table: Iceberg refuses a snapshot whose timestamp is
//! more than one minute before the table's last update (iceberg 0.10.1
//! `TableMetadataBuilder::add_snapshot`: "Invalid snapshot timestamp ...: before last updated
//! timestamp ..."). A table last written by a clock running ahead therefore fails every commit
//! of a host with a correct clock, with a message that names neither clock. [`ClockSkew`] names
//! both, the skew, and what to do.
//!
//! Class: operator needed (exit 3) when the wait is longer than [`SKEW_WAIT_TRANSIENT`], else
//! transient (exit 1). The refusal does resolve with time, but only if *this* host's clock is
//! the right one; which one is wrong is for an operator to find out, and a supervisor
//! restarting the job for hours would hide it. A short wait (a few minutes of drift) is most
//! likely a clock being corrected, and a restart settles it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use iceberg::spec::TableMetadata;

/// Iceberg's tolerance (`ONE_MINUTE_MS`): a snapshot up to this much older than the table's last
/// update is accepted.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(60);

/// Longest wait still treated as transient (see the module doc).
pub const SKEW_WAIT_TRANSIENT: Duration = Duration::from_secs(300);

/// The table's newest timestamp is ahead of this host's clock by more than Iceberg tolerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSkew {
    /// The table's newest timestamp: `last-updated-ms`, or its newest snapshot-log entry.
    pub table_last_updated_ms: i64,
    /// This host's clock when the commit was refused (ms since the Unix epoch).
    pub host_now_ms: i64,
}

impl ClockSkew {
    /// `Some` when `metadata`'s newest timestamp is more than [`SKEW_TOLERANCE`] ahead of
    /// `host_now_ms`: every snapshot this host makes now would be refused.
    pub fn of(metadata: &TableMetadata, host_now_ms: i64) -> Option<ClockSkew> {
        let newest_snapshot = metadata
            .history()
            .last()
            .map_or(i64::MIN, |l| l.timestamp_ms);
        let table_last_updated_ms = metadata.last_updated_ms().max(newest_snapshot);
        let skew = ClockSkew {
            table_last_updated_ms,
            host_now_ms,
        };
        (skew.skew() > SKEW_TOLERANCE).then_some(skew)
    }

    /// How far the table's timestamp is ahead of this host's clock.
    pub fn skew(&self) -> Duration {
        Duration::from_millis(
            self.table_last_updated_ms
                .saturating_sub(self.host_now_ms)
                .max(0) as u64,
        )
    }

    /// How long until this host's clock is within tolerance, if it is the right one.
    pub fn wait(&self) -> Duration {
        self.skew().saturating_sub(SKEW_TOLERANCE)
    }

    /// Whether an operator must act (long wait) rather than a restart (short wait).
    pub fn operator_needed(&self) -> bool {
        self.wait() > SKEW_WAIT_TRANSIENT
    }
}

fn utc(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map_or_else(|| format!("{ms} ms"), |t| t.to_rfc3339())
}

impl std::fmt::Display for ClockSkew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
        write!(
            f,
            "clock skew: the table was last updated at {} (last-updated-ms {}), {} ahead of this host's clock ({}, \
             {} ms); Iceberg refuses a snapshot more than {} older than the table's last update, so every commit \
             fails. Check the clocks (NTP: `timedatectl`, `chronyc tracking`) of this host and of every host that \
             writes the table. If this host is right, a writer's clock ran ahead: fix it, then restart this job in \
             {} (when this host's clock reaches the table's); if this host is behind, fix its NTP and restart",
            utc(self.table_last_updated_ms),
            self.table_last_updated_ms,
            whole(self.skew()),
            utc(self.host_now_ms),
            self.host_now_ms,
            whole(SKEW_TOLERANCE),
            whole(self.wait()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Struct};
    use iceberg::{NamespaceIdent, TableIdent};

    use super::ClockSkew;
    use crate::checkpoint::commit::{CommitError, CommitRequest, Committer};
    use crate::checkpoint::simulation::memory_catalog;
    use crate::ids::{CheckpointId, Generation, JobId};

    const TWO_HOURS_MS: i64 = 2 * 3600 * 1000;

    /// A table last written by a clock 2 h ahead: the commit names both clocks and the skew
    /// (issue 13: it failed every attempt with Iceberg's "Invalid snapshot timestamp").
    #[tokio::test]
    async fn a_table_ahead_of_this_clock_names_the_clocks() {
        let catalog = memory_catalog().await;
        let ns = NamespaceIdent::new("sim".into());
        let base = catalog
            .load_table(&TableIdent::new(ns.clone(), "ledger".into()))
            .await
            .unwrap();
        // The same table, as a writer whose clock runs 2 h ahead left it.
        let mut json = serde_json::to_value(base.metadata()).unwrap();
        let ahead = chrono::Utc::now().timestamp_millis() + TWO_HOURS_MS;
        json["last-updated-ms"] = ahead.into();
        let location = "memory://sim/skewed/metadata/00001-skewed.metadata.json".to_string();
        base.file_io()
            .new_output(&location)
            .unwrap()
            .write(serde_json::to_vec(&json).unwrap().into())
            .await
            .unwrap();
        let ident = TableIdent::new(ns, "skewed".into());
        catalog.register_table(&ident, location).await.unwrap();

        let committer = Committer::new(
            catalog,
            &crate::checkpoint::log::CommitPermit::unclaimed_for_tests(
                JobId::new("j").unwrap(),
                Generation(1),
            ),
            3,
            Duration::from_secs(5),
        );
        let file = DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path("memory://sim/skewed/data/a.parquet".into())
            .file_format(DataFileFormat::Parquet)
            .partition(Struct::empty())
            .record_count(1)
            .file_size_in_bytes(100)
            .build()
            .unwrap();
        let e = committer
            .commit(&CommitRequest {
                table: ident,
                after: None,
                first: CheckpointId(1),
                through: CheckpointId(1),
                files: vec![file],
                offsets_json: "{}".into(),
                input_epoch: 0,
                through_sha256: None,
            })
            .await
            .unwrap_err();
        let text = e.to_string();
        let CommitError::ClockSkew { skew, .. } = e else {
            panic!("not a clock skew: {text}");
        };
        assert_eq!(skew.table_last_updated_ms, ahead);
        assert!(skew.skew() > Duration::from_secs(7100), "{skew:?}");
        assert!(skew.operator_needed(), "a 2 h wait needs an operator");
        for needle in [&ahead.to_string(), "this host's clock", "NTP", "1h 59m"] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }

    #[test]
    fn skew_within_tolerance_is_none_and_short_waits_are_transient() {
        let now = 1_700_000_000_000;
        let s = |ahead_ms: i64| ClockSkew {
            table_last_updated_ms: now + ahead_ms,
            host_now_ms: now,
        };
        assert_eq!(s(60_000).wait(), Duration::ZERO);
        assert!(!s(3 * 60_000).operator_needed());
        assert!(s(7 * 60_000).operator_needed());
    }
}
