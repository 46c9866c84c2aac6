-- Trips in discrepancy, with the reason: conflicting_duplicate | currency_mismatch | rider_overpaid |
-- driver_overpaid (schemas/src/balance.rs, in that order of precedence).
CREATE OR REPLACE VIEW ${ns}.discrepant_trips AS
SELECT * FROM ${ns}.current_trip_balances WHERE status = 'DISCREPANCY';
