//! Bounded state at scale, without Kafka: `trips` trips over `days` simulated days with about
//! `open` open at any time, each of four events spread over its life (charge, payment, payout,
//! fee: BALANCED at the end), 1 % with a late refund two days after they settled, 0.5 % with an
//! exact re-send after they settled. State, eviction, the cold runs and the state files are
//! the job's own (`State`, `cold::runs::ColdTier`, `codec`, a local `CheckpointLog`); only
//! Kafka and the tables are left out. Measures peak resident memory, barrier time (evict +
//! delta + run), recovery time (state chain + cold tier), and checks every trip's final
//! balance against its expected sums.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType};
use rust_decimal::Decimal;
use serde_json::json;

use crate::checkpoint::fold::{ChainFold, install};
use crate::checkpoint::log::CheckpointLog;
use crate::checkpoint::manifest::state_checksum;
use crate::checkpoint::store::ObjectCheckpointStore;
use crate::cold::runs::ColdTier;
use crate::ids::{CheckpointId, Generation, JobId};
use crate::state::evict::EvictPolicy;
use crate::state::{Outcome, State, codec};

use super::{percentile, rss_bytes};

const HOUR_US: i64 = 3_600_000_000;
/// The late horizon of the run: a trip with no event for 3 days is closed.
const HORIZON_US: i64 = 72 * HOUR_US;
/// Cold runs merge up to this size (a merge holds its output in memory).
const MERGE_BYTES_MAX: u64 = 64 << 20;
/// Simulated event time between barriers (simulated days pass in seconds: a barrier per
/// simulated minute would scan every slot tens of thousands of times).
const BARRIER_EVERY_US: i64 = 600_000_000;
/// A chain is folded once it holds this many deltas.
const FOLD_AFTER_DELTAS: usize = 50;

fn event(trip: u64, n: u8, at_us: i64) -> Event {
    let kind = match n {
        0 => EventType::TripCharge,
        1 => EventType::RiderPayment,
        2 => EventType::DriverPayout,
        3 => EventType::PlatformFee,
        _ => EventType::Refund,
    };
    let fare = 1_000 + (trip % 5_000) as i64;
    let cents = match n {
        0 | 1 => fare,
        2 => fare * 8 / 10,
        3 => fare - fare * 8 / 10,
        _ => 100,
    };
    Event {
        event_id: uuid::Uuid::from_u128((u128::from(trip) << 8) | u128::from(n)),
        event_type: kind,
        trip_id: format!("trip-{trip:012}"),
        amount: Decimal::new(cents, 2),
        currency: Currency::USD,
        occurred_at: chrono::DateTime::from_timestamp_micros(1_764_000_000_000_000 + at_us)
            .expect("time"),
        rider_id: None,
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: 1,
    }
}

/// Runs the bounded-state measurement.
pub async fn run(
    dir: &std::path::Path,
    trips: u64,
    open: u64,
    days: u64,
) -> anyhow::Result<serde_json::Value> {
    let span_us = days as i64 * 24 * HOUR_US;
    let interval_us = (span_us / trips.max(1) as i64).max(1);
    // Little's law: open = arrival rate x life.
    let life_us = (open as i64).saturating_mul(interval_us);
    let store_dir = dir.join("bounded-store");
    std::fs::create_dir_all(&store_dir)?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&store_dir)?;
    let store = std::sync::Arc::new(ObjectCheckpointStore::new(std::sync::Arc::new(fs)));
    let log = CheckpointLog::new(store, "", JobId::new("bounded-bench").expect("job id"));
    let cold_dir = dir.join("bounded-cold");
    let mut cold = ColdTier::open(&log, &cold_dir, &[], &[], MERGE_BYTES_MAX).await?;
    let mut fold = ChainFold::default();
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    let mut folds = 0u64;
    let (mut fold_ms, mut background) = (Vec::new(), Vec::new());
    // Barrier parts: evict, encode the delta, write it, write the cold run, the rest.
    let mut parts: [Vec<Duration>; 5] = Default::default();
    let policy = EvictPolicy {
        settled_after_us: Some(HOUR_US),
        idle_after_us: Some(7 * 24 * HOUR_US),
        horizon_us: Some(HORIZON_US),
        scan_per_barrier: 2_000_000,
    };
    let mut state = State::default();
    state.set_horizon(Some(HORIZON_US));
    // (time, trip, event number): the next event of every open trip, plus late ones.
    let mut queue: BinaryHeap<Reverse<(i64, u64, u8)>> = BinaryHeap::new();
    let mut next_trip = 0u64;
    let mut next_barrier = BARRIER_EVERY_US;
    let mut id = 0u64;
    let mut chain: Vec<String> = Vec::new();
    let (mut barriers, mut events, mut brought, mut evicted) = (Vec::new(), 0u64, 0u64, 0u64);
    let (mut late, mut resent, mut beyond, mut peak_hot) = (0u64, 0u64, 0u64, 0usize);
    let (mut mid_recoveries, mut peak_before_recovery) = (Vec::new(), 0u64);
    let mut recovery_due = false;
    let started = Instant::now();
    loop {
        let arrival = (next_trip < trips).then(|| next_trip as i64 * interval_us);
        let due = queue.peek().map(|Reverse((t, ..))| *t);
        let now = match (arrival, due) {
            (Some(a), Some(d)) => a.min(d),
            (Some(a), None) => a,
            (None, Some(d)) => d,
            (None, None) => break,
        };
        if now >= next_barrier {
            id += 1;
            // Simulated time runs ~10,000x faster than the job's: between two barriers the
            // job has ten minutes of input time for a background merge of at most 64 MiB (~1 s),
            // the bench a few milliseconds. So the bench lets a running merge and fold finish
            // here, outside the barrier's measured time, and reports their durations apart.
            let waited = Instant::now();
            cold.finish_merge(CheckpointId(id)).await?;
            if let Some(done) = fold.wait().await.map_err(anyhow::Error::msg)? {
                fold_ms.push(done.took);
                if install(&mut chain, &mut sums, &done) {
                    folds += 1;
                    // As the job's prune does (it keeps a few checkpoints more): the folded
                    // files are read by no chain any more.
                    for p in &done.replaces {
                        log.delete_file(p).await?;
                    }
                }
            }
            background.push(waited.elapsed());
            cold.collect(&log, CheckpointId(id)).await?;
            if id.is_multiple_of(144 * (days / 4).max(1)) && next_trip < trips {
                recovery_due = true;
            }
            let mut t0 = Instant::now();
            let out = state.evict(state.high_water_us().unwrap_or(0), &policy);
            let t_evict = t0.elapsed();
            let changed = state.take_changed();
            // As the job's barrier does: a delta, a finished fold taken in, a cold run, a
            // merge taken in or started; folds and merges run in the background.
            let full = chain.is_empty();
            let bytes = if full {
                codec::encode_full(&state)
            } else {
                codec::encode_delta(
                    changed.iter().map(|c| state.trip(*c)),
                    out.iter().map(|e| e.trip_id.as_str()),
                )
            };
            let sum = state_checksum(&bytes);
            let t_delta = t0.elapsed();
            let path = log
                .write_state(CheckpointId(id), Generation(1), bytes)
                .await?;
            sums.insert(path.clone(), sum);
            chain.push(path);
            evicted += out.len() as u64;
            let t_write = t0.elapsed();
            cold.add(&log, CheckpointId(id), Generation(1), &out)
                .await?;
            let t_cold = t0.elapsed();
            if recovery_due && chain.len() > FOLD_AFTER_DELTAS {
                // Recovery while the job is at full size (~`open` trips in memory), from the
                // longest chain (a full file and `FOLD_AFTER_DELTAS` deltas: the fold is due),
                // with no merge or fold running (the machine has 2 cores; a restart runs
                // neither): what a restart at this checkpoint restores, timed, then compared
                // trip by trip with the live state. A real restart is a fresh process: the
                // restored copy's memory is reported apart and the peak is measured without it.
                let paused = Instant::now();
                recovery_due = false;
                peak_before_recovery = peak_before_recovery.max(peak_rss_bytes());
                let before = rss_bytes();
                let (restored, _, took) =
                    recover(&log, &chain, &sums, CheckpointId(id), &cold_dir, &cold).await?;
                let added = rss_bytes().saturating_sub(before);
                anyhow::ensure!(
                    restored.trips() == state.trips(),
                    "recovery at checkpoint {id}: {} trips restored, {} live",
                    restored.trips(),
                    state.trips()
                );
                for t in state.iter() {
                    let r = restored.get(t.trip_id()).ok_or_else(|| {
                        anyhow::anyhow!("recovery at checkpoint {id}: {} is lost", t.trip_id())
                    })?;
                    anyhow::ensure!(
                        r.balance() == t.balance() && r.seen == t.seen,
                        "recovery at checkpoint {id}: {} differs",
                        t.trip_id()
                    );
                }
                eprintln!(
                    "bench: bounded: recovery at day {} (checkpoint {id}, {} files): {} trips restored and equal to the live state in {:.0} ms (restored copy {} MiB)",
                    id / 144,
                    chain.len(),
                    restored.trips(),
                    took.as_secs_f64() * 1000.0,
                    added >> 20
                );
                mid_recoveries.push(json!({
                    "day": id / 144,
                    "trips_restored": restored.trips(),
                    "chain_files": chain.len(),
                    "recovery_ms": took.as_secs_f64() * 1000.0,
                    "restored_copy_bytes": added,
                }));
                drop(restored);
                reset_peak_rss();
                // Not part of the barrier.
                t0 += paused.elapsed();
            }
            cold.maintain(
                &log,
                (CheckpointId(id), Generation(1)),
                state.horizon_cutoff_us(),
            )
            .await?;
            fold.start(&log, &chain, &sums, CheckpointId(id), FOLD_AFTER_DELTAS);
            barriers.push((t0.elapsed(), full));
            parts[0].push(t_evict);
            parts[1].push(t_delta - t_evict);
            parts[2].push(t_write - t_delta);
            parts[3].push(t_cold - t_write);
            parts[4].push(t0.elapsed() - t_cold);
            peak_hot = peak_hot.max(state.trips());
            if id.is_multiple_of(144) {
                // A line per simulated day: a long run shows where it is.
                let d: Vec<Duration> = barriers.iter().map(|(d, _)| *d).collect();
                let p99: Vec<String> = parts
                    .iter()
                    .map(|p| format!("{:.1}", percentile(p.clone(), 0.99)))
                    .collect();
                eprintln!(
                    "bench: bounded: day {} of {days}: {events} events, {} trips in memory, {} cold runs, RSS {} MiB, barrier p99 {:.1} ms (evict/delta/write/cold/rest {}), {:.0} s",
                    id / 144,
                    state.trips(),
                    cold.refs().len(),
                    rss_bytes() >> 20,
                    percentile(d, 0.99),
                    p99.join("/"),
                    started.elapsed().as_secs_f64()
                );
            }
            next_barrier += BARRIER_EVERY_US;
            continue;
        }
        let (ev, n) = if arrival == Some(now) {
            let t = next_trip;
            next_trip += 1;
            queue.push(Reverse((now + life_us / 3, t, 1)));
            (event(t, 0, now), 0)
        } else {
            let Reverse((_, t, n)) = queue.pop().expect("due");
            match n {
                1 | 2 => queue.push(Reverse((now + life_us / 3, t, n + 1))),
                3 if t % 100 == 7 => queue.push(Reverse((now + 48 * HOUR_US, t, 4))),
                3 if t % 200 == 3 => queue.push(Reverse((now + 48 * HOUR_US, t, 5))),
                // A refund 5 days after the trip's last event: beyond the horizon.
                // (Only while trips still arrive: after the last one, the partitions stop
                // moving and the horizon's watermark with them, as in a job whose input ends.)
                3 if t % 1000 == 11 && now + 120 * HOUR_US < span_us => {
                    queue.push(Reverse((now + 120 * HOUR_US, t, 6)))
                }
                _ => {}
            }
            match n {
                4 => late += 1,
                5 => resent += 1,
                6 => beyond += 1,
                _ => {}
            }
            // 5: the payment re-sent, byte for byte (its first time: a third of a life in).
            if n == 5 {
                (event(t, 1, t as i64 * interval_us + life_us / 3), n)
            } else {
                (event(t, n, now), n)
            }
        };
        let b = crate::cold::bring_back(&mut state, &mut cold, &ev).await?;
        brought += u64::from(b.trip) + u64::from(b.holder);
        let o = state.apply(&ev, (ev.event_id.as_u128() >> 8) as i32 % 16)?;
        let want = match n {
            5 => Outcome::ExactDuplicate,
            6 => Outcome::BeyondHorizon { trip_closed: true },
            _ => Outcome::Accepted,
        };
        anyhow::ensure!(o == want, "{}: {o:?}, expected {want:?}", ev.event_id);
        events += 1;
    }
    let run_s = started.elapsed().as_secs_f64();
    let peak_rss = peak_rss_bytes().max(peak_before_recovery);

    // Recovery at the end: the state chain plus the cold tier's indexes (local copies present).
    let (mut restored, mut reopened, recovery) =
        recover(&log, &chain, &sums, CheckpointId(id), &cold_dir, &cold).await?;
    let refs = cold.refs();

    // Every trip exact: charged = collected = fare, paid out + fees = fare, refunds 1.00.
    let mut checked = 0u64;
    for t in (0..trips).step_by((trips / 20_000).max(1) as usize) {
        let probe = event(t, 0, 0);
        crate::cold::bring_back(&mut restored, &mut reopened, &probe).await?;
        let b = restored
            .get(&probe.trip_id)
            .ok_or_else(|| anyhow::anyhow!("trip {t} is lost"))?
            .balance();
        let fare = Decimal::new(1_000 + (t % 5_000) as i64, 2);
        let refunded = if t % 100 == 7 {
            Decimal::new(100, 2)
        } else {
            Decimal::ZERO
        };
        anyhow::ensure!(
            b.charged == fare
                && b.collected == fare
                && b.paid_out + b.fees == fare
                && b.refunded == refunded,
            "trip {t}: {b:?}"
        );
        checked += 1;
    }
    let durations: Vec<Duration> = barriers.iter().map(|(d, _)| *d).collect();
    let deltas: Vec<Duration> = barriers
        .iter()
        .filter(|(_, f)| !f)
        .map(|(d, _)| *d)
        .collect();
    let summary = json!({
        "trips": trips,
        "days": days,
        "open_target": open,
        "events": events,
        "late_refunds": late,
        "resent_duplicates": resent,
        "beyond_horizon_dead_lettered": beyond,
        "cold_ids": refs.iter().map(|r| r.ids).sum::<u64>(),
        "cold_bytes": refs.iter().map(|r| r.bytes).sum::<u64>(),
        "evicted": evicted,
        "brought_back": brought,
        "peak_hot_trips": peak_hot,
        "cold_runs": refs.len(),
        "chain_folds": folds,
        "barrier_parts_ms_p99": {
            "evict": percentile(parts[0].clone(), 0.99),
            "encode_delta": percentile(parts[1].clone(), 0.99),
            "write_delta": percentile(parts[2].clone(), 0.99),
            "cold_run": percentile(parts[3].clone(), 0.99),
            "rest": percentile(parts[4].clone(), 0.99),
        },
        "fold_ms_p50": percentile(fold_ms.clone(), 0.5),
        "fold_ms_max": percentile(fold_ms, 1.0),
        "background_wait_ms_p99": percentile(background.clone(), 0.99),
        "background_wait_ms_max": percentile(background, 1.0),
        "chain_files_at_end": chain.len(),
        "cold_records": reopened.records(),
        "cold_index_bytes": reopened.memory_bytes(),
        "peak_rss_bytes": peak_rss,
        "rss_end_bytes": rss_bytes(),
        "barriers": barriers.len(),
        "barrier_ms_p50": percentile(durations.clone(), 0.5),
        "barrier_ms_p99": percentile(durations.clone(), 0.99),
        "barrier_ms_max": percentile(durations, 1.0),
        "delta_barrier_ms_p99": percentile(deltas, 0.99),
        "recovery_ms": recovery.as_secs_f64() * 1000.0,
        "recovery_at_full_size": mid_recoveries,
        "trips_checked_exact": checked,
        "run_s": run_s,
    });
    println!(
        "bench: bounded state: {trips} trips over {days} days, peak {peak_hot} in memory, {evicted} evictions, {brought} brought back; peak RSS {:.0} MiB; barrier p50 {:.1} ms p99 {:.1} ms (delta-only p99 {:.1} ms); recovery {:.0} ms; {checked} trips checked exact",
        peak_rss as f64 / (1 << 20) as f64,
        summary["barrier_ms_p50"].as_f64().unwrap_or(0.0),
        summary["barrier_ms_p99"].as_f64().unwrap_or(0.0),
        summary["delta_barrier_ms_p99"].as_f64().unwrap_or(0.0),
        recovery.as_secs_f64() * 1000.0,
    );
    Ok(summary)
}

/// Restores the state chain and reopens the cold tier as a restart does; returns both and the
/// time taken.
async fn recover(
    log: &CheckpointLog,
    chain: &[String],
    sums: &BTreeMap<String, String>,
    head: CheckpointId,
    cold_dir: &std::path::Path,
    cold: &ColdTier,
) -> anyhow::Result<(State, ColdTier, Duration)> {
    let t0 = Instant::now();
    let mut files = Vec::with_capacity(chain.len());
    for rel in chain {
        files.push((
            rel.clone(),
            log.read_checked(rel, sums.get(rel), head).await?,
        ));
    }
    let mut restored = State::default();
    codec::restore_chain(&mut restored, &files)?;
    drop(files);
    let reopened =
        ColdTier::open(log, cold_dir, &cold.refs(), cold.retired(), MERGE_BYTES_MAX).await?;
    Ok((restored, reopened, t0.elapsed()))
}

/// Starts a new peak for [`peak_rss_bytes`] (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::warn!("cannot reset the peak RSS ({e}): the peak includes the recovery copy");
    }
}

/// Peak resident set (VmHWM) of this process.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
