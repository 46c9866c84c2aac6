//! The truth as two Parquet files: `truth_events.parquet` and `truth_rejects.parquet`.
//!
//! Amounts are `decimal(18, 3)` (the lakehouse's money type, [`recon_schemas::money`]), never
//! float; `occurred_at` is a UTC microsecond timestamp. Rows are buffered in Arrow builders and
//! written every [`ROWS_PER_BATCH`] rows, ZSTD level 1 (passed explicitly: parquet-rs would
//! otherwise write uncompressed). The run id is stored in the file's key-value metadata under
//! `recon.truth.run_id`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use arrow_array::builder::{
    BinaryBuilder, Decimal128Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use recon_schemas::event::Event;
use recon_schemas::money;

use super::RejectRow;

/// Rows buffered before a record batch is written.
pub const ROWS_PER_BATCH: usize = 65_536;

/// Arrow schema of `truth_events.parquet`.
pub fn events_schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        text("event_id", false),
        text("event_type", false),
        text("trip_id", false),
        Field::new(
            "amount",
            DataType::Decimal128(money::PRECISION as u8, money::SCALE as i8),
            false,
        ),
        text("currency", false),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        text("rider_id", true),
        text("driver_id", true),
        text("payment_id", true),
        text("payout_id", true),
        Field::new("schema_version", DataType::Int32, false),
    ]))
}

/// Arrow schema of `truth_rejects.parquet`.
pub fn rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, true),
        Field::new("trip_id", DataType::Utf8, true),
        Field::new("record_key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, false),
    ]))
}

/// Column builders of the events file.
struct EventColumns {
    seq: Int64Builder,
    event_id: StringBuilder,
    event_type: StringBuilder,
    trip_id: StringBuilder,
    amount: Decimal128Builder,
    currency: StringBuilder,
    occurred_at: TimestampMicrosecondBuilder,
    ids: [StringBuilder; 4],
    schema_version: Int32Builder,
    rows: usize,
}

impl EventColumns {
    fn new() -> anyhow::Result<EventColumns> {
        Ok(EventColumns {
            seq: Int64Builder::new(),
            event_id: StringBuilder::new(),
            event_type: StringBuilder::new(),
            trip_id: StringBuilder::new(),
            amount: Decimal128Builder::new()
                .with_precision_and_scale(money::PRECISION as u8, money::SCALE as i8)?,
            currency: StringBuilder::new(),
            occurred_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            ids: std::array::from_fn(|_| StringBuilder::new()),
            schema_version: Int32Builder::new(),
            rows: 0,
        })
    }

    fn batch(&mut self, schema: &SchemaRef) -> anyhow::Result<RecordBatch> {
        let [rider, driver, payment, payout] = &mut self.ids;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.seq.finish()),
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.trip_id.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.occurred_at.finish()),
            Arc::new(rider.finish()),
            Arc::new(driver.finish()),
            Arc::new(payment.finish()),
            Arc::new(payout.finish()),
            Arc::new(self.schema_version.finish()),
        ];
        self.rows = 0;
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// Column builders of the rejects file.
#[derive(Default)]
struct RejectColumns {
    seq: Int64Builder,
    class: StringBuilder,
    event_id: StringBuilder,
    trip_id: StringBuilder,
    key: BinaryBuilder,
    payload: BinaryBuilder,
    rows: usize,
}

impl RejectColumns {
    fn batch(&mut self, schema: &SchemaRef) -> anyhow::Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.seq.finish()),
            Arc::new(self.class.finish()),
            Arc::new(self.event_id.finish()),
            Arc::new(self.trip_id.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.payload.finish()),
        ];
        self.rows = 0;
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// Writes the truth to Parquet.
pub struct ParquetTruth {
    events_schema: SchemaRef,
    rejects_schema: SchemaRef,
    events: EventColumns,
    rejects: RejectColumns,
    events_writer: ArrowWriter<File>,
    rejects_writer: ArrowWriter<File>,
}

impl ParquetTruth {
    /// Creates `dir` if needed and opens both files (truncating old ones).
    pub fn create(dir: &Path, run_id: &str) -> anyhow::Result<ParquetTruth> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                "recon.truth.run_id".to_owned(),
                run_id.to_owned(),
            )]))
            .build();
        let open = |name: &str, schema: &SchemaRef| -> anyhow::Result<ArrowWriter<File>> {
            let path = dir.join(name);
            let file =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            Ok(ArrowWriter::try_new(
                file,
                schema.clone(),
                Some(props.clone()),
            )?)
        };
        let events_schema = events_schema();
        let rejects_schema = rejects_schema();
        Ok(ParquetTruth {
            events_writer: open("truth_events.parquet", &events_schema)?,
            rejects_writer: open("truth_rejects.parquet", &rejects_schema)?,
            events_schema,
            rejects_schema,
            events: EventColumns::new()?,
            rejects: RejectColumns::default(),
        })
    }

    /// Buffers one event row.
    pub fn event(&mut self, seq: u64, e: &Event) -> anyhow::Result<()> {
        let c = &mut self.events;
        c.seq.append_value(i64::try_from(seq)?);
        c.event_id.append_value(e.event_id.hyphenated().to_string());
        c.event_type.append_value(e.event_type.as_str());
        c.trip_id.append_value(&e.trip_id);
        let unscaled = money::to_unscaled(e.amount).ok_or_else(|| {
            anyhow!(
                "amount {} of event {} does not fit decimal(18, 3)",
                e.amount,
                e.event_id
            )
        })?;
        c.amount.append_value(unscaled);
        c.currency.append_value(e.currency.code());
        c.occurred_at.append_value(e.occurred_at.timestamp_micros());
        for (b, v) in c
            .ids
            .iter_mut()
            .zip([&e.rider_id, &e.driver_id, &e.payment_id, &e.payout_id])
        {
            b.append_option(v.as_deref());
        }
        c.schema_version.append_value(e.schema_version);
        c.rows += 1;
        if c.rows >= ROWS_PER_BATCH {
            let batch = c.batch(&self.events_schema)?;
            self.events_writer.write(&batch)?;
        }
        Ok(())
    }

    /// Buffers one reject row.
    pub fn reject(&mut self, row: &RejectRow<'_>) -> anyhow::Result<()> {
        let c = &mut self.rejects;
        c.seq.append_value(i64::try_from(row.seq)?);
        c.class.append_value(row.class);
        c.event_id
            .append_option(row.event_id.map(|id| id.hyphenated().to_string()));
        c.trip_id.append_option(row.trip_id);
        c.key.append_option(row.key);
        c.payload.append_value(row.payload);
        c.rows += 1;
        if c.rows >= ROWS_PER_BATCH {
            let batch = c.batch(&self.rejects_schema)?;
            self.rejects_writer.write(&batch)?;
        }
        Ok(())
    }

    /// Writes the buffered rows and closes both files.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if self.events.rows > 0 {
            let batch = self.events.batch(&self.events_schema)?;
            self.events_writer.write(&batch)?;
        }
        if self.rejects.rows > 0 {
            let batch = self.rejects.batch(&self.rejects_schema)?;
            self.rejects_writer.write(&batch)?;
        }
        self.events_writer
            .close()
            .context("closing truth_events.parquet")?;
        self.rejects_writer
            .close()
            .context("closing truth_rejects.parquet")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::config::TrafficConfig;
    use crate::generate::plan::{RecordKind, plan};
    use crate::generate::truth::TruthRecorder;
    use arrow_array::{Array, Decimal128Array, Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn parquet_holds_every_truth_event_with_exact_amounts() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrafficConfig {
            trips: 20_000,
            ..TrafficConfig::default()
        };
        let mut truth = TruthRecorder::new("p").with_parquet(dir.path()).unwrap();
        let mut valid = Vec::new();
        for r in plan(&cfg) {
            truth.observe(&r).unwrap();
            if let RecordKind::Valid(e) = r.kind {
                valid.push(e);
            }
        }
        let summary = truth.finish().unwrap();
        let file = File::open(dir.path().join("truth_events.parquet")).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut rows = 0;
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let amounts = batch
                .column(4)
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .unwrap();
            let seqs = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            assert!(seqs.len() == ids.len());
            for i in 0..batch.num_rows() {
                let e = &valid[rows + i];
                assert_eq!(ids.value(i), e.event_id.hyphenated().to_string());
                assert_eq!(money::from_unscaled(amounts.value(i)), Some(e.amount));
            }
            rows += batch.num_rows();
        }
        assert_eq!(rows as u64, summary.events);
        assert!(rows > ROWS_PER_BATCH, "spans several batches");
        let rejects = File::open(dir.path().join("truth_rejects.parquet")).unwrap();
        let n: usize = ParquetRecordBatchReaderBuilder::try_new(rejects)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(n as u64, summary.rejects);
    }
}
