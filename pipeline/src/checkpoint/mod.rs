//! Checkpoints: the durable half of the exactly-once protocol.
//!
//! - [`protocol`]: the decisions, pure functions (no I/O);
//! - [`manifest`]: the on-disk records;
//! - [`store`]: the storage contract (create-if-absent) and its `object_store` implementation;
//! - [`claim`]: what a generation claim writes (resume, rewind, topic reset), decided purely;
//! - [`log`]: reading and extending the checkpoint log through that contract;
//! - [`commit`]: publishing completed checkpoints to Iceberg through a guarded catalog;
//! - [`presence`]: every pending file exists with its recorded size before it is committed.
//! - [`clock`]: naming a clock skew that makes Iceberg refuse every commit.
//! - [`fold`]: the state chain folded into one full file off the barrier.

pub mod claim;
pub mod clock;
pub mod commit;
pub mod fold;
pub mod log;
mod log_error;
pub mod manifest;
pub mod presence;
pub mod protocol;
pub mod publish;
#[cfg(test)]
mod simulation;
pub mod store;
pub mod sweep;
