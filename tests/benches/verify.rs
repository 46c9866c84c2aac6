//! Benchmark: verify one business day of N events (default 1,000,000; the issue's target is
//! 10,000,000) against the files truth (Parquet), and report throughput and peak memory.
//!
//! ```text
//! cargo bench -p batch-verify --bench verify -- --events 10000000
//! BENCH_EVENTS=10000000 cargo bench -p batch-verify --bench verify
//! ```
//!
//! The day is built first by a child process (so its memory does not count): balanced trips of
//! four events (charge, payment, payout, fee) spread over 8 Kafka partitions, committed to a
//! SQLite-catalog lakehouse in checkpoints of 500,000 events, and the same events written as
//! the generator's `truth_events.parquet`. Then this process verifies the day and prints one
//! JSON line and a human summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use batch_verify::options::{Options, TruthSpec};
use batch_verify::row::Position;
use batch_verify::{BusinessDay, Status, verify};
use chrono::{Duration, NaiveDate};
use recon_pipeline::generate::truth::parquet::ParquetTruth;
use recon_schemas::balance::fold;
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType};
use recon_tests::verify_fixture::Lakehouse;
use rust_decimal::Decimal;

const PARTITIONS: i32 = 8;
const EVENTS_PER_COMMIT: u64 = 500_000;
const DATE: &str = "2025-03-03";

struct Args {
    events: u64,
    dir: Option<PathBuf>,
    setup: bool,
    buckets: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        events: std::env::var("BENCH_EVENTS")
            .ok()
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(1_000_000),
        dir: None,
        setup: false,
        buckets: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => a.events = it.next().context("--events N")?.replace('_', "").parse()?,
            "--dir" => a.dir = Some(it.next().context("--dir DIR")?.into()),
            "--buckets" => a.buckets = it.next().context("--buckets N")?.parse()?,
            "--setup" => a.setup = true,
            "--bench" => {}
            other if other.starts_with("--") => bail!("unknown option {other}"),
            _ => {}
        }
    }
    ensure!(a.events >= 4, "--events must be at least 4");
    Ok(a)
}

/// The `k`-th event (0..4) of trip `t` of `trips`.
fn event(t: u64, k: u64, trips: u64, day_start: chrono::DateTime<chrono::Utc>) -> Event {
    // A deterministic amount in 5.00 ..= 84.99; payout 75 % rounded to the cent, fee the rest.
    let cents = 500 + (t.wrapping_mul(2_654_435_761) % 8_000) as i64;
    let charge = Decimal::new(cents, 2);
    let payout = Decimal::new(cents * 3 / 4, 2);
    let (event_type, amount) = match k {
        0 => (EventType::TripCharge, charge),
        1 => (EventType::RiderPayment, charge),
        2 => (EventType::DriverPayout, payout),
        _ => (EventType::PlatformFee, charge - payout),
    };
    let offset_us =
        (t as i128 * 86_000_000_000 / trips.max(1) as i128) as i64 + k as i64 * 10_000_000;
    Event {
        event_id: uuid::Uuid::from_u64_pair(0x5eed_0000_0000_0000 ^ t.rotate_left(17), k),
        event_type,
        trip_id: format!("trip-{t:09}"),
        amount,
        currency: Currency::USD,
        occurred_at: day_start + Duration::microseconds(offset_us),
        rider_id: Some(format!("rider-{}", t % 100_000)),
        driver_id: (k == 2).then(|| format!("driver-{}", t % 20_000)),
        payment_id: (k == 1).then(|| format!("pay-{t}")),
        payout_id: (k == 2).then(|| format!("po-{t}")),
        schema_version: 1,
    }
}

async fn setup(dir: &Path, events: u64) -> anyhow::Result<()> {
    let day = BusinessDay::new(DATE.parse::<NaiveDate>()?, "UTC")?;
    let lake = Lakehouse::create(dir, "unused:9092", "unused").await?;
    let mut truth = ParquetTruth::create(&dir.join("truth"), "bench")?;
    let trips = events / 4;
    let trips_per_commit = (EVENTS_PER_COMMIT / 4).max(1);
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut seq = 0u64;
    let mut t0 = 0;
    let mut checkpoint = 1;
    while t0 < trips {
        let t1 = (t0 + trips_per_commit).min(trips);
        let mut ledger = Vec::with_capacity(((t1 - t0) * 4) as usize);
        let mut balances = Vec::with_capacity((t1 - t0) as usize);
        let mut offsets = BTreeMap::new();
        for t in t0..t1 {
            let p = (t % PARTITIONS as u64) as i32;
            let evs: Vec<Event> = (0..4).map(|k| event(t, k, trips, day.start)).collect();
            for e in &evs {
                let o = next.entry(p).or_insert(0);
                let r = offsets.entry(p).or_insert((*o, *o, 0u64));
                ledger.push((e.clone(), Position::new(p, *o)));
                *o += 1;
                r.1 = *o;
                r.2 += 1;
                truth.event(seq, e)?;
                seq += 1;
            }
            balances.push((evs[0].trip_id.clone(), fold(evs.iter()).context("fold")?, p));
        }
        lake.commit(checkpoint, &ledger, &[], &balances, &offsets)
            .await?;
        checkpoint += 1;
        t0 = t1;
    }
    truth.finish()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if a.setup {
        let dir = a.dir.context("--setup needs --dir")?;
        return runtime.block_on(setup(&dir, a.events));
    }
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let built = Instant::now();
    let status = Command::new(std::env::current_exe()?)
        .args([
            "--setup",
            "--dir",
            &dir.display().to_string(),
            "--events",
            &a.events.to_string(),
        ])
        .status()
        .context("running the setup child")?;
    ensure!(status.success(), "setting the day up failed: {status}");
    let setup_s = built.elapsed().as_secs_f64();

    let events = a.events / 4 * 4;
    let report = runtime.block_on(async {
        let lake = Lakehouse::create(&dir, "unused:9092", "unused").await?;
        let day = BusinessDay::new(DATE.parse()?, "UTC")?;
        let mut opts = Options::new(
            day,
            TruthSpec::Files {
                url: dir.join("truth").display().to_string(),
            },
        );
        opts.buckets = a.buckets;
        opts.progress = false;
        opts.spill_dir = Some(dir.clone());
        anyhow::Ok(verify(&lake.cfg, lake.catalog.clone(), &opts).await?)
    })?;
    let elapsed_s = report.elapsed_ms as f64 / 1000.0;
    let rss = batch_verify::memory::peak_rss_bytes();
    let line = serde_json::json!({
        "bench": "batch-verify",
        "events": events,
        "status": report.status.as_str(),
        "truth_events": report.truth_events,
        "ledger_events": report.ledger_events,
        "balances_checked": report.balances_checked,
        "elapsed_s": elapsed_s,
        "events_per_s": events as f64 / elapsed_s.max(1e-9),
        "peak_rss_bytes": rss,
        "buckets": a.buckets,
        "setup_s": setup_s,
        "phases_ms": report.phases_ms,
    });
    println!("{line}");
    println!(
        "batch-verify bench: {events} events verified in {elapsed_s:.1} s = {:.0} events/s, peak RSS {:.0} MiB ({} buckets; setup {setup_s:.0} s)",
        events as f64 / elapsed_s.max(1e-9),
        rss as f64 / (1024.0 * 1024.0),
        a.buckets
    );
    ensure!(
        report.status == Status::Clean,
        "the benchmark day should verify clean:\n{report}"
    );
    ensure!(
        report.truth_events == events && report.ledger_events == events,
        "counts: {report}"
    );
    Ok(())
}
