//! The readers of checks (g) and (h): `trip_balances` from the lakehouse, the current-balance
//! table from PostgreSQL, the alerts topic from Kafka. Each streams rows into a callback.

use std::time::{Duration, Instant};

use iceberg::expr::Predicate;
use iceberg::table::Table;
use rust_decimal::Decimal;

use super::{AlertRecord, CurrentRow, LakeBalance};
use crate::error::{Result, VerifyError};
use crate::lakehouse::{Columns, scan};
use crate::row::SUM_NAMES;
use recon_schemas::tables::TableName;

/// Streams every `trip_balances` row (the whole history: the latest row of a trip is chosen per
/// bucket) into `f`.
pub async fn lake_balances(
    table: &Table,
    mut f: impl FnMut(LakeBalance) -> Result<()>,
) -> Result<()> {
    let mut columns = vec!["trip_id", "checkpoint_id", "status", "kafka_partition"];
    columns.extend(SUM_NAMES);
    scan(table, &columns, Predicate::AlwaysTrue, |b| {
        let c = Columns::new(b, TableName::TripBalances.as_str());
        let (trips, checkpoints, statuses, partitions) = (
            c.strings("trip_id")?,
            c.longs("checkpoint_id")?,
            c.strings("status")?,
            c.ints("kafka_partition")?,
        );
        let sums: Vec<Vec<Option<i64>>> = SUM_NAMES
            .iter()
            .map(|n| c.money(n))
            .collect::<Result<_>>()?;
        for i in 0..b.num_rows() {
            let mut s = [0i64; 6];
            for (k, col) in sums.iter().enumerate() {
                s[k] = c.required(SUM_NAMES[k], col[i])?;
            }
            f(LakeBalance {
                trip_id: c.required("trip_id", trips[i])?.to_string(),
                checkpoint_id: c.required("checkpoint_id", checkpoints[i])?,
                sums: s,
                status: c.required("status", statuses[i])?.to_string(),
                kafka_partition: c.required("kafka_partition", partitions[i])?,
            })?;
        }
        Ok(())
    })
    .await
}

/// Streams the job's rows of the current-balance table into `f`, bounded by `records_max`.
/// A value that is not what the job writes (NULL, not a decimal, another type) is "could not
/// verify" (exit 2) naming the trip and column, never a panic.
pub async fn current_balances(
    url: &str,
    table: &str,
    job: &str,
    records_max: u64,
    mut f: impl FnMut(CurrentRow) -> Result<()>,
) -> Result<()> {
    use futures::TryStreamExt;
    use sqlx::{Connection, Row};
    let redacted = recon_common::config::redact_url(url);
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
    let sum_columns: Vec<String> = SUM_NAMES.iter().map(|c| format!("{c}::text")).collect();
    let sql = format!(
        "SELECT trip_id, {}, status, checkpoint_id, kafka_partition FROM {table} WHERE job_id = $1",
        sum_columns.join(", ")
    );
    let mut rows = sqlx::query(&sql).bind(job).fetch(&mut c);
    let mut read = 0u64;
    while let Some(r) = rows.try_next().await.map_err(|e| fail(e.to_string()))? {
        if read >= records_max {
            return Err(VerifyError::Limit {
                limit: "--truth-records-max",
                value: records_max,
                message: format!("{table} holds more rows for job {job}; raise the limit"),
            });
        }
        let trip: String = r
            .try_get(0)
            .map_err(|e| fail(format!("column trip_id: {e}")))?;
        read += 1;
        let mut sums = [0i64; 6];
        for (i, s) in sums.iter_mut().enumerate() {
            let column = SUM_NAMES[i];
            let text: Option<String> = r
                .try_get(i + 1)
                .map_err(|e| fail(format!("trip {trip:?}, column {column}: {e}")))?;
            let text = text.ok_or_else(|| fail(format!("trip {trip:?}, column {column}: NULL")))?;
            *s = thousandths(&text)
                .map_err(|e| fail(format!("trip {trip:?}, column {column}: {text:?}: {e}")))?;
        }
        let status: String = r
            .try_get(7)
            .map_err(|e| fail(format!("trip {trip:?}, column status: {e}")))?;
        let checkpoint: i64 = r
            .try_get(8)
            .map_err(|e| fail(format!("trip {trip:?}, column checkpoint_id: {e}")))?;
        let partition: i32 = r
            .try_get(9)
            .map_err(|e| fail(format!("trip {trip:?}, column kafka_partition: {e}")))?;
        f(CurrentRow {
            trip_id: trip,
            sums,
            status,
            checkpoint_id: checkpoint,
            kafka_partition: partition,
        })?;
    }
    Ok(())
}

/// A decimal text as thousandths (`decimal(18, 3)`, the scale the job writes); a value with
/// more precision or out of range is an error, never rounded.
pub fn thousandths(text: &str) -> std::result::Result<i64, String> {
    let d: Decimal = text.trim().parse().map_err(|e| format!("{e}"))?;
    let scale = recon_schemas::money::SCALE;
    let mut r = d.round_dp(scale);
    if r != d {
        return Err(format!("more than {scale} decimal places"));
    }
    r.rescale(scale);
    i64::try_from(r.mantissa()).map_err(|_| "out of range".to_string())
}

/// Streams every committed alert of `job` in `topic` into `f`, bounded by `timeout` and
/// `records_max`.
pub fn alerts(
    brokers: &str,
    topic: &str,
    properties: &std::collections::BTreeMap<String, String>,
    job: &str,
    timeout: Duration,
    records_max: u64,
    mut f: impl FnMut(AlertRecord) -> Result<()>,
) -> Result<()> {
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
        .map_err(|e| err(recon_common::secrets::kafka_error_text(&e)))?;
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
                let a: AlertRecord = serde_json::from_slice(m.payload().unwrap_or_default())
                    .map_err(|e| {
                        err(format!(
                            "record {}@{} is not an alert: {e}",
                            m.partition(),
                            m.offset()
                        ))
                    })?;
                if a.job_id == job {
                    f(a)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(err(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::thousandths;

    #[test]
    fn decimal_text_becomes_thousandths_exactly_or_an_error() {
        assert_eq!(thousandths("12.5"), Ok(12_500));
        assert_eq!(thousandths("-0.001"), Ok(-1));
        assert_eq!(thousandths("7"), Ok(7_000));
        assert_eq!(thousandths("1.2300"), Ok(1_230), "trailing zeros are exact");
        assert!(thousandths("1.2345").is_err(), "never rounded");
        assert!(thousandths("abc").is_err());
        assert!(
            thousandths("99999999999999999999").is_err(),
            "beyond i64 thousandths"
        );
    }
}
