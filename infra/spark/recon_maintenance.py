"""Table maintenance for recon's Iceberg tables with Spark procedures, safe for the streaming job.

    infra/spark/maintain --namespace recon [--retain-hours 24] [--orphans-older-than-hours 72] [--no-orphans]

Per table (ledger_events, trip_balances, rejected_events by default), in this order:

1. `rewrite_data_files`: compacts the job's many small per-checkpoint files (a `replace` snapshot).
2. `rewrite_manifests`: one manifest per commit becomes a few (another `replace` snapshot).
3. `expire_snapshots(older_than => T, retain_last => 1)`, where T is the *earlier* of now - retain-hours and
   the commit time of the newest snapshot stamped by each job in the current ancestry. The job recovers by
   walking the ancestry for its newest `recon.checkpoint-id` stamp; the rewrites above add unstamped
   snapshots on top, so a plain `retain_last => 1` would expire the stamp and the job would find no commit of
   its own, and re-commit its retained checkpoints (duplicates). Expiring strictly older than the newest
   stamp keeps it (Iceberg expires snapshots with `committed_at < older_than`).
4. `remove_orphan_files(older_than => now - orphans-older-than-hours, prefix_listing => true)`. A checkpoint
   that is complete but not yet committed has its data files in the warehouse, unreferenced: with a short
   `older_than` orphan removal would delete them and the job's recovery would then commit missing files.
   Keep the default 72 hours (the job commits within `commit.interval_ms_max`, 60 s by default). Under 24 hours
   the SQL procedure refuses; this script then uses Iceberg's action API, which is safe only with every job
   stopped cleanly (SIGTERM: final checkpoint and commit, nothing pending).

The job may run meanwhile: its appends and these rewrites are optimistic commits on the same table, each
retried on conflict (the job's guard re-checks its stamp on the new base, which a rewrite does not change).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

JOB_TABLES = ("ledger_events", "trip_balances", "rejected_events")
STAMP = "recon.job-id"


def _ts(ms: int) -> str:
    """A Spark timestamp literal (the session runs in UTC: spark.sql.session.timeZone)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return f"TIMESTAMP '{dt.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}'"


def newest_stamps(spark, table: str) -> dict[str, int]:
    """job id -> commit time (epoch ms) of that job's newest stamped snapshot in the current ancestry."""
    rows = spark.sql(
        f"""SELECT s.summary['{STAMP}'] AS job, max(unix_millis(s.committed_at)) AS at_ms
            FROM {table}.snapshots s JOIN {table}.history h ON s.snapshot_id = h.snapshot_id
            WHERE h.is_current_ancestor AND s.summary['{STAMP}'] IS NOT NULL
            GROUP BY s.summary['{STAMP}']"""
    ).collect()
    return {r["job"]: int(r["at_ms"]) for r in rows}


def remove_orphans_now(spark, table: str, older_than_ms: int) -> list[str]:
    """remove_orphan_files with an interval under 24 hours, which the SQL procedure refuses: through Iceberg's
    action API (SparkActions.deleteOrphanFiles). Only with every writer of the table stopped cleanly (for the
    job: SIGTERM, so no checkpoint is complete and uncommitted)."""
    jvm = spark.sparkContext._jvm
    jtable = jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(spark._jsparkSession, table)
    result = (
        jvm.org.apache.iceberg.spark.actions.SparkActions.get(spark._jsparkSession)
        .deleteOrphanFiles(jtable)
        .olderThan(older_than_ms)
        .usePrefixListing(True)
        .execute()
    )
    return [str(x) for x in result.orphanFileLocations()]


def count(spark, sql: str) -> int:
    return int(spark.sql(sql).collect()[0][0])


@dataclass
class TableReport:
    table: str
    data_files_before: int = 0
    data_files_after: int = 0
    snapshots_before: int = 0
    snapshots_after: int = 0
    rewritten_data_files: int = 0
    added_data_files: int = 0
    rewritten_manifests: int = 0
    expire_older_than: str = ""
    kept_stamps: dict = field(default_factory=dict)
    deleted_data_files: int = 0
    deleted_manifest_files: int = 0
    orphan_files: list = field(default_factory=list)
    seconds: float = 0.0


def maintain_table(
    spark,
    table: str,
    *,
    retain: timedelta,
    orphans_older_than: timedelta | None,
    now_ms: int | None = None,
    min_input_files: int = 2,
) -> TableReport:
    """Runs the four procedures on `table` (catalog-qualified, e.g. recon.recon.ledger_events)."""
    t0 = time.monotonic()
    cat, ns_table = table.split(".", 1)
    r = TableReport(table)
    r.data_files_before = count(spark, f"SELECT count(*) FROM {table}.files")
    r.snapshots_before = count(spark, f"SELECT count(*) FROM {table}.snapshots")

    row = spark.sql(
        f"CALL {cat}.system.rewrite_data_files(table => '{ns_table}', "
        f"options => map('min-input-files', '{min_input_files}'))"
    ).collect()[0]
    r.rewritten_data_files, r.added_data_files = int(row["rewritten_data_files_count"]), int(
        row["added_data_files_count"]
    )
    row = spark.sql(f"CALL {cat}.system.rewrite_manifests(table => '{ns_table}')").collect()[0]
    r.rewritten_manifests = int(row["rewritten_manifests_count"])

    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    stamps = newest_stamps(spark, table)
    older_than = min([now_ms - int(retain.total_seconds() * 1000), *stamps.values()])
    r.kept_stamps = stamps
    r.expire_older_than = _ts(older_than)
    row = spark.sql(
        f"CALL {cat}.system.expire_snapshots(table => '{ns_table}', older_than => {_ts(older_than)}, retain_last => 1)"
    ).collect()[0]
    r.deleted_data_files = int(row["deleted_data_files_count"])
    r.deleted_manifest_files = int(row["deleted_manifest_files_count"])
    after = newest_stamps(spark, table)
    # Every job's newest stamp must still be an ancestor (or a newer one, when the job committed meanwhile).
    if any(after.get(job, -1) < at for job, at in stamps.items()):
        raise AssertionError(f"{table}: expire_snapshots lost a job's newest stamp: before {stamps}, after {after}")

    if orphans_older_than is not None:
        cutoff = now_ms - int(orphans_older_than.total_seconds() * 1000)
        if orphans_older_than >= timedelta(hours=24):
            rows = spark.sql(
                f"CALL {cat}.system.remove_orphan_files(table => '{ns_table}', older_than => {_ts(cutoff)}, "
                f"prefix_listing => true)"
            ).collect()
            r.orphan_files = [x["orphan_file_location"] for x in rows]
        else:
            r.orphan_files = remove_orphans_now(spark, table, cutoff)

    r.data_files_after = count(spark, f"SELECT count(*) FROM {table}.files")
    r.snapshots_after = count(spark, f"SELECT count(*) FROM {table}.snapshots")
    r.seconds = round(time.monotonic() - t0, 1)
    return r


def maintain(spark, namespace: str, tables=JOB_TABLES, catalog: str = "recon", **kw) -> list[TableReport]:
    return [maintain_table(spark, f"{catalog}.{namespace}.{t}", **kw) for t in tables]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--namespace", default="recon")
    p.add_argument("--tables", nargs="+", default=list(JOB_TABLES))
    p.add_argument("--retain-hours", type=float, default=24.0, help="keep snapshots younger than this")
    p.add_argument(
        "--orphans-older-than-hours",
        type=float,
        default=72.0,
        help="remove unreferenced files older than this; below a few minutes only with every job stopped cleanly",
    )
    p.add_argument("--no-orphans", action="store_true", help="skip remove_orphan_files")
    a = p.parse_args(argv)
    import recon_spark

    spark = recon_spark.session("recon-maintenance")
    reports = maintain(
        spark,
        a.namespace,
        tables=a.tables,
        retain=timedelta(hours=a.retain_hours),
        orphans_older_than=None if a.no_orphans else timedelta(hours=a.orphans_older_than_hours),
    )
    for r in reports:
        print(json.dumps(asdict(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
