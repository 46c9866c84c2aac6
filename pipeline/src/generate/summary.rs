//! What a run did: counts by kind, rate achieved, and the truth checksum, as a JSON line and as
//! a human summary.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use recon_schemas::decode::RejectReason;
use recon_schemas::event::EventType;
use serde::Serialize;

use super::kafka::DeliveryStats;
use super::plan::{IntendedStatuses, Record, RecordKind};
use super::truth::TruthSummary;
use super::truth::postgres::WriteStats;

/// Counts records by kind as they are published.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    records: u64,
    events_by_type: [u64; EventType::ALL.len()],
    duplicates: u64,
    conflicts: u64,
    poison_by_class: [u64; RejectReason::ALL.len()],
}

impl Tally {
    /// Counts one record.
    pub fn observe(&mut self, record: &Record) {
        self.records += 1;
        match &record.kind {
            RecordKind::Valid(e) => {
                let i = EventType::ALL
                    .iter()
                    .position(|t| *t == e.event_type)
                    .unwrap_or(0);
                self.events_by_type[i] += 1;
            }
            RecordKind::Duplicate(_) => self.duplicates += 1,
            RecordKind::ConflictingDuplicate(_) => self.conflicts += 1,
            RecordKind::Poison(r) => {
                let i = RejectReason::ALL.iter().position(|x| x == r).unwrap_or(0);
                self.poison_by_class[i] += 1;
            }
        }
    }

    /// Records counted.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// The outcome of `generate`.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateSummary {
    /// Seed of the run.
    pub seed: u64,
    /// Topic published to.
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Records handed to Kafka (and acknowledged: the run fails otherwise).
    pub records: u64,
    /// Distinct valid events, by `event_type`.
    pub events_by_type: BTreeMap<&'static str, u64>,
    /// Exact re-sends injected.
    pub duplicates: u64,
    /// Conflicting second versions injected.
    pub conflicting_duplicates: u64,
    /// Bad records injected, by rejection class.
    pub poison_by_class: BTreeMap<&'static str, u64>,
    /// Trips started, by the status they are planned to fold to.
    pub trips: IntendedStatuses,
    /// Broker acknowledgements and bytes.
    pub delivery: DeliveryStats,
    /// Wall-clock seconds from first record to last acknowledgement.
    pub elapsed_s: f64,
    /// Records per second achieved over `elapsed_s`.
    pub records_per_s: f64,
    /// The truth's counts and checksum.
    pub truth: TruthSummary,
    /// Rows written to PostgreSQL, when `--truth-postgres` was given.
    pub postgres: Option<WriteStats>,
}

impl GenerateSummary {
    /// Assembles the summary of a finished run.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seed: u64,
        topic: &str,
        partitions: i32,
        tally: &Tally,
        trips: IntendedStatuses,
        delivery: DeliveryStats,
        elapsed: Duration,
        truth: TruthSummary,
        postgres: Option<WriteStats>,
    ) -> GenerateSummary {
        let secs = elapsed.as_secs_f64();
        GenerateSummary {
            seed,
            topic: topic.to_owned(),
            partitions,
            records: tally.records,
            events_by_type: EventType::ALL
                .iter()
                .map(|t| t.as_str())
                .zip(tally.events_by_type)
                .collect(),
            duplicates: tally.duplicates,
            conflicting_duplicates: tally.conflicts,
            poison_by_class: RejectReason::ALL
                .iter()
                .map(|r| r.as_str())
                .zip(tally.poison_by_class)
                .filter(|(_, n)| *n > 0)
                .collect(),
            trips,
            delivery,
            elapsed_s: secs,
            records_per_s: if secs > 0.0 {
                tally.records as f64 / secs
            } else {
                0.0
            },
            truth,
            postgres,
        }
    }

    /// The summary as one JSON line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for GenerateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "published {} records to {} ({} partitions) in {:.1} s: {:.0} records/s, {:.1} MiB",
            self.records,
            self.topic,
            self.partitions,
            self.elapsed_s,
            self.records_per_s,
            self.delivery.bytes as f64 / (1024.0 * 1024.0)
        )?;
        let events: u64 = self.events_by_type.values().sum();
        write!(f, "  events      {events:>10}:")?;
        for (t, n) in &self.events_by_type {
            write!(f, " {t}={n}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  duplicates  {:>10} exact, {} conflicting",
            self.duplicates, self.conflicting_duplicates
        )?;
        let poison: u64 = self.poison_by_class.values().sum();
        write!(f, "  poison      {poison:>10}:")?;
        for (c, n) in &self.poison_by_class {
            write!(f, " {c}={n}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  trips       {:>10} planned: {} balanced, {} open, {} discrepancy",
            self.trips.balanced + self.trips.open + self.trips.discrepancy,
            self.trips.balanced,
            self.trips.open,
            self.trips.discrepancy
        )?;
        write!(
            f,
            "  truth       run {}: {} events, {} rejects, sha256 {}",
            self.truth.run_id, self.truth.events, self.truth.rejects, self.truth.checksum_sha256
        )?;
        if let Some(pg) = &self.postgres {
            write!(
                f,
                "\n  postgres    {} events inserted ({} already present), {} rejects inserted",
                pg.events_inserted, pg.events_present, pg.rejects_inserted
            )?;
        }
        Ok(())
    }
}
