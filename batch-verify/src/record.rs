//! Writing a run into the lakehouse: one `verification_runs` row and its
//! `verification_discrepancies` rows, each table one `fast_append` stamped with the run id.
//!
//! A re-run of the same day is a new run with a new id: rows are only ever appended, so the
//! history of every proof (and every failed proof) stays queryable. Discrepancies are written
//! first; the run row is the last write, so a run row always has its discrepancies beside it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use chrono::{DateTime, NaiveDate, Utc};
use iceberg::Catalog;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use recon_common::writer::{TableTarget, TableWriter};
use recon_schemas::tables::TableName;

use crate::error::{Result, VerifyError};
use crate::report::{Discrepancy, Report};

/// Snapshot-summary key naming the run that appended the rows.
pub const PROP_RUN_ID: &str = "recon.verify.run-id";
/// ZSTD level of the written files.
const ZSTD_LEVEL: i32 = 3;
/// Target file size.
const FILE_BYTES_TARGET: usize = 64 * 1024 * 1024;

fn days_since_epoch(d: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    i32::try_from((d - epoch).num_days()).unwrap_or(i32::MAX)
}

fn micros(t: &str) -> i64 {
    DateTime::parse_from_rfc3339(t).map_or(0, |t| t.with_timezone(&Utc).timestamp_micros())
}

/// Builds a batch column by column in the schema's order; a column this code does not know is
/// an error (the table definition moved ahead of this binary).
fn assemble(
    table: &'static str,
    schema: &SchemaRef,
    mut column: impl FnMut(&str, &DataType) -> Option<ArrayRef>,
) -> Result<RecordBatch> {
    let mut arrays = Vec::new();
    for f in schema.fields() {
        arrays.push(
            column(f.name(), f.data_type()).ok_or_else(|| VerifyError::Column {
                table,
                column: "?",
                message: format!(
                    "column {} is not written by this version of batch-verify",
                    f.name()
                ),
            })?,
        );
    }
    RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| VerifyError::lakehouse("build batch", table, e))
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut b = StringBuilder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn longs(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let mut b = Int64Builder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn dates(value: i32, n: usize) -> ArrayRef {
    let mut b = Date32Builder::new();
    for _ in 0..n {
        b.append_value(value);
    }
    Arc::new(b.finish())
}

fn timestamps(value: i64, dt: &DataType) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::new().with_data_type(dt.clone());
    b.append_value(value);
    Arc::new(b.finish())
}

/// The `verification_runs` row of `report`.
pub fn run_batch(report: &Report, date: NaiveDate, schema: &SchemaRef) -> Result<RecordBatch> {
    let json = report.to_json();
    assemble(TableName::VerificationRuns.as_str(), schema, |name, dt| {
        let long = |v: u64| {
            Some(longs(std::iter::once(Some(
                i64::try_from(v).unwrap_or(i64::MAX),
            ))))
        };
        let text = |v: &str| Some(strings(std::iter::once(Some(v))));
        match name {
            "run_id" => text(&report.run_id),
            "business_date" => Some(dates(days_since_epoch(date), 1)),
            "time_zone" => text(&report.time_zone),
            "started_at" => Some(timestamps(micros(&report.started_at), dt)),
            "finished_at" => Some(timestamps(micros(&report.finished_at), dt)),
            "status" => text(report.status.as_str()),
            "truth_source" => text(&report.truth_source),
            "truth_events" => long(report.truth_events),
            "ledger_events" => long(report.ledger_events),
            "rejected_events" => long(report.rejected_events),
            "duplicates" => long(report.duplicates),
            "missing" => long(report.missing),
            "phantom" => long(report.phantom),
            "amount_mismatches" => long(report.amount_mismatches),
            "balance_mismatches" => long(report.balance_mismatches),
            "offset_gaps" => long(report.offset_gaps),
            "report_json" => text(&json),
            _ => None,
        }
    })
}

/// The `verification_discrepancies` rows of a run.
pub fn discrepancy_batch(
    run_id: &str,
    date: NaiveDate,
    rows: &[Discrepancy],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let n = rows.len();
    assemble(
        TableName::VerificationDiscrepancies.as_str(),
        schema,
        |name, _| match name {
            "run_id" => Some(strings(std::iter::repeat_n(Some(run_id), n))),
            "business_date" => Some(dates(days_since_epoch(date), n)),
            "kind" => Some(strings(rows.iter().map(|d| Some(d.kind.as_str())))),
            "event_id" => Some(strings(rows.iter().map(|d| d.event_id.as_deref()))),
            "trip_id" => Some(strings(rows.iter().map(|d| d.trip_id.as_deref()))),
            "kafka_partition" => {
                let mut b = Int32Builder::new();
                for d in rows {
                    b.append_option(d.kafka_partition);
                }
                Some(Arc::new(b.finish()) as ArrayRef)
            }
            "kafka_offset" => Some(longs(rows.iter().map(|d| d.kafka_offset))),
            "detail" => Some(strings(rows.iter().map(|d| Some(d.detail.as_str())))),
            _ => None,
        },
    )
}

/// Appends `batches` to `table` in one commit stamped with `run_id`.
pub async fn append(
    catalog: &dyn Catalog,
    table: &Table,
    run_id: &str,
    batches: Vec<RecordBatch>,
) -> Result<()> {
    let name = table.identifier().to_string();
    let target = TableTarget::new(table.clone(), ZSTD_LEVEL, FILE_BYTES_TARGET)
        .map_err(|e| VerifyError::lakehouse("prepare writer", &name, e))?;
    let mut writer = TableWriter::open(&target, format!("verify-{run_id}"))
        .await
        .map_err(|e| VerifyError::lakehouse("open writer", &name, e))?;
    for b in batches {
        writer
            .write(b)
            .await
            .map_err(|e| VerifyError::lakehouse("write", &name, e))?;
    }
    let files = writer
        .close()
        .await
        .map_err(|e| VerifyError::lakehouse("close writer", &name, e))?;
    let tx = Transaction::new(table);
    let tx = tx
        .fast_append()
        .add_data_files(files)
        .set_snapshot_properties(HashMap::from([(
            PROP_RUN_ID.to_string(),
            run_id.to_string(),
        )]))
        .apply(tx)
        .map_err(|e| VerifyError::lakehouse("commit", &name, e))?;
    tx.commit(catalog)
        .await
        .map_err(|e| VerifyError::lakehouse("commit", &name, e))?;
    // iceberg-catalog-sql 0.10.1 can report success after a failed SQL COMMIT: look.
    let reloaded = catalog
        .load_table(table.identifier())
        .await
        .map_err(|e| VerifyError::lakehouse("load_table", &name, e))?;
    let landed = reloaded.metadata().snapshots().any(|s| {
        s.summary()
            .additional_properties
            .get(PROP_RUN_ID)
            .map(String::as_str)
            == Some(run_id)
    });
    if !landed {
        return Err(VerifyError::lakehouse(
            "commit",
            &name,
            format!(
                "the catalog acknowledged run {run_id} but the table has no snapshot of it; re-run"
            ),
        ));
    }
    Ok(())
}

/// Schema of a table as its writers need it.
pub fn arrow_of(table: &Table) -> Result<SchemaRef> {
    iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
        .map(Arc::new)
        .map_err(|e| VerifyError::lakehouse("arrow schema", table.identifier(), e))
}

/// Appends the run's rows: discrepancies first, the run row last.
pub async fn record_run(
    catalog: &dyn Catalog,
    cfg: &recon_common::config::Config,
    report: &Report,
    opts: &crate::options::Options,
) -> Result<()> {
    recon_common::lakehouse::ensure_tables(catalog, &cfg.catalog.namespace)
        .await
        .map_err(|e| VerifyError::lakehouse("ensure_tables", &cfg.catalog.namespace, e))?;
    let date = opts.day.date;
    if !report.discrepancies.is_empty() {
        let table = crate::run::load(catalog, cfg, TableName::VerificationDiscrepancies).await?;
        let schema = arrow_of(&table)?;
        let batches = report
            .discrepancies
            .chunks(8192)
            .map(|rows| discrepancy_batch(&report.run_id, date, rows, &schema))
            .collect::<Result<Vec<_>>>()?;
        append(catalog, &table, &report.run_id, batches).await?;
    }
    let table = crate::run::load(catalog, cfg, TableName::VerificationRuns).await?;
    let schema = arrow_of(&table)?;
    let batch = run_batch(report, date, &schema)?;
    append(catalog, &table, &report.run_id, vec![batch]).await
}
