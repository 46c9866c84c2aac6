"""Trino (Iceberg connector, JDBC catalog) on the pipeline's catalog: the shipped views and queries give the same
figures as the truth and batch-verify (opt-in: RECON_TRINO=1 infra/local/test, or infra/trino/test with the
services up; see infra/trino/README.md).

The job consumes noisy traffic in two runs, then is SIGKILLed after a commit on more input and restarted; Trino
creates the views (Iceberg views in the JDBC catalog, in a namespace of their own) and every figure equals the
truth; batch-verify is clean
and its totals equal Trino's; the job's markers are readable from `$snapshots`.
"""

from __future__ import annotations

import os
import time

import pytest

import recon_sql
from recon_job import Job
from truth import Truth, assert_matches, assert_matches_batch_verify

trino = pytest.importorskip("trino", reason="*** Trino test: the trino client is not installed. It did NOT run. ***")

PORT = int(os.environ.get("RECON_TRINO_PORT", "18080"))


@pytest.fixture(scope="module")
def cursor():
    conn = trino.dbapi.connect(host="127.0.0.1", port=PORT, user="recon", catalog="recon", http_scheme="http")
    cur = conn.cursor()
    try:
        cur.execute("SELECT 1")
        cur.fetchall()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"no Trino on 127.0.0.1:{PORT} ({e}): start it with infra/trino/up (infra/trino/test does)")
    yield cur
    conn.close()


def runner(cur):
    def run(sql: str) -> list[dict]:
        cur.execute(sql)
        rows = cur.fetchall()
        if not cur.description:
            return []
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in rows]

    return run


def test_trino_views_and_figures(services, cursor, tmp_path):
    job = Job(services, "trq", tmp_path)
    ns = f"recon.{job.namespace}"
    job.generate(trips=1000, seed=901)
    job.run_until_idle()
    job.generate(trips=600, seed=902)
    job.kill_after_commit(commits=1)
    job.run_until_idle()
    truth = Truth.from_jsonl(*job.truth_files)
    run = runner(cursor)

    # Trino's views in a namespace of their own (an Iceberg view holds one engine's dialect), over the job's tables.
    views_ns = f"{ns}_trino"
    run(f"CREATE SCHEMA {views_ns}")
    assert recon_sql.create_views(run, ns, views_ns)[0] == "current_trip_balances"
    views = {r["Table"] for r in run(f"SHOW TABLES FROM {views_ns}")}
    assert views == {"current_trip_balances", "open_trips", "discrepant_trips", "daily_totals", "rejected_by_reason"}
    t0 = time.monotonic()
    run(f"SELECT * FROM {views_ns}.daily_totals")
    daily_s = time.monotonic() - t0
    t0 = time.monotonic()
    figures = recon_sql.collect("trino", run, ns, views_ns)
    figures_s = time.monotonic() - t0
    assert_matches(truth, figures)
    reports = [job.batch_verify(day) for day in truth.business_dates]
    assert_matches_batch_verify(figures, reports)

    # One day's totals through the partition-pruned query equal the view's.
    for day in truth.business_dates:
        rows = run(recon_sql.query("daily_totals_of_day", ns=ns,
                                   day_start=f"TIMESTAMP '{day} 00:00:00 UTC'",
                                   day_end=f"TIMESTAMP '{day} 00:00:00 UTC' + INTERVAL '1' DAY"))
        got = {(r["event_type"], r["currency"]): (int(r["events"]), r["amount"]) for r in rows}
        assert got == {(t, c): v for (d, t, c), v in truth.daily.items() if d == day}, day

    # The job's markers, through the shipped metadata query: the newest ancestor is stamped by this job with
    # the highest checkpoint, and checkpoint ranges tile without overlap along the ancestry.
    commits = run(recon_sql.render(recon_sql.QUERIES_DIR / "trino" / "job_commits.sql", ns=ns, table="ledger_events"))
    stamped = [c for c in commits if c["is_current_ancestor"] and c["job_id"] == job.name]
    assert stamped and stamped[0]["snapshot_id"] == commits[0]["snapshot_id"]
    ranges = sorted((c["checkpoint_first"], c["checkpoint_id"]) for c in stamped)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])), ranges
    assert sum(c["added_records"] or 0 for c in stamped) == truth.events
    print(f"\ntrino: {truth.events} events, {len(truth.balances)} trips exact; daily_totals {daily_s:.1f}s, "
          f"all figures {figures_s:.1f}s")
