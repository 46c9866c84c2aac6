//! Shared test helpers for recon's cross-crate and real-service tests.
//!
//! Real services (Kafka, PostgreSQL, an S3 server) are started by `infra/local/up`; their addresses come from the
//! environment that `infra/local/env` prints. `infra/local/test` (the project's test command, and CI's) always
//! exports them, so there the real-service tests run for real.
//!
//! Without `RECON_SERVICES=1` a real-service test must not pass silently: it calls [`services_or_skip`], which
//! prints a loud `SKIPPED` line straight to the terminal (not captured by the test harness) and returns `None`,
//! and the test returns early. With `RECON_REQUIRE_SERVICES=1` (also set by `infra/local/test`) a missing
//! environment is a test failure instead of a skip.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};

pub mod fleet;
pub mod outputs;
pub mod pipeline;
pub mod security;
pub mod topics;
pub mod traffic;
pub mod verify_day;
pub mod verify_fixture;

/// Set to `1` by `infra/local/env`: the real services are up and the variables below are set.
pub const ENV_SERVICES: &str = "RECON_SERVICES";
/// Set to `1` to make a missing service environment fail the test instead of skipping it.
pub const ENV_REQUIRE_SERVICES: &str = "RECON_REQUIRE_SERVICES";

/// Addresses and credentials of the local services, read from the environment.
#[derive(Clone, Debug)]
pub struct Services {
    /// Kafka bootstrap servers, `RECON_KAFKA_BOOTSTRAP` (e.g. `127.0.0.1:19092`).
    pub kafka_bootstrap: String,
    /// PostgreSQL URL of the Iceberg SQL catalog database, `RECON_PG_CATALOG_URL`.
    pub pg_catalog_url: String,
    /// PostgreSQL URL of the upstream payments ledger ("truth") database, `RECON_PG_TRUTH_URL`.
    pub pg_truth_url: String,
    /// The S3 server.
    pub s3: S3Service,
}

/// An S3-protocol server (path-style addressing, plain HTTP on loopback).
#[derive(Clone, Debug)]
pub struct S3Service {
    /// `RECON_S3_ENDPOINT`, e.g. `http://127.0.0.1:19000`.
    pub endpoint: String,
    /// `RECON_S3_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `RECON_S3_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `RECON_S3_REGION`.
    pub region: String,
    /// `RECON_S3_WAREHOUSE_BUCKET`: Iceberg table data and metadata.
    pub warehouse_bucket: String,
    /// `RECON_S3_CHECKPOINT_BUCKET`: pipeline checkpoints.
    pub checkpoint_bucket: String,
}

fn var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{ENV_SERVICES}=1 but {name} is not set: source the whole output of infra/local/env \
             (eval \"$(infra/local/env)\")"
        ),
    }
}

/// The local services, or `None` when `RECON_SERVICES` is not `1`.
///
/// Panics when `RECON_SERVICES=1` but one of the other variables is missing: a half-set environment is a
/// mistake, not a reason to skip.
pub fn services() -> Option<Services> {
    if std::env::var(ENV_SERVICES).as_deref() != Ok("1") {
        return None;
    }
    Some(Services {
        kafka_bootstrap: var("RECON_KAFKA_BOOTSTRAP"),
        pg_catalog_url: var("RECON_PG_CATALOG_URL"),
        pg_truth_url: var("RECON_PG_TRUTH_URL"),
        s3: S3Service {
            endpoint: var("RECON_S3_ENDPOINT"),
            access_key_id: var("RECON_S3_ACCESS_KEY_ID"),
            secret_access_key: var("RECON_S3_SECRET_ACCESS_KEY"),
            region: var("RECON_S3_REGION"),
            warehouse_bucket: var("RECON_S3_WAREHOUSE_BUCKET"),
            checkpoint_bucket: var("RECON_S3_CHECKPOINT_BUCKET"),
        },
    })
}

/// [`services`], for the first line of a real-service test: on `None` it prints a loud `SKIPPED` line to the
/// terminal (bypassing the harness's output capture) and the test should `return`. With
/// `RECON_REQUIRE_SERVICES=1` it panics instead.
///
/// ```text
/// let Some(svc) = recon_tests::services_or_skip("kafka_transactions") else { return };
/// ```
pub fn services_or_skip(test: &str) -> Option<Services> {
    let found = services();
    if found.is_none() {
        if std::env::var(ENV_REQUIRE_SERVICES).as_deref() == Ok("1") {
            panic!(
                "{test}: {ENV_REQUIRE_SERVICES}=1 but {ENV_SERVICES} is not set; \
                 run infra/local/up and eval \"$(infra/local/env)\""
            );
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {test}: real-service test, {ENV_SERVICES} is not set. \
             It did NOT run. Run infra/local/test, or infra/local/up then eval \"$(infra/local/env)\". ***"
        );
    }
    found
}

impl S3Service {
    /// An `object_store` client for `bucket` on this server (path-style, HTTP allowed, fixed credentials).
    pub fn object_store(&self, bucket: &str) -> object_store::Result<AmazonS3> {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_bucket_name(bucket)
            .build()
    }

    /// FileIO properties for `iceberg-storage-opendal`'s S3 backend pointing at this server. Pass them to a
    /// catalog's `load` together with its own properties.
    pub fn iceberg_props(&self) -> HashMap<String, String> {
        use iceberg::io::{
            S3_ACCESS_KEY_ID, S3_DISABLE_CONFIG_LOAD, S3_DISABLE_EC2_METADATA, S3_ENDPOINT,
            S3_PATH_STYLE_ACCESS, S3_REGION, S3_SECRET_ACCESS_KEY,
        };
        HashMap::from([
            (S3_ENDPOINT.to_string(), self.endpoint.clone()),
            (S3_ACCESS_KEY_ID.to_string(), self.access_key_id.clone()),
            (
                S3_SECRET_ACCESS_KEY.to_string(),
                self.secret_access_key.clone(),
            ),
            (S3_REGION.to_string(), self.region.clone()),
            (S3_PATH_STYLE_ACCESS.to_string(), "true".to_string()),
            (S3_DISABLE_CONFIG_LOAD.to_string(), "true".to_string()),
            (S3_DISABLE_EC2_METADATA.to_string(), "true".to_string()),
        ])
    }

    /// The storage factory that goes with [`S3Service::iceberg_props`].
    pub fn iceberg_storage_factory(&self) -> Arc<dyn iceberg::io::StorageFactory> {
        Arc::new(iceberg_storage_opendal::OpenDalStorageFactory::S3 {
            customized_credential_load: None,
        })
    }
}

/// A name unique to this call (prefix + random suffix), for topics, namespaces, tables and object keys, so that
/// tests can share long-lived services and run in parallel.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// Polls `check` until it returns `Some`, or panics with `what` once `timeout` has passed. Polls every 50 ms: a
/// bounded wait for a condition, never a sleep standing in for one.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
