//! The sink: buffers rows for `ledger_events`, `trip_balances` and `rejected_events`, writes
//! them as Parquet into each table's data location, and at a barrier closes the files and hands
//! back their `DataFile`s, serialized, for the checkpoint manifest (pre-commit).

pub mod rows;
pub use recon_common::writer;

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use chrono::{DateTime, Utc};
use iceberg::spec::{DataFile, FormatVersion, StructType, serialize_data_file_to_json};
use iceberg::table::Table;

use crate::checkpoint::manifest::PendingFiles;
use crate::ids::{CheckpointId, Generation, JobId};
use recon_schemas::tables::TableName;
use rows::{LedgerRows, RejectedRows};
use writer::{BackgroundWriter, Closing, TableTarget};

/// Errors of the sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing or closing a data file failed.
    #[error("writing table {table}: {source}")]
    Write {
        /// Table.
        table: String,
        /// Cause.
        #[source]
        source: iceberg::Error,
    },
    /// Rows did not fit the table definition.
    #[error(transparent)]
    Rows(#[from] rows::RowsError),
}

/// The three tables the job writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    /// `ledger_events`.
    Ledger,
    /// `trip_balances`.
    Balances,
    /// `rejected_events`.
    Rejected,
}

impl Output {
    /// All outputs, in commit order.
    pub const ALL: [Output; 3] = [Output::Ledger, Output::Balances, Output::Rejected];

    /// The table this output writes.
    pub const fn table(self) -> TableName {
        match self {
            Output::Ledger => TableName::LedgerEvents,
            Output::Balances => TableName::TripBalances,
            Output::Rejected => TableName::RejectedEvents,
        }
    }
}

struct Slot {
    target: TableTarget,
    writer: BackgroundWriter,
    /// File-name prefix of the current attempt, set by its first write.
    prefix: Option<String>,
}

/// Row buffers and open writers for the current checkpoint interval.
pub struct Sink {
    job: JobId,
    generation: Generation,
    batch_rows: usize,
    slots: BTreeMap<Output, Slot>,
    /// Accepted events waiting for a batch.
    pub ledger: LedgerRows,
    /// Dead-lettered records waiting for a batch.
    pub rejected: RejectedRows,
}

impl Sink {
    /// A sink writing to the given tables.
    pub fn new(
        job: JobId,
        generation: Generation,
        batch_rows: usize,
        targets: BTreeMap<Output, TableTarget>,
    ) -> Sink {
        let slots = targets
            .into_iter()
            .map(|(o, target)| {
                (
                    o,
                    Slot {
                        writer: BackgroundWriter::spawn(target.clone()),
                        target,
                        prefix: None,
                    },
                )
            })
            .collect();
        Sink {
            job,
            generation,
            batch_rows,
            slots,
            ledger: LedgerRows::default(),
            rejected: RejectedRows::default(),
        }
    }

    /// The loaded table behind an output.
    pub fn table(&self, output: Output) -> &Table {
        &self.slots[&output].target.table
    }

    /// Writes full buffers out as batches for checkpoint `id`.
    pub async fn flush_full(&mut self, id: CheckpointId) -> Result<(), SinkError> {
        if self.ledger.len() >= self.batch_rows {
            self.flush(Output::Ledger, id).await?;
        }
        if self.rejected.len() >= self.batch_rows {
            self.flush(Output::Rejected, id).await?;
        }
        Ok(())
    }

    /// Writes what the ledger and dead-letter buffers hold, without waiting for the writers'
    /// queues: a barrier's last batches, each followed by a close.
    fn flush_all_now(&mut self, id: CheckpointId) -> Result<(), SinkError> {
        for o in [Output::Ledger, Output::Rejected] {
            if let Some((slot, prefix, batch)) = self.take(o, id)? {
                slot.writer
                    .write_now(&prefix, batch)
                    .map_err(|source| SinkError::Write {
                        table: slot.target.name().to_string(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Writes whatever an output has buffered as one batch for checkpoint `id`.
    async fn flush(&mut self, output: Output, id: CheckpointId) -> Result<(), SinkError> {
        if let Some((slot, prefix, batch)) = self.take(output, id)? {
            slot.writer
                .write(&prefix, batch)
                .await
                .map_err(|source| SinkError::Write {
                    table: slot.target.name().to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Takes what an output has buffered as one batch for checkpoint `id`, with its slot and
    /// the attempt's file-name prefix (`None`: nothing buffered).
    fn take(
        &mut self,
        output: Output,
        id: CheckpointId,
    ) -> Result<Option<(&Slot, String, RecordBatch)>, SinkError> {
        let now: DateTime<Utc> = Utc::now();
        let slot = self
            .slots
            .get_mut(&output)
            .expect("every output has a slot");
        let cid = i64::try_from(id.0).expect("checkpoint id fits i64");
        let batch = match output {
            Output::Ledger if !self.ledger.is_empty() => {
                self.ledger.take_batch(&slot.target.arrow, cid, now)?
            }
            Output::Rejected if !self.rejected.is_empty() => {
                self.rejected.take_batch(&slot.target.arrow, cid, now)?
            }
            _ => return Ok(None),
        };
        let (job, generation) = (&self.job, self.generation);
        let prefix = slot
            .prefix
            .get_or_insert_with(|| {
                crate::orphans::data_file_prefix(job, generation, id, uuid::Uuid::new_v4())
            })
            .clone();
        Ok(Some((slot, prefix, batch)))
    }

    /// Flushes the ledger and dead-letter buffers and asks their writers to close checkpoint
    /// `id`'s files, without waiting for them or for their queues: rows pushed after this call
    /// go into the next checkpoint's files (each writer closes on a task of its own), and
    /// [`SinkClosing::finish`] waits. The balances writer gets its batch (built off the job's
    /// thread from the changed trips) and its close request from [`SinkClosing::finish`]:
    /// nothing else writes balances between two cuts.
    pub fn close_later(&mut self, id: CheckpointId) -> Result<SinkClosing, SinkError> {
        self.flush_all_now(id)?;
        let mut tables = Vec::with_capacity(self.slots.len());
        let mut deferred = None;
        for (output, slot) in self.slots.iter_mut() {
            let table = slot.target.name().to_string();
            let werr = |source| SinkError::Write {
                table: table.clone(),
                source,
            };
            slot.prefix = None;
            let partition_type = slot
                .target
                .spec
                .partition_type(&slot.target.schema)
                .map_err(werr)?;
            let pending = PendingFiles {
                spec_id: slot.target.spec.spec_id(),
                schema_id: slot.target.schema.schema_id(),
                ..PendingFiles::default()
            };
            if *output == Output::Balances {
                let (job, generation) = (&self.job, self.generation);
                deferred = Some(Deferred {
                    writer: slot.writer.clone(),
                    prefix: crate::orphans::data_file_prefix(
                        job,
                        generation,
                        id,
                        uuid::Uuid::new_v4(),
                    ),
                    meta: (table, partition_type, pending),
                });
                continue;
            }
            let closing = slot.writer.close_later().map_err(werr)?;
            tables.push((table, partition_type, pending, closing));
        }
        Ok(SinkClosing { tables, deferred })
    }

    /// The Arrow schema `trip_balances` batches are built with.
    pub fn balances_schema(&self) -> arrow_schema::SchemaRef {
        self.slots[&Output::Balances].target.arrow.clone()
    }
}

/// Pending files per table name, serialized for the manifest and as `DataFile`s.
pub type ClosedFiles = BTreeMap<String, (PendingFiles, Vec<DataFile>)>;

/// One checkpoint's files being closed by every table's writer (see [`Sink::close_later`]).
pub struct SinkClosing {
    tables: Vec<(String, StructType, PendingFiles, Closing)>,
    /// The balances writer, when its last batch comes with [`SinkClosing::finish`].
    deferred: Option<Deferred>,
}

/// A writer whose last batch and close request are sent by [`SinkClosing::finish`].
struct Deferred {
    writer: BackgroundWriter,
    prefix: String,
    meta: (String, StructType, PendingFiles),
}

impl SinkClosing {
    /// Waits for every table's files (each writer closes on its own task: the wait is the
    /// slowest, not the sum) and returns them per table name, empty tables included. A
    /// deferred writer first gets `last` (if any) and its close request.
    pub async fn finish(self, last: Option<RecordBatch>) -> Result<ClosedFiles, SinkError> {
        let (mut meta, mut closing): (Vec<_>, Vec<_>) = self
            .tables
            .into_iter()
            .map(|(t, ty, p, c)| ((t, ty, p), c))
            .unzip();
        if let Some(d) = self.deferred {
            let werr = |source| SinkError::Write {
                table: d.meta.0.clone(),
                source,
            };
            if let Some(batch) = last.filter(|b| b.num_rows() > 0) {
                d.writer.write_now(&d.prefix, batch).map_err(werr)?;
            }
            closing.push(d.writer.close_later().map_err(werr)?);
            meta.push(d.meta);
        }
        let closed = futures::future::join_all(closing.into_iter().map(Closing::files)).await;
        let mut out = BTreeMap::new();
        for ((table, partition_type, mut pending), files) in meta.into_iter().zip(closed) {
            let werr = |source| SinkError::Write {
                table: table.clone(),
                source,
            };
            let files = files.map_err(werr)?;
            for f in &files {
                pending.rows += f.record_count();
                pending.bytes += f.file_size_in_bytes();
                pending.files.push(
                    serialize_data_file_to_json(f.clone(), &partition_type, FormatVersion::V2)
                        .map_err(werr)?,
                );
            }
            out.insert(table, (pending, files));
        }
        Ok(out)
    }
}
