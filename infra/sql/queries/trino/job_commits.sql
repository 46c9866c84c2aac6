-- Trino's form of spark/job_commits.sql: the pipeline's commits to one table with their exactly-once markers
-- (element_at: Trino's map subscript fails on a missing key, and maintenance snapshots carry no recon.* keys).
-- ${ns} is e.g. recon.recon and ${table} the bare table name, e.g. ledger_events.
SELECT s.committed_at, s.snapshot_id, s.operation, h.is_current_ancestor,
       element_at(s.summary, 'recon.job-id') AS job_id,
       CAST(element_at(s.summary, 'recon.generation') AS BIGINT) AS generation,
       CAST(element_at(s.summary, 'recon.checkpoint-first') AS BIGINT) AS checkpoint_first,
       CAST(element_at(s.summary, 'recon.checkpoint-id') AS BIGINT) AS checkpoint_id,
       element_at(s.summary, 'recon.offsets') AS offsets,
       CAST(element_at(s.summary, 'added-records') AS BIGINT) AS added_records
FROM ${ns}."${table}$snapshots" s JOIN ${ns}."${table}$history" h ON s.snapshot_id = h.snapshot_id
ORDER BY s.committed_at DESC;
