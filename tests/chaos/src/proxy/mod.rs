//! Fault-injecting proxies between the job and its services.

pub mod pg;
pub mod s3;
