//! Checks (g) and (h): the optional exactly-once outputs of the job, when its configuration has
//! them on, against the lakehouse.
//!
//! (g) `[current_balances]`: every trip's row in the PostgreSQL table equals its latest
//! `trip_balances` row (sums and status); a row that differs only because it is newer than
//! the last committed Iceberg checkpoint (the job upserts at every checkpoint, commits to
//! Iceberg on its cadence) is counted as in flight, not as a discrepancy.
//!
//! (h) `[alerts]`: every alert id is in the topic once, and each trip's last alert agrees with
//! its latest status: a trip now in a watched status (e.g. `DISCREPANCY`) has an alert that
//! entered it; a trip not in one has none, or its last one left it. Alerts of checkpoints not
//! yet committed to Iceberg are in flight.
//!
//! Both read the whole output (they hold current state, not a day's history); the day's
//! ledger proof is checks (a)-(f).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use iceberg::Catalog;
use recon_pipeline::config::Config;
use recon_pipeline::outputs::alerts::Alert;
use recon_pipeline::reconcile::{LatestBalance, latest_balances};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::error::VerifyError;
use crate::report::{Discrepancy, Findings, Kind};

/// What checks (g) and (h) looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutputsChecked {
    /// Rows of the current-balance table compared.
    pub current_balances_checked: u64,
    /// Of those, rows newer than the lakehouse (not judged).
    pub current_balances_in_flight: u64,
    /// Alerts read from the alerts topic for this job.
    pub alerts_checked: u64,
    /// Trips whose last alert is newer than the lakehouse (not judged).
    pub alerts_in_flight: u64,
}

/// Runs (g) and/or (h) for the outputs `cfg` has on; adds what disagrees to `findings`.
pub async fn check(
    cfg: &Config,
    catalog: &dyn Catalog,
    kafka_timeout: Duration,
    records_max: u64,
    findings: &mut Findings,
) -> Result<Option<OutputsChecked>, VerifyError> {
    if cfg.current_balances_url.is_none() && cfg.alerts_watch.is_none() {
        return Ok(None);
    }
    let latest = latest_balances(catalog, cfg)
        .await
        .map_err(|e| VerifyError::lakehouse("scan", "trip_balances", e))?;
    let committed = latest.values().map(|l| l.0).max().unwrap_or(0);
    let mut out = OutputsChecked::default();
    if let Some(url) = &cfg.current_balances_url {
        let rows = current_balances(
            url,
            &cfg.current_balances.table,
            cfg.job_id.as_str(),
            records_max,
        )
        .await?;
        judge_balances(&latest, &rows, committed, &mut out, findings);
    }
    if let Some(watch) = &cfg.alerts_watch {
        let (brokers, topic, props) = (
            cfg.source.brokers.clone(),
            cfg.alerts.topic.clone(),
            cfg.source.properties.clone(),
        );
        let job = cfg.job_id.to_string();
        let alerts = tokio::task::spawn_blocking(move || {
            read_alerts(&brokers, &topic, &props, &job, kafka_timeout, records_max)
        })
        .await
        .map_err(|e| VerifyError::truth("kafka", format!("alerts reader: {e}")))??;
        judge_alerts(&latest, alerts, watch, committed, &mut out, findings);
    }
    Ok(Some(out))
}

/// `(sums, status, checkpoint_id)` per trip of the current-balance table.
pub type CurrentRow = ([Decimal; 6], String, i64);

/// Reads the job's rows of the current-balance table, streamed and bounded by `records_max`.
/// A value that is not what the job writes (NULL, not a decimal, another type) is "could not
/// verify" (exit 2) naming the trip and column, never a panic.
pub async fn current_balances(
    url: &str,
    table: &str,
    job: &str,
    records_max: u64,
) -> Result<HashMap<String, CurrentRow>, VerifyError> {
    use futures::TryStreamExt;
    use sqlx::{Connection, Row};
    let redacted = recon_pipeline::config::redact_url(url);
    let fail = |m: String| {
        VerifyError::truth(
            "postgres",
            format!(
                "current balances {table} ({redacted}): {m}; fix the table or pass --skip-outputs"
            ),
        )
    };
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let sql = format!(
        "SELECT trip_id, charged::text, collected::text, refunded::text, paid_out::text, fees::text,
                adjusted::text, status, checkpoint_id FROM {table} WHERE job_id = $1"
    );
    const COLUMNS: [&str; 9] = [
        "trip_id",
        "charged",
        "collected",
        "refunded",
        "paid_out",
        "fees",
        "adjusted",
        "status",
        "checkpoint_id",
    ];
    let mut rows = sqlx::query(&sql).bind(job).fetch(&mut c);
    let mut out = HashMap::new();
    while let Some(r) = rows.try_next().await.map_err(|e| fail(e.to_string()))? {
        if out.len() as u64 >= records_max {
            return Err(VerifyError::Limit {
                limit: "--truth-records-max",
                value: records_max,
                message: format!("{table} holds more rows for job {job}; raise the limit"),
            });
        }
        let trip: String = r
            .try_get(0)
            .map_err(|e| fail(format!("column trip_id: {e}")))?;
        let mut sums = [Decimal::ZERO; 6];
        for (i, s) in sums.iter_mut().enumerate() {
            let column = COLUMNS[i + 1];
            let text: Option<String> = r
                .try_get(i + 1)
                .map_err(|e| fail(format!("trip {trip:?}, column {column}: {e}")))?;
            let text = text.ok_or_else(|| fail(format!("trip {trip:?}, column {column}: NULL")))?;
            *s = text
                .parse()
                .map_err(|e| fail(format!("trip {trip:?}, column {column}: {text:?}: {e}")))?;
        }
        let status: String = r
            .try_get(7)
            .map_err(|e| fail(format!("trip {trip:?}, column {}: {e}", COLUMNS[7])))?;
        let checkpoint: i64 = r
            .try_get(8)
            .map_err(|e| fail(format!("trip {trip:?}, column {}: {e}", COLUMNS[8])))?;
        out.insert(trip, (sums, status, checkpoint));
    }
    Ok(out)
}

/// Check (g) on rows already read.
pub fn judge_balances(
    latest: &HashMap<String, LatestBalance>,
    rows: &HashMap<String, CurrentRow>,
    committed: i64,
    out: &mut OutputsChecked,
    findings: &mut Findings,
) {
    for (trip, (sums, status, ckpt)) in rows {
        out.current_balances_checked += 1;
        let same = latest
            .get(trip)
            .is_some_and(|(_, s, st)| s == sums && st == status);
        if same {
            continue;
        }
        if *ckpt > committed {
            out.current_balances_in_flight += 1;
            continue;
        }
        let detail = match latest.get(trip) {
            Some((c, s, st)) => format!(
                "current balance {sums:?} {status} (checkpoint {ckpt}) != latest trip_balances {s:?} {st} (checkpoint {c})"
            ),
            None => format!("current balance row (checkpoint {ckpt}) has no trip_balances row"),
        };
        findings.add(Discrepancy::new(Kind::CurrentBalanceMismatch, detail).trip(trip));
    }
    for trip in latest.keys().filter(|t| !rows.contains_key(*t)) {
        findings.add(
            Discrepancy::new(
                Kind::CurrentBalanceMismatch,
                "trip has trip_balances rows but no current balance row",
            )
            .trip(trip),
        );
    }
}

/// Check (h) on alerts already read.
pub fn judge_alerts(
    latest: &HashMap<String, LatestBalance>,
    alerts: Vec<Alert>,
    watch: &[&str],
    committed: i64,
    out: &mut OutputsChecked,
    findings: &mut Findings,
) {
    let mut ids = std::collections::HashSet::new();
    let mut last: HashMap<String, Alert> = HashMap::new();
    for a in alerts {
        out.alerts_checked += 1;
        if !ids.insert(a.alert_id) {
            findings.add(
                Discrepancy::new(
                    Kind::AlertMismatch,
                    format!("alert {} is in the topic more than once", a.alert_id),
                )
                .trip(&a.trip_id)
                .event(&a.event_id)
                .at(a.kafka_partition, a.kafka_offset),
            );
            continue;
        }
        let newer = last.get(&a.trip_id).is_none_or(|l| {
            (a.kafka_partition, a.kafka_offset) > (l.kafka_partition, l.kafka_offset)
        });
        if newer {
            last.insert(a.trip_id.clone(), a);
        }
    }
    for (trip, (_, _, status)) in latest {
        let watched = watch.contains(&status.as_str());
        let alert = last.get(trip);
        if alert.is_some_and(|a| a.checkpoint_id as i64 > committed) {
            out.alerts_in_flight += 1;
            continue;
        }
        let ok = match alert {
            Some(a) => {
                a.to_status == *status || (!watched && !watch.contains(&a.to_status.as_str()))
            }
            None => !watched,
        };
        if !ok {
            let detail = match alert {
                Some(a) => format!(
                    "latest status {status}, but the trip's last alert ({}) says {} -> {}",
                    a.alert_id, a.from_status, a.to_status
                ),
                None => format!("latest status {status} is watched, but the trip has no alert"),
            };
            findings.add(Discrepancy::new(Kind::AlertMismatch, detail).trip(trip));
        }
    }
}

/// Reads every committed alert of `job` in `topic`, bounded by `timeout` and `records_max`.
fn read_alerts(
    brokers: &str,
    topic: &str,
    properties: &std::collections::BTreeMap<String, String>,
    job: &str,
    timeout: Duration,
    records_max: u64,
) -> Result<Vec<Alert>, VerifyError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::{Message, Offset, TopicPartitionList};
    let err = |m: String| VerifyError::truth("kafka", format!("alerts topic {topic}: {m}"));
    let mut cc = rdkafka::ClientConfig::new();
    cc.set("bootstrap.servers", brokers)
        .set("group.id", format!("batch-verify-alerts-{job}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    for (k, v) in properties {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            cc.set(k, v);
        }
    }
    let consumer: BaseConsumer = cc
        .create()
        .map_err(|e| err(recon_pipeline::secrets::kafka_error_text(&e)))?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout.min(Duration::from_secs(30)))
        .map_err(|e| err(e.to_string()))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(err("no partitions (does the topic exist?)".into()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| err(e.to_string()))?;
    }
    consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
    let start = Instant::now();
    let mut at_end = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut read = 0u64;
    while at_end.len() < parts.len() {
        if start.elapsed() > timeout {
            return Err(err(format!("not read to its end within {timeout:?}")));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                read += 1;
                if read > records_max {
                    return Err(err(format!(
                        "more than {records_max} records; raise --truth-records-max"
                    )));
                }
                at_end.remove(&m.partition());
                let a: Alert =
                    serde_json::from_slice(m.payload().unwrap_or_default()).map_err(|e| {
                        err(format!(
                            "record {}@{} is not an alert: {e}",
                            m.partition(),
                            m.offset()
                        ))
                    })?;
                if a.job_id == job {
                    out.push(a);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(err(e.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(trip: &str, offset: i64, from: &str, to: &str) -> Alert {
        Alert {
            alert_id: recon_pipeline::outputs::alerts::alert_id("j", 0, offset),
            job_id: "j".into(),
            trip_id: trip.into(),
            transition: if to == "DISCREPANCY" {
                "entered"
            } else {
                "left"
            }
            .into(),
            from_status: from.into(),
            to_status: to.into(),
            reason: None,
            rider_balance: Decimal::ZERO,
            settlement_balance: Decimal::ZERO,
            currency: "EUR".into(),
            event_id: "e".into(),
            kafka_partition: 0,
            kafka_offset: offset,
            checkpoint_id: 1,
        }
    }

    fn latest(status: &str) -> LatestBalance {
        (1, [Decimal::ONE; 6], status.into())
    }

    #[test]
    fn alerts_agree_with_latest_status_or_are_reported() {
        let watch = ["DISCREPANCY"];
        let latest: HashMap<String, LatestBalance> = [
            ("ok-open".to_string(), latest("OPEN")),
            ("ok-disc".to_string(), latest("DISCREPANCY")),
            ("no-alert".to_string(), latest("DISCREPANCY")),
            ("stale-left".to_string(), latest("OPEN")),
        ]
        .into();
        let alerts = vec![
            alert("ok-open", 1, "NONE", "DISCREPANCY"),
            alert("ok-open", 2, "DISCREPANCY", "OPEN"),
            alert("ok-disc", 3, "OPEN", "DISCREPANCY"),
            alert("stale-left", 4, "OPEN", "DISCREPANCY"),
            alert("ok-disc", 3, "OPEN", "DISCREPANCY"),
        ];
        let mut f = Findings::new(10);
        let mut out = OutputsChecked::default();
        judge_alerts(&latest, alerts, &watch, 1, &mut out, &mut f);
        let mut trips: Vec<_> = f.kept.iter().filter_map(|d| d.trip_id.clone()).collect();
        trips.sort();
        assert_eq!(trips, ["no-alert", "ok-disc", "stale-left"], "{:?}", f.kept);
        assert!(f.kept.iter().any(|d| d.detail.contains("more than once")));
        assert_eq!(out.alerts_checked, 5);
    }

    #[test]
    fn a_current_balance_that_differs_is_reported_unless_in_flight() {
        let latest: HashMap<String, LatestBalance> = [
            ("a".to_string(), latest("OPEN")),
            ("b".to_string(), latest("OPEN")),
        ]
        .into();
        let rows: HashMap<String, CurrentRow> = [
            ("a".to_string(), ([Decimal::ONE; 6], "OPEN".to_string(), 1)),
            ("b".to_string(), ([Decimal::TWO; 6], "OPEN".to_string(), 1)),
            ("c".to_string(), ([Decimal::TWO; 6], "OPEN".to_string(), 9)),
        ]
        .into();
        let mut f = Findings::new(10);
        let mut out = OutputsChecked::default();
        judge_balances(&latest, &rows, 1, &mut out, &mut f);
        assert_eq!(f.count(Kind::CurrentBalanceMismatch), 1, "{:?}", f.kept);
        assert_eq!(f.kept[0].trip_id.as_deref(), Some("b"));
        assert_eq!(out.current_balances_in_flight, 1);
        assert_eq!(out.current_balances_checked, 3);
    }
}
