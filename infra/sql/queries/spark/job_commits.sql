-- The pipeline's commits to one table, newest first, with the exactly-once markers of each snapshot summary
-- (recon.job-id, recon.generation, recon.checkpoint-first .. recon.checkpoint-id, recon.offsets) and whether
-- the snapshot is in the current ancestry. Maintenance must keep each job's newest stamped snapshot there
-- (infra/spark/recon_maintenance.py). ${table} is e.g. recon.recon.ledger_events.
SELECT s.committed_at, s.snapshot_id, s.operation, h.is_current_ancestor,
       s.summary['recon.job-id'] AS job_id,
       CAST(s.summary['recon.generation'] AS BIGINT) AS generation,
       CAST(s.summary['recon.checkpoint-first'] AS BIGINT) AS checkpoint_first,
       CAST(s.summary['recon.checkpoint-id'] AS BIGINT) AS checkpoint_id,
       s.summary['recon.offsets'] AS offsets,
       CAST(s.summary['added-records'] AS BIGINT) AS added_records
FROM ${table}.snapshots s JOIN ${table}.history h ON s.snapshot_id = h.snapshot_id
ORDER BY s.committed_at DESC;
