//! Parquet writers into one Iceberg table, opened per checkpoint and closed at its barrier.
//!
//! File names are `<job>-g<generation>-c<checkpoint>-<random>-NNNNN.parquet`: unique per
//! attempt, so a restarted attempt can never overwrite a file an earlier attempt may have
//! committed (apache/iceberg#7890), and orphans are recognisable by name.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{DataFile, DataFileFormat, PartitionSpecRef, SchemaRef as IcebergSchemaRef};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

type Builder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

struct Partitioned {
    splitter: RecordBatchPartitionSplitter,
    writer: FanoutWriter<Builder>,
}

enum Inner {
    Partitioned(Box<Partitioned>),
    Unpartitioned(
        Box<
            DataFileWriter<
                ParquetWriterBuilder,
                DefaultLocationGenerator,
                DefaultFileNameGenerator,
            >,
        >,
    ),
}

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS_MAX: usize = 65_536;

/// What the writers of one table need to know, loaded once per process.
#[derive(Clone)]
pub struct TableTarget {
    /// The table as loaded at start (schema, spec, location, FileIO).
    pub table: Table,
    /// Arrow schema with Iceberg field ids.
    pub arrow: SchemaRef,
    /// Current Iceberg schema.
    pub schema: IcebergSchemaRef,
    /// Default partition spec.
    pub spec: PartitionSpecRef,
    /// Parquet properties (ZSTD level set explicitly: parquet-rs defaults to uncompressed).
    pub props: WriterProperties,
    /// Target file size.
    pub file_size_bytes_target: usize,
}

impl TableTarget {
    /// Prepares writers for `table` with ZSTD at `zstd_level`.
    pub fn new(
        table: Table,
        zstd_level: i32,
        file_size_bytes_target: usize,
    ) -> iceberg::Result<TableTarget> {
        let schema = table.metadata().current_schema().clone();
        let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
        let spec = table.metadata().default_partition_spec().clone();
        let level = ZstdLevel::try_new(zstd_level).map_err(|e| {
            iceberg::Error::new(iceberg::ErrorKind::DataInvalid, format!("zstd level: {e}"))
        })?;
        // Row groups of 64k rows: encoding happens while rows arrive, so closing a file at the
        // barrier only encodes the last partial group (the default 1M rows left it all to close).
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX))
            .build();
        Ok(TableTarget {
            table,
            arrow,
            schema,
            spec,
            props,
            file_size_bytes_target,
        })
    }

    /// Name of the table.
    pub fn name(&self) -> &str {
        self.table.identifier().name()
    }
}

/// An open writer for one table and one checkpoint attempt.
pub struct TableWriter {
    inner: Inner,
    rows: u64,
}

impl TableWriter {
    /// Opens writers whose files are named with `file_prefix` (must be unique per attempt).
    pub async fn open(target: &TableTarget, file_prefix: String) -> iceberg::Result<TableWriter> {
        let location = DefaultLocationGenerator::new(target.table.metadata())?;
        let names = DefaultFileNameGenerator::new(file_prefix, None, DataFileFormat::Parquet);
        let parquet = ParquetWriterBuilder::new(target.props.clone(), target.schema.clone());
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            target.file_size_bytes_target,
            target.table.file_io().clone(),
            location,
            names,
        );
        let builder = DataFileWriterBuilder::new(rolling);
        let inner = if target.spec.is_unpartitioned() {
            Inner::Unpartitioned(Box::new(builder.build(None).await?))
        } else {
            Inner::Partitioned(Box::new(Partitioned {
                splitter: RecordBatchPartitionSplitter::try_new_with_computed_values(
                    target.schema.clone(),
                    target.spec.clone(),
                )?,
                writer: FanoutWriter::new(builder),
            }))
        };
        Ok(TableWriter { inner, rows: 0 })
    }

    /// Writes one batch (split by partition where the table is partitioned).
    pub async fn write(&mut self, batch: RecordBatch) -> iceberg::Result<()> {
        self.rows += batch.num_rows() as u64;
        match &mut self.inner {
            Inner::Unpartitioned(w) => w.write(batch).await,
            Inner::Partitioned(p) => {
                for (key, part) in p.splitter.split(&batch)? {
                    p.writer.write(key, part).await?;
                }
                Ok(())
            }
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes every file: the returned `DataFile`s are pre-committed, not yet visible.
    pub async fn close(self) -> iceberg::Result<Vec<DataFile>> {
        match self.inner {
            Inner::Unpartitioned(mut w) => w.close().await,
            Inner::Partitioned(p) => p.writer.close().await,
        }
    }
}

/// What the writer task is asked to do.
enum Cmd {
    /// Write a batch into the files of the attempt named by `prefix` (opened on first use);
    /// the permit (back-pressure) is released once it is written.
    Write {
        prefix: String,
        batch: RecordBatch,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// Close the open files and answer with their `DataFile`s (or the first error since open).
    Close {
        reply: tokio::sync::oneshot::Sender<iceberg::Result<Vec<DataFile>>>,
    },
}

/// Batches queued to a writer task before the job waits (back-pressure bound). A barrier's
/// last batch and close request do not wait: at most one more batch per checkpoint.
pub const WRITER_QUEUE_BATCHES_MAX: usize = 4;

/// A [`TableWriter`] on its own task, so Parquet encoding runs beside decoding and state
/// updates instead of after them. A write error is kept and reported at the next `close`: the
/// checkpoint then fails, which is the only place a write error can be acted on safely.
/// A clone talks to the same task.
#[derive(Clone)]
pub struct BackgroundWriter {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
    /// One permit per batch queued by [`BackgroundWriter::write`].
    queued: std::sync::Arc<tokio::sync::Semaphore>,
    table: String,
}

impl BackgroundWriter {
    /// Spawns the writer task for `target`.
    pub fn spawn(target: TableTarget) -> BackgroundWriter {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let table = target.name().to_string();
        tokio::spawn(async move {
            let mut open: Option<TableWriter> = None;
            let mut failed: Option<iceberg::Error> = None;
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Cmd::Write {
                        prefix,
                        batch,
                        permit,
                    } => {
                        let _permit = permit;
                        if failed.is_some() {
                            continue;
                        }
                        if open.is_none() {
                            match TableWriter::open(&target, prefix).await {
                                Ok(w) => open = Some(w),
                                Err(e) => {
                                    failed = Some(e);
                                    continue;
                                }
                            }
                        }
                        if let Some(w) = open.as_mut()
                            && let Err(e) = w.write(batch).await
                        {
                            failed = Some(e);
                        }
                    }
                    Cmd::Close { reply } => match (failed.take(), open.take()) {
                        (Some(e), _) => {
                            let _ = reply.send(Err(e));
                        }
                        // The files close on a task of their own: the next checkpoint's
                        // batches open new files meanwhile (an asynchronous barrier).
                        (None, Some(w)) => {
                            tokio::spawn(async move {
                                let _ = reply.send(w.close().await);
                            });
                        }
                        (None, None) => {
                            let _ = reply.send(Ok(Vec::new()));
                        }
                    },
                }
            }
        });
        BackgroundWriter {
            tx,
            queued: std::sync::Arc::new(tokio::sync::Semaphore::new(WRITER_QUEUE_BATCHES_MAX)),
            table,
        }
    }

    fn gone(&self) -> iceberg::Error {
        iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            format!("the writer task of {} stopped", self.table),
        )
    }

    /// Queues a batch (waits while [`WRITER_QUEUE_BATCHES_MAX`] are queued).
    pub async fn write(&self, prefix: &str, batch: RecordBatch) -> iceberg::Result<()> {
        let permit = self
            .queued
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.gone())?;
        self.send(prefix, batch, Some(permit))
    }

    /// Queues a barrier's last batch without waiting for the queue (it is followed by a close).
    pub fn write_now(&self, prefix: &str, batch: RecordBatch) -> iceberg::Result<()> {
        self.send(prefix, batch, None)
    }

    fn send(
        &self,
        prefix: &str,
        batch: RecordBatch,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> iceberg::Result<()> {
        self.tx
            .send(Cmd::Write {
                prefix: prefix.to_string(),
                batch,
                permit,
            })
            .map_err(|_| self.gone())
    }

    /// Closes the files written since the last close.
    pub async fn close(&self) -> iceberg::Result<Vec<DataFile>> {
        self.close_later()?.files().await
    }

    /// Asks for the files written since the last close to be closed and returns at once:
    /// batches written after this call go into new files, and [`Closing::files`] waits for
    /// the closed ones.
    pub fn close_later(&self) -> iceberg::Result<Closing> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Cmd::Close { reply })
            .map_err(|_| self.gone())?;
        Ok(Closing {
            rx,
            table: self.table.clone(),
        })
    }
}

/// Files of one table being closed (see [`BackgroundWriter::close_later`]).
pub struct Closing {
    rx: tokio::sync::oneshot::Receiver<iceberg::Result<Vec<DataFile>>>,
    table: String,
}

impl Closing {
    /// The closed files' `DataFile`s (pre-committed, not yet visible), or the first error
    /// since they were opened.
    pub async fn files(self) -> iceberg::Result<Vec<DataFile>> {
        let table = self.table;
        self.rx.await.map_err(|_| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("the writer task of {table} stopped while closing its files"),
            )
        })?
    }
}
