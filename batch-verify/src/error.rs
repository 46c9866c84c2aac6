//! The one error type of the library: everything that stops a run from *verifying* (exit 2).
//!
//! A discrepancy is not an error: it is a finding, carried in the [`crate::report::Report`].
//! An error means the proof could not be made (a source unreachable, a truth row unreadable, a
//! limit exceeded), and says which value was wrong and what to do.

use std::path::PathBuf;

/// Why a run could not verify. Each variant names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Bad command-line or configuration value.
    #[error("invalid option {option}: {message}")]
    Options {
        /// The option.
        option: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The Iceberg catalog or a table could not be read or written.
    #[error("lakehouse: {op} {table}: {message}")]
    Lakehouse {
        /// What was being done (`load_table`, `scan`, `commit`...).
        op: &'static str,
        /// The table.
        table: String,
        /// The cause.
        message: String,
    },
    /// A lakehouse row could not be read at all (wrong type, null in a required column).
    #[error("table {table}: column {column}: {message}; the table does not match schemas/tables")]
    Column {
        /// The table.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// What was found.
        message: String,
    },
    /// The source of truth could not be read.
    #[error("truth source {source_name}: {message}")]
    Truth {
        /// `kafka`, `postgres` or `files`.
        source_name: &'static str,
        /// The cause and what to do.
        message: String,
    },
    /// A spill file could not be written or read back.
    #[error("spill file {path}: {message}")]
    Spill {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// A limit that bounds memory or time was reached.
    #[error("limit {limit} = {value} reached: {message}")]
    Limit {
        /// The limit's name (an option or a constant).
        limit: &'static str,
        /// Its value.
        value: u64,
        /// What to do.
        message: String,
    },
}

impl VerifyError {
    /// A lakehouse error from an iceberg error.
    pub fn lakehouse(op: &'static str, table: impl ToString, e: impl std::fmt::Display) -> Self {
        VerifyError::Lakehouse {
            op,
            table: table.to_string(),
            message: e.to_string(),
        }
    }

    /// A truth error.
    pub fn truth(source_name: &'static str, message: impl ToString) -> Self {
        VerifyError::Truth {
            source_name,
            message: message.to_string(),
        }
    }
}

/// Result of this crate.
pub type Result<T, E = VerifyError> = std::result::Result<T, E>;
