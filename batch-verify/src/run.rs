//! One verification run, in the order the data flows:
//!
//! 1. **Read** both sides at once: the truth into its spill files; the lakehouse's day
//!    (`ledger_events` by `occurred_at`, all of `rejected_events` dated by payload, `trip_balances`
//!    by `last_occurred_at`) into its own, with the ledger totals on the way.
//! 2. **Widen** a Kafka truth's window to every position the day's lakehouse rows claim.
//! 3. **Check** bucket by bucket on `threads` threads: (a)-(c) per event id, dead letters per
//!    key, positions, (e) per trip; then trips that cross the day with their neighbouring rows.
//! 4. **Totals** (d) and **offsets** (f) from small in-memory maps and snapshot summaries.
//! 5. **Report**, and append the run to `verification_runs` / `verification_discrepancies`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use iceberg::Catalog;
use iceberg::table::Table;
use recon_common::config::Config;
use recon_common::lakehouse::table_ident;
use recon_schemas::tables::TableName;

use crate::balances::{self, Incomplete};
use crate::checks::{self, Totals};
use crate::epochs::Epochs;
use crate::error::{Result, VerifyError};
use crate::lakehouse;
use crate::options::{Options, TruthSpec};
use crate::record;
use crate::report::{Findings, Report, Status};
use crate::row::{
    EventItem, MatchKey, Position, PositionItem, RejectRow, Side, TripItem, TripItemRef,
    reject_digest,
};
use crate::spill::{SpillWriter, hash_bytes};
use crate::truth::kafka::{KafkaTruth, Windows, extend, uncovered};
use crate::truth::{self, TruthSink, match_hash, position_hash, scope_of};

/// The lakehouse side's spill files and counts.
struct LakeSide {
    events: SpillWriter<EventItem>,
    rejects: SpillWriter<RejectRow>,
    trips: SpillWriter<TripItem>,
    positions: SpillWriter<PositionItem>,
    totals: Totals,
    ledger_rows: u64,
    windows: Windows,
    findings: Findings,
}

fn widen(windows: &mut Windows, p: Position) {
    let w = windows
        .entry(p.partition)
        .or_insert((p.offset, p.offset + 1));
    w.0 = w.0.min(p.offset);
    w.1 = w.1.max(p.offset + 1);
}

/// Loads one of the job's tables by name.
pub(crate) async fn load(catalog: &dyn Catalog, cfg: &Config, name: TableName) -> Result<Table> {
    let ident = table_ident(cfg, name);
    catalog
        .load_table(&ident)
        .await
        .map_err(|e| VerifyError::lakehouse("load_table", ident, e))
}

/// Runs the whole verification; a returned error means "could not verify" (exit 2).
pub async fn verify(cfg: &Config, catalog: Arc<dyn Catalog>, opts: &Options) -> Result<Report> {
    let clock = Instant::now();
    let started_at = Utc::now();
    let run_id = uuid::Uuid::new_v4().to_string();
    let day = opts.day;
    let margin = chrono::Duration::from_std(opts.margin).unwrap_or(chrono::Duration::hours(1));
    let kafka_mode = matches!(opts.truth, TruthSpec::Kafka { .. });
    let scratch = match &opts.spill_dir {
        Some(d) => tempfile::Builder::new()
            .prefix("batch-verify-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("batch-verify-").tempdir(),
    }
    .map_err(|e| VerifyError::Spill {
        path: opts.spill_dir.clone().unwrap_or_default(),
        message: e.to_string(),
    })?;
    let dir = scratch.path().to_path_buf();
    let n = opts.buckets.max(1);
    let ledger = load(catalog.as_ref(), cfg, TableName::LedgerEvents).await?;
    let rejected = load(catalog.as_ref(), cfg, TableName::RejectedEvents).await?;
    let balances = load(catalog.as_ref(), cfg, TableName::TripBalances).await?;
    // Which topic each row came from, for jobs that accepted a topic reset.
    let ledger_commits = crate::offsets::commits(&ledger)?;
    let epochs = {
        let r = crate::offsets::commits(&rejected)?;
        Epochs::new(cfg.job_id.as_str(), ledger_commits.iter().chain(&r))
    };

    // 1. Read both sides at once.
    let mut sink = TruthSink {
        events: SpillWriter::create(&dir, "truth-events", n)?,
        rejects: SpillWriter::create(&dir, "truth-rejects", n)?,
        day,
        stats: Default::default(),
        records_max: opts.truth_records_max,
        source_name: opts.truth.name(),
    };
    let kafka = KafkaTruth {
        brokers: cfg.source.brokers.clone(),
        topic: cfg.source.topic.clone(),
        properties: cfg.source.properties.clone(),
        payload_bytes_max: cfg.state.payload_bytes_max,
        scan: match opts.truth {
            TruthSpec::Kafka { scan } => scan,
            _ => crate::truth::kafka::KafkaScan::Full,
        },
        timeout: opts.kafka_timeout,
    };
    let truth_spec = opts.truth.clone();
    let (k2, dir2) = (kafka.clone(), dir.clone());
    let truth_task = tokio::spawn(async move {
        let mut windows = Windows::new();
        match truth_spec {
            TruthSpec::Kafka { .. } => {
                let (from, _) = day.widened(margin, margin);
                let res = tokio::task::spawn_blocking(move || -> Result<(TruthSink, Windows)> {
                    let w = k2.window(from)?;
                    k2.read_ranges(&w, &mut sink)?;
                    Ok((sink, w))
                })
                .await
                .map_err(|e| VerifyError::truth("kafka", format!("reader thread: {e}")))??;
                return Ok(res);
            }
            TruthSpec::Postgres {
                url,
                events_query,
                rejects_query,
            } => {
                truth::postgres::read(&url, &events_query, &rejects_query, &mut sink).await?;
            }
            TruthSpec::Files { url } => sink = truth::files::read(&url, &dir2, sink).await?,
        }
        windows.clear();
        Ok::<_, VerifyError>((sink, windows))
    });
    let bar = crate::progress::spinner(opts.progress, "reading the lakehouse");
    let lake = read_lake(
        (&ledger, &rejected, &balances),
        &epochs,
        opts,
        &dir,
        kafka_mode,
        &bar,
    )
    .await;
    let truth_result = truth_task
        .await
        .map_err(|e| VerifyError::truth(opts.truth.name(), format!("reader task: {e}")))?;
    let lake = lake?;
    let (mut sink, mut windows) = truth_result?;
    bar.finish_and_clear();
    let mut phases = BTreeMap::new();
    phases.insert("read_ms".to_string(), ms(clock.elapsed()));

    // 2. A Kafka truth must cover every position the lakehouse claims for the day.
    if kafka_mode {
        let (before, after) = uncovered(&windows, &lake.windows);
        let k3 = kafka.clone();
        sink = tokio::task::spawn_blocking(move || -> Result<TruthSink> {
            k3.read_ranges(&before, &mut sink)?;
            k3.read_ranges(&after, &mut sink)?;
            Ok(sink)
        })
        .await
        .map_err(|e| VerifyError::truth("kafka", format!("reader thread: {e}")))??;
        extend(&mut windows, &lake.windows);
    }
    // The log ends as read: the job's lag is measured against them.
    let log_ends = windows.clone();

    let truth_files = (sink.events.finish()?, sink.rejects.finish()?);
    let lake_files = (
        lake.events.finish()?,
        lake.rejects.finish()?,
        lake.trips.finish()?,
        lake.positions.finish()?,
    );

    phases.insert(
        "widen_ms".to_string(),
        ms(clock.elapsed()) - phases["read_ms"],
    );
    let checking = Instant::now();
    // 3. Bucket by bucket.
    let keep = opts.discrepancies_max;
    let (threads, show) = (opts.threads.max(1), opts.progress);
    let kafka_windows = if kafka_mode {
        windows.clone()
    } else {
        Windows::new()
    };
    let (outcome, trips) = tokio::task::spawn_blocking(move || {
        crate::buckets::check_buckets(
            &truth_files,
            &lake_files,
            &day,
            &kafka_windows,
            threads,
            keep,
            show,
        )
    })
    .await
    .map_err(|e| VerifyError::Spill {
        path: dir.clone(),
        message: format!("checking thread: {e}"),
    })??;
    let mut findings = lake.findings;
    findings.merge(outcome.findings.clone());
    findings.merge(trips.findings);
    let incomplete = trips.incomplete;
    if incomplete.len() > opts.incomplete_trips_max {
        return Err(VerifyError::Limit {
            limit: "--incomplete-trips-max",
            value: opts.incomplete_trips_max as u64,
            message: format!(
                "{} trips have events outside the day; raise the limit",
                incomplete.len()
            ),
        });
    }
    let incomplete = neighbours(&ledger, &epochs, opts, incomplete).await?;
    balances::recheck(incomplete, opts.trip_span_days, &mut findings);

    phases.insert("check_ms".to_string(), ms(checking.elapsed()));
    let rest = Instant::now();
    // 4. Totals and offsets.
    let totals = checks::check_totals(&outcome.truth_totals, &lake.totals, &mut findings);
    extend(&mut windows, &lake.windows);
    let mut commits_checked = 0;
    for table in [&ledger, &rejected, &balances] {
        let commits = crate::offsets::commits(table)?;
        commits_checked += commits.len() as u64;
        crate::offsets::check(table.identifier().name(), &commits, &windows, &mut findings);
    }

    phases.insert("offsets_ms".to_string(), ms(rest.elapsed()));
    // (g), (h): the optional outputs, when the job has them on.
    let outputs = if opts.check_outputs {
        let spill = crate::outputs::SpillAt {
            dir: &dir,
            buckets: n,
        };
        crate::outputs::check(
            cfg,
            &balances,
            spill,
            opts.kafka_timeout,
            opts.truth_records_max,
            &mut findings,
        )
        .await?
    } else {
        None
    };
    // The job's lag: truth events at a partition's tail it has not consumed are still missing,
    // and named as its lag (a stopped job with a backlog is a loss until it catches up).
    let cut = crate::offsets::committed_cut(&ledger_commits, cfg.job_id.as_str());
    let (missing_not_consumed, job_lag) = if kafka_mode {
        let named = crate::offsets::annotate_lag(&mut findings, &cut, &log_ends);
        let lag = crate::offsets::lag(&cut, &log_ends);
        (named, Some(lag.values().map(|n| n.unsigned_abs()).sum()))
    } else {
        (0, None)
    };
    // 5. Report.
    let elapsed = clock.elapsed();
    let mut report = Report {
        run_id: run_id.clone(),
        status: Status::Clean,
        business_date: day.date.to_string(),
        time_zone: day.tz.name().to_string(),
        window_start: day.start.to_rfc3339_opts(SecondsFormat::Secs, true),
        window_end: day.end.to_rfc3339_opts(SecondsFormat::Secs, true),
        truth_source: opts.truth.name().to_string(),
        truth_events: outcome.truth_events,
        truth_rejects: outcome.truth_rejects,
        truth_resends: outcome.truth_resends,
        ledger_events: lake.ledger_rows,
        rejected_events: outcome.lake_rejects,
        rejects_undated: outcome.rejects_undated,
        beyond_horizon: outcome.beyond_horizon,
        duplicates: 0,
        missing: 0,
        phantom: 0,
        amount_mismatches: 0,
        content_mismatches: 0,
        totals_mismatches: 0,
        balance_mismatches: 0,
        balances_checked: trips.checked,
        offset_gaps: 0,
        commits_checked,
        discrepancies_by_kind: BTreeMap::new(),
        totals,
        discrepancies: Vec::new(),
        discrepancies_truncated: false,
        started_at: started_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        finished_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        events_per_s: outcome.truth_events.max(lake.ledger_rows) as f64
            / elapsed.as_secs_f64().max(1e-9),
        peak_rss_bytes: crate::memory::peak_rss_bytes(),
        error: None,
        phases_ms: phases,
        outputs,
        job_committed_offsets: cut.iter().map(|(p, o)| (p.to_string(), *o)).collect(),
        job_lag_offsets: job_lag,
        missing_not_consumed,
    };
    report.apply(&findings);
    if opts.record {
        record::record_run(catalog.as_ref(), cfg, &report, opts).await?;
    }
    drop(scratch);
    Ok(report)
}

/// The lakehouse side obeys the same bound as the truth: a day larger than that is a
/// configuration question, not something to discover by running out of disk.
fn rows_limit(rows: u64, max: u64, table: &str) -> Result<()> {
    if rows > max {
        return Err(VerifyError::Limit {
            limit: "--truth-records-max",
            value: max,
            message: format!("{table} holds more rows for the day than allowed; raise the limit"),
        });
    }
    Ok(())
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn read_lake(
    (ledger, rejected, balances): (&Table, &Table, &Table),
    epochs: &Epochs,
    opts: &Options,
    dir: &std::path::Path,
    kafka_mode: bool,
    bar: &indicatif::ProgressBar,
) -> Result<LakeSide> {
    let n = opts.buckets.max(1);
    let day = opts.day;
    let mut lake = LakeSide {
        events: SpillWriter::create(dir, "lake-events", n)?,
        rejects: SpillWriter::create(dir, "lake-rejects", n)?,
        trips: SpillWriter::create(dir, "lake-trips", n)?,
        positions: SpillWriter::create(dir, "lake-positions", n)?,
        totals: Totals::new(),
        ledger_rows: 0,
        windows: Windows::new(),
        findings: Findings::new(opts.discrepancies_max),
    };
    let mut findings = Findings::new(opts.discrepancies_max);
    let the_day = lakehouse::time_range("occurred_at", day.start, Some(day.end));
    lakehouse::scan_ledger(ledger, the_day, &mut findings, |mut r| {
        r.position.topics_ago = epochs.topics_ago(r.checkpoint_id);
        lake.ledger_rows += 1;
        rows_limit(
            lake.ledger_rows,
            opts.truth_records_max,
            TableName::LedgerEvents.as_str(),
        )?;
        if lake.ledger_rows.is_multiple_of(65_536) {
            bar.set_position(lake.ledger_rows);
        }
        checks::add_total(&mut lake.totals, &r.row);
        if r.position.topics_ago == 0 {
            widen(&mut lake.windows, r.position);
        }
        lake.positions.push(
            position_hash(r.position),
            &PositionItem {
                position: r.position,
                event_id: Some(r.row.event_id),
            },
        )?;
        lake.trips.push_encoded_as(
            hash_bytes(r.row.trip_id.as_bytes()),
            &TripItemRef::Ledger {
                row: &r.row,
                position: r.position,
            },
        )?;
        let hash = hash_bytes(r.row.event_id.as_bytes());
        lake.events.push(
            hash,
            &EventItem::Ledger {
                row: r.row,
                position: r.position,
                checkpoint_id: r.checkpoint_id,
            },
        )
    })
    .await?;
    lake.ledger_rows += findings.total();
    // Every dead letter, whenever it was rejected: a record's business day says nothing about
    // when the job read it (a future-dated record is rejected today; a late one years after).
    // Dead letters are rare; the scan is bounded like every other (--truth-records-max).
    let mut rejected_rows = 0u64;
    lakehouse::scan_rejected(rejected, |mut r| {
        r.position.topics_ago = epochs.topics_ago(r.checkpoint_id);
        rejected_rows += 1;
        rows_limit(
            rejected_rows,
            opts.truth_records_max,
            TableName::RejectedEvents.as_str(),
        )?;
        let scope = scope_of(&day, r.payload, None);
        let digest = reject_digest(r.key, r.payload);
        let key = if kafka_mode {
            MatchKey::Position(r.position)
        } else {
            MatchKey::Digest(digest)
        };
        if scope == crate::row::Scope::InDay && r.position.topics_ago == 0 {
            widen(&mut lake.windows, r.position);
        }
        lake.positions.push(
            position_hash(r.position),
            &PositionItem {
                position: r.position,
                event_id: None,
            },
        )?;
        let row = RejectRow {
            side: Side::Lake,
            key,
            reason: r.reason.to_string(),
            event_id: r.event_id.map(str::to_string),
            trip_id: r.trip_id.map(str::to_string),
            position: Some(r.position),
            digest,
            scope,
        };
        let conflict_id = r.event_id.and_then(|s| uuid::Uuid::parse_str(s).ok());
        // An event refused for balance overflow is a truth *event* in every truth: matched by
        // event id like a ledger row, and folded with its trip (check (e)) where the fold must
        // refuse it as well.
        let refused = (r.reason == recon_schemas::decode::BALANCE_OVERFLOW)
            .then(|| {
                recon_schemas::decode::decode(
                    r.key,
                    r.payload,
                    &recon_schemas::decode::Limits::default(),
                )
                .ok()
            })
            .flatten()
            .and_then(|ev| crate::row::EventRow::from_event(&ev));
        match (conflict_id, refused) {
            (Some(id), Some(event)) => {
                if scope == crate::row::Scope::InDay {
                    lake.trips.push(
                        hash_bytes(event.trip_id.as_bytes()),
                        &TripItem::Refused {
                            row: event,
                            position: r.position,
                        },
                    )?;
                }
                lake.events
                    .push(hash_bytes(id.as_bytes()), &EventItem::Conflict(row))
            }
            (Some(id), None) if proved_from_events(r.reason, kafka_mode) => lake
                .events
                .push(hash_bytes(id.as_bytes()), &EventItem::Conflict(row)),
            _ => lake.rejects.push(match_hash(&key), &row),
        }
    })
    .await?;
    let mut balance_rows = 0u64;
    lakehouse::scan_balances(balances, day.start, |b| {
        balance_rows += 1;
        rows_limit(
            balance_rows,
            opts.truth_records_max,
            TableName::TripBalances.as_str(),
        )?;
        lake.trips
            .push(hash_bytes(b.trip_id.as_bytes()), &TripItem::Balance(b))
    })
    .await?;
    lake.findings = findings;
    Ok(lake)
}

/// Dead letters of records that decoded which the Kafka truth proves from the events themselves
/// (grouped by event id): a conflicting version, a copy on another trip, a record beyond the
/// job's horizon (any version of the id, matched by position). The other truths list them as
/// dead letters of their own (an upstream ledger holds an event id once), matched by key and
/// payload.
fn proved_from_events(reason: &str, kafka_mode: bool) -> bool {
    kafka_mode
        && (reason == recon_schemas::decode::CONFLICTING_DUPLICATE
            || reason == recon_schemas::decode::EVENT_ID_REUSED
            || reason == recon_schemas::decode::BEYOND_HORIZON)
}

/// Trips still short of events after the neighbouring days were read that are looked up in the
/// whole `ledger_events` table by id (one filtered scan); more than this are reported as they are.
const LONG_TRIPS_MAX: usize = 1_000;

/// Adds the neighbouring days' ledger rows of the incomplete trips; then, for the few trips still
/// short of events (a clock-skewed event years away, a trip longer than the span), their rows
/// from the whole table.
async fn neighbours(
    ledger: &Table,
    epochs: &Epochs,
    opts: &Options,
    mut incomplete: HashMap<String, Incomplete>,
) -> Result<HashMap<String, Incomplete>> {
    if incomplete.is_empty() {
        return Ok(incomplete);
    }
    let span = chrono::Duration::days(i64::from(opts.trip_span_days));
    let day = opts.day;
    let mut seen: HashSet<Position> = incomplete
        .values()
        .flat_map(|i| i.events.iter().map(|(_, p)| *p))
        .collect();
    let mut findings = Findings::new(0);
    let mut add = |r: crate::lakehouse::LedgerRow, incomplete: &mut HashMap<String, Incomplete>| {
        let mut r = r;
        r.position.topics_ago = epochs.topics_ago(r.checkpoint_id);
        if let Some(inc) = incomplete.get_mut(&r.row.trip_id)
            && seen.insert(r.position)
        {
            inc.events.push((r.row, r.position));
        }
    };
    if opts.trip_span_days > 0 {
        for (from, to) in [(day.start - span, day.start), (day.end, day.end + span)] {
            let filter = lakehouse::time_range("occurred_at", from, Some(to));
            lakehouse::scan_ledger(ledger, filter, &mut findings, |r| {
                add(r, &mut incomplete);
                Ok(())
            })
            .await?;
        }
    }
    let short: Vec<String> = incomplete
        .iter()
        .filter(|(_, inc)| {
            let events: Vec<_> = inc.events.iter().map(|(r, p)| (r, *p)).collect();
            balances::compare(&events, &inc.refused, &inc.latest) == balances::Verdict::NeedsMore
        })
        .map(|(t, _)| t.clone())
        .collect();
    if !short.is_empty() && short.len() <= LONG_TRIPS_MAX {
        lakehouse::scan_ledger(
            ledger,
            lakehouse::trips_filter(&short),
            &mut findings,
            |r| {
                add(r, &mut incomplete);
                Ok(())
            },
        )
        .await?;
    }
    Ok(incomplete)
}

#[cfg(test)]
mod tests {
    use recon_schemas::decode::{BALANCE_OVERFLOW, BEYOND_HORIZON, EVENT_REASONS};

    /// With a Kafka truth every dead letter of a decoded record but a refusal (routed by its
    /// decoded event) is proved by event id; other truths pair them all by key and payload.
    #[test]
    fn decoded_dead_letters_are_proved_from_the_events_with_a_kafka_truth() {
        for reason in EVENT_REASONS.into_iter().filter(|r| *r != BALANCE_OVERFLOW) {
            assert!(super::proved_from_events(reason, true), "{reason}");
            assert!(!super::proved_from_events(reason, false), "{reason}");
        }
        assert!(super::proved_from_events(BEYOND_HORIZON, true));
        assert!(!super::proved_from_events("not_json", true));
    }
}
