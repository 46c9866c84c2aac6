//! Every trip's current balance in PostgreSQL, exactly once: one database transaction per
//! checkpoint upserts the trips that checkpoint changed **and** moves the job's progress rows
//! to it. The progress row is locked (`FOR UPDATE`) at the start of the transaction and says
//! which checkpoint the table already holds and which generation wrote it, so:
//! - a replayed checkpoint (id at or below the progress) changes nothing;
//! - an older generation (a zombie) finds a newer one in the row and stops, fenced;
//! - after a crash, recovery compares the progress with the log's head and, when behind,
//!   upserts the restored state (every trip's balance as of the head) in one transaction.
//!
//! Keyed lookups are one indexed query: `SELECT * FROM recon_current_balances WHERE job_id = $1
//! AND trip_id = $2`.

use std::collections::BTreeMap;

use recon_schemas::balance::TripBalance;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row as _, Transaction};

use super::OutputError;
use crate::ids::{CheckpointId, Generation, JobId, Offset, PartitionId};

/// The job-level progress row's partition (`-1`); per-partition rows hold real partitions.
const JOB_ROW: i32 = -1;

/// One trip's current balance, as upserted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceRow {
    /// The trip.
    pub trip_id: String,
    /// Its balance.
    pub balance: TripBalance,
    /// Partition that owns it.
    pub partition: i32,
}

/// The PostgreSQL current-balance output of one job and generation.
pub struct BalancesPg {
    pool: PgPool,
    job: JobId,
    generation: Generation,
    table: String,
    progress: String,
    batch_rows: usize,
}

fn pg(what: &'static str, e: sqlx::Error) -> OutputError {
    OutputError::Postgres {
        what,
        message: e.to_string(),
    }
}

/// What applying one checkpoint did.
#[derive(Debug, PartialEq, Eq)]
pub enum Staged {
    /// The table already holds this checkpoint (a replay): nothing written.
    AlreadyApplied(CheckpointId),
    /// Rows and progress are written in an open transaction; commit with [`StagedTx::commit`].
    Open(StagedTx),
}

/// An open transaction holding one checkpoint's upserts and progress.
pub struct StagedTx(Transaction<'static, Postgres>);

impl std::fmt::Debug for StagedTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StagedTx")
    }
}

impl PartialEq for StagedTx {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}
impl Eq for StagedTx {}

impl StagedTx {
    /// Commits the checkpoint's upserts and progress together.
    pub async fn commit(self) -> Result<(), OutputError> {
        self.0.commit().await.map_err(|e| pg("commit", e))
    }
}

impl BalancesPg {
    /// Connects (bounded by `timeout`) and creates the tables if missing.
    pub async fn connect(
        url: &str,
        cfg: &super::config::RawCurrentBalances,
        job: JobId,
        generation: Generation,
        timeout: std::time::Duration,
    ) -> Result<BalancesPg, OutputError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(timeout)
            .connect(url)
            .await
            .map_err(|e| OutputError::Postgres {
                what: "connect",
                message: format!(
                    "{} ({}); check current_balances.url",
                    e,
                    crate::config::redact_url(url)
                ),
            })?;
        let out = BalancesPg {
            pool,
            job,
            generation,
            table: cfg.table.clone(),
            progress: cfg.progress_table.clone(),
            batch_rows: cfg.batch_rows,
        };
        out.create_tables().await?;
        Ok(out)
    }

    async fn create_tables(&self) -> Result<(), OutputError> {
        let ddl = [
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                   job_id text NOT NULL, trip_id text NOT NULL, currency char(3) NOT NULL,
                   charged numeric(18,3) NOT NULL, collected numeric(18,3) NOT NULL,
                   refunded numeric(18,3) NOT NULL, paid_out numeric(18,3) NOT NULL,
                   fees numeric(18,3) NOT NULL, adjusted numeric(18,3) NOT NULL,
                   rider_balance numeric(18,3) NOT NULL, settlement_balance numeric(18,3) NOT NULL,
                   status text NOT NULL, discrepancy_reason text, event_count integer NOT NULL,
                   last_occurred_at timestamptz, kafka_partition integer NOT NULL,
                   checkpoint_id bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (job_id, trip_id))",
                t = self.table
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {p} (
                   job_id text NOT NULL, kafka_partition integer NOT NULL,
                   checkpoint_id bigint NOT NULL, generation bigint NOT NULL,
                   next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (job_id, kafka_partition))",
                p = self.progress
            ),
        ];
        for sql in ddl {
            // Two instances creating at once: the loser's "already exists" is harmless.
            if let Err(e) = sqlx::query(&sql).execute(&self.pool).await
                && !e.to_string().contains("already exists")
                && !e.to_string().contains("duplicate key")
            {
                return Err(pg("create tables", e));
            }
        }
        Ok(())
    }

    /// Locks the job row (creating it) and checks the generation. `Ok(checkpoint)` = what the
    /// table holds (`None`: nothing yet).
    async fn lock(
        &self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> Result<Option<CheckpointId>, OutputError> {
        let insert = format!(
            "INSERT INTO {p} (job_id, kafka_partition, checkpoint_id, generation, next_offset)
             VALUES ($1, $2, 0, 0, -1) ON CONFLICT DO NOTHING",
            p = self.progress
        );
        sqlx::query(&insert)
            .bind(self.job.as_str())
            .bind(JOB_ROW)
            .execute(&mut **tx)
            .await
            .map_err(|e| pg("progress row", e))?;
        let select = format!(
            "SELECT checkpoint_id, generation FROM {p} WHERE job_id = $1 AND kafka_partition = $2 FOR UPDATE",
            p = self.progress
        );
        let row = sqlx::query(&select)
            .bind(self.job.as_str())
            .bind(JOB_ROW)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| pg("lock progress", e))?;
        let (ckpt, gen_): (i64, i64) = (row.get(0), row.get(1));
        if gen_ as u64 > self.generation.0 {
            return Err(OutputError::Fenced {
                output: "current_balances",
                message: format!(
                    "{p} says generation {gen_} of job {j} writes now; this process (generation {ours}) stops",
                    p = self.progress,
                    j = self.job,
                    ours = self.generation
                ),
            });
        }
        Ok((ckpt > 0).then_some(CheckpointId(ckpt as u64)))
    }

    /// Claims the table for this generation (fencing older ones) and returns the checkpoint it
    /// holds.
    pub async fn claim(&self) -> Result<Option<CheckpointId>, OutputError> {
        let mut tx = self.pool.begin().await.map_err(|e| pg("begin", e))?;
        let held = self.lock(&mut tx).await?;
        let sql = format!(
            "UPDATE {p} SET generation = $3, updated_at = now() WHERE job_id = $1 AND kafka_partition = $2",
            p = self.progress
        );
        sqlx::query(&sql)
            .bind(self.job.as_str())
            .bind(JOB_ROW)
            .bind(self.generation.0 as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| pg("claim", e))?;
        tx.commit().await.map_err(|e| pg("claim commit", e))?;
        Ok(held)
    }

    /// Stages checkpoint `id`: upserts `rows` and moves the progress rows to `id` and
    /// `offsets`, in one open transaction; a replay of a held checkpoint writes nothing.
    pub async fn stage(
        &self,
        id: CheckpointId,
        rows: &[BalanceRow],
        offsets: &BTreeMap<PartitionId, Offset>,
    ) -> Result<Staged, OutputError> {
        let mut tx = self.pool.begin().await.map_err(|e| pg("begin", e))?;
        if let Some(held) = self.lock(&mut tx).await?
            && held >= id
        {
            tx.rollback().await.map_err(|e| pg("rollback", e))?;
            return Ok(Staged::AlreadyApplied(held));
        }
        for chunk in rows.chunks(self.batch_rows) {
            self.upsert(&mut tx, id, chunk).await?;
        }
        let sql = format!(
            "INSERT INTO {p} (job_id, kafka_partition, checkpoint_id, generation, next_offset)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (job_id, kafka_partition) DO UPDATE SET checkpoint_id = EXCLUDED.checkpoint_id,
               generation = EXCLUDED.generation, next_offset = EXCLUDED.next_offset, updated_at = now()",
            p = self.progress
        );
        let job_row = (JOB_ROW, -1i64);
        for (p, o) in offsets
            .iter()
            .map(|(p, o)| (p.0, o.0))
            .chain(std::iter::once(job_row))
        {
            sqlx::query(&sql)
                .bind(self.job.as_str())
                .bind(p)
                .bind(id.0 as i64)
                .bind(self.generation.0 as i64)
                .bind(o)
                .execute(&mut *tx)
                .await
                .map_err(|e| pg("progress", e))?;
        }
        Ok(Staged::Open(StagedTx(tx)))
    }

    async fn upsert(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        id: CheckpointId,
        rows: &[BalanceRow],
    ) -> Result<(), OutputError> {
        let n = rows.len();
        let mut trip = Vec::with_capacity(n);
        let mut currency = Vec::with_capacity(n);
        let mut sums: [Vec<String>; 8] = Default::default();
        let mut status = Vec::with_capacity(n);
        let mut reason = Vec::with_capacity(n);
        let mut count = Vec::with_capacity(n);
        let mut last = Vec::with_capacity(n);
        let mut part = Vec::with_capacity(n);
        for r in rows {
            let b = &r.balance;
            trip.push(r.trip_id.clone());
            currency.push(b.currency.code().to_string());
            for (v, d) in sums.iter_mut().zip([
                b.charged,
                b.collected,
                b.refunded,
                b.paid_out,
                b.fees,
                b.adjusted,
                b.rider_balance(),
                b.settlement_balance(),
            ]) {
                v.push(d.to_string());
            }
            let s = b.status();
            status.push(s.as_str().to_string());
            reason.push(s.reason().map(|r| r.as_str().to_string()));
            count.push(b.events as i32);
            last.push(b.last_occurred_at.map(|t| t.to_rfc3339()));
            part.push(r.partition);
        }
        let sql = format!(
            "INSERT INTO {t} (job_id, trip_id, currency, charged, collected, refunded, paid_out, fees,
               adjusted, rider_balance, settlement_balance, status, discrepancy_reason, event_count,
               last_occurred_at, kafka_partition, checkpoint_id)
             SELECT $1, u.trip, u.cur, u.c::numeric, u.co::numeric, u.r::numeric, u.p::numeric,
               u.f::numeric, u.a::numeric, u.rb::numeric, u.sb::numeric, u.st, u.re, u.n,
               u.l::timestamptz, u.pa, $2
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
               $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
               $15::int[], $16::text[], $17::int[])
               AS u(trip, cur, c, co, r, p, f, a, rb, sb, st, re, n, l, pa)
             ON CONFLICT (job_id, trip_id) DO UPDATE SET currency = EXCLUDED.currency,
               charged = EXCLUDED.charged, collected = EXCLUDED.collected,
               refunded = EXCLUDED.refunded, paid_out = EXCLUDED.paid_out, fees = EXCLUDED.fees,
               adjusted = EXCLUDED.adjusted, rider_balance = EXCLUDED.rider_balance,
               settlement_balance = EXCLUDED.settlement_balance, status = EXCLUDED.status,
               discrepancy_reason = EXCLUDED.discrepancy_reason, event_count = EXCLUDED.event_count,
               last_occurred_at = EXCLUDED.last_occurred_at, kafka_partition = EXCLUDED.kafka_partition,
               checkpoint_id = EXCLUDED.checkpoint_id, updated_at = now()",
            t = self.table
        );
        let [c, co, r, p, f, a, rb, sb] = sums;
        sqlx::query(&sql)
            .bind(self.job.as_str())
            .bind(id.0 as i64)
            .bind(trip)
            .bind(currency)
            .bind(c)
            .bind(co)
            .bind(r)
            .bind(p)
            .bind(f)
            .bind(a)
            .bind(rb)
            .bind(sb)
            .bind(status)
            .bind(reason)
            .bind(count)
            .bind(last)
            .bind(part)
            .execute(&mut **tx)
            .await
            .map_err(|e| pg("upsert balances", e))?;
        Ok(())
    }
}
