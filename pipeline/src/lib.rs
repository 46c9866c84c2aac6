//! recon's streaming job: Kafka -> per-trip balances in checkpointed state -> Parquet files
//! pre-committed during each checkpoint -> Iceberg snapshots committed once the checkpoint is
//! durable -> exact recovery after any crash.
//!
//! Read in the order the data flows: [`source`] -> (`recon_schemas::decode`) -> [`state`] ->
//! [`sink`] -> [`checkpoint`]; [`job`] ties them together.
#![deny(missing_docs)]
// Errors carry iceberg::Error (large) and only travel the stop path, never a hot loop.
#![allow(clippy::result_large_err)]

pub use recon_common::{config, ids, lakehouse, logging, redactor, secrets};

pub mod alloc;
pub mod bench;
pub mod catalog_wrap;
pub mod checkpoint;
pub mod cold;
pub mod crash;
pub mod demo;
pub mod fleet;
pub mod generate;
pub mod job;
pub mod maintain;
pub mod orphans;
pub mod outputs;
pub mod reconcile;
pub mod refusal;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod topic_reset;
