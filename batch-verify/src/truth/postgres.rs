//! The PostgreSQL truth: the upstream payments ledger, read by two configurable queries.
//!
//! The events query returns one row per distinct event with text columns `event_id`,
//! `event_type`, `trip_id`, `amount` (decimal text), `currency`, `occurred_at` (RFC 3339), the
//! optional ids, `schema_version` (int) and optionally `seq` (bigint, the truth's order). `$1`
//! and `$2` are bound to the day's UTC window as RFC 3339 text. The rejects query returns
//! `class`, `event_id`, `trip_id` (text), `record_key`, `payload` (bytea). The defaults read the
//! generator's `truth_events` and `truth_rejects` tables. Rows are streamed, never collected.

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use recon_schemas::currency::Currency;
use recon_schemas::event::{Event, EventType};
use rust_decimal::Decimal;
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, Row};

use super::TruthSink;
use crate::error::{Result, VerifyError};
use crate::row::EventRow;

/// Default events query: the generator's `truth_events` of the window.
pub const EVENTS_QUERY: &str = "SELECT event_id::text AS event_id, event_type, trip_id, \
     amount::text AS amount, currency, \
     to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS occurred_at, \
     rider_id, driver_id, payment_id, payout_id, schema_version, seq \
     FROM truth_events WHERE occurred_at >= $1::timestamptz AND occurred_at < $2::timestamptz";

/// Default rejects query: every dead letter of `truth_rejects` (dated from their payloads).
pub const REJECTS_QUERY: &str = "SELECT class, event_id::text AS event_id, trip_id, record_key, payload \
     FROM truth_rejects ORDER BY run_id, seq";

/// The default queries narrowed to one generator run (`truth_runs.run_id`), for a truth
/// database that several runs share. The id is checked (letters, digits, `-`, `_`, `.`, `:`;
/// 1 to 128 characters) and inlined as a literal.
pub fn scoped_queries(run_id: &str) -> Result<(String, String)> {
    let ok = (1..=128).contains(&run_id.len())
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !ok {
        return Err(VerifyError::Options {
            option: "--truth-run-id",
            message: format!(
                "{run_id:?} is not a run id (1 to 128 of letters, digits, '-', '_', '.', ':'); \
                 see SELECT run_id FROM truth_runs"
            ),
        });
    }
    let events = format!("{EVENTS_QUERY} AND run_id = '{run_id}'");
    let rejects = format!(
        "SELECT class, event_id::text AS event_id, trip_id, record_key, payload \
         FROM truth_rejects WHERE run_id = '{run_id}' ORDER BY seq"
    );
    Ok((events, rejects))
}

fn err(message: impl ToString) -> VerifyError {
    VerifyError::truth("postgres", message)
}

/// Reads the day's truth from `url` into `sink`.
pub async fn read(
    url: &str,
    events_query: &str,
    rejects_query: &str,
    sink: &mut TruthSink,
) -> Result<()> {
    let mut conn = PgConnection::connect(url).await.map_err(|e| {
        err(format!(
            "cannot connect to {}: {e}; check --truth-url",
            recon_common::config::redact_url(url)
        ))
    })?;
    let from = sink.day.start.to_rfc3339_opts(SecondsFormat::Micros, true);
    let to = sink.day.end.to_rfc3339_opts(SecondsFormat::Micros, true);
    {
        let mut rows =
            bind_window(sqlx::query(events_query), events_query, &from, &to).fetch(&mut conn);
        let mut index = 0i64;
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| err(format!("events query: {e}")))?
        {
            sink.record()?;
            let seq = row.try_get::<i64, _>("seq").unwrap_or(index);
            index += 1;
            let event = event_of(&row)?;
            let er = EventRow::from_event(&event).ok_or_else(|| {
                err(format!(
                    "event {}: amount does not fit decimal(18, 3)",
                    event.event_id
                ))
            })?;
            sink.event(er, None, (0, seq))?;
        }
    }
    let mut rows =
        bind_window(sqlx::query(rejects_query), rejects_query, &from, &to).fetch(&mut conn);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| err(format!("rejects query: {e}")))?
    {
        sink.record()?;
        let class: String = get(&row, "class")?;
        let event_id: Option<String> = get(&row, "event_id")?;
        let trip_id: Option<String> = get(&row, "trip_id")?;
        let key: Option<Vec<u8>> = get(&row, "record_key")?;
        let payload: Vec<u8> = get(&row, "payload")?;
        sink.reject(
            &class,
            event_id,
            trip_id,
            key.as_deref(),
            &payload,
            None,
            None,
        )?;
    }
    drop(rows);
    conn.close().await.ok();
    Ok(())
}

/// Binds the window to `$1` and `$2` where the query uses them.
fn bind_window<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    text: &str,
    from: &'q str,
    to: &'q str,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match (text.contains("$1"), text.contains("$2")) {
        (_, true) => q.bind(from).bind(to),
        (true, false) => q.bind(from),
        _ => q,
    }
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    column: &str,
) -> Result<T> {
    row.try_get(column).map_err(|e| {
        err(format!(
            "column {column}: {e}; see the query contract in batch-verify/README.md"
        ))
    })
}

fn event_of(row: &PgRow) -> Result<Event> {
    let id: String = get(row, "event_id")?;
    let bad = |what: &str, v: &str| err(format!("event {id}: {what} {v:?} is not valid"));
    let event_type: String = get(row, "event_type")?;
    let amount: String = get(row, "amount")?;
    let currency: String = get(row, "currency")?;
    let occurred_at: String = get(row, "occurred_at")?;
    Ok(Event {
        event_id: uuid::Uuid::parse_str(&id).map_err(|_| bad("event_id", &id))?,
        event_type: EventType::parse(&event_type).ok_or_else(|| bad("event_type", &event_type))?,
        trip_id: get(row, "trip_id")?,
        amount: amount
            .parse::<Decimal>()
            .map_err(|_| bad("amount", &amount))?,
        currency: Currency::parse(&currency).ok_or_else(|| bad("currency", &currency))?,
        occurred_at: DateTime::parse_from_rfc3339(&occurred_at)
            .map_err(|_| bad("occurred_at", &occurred_at))?
            .with_timezone(&Utc),
        rider_id: get(row, "rider_id")?,
        driver_id: get(row, "driver_id")?,
        payment_id: get(row, "payment_id")?,
        payout_id: get(row, "payout_id")?,
        schema_version: get(row, "schema_version")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_scopes_both_default_queries_and_is_checked() {
        let (e, r) = scoped_queries("seed-42_run.1").unwrap();
        assert!(e.starts_with(EVENTS_QUERY) && e.ends_with("AND run_id = 'seed-42_run.1'"));
        assert!(r.contains("WHERE run_id = 'seed-42_run.1'"), "{r}");
        for bad in ["", "x' OR '1'='1", "a b", &"x".repeat(129)] {
            let e = scoped_queries(bad).unwrap_err().to_string();
            assert!(e.contains("--truth-run-id"), "{e}");
        }
    }
}
