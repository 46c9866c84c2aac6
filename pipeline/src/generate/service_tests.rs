//! `run` end to end against the real local services (Kafka 4.x, PostgreSQL) started by
//! `infra/local/up`. Without `RECON_SERVICES=1` (see `infra/local/env`) the test prints a loud
//! SKIPPED line and returns, like the workspace's other real-service tests.
//!
//! It checks the truth's promise: the checksum is the SHA-256 of the JSON Lines file, and
//! rendering the PostgreSQL rows in `seq` order reproduces it byte for byte.

use std::str::FromStr;

use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, Row};

use super::truth::{RejectRow, event_line, reject_line};
use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: GenerateArgs,
}

/// The canonical truth lines of `run_id`, rebuilt from PostgreSQL rows.
async fn lines_from_postgres(url: &str, run_id: &str) -> Vec<(i64, Vec<u8>)> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let mut lines = Vec::new();
    let events = sqlx::query(
        "SELECT seq, event_id::text AS id, event_type, trip_id, amount::text AS amount, currency,
                to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at,
                rider_id, driver_id, payment_id, payout_id, schema_version
         FROM truth_events WHERE run_id = $1 ORDER BY seq",
    )
    .bind(run_id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for row in events {
        let text = |name: &str| row.get::<String, _>(name);
        let event = Event {
            event_id: uuid::Uuid::parse_str(&text("id")).unwrap(),
            event_type: EventType::parse(&text("event_type")).unwrap(),
            trip_id: text("trip_id"),
            amount: Decimal::from_str(&text("amount")).unwrap(),
            currency: Currency::parse(&text("currency")).unwrap(),
            occurred_at: chrono::DateTime::parse_from_rfc3339(&text("at"))
                .unwrap()
                .to_utc(),
            rider_id: row.get("rider_id"),
            driver_id: row.get("driver_id"),
            payment_id: row.get("payment_id"),
            payout_id: row.get("payout_id"),
            schema_version: row.get("schema_version"),
        };
        let seq: i64 = row.get("seq");
        let mut line = Vec::new();
        event_line(&mut line, seq as u64, &event.to_json());
        lines.push((seq, line));
    }
    let rejects = sqlx::query(
        "SELECT seq, class, event_id::text AS id, trip_id, record_key, payload
         FROM truth_rejects WHERE run_id = $1 ORDER BY seq",
    )
    .bind(run_id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for row in rejects {
        let seq: i64 = row.get("seq");
        let class: String = row.get("class");
        let id: Option<String> = row.get("id");
        let trip_id: Option<String> = row.get("trip_id");
        let key: Option<Vec<u8>> = row.get("record_key");
        let payload: Vec<u8> = row.get("payload");
        let mut line = Vec::new();
        reject_line(
            &mut line,
            &RejectRow {
                seq: seq as u64,
                class: &class,
                event_id: id.map(|i| uuid::Uuid::parse_str(&i).unwrap()),
                trip_id: trip_id.as_deref(),
                key: key.as_deref(),
                payload: &payload,
            },
        );
        lines.push((seq, line));
    }
    let status: String = sqlx::query_scalar("SELECT status FROM truth_runs WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(status, "complete");
    lines.sort_by_key(|(seq, _)| *seq);
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_publishes_and_records_a_reproducible_truth() {
    if std::env::var("RECON_SERVICES").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED run_publishes_and_records_a_reproducible_truth: needs RECON_SERVICES=1 (eval \"$(infra/local/env)\")"
        );
        return;
    }
    let brokers = std::env::var("RECON_KAFKA_BOOTSTRAP").expect("RECON_KAFKA_BOOTSTRAP");
    let pg = std::env::var("RECON_PG_TRUTH_URL").expect("RECON_PG_TRUTH_URL");
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("truth.jsonl");
    let topic = format!("recon.generate-test-{}", std::process::id());
    let argv = [
        "generate",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--partitions",
        "3",
        "--trips",
        "2000",
        "--seed",
        "4242",
        "--start-date",
        "2031-01-06",
        "--poison-rate",
        "0.01",
        "--conflict-rate",
        "0.005",
        "--truth-postgres",
        &pg,
        "--truth-jsonl",
        jsonl.to_str().unwrap(),
        "--truth-parquet",
        dir.path().to_str().unwrap(),
        "--no-progress",
    ];
    let summary = run(Cli::parse_from(argv).args).await.unwrap();

    assert_eq!(summary.partitions, 3);
    assert_eq!(summary.delivery.delivered, summary.records);
    assert!(
        summary.truth.events > 8_000 && summary.truth.rejects > 50,
        "{summary}"
    );
    let file = std::fs::read(&jsonl).unwrap();
    assert_eq!(
        summary.truth.checksum_sha256,
        hex::encode(Sha256::digest(&file))
    );
    assert!(dir.path().join("truth_events.parquet").exists());
    let pg_stats = summary.postgres.unwrap();
    assert_eq!(
        pg_stats.events_inserted + pg_stats.events_present,
        summary.truth.events
    );

    let lines = lines_from_postgres(&pg, &summary.truth.run_id).await;
    assert_eq!(
        lines.len() as u64,
        summary.truth.events + summary.truth.rejects
    );
    let mut h = Sha256::new();
    for (_, line) in &lines {
        h.update(line);
    }
    assert_eq!(
        hex::encode(h.finalize()),
        summary.truth.checksum_sha256,
        "PostgreSQL reproduces the checksum"
    );

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}
