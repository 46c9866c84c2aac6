-- Trips in discrepancy, with the reason: conflicting_duplicate | currency_mismatch | rider_overpaid |
-- driver_overpaid (schemas/src/balance.rs, in that order of precedence).
CREATE OR REPLACE VIEW ${views}.discrepant_trips AS
SELECT * FROM ${views}.current_trip_balances WHERE status = 'DISCREPANCY';
