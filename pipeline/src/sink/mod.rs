//! The sink: buffers rows for `ledger_events`, `trip_balances` and `rejected_events`, writes
//! them as Parquet into each table's data location, and at a barrier closes the files and hands
//! back their `DataFile`s, serialized, for the checkpoint manifest (pre-commit).

pub mod rows;
pub use recon_common::writer;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use iceberg::spec::{DataFile, FormatVersion, StructType, serialize_data_file_to_json};
use iceberg::table::Table;

use crate::checkpoint::manifest::PendingFiles;
use crate::ids::{CheckpointId, Generation, JobId};
use recon_schemas::tables::TableName;
use rows::{BalanceRows, LedgerRows, RejectedRows};
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
    /// Balance changelog rows waiting for a batch.
    pub balances: BalanceRows,
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
            balances: BalanceRows::default(),
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

    /// Writes whatever every output has buffered, one batch each, for checkpoint `id`: the
    /// writers encode them on their tasks while the caller goes on (the barrier encodes the
    /// state delta meanwhile).
    pub async fn flush_all(&mut self, id: CheckpointId) -> Result<(), SinkError> {
        for o in Output::ALL {
            self.flush(o, id).await?;
        }
        Ok(())
    }

    /// Writes whatever an output has buffered as one batch for checkpoint `id`.
    pub async fn flush(&mut self, output: Output, id: CheckpointId) -> Result<(), SinkError> {
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
            Output::Balances if !self.balances.is_empty() => {
                self.balances.take_batch(&slot.target.arrow, cid, now)?
            }
            _ => return Ok(()),
        };
        let table = slot.target.name().to_string();
        let werr = |source| SinkError::Write {
            table: table.clone(),
            source,
        };
        let (job, generation) = (&self.job, self.generation);
        let prefix = slot.prefix.get_or_insert_with(|| {
            crate::orphans::data_file_prefix(job, generation, id, uuid::Uuid::new_v4())
        });
        slot.writer.write(prefix, batch).await.map_err(werr)
    }

    /// Flushes every buffer and closes every file of checkpoint `id`; returns the pending
    /// files per table name (empty tables included, with no files).
    pub async fn close(&mut self, id: CheckpointId) -> Result<ClosedFiles, SinkError> {
        self.close_later(id).await?.finish().await
    }

    /// Flushes every buffer and asks every writer to close checkpoint `id`'s files, without
    /// waiting for them: rows pushed after this call go into the next checkpoint's files
    /// (each writer closes on a task of its own), and [`SinkClosing::finish`] waits.
    pub async fn close_later(&mut self, id: CheckpointId) -> Result<SinkClosing, SinkError> {
        self.flush_all(id).await?;
        let mut tables = Vec::with_capacity(self.slots.len());
        for slot in self.slots.values_mut() {
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
            let closing = slot.writer.close_later().await.map_err(werr)?;
            let pending = PendingFiles {
                spec_id: slot.target.spec.spec_id(),
                schema_id: slot.target.schema.schema_id(),
                ..PendingFiles::default()
            };
            tables.push((table, partition_type, pending, closing));
        }
        Ok(SinkClosing { tables })
    }
}

/// Pending files per table name, serialized for the manifest and as `DataFile`s.
pub type ClosedFiles = BTreeMap<String, (PendingFiles, Vec<DataFile>)>;

/// One checkpoint's files being closed by every table's writer (see [`Sink::close_later`]).
pub struct SinkClosing {
    tables: Vec<(String, StructType, PendingFiles, Closing)>,
}

impl SinkClosing {
    /// Waits for every table's files (each writer closes on its own task: the wait is the
    /// slowest, not the sum) and returns them per table name, empty tables included.
    pub async fn finish(self) -> Result<ClosedFiles, SinkError> {
        let (meta, closing): (Vec<_>, Vec<_>) = self
            .tables
            .into_iter()
            .map(|(t, ty, p, c)| ((t, ty, p), c))
            .unzip();
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
