//! Exactly-once outputs beyond Iceberg, both off by default and tied to the checkpoint:
//!
//! - [`alerts`] + [`alerts_kafka`]: trip status transitions to a Kafka topic through a
//!   transactional producer (Kafka's read-process-write pattern: the transaction also commits
//!   the input offsets, with the checkpoint id as metadata, for the producer's group);
//! - [`balances_pg`]: each changed trip's current balance upserted into PostgreSQL in one
//!   database transaction per checkpoint, together with the progress row that makes a replay
//!   change nothing.
//!
//! Both follow the Iceberg sink's discipline: what a checkpoint must emit is durable in the
//! checkpoint before anything is emitted; after a crash, recovery asks the output what it
//! already holds ("already committed?") and emits only the rest.

pub mod alerts;
pub mod alerts_kafka;
pub mod balances_pg;
pub use recon_common::config::outputs as config;

/// Why an output could not emit. Every variant says what went wrong; the job stops and its
/// recovery decides what to emit again.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A Kafka call of the alerts producer failed.
    #[error("alerts topic: {what} failed: {message}; check the broker and [alerts] settings")]
    Kafka {
        /// The call.
        what: &'static str,
        /// The client's message.
        message: String,
    },
    /// A PostgreSQL call of the current-balance output failed.
    #[error("current_balances: {what} failed: {message}")]
    Postgres {
        /// The call.
        what: &'static str,
        /// The driver's message (URLs redacted).
        message: String,
    },
    /// A newer instance of the job took the output over: this process must stop.
    #[error("{output}: fenced: {message}")]
    Fenced {
        /// `alerts` or `current_balances`.
        output: &'static str,
        /// Details.
        message: String,
    },
    /// The output holds a checkpoint the log does not (the log was lost or replaced):
    /// emitting now could emit twice.
    #[error(
        "{output} holds checkpoint {held} of job {job} but the checkpoint log ends at {head}: the log was lost or replaced; emitting now could duplicate its rows. Restore the checkpoint store or use a new job_id"
    )]
    Ahead {
        /// The alerts topic or the current-balance table.
        output: String,
        /// The job.
        job: String,
        /// The newest checkpoint the output holds.
        held: crate::ids::CheckpointId,
        /// The log's head.
        head: crate::ids::CheckpointId,
    },
    /// The current-balance upsert touched another number of rows than it staged (its
    /// transaction is rolled back).
    #[error(
        "the current-balance upsert touched {affected} rows for {staged} staged trips; nothing of this checkpoint was committed"
    )]
    UpsertCount {
        /// Rows the statement reported.
        affected: u64,
        /// Rows staged.
        staged: usize,
    },
    /// A call of the output panicked (a bug: report it with the log).
    #[error("{what} panicked: {message}; this is a bug, please report it with the log")]
    Panicked {
        /// The call.
        what: &'static str,
        /// The panic's message.
        message: String,
    },
}
