"""pyiceberg + DuckDB read the pipeline's tables through the SQL catalog on PostgreSQL with the warehouse on S3
(runs in CI: infra/local/test, phase `pyiceberg`).

The job consumes generated traffic (duplicates, conflicting duplicates, out-of-order and poison records) in two
runs, so the tables carry commits of two generations. Then:
- pyiceberg: every table loads; ledger_events scans with a day filter (partition pruning) give each business
  day's rows; the snapshot summaries carry the job's markers;
- DuckDB over the Arrow results runs the shipped views (infra/sql/views) and queries: row counts, sums per event
  type and currency, daily totals, current balance per trip (every column), open and discrepant trips, dead
  letters per reason all equal the truth exactly (decimals as decimals);
- batch-verify (files truth) is clean for every business day, its totals equal DuckDB's, and its runs are
  readable from verification_runs through pyiceberg.
"""

from __future__ import annotations

import time
from datetime import datetime, time as dtime, timedelta, timezone

from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

import recon_pyiceberg as rp
import recon_sql
from recon_job import Job
from truth import Truth, assert_matches, assert_matches_batch_verify


def test_pyiceberg_and_duckdb_read_the_tables_exactly(services, tmp_path):
    job = Job(services, "pyq", tmp_path)
    job.generate(trips=1200, seed=701)
    first = job.run_until_idle()
    job.generate(trips=800, seed=702)
    second = job.run_until_idle()
    assert "generation 1" in first and "generation 2" in second, (first[-500:], second[-500:])
    truth = Truth.from_jsonl(*job.truth_files)
    assert truth.events > 7000 and sum(truth.rejected.values()) > 50, "traffic must be sizeable and noisy"
    assert truth.rejected["conflicting_duplicate"] > 0 and truth.trips_with_status("DISCREPANCY")

    cat = rp.catalog(services)
    t0 = time.monotonic()
    names = {t for (_, t) in cat.list_tables(job.namespace)}
    assert set(rp.PIPELINE_TABLES) <= names, names
    tables = {name: cat.load_table(f"{job.namespace}.{name}") for name in rp.PIPELINE_TABLES}
    arrow = {name: t.scan().to_arrow() for name, t in tables.items()}
    read_s = time.monotonic() - t0
    assert arrow["ledger_events"].num_rows == truth.events
    assert str(arrow["ledger_events"].schema.field("amount").type) == "decimal128(18, 3)"

    # The job's idempotency markers are in the current snapshot's summary.
    summary = tables["ledger_events"].current_snapshot().summary
    props = summary.additional_properties
    assert props.get("recon.job-id") == job.name, props
    assert props.get("recon.generation") == "2", props
    assert int(props["recon.checkpoint-id"]) >= int(props["recon.checkpoint-first"]) > 0, props

    # Day filters prune partitions and give each business day's rows.
    for day in truth.business_dates:
        start = datetime.combine(day, dtime(), tzinfo=timezone.utc)
        rows = tables["ledger_events"].scan(
            row_filter=And(
                GreaterThanOrEqual("occurred_at", start.isoformat()),
                LessThan("occurred_at", (start + timedelta(days=1)).isoformat()),
            ),
            selected_fields=("event_id",),
        ).to_arrow().num_rows
        assert rows == sum(n for (d, _, _), (n, _) in truth.daily.items() if d == day), day

    # DuckDB over the Arrow tables, through the shipped views and queries.
    con = rp.duckdb_over(arrow, job.namespace)
    run = rp.duckdb_runner(con)
    assert recon_sql.create_views(run, job.namespace) == [
        "current_trip_balances", "open_trips", "discrepant_trips", "daily_totals", "rejected_by_reason",
    ]
    figures = recon_sql.collect("duckdb", run, job.namespace)
    assert_matches(truth, figures)

    reports = [job.batch_verify(day) for day in truth.business_dates]
    assert_matches_batch_verify(figures, reports)
    assert sum(r["truth_events"] for r in reports) == truth.events

    runs = cat.load_table(f"{job.namespace}.verification_runs").scan().to_arrow().to_pylist()
    assert sorted((str(r["business_date"]), r["status"], r["ledger_events"]) for r in runs) == sorted(
        (r["business_date"], "clean", r["ledger_events"]) for r in reports
    )
    print(f"\npyiceberg: {truth.events} events, {len(truth.balances)} trips, "
          f"{len(truth.business_dates)} business days; catalog load + scan of 3 tables {read_s:.1f}s")
