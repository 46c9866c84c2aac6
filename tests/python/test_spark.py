"""Spark (Iceberg runtime) on the pipeline's catalog: the shipped views and figures equal the truth and
batch-verify's, and table maintenance (infra/spark/recon_maintenance.py) keeps the job exactly once.

Opt-in (RECON_SPARK=1 infra/local/test, or infra/spark/test with the services up): see infra/spark/README.md.

1. The job consumes two batches of noisy traffic (two generations); Spark creates the views (Iceberg views in
   the JDBC catalog) and every figure equals the truth; batch-verify is clean and its totals equal Spark's.
2. With the job stopped: rewrite_data_files, rewrite_manifests, expire_snapshots (keeping each job's newest
   stamp), remove_orphan_files (a planted orphan goes, nothing referenced does). Files and snapshots shrink,
   the figures are unchanged, the job's stamp is still in the ancestry.
3. New input; the job is SIGKILLed after its first commit, restarted, drains: figures equal the truth of all
   input, batch-verify clean (no duplicate, nothing lost).
4. Maintenance while the job runs and input keeps arriving; the job commits after it, stops cleanly on
   SIGTERM, drains on restart: same figures, batch-verify clean.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import timedelta

import pytest

from recon_job import REPO, Job, wait
import recon_pyiceberg as rp
import recon_sql
from truth import Truth, assert_matches, assert_matches_batch_verify

sys.path.insert(0, str(REPO / "infra" / "spark"))

if os.environ.get("RECON_SPARK") != "1" and "pyspark" not in sys.modules:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        pytest.skip("*** Spark test: PySpark is not installed; run infra/spark/test. It did NOT run. ***",
                    allow_module_level=True)

import recon_maintenance  # noqa: E402
import recon_spark  # noqa: E402


@pytest.fixture(scope="module")
def spark():
    t0 = time.monotonic()
    s = recon_spark.session("recon-tests")
    s.sql("SELECT 1").collect()
    print(f"\nspark: session up in {time.monotonic() - t0:.1f}s (Spark {s.version})")
    yield s
    s.stop()


def runner(spark):
    def run(sql: str) -> list[dict]:
        return [r.asDict() for r in spark.sql(sql).collect()]

    return run


def check_figures(spark, job: Job, label: str) -> Truth:
    truth = Truth.from_jsonl(*job.truth_files)
    ns = f"recon.{job.namespace}"
    t0 = time.monotonic()
    figures = recon_sql.collect(f"spark ({label})", runner(spark), ns)
    took = time.monotonic() - t0
    assert_matches(truth, figures)
    reports = [job.batch_verify(day) for day in truth.business_dates]
    assert_matches_batch_verify(figures, reports)
    print(f"spark ({label}): {truth.events} events, {len(truth.balances)} trips exact; figures in {took:.1f}s")
    return truth


def stamp(spark, job: Job, table: str):
    return recon_maintenance.newest_stamps(spark, f"recon.{job.namespace}.{table}").get(job.name)


def test_spark_views_figures_and_maintenance(services, spark, tmp_path):
    job = Job(services, "spq", tmp_path)
    ns = f"recon.{job.namespace}"
    job.generate(trips=1000, seed=801)
    job.run_until_idle()
    job.generate(trips=600, seed=802)
    job.run_until_idle()

    # 1. Views and figures.
    assert recon_sql.create_views(runner(spark), ns)[0] == "current_trip_balances"
    views = {r["viewName"] for r in spark.sql(f"SHOW VIEWS IN {ns}").collect()}
    assert {"current_trip_balances", "daily_totals", "open_trips", "discrepant_trips", "rejected_by_reason"} <= views
    t0 = time.monotonic()
    spark.sql(f"SELECT * FROM {ns}.daily_totals").collect()
    print(f"spark: daily_totals answered in {time.monotonic() - t0:.1f}s")
    truth = check_figures(spark, job, "after two runs")

    # 2. Maintenance with the job stopped (cleanly: nothing pending), orphans older than now.
    ledger = rp.catalog(services).load_table(f"{job.namespace}.ledger_events")
    planted = f"{ledger.location()}/data/planted-orphan-{job.name}.parquet"
    with ledger.io.new_output(planted).create() as f:
        f.write(b"not referenced by any snapshot")
    stamps_before = {t: stamp(spark, job, t) for t in recon_maintenance.JOB_TABLES}
    reports = recon_maintenance.maintain(
        spark, job.namespace, retain=timedelta(0), orphans_older_than=timedelta(0),
        now_ms=int(time.time() * 1000) + 1000,
    )
    for r in reports:
        print(f"maintenance (stopped): {r}")
        assert r.data_files_after < r.data_files_before, r
        assert r.snapshots_after < r.snapshots_before, r
        assert r.kept_stamps.get(job.name) is not None, r
    by_table = {r.table.rsplit(".", 1)[1]: r for r in reports}
    # The job's newest stamp is the snapshot before the compaction, and it is kept: the files it references stay
    # until the job commits on top of the rewrite and a later expiration passes it (asserted in step 4).
    assert by_table["ledger_events"].deleted_data_files == 0
    assert planted in by_table["ledger_events"].orphan_files, by_table["ledger_events"].orphan_files
    assert not ledger.io.new_input(planted).exists()
    assert {t: stamp(spark, job, t) for t in recon_maintenance.JOB_TABLES} == stamps_before
    spark.sql(f"REFRESH TABLE {ns}.ledger_events")
    check_figures(spark, job, "after maintenance")

    # 3. New input, SIGKILL after the first commit, restart: exactly once across maintenance and a crash.
    job.generate(trips=600, seed=803)
    job.kill_after_commit(commits=1)
    job.run_until_idle()
    truth = check_figures(spark, job, "after a crash and restart")
    assert len(truth.balances) == 2200

    # 4. Maintenance while the job runs, input arriving throughout.
    job.generate(trips=400, seed=804)
    child, log = job.spawn(idle_exit_ms=600_000)
    errors: list[BaseException] = []

    def publish_more():
        try:
            job.generate(trips=400, seed=805, rate=100)  # ~1,800 records over ~18 s
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def commits() -> int:
        return log.read_text(errors="replace").count("commit landed")

    def wait_commits(n: int, what: str) -> None:
        deadline = time.monotonic() + 90
        while commits() < n:
            assert child.poll() is None, f"the job exited while {what}:\n" + log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"no {n} commits within 90 s while {what}"
            time.sleep(0.05)

    feeder = threading.Thread(target=publish_more)
    feeder.start()
    try:
        wait_commits(3, "waiting for the job to commit")
        running = recon_maintenance.maintain(spark, job.namespace, retain=timedelta(0), orphans_older_than=None)
        during = commits()
        job.generate(trips=200, seed=806)
        wait_commits(during + 3, "committing after maintenance")
        feeder.join(timeout=120)
        assert not feeder.is_alive() and not errors, errors
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    rc = wait(child, 120, log)
    text = log.read_text(errors="replace")
    assert rc == 0 and "stopped cleanly" in text, f"SIGTERM must stop the job cleanly (exit {rc}):\n{text[-3000:]}"
    for r in running:
        print(f"maintenance (running): {r}")
        assert r.kept_stamps.get(job.name) is not None, r
    # The files compacted away in step 2 are referenced by no retained snapshot any more: deleted now.
    assert {r.table.rsplit(".", 1)[1]: r for r in running}["ledger_events"].deleted_data_files > 0
    job.run_until_idle()  # drains what was published after the final checkpoint
    truth = check_figures(spark, job, "after maintenance while running")
    assert len(truth.balances) == 3200


def test_expiring_the_jobs_stamp_does_not_make_the_job_recommit(services, spark, tmp_path):
    """The recipe the maintenance script avoids: compaction, then expiration of everything but the newest
    (unstamped) snapshot, which removes the job's stamped snapshot from the ancestry. Each append also writes the
    job's marker as the table property recon.marker.<job>, in the same transaction, so the job must resume from it:
    no checkpoint is committed twice and every figure still equals the truth."""
    job = Job(services, "spx", tmp_path)
    table = f"recon.{job.namespace}.ledger_events"
    job.generate(trips=300, seed=1001)
    job.run_until_idle()
    spark.sql(f"CALL recon.system.rewrite_data_files(table => '{job.namespace}.ledger_events', "
              "options => map('min-input-files', '1', 'rewrite-all', 'true'))").collect()
    future = recon_maintenance._ts(int(time.time() * 1000) + 1000)
    spark.sql(f"CALL recon.system.expire_snapshots(table => '{job.namespace}.ledger_events', "
              f"older_than => {future}, retain_last => 1)").collect()
    assert recon_maintenance.newest_stamps(spark, table) == {}, "the recipe must have removed the stamp"
    props = {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES {table}").collect()}
    assert f"recon.marker.{job.name}" in props, props

    job.generate(trips=100, seed=1002)
    text = job.run_until_idle()
    assert "commit landed" in text and "first=1 " not in text, f"the job re-committed from checkpoint 1:\n{text[-3000:]}"
    assert recon_sql.create_views(runner(spark), f"recon.{job.namespace}")[0] == "current_trip_balances"
    spark.sql(f"REFRESH TABLE {table}")
    truth = check_figures(spark, job, "after the stamp expired")
    assert len(truth.balances) == 400
