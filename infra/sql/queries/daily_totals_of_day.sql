-- One business day's totals, scanning only that day's partitions (ledger_events is partitioned by
-- day(occurred_at)). ${day_start} and ${day_end} are timestamp-with-time-zone literals of the day's UTC
-- midnights, e.g. TIMESTAMP '2025-03-03 00:00:00 UTC' (Trino) or TIMESTAMP '2025-03-03 00:00:00Z' (Spark).
SELECT event_type, currency, count(*) AS events, sum(amount) AS amount
FROM ${ns}.ledger_events
WHERE occurred_at >= ${day_start} AND occurred_at < ${day_end}
GROUP BY event_type, currency;
