-- Count and sum per event type and currency over the whole table (batch-verify's check (d), all days).
SELECT event_type, currency, count(*) AS events, sum(amount) AS amount
FROM ${ns}.ledger_events
GROUP BY event_type, currency;
