//! What a scenario publishes: the generator's seeded traffic, plus hand-made hostile records
//! (huge payloads, duplicate bursts with conflicting content, a trip in two currencies, clock-skewed
//! timestamps), the accounting of what the tables must then hold, and a publisher that rides out
//! broker outages without ever sending a record twice.
//!
//! Every hand-made record is classified by running the pipeline's own decoder over its bytes
//! before it is sent (and the harness refuses to run when the class is not the intended one), so
//! the expectation never guesses how the decoder reads a record.

use std::collections::{BTreeSet, HashMap};

pub mod late;
mod publish;
mod reuse;
pub use publish::{Published, publish};
pub use reuse::key_partition;
use reuse::reused_ids;

use anyhow::{bail, ensure};
use chrono::{DateTime, NaiveDate, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recon_pipeline::generate::config::Ppm;
use recon_pipeline::generate::{Record, RecordKind, TrafficConfig, plan};
use recon_pipeline::reconcile::Expected;
use recon_schemas::currency::Currency;
use recon_schemas::decode::{self, Limits, RejectReason};
use recon_schemas::event::{Event, EventType, SCHEMA_VERSION};
use rust_decimal::Decimal;
use serde_json::Value;

/// Hostile input classes a scenario can add to the generator's own noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Hostile {
    /// 10% of all records are bad input (every rejection class, cycled by the generator).
    PoisonFlood,
    /// Valid events padded to just under the payload limit, and records of 100 KB - 900 KB.
    HugePayloads,
    /// Bursts of 20-60 exact re-sends of one event, and 3-6 conflicting versions of another.
    DuplicateBurst,
    /// Trips that receive an event in a second currency.
    TwoCurrencies,
    /// Whole trips dated 2000-01-01 and 2099-12-31, offsets of +14:00 / -12:00, an event of an
    /// ordinary trip dated 2099, and timestamps just outside the accepted range.
    ClockSkew,
    /// Copies of accepted events under another trip's id and key (an event id is one event
    /// across the job: each copy is an `event_id_reused` dead letter). Not in [`Hostile::ALL`]
    /// (drawn on its own stream, so the plans of older seeds are unchanged).
    ReusedId,
}

impl Hostile {
    /// Every class.
    pub const ALL: [Hostile; 5] = [
        Hostile::PoisonFlood,
        Hostile::HugePayloads,
        Hostile::DuplicateBurst,
        Hostile::TwoCurrencies,
        Hostile::ClockSkew,
    ];

    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Hostile::PoisonFlood => "poison_flood_10pct",
            Hostile::HugePayloads => "huge_payloads",
            Hostile::DuplicateBurst => "duplicate_burst_conflicting",
            Hostile::TwoCurrencies => "trip_in_two_currencies",
            Hostile::ClockSkew => "clock_skewed_timestamps",
            Hostile::ReusedId => "event_id_reused_on_another_trip",
        }
    }
}

/// The traffic of one scenario.
#[derive(Clone, Debug)]
pub struct TrafficSpec {
    /// Generator seed.
    pub seed: u64,
    /// Trips.
    pub trips: u64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Hostile classes added.
    pub hostile: Vec<Hostile>,
    /// Keep every record of a trip in one partition's order even if partitions are added later:
    /// no re-sends, no conflicting versions, no second currency (their "first" would depend on the
    /// order across partitions, which Kafka does not define).
    pub order_safe: bool,
    /// Trips in flight at once in the generator (`None`: its default); small with bounded
    /// state, so the stream runs in event-time order and trips settle while it flows.
    pub concurrent_trips: Option<u32>,
}

/// Counts of what was planned, by class.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TrafficCounts {
    /// All records.
    pub records: u64,
    /// Distinct valid events.
    pub events: u64,
    /// Exact re-sends.
    pub duplicates: u64,
    /// Conflicting versions.
    pub conflicts: u64,
    /// Bad records.
    pub poison: u64,
    /// Hand-made hostile records among the above.
    pub hostile_records: u64,
    /// Largest payload, bytes.
    pub largest_payload: usize,
}

/// The planned records and what they must produce.
pub struct Traffic {
    /// In publish order.
    pub records: Vec<Record>,
    /// Counts.
    pub counts: TrafficCounts,
}

fn ppm(f: f64) -> Ppm {
    Ppm::new((f * 1e6).round() as u32).expect("rate within 0..=1")
}

fn decode_as(key: Option<&[u8]>, payload: &[u8]) -> Result<Event, RejectReason> {
    decode::decode(key, payload, &Limits::default()).map_err(|e| e.reason())
}

/// A payload built from `ev`'s canonical JSON with field edits.
fn edited(ev: &Event, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&ev.to_json()).expect("canonical JSON parses");
    let obj = v.as_object_mut().expect("an event is an object");
    edit(obj);
    serde_json::to_vec(&v).expect("serializes")
}

fn valid(key: &str, payload: Vec<u8>) -> anyhow::Result<Record> {
    match decode_as(Some(key.as_bytes()), &payload) {
        Ok(ev) => Ok(Record {
            partition_hint: None,
            key: Some(key.as_bytes().to_vec()),
            payload,
            kind: RecordKind::Valid(ev),
        }),
        Err(r) => bail!("a hand-made valid record was rejected by the decoder as {r:?}"),
    }
}

fn poison(key: &str, payload: Vec<u8>, want: RejectReason) -> anyhow::Result<Record> {
    match decode_as(Some(key.as_bytes()), &payload) {
        Err(r) if r == want => Ok(Record {
            partition_hint: None,
            key: Some(key.as_bytes().to_vec()),
            payload,
            kind: RecordKind::Poison(r),
        }),
        Err(r) => bail!("a hand-made bad record was rejected as {r:?}, meant {want:?}"),
        Ok(_) => bail!("a hand-made bad record ({want:?}) was accepted by the decoder"),
    }
}

fn base_event(
    rng: &mut ChaCha8Rng,
    trip: &str,
    t: EventType,
    cents: i64,
    at: DateTime<Utc>,
) -> Event {
    Event {
        event_id: uuid::Builder::from_random_bytes(rng.random()).into_uuid(),
        event_type: t,
        trip_id: trip.to_string(),
        amount: Decimal::new(cents, 2),
        currency: Currency::USD,
        occurred_at: at,
        rider_id: Some(format!("rider-{}", rng.random_range(0..1000))),
        driver_id: None,
        payment_id: None,
        payout_id: None,
        schema_version: SCHEMA_VERSION,
    }
}

/// Inserts `rec` at a random position after `after` (an index in `records`).
fn insert_after(records: &mut Vec<Record>, rng: &mut ChaCha8Rng, after: usize, rec: Record) {
    let at = rng.random_range(after + 1..=records.len());
    records.insert(at, rec);
}

/// Plans the records of `spec`.
pub fn build(spec: &TrafficSpec) -> anyhow::Result<Traffic> {
    let flood = spec.hostile.contains(&Hostile::PoisonFlood);
    let cfg = TrafficConfig {
        seed: spec.seed,
        trips: spec.trips,
        partitions: spec.partitions,
        duplicate: ppm(if spec.order_safe { 0.0 } else { 0.03 }),
        conflict: ppm(if spec.order_safe { 0.0 } else { 0.005 }),
        out_of_order: ppm(0.05),
        late: ppm(0.01),
        poison: ppm(if flood { 0.10 } else { 0.01 }),
        concurrent_trips: spec
            .concurrent_trips
            .unwrap_or(TrafficConfig::default().concurrent_trips),
        ..TrafficConfig::default()
    };
    let mut records: Vec<Record> = plan(&cfg).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x6368_616f_735f_7472);
    let mut hostile = 0u64;
    let day = cfg.start;
    for h in &spec.hostile {
        match h {
            Hostile::PoisonFlood => {}
            Hostile::HugePayloads => {
                for i in 0..3u32 {
                    let trip = format!("huge-{}-{i}", spec.seed);
                    let ev = base_event(&mut rng, &trip, EventType::TripCharge, 1234, day);
                    // Just under the 64 KiB limit: accepted, stored whole.
                    let fill = Limits::default().payload_bytes_max
                        - ev.to_json().len()
                        - 64
                        - rng.random_range(0..512);
                    let p = edited(&ev, |o| {
                        o.insert("note".into(), Value::String("n".repeat(fill)));
                    });
                    let at = rng.random_range(0..records.len());
                    records.insert(at, valid(&trip, p)?);
                    // Far over the limit: dead-lettered whole.
                    let big = rng.random_range(100_000..900_000);
                    let ev2 = base_event(&mut rng, &trip, EventType::PlatformFee, 120, day);
                    let p2 = edited(&ev2, |o| {
                        o.insert("note".into(), Value::String("h".repeat(big)));
                    });
                    let at = rng.random_range(0..records.len());
                    records.insert(at, poison(&trip, p2, RejectReason::PayloadTooLarge)?);
                    hostile += 2;
                }
            }
            Hostile::DuplicateBurst => {
                ensure!(
                    !spec.order_safe,
                    "duplicate bursts need an order-safe-free scenario"
                );
                for b in 0..5 {
                    // Positions shift with every insert: look them up again for each burst.
                    let valid_at: Vec<usize> = records
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| matches!(r.kind, RecordKind::Valid(_)) && r.key.is_some())
                        .map(|(i, _)| i)
                        .collect();
                    ensure!(
                        valid_at.len() > 10,
                        "too little traffic for duplicate bursts"
                    );
                    let i = valid_at[rng.random_range(0..valid_at.len())];
                    let orig = records[i].clone();
                    let RecordKind::Valid(ev) = &orig.kind else {
                        unreachable!()
                    };
                    let ev = ev.clone();
                    if b < 3 {
                        // Exact re-sends, same bytes.
                        let n = rng.random_range(20..=60);
                        for _ in 0..n {
                            let rec = Record {
                                partition_hint: orig.partition_hint,
                                key: orig.key.clone(),
                                payload: orig.payload.clone(),
                                kind: RecordKind::Duplicate(ev.event_id),
                            };
                            insert_after(&mut records, &mut rng, i, rec);
                            hostile += 1;
                        }
                    } else {
                        let n = rng.random_range(3..=6);
                        for k in 0..n {
                            let mut v = ev.clone();
                            v.amount += Decimal::new(k + 1, 0);
                            let rec = Record {
                                partition_hint: orig.partition_hint,
                                key: orig.key.clone(),
                                payload: v.to_json(),
                                kind: RecordKind::ConflictingDuplicate(v),
                            };
                            insert_after(&mut records, &mut rng, i, rec);
                            hostile += 1;
                        }
                    }
                }
            }
            Hostile::TwoCurrencies => {
                ensure!(
                    !spec.order_safe,
                    "a second currency needs an order-safe-free scenario"
                );
                let mut seen = BTreeSet::new();
                let firsts: Vec<(usize, Event)> = records
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| match &r.kind {
                        RecordKind::Valid(ev)
                            if r.key.is_some() && seen.insert(ev.trip_id.clone()) =>
                        {
                            Some((i, ev.clone()))
                        }
                        _ => None,
                    })
                    .collect();
                for _ in 0..3 {
                    let (i, first) = firsts[rng.random_range(0..firsts.len())].clone();
                    let other = if first.currency == Currency::EUR {
                        Currency::USD
                    } else {
                        Currency::EUR
                    };
                    let mut ev = base_event(
                        &mut rng,
                        &first.trip_id,
                        EventType::Adjustment,
                        250,
                        first.occurred_at,
                    );
                    ev.currency = other;
                    let rec = valid(&first.trip_id, ev.to_json())?;
                    insert_after(&mut records, &mut rng, i, rec);
                    hostile += 1;
                }
            }
            Hostile::ReusedId => hostile += reused_ids(&mut records, &mut rng, spec.partitions)?,
            Hostile::ClockSkew => {
                let past: DateTime<Utc> = "2000-01-01T00:00:00Z".parse().expect("time");
                let future: DateTime<Utc> = "2099-12-31T23:59:59.999999Z".parse().expect("time");
                for (n, at) in [(0, past), (1, future)] {
                    let trip = format!("skew-{}-{n}", spec.seed);
                    let charge = base_event(&mut rng, &trip, EventType::TripCharge, 2000, at);
                    let mut pay = base_event(&mut rng, &trip, EventType::RiderPayment, 2000, at);
                    pay.payment_id = Some(format!("pay-{trip}"));
                    for ev in [charge, pay] {
                        let at_idx = rng.random_range(0..records.len());
                        records.insert(at_idx, valid(&trip, ev.to_json())?);
                        hostile += 1;
                    }
                }
                // Offsets far from UTC: +14:00 (Kiribati) and -12:00, converted by the decoder.
                for (n, text) in [
                    (2, "2025-03-04T09:30:00+14:00"),
                    (3, "2025-03-02T15:00:00-12:00"),
                ] {
                    let trip = format!("skew-{}-{n}", spec.seed);
                    let ev = base_event(&mut rng, &trip, EventType::TripCharge, 990, day);
                    let p = edited(&ev, |o| {
                        o.insert("occurred_at".into(), Value::String(text.into()));
                    });
                    let at_idx = rng.random_range(0..records.len());
                    records.insert(at_idx, valid(&trip, p)?);
                    hostile += 1;
                }
                // Just outside the accepted range: dead-lettered as out of range.
                for (n, text) in [
                    (4, "1999-12-31T23:59:59.999999Z"),
                    (5, "2100-01-01T00:00:00Z"),
                ] {
                    let trip = format!("skew-{}-{n}", spec.seed);
                    let ev = base_event(&mut rng, &trip, EventType::TripCharge, 990, day);
                    let p = edited(&ev, |o| {
                        o.insert("occurred_at".into(), Value::String(text.into()));
                    });
                    let at_idx = rng.random_range(0..records.len());
                    records.insert(at_idx, poison(&trip, p, RejectReason::TimestampOutOfRange)?);
                    hostile += 1;
                }
                // An ordinary trip receives an adjustment stamped by a clock 75 years fast.
                if !spec.order_safe
                    && let Some((i, ev)) =
                        records.iter().enumerate().find_map(|(i, r)| match &r.kind {
                            RecordKind::Valid(ev)
                                if r.key.is_some() && !ev.trip_id.starts_with("skew") =>
                            {
                                Some((i, ev.clone()))
                            }
                            _ => None,
                        })
                {
                    let mut adj =
                        base_event(&mut rng, &ev.trip_id, EventType::Adjustment, 100, future);
                    adj.currency = ev.currency;
                    adj.amount = Decimal::new(1, 0);
                    let rec = valid(&ev.trip_id, adj.to_json())?;
                    insert_after(&mut records, &mut rng, i, rec);
                    hostile += 1;
                }
            }
        }
    }
    let mut counts = TrafficCounts {
        hostile_records: hostile,
        ..TrafficCounts::default()
    };
    let mut ids = BTreeSet::new();
    for r in &records {
        counts.records += 1;
        counts.largest_payload = counts.largest_payload.max(r.payload.len());
        match &r.kind {
            RecordKind::Valid(ev) => {
                ensure!(
                    ids.insert(ev.event_id),
                    "event id {} planned twice",
                    ev.event_id
                );
                counts.events += 1;
            }
            RecordKind::Duplicate(_) => counts.duplicates += 1,
            RecordKind::ConflictingDuplicate(_) => counts.conflicts += 1,
            RecordKind::Poison(_) => counts.poison += 1,
        }
    }
    Ok(Traffic { records, counts })
}

/// Adds `records` to what the tables must hold (the same accounting as `demo::publish`).
pub fn expect(expected: &mut Expected, records: &[Record]) {
    for r in records {
        expected.records += 1;
        match &r.kind {
            RecordKind::Valid(ev) => {
                expected.events.insert(ev.event_id, ev.clone());
            }
            RecordKind::Duplicate(_) => expected.duplicates += 1,
            RecordKind::ConflictingDuplicate(_) => expected.conflicts += 1,
            RecordKind::Poison(_) => expected.poison += 1,
        }
    }
}

/// The UTC business days batch-verify must look at to see every record: the day of each event's
/// `occurred_at`, the day a dead letter's payload names (read as batch-verify reads it), and the
/// publish days for dead letters without a readable date (dated by their Kafka timestamp).
pub fn business_days(
    records: &[Record],
    published_on: &BTreeSet<NaiveDate>,
) -> BTreeSet<NaiveDate> {
    let mut days = BTreeSet::new();
    for r in records {
        match &r.kind {
            RecordKind::Valid(ev) => {
                days.insert(ev.occurred_at.date_naive());
            }
            RecordKind::Duplicate(_) => {}
            RecordKind::ConflictingDuplicate(_) | RecordKind::Poison(_) => {
                match batch_verify::day::payload_time(&r.payload) {
                    Some(t) => {
                        days.insert(t.date_naive());
                    }
                    None => days.extend(published_on.iter().copied()),
                }
            }
        }
    }
    days
}

/// The truth as the generator's JSON Lines (events and dead letters in publish order), for
/// batch-verify's `files` truth.
pub fn truth_jsonl(records: &[Record]) -> Vec<u8> {
    use recon_pipeline::generate::truth::{
        CONFLICTING_DUPLICATE, RejectRow, event_line, reject_line,
    };
    let mut out = Vec::new();
    let mut seq = 0u64;
    let mut holders: HashMap<uuid::Uuid, &str> = HashMap::new();
    for r in records {
        match &r.kind {
            RecordKind::Valid(ev) => {
                holders.entry(ev.event_id).or_insert(&ev.trip_id);
                event_line(&mut out, seq, &ev.to_json())
            }
            RecordKind::Duplicate(_) => continue,
            RecordKind::ConflictingDuplicate(ev) => reject_line(
                &mut out,
                &RejectRow {
                    seq,
                    class: match holders.get(&ev.event_id) {
                        Some(t) if *t != ev.trip_id => recon_schemas::decode::EVENT_ID_REUSED,
                        _ => CONFLICTING_DUPLICATE,
                    },
                    event_id: Some(ev.event_id),
                    trip_id: Some(&ev.trip_id),
                    key: r.key.as_deref(),
                    payload: &r.payload,
                },
            ),
            RecordKind::Poison(reason) => reject_line(
                &mut out,
                &RejectRow {
                    seq,
                    class: reason.as_str(),
                    event_id: None,
                    trip_id: r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()),
                    key: r.key.as_deref(),
                    payload: &r.payload,
                },
            ),
        }
        seq += 1;
    }
    out
}

/// Splits `n` records into `parts` contiguous chunks of random sizes (each at least one record).
pub fn split_points(rng: &mut ChaCha8Rng, n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let mut cuts: BTreeSet<usize> = BTreeSet::new();
    while cuts.len() < parts - 1 {
        cuts.insert(rng.random_range(1..n));
    }
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push(start..c);
        start = c;
    }
    out.push(start..n);
    out
}

/// Trips whose valid events lie more than `days` days apart.
pub fn spanning_trips(records: &[Record], days: i64) -> BTreeSet<String> {
    let mut span: HashMap<&str, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    for r in records {
        if let RecordKind::Valid(ev) = &r.kind {
            let e = span
                .entry(&ev.trip_id)
                .or_insert((ev.occurred_at, ev.occurred_at));
            e.0 = e.0.min(ev.occurred_at);
            e.1 = e.1.max(ev.occurred_at);
        }
    }
    span.into_iter()
        .filter(|(_, (a, b))| (*b - *a) > chrono::Duration::days(days))
        .map(|(t, _)| t.to_string())
        .collect()
}
