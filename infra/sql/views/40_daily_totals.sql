-- Count and sum per business day, event type and currency. The business day is the UTC date of occurred_at
-- (the session time zone must be UTC in Spark: spark.sql.session.timeZone=UTC, set in infra/spark/conf).
-- Sums stay decimals (decimal(18,3) in, decimal(28..38,3) out): never compare them as floats.
CREATE OR REPLACE VIEW ${views}.daily_totals AS
SELECT CAST(occurred_at AS DATE) AS business_date, event_type, currency,
       count(*) AS events, sum(amount) AS amount
FROM ${ns}.ledger_events
GROUP BY CAST(occurred_at AS DATE), event_type, currency;
