-- Trips not yet settled: charged and not yet fully collected, or not yet split into payout plus fee.
CREATE OR REPLACE VIEW ${ns}.open_trips AS
SELECT * FROM ${ns}.current_trip_balances WHERE status = 'OPEN';
