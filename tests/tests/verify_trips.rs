//! A trip across midnight: the day holds only some of its events, so its balance is checked
//! with the neighbouring day's rows; and the same events verified in another time zone, where
//! the business day holds all of them.

use std::io::Write;

use batch_verify::options::{Options, TruthSpec};
use batch_verify::report::{Kind, Status};
use batch_verify::row::Position;
use batch_verify::{BusinessDay, verify};
use chrono::{DateTime, Utc};
use recon_schemas::balance::fold;
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType};
use recon_tests::verify_fixture::Lakehouse;
use rust_decimal::Decimal;

fn event(n: u128, t: EventType, amount: i64, at: &str) -> Event {
    Event {
        event_id: uuid::Uuid::from_u128(0xabc0 + n),
        event_type: t,
        trip_id: "trip-midnight".into(),
        amount: Decimal::new(amount, 2),
        currency: Currency::parse("BRL").unwrap(),
        occurred_at: DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&Utc),
        rider_id: Some("rider-1".into()),
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: 1,
    }
}

async fn check(date: &str, tz: &str, stale: bool) -> batch_verify::Report {
    let events = [
        event(1, EventType::TripCharge, 1000, "2025-03-02T23:50:00Z"),
        event(2, EventType::RiderPayment, 1000, "2025-03-03T00:10:00Z"),
        event(3, EventType::DriverPayout, 750, "2025-03-03T00:20:00Z"),
        event(4, EventType::PlatformFee, 250, "2025-03-03T00:20:00Z"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.jsonl");
    let mut f = std::fs::File::create(&truth).unwrap();
    for (i, e) in events.iter().enumerate() {
        writeln!(
            f,
            "{{\"seq\":{i},\"truth\":\"event\",\"event\":{}}}",
            String::from_utf8(e.to_json()).unwrap()
        )
        .unwrap();
    }
    let ledger: Vec<(Event, Position)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.clone(), Position::new(0, i as i64)))
        .collect();
    let upto = if stale { 3 } else { 4 };
    let balance = fold(events[..upto].iter()).unwrap();
    let lake = Lakehouse::create(dir.path(), "unused:9092", "unused")
        .await
        .unwrap();
    let offsets = [(0, (0, 4, 4))].into();
    lake.commit(
        1,
        &ledger,
        &[],
        &[("trip-midnight".into(), balance, 0)],
        &offsets,
    )
    .await
    .unwrap();
    let day = BusinessDay::new(date.parse().unwrap(), tz).unwrap();
    let mut o = Options::new(
        day,
        TruthSpec::Files {
            url: truth.display().to_string(),
        },
    );
    o.progress = false;
    o.buckets = 2;
    verify(&lake.cfg, lake.catalog.clone(), &o).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_across_midnight_is_checked_with_the_day_before() {
    let r = check("2025-03-03", "UTC", false).await;
    assert_eq!(r.status, Status::Clean, "{r}");
    assert_eq!(
        (r.truth_events, r.ledger_events, r.balances_checked),
        (3, 3, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sao_paulo_the_whole_trip_is_on_the_second() {
    // 2025-03-02 in America/Sao_Paulo is 03:00Z on the 2nd to 03:00Z on the 3rd.
    let r = check("2025-03-02", "America/Sao_Paulo", false).await;
    assert_eq!(r.status, Status::Clean, "{r}");
    assert_eq!((r.truth_events, r.ledger_events), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_balance_across_midnight_is_found() {
    let r = check("2025-03-03", "UTC", true).await;
    assert_eq!(r.status, Status::Discrepancies, "{r}");
    let kinds: Vec<_> = r
        .discrepancies
        .iter()
        .map(|d| (d.kind, d.trip_id.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![(Kind::BalanceMismatch, Some("trip-midnight".to_string()))],
        "{r}"
    );
}
