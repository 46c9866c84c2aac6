-- Current balance per trip: the latest row of the trip_balances changelog (highest checkpoint_id per trip).
-- The pipeline appends one row per trip per checkpoint in which the trip changed, so the newest row is the
-- trip's state after every event the lakehouse holds for it.
CREATE OR REPLACE VIEW ${views}.current_trip_balances AS
SELECT trip_id, currency, charged, collected, refunded, paid_out, fees, adjusted,
       rider_balance, settlement_balance, status, discrepancy_reason, event_count,
       last_occurred_at, kafka_partition, checkpoint_id, updated_at
FROM (
  SELECT b.*, row_number() OVER (PARTITION BY b.trip_id ORDER BY b.checkpoint_id DESC) AS rn
  FROM ${ns}.trip_balances b
) latest
WHERE rn = 1;
