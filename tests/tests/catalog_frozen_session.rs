//! A process frozen inside a catalog transaction does not block its successor's commits
//! (soak seed 107 #24: a zombie paused by SIGSTOP between the SQL catalog's `UPDATE` and its
//! `COMMIT` held the table's catalog row lock; the new instance waited on it at every attempt
//! and stopped after `commit.attempts_max`). Against the real PostgreSQL catalog.

use std::time::{Duration, Instant};

use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{NamespaceIdent, TableIdent};
use recon_pipeline::config::{Config, RawConfig};
use recon_pipeline::lakehouse;
use recon_tests::{services_or_skip, unique_name};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_frozen_in_a_catalog_transaction_is_ended_and_the_successor_commits() {
    let Some(s) = services_or_skip(
        "a_session_frozen_in_a_catalog_transaction_is_ended_and_the_successor_commits",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawConfig::default();
    raw.catalog.uri = s.pg_catalog_url.clone();
    raw.catalog.name = unique_name("frozen");
    raw.catalog.warehouse = format!("file://{}", dir.path().display());
    // Guard = half the commit timeout: 1 s.
    raw.commit.timeout_ms = 2_000;
    let cfg = Config::resolve(raw).unwrap();
    let ns = unique_name("frozen");
    let catalog = lakehouse::open_catalog(&cfg).await.unwrap();
    lakehouse::ensure_tables(catalog.as_ref(), &ns)
        .await
        .unwrap();
    let ident = TableIdent::new(NamespaceIdent::new(ns.clone()), "ledger_events".into());

    // The "zombie": a session opened exactly as the job opens its catalog sessions, which takes
    // the table's row lock as the SQL catalog's commit does, and then stops sending anything.
    let guarded = lakehouse::with_idle_transaction_guard(
        &cfg.catalog.uri,
        Duration::from_millis(cfg.commit.timeout_ms),
    );
    let mut zombie = sqlx::PgConnection::connect(&guarded).await.unwrap();
    sqlx::query("BEGIN").execute(&mut zombie).await.unwrap();
    let locked = sqlx::query(
        "UPDATE iceberg_tables SET previous_metadata_location = previous_metadata_location \
         WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = 'ledger_events'",
    )
    .bind(&cfg.catalog.name)
    .bind(&ns)
    .execute(&mut zombie)
    .await
    .unwrap();
    assert_eq!(locked.rows_affected(), 1, "the zombie holds the row lock");

    // The successor commits to the same table: it waits at most for the guard, not for ever.
    let started = Instant::now();
    let table = catalog.load_table(&ident).await.unwrap();
    let tx = Transaction::new(&table);
    let tx = tx
        .update_table_properties()
        .set("recon.test-successor".into(), "1".into())
        .apply(tx)
        .unwrap();
    let committed = tokio::time::timeout(Duration::from_secs(30), tx.commit(catalog.as_ref()))
        .await
        .expect("the successor's commit still waited on the frozen session's lock after 30 s");
    committed.expect("the successor's commit");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "the successor waited {waited:?}"
    );
    let after = catalog.load_table(&ident).await.unwrap();
    assert_eq!(
        after
            .metadata()
            .properties()
            .get("recon.test-successor")
            .map(String::as_str),
        Some("1")
    );

    // The frozen session was ended by the server: its transaction cannot commit.
    let resumed = sqlx::query("COMMIT").execute(&mut zombie).await;
    assert!(
        resumed.is_err(),
        "the frozen session survived the guard and committed"
    );
}
