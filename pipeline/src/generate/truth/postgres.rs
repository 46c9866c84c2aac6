//! The truth in PostgreSQL: the upstream payments ledger that batch verification reads.
//!
//! Tables (created if missing):
//!
//! - `truth_runs(run_id, seed, config, status, started_at, finished_at, events, rejects,
//!   checksum_sha256)`: one row per generator run; `status` goes `running` -> `complete`.
//! - `truth_events(event_id uuid primary key, event_type, trip_id, amount numeric, currency,
//!   occurred_at timestamptz, rider_id, driver_id, payment_id, payout_id, schema_version, run_id,
//!   seq)`: every distinct event once.
//! - `truth_rejects(run_id, seq, class, event_id, trip_id, record_key bytea, payload bytea)`,
//!   primary key `(run_id, seq)`: every bad record injected.
//!
//! Rows travel as COPY text in batches of [`ROWS_PER_BATCH`] from the publishing thread to one
//! writer task over a bounded channel (so a slow database slows the generator instead of
//! filling memory), one transaction per batch. A new run COPYs straight into the tables; a
//! re-run of the same knobs (same `run_id`) goes through a session-local staging table and
//! `INSERT .. ON CONFLICT DO NOTHING`, so it is idempotent rather than an error. Event ids are
//! drawn from the seed: runs that share a truth database must use different seeds, and a
//! collision with another run fails loudly instead of being skipped.

use anyhow::{Context, anyhow};
use recon_schemas::event::Event;
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{RejectRow, TruthSummary};

/// Rows per COPY batch.
pub const ROWS_PER_BATCH: usize = 50_000;
/// Batches queued between the publishing thread and the writer task.
const BATCHES_QUEUED_MAX: usize = 4;

const EVENT_COLUMNS: &str = "event_id, event_type, trip_id, amount, currency, occurred_at, \
     rider_id, driver_id, payment_id, payout_id, schema_version, run_id, seq";
const REJECT_COLUMNS: &str = "run_id, seq, class, event_id, trip_id, record_key, payload";

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS truth_runs (
        run_id text PRIMARY KEY, seed bigint NOT NULL, config text NOT NULL,
        status text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz, events bigint, rejects bigint, checksum_sha256 text)",
    "CREATE TABLE IF NOT EXISTS truth_events (
        event_id uuid PRIMARY KEY, event_type text NOT NULL, trip_id text NOT NULL,
        amount numeric NOT NULL CHECK (amount >= 0), currency text NOT NULL,
        occurred_at timestamptz NOT NULL, rider_id text, driver_id text, payment_id text,
        payout_id text, schema_version integer NOT NULL, run_id text NOT NULL, seq bigint NOT NULL)",
    "CREATE INDEX IF NOT EXISTS truth_events_occurred_at ON truth_events (occurred_at)",
    "CREATE TABLE IF NOT EXISTS truth_rejects (
        run_id text NOT NULL, seq bigint NOT NULL, class text NOT NULL, event_id uuid,
        trip_id text, record_key bytea, payload bytea NOT NULL, PRIMARY KEY (run_id, seq))",
];

/// One batch of COPY text rows.
#[derive(Default)]
struct CopyBatch {
    events: Vec<u8>,
    rejects: Vec<u8>,
    rows: usize,
}

/// The publishing thread's side: renders rows as COPY text and hands full batches over.
pub struct PostgresTruth {
    run_id: String,
    batch: CopyBatch,
    tx: mpsc::Sender<CopyBatch>,
}

/// The writer task's side; [`PostgresWriter::finish`] waits for every batch and completes the run.
pub struct PostgresWriter {
    run_id: String,
    task: JoinHandle<anyhow::Result<(PgConnection, WriteStats)>>,
}

/// What the writer task did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Event rows inserted.
    pub events_inserted: u64,
    /// Event rows already present (a re-run of the same run).
    pub events_present: u64,
    /// Reject rows inserted.
    pub rejects_inserted: u64,
}

/// Connects, creates the tables, marks the run `running` and starts the writer task.
/// `config` is a human-readable description of the run's knobs, stored with the run.
pub async fn connect(
    url: &str,
    run_id: &str,
    seed: u64,
    config: &str,
) -> anyhow::Result<(PostgresTruth, PostgresWriter)> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connecting to the truth database (--truth-postgres)")?;
    for ddl in SCHEMA {
        sqlx::query(ddl)
            .execute(&mut conn)
            .await
            .context("creating the truth tables")?;
    }
    for (stage, table) in [
        ("truth_events_stage", "truth_events"),
        ("truth_rejects_stage", "truth_rejects"),
    ] {
        let ddl =
            format!("CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS)");
        sqlx::query(&ddl)
            .execute(&mut conn)
            .await
            .context("creating a staging table")?;
    }
    // A run id seen before (a re-run of the same knobs) takes the idempotent staging path.
    let fresh: bool =
        sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM truth_runs WHERE run_id = $1)")
            .bind(run_id)
            .fetch_one(&mut conn)
            .await
            .context("looking the run up in truth_runs")?;
    sqlx::query(
        "INSERT INTO truth_runs (run_id, seed, config, status) VALUES ($1, $2, $3, 'running')
         ON CONFLICT (run_id) DO UPDATE SET status = 'running', started_at = now(), finished_at = NULL",
    )
    .bind(run_id)
    .bind(i64::from_ne_bytes(seed.to_ne_bytes()))
    .bind(config)
    .execute(&mut conn)
    .await
    .context("registering the run in truth_runs")?;
    let (tx, rx) = mpsc::channel(BATCHES_QUEUED_MAX);
    let task = tokio::spawn(write_batches(conn, rx, fresh));
    let truth = PostgresTruth {
        run_id: run_id.to_owned(),
        batch: CopyBatch::default(),
        tx,
    };
    Ok((
        truth,
        PostgresWriter {
            run_id: run_id.to_owned(),
            task,
        },
    ))
}

impl PostgresTruth {
    /// Queues one event row.
    pub fn event(&mut self, seq: u64, e: &Event) -> anyhow::Result<()> {
        let out = &mut self.batch.events;
        let mut amount = e.amount;
        amount.rescale(e.currency.minor_units());
        let occurred_at = e
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for v in [
            &e.event_id.hyphenated().to_string(),
            e.event_type.as_str(),
            &e.trip_id,
            &amount.to_string(),
            e.currency.code(),
            &occurred_at,
        ] {
            push_text(out, Some(v));
            out.push(b'\t');
        }
        for v in [&e.rider_id, &e.driver_id, &e.payment_id, &e.payout_id] {
            push_text(out, v.as_deref());
            out.push(b'\t');
        }
        out.extend_from_slice(format!("{}\t", e.schema_version).as_bytes());
        push_text(out, Some(&self.run_id));
        out.extend_from_slice(format!("\t{seq}\n").as_bytes());
        self.row_added()
    }

    /// Queues one reject row.
    pub fn reject(&mut self, row: &RejectRow<'_>) -> anyhow::Result<()> {
        let out = &mut self.batch.rejects;
        push_text(out, Some(&self.run_id));
        out.extend_from_slice(format!("\t{}\t", row.seq).as_bytes());
        push_text(out, Some(row.class));
        out.push(b'\t');
        push_text(
            out,
            row.event_id
                .map(|id| id.hyphenated().to_string())
                .as_deref(),
        );
        out.push(b'\t');
        push_text(out, row.trip_id);
        out.push(b'\t');
        push_bytea(out, row.key);
        out.push(b'\t');
        push_bytea(out, Some(row.payload));
        out.push(b'\n');
        self.row_added()
    }

    fn row_added(&mut self) -> anyhow::Result<()> {
        self.batch.rows += 1;
        if self.batch.rows >= ROWS_PER_BATCH {
            self.send()?;
        }
        Ok(())
    }

    /// Hands the current batch to the writer task, waiting while the queue is full. Must be
    /// called off the async runtime (the publishing thread is a blocking thread).
    fn send(&mut self) -> anyhow::Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.tx.blocking_send(batch).map_err(|_| {
            anyhow!("the truth database writer stopped; its error follows at the end of the run")
        })
    }

    /// Sends the last batch and closes the channel.
    pub fn finish(mut self) -> anyhow::Result<()> {
        if self.batch.rows > 0 {
            self.send()?;
        }
        Ok(())
    }
}

impl PostgresWriter {
    /// Waits until every batch is written, then marks the run `complete` with its counts and
    /// checksum. Call after [`super::TruthRecorder::finish`].
    pub async fn finish(self, summary: &TruthSummary) -> anyhow::Result<WriteStats> {
        let (mut conn, stats) = self
            .task
            .await
            .context("truth database writer panicked")??;
        anyhow::ensure!(
            summary.run_id == self.run_id,
            "summary of run {} for writer of run {}",
            summary.run_id,
            self.run_id
        );
        sqlx::query(
            "UPDATE truth_runs SET status = 'complete', finished_at = now(), events = $2,
             rejects = $3, checksum_sha256 = $4 WHERE run_id = $1",
        )
        .bind(&self.run_id)
        .bind(i64::try_from(summary.events)?)
        .bind(i64::try_from(summary.rejects)?)
        .bind(&summary.checksum_sha256)
        .execute(&mut conn)
        .await
        .context("completing the run in truth_runs")?;
        conn.close().await.ok();
        Ok(stats)
    }

    /// Waits for the writer task after the publishing side failed, returning its own error if
    /// it had one (that error is usually the cause).
    pub async fn abandon(self) -> anyhow::Result<()> {
        self.task
            .await
            .context("truth database writer panicked")?
            .map(|_| ())
    }
}

async fn write_batches(
    mut conn: PgConnection,
    mut rx: mpsc::Receiver<CopyBatch>,
    fresh: bool,
) -> anyhow::Result<(PgConnection, WriteStats)> {
    let mut stats = WriteStats::default();
    while let Some(batch) = rx.recv().await {
        let mut tx = conn.begin().await?;
        if !batch.events.is_empty() {
            let moved = copy_and_move(
                &mut tx,
                "truth_events",
                EVENT_COLUMNS,
                "event_id",
                batch.events,
                fresh,
            )
            .await?;
            stats.events_inserted += moved.0;
            stats.events_present += moved.1;
        }
        if !batch.rejects.is_empty() {
            let moved = copy_and_move(
                &mut tx,
                "truth_rejects",
                REJECT_COLUMNS,
                "run_id, seq",
                batch.rejects,
                fresh,
            )
            .await?;
            stats.rejects_inserted += moved.0;
        }
        tx.commit().await.context("committing a truth batch")?;
    }
    Ok((conn, stats))
}

/// Writes `rows` into `table` and returns (inserted, already present).
///
/// A `fresh` run COPYs straight into `table`: any key already there belongs to another run, and
/// the primary-key violation fails the run. A re-run COPYs into `<table>_stage` and moves the
/// rows with `ON CONFLICT DO NOTHING`, after checking that every conflicting row is its own
/// (same `run_id` and `seq`, hence identical: the plan is deterministic).
async fn copy_and_move(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    conflict_key: &str,
    rows: Vec<u8>,
    fresh: bool,
) -> anyhow::Result<(u64, u64)> {
    const COLLISION: &str = "event ids collide with another run in the truth database: \
        runs sharing a topic or truth database must use different --seed values";
    if fresh {
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await
            .with_context(|| format!("starting COPY into {table}"))?;
        copy.send(rows).await?;
        let copied = copy
            .finish()
            .await
            .with_context(|| format!("COPY into {table} ({COLLISION}?)"))?;
        return Ok((copied, 0));
    }
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table}_stage ({columns}) FROM STDIN"))
        .await
        .with_context(|| format!("starting COPY into {table}_stage"))?;
    copy.send(rows).await?;
    let copied = copy
        .finish()
        .await
        .with_context(|| format!("COPY into {table}_stage"))?;
    let foreign: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table}_stage s JOIN {table} t USING ({conflict_key})
         WHERE t.run_id <> s.run_id OR t.seq <> s.seq"
    ))
    .fetch_one(&mut *conn)
    .await
    .with_context(|| format!("checking {table} for rows of other runs"))?;
    anyhow::ensure!(foreign == 0, "{foreign} rows of {table}: {COLLISION}");
    let inserted = sqlx::query(&format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_stage ON CONFLICT ({conflict_key}) DO NOTHING"
    ))
    .execute(&mut *conn)
    .await
    .with_context(|| format!("moving rows into {table}"))?
    .rows_affected();
    sqlx::query(&format!("TRUNCATE {table}_stage"))
        .execute(&mut *conn)
        .await?;
    Ok((inserted, copied - inserted))
}

/// Appends a COPY text field (`\N` for NULL), escaping backslash, tab, newline and CR.
fn push_text(out: &mut Vec<u8>, value: Option<&str>) {
    let Some(v) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for b in v.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Appends a bytea COPY text field in hex form (`\\x...`, the backslash escaped for COPY).
fn push_bytea(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(b"\\N"),
        Some(bytes) => {
            out.extend_from_slice(b"\\\\x");
            out.extend_from_slice(hex::encode(bytes).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes() {
        let mut out = Vec::new();
        push_text(&mut out, Some("a\tb\\c\nd"));
        out.push(b'|');
        push_text(&mut out, None);
        out.push(b'|');
        push_bytea(&mut out, Some(&[0xff, 0x00]));
        assert_eq!(out, b"a\\tb\\\\c\\nd|\\N|\\\\xff00");
    }
}
