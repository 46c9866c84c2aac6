//! Two jobs creating the tables on a fresh catalog namespace at the same moment both start
//! (issue 13, finding 9: one died on a UNIQUE constraint of the SQL catalog), against the real
//! PostgreSQL catalog.

use std::sync::Arc;

use recon_pipeline::config::{Config, RawConfig};
use recon_pipeline::lakehouse;
use recon_tests::{services_or_skip, unique_name};

/// Rounds of the race, each on a fresh namespace: one lost race is enough to fail before the fix.
const ROUNDS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ensure_tables_on_a_fresh_namespace_both_succeed() {
    let Some(s) = services_or_skip("concurrent_ensure_tables_on_a_fresh_namespace_both_succeed")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawConfig::default();
    raw.catalog.uri = s.pg_catalog_url.clone();
    raw.catalog.name = unique_name("race");
    raw.catalog.warehouse = format!("file://{}", dir.path().display());
    let cfg = Config::resolve(raw).unwrap();
    // Two catalogs, two pools: two processes as far as PostgreSQL can tell.
    let a = lakehouse::open_catalog(&cfg).await.unwrap();
    let b = lakehouse::open_catalog(&cfg).await.unwrap();
    for round in 0..ROUNDS {
        let ns = unique_name(&format!("race{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let run = |catalog: Arc<dyn iceberg::Catalog>| {
            let (ns, barrier) = (ns.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                lakehouse::ensure_tables(catalog.as_ref(), &ns).await
            })
        };
        let (ra, rb) = tokio::join!(run(a.clone()), run(b.clone()));
        for r in [ra.unwrap(), rb.unwrap()] {
            if let Err(e) = r {
                panic!("round {round}: {e}");
            }
        }
        // Both see every table, with the product's schema.
        for def in recon_schemas::tables::all() {
            let ident = iceberg::TableIdent::new(
                iceberg::NamespaceIdent::new(ns.clone()),
                def.name.to_string(),
            );
            let t = b.load_table(&ident).await.unwrap();
            assert!(
                t.metadata().current_schema().as_struct() == def.schema.as_struct(),
                "round {round}: {ident} has another schema"
            );
        }
    }
}
