//! # recon-schemas
//!
//! One source of truth for recon's money events and lakehouse tables:
//!
//! - [`currency`]: the ISO 4217 codes recon accepts and their minor units.
//! - [`event`]: the event envelope ([`event::Event`]), its canonical JSON and fingerprint.
//! - [`mod@decode`]: the validating decoder from Kafka key + payload to an [`event::Event`], with one
//!   typed error per class of bad input ([`decode::DecodeError`], [`decode::RejectReason`]).
//! - [`balance`]: per-trip balance arithmetic ([`balance::TripBalance`], [`balance::fold`]).
//! - [`money`]: the one decimal type money is stored as in Iceberg.
//! - [`tables`]: the Iceberg table definitions, derived from the JSON files in `schemas/tables/`.
//!
//! The schema files beside this crate (`event.schema.json`, `event.avsc`, `tables/*.json`) are the
//! contract; the Rust code is derived from them or checked against them by tests.
#![deny(missing_docs)]

pub mod balance;
pub mod currency;
pub mod decode;
pub mod event;
pub mod money;
pub mod tables;

pub use balance::{Applied, DiscrepancyReason, TripBalance, TripStatus, fold};
pub use currency::Currency;
pub use decode::{DecodeError, Limits, RejectReason, decode};
pub use event::{Event, EventType};
pub use tables::TableDef;
