//! # batch-verify
//!
//! The end-of-day proof: for one business day, against a source of truth (the Kafka topic, the
//! upstream ledger in PostgreSQL, or exported files), prove that the lakehouse holds every event
//! exactly once and that every trip's balance equals the fold of its events; report each
//! failure with its keys, write the run to Iceberg, and exit non-zero on any discrepancy.
//!
//! Read in the order the data flows: [`options`] and [`day`] (what to verify) -> [`truth`] and
//! [`lakehouse`] (both sides, read into [`spill`] files of [`row`]s) -> [`checks`],
//! [`balances`], [`offsets`] (the proof, one bucket at a time) -> [`report`] and [`record`]
//! (the outcome, also as Prometheus [`metrics`]). [`run::verify`] ties them together.
//!
//! Independence invariant: this crate depends on `recon-schemas` (the wire and table formats)
//! and `recon-common` (configuration, catalog, connections, logging) only, never on
//! `recon-pipeline`: it reads, orders and folds with its own code ([`fold`], [`outputs`]), so
//! a defect in the job's logic cannot hide behind the same defect here. `recon-tests` holds the
//! tests that need the job (its generator, its row builders for fixture lakehouses) and
//! asserts the dependency tree (`tests/tests/verify_independence.rs`).
//!
//! Architecture invariant: the checks ([`checks`], [`balances`], [`offsets::check`]) do no
//! I/O; they take rows and return findings, so tests drive them with plain data.
//! Architecture invariant: no step holds a whole day in memory: both sides stream into
//! hash-partitioned spill files, and the checks load one bucket at a time.
#![deny(missing_docs)]

pub mod balances;
pub mod buckets;
pub mod checks;
pub mod day;
pub mod epochs;
pub mod error;
pub mod fold;
pub mod history;
pub mod html;
pub mod lakehouse;
pub mod memory;
pub mod metrics;
pub mod offsets;
pub mod options;
pub mod outputs;
pub mod progress;
pub mod record;
pub mod report;
pub mod row;
pub mod run;
pub mod spill;
pub mod truth;

pub use day::BusinessDay;
pub use error::VerifyError;
pub use options::{Options, TruthSpec};
pub use report::{Kind, Report, Status};
pub use run::verify;
