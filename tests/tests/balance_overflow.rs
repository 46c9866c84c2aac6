//! A trip whose running sum would overflow `decimal(18,3)` must not stop the job (issue 13,
//! finding 6: the fold's error stopped every restart, all partitions stalled).
//!
//! `an_overflowing_trip_is_dead_lettered_and_the_stream_flows`: ordinary traffic with, in the
//! middle, one trip charged 999,999,999,999,999.99 (USD) twice. The real binary must drain it all and
//! exit 0; the second charge is in `rejected_events` as `balance_overflow` (the trip's balance
//! is the first charge alone), every other event lands exactly once, and batch-verify against
//! the Kafka topic reports CLEAN: its own fold refuses the same event.

use std::str::FromStr;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use std::time::Duration;

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

const PARTITIONS: i32 = 2;

/// A charge of the largest money amount on `trip`, on the traffic's business day.
fn huge_charge(trip: &str, n: u128) -> generate::Record {
    let ev = Event {
        event_id: uuid::Uuid::from_u128(0x0ef1_0000_0000_0000_0000_0000_0000_0000 | n),
        event_type: EventType::TripCharge,
        trip_id: trip.to_string(),
        amount: Decimal::from_str("999999999999999.99").unwrap(),
        currency: Currency::USD,
        occurred_at: chrono::DateTime::from_str("2025-03-03T12:00:00Z").unwrap(),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: SCHEMA_VERSION,
    };
    generate::Record {
        partition_hint: None,
        key: Some(trip.as_bytes().to_vec()),
        payload: ev.to_json(),
        kind: RecordKind::Valid(ev),
    }
}

#[test]
fn an_overflowing_trip_is_dead_lettered_and_the_stream_flows() {
    let Some(s) = services_or_skip("an_overflowing_trip_is_dead_lettered_and_the_stream_flows")
    else {
        return;
    };
    let setup = JobSetup::new(&s, "ovf", 300);
    create_topic(&s.kafka_bootstrap, &setup.topic, PARTITIONS);
    let mut records = default_traffic(&setup.topic, 60, 13, PARTITIONS);
    let trip = format!("trip-overflow-{}", &setup.name[setup.name.len() - 6..]);
    let middle = records.len() / 2;
    let (first, second) = (huge_charge(&trip, 1), huge_charge(&trip, 2));
    let refused_id = match &second.kind {
        RecordKind::Valid(e) => e.event_id,
        _ => unreachable!(),
    };
    records.insert(middle, second);
    records.insert(middle, first);
    let mut expected = Expected::default();
    demo::publish(&s.kafka_bootstrap, &setup.topic, &records, &mut expected).expect("publish");
    // The second charge is refused, not ledgered: one more row rejected_events must hold.
    expected.events.remove(&refused_id).expect("published");
    expected.poison += 1;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let child = setup.spawn(2_000, &[], &log);
    let (status, out) = wait_with_deadline(child, &log, Duration::from_secs(120));
    assert_eq!(
        status.code(),
        Some(0),
        "the job must drain the topic:\n{out}"
    );
    assert!(
        out.contains(&format!("records {}", expected.records)),
        "every record read:\n{out}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = Config::load(Some(&setup.config)).expect("config");
        let catalog = lakehouse::open_catalog(&cfg).await.expect("catalog");
        let r = reconcile::check(catalog.as_ref(), &cfg, &expected)
            .await
            .expect("reconcile");
        assert!(r.is_clean(), "{r}");
        let rejected = lakehouse::scan(
            catalog.as_ref(),
            &lakehouse::table_ident(&cfg, "rejected_events"),
            &["reason", "event_id", "trip_id"],
        )
        .await
        .expect("rejected_events");
        let mut rows = Vec::new();
        for b in &rejected {
            let col = |n: &str| {
                b.column_by_name(n)
                    .expect("column")
                    .as_string::<i32>()
                    .clone()
            };
            let (reason, id, t) = (col("reason"), col("event_id"), col("trip_id"));
            for i in 0..b.num_rows() {
                if reason.value(i) == "balance_overflow" {
                    let text = |a: &arrow_array::StringArray| {
                        if a.is_valid(i) {
                            a.value(i).to_string()
                        } else {
                            String::new()
                        }
                    };
                    rows.push((reason.value(i).to_string(), text(&id), text(&t)));
                }
            }
        }
        assert_eq!(
            rows,
            [(
                "balance_overflow".to_string(),
                refused_id.hyphenated().to_string(),
                trip.clone()
            )],
            "the second charge, dead-lettered with its reason"
        );

        use batch_verify::report::Status;
        use batch_verify::truth::kafka::KafkaScan;
        let report = recon_tests::verify_day::kafka_day(
            &cfg,
            catalog.clone(),
            "2025-03-03",
            KafkaScan::Timestamps,
            2,
        )
        .await;
        assert_eq!(report.status, Status::Clean, "{report}");
        assert!(
            report.truth_rejects >= 1 && report.rejected_events >= 1,
            "the refusal is counted as a dead letter on both sides:\n{report}"
        );
    });
}
