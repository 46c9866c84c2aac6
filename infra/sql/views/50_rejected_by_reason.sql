-- Dead letters per reason code (the decoder's RejectReason codes, plus conflicting_duplicate).
CREATE OR REPLACE VIEW ${views}.rejected_by_reason AS
SELECT reason, count(*) AS records, min(rejected_at) AS first_rejected_at, max(rejected_at) AS last_rejected_at
FROM ${ns}.rejected_events
GROUP BY reason;
