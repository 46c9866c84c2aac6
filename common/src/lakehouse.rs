//! The Iceberg side: opening the SQL catalog and creating the product's tables.
//!
//! The catalog tables are created by this side (schema V1, the one Spark's JdbcCatalog, Trino
//! and pyiceberg read), so one `catalog_name` works across every engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;
use recon_schemas::tables::{self, TableDef};

use crate::config::{Config, redact_url};

/// Attempts to open the catalog: two processes creating the catalog tables at once on an empty
/// PostgreSQL database can collide (`pg_type_typname_nsp_index`); a retry settles it.
const OPEN_ATTEMPTS_MAX: u32 = 5;
/// Bound on opening the catalog, all attempts together. Without it an unreachable database
/// took 2.5 minutes to fail (five attempts, each waiting out sqlx's 30 s acquire timeout, which
/// the SQL catalog does not let us set); 15 s is ample for a reachable database on a slow
/// network, and the job is restarted anyway (transient).
pub const OPEN_DEADLINE: Duration = Duration::from_secs(15);

/// Errors of the lakehouse side.
#[derive(Debug, thiserror::Error)]
pub enum LakehouseError {
    /// The catalog could not be opened.
    #[error(
        "cannot open the Iceberg catalog at {uri}: {source}; check catalog.uri (and catalog.password / password_file) and that the database is up"
    )]
    Open {
        /// The catalog URI, password redacted.
        uri: String,
        /// Cause.
        #[source]
        source: iceberg::Error,
    },
    /// The catalog did not answer within [`OPEN_DEADLINE`] (transient: restart me).
    #[error(
        "the Iceberg catalog at {uri} did not answer within {waited:?} ({attempts} attempts; last: {last}); check catalog.uri, \
         that the database is up and reachable from this host (firewall, DNS); restarting retries"
    )]
    OpenTimeout {
        /// The catalog URI, password redacted.
        uri: String,
        /// How long opening took.
        waited: Duration,
        /// Attempts started.
        attempts: u32,
        /// The last attempt's error, or that it was still waiting.
        last: String,
    },
    /// Another process created a product table meanwhile, with a schema other than this
    /// build's (operator needed: two builds write one namespace).
    #[error(
        "another process created {table} meanwhile, with a schema other than this build's: found {found}, expected {expected}; \
         run one build of recon-pipeline per namespace (drop the table if nothing was written to it yet)"
    )]
    SchemaMismatch {
        /// Table.
        table: String,
        /// Its schema as created.
        found: String,
        /// This build's schema.
        expected: String,
    },
    /// A catalog call failed.
    #[error("catalog {op} {what}: {source}")]
    Catalog {
        /// The operation.
        op: &'static str,
        /// What it was about.
        what: String,
        /// Cause.
        #[source]
        source: iceberg::Error,
    },
}

/// Opens the SQL catalog named in the configuration, with file and S3 storage.
pub async fn open_catalog(cfg: &Config) -> Result<Arc<dyn Catalog>, LakehouseError> {
    let uri = cfg.catalog.uri.clone();
    if let Some(path) = uri.strip_prefix("sqlite://") {
        let file = path.split('?').next().unwrap_or(path);
        if let Some(parent) = std::path::Path::new(file).parent()
            && !parent.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Some(dir) = cfg.catalog.warehouse.strip_prefix("file://") {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let is_pg = cfg.catalog_is_postgres();
    let mut props: HashMap<String, String> = cfg.catalog.properties.clone().into_iter().collect();
    let connect_uri = if is_pg {
        with_idle_transaction_guard(&uri, Duration::from_millis(cfg.commit.timeout_ms))
    } else {
        uri.clone()
    };
    props.insert("uri".into(), connect_uri);
    props.insert("warehouse".into(), cfg.catalog.warehouse.clone());
    let started = tokio::time::Instant::now();
    let deadline = started + OPEN_DEADLINE;
    let mut last = None;
    for attempt in 1..=OPEN_ATTEMPTS_MAX {
        let builder = SqlCatalogBuilder::default()
            .sql_bind_style(if is_pg {
                SqlBindStyle::DollarNumeric
            } else {
                SqlBindStyle::QMark
            })
            .with_storage_factory(Arc::new(OpenDalResolvingStorageFactory::new()));
        let load = builder.load(cfg.catalog.name.clone(), props.clone());
        match tokio::time::timeout_at(deadline, load).await {
            Ok(Ok(c)) => return Ok(Arc::new(c)),
            Ok(Err(e)) => {
                tracing::warn!(attempt, error = %e, "opening the catalog failed");
                last = Some(e);
            }
            Err(_) => {
                return Err(LakehouseError::OpenTimeout {
                    uri: redact_url(&uri),
                    waited: started.elapsed(),
                    attempts: attempt,
                    last: last.map_or_else(
                        || "no answer".to_string(),
                        |e| e.to_string().replace(&uri, &redact_url(&uri)),
                    ),
                });
            }
        }
        let pause = Duration::from_millis(100 * u64::from(attempt));
        if tokio::time::Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    Err(LakehouseError::Open {
        uri: redact_url(&uri),
        source: last.expect("at least one attempt"),
    })
}

/// The PostgreSQL setting that ends a catalog session left idle inside a transaction.
const IDLE_TRANSACTION_SETTING: &str = "idle_in_transaction_session_timeout";

/// Adds `idle_in_transaction_session_timeout` to a PostgreSQL catalog URI, unless the operator
/// set it there already.
///
/// The SQL catalog commits a table with `BEGIN; UPDATE iceberg_tables ...; COMMIT`. A process
/// frozen between the `UPDATE` and the `COMMIT` (a paused VM, SIGSTOP, a long GC-like stall)
/// holds the table's catalog row lock for as long as its TCP connection lives: hours, with
/// default keepalives. Its successor, which has already fenced it, then waits on that lock at
/// every commit attempt and stops after `commit.attempts_max` (soak seed 107 #24). With this
/// setting the server ends the frozen session and rolls its `UPDATE` back, so the fenced
/// commit never lands and the successor proceeds. Half the commit timeout (1 s to 60 s): a
/// successor's attempt outlives the wait, and a live client, which sends `COMMIT` right after
/// the `UPDATE`, is never cut off (if it were, the commit's outcome is unknown, which the
/// commit protocol verifies from the table anyway).
pub fn with_idle_transaction_guard(uri: &str, commit_timeout: Duration) -> String {
    let Ok(mut url) = url::Url::parse(uri) else {
        return uri.to_string();
    };
    if url
        .query_pairs()
        .any(|(k, v)| k.contains(IDLE_TRANSACTION_SETTING) || v.contains(IDLE_TRANSACTION_SETTING))
    {
        return uri.to_string();
    }
    let ms = (commit_timeout.as_millis() / 2).clamp(1_000, 60_000);
    url.query_pairs_mut().append_pair(
        &format!("options[{IDLE_TRANSACTION_SETTING}]"),
        &ms.to_string(),
    );
    url.to_string()
}

/// Identifier of a product table in the configured namespace.
pub fn table_ident(cfg: &Config, name: impl AsRef<str>) -> TableIdent {
    TableIdent::new(
        NamespaceIdent::new(cfg.catalog.namespace.clone()),
        name.as_ref().to_string(),
    )
}

/// Loads a table, naming it in the error.
pub async fn load_table(
    catalog: &dyn Catalog,
    ident: &TableIdent,
) -> Result<iceberg::table::Table, LakehouseError> {
    catalog
        .load_table(ident)
        .await
        .map_err(|source| LakehouseError::Catalog {
            op: "load_table",
            what: ident.to_string(),
            source,
        })
}

/// Creates the namespace and every product table that does not exist yet; leaves existing
/// tables alone. Safe to run concurrently: a creation that fails because another process
/// created the same namespace or table meanwhile counts as success (the SQL catalog reports
/// that race as a UNIQUE-constraint error, not as "already exists"), once the table is
/// reloaded and found to have the expected schema.
pub async fn ensure_tables(catalog: &dyn Catalog, namespace: &str) -> Result<(), LakehouseError> {
    let ns = NamespaceIdent::new(namespace.to_string());
    let cat_err = |op, what: String| move |source| LakehouseError::Catalog { op, what, source };
    if !catalog
        .namespace_exists(&ns)
        .await
        .map_err(cat_err("namespace_exists", namespace.into()))?
        && let Err(e) = catalog.create_namespace(&ns, HashMap::new()).await
        && e.kind() != iceberg::ErrorKind::NamespaceAlreadyExists
    {
        // Lost the race to another process? Then the namespace exists now.
        let exists = catalog
            .namespace_exists(&ns)
            .await
            .map_err(cat_err("namespace_exists", namespace.into()))?;
        if !exists {
            return Err(cat_err("create_namespace", namespace.into())(e));
        }
        tracing::info!(namespace, "namespace created by another process meanwhile");
    }
    for def in tables::all() {
        create_if_missing(catalog, &ns, def).await?;
    }
    Ok(())
}

async fn create_if_missing(
    catalog: &dyn Catalog,
    ns: &NamespaceIdent,
    def: TableDef,
) -> Result<(), LakehouseError> {
    let ident = TableIdent::new(ns.clone(), def.name.to_string());
    let what = ident.to_string();
    let err = |op, source| LakehouseError::Catalog {
        op,
        what: what.clone(),
        source,
    };
    let exists = catalog
        .table_exists(&ident)
        .await
        .map_err(|e| err("table_exists", e))?;
    if exists {
        return Ok(());
    }
    let expected = def.schema.clone();
    let creation = TableCreation::builder()
        .name(def.name.to_string())
        .schema(def.schema)
        .partition_spec(def.partition)
        .properties([
            ("write.format.default".to_string(), "parquet".to_string()),
            (
                "write.parquet.compression-codec".to_string(),
                "zstd".to_string(),
            ),
        ])
        .build();
    let created = match catalog.create_table(ns, creation).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    // Another process may have created it between our check and our create: reload.
    let exists = catalog
        .table_exists(&ident)
        .await
        .map_err(|e| err("table_exists", e))?;
    if !exists {
        return Err(err("create_table", created));
    }
    let table = catalog
        .load_table(&ident)
        .await
        .map_err(|e| err("load_table", e))?;
    let found = table.metadata().current_schema();
    if found.as_struct() != expected.as_struct() {
        return Err(LakehouseError::SchemaMismatch {
            table: what,
            found: format!("{:?}", found.as_struct()),
            expected: format!("{:?}", expected.as_struct()),
        });
    }
    tracing::info!(table = %what, "table created by another process meanwhile; schema verified");
    Ok(())
}

/// Reads the named columns of a table's current snapshot (all rows). For tests, the demo and
/// small tables; batch-verify scans with partition filters instead.
pub async fn scan(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    columns: &[&str],
) -> Result<Vec<arrow_array::RecordBatch>, LakehouseError> {
    use futures::TryStreamExt;
    let err = |op: &'static str| {
        let what = ident.to_string();
        move |source| LakehouseError::Catalog { op, what, source }
    };
    let table = catalog.load_table(ident).await.map_err(err("load_table"))?;
    if table.metadata().current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let stream = table
        .scan()
        .select(columns.iter().copied())
        .build()
        .map_err(err("scan"))?
        .to_arrow()
        .await
        .map_err(err("scan"))?;
    stream.try_collect().await.map_err(err("scan"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::config::{Config, RawConfig};

    /// An unreachable catalog fails within the open deadline (it took 2.5 minutes: five
    /// attempts of sqlx's 30 s acquire timeout), naming the URI without its password.
    #[tokio::test]
    async fn an_unreachable_catalog_fails_fast_and_named() {
        let mut raw = RawConfig::default();
        // Port 1 on loopback: nothing listens, every connection is refused.
        raw.catalog.uri = "postgres://recon:planted-pw@127.0.0.1:1/catalog".into();
        let cfg = Config::resolve(raw).unwrap();
        let started = Instant::now();
        let e = match super::open_catalog(&cfg).await {
            Ok(_) => panic!("a catalog on a closed port opened"),
            Err(e) => e.to_string(),
        };
        let took = started.elapsed();
        assert!(
            took < super::OPEN_DEADLINE + Duration::from_secs(5),
            "took {took:?}: {e}"
        );
        assert!(
            e.contains("postgres://recon:***@127.0.0.1:1/catalog"),
            "{e}"
        );
        assert!(!e.contains("planted-pw"), "{e}");
    }

    /// The guard is added once, keeps the URI's other parameters, and yields to the operator's.
    #[test]
    fn the_idle_transaction_guard_is_added_unless_set() {
        let guard = |u: &str| super::with_idle_transaction_guard(u, Duration::from_secs(30));
        let added = guard("postgres://u:p@127.0.0.1:5432/cat");
        let parsed = url::Url::parse(&added).unwrap();
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![(
                "options[idle_in_transaction_session_timeout]".to_string(),
                "15000".to_string()
            )]
        );
        assert_eq!(parsed.password(), Some("p"));
        let kept = guard("postgres://h/cat?sslmode=require");
        assert!(
            kept.starts_with("postgres://h/cat?sslmode=require&options"),
            "{kept}"
        );
        let own = "postgres://h/cat?options=-c%20idle_in_transaction_session_timeout%3D900";
        assert_eq!(guard(own), own);
        let short = super::with_idle_transaction_guard("postgres://h/c", Duration::from_millis(10));
        assert!(short.ends_with("=1000"), "{short}");
    }
}
