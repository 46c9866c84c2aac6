//! An event id is one event across the whole job (issue 14): the first trip to carry an id keeps
//! it; a copy on another trip is dead-lettered as `event_id_reused`, every time it comes, and
//! neither trip's balance changes. Before, the job deduplicated per trip and summed the copy a
//! second time (a duplicate charge on the second trip).
//!
//! `a_reused_event_id_is_dead_lettered_across_partitions_and_a_restart`: traffic with a charge
//! on trip A (partition 0) is drained by one run; a second run, restored from the checkpoint,
//! reads the same event id on trip B (partition 1) twice and an event of B's own. The tables
//! hold the id once (on A), two `event_id_reused` dead letters (on B), B's balance is its own
//! event only, and batch-verify against the Kafka topic reports CLEAN.

use std::str::FromStr;
use std::time::Duration;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use recon_pipeline::config::Config;
use recon_pipeline::generate::{self, RecordKind};
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{demo, lakehouse};
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType, SCHEMA_VERSION};
use recon_tests::pipeline::{JobSetup, wait_with_deadline};
use recon_tests::services_or_skip;
use recon_tests::traffic::{create_topic, default_traffic};
use rust_decimal::Decimal;

/// A charge with a fresh id (the truth database outlives a run: ids must not repeat).
fn charge(trip: &str, partition: i32) -> Event {
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: EventType::TripCharge,
        trip_id: trip.to_string(),
        amount: Decimal::from_str("12.34").unwrap(),
        currency: Currency::EUR,
        occurred_at: chrono::DateTime::from_str("2025-03-03T12:00:00Z").unwrap(),
        rider_id: Some(format!("rider-{partition}")),
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: SCHEMA_VERSION,
    }
}

/// `ev` on `partition`; `reused` records are expected in `rejected_events`.
fn record(ev: Event, partition: i32, reused: bool) -> generate::Record {
    generate::Record {
        partition_hint: Some(partition),
        key: Some(ev.trip_id.as_bytes().to_vec()),
        payload: ev.to_json(),
        kind: if reused {
            RecordKind::ConflictingDuplicate(ev)
        } else {
            RecordKind::Valid(ev)
        },
    }
}

fn run_to_idle(setup: &JobSetup, name: &str, dir: &std::path::Path) -> String {
    let log = dir.join(format!("{name}.log"));
    let child = setup.spawn(2_000, &[], &log);
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{name} drains the topic:\n{out}");
    out
}

#[test]
fn a_reused_event_id_is_dead_lettered_across_partitions_and_a_restart() {
    let Some(s) =
        services_or_skip("a_reused_event_id_is_dead_lettered_across_partitions_and_a_restart")
    else {
        return;
    };
    let setup = JobSetup::new(&s, "reuse", 300);
    create_topic(&s.kafka_bootstrap, &setup.topic, 2);
    let suffix = &setup.name[setup.name.len() - 6..];
    let (a, b) = (format!("trip-a-{suffix}"), format!("trip-b-{suffix}"));
    let held = charge(&a, 0);
    let mut copy = held.clone();
    copy.trip_id = b.clone();
    let mut expected = Expected::default();
    // A seed of its own per run: the generator's event ids follow the seed, and the truth
    // database keeps every run's ids.
    let seed = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
    let mut first = default_traffic(&setup.topic, 40, seed, 2);
    first.push(record(held.clone(), 0, false));
    demo::publish(&s.kafka_bootstrap, &setup.topic, &first, &mut expected).expect("publish");
    let dir = tempfile::tempdir().unwrap();
    run_to_idle(&setup, "run1", dir.path());

    let second = [
        record(copy.clone(), 1, true),
        record(copy.clone(), 1, true),
        record(charge(&b, 1), 1, false),
    ];
    demo::publish(&s.kafka_bootstrap, &setup.topic, &second, &mut expected).expect("publish");
    let out = run_to_idle(&setup, "run2", dir.path());
    // The upstream ledger holds an event id once (`truth_events` is keyed by it): the copies are
    // its dead letters, of class `event_id_reused`. The PostgreSQL truth must reach the same
    // verdict as the Kafka topic.
    let upstream: Vec<generate::Record> = first.iter().chain(&second).cloned().collect();
    assert!(out.contains("recovered"), "run 2 restores state:\n{out}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = Config::load(Some(&setup.config)).expect("config");
        let catalog = lakehouse::open_catalog(&cfg).await.expect("catalog");
        let r = reconcile::check(catalog.as_ref(), &cfg, &expected)
            .await
            .expect("reconcile");
        assert!(r.is_clean(), "{r}");

        let id = held.event_id.hyphenated().to_string();
        let scan = |table: &'static str, cols: &'static [&'static str]| {
            let (catalog, ident) = (catalog.clone(), lakehouse::table_ident(&cfg, table));
            async move {
                let batches = lakehouse::scan(catalog.as_ref(), &ident, cols)
                    .await
                    .expect(table);
                let mut rows = Vec::new();
                for batch in &batches {
                    let col = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
                    let cols: Vec<_> = cols.iter().map(|c| col(c)).collect();
                    for i in 0..batch.num_rows() {
                        rows.push(
                            cols.iter()
                                .map(|c| c.is_valid(i).then(|| c.value(i).to_string()))
                                .map(Option::unwrap_or_default)
                                .collect::<Vec<_>>(),
                        );
                    }
                }
                rows
            }
        };
        let ledger: Vec<_> = scan("ledger_events", &["event_id", "trip_id"])
            .await
            .into_iter()
            .filter(|r| r[0] == id)
            .collect();
        assert_eq!(
            ledger,
            [vec![id.clone(), a.clone()]],
            "the id once, on trip A"
        );
        let reused: Vec<_> = scan("rejected_events", &["reason", "event_id", "trip_id"])
            .await
            .into_iter()
            .filter(|r| r[0] == "event_id_reused")
            .collect();
        let want = vec!["event_id_reused".to_string(), id.clone(), b.clone()];
        assert_eq!(reused, [want.clone(), want], "both copies on trip B");
        let latest = reconcile::latest_balances(catalog.as_ref(), &cfg)
            .await
            .expect("balances");
        let (_, sums, _) = &latest[&b];
        assert_eq!(
            sums[0],
            Decimal::from_str("12.34").unwrap(),
            "B: its own charge only"
        );
        let (_, sums, _) = &latest[&a];
        assert_eq!(
            sums[0],
            Decimal::from_str("12.34").unwrap(),
            "A: charged once"
        );

        use batch_verify::report::Status;
        use batch_verify::truth::kafka::KafkaScan;
        let kafka = recon_tests::verify_day::kafka_day(
            &cfg,
            catalog.clone(),
            "2025-03-03",
            KafkaScan::Full,
            2,
        )
        .await;
        assert_eq!(kafka.status, Status::Clean, "{kafka}");
        assert!(
            kafka.truth_rejects >= 2 && kafka.rejected_events >= 2,
            "the copies are dead letters on both sides:\n{kafka}"
        );
        let run_id = format!("{}-truth", setup.name);
        let truth =
            recon_tests::verify_day::postgres_truth(&s.pg_truth_url, &run_id, seed, upstream).await;
        {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&s.pg_truth_url).await.unwrap();
            let moved = sqlx::query(
                "UPDATE truth_rejects SET class = 'event_id_reused' \
                 WHERE run_id = $1 AND event_id = $2::uuid AND trip_id = $3",
            )
            .bind(&run_id)
            .bind(held.event_id.hyphenated().to_string())
            .bind(&b)
            .execute(&mut c)
            .await
            .unwrap();
            assert_eq!(
                moved.rows_affected(),
                2,
                "both copies are the ledger's dead letters"
            );
        }
        let pg = recon_tests::verify_day::day(&cfg, catalog.clone(), "2025-03-03", truth, 3).await;
        assert_eq!(pg.status, Status::Clean, "{pg}");
        let counts = |r: &batch_verify::report::Report| {
            (
                r.truth_events,
                r.ledger_events,
                r.truth_rejects,
                r.rejected_events,
            )
        };
        assert_eq!(
            counts(&pg),
            counts(&kafka),
            "the two truths agree:\n{pg}\n{kafka}"
        );
    });
}
