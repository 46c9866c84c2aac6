-- Rows and distinct event ids of ledger_events: equal when every event is there once.
SELECT count(*) AS ledger_rows, count(DISTINCT event_id) AS distinct_event_ids
FROM ${ns}.ledger_events;
