//! Iceberg table definitions (namespace [`NAMESPACE`], format v2), derived from the JSON files
//! in `schemas/tables/`.
//!
//! Each file holds one table in Iceberg's own JSON: `schema` is exactly the schema object of
//! Iceberg table metadata (field ids, `required`, `doc`, `identifier-field-ids`) and
//! `partition-spec` is a partition spec object. The files are compiled in with `include_str!`
//! and deserialized into `iceberg::spec` types, so nothing here re-declares a column; tests
//! check the files against the event envelope and the [`col`] constants.
//!
//! Partitioning:
//! - `ledger_events`: `day(occurred_at)`: batch-verify reads one business day, analysts filter by
//!   business time, and a day holds many events so files stay large.
//! - `rejected_events`: `day(rejected_at)`: dead letters are inspected and counted by day.
//! - `trip_balances`: unpartitioned. It is a changelog whose readers ("latest row per trip") scan
//!   it whole, and each checkpoint changes trips spread over every bucket: `bucket(trip_id)`
//!   would turn one file per checkpoint into one per bucket per checkpoint (small files) for no
//!   pruning benefit. Compaction can sort by `trip_id` later.
//! - `verification_runs`, `verification_discrepancies`: unpartitioned; one run per day, small.
//!
//! Money columns are `decimal(18, 3)`; see [`crate::money`].

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use iceberg::TableCreation;
use iceberg::spec::{FormatVersion, Schema, UnboundPartitionSpec};
use serde::Deserialize;

/// The Iceberg namespace of every recon table.
pub const NAMESPACE: &str = "recon";

/// A recon table: the one place each table's name is spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableName {
    /// `ledger_events`: every accepted event exactly once.
    LedgerEvents,
    /// `trip_balances`: the changelog of per-trip balances.
    TripBalances,
    /// `rejected_events`: the dead letters.
    RejectedEvents,
    /// `verification_runs`: one row per batch-verify run.
    VerificationRuns,
    /// `verification_discrepancies`: what each run found.
    VerificationDiscrepancies,
}

impl TableName {
    /// Every table, in [`FILES`] order.
    pub const ALL: [TableName; 5] = [
        TableName::LedgerEvents,
        TableName::TripBalances,
        TableName::RejectedEvents,
        TableName::VerificationRuns,
        TableName::VerificationDiscrepancies,
    ];

    /// The streaming job's output tables, in commit order.
    pub const OUTPUTS: [TableName; 3] = [
        TableName::LedgerEvents,
        TableName::TripBalances,
        TableName::RejectedEvents,
    ];

    /// The table's name in the catalog.
    pub const fn as_str(self) -> &'static str {
        match self {
            TableName::LedgerEvents => "ledger_events",
            TableName::TripBalances => "trip_balances",
            TableName::RejectedEvents => "rejected_events",
            TableName::VerificationRuns => "verification_runs",
            TableName::VerificationDiscrepancies => "verification_discrepancies",
        }
    }

    /// The table's definition.
    pub fn def(self) -> TableDef {
        load(self.as_str())
    }
}

impl AsRef<str> for TableName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The table files, by table name, as compiled in.
pub const FILES: [(&str, &str); 5] = [
    (
        TableName::LedgerEvents.as_str(),
        include_str!("../tables/ledger_events.json"),
    ),
    (
        TableName::TripBalances.as_str(),
        include_str!("../tables/trip_balances.json"),
    ),
    (
        TableName::RejectedEvents.as_str(),
        include_str!("../tables/rejected_events.json"),
    ),
    (
        TableName::VerificationRuns.as_str(),
        include_str!("../tables/verification_runs.json"),
    ),
    (
        TableName::VerificationDiscrepancies.as_str(),
        include_str!("../tables/verification_discrepancies.json"),
    ),
];

/// One table: its name, schema (with field ids) and partition spec.
#[derive(Clone, Debug)]
pub struct TableDef {
    /// Table name inside [`NAMESPACE`].
    pub name: &'static str,
    /// What the table holds, from the file's `doc`.
    pub doc: String,
    /// Iceberg schema with field ids.
    pub schema: Schema,
    /// Partition spec (no fields = unpartitioned).
    pub partition: UnboundPartitionSpec,
    /// Table properties set at creation (e.g. Parquet compression for engines that honour it).
    pub properties: HashMap<String, String>,
}

impl TableDef {
    /// A [`TableCreation`] for this table (format v2, catalog-chosen location).
    pub fn creation(&self) -> TableCreation {
        TableCreation::builder()
            .name(self.name.to_string())
            .schema(self.schema.clone())
            .partition_spec(self.partition.clone())
            .properties(self.properties.clone())
            .format_version(FormatVersion::V2)
            .build()
    }
}

/// The on-disk form of a table file.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TableFile {
    name: String,
    doc: String,
    format_version: u8,
    schema: Schema,
    partition_spec: UnboundPartitionSpec,
    #[serde(default)]
    properties: HashMap<String, String>,
}

/// Parses a compiled-in table file. Panics on a malformed file: the files are part of the
/// binary and a unit test parses every one, so a panic here means the build skipped its tests.
fn load(name: &'static str) -> TableDef {
    let (_, text) = FILES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no table file for {name}"));
    let file: TableFile = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("schemas/tables/{name}.json is invalid: {e}"));
    assert_eq!(
        file.name, name,
        "schemas/tables/{name}.json names another table"
    );
    assert_eq!(file.format_version, 2, "recon tables are format v2");
    TableDef {
        name,
        doc: file.doc,
        schema: file.schema,
        partition: file.partition_spec,
        properties: file.properties,
    }
}

/// Column names used by writers and readers. A test checks that these are exactly the columns
/// of the table files.
pub mod col {
    /// `event_id`.
    pub const EVENT_ID: &str = "event_id";
    /// `event_type`.
    pub const EVENT_TYPE: &str = "event_type";
    /// `trip_id`.
    pub const TRIP_ID: &str = "trip_id";
    /// `amount`.
    pub const AMOUNT: &str = "amount";
    /// `currency`.
    pub const CURRENCY: &str = "currency";
    /// `occurred_at`.
    pub const OCCURRED_AT: &str = "occurred_at";
    /// `rider_id`.
    pub const RIDER_ID: &str = "rider_id";
    /// `driver_id`.
    pub const DRIVER_ID: &str = "driver_id";
    /// `payment_id`.
    pub const PAYMENT_ID: &str = "payment_id";
    /// `payout_id`.
    pub const PAYOUT_ID: &str = "payout_id";
    /// `schema_version`.
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// `kafka_partition`.
    pub const KAFKA_PARTITION: &str = "kafka_partition";
    /// `kafka_offset`.
    pub const KAFKA_OFFSET: &str = "kafka_offset";
    /// `kafka_key`.
    pub const KAFKA_KEY: &str = "kafka_key";
    /// `checkpoint_id`.
    pub const CHECKPOINT_ID: &str = "checkpoint_id";
    /// `ingested_at`.
    pub const INGESTED_AT: &str = "ingested_at";
    /// `charged`.
    pub const CHARGED: &str = "charged";
    /// `collected`.
    pub const COLLECTED: &str = "collected";
    /// `refunded`.
    pub const REFUNDED: &str = "refunded";
    /// `paid_out`.
    pub const PAID_OUT: &str = "paid_out";
    /// `fees`.
    pub const FEES: &str = "fees";
    /// `adjusted`.
    pub const ADJUSTED: &str = "adjusted";
    /// `rider_balance`.
    pub const RIDER_BALANCE: &str = "rider_balance";
    /// `settlement_balance`.
    pub const SETTLEMENT_BALANCE: &str = "settlement_balance";
    /// `status`.
    pub const STATUS: &str = "status";
    /// `discrepancy_reason`.
    pub const DISCREPANCY_REASON: &str = "discrepancy_reason";
    /// `event_count`.
    pub const EVENT_COUNT: &str = "event_count";
    /// `last_occurred_at`.
    pub const LAST_OCCURRED_AT: &str = "last_occurred_at";
    /// `updated_at`.
    pub const UPDATED_AT: &str = "updated_at";
    /// `payload`.
    pub const PAYLOAD: &str = "payload";
    /// `reason`.
    pub const REASON: &str = "reason";
    /// `error`.
    pub const ERROR: &str = "error";
    /// `rejected_at`.
    pub const REJECTED_AT: &str = "rejected_at";
    /// `run_id`.
    pub const RUN_ID: &str = "run_id";
    /// `business_date`.
    pub const BUSINESS_DATE: &str = "business_date";
    /// `time_zone`.
    pub const TIME_ZONE: &str = "time_zone";
    /// `started_at`.
    pub const STARTED_AT: &str = "started_at";
    /// `finished_at`.
    pub const FINISHED_AT: &str = "finished_at";
    /// `truth_source`.
    pub const TRUTH_SOURCE: &str = "truth_source";
    /// `truth_events`.
    pub const TRUTH_EVENTS: &str = "truth_events";
    /// `ledger_events` (count column of `verification_runs`).
    pub const LEDGER_EVENTS: &str = "ledger_events";
    /// `rejected_events` (count column of `verification_runs`).
    pub const REJECTED_EVENTS: &str = "rejected_events";
    /// `duplicates`.
    pub const DUPLICATES: &str = "duplicates";
    /// `missing`.
    pub const MISSING: &str = "missing";
    /// `phantom`.
    pub const PHANTOM: &str = "phantom";
    /// `amount_mismatches`.
    pub const AMOUNT_MISMATCHES: &str = "amount_mismatches";
    /// `balance_mismatches`.
    pub const BALANCE_MISMATCHES: &str = "balance_mismatches";
    /// `offset_gaps`.
    pub const OFFSET_GAPS: &str = "offset_gaps";
    /// `report_json`.
    pub const REPORT_JSON: &str = "report_json";
    /// `kind`.
    pub const KIND: &str = "kind";
    /// `detail`.
    pub const DETAIL: &str = "detail";

    /// Every constant above.
    pub const ALL: [&str; 51] = [
        EVENT_ID,
        EVENT_TYPE,
        TRIP_ID,
        AMOUNT,
        CURRENCY,
        OCCURRED_AT,
        RIDER_ID,
        DRIVER_ID,
        PAYMENT_ID,
        PAYOUT_ID,
        SCHEMA_VERSION,
        KAFKA_PARTITION,
        KAFKA_OFFSET,
        KAFKA_KEY,
        CHECKPOINT_ID,
        INGESTED_AT,
        CHARGED,
        COLLECTED,
        REFUNDED,
        PAID_OUT,
        FEES,
        ADJUSTED,
        RIDER_BALANCE,
        SETTLEMENT_BALANCE,
        STATUS,
        DISCREPANCY_REASON,
        EVENT_COUNT,
        LAST_OCCURRED_AT,
        UPDATED_AT,
        PAYLOAD,
        REASON,
        ERROR,
        REJECTED_AT,
        RUN_ID,
        BUSINESS_DATE,
        TIME_ZONE,
        STARTED_AT,
        FINISHED_AT,
        TRUTH_SOURCE,
        TRUTH_EVENTS,
        LEDGER_EVENTS,
        REJECTED_EVENTS,
        DUPLICATES,
        MISSING,
        PHANTOM,
        AMOUNT_MISMATCHES,
        BALANCE_MISMATCHES,
        OFFSET_GAPS,
        REPORT_JSON,
        KIND,
        DETAIL,
    ];
}

/// `ledger_events`: every accepted event exactly once. Partitioned by `day(occurred_at)`;
/// identifier field `event_id`.
pub fn ledger_events() -> TableDef {
    TableName::LedgerEvents.def()
}

/// `trip_balances`: changelog of per-trip balances, one row per trip per checkpoint in which it
/// changed. Unpartitioned.
pub fn trip_balances() -> TableDef {
    TableName::TripBalances.def()
}

/// `rejected_events`: the dead-letter table. Partitioned by `day(rejected_at)`.
pub fn rejected_events() -> TableDef {
    TableName::RejectedEvents.def()
}

/// `verification_runs`: one row per batch-verify run. Unpartitioned.
pub fn verification_runs() -> TableDef {
    TableName::VerificationRuns.def()
}

/// `verification_discrepancies`: each discrepancy a run found. Unpartitioned.
pub fn verification_discrepancies() -> TableDef {
    TableName::VerificationDiscrepancies.def()
}

/// Every recon table, in [`FILES`] order.
pub fn all() -> Vec<TableDef> {
    FILES.iter().map(|(name, _)| load(name)).collect()
}

/// The Arrow schema of `def` as iceberg-rust's writers expect it: field ids in each field's
/// metadata, `timestamptz` as `Timestamp(Microsecond, "+00:00")`, money as `Decimal128(18, 3)`.
pub fn arrow_schema(def: &TableDef) -> SchemaRef {
    let schema = iceberg::arrow::schema_to_arrow_schema(&def.schema).unwrap_or_else(|e| {
        panic!(
            "table {} has no Arrow form: {e}; tables::tests covers every table",
            def.name
        )
    });
    Arc::new(schema)
}

#[cfg(test)]
#[path = "tables_tests.rs"]
mod tests;
