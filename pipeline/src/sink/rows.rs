//! Row buffers: one per table, turned into Arrow batches in the table's own column order.
//!
//! Columns are matched by name against the Arrow schema derived from `recon-schemas`, so a
//! reordered or evolved table definition cannot silently shift values into the wrong column;
//! a column this code does not know is an error.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Decimal128Builder, Int32Builder, Int64Builder, LargeBinaryBuilder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use chrono::{DateTime, Utc};
use recon_schemas::balance::TripBalance;
use recon_schemas::event::Event;
use recon_schemas::money;
use recon_schemas::tables::TableName;
use rust_decimal::Decimal;

/// Error building a batch: the table definition and this code disagree.
#[derive(Debug, thiserror::Error)]
#[error("table {table}: {message}")]
pub struct RowsError {
    /// Table.
    pub table: &'static str,
    /// What disagrees.
    pub message: String,
}

fn money_unscaled(table: &'static str, v: Decimal) -> Result<i128, RowsError> {
    money::to_unscaled(v).ok_or_else(|| RowsError {
        table,
        message: format!(
            "amount {v} does not fit decimal({}, {})",
            money::PRECISION,
            money::SCALE
        ),
    })
}

fn micros(ts: DateTime<Utc>) -> i64 {
    ts.timestamp_micros()
}

/// Assembles a batch from named columns in the schema's order.
fn assemble(
    table: &'static str,
    schema: &SchemaRef,
    mut column: impl FnMut(&str, &DataType) -> Option<ArrayRef>,
) -> Result<RecordBatch, RowsError> {
    let mut arrays = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let a = column(f.name(), f.data_type()).ok_or_else(|| RowsError {
            table,
            message: format!(
                "column {:?} is not written by this version of recon",
                f.name()
            ),
        })?;
        arrays.push(a);
    }
    RecordBatch::try_new(Arc::clone(schema), arrays).map_err(|e| RowsError {
        table,
        message: e.to_string(),
    })
}

fn ts_array(values: &[i64], dt: &DataType) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::with_capacity(values.len()).with_data_type(dt.clone());
    b.append_slice(values);
    Arc::new(b.finish())
}

fn dec_array(values: &[i128], dt: &DataType) -> ArrayRef {
    let mut b = Decimal128Builder::with_capacity(values.len()).with_data_type(dt.clone());
    b.append_slice(values);
    Arc::new(b.finish())
}

fn str_array<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

/// Binary column in whichever width the schema asks for (iceberg maps `binary` to LargeBinary).
fn bin_array<'a>(values: impl Iterator<Item = Option<&'a [u8]>>, dt: &DataType) -> ArrayRef {
    if *dt == DataType::LargeBinary {
        let mut b = LargeBinaryBuilder::new();
        for v in values {
            b.append_option(v);
        }
        Arc::new(b.finish())
    } else {
        let mut b = BinaryBuilder::new();
        for v in values {
            b.append_option(v);
        }
        Arc::new(b.finish())
    }
}

fn i32_array(values: &[i32]) -> ArrayRef {
    let mut b = Int32Builder::with_capacity(values.len());
    b.append_slice(values);
    Arc::new(b.finish())
}

fn i64_array(values: &[i64]) -> ArrayRef {
    let mut b = Int64Builder::with_capacity(values.len());
    b.append_slice(values);
    Arc::new(b.finish())
}

/// Buffered `ledger_events` rows.
#[derive(Default)]
pub struct LedgerRows {
    events: Vec<Event>,
    amounts: Vec<i128>,
    occurred: Vec<i64>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
}

impl LedgerRows {
    const TABLE: &'static str = TableName::LedgerEvents.as_str();

    /// Adds one accepted event read at `partition`/`offset`.
    pub fn push(&mut self, ev: Event, partition: i32, offset: i64) -> Result<(), RowsError> {
        self.amounts.push(money_unscaled(Self::TABLE, ev.amount)?);
        self.occurred.push(micros(ev.occurred_at));
        self.partitions.push(partition);
        self.offsets.push(offset);
        self.events.push(ev);
        Ok(())
    }

    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Drains the buffer into a batch stamped with `checkpoint_id` and `ingested_at`.
    pub fn take_batch(
        &mut self,
        schema: &SchemaRef,
        checkpoint_id: i64,
        ingested_at: DateTime<Utc>,
    ) -> Result<RecordBatch, RowsError> {
        let rows = std::mem::take(self);
        let n = rows.events.len();
        let ev = &rows.events;
        let ids: Vec<String> = ev
            .iter()
            .map(|e| e.event_id.hyphenated().to_string())
            .collect();
        assemble(Self::TABLE, schema, |name, dt| {
            Some(match name {
                "event_id" => str_array(ids.iter().map(|s| Some(s.as_str()))),
                "event_type" => str_array(ev.iter().map(|e| Some(e.event_type.as_str()))),
                "trip_id" => str_array(ev.iter().map(|e| Some(e.trip_id.as_str()))),
                "amount" => dec_array(&rows.amounts, dt),
                "currency" => str_array(ev.iter().map(|e| Some(e.currency.code()))),
                "occurred_at" => ts_array(&rows.occurred, dt),
                "rider_id" => str_array(ev.iter().map(|e| e.rider_id.as_deref())),
                "driver_id" => str_array(ev.iter().map(|e| e.driver_id.as_deref())),
                "payment_id" => str_array(ev.iter().map(|e| e.payment_id.as_deref())),
                "payout_id" => str_array(ev.iter().map(|e| e.payout_id.as_deref())),
                "schema_version" => {
                    i32_array(&ev.iter().map(|e| e.schema_version).collect::<Vec<_>>())
                }
                "kafka_partition" => i32_array(&rows.partitions),
                "kafka_offset" => i64_array(&rows.offsets),
                "checkpoint_id" => i64_array(&vec![checkpoint_id; n]),
                "ingested_at" => ts_array(&vec![micros(ingested_at); n], dt),
                _ => return None,
            })
        })
    }
}

/// One dead-lettered record.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Kafka key bytes, when the record had one.
    pub key: Option<Vec<u8>>,
    /// The payload exactly as read (empty for a tombstone).
    pub payload: Vec<u8>,
    /// Stable reason code.
    pub reason: &'static str,
    /// Human message naming field and rule.
    pub error: String,
    /// Event id, when it could be read.
    pub event_id: Option<String>,
    /// Trip id, when it could be read.
    pub trip_id: Option<String>,
}

/// Buffered `rejected_events` rows.
#[derive(Default)]
pub struct RejectedRows {
    rows: Vec<Rejected>,
}

impl RejectedRows {
    const TABLE: &'static str = TableName::RejectedEvents.as_str();

    /// Adds one record.
    pub fn push(&mut self, r: Rejected) {
        self.rows.push(r);
    }

    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Drains the buffer into a batch.
    pub fn take_batch(
        &mut self,
        schema: &SchemaRef,
        checkpoint_id: i64,
        rejected_at: DateTime<Utc>,
    ) -> Result<RecordBatch, RowsError> {
        let rows = std::mem::take(&mut self.rows);
        let n = rows.len();
        assemble(Self::TABLE, schema, |name, dt| {
            Some(match name {
                "kafka_partition" => {
                    i32_array(&rows.iter().map(|r| r.partition).collect::<Vec<_>>())
                }
                "kafka_offset" => i64_array(&rows.iter().map(|r| r.offset).collect::<Vec<_>>()),
                "kafka_key" => bin_array(rows.iter().map(|r| r.key.as_deref()), dt),
                "payload" => bin_array(rows.iter().map(|r| Some(r.payload.as_slice())), dt),
                "reason" => str_array(rows.iter().map(|r| Some(r.reason))),
                "error" => str_array(rows.iter().map(|r| Some(r.error.as_str()))),
                "event_id" => str_array(rows.iter().map(|r| r.event_id.as_deref())),
                "trip_id" => str_array(rows.iter().map(|r| r.trip_id.as_deref())),
                "checkpoint_id" => i64_array(&vec![checkpoint_id; n]),
                "rejected_at" => ts_array(&vec![micros(rejected_at); n], dt),
                _ => return None,
            })
        })
    }
}

/// Buffered `trip_balances` changelog rows.
#[derive(Default)]
pub struct BalanceRows {
    rows: Vec<(String, TripBalance, i32)>,
}

impl BalanceRows {
    const TABLE: &'static str = TableName::TripBalances.as_str();

    /// Adds the balance of `trip_id` as of this checkpoint.
    pub fn push(&mut self, trip_id: String, balance: TripBalance, partition: i32) {
        self.rows.push((trip_id, balance, partition));
    }

    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Drains the buffer into a batch.
    pub fn take_batch(
        &mut self,
        schema: &SchemaRef,
        checkpoint_id: i64,
        updated_at: DateTime<Utc>,
    ) -> Result<RecordBatch, RowsError> {
        let rows = std::mem::take(&mut self.rows);
        let n = rows.len();
        let money = |f: &dyn Fn(&TripBalance) -> Decimal| -> Result<Vec<i128>, RowsError> {
            rows.iter()
                .map(|(_, b, _)| money_unscaled(Self::TABLE, f(b)))
                .collect()
        };
        let charged = money(&|b| b.charged)?;
        let collected = money(&|b| b.collected)?;
        let refunded = money(&|b| b.refunded)?;
        let paid_out = money(&|b| b.paid_out)?;
        let fees = money(&|b| b.fees)?;
        let adjusted = money(&|b| b.adjusted)?;
        let rider = money(&|b| b.rider_balance())?;
        let settlement = money(&|b| b.settlement_balance())?;
        let statuses: Vec<_> = rows.iter().map(|(_, b, _)| b.status()).collect();
        let last: Vec<i64> = rows
            .iter()
            .map(|(_, b, _)| b.last_occurred_at.map(micros).unwrap_or(micros(updated_at)))
            .collect();
        assemble(Self::TABLE, schema, |name, dt| {
            Some(match name {
                "trip_id" => str_array(rows.iter().map(|(t, _, _)| Some(t.as_str()))),
                "currency" => str_array(rows.iter().map(|(_, b, _)| Some(b.currency.code()))),
                "charged" => dec_array(&charged, dt),
                "collected" => dec_array(&collected, dt),
                "refunded" => dec_array(&refunded, dt),
                "paid_out" => dec_array(&paid_out, dt),
                "fees" => dec_array(&fees, dt),
                "adjusted" => dec_array(&adjusted, dt),
                "rider_balance" => dec_array(&rider, dt),
                "settlement_balance" => dec_array(&settlement, dt),
                "status" => str_array(statuses.iter().map(|s| Some(s.as_str()))),
                "discrepancy_reason" => {
                    str_array(statuses.iter().map(|s| s.reason().map(|r| r.as_str())))
                }
                "event_count" => i32_array(
                    &rows
                        .iter()
                        .map(|(_, b, _)| b.events as i32)
                        .collect::<Vec<_>>(),
                ),
                "last_occurred_at" => ts_array(&last, dt),
                "kafka_partition" => {
                    i32_array(&rows.iter().map(|(_, _, p)| *p).collect::<Vec<_>>())
                }
                "checkpoint_id" => i64_array(&vec![checkpoint_id; n]),
                "updated_at" => ts_array(&vec![micros(updated_at); n], dt),
                _ => return None,
            })
        })
    }
}
