-- Trips not yet settled: charged and not yet fully collected, or not yet split into payout plus fee.
CREATE OR REPLACE VIEW ${views}.open_trips AS
SELECT * FROM ${views}.current_trip_balances WHERE status = 'OPEN';
