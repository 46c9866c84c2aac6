//! `[catalog]`: the Iceberg catalog and warehouse.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secrets::{self, RedactedMap, redact_url};

/// `[catalog]`: the Iceberg catalog and warehouse.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// Catalog name shared with Spark/Trino/pyiceberg (`catalog_name` column of the SQL catalog).
    pub name: String,
    /// SQL catalog database: `sqlite://path?mode=rwc` or `postgres://user:pass@host:port/db`.
    pub uri: String,
    /// Warehouse root: `file:///abs/path` or `s3://bucket/prefix`. A relative path is allowed.
    pub warehouse: String,
    /// Extra catalog/FileIO properties, e.g. `s3.endpoint`, `s3.access-key-id`, `s3.region`.
    pub properties: BTreeMap<String, String>,
    /// Namespace of the tables.
    pub namespace: String,
    /// Password of the PostgreSQL catalog database, put into `uri` (which then names only the
    /// user). Prefer `password_file` or `RECON__CATALOG__PASSWORD` (read verbatim).
    pub password: String,
    /// File holding the catalog database password (one trailing newline ignored).
    pub password_file: String,
}

impl std::fmt::Debug for RawCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCatalog")
            .field("name", &self.name)
            .field("uri", &redact_url(&self.uri))
            .field("warehouse", &self.warehouse)
            .field("properties", &RedactedMap(&self.properties))
            .field("namespace", &self.namespace)
            .field("password", &redacted_if_set(&self.password))
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl Default for RawCatalog {
    fn default() -> Self {
        RawCatalog {
            name: "recon".into(),
            uri: "sqlite://lakehouse/catalog.db?mode=rwc".into(),
            warehouse: "lakehouse/warehouse".into(),
            properties: BTreeMap::new(),
            namespace: recon_schemas::tables::NAMESPACE.into(),
            password: String::new(),
            password_file: String::new(),
        }
    }
}

/// `""` for an unset secret, the redaction mark otherwise (for `Debug`).
pub(super) fn redacted_if_set(v: &str) -> &str {
    if v.is_empty() { "" } else { secrets::REDACTED }
}
