//! Planted discrepancies, one at a time, against the files truth (the generator's JSON Lines):
//! on untouched data the run is clean with every count equal to the truth; each plant is found
//! with the right key and exit code 1, and nothing else is reported but its arithmetic
//! consequence (the totals of its event type and currency).

use std::collections::BTreeMap;
use std::path::PathBuf;

use batch_verify::options::{Options, TruthSpec};
use batch_verify::report::{Kind, Report, Status};
use batch_verify::row::Position;
use batch_verify::{BusinessDay, verify};
use recon_pipeline::generate::config::Ppm;
use recon_pipeline::generate::plan::RecordKind;
use recon_pipeline::generate::truth::TruthRecorder;
use recon_pipeline::generate::{TrafficConfig, plan};
use recon_schemas::balance::fold;
use recon_schemas::currency::Currency;
use recon_tests::verify_fixture::{Lakehouse, Simulated, place, simulate};
use rust_decimal::Decimal;

const PARTITIONS: i32 = 4;

struct Case {
    _dir: tempfile::TempDir,
    truth: PathBuf,
    sim: Simulated,
    lake: Lakehouse,
    /// Valid events of the day in the truth.
    day_events: u64,
}

async fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let traffic = TrafficConfig {
        trips: 400,
        seed: 11,
        partitions: PARTITIONS,
        // Enough bad input, re-sends and conflicting versions to exercise every path.
        duplicate: Ppm::new(20_000).unwrap(),
        conflict: Ppm::new(10_000).unwrap(),
        poison: Ppm::new(20_000).unwrap(),
        ..TrafficConfig::default()
    };
    let records: Vec<_> = plan(&traffic).collect();
    let truth = dir.path().join("truth.jsonl");
    let mut recorder = TruthRecorder::new("plants").with_jsonl(&truth).unwrap();
    let day = BusinessDay::new("2025-03-03".parse().unwrap(), "UTC").unwrap();
    let mut day_events = 0;
    for r in &records {
        recorder.observe(r).unwrap();
        if let RecordKind::Valid(e) = &r.kind
            && day.contains(e.occurred_at)
        {
            day_events += 1;
        }
    }
    recorder.finish().unwrap();
    let placed = place(
        records
            .iter()
            .map(|r| (r.partition_hint, r.key.clone(), r.payload.clone())),
        PARTITIONS,
    );
    let sim = simulate(&placed);
    let lake = Lakehouse::create(dir.path(), "unused:9092", "unused")
        .await
        .unwrap();
    Case {
        _dir: dir,
        truth,
        sim,
        lake,
        day_events,
    }
}

impl Case {
    async fn commit(&self) {
        let s = &self.sim;
        self.lake
            .commit(1, &s.ledger, &s.rejected, &s.balances(), &s.offsets)
            .await
            .unwrap();
    }

    /// A second commit continuing every partition where the first ended.
    async fn commit_more(
        &self,
        ledger: &[(recon_schemas::event::Event, Position)],
        balances: &[(String, recon_schemas::balance::TripBalance, i32)],
    ) {
        let offsets: BTreeMap<i32, (i64, i64, u64)> = self
            .sim
            .offsets
            .iter()
            .map(|(p, (_, e, _))| (*p, (*e, *e, 0)))
            .collect();
        self.lake
            .commit(2, ledger, &[], balances, &offsets)
            .await
            .unwrap();
    }

    async fn verify(&self) -> Report {
        let day = BusinessDay::new("2025-03-03".parse().unwrap(), "UTC").unwrap();
        let mut opts = Options::new(
            day,
            TruthSpec::Files {
                url: self.truth.display().to_string(),
            },
        );
        opts.buckets = 8;
        opts.progress = false;
        verify(&self.lake.cfg, self.lake.catalog.clone(), &opts)
            .await
            .unwrap()
    }

    /// A USD ledger event of the day whose trip has several events.
    fn victim(&self) -> usize {
        let day = BusinessDay::new("2025-03-03".parse().unwrap(), "UTC").unwrap();
        self.sim
            .ledger
            .iter()
            .position(|(e, _)| {
                e.currency == Currency::USD
                    && day.contains(e.occurred_at)
                    && !e.trip_id.starts_with("poison")
                    && self
                        .sim
                        .ledger
                        .iter()
                        .filter(|(o, _)| o.trip_id == e.trip_id)
                        .count()
                        >= 3
            })
            .unwrap()
    }
}

/// A discrepancy's keys: kind, event, trip, partition, offset.
type Keys = (
    Kind,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i64>,
);

/// The report's discrepancies other than totals, by their keys.
fn found(r: &Report) -> Vec<Keys> {
    r.discrepancies
        .iter()
        .filter(|d| d.kind != Kind::TotalMismatch)
        .map(|d| {
            (
                d.kind,
                d.event_id.clone(),
                d.trip_id.clone(),
                d.kafka_partition,
                d.kafka_offset,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untouched_data_is_clean_and_every_count_equals_the_truth() {
    let c = case().await;
    c.commit().await;
    let r = c.verify().await;
    println!("{r}");
    assert_eq!(r.status, Status::Clean, "{r}");
    assert_eq!(r.status.exit_code(), 0);
    assert_eq!(r.truth_events, c.day_events, "{r}");
    assert_eq!(r.ledger_events, r.truth_events);
    assert_eq!(r.rejected_events, r.truth_rejects);
    assert!(r.truth_rejects > 0, "the generator plants bad records: {r}");
    assert!(r.balances_checked > 300, "{r}");
    assert!(
        r.totals
            .iter()
            .all(|t| t.truth_count == t.ledger_count && t.truth_amount == t.ledger_amount)
    );
    assert_eq!(r.commits_checked, 3);
    // A re-run is a new run, recorded beside the first.
    let again = c.verify().await;
    assert_ne!(again.run_id, r.run_id);
    let runs = recon_pipeline::lakehouse::scan(
        c.lake.catalog.as_ref(),
        &recon_pipeline::lakehouse::table_ident(&c.lake.cfg, "verification_runs"),
        &["run_id", "status"],
    )
    .await
    .unwrap();
    assert_eq!(runs.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_row_is_found_by_event_id() {
    let c = case().await;
    c.commit().await;
    let (e, p) = c.sim.ledger[c.victim()].clone();
    c.commit_more(&[(e.clone(), p)], &[]).await;
    let r = c.verify().await;
    assert_eq!(r.status, Status::Discrepancies);
    assert_eq!(r.status.exit_code(), 1);
    assert_eq!(
        found(&r),
        vec![(
            Kind::DuplicateEventId,
            Some(e.event_id.to_string()),
            Some(e.trip_id),
            Some(p.partition),
            Some(p.offset)
        )],
        "{r}"
    );
    assert_eq!(r.duplicates, 1);
    assert_eq!(r.ledger_events, r.truth_events + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_event_is_found_with_its_position() {
    let mut c = case().await;
    let (e, p) = c.sim.ledger.remove(c.victim());
    c.commit().await;
    let r = c.verify().await;
    assert_eq!(r.status.exit_code(), 1);
    assert_eq!(
        found(&r),
        vec![(
            Kind::Missing,
            Some(e.event_id.to_string()),
            Some(e.trip_id),
            None,
            None
        )],
        "{r}"
    );
    assert_eq!((r.missing, r.totals_mismatches), (1, 1));
    let _ = p;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phantom_row_is_found() {
    let mut c = case().await;
    let (mut e, _) = c.sim.ledger[c.victim()].clone();
    e.event_id = uuid::Uuid::new_v4();
    e.trip_id = "trip-never-sent".into();
    let p = Position::new(0, 1_000_000);
    c.sim.ledger.push((e.clone(), p));
    c.commit().await;
    let r = c.verify().await;
    assert_eq!(r.status.exit_code(), 1);
    assert_eq!(
        found(&r),
        vec![(
            Kind::Phantom,
            Some(e.event_id.to_string()),
            Some(e.trip_id),
            Some(0),
            Some(1_000_000)
        )],
        "{r}"
    );
    assert_eq!(r.phantom, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_off_by_one_cent_is_found() {
    let mut c = case().await;
    let i = c.victim();
    c.sim.ledger[i].0.amount += Decimal::new(1, 2);
    let (e, p) = c.sim.ledger[i].clone();
    c.commit().await;
    let r = c.verify().await;
    assert_eq!(r.status.exit_code(), 1);
    assert_eq!(
        found(&r),
        vec![(
            Kind::AmountMismatch,
            Some(e.event_id.to_string()),
            Some(e.trip_id),
            Some(p.partition),
            Some(p.offset)
        )],
        "{r}"
    );
    assert_eq!((r.amount_mismatches, r.totals_mismatches), (1, 1));
    assert!(
        r.discrepancies.iter().any(
            |d| d.kind == Kind::AmountMismatch && d.detail.contains("0.01")
                || d.detail.contains("ledger")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_currency_is_found() {
    let mut c = case().await;
    let i = c.victim();
    c.sim.ledger[i].0.currency = Currency::EUR;
    let (e, p) = c.sim.ledger[i].clone();
    c.commit().await;
    let r = c.verify().await;
    assert_eq!(r.status.exit_code(), 1);
    assert_eq!(
        found(&r),
        vec![(
            Kind::CurrencyMismatch,
            Some(e.event_id.to_string()),
            Some(e.trip_id),
            Some(p.partition),
            Some(p.offset)
        )],
        "{r}"
    );
    assert_eq!(r.amount_mismatches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_balance_is_found_by_trip() {
    let c = case().await;
    c.commit().await;
    let (e, _) = c.sim.ledger[c.victim()].clone();
    let mut events: Vec<_> = c
        .sim
        .ledger
        .iter()
        .filter(|(o, _)| o.trip_id == e.trip_id)
        .collect();
    events.sort_by_key(|(_, p)| *p);
    let stale = fold(events[..events.len() - 1].iter().map(|(e, _)| e)).unwrap();
    c.commit_more(&[], &[(e.trip_id.clone(), stale, events[0].1.partition)])
        .await;
    let r = c.verify().await;
    assert_eq!(r.status.exit_code(), 1);
    assert_eq!(
        found(&r),
        vec![(Kind::BalanceMismatch, None, Some(e.trip_id), None, None)],
        "{r}"
    );
    assert_eq!((r.balance_mismatches, r.totals_mismatches), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_gap_is_found_with_its_partition_and_offset() {
    let c = case().await;
    c.commit().await;
    let (p, (_, end, _)) = c.sim.offsets.iter().next().map(|(p, r)| (*p, *r)).unwrap();
    let offsets = BTreeMap::from([(p, (end + 3, end + 5, 2))]);
    c.lake.commit(2, &[], &[], &[], &offsets).await.unwrap();
    let r = c.verify().await;
    assert_eq!(r.status.exit_code(), 1);
    let gaps: Vec<_> = found(&r);
    // The pipeline stamps every table's commit: one gap per table, same partition and offset.
    assert_eq!(gaps.len(), 3, "{r}");
    assert!(
        gaps.iter()
            .all(|g| *g == (Kind::OffsetGap, None, None, Some(p), Some(end))),
        "{r}"
    );
    assert_eq!((r.offset_gaps, r.missing, r.phantom), (3, 0, 0));
}
