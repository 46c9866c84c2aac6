//! Readers and checks of the job's optional outputs (the transactional alerts topic, the
//! PostgreSQL current-balance table), shared by the single-process and fleet tests.

use std::collections::HashMap;
use std::time::Duration;

use recon_pipeline::config::Config;
use recon_pipeline::ids::JobId;
use recon_pipeline::outputs::alerts::{self, Alert, InputRecord, Watch};
use recon_schemas::decode::Limits;
use rust_decimal::Decimal;

use crate::traffic::read_topic;

/// Appends `[alerts]` (topic `<name>.alerts`, 2 partitions) and `[current_balances]` (97 rows
/// per upsert statement, so a checkpoint takes several) to the configuration file; returns the
/// alerts topic.
pub fn enable(config: &std::path::Path, name: &str) -> String {
    use std::io::Write;
    let topic = format!("{name}.alerts");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(config)
        .expect("config file");
    write!(
        f,
        "\n[alerts]\nenabled = true\ntopic = \"{topic}\"\npartitions = 2\n\n[current_balances]\nenabled = true\nbatch_rows = 97\n"
    )
    .expect("append outputs");
    topic
}

/// The alerts in the topic (`read_committed`), keyed by id; panics on a duplicate id or a record
/// not keyed by its trip.
pub fn alerts_in_topic(brokers: &str, topic: &str) -> HashMap<uuid::Uuid, Alert> {
    let mut got = HashMap::new();
    for r in read_topic(brokers, topic, Duration::from_secs(60)) {
        let a: Alert = serde_json::from_slice(&r.payload).expect("an alert record");
        assert_eq!(
            r.key.as_deref(),
            Some(a.trip_id.as_bytes()),
            "keyed by trip"
        );
        if let Some(prev) = got.insert(a.alert_id, a.clone()) {
            panic!(
                "alert {} is in the topic twice:\n{prev:?}\n{a:?}",
                a.alert_id
            );
        }
    }
    got
}

/// `(sums, status)` per trip of `job` in the current-balance table.
pub async fn current_balances(url: &str, job: &str) -> HashMap<String, ([Decimal; 6], String)> {
    use sqlx::{Connection, Row};
    let mut c = sqlx::PgConnection::connect(url).await.expect("postgres");
    let rows = sqlx::query(
        "SELECT trip_id, charged::text, collected::text, refunded::text, paid_out::text, fees::text,
                adjusted::text, status FROM recon_current_balances WHERE job_id = $1",
    )
    .bind(job)
    .fetch_all(&mut c)
    .await
    .expect("select current balances");
    rows.iter()
        .map(|r| {
            let sums: [Decimal; 6] = std::array::from_fn(|i| {
                r.get::<String, _>(i + 1)
                    .parse::<Decimal>()
                    .expect("numeric")
            });
            (r.get::<String, _>(0), (sums, r.get::<String, _>(7)))
        })
        .collect()
}

/// With the job stopped and every checkpoint committed: the alerts topic holds exactly one
/// alert per status transition the input topic implies (derived here, `Watch` =
/// `DISCREPANCY`, ids of `cfg.job_id`), and the current-balance table equals every trip's
/// latest `trip_balances` row. Returns (alerts, current-balance rows).
pub async fn check_exact(
    cfg: &Config,
    catalog: &dyn iceberg::Catalog,
    brokers: &str,
    input_topic: &str,
    alerts_topic: &str,
    pg_url: &str,
    records: u64,
) -> (usize, usize) {
    let input = {
        let (b, t) = (brokers.to_string(), input_topic.to_string());
        tokio::task::spawn_blocking(move || read_topic(&b, &t, Duration::from_secs(60)))
            .await
            .expect("input reader")
    };
    assert_eq!(input.len() as u64, records, "input read back");
    let job = JobId::new(cfg.job_id.as_str()).expect("job id");
    let want = alerts::derive(
        &job,
        &Watch::new(vec!["DISCREPANCY"]),
        input.iter().map(|r| InputRecord {
            partition: r.partition,
            offset: r.offset,
            key: r.key.as_deref(),
            payload: &r.payload,
        }),
        &Limits::default(),
    );
    assert!(
        want.len() > 20,
        "noisy traffic must raise alerts: {}",
        want.len()
    );
    let got = {
        let (b, t) = (brokers.to_string(), alerts_topic.to_string());
        tokio::task::spawn_blocking(move || alerts_in_topic(&b, &t))
            .await
            .expect("alerts reader")
    };
    let mut missing = 0;
    for w in &want {
        match got.get(&w.alert_id) {
            None => missing += 1,
            Some(g) => {
                let mut g = g.clone();
                g.checkpoint_id = 0;
                assert_eq!(&g, w, "alert content");
            }
        }
    }
    assert_eq!(missing, 0, "{missing} of {} alerts missing", want.len());
    assert_eq!(got.len(), want.len(), "alerts that no transition explains");

    let latest = recon_pipeline::reconcile::latest_balances(catalog, cfg)
        .await
        .expect("latest balances");
    let pg = current_balances(pg_url, cfg.job_id.as_str()).await;
    assert_eq!(pg.len(), latest.len(), "one row per trip");
    for (trip, (_, sums, status)) in &latest {
        let row = pg
            .get(trip)
            .unwrap_or_else(|| panic!("trip {trip} missing from current balances"));
        assert_eq!(&row.0, sums, "trip {trip} sums");
        assert_eq!(&row.1, status, "trip {trip} status");
    }
    (got.len(), pg.len())
}
