//! What recon's streaming job and its verifier share, and nothing else: the configuration, the
//! catalog and table connections, the Parquet writer of Iceberg tables, logging with credential
//! redaction, Kafka security settings and the on-disk stamp names.
//!
//! The invariant (`docs/ARCHITECTURE.md`, "batch-verify: what keeps the proof honest"): this
//! crate holds plumbing, never a decision the verifier checks. No balance fold, dedup rule,
//! checkpoint protocol or row builder lives here, so batch-verify, which depends on this crate and
//! `recon-schemas` only, cannot agree with the job by sharing its logic.
#![deny(missing_docs)]
#![allow(clippy::result_large_err)]

pub mod config;
pub mod ids;
pub mod lakehouse;
pub mod logging;
pub mod redactor;
pub mod secrets;
pub mod security;
pub mod stamps;
pub mod writer;
