//! Reading the day from the lakehouse: partition-filtered Iceberg scans of `ledger_events`,
//! `rejected_events` and `trip_balances`, turned into [`crate::row`] rows.
//!
//! The ledger scans carry a filter on the partition source column (`occurred_at`) or on trip
//! ids, the balance scan one whose file statistics prune (`last_occurred_at`), so a day's run
//! reads the day's files, not the table; `rejected_events` is read whole (a dead letter's day is
//! in its payload, not in when it was rejected). Rows are handed to a callback batch by batch:
//! nothing here holds more than one Arrow batch.

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::Datum;
use iceberg::table::Table;
use uuid::Uuid;

use crate::error::{Result, VerifyError};
use crate::report::{Discrepancy, Findings, Kind};
use crate::row::{BalanceRow, EventRow, Position, extra_digest, type_code_of};
use recon_schemas::tables::TableName;

/// Rows per Arrow batch asked of the reader.
const BATCH_ROWS: usize = 16 * 1024;

/// `occurred_at` (or another timestamp column) within `[from, to)`.
pub fn time_range(column: &str, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Predicate {
    let lower = Reference::new(column)
        .greater_than_or_equal_to(Datum::timestamptz_micros(from.timestamp_micros()));
    match to {
        Some(to) => lower.and(
            Reference::new(column).less_than(Datum::timestamptz_micros(to.timestamp_micros())),
        ),
        None => lower,
    }
}

/// `trip_id IN trips`.
pub fn trips_filter<'a>(trips: impl IntoIterator<Item = &'a String>) -> Predicate {
    Reference::new("trip_id").is_in(trips.into_iter().map(|t| Datum::string(t.as_str())))
}

/// Streams the rows of `table` matching `filter`, `columns` projected, batch by batch.
pub async fn scan(
    table: &Table,
    columns: &[&str],
    filter: Predicate,
    mut f: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let name = table.identifier().to_string();
    if table.metadata().current_snapshot().is_none() {
        return Ok(());
    }
    let scan = table
        .scan()
        .select(columns.iter().copied())
        .with_filter(filter)
        .with_batch_size(Some(BATCH_ROWS))
        .build()
        .map_err(|e| VerifyError::lakehouse("scan", &name, e))?;
    let mut stream = scan
        .to_arrow()
        .await
        .map_err(|e| VerifyError::lakehouse("scan", &name, e))?;
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(|e| VerifyError::lakehouse("scan", &name, e))?
    {
        f(&batch)?;
    }
    Ok(())
}

/// Typed column access with errors that name the table and column.
pub struct Columns<'a> {
    batch: &'a RecordBatch,
    table: &'static str,
}

impl<'a> Columns<'a> {
    /// Wraps a batch of `table`.
    pub fn new(batch: &'a RecordBatch, table: &'static str) -> Columns<'a> {
        Columns { batch, table }
    }

    fn col(&self, name: &'static str) -> Result<&'a ArrayRef> {
        self.batch.column_by_name(name).ok_or(VerifyError::Column {
            table: self.table,
            column: name,
            message: "absent from the scan".into(),
        })
    }

    fn wrong(&self, name: &'static str, dt: &DataType) -> VerifyError {
        VerifyError::Column {
            table: self.table,
            column: name,
            message: format!("unexpected Arrow type {dt}"),
        }
    }

    /// A string column, `None` for nulls.
    pub fn strings(&self, name: &'static str) -> Result<Vec<Option<&'a str>>> {
        let a = self.col(name)?;
        let s = a
            .as_string_opt::<i32>()
            .ok_or_else(|| self.wrong(name, a.data_type()))?;
        Ok((0..s.len())
            .map(|i| s.is_valid(i).then(|| s.value(i)))
            .collect())
    }

    /// An `int` column (nulls read as `None`).
    pub fn ints(&self, name: &'static str) -> Result<Vec<Option<i32>>> {
        let a = self.col(name)?;
        let p = a
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| self.wrong(name, a.data_type()))?;
        Ok((0..p.len())
            .map(|i| p.is_valid(i).then(|| p.value(i)))
            .collect())
    }

    /// A `date` column.
    pub fn dates(&self, name: &'static str) -> Result<Vec<Option<chrono::NaiveDate>>> {
        let a = self.col(name)?;
        let p = a
            .as_primitive_opt::<arrow_array::types::Date32Type>()
            .ok_or_else(|| self.wrong(name, a.data_type()))?;
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        Ok((0..p.len())
            .map(|i| {
                p.is_valid(i)
                    .then(|| {
                        epoch.checked_add_signed(chrono::Duration::days(i64::from(p.value(i))))
                    })
                    .flatten()
            })
            .collect())
    }

    /// A `long` column.
    pub fn longs(&self, name: &'static str) -> Result<Vec<Option<i64>>> {
        let a = self.col(name)?;
        let p = a
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| self.wrong(name, a.data_type()))?;
        Ok((0..p.len())
            .map(|i| p.is_valid(i).then(|| p.value(i)))
            .collect())
    }

    /// A `timestamptz` column, microseconds.
    pub fn micros(&self, name: &'static str) -> Result<Vec<Option<i64>>> {
        let a = self.col(name)?;
        let p = a
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| self.wrong(name, a.data_type()))?;
        Ok((0..p.len())
            .map(|i| p.is_valid(i).then(|| p.value(i)))
            .collect())
    }

    /// A `decimal(18, 3)` column, unscaled.
    pub fn money(&self, name: &'static str) -> Result<Vec<Option<i64>>> {
        let a = self.col(name)?;
        let p = a
            .as_primitive_opt::<Decimal128Type>()
            .ok_or_else(|| self.wrong(name, a.data_type()))?;
        if p.scale() != recon_schemas::money::SCALE as i8 {
            return Err(self.wrong(name, a.data_type()));
        }
        Ok((0..p.len())
            .map(|i| {
                p.is_valid(i)
                    .then(|| i64::try_from(p.value(i)).ok())
                    .flatten()
            })
            .collect())
    }

    /// A `binary` column (iceberg reads it as LargeBinary).
    pub fn binaries(&self, name: &'static str) -> Result<Vec<Option<&'a [u8]>>> {
        let a = self.col(name)?;
        if let Some(b) = a.as_binary_opt::<i64>() {
            return Ok((0..b.len())
                .map(|i| b.is_valid(i).then(|| b.value(i)))
                .collect());
        }
        if let Some(b) = a.as_binary_opt::<i32>() {
            return Ok((0..b.len())
                .map(|i| b.is_valid(i).then(|| b.value(i)))
                .collect());
        }
        Err(self.wrong(name, a.data_type()))
    }

    /// A required value: a null is a schema violation.
    pub fn required<T>(&self, name: &'static str, v: Option<T>) -> Result<T> {
        v.ok_or(VerifyError::Column {
            table: self.table,
            column: name,
            message: "null in a required column".into(),
        })
    }
}

/// One `ledger_events` row.
#[derive(Clone, Debug)]
pub struct LedgerRow {
    /// The event.
    pub row: EventRow,
    /// Its Kafka position.
    pub position: Position,
    /// Its checkpoint.
    pub checkpoint_id: i64,
}

/// Columns read from `ledger_events`.
pub const LEDGER_COLUMNS: [&str; 14] = [
    "event_id",
    "event_type",
    "trip_id",
    "amount",
    "currency",
    "occurred_at",
    "rider_id",
    "driver_id",
    "payment_id",
    "payout_id",
    "schema_version",
    "kafka_partition",
    "kafka_offset",
    "checkpoint_id",
];

/// Streams the `ledger_events` rows matching `filter` (a day: [`time_range`] on `occurred_at`;
/// some trips: [`trips_filter`]). A row whose `event_id` is not a UUID cannot be matched with
/// anything: it is a phantom, recorded in `findings`.
pub async fn scan_ledger(
    table: &Table,
    filter: Predicate,
    findings: &mut Findings,
    mut f: impl FnMut(LedgerRow) -> Result<()>,
) -> Result<()> {
    scan(table, &LEDGER_COLUMNS, filter, |b| {
        let c = Columns::new(b, TableName::LedgerEvents.as_str());
        let (ids, types, trips) = (
            c.strings("event_id")?,
            c.strings("event_type")?,
            c.strings("trip_id")?,
        );
        let (amounts, currencies, times) = (
            c.money("amount")?,
            c.strings("currency")?,
            c.micros("occurred_at")?,
        );
        let opt = [
            c.strings("rider_id")?,
            c.strings("driver_id")?,
            c.strings("payment_id")?,
            c.strings("payout_id")?,
        ];
        let (versions, parts, offsets, checkpoints) = (
            c.ints("schema_version")?,
            c.ints("kafka_partition")?,
            c.longs("kafka_offset")?,
            c.longs("checkpoint_id")?,
        );
        for i in 0..b.num_rows() {
            let position = Position::new(
                c.required("kafka_partition", parts[i])?,
                c.required("kafka_offset", offsets[i])?,
            );
            let id_text = c.required("event_id", ids[i])?;
            let Ok(event_id) = Uuid::parse_str(id_text) else {
                findings.add(
                    Discrepancy::new(
                        Kind::Phantom,
                        format!("ledger row with event_id {id_text:?}, not a UUID"),
                    )
                    .event(id_text)
                    .at(position.partition, position.offset),
                );
                continue;
            };
            let row = EventRow {
                event_id,
                event_type: type_code_of(c.required("event_type", types[i])?),
                trip_id: c.required("trip_id", trips[i])?.to_string(),
                amount: c.required("amount", amounts[i])?,
                currency: c.required("currency", currencies[i])?.to_string(),
                occurred_at_us: c.required("occurred_at", times[i])?,
                extra: extra_digest(
                    [opt[0][i], opt[1][i], opt[2][i], opt[3][i]],
                    c.required("schema_version", versions[i])?,
                ),
            };
            f(LedgerRow {
                row,
                position,
                checkpoint_id: c.required("checkpoint_id", checkpoints[i])?,
            })?;
        }
        Ok(())
    })
    .await
}

/// One `rejected_events` row, with the raw bytes the checks date and digest.
#[derive(Clone, Debug)]
pub struct LakeReject<'a> {
    /// Kafka position.
    pub position: Position,
    /// Raw key.
    pub key: Option<&'a [u8]>,
    /// Raw payload.
    pub payload: &'a [u8],
    /// Reason code.
    pub reason: &'a str,
    /// Salvaged event id.
    pub event_id: Option<&'a str>,
    /// Salvaged trip id.
    pub trip_id: Option<&'a str>,
    /// The checkpoint that wrote it.
    pub checkpoint_id: i64,
}

/// Streams every `rejected_events` row (dead letters are rare: the whole table, bounded by the
/// caller).
pub async fn scan_rejected(
    table: &Table,
    mut f: impl FnMut(LakeReject<'_>) -> Result<()>,
) -> Result<()> {
    let columns = [
        "kafka_partition",
        "kafka_offset",
        "kafka_key",
        "payload",
        "reason",
        "event_id",
        "trip_id",
        "checkpoint_id",
    ];
    scan(table, &columns, Predicate::AlwaysTrue, |b| {
        let c = Columns::new(b, TableName::RejectedEvents.as_str());
        let (parts, offsets) = (c.ints("kafka_partition")?, c.longs("kafka_offset")?);
        let (keys, payloads, reasons) = (
            c.binaries("kafka_key")?,
            c.binaries("payload")?,
            c.strings("reason")?,
        );
        let (ids, trips) = (c.strings("event_id")?, c.strings("trip_id")?);
        let checkpoints = c.longs("checkpoint_id")?;
        for i in 0..b.num_rows() {
            f(LakeReject {
                position: Position::new(
                    c.required("kafka_partition", parts[i])?,
                    c.required("kafka_offset", offsets[i])?,
                ),
                key: keys[i],
                payload: c.required("payload", payloads[i])?,
                reason: c.required("reason", reasons[i])?,
                event_id: ids[i],
                trip_id: trips[i],
                checkpoint_id: c.required("checkpoint_id", checkpoints[i])?,
            })?;
        }
        Ok(())
    })
    .await
}

/// Streams `trip_balances` rows with `last_occurred_at >= from`: a superset of the latest row
/// of every trip with an event at or after `from` (a trip's `last_occurred_at` never decreases).
pub async fn scan_balances(
    table: &Table,
    from: DateTime<Utc>,
    mut f: impl FnMut(BalanceRow) -> Result<()>,
) -> Result<()> {
    let columns = [
        "trip_id",
        "currency",
        "charged",
        "collected",
        "refunded",
        "paid_out",
        "fees",
        "adjusted",
        "status",
        "discrepancy_reason",
        "event_count",
        "last_occurred_at",
        "checkpoint_id",
    ];
    scan(
        table,
        &columns,
        time_range("last_occurred_at", from, None),
        |b| {
            let c = Columns::new(b, TableName::TripBalances.as_str());
            let (trips, currencies, statuses, reasons) = (
                c.strings("trip_id")?,
                c.strings("currency")?,
                c.strings("status")?,
                c.strings("discrepancy_reason")?,
            );
            let sums = [
                c.money("charged")?,
                c.money("collected")?,
                c.money("refunded")?,
                c.money("paid_out")?,
                c.money("fees")?,
                c.money("adjusted")?,
            ];
            let (counts, lasts, checkpoints) = (
                c.ints("event_count")?,
                c.micros("last_occurred_at")?,
                c.longs("checkpoint_id")?,
            );
            for i in 0..b.num_rows() {
                let mut s = [0i64; 6];
                for (k, col) in sums.iter().enumerate() {
                    s[k] = c.required(crate::row::SUM_NAMES[k], col[i])?;
                }
                f(BalanceRow {
                    trip_id: c.required("trip_id", trips[i])?.to_string(),
                    currency: c.required("currency", currencies[i])?.to_string(),
                    sums: s,
                    status: c.required("status", statuses[i])?.to_string(),
                    reason: reasons[i].map(str::to_string),
                    event_count: c.required("event_count", counts[i])?,
                    last_occurred_at_us: c.required("last_occurred_at", lasts[i])?,
                    checkpoint_id: c.required("checkpoint_id", checkpoints[i])?,
                })?;
            }
            Ok(())
        },
    )
    .await
}
