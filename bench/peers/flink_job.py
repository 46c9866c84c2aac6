#!/usr/bin/env python3
"""The Flink peer of recon (bench/peers): one Flink SQL job in PyFlink's local cluster (the JVM PyFlink starts),
run by bench/peers/run.py with $RECON_CACHE/venv-flink's Python. It never stops by itself: the bench polls the
tables and stops the process group.

  Kafka (read_committed, key + value as raw bytes, partition/offset metadata)
    -> LATERAL TABLE(decode_event(key, value))   recon's validation in Java (udf/src/recon/peers/EventDecoder.java)
    -> ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proctime) = 1   first seen wins (keyed state)
       (a rejected record's key is its partition:offset, so every rejected record passes)
    -> ledger_events    valid events, appended
    -> rejected_events  bad records (partition, offset, key, payload, reason), appended
    -> trip_balances    GROUP BY trip_id, currency: the six sums, both balances, status, event count,
                        into an Iceberg v2 table with PRIMARY KEY (trip_id, currency) in upsert mode
  One statement set (one job: the source and the deduplication are shared by the three sinks); checkpoints
  EXACTLY_ONCE every --interval-ms on the heap state backend; Iceberg's FlinkSink commits each table at
  checkpoint completion. Catalog: Iceberg JdbcCatalog on PostgreSQL (catalog name `recon`, schema V1),
  warehouse on a local directory.
"""

import argparse
import os
import sys
import time
from urllib.parse import urlparse


def q(s):
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--catalog-url", required=True, help="postgres://user:pass@host:port/db")
    ap.add_argument("--warehouse", required=True, help="a local directory")
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--checkpoints", required=True, help="a local directory")
    ap.add_argument("--interval-ms", type=int, default=2000)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--explain", action="store_true", help="print the plan and exit")
    a = ap.parse_args()

    from pyflink.table import EnvironmentSettings, TableEnvironment

    settings = EnvironmentSettings.new_instance().in_streaming_mode().build()
    t_env = TableEnvironment.create(settings)
    conf = t_env.get_config()
    for k, v in {
        "parallelism.default": str(a.parallelism),
        "execution.checkpointing.interval": f"{a.interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.min-pause": "0 ms",
        "state.backend.type": "hashmap",
        "state.checkpoints.dir": "file://" + os.path.abspath(a.checkpoints),
        # Mini-batches: the aggregate emits one update per trip per batch, not one per event.
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": "1 s",
        "table.exec.mini-batch.size": "5000",
        "pipeline.name": f"recon-peer-flink-{a.namespace}",
    }.items():
        conf.set(k, v)

    u = urlparse(a.catalog_url)
    jdbc = f"jdbc:postgresql://{u.hostname}:{u.port or 5432}{u.path}"
    ns = f"recon.`{a.namespace}`"
    ddl = [
        f"""CREATE CATALOG recon WITH ('type'='iceberg', 'catalog-impl'='org.apache.iceberg.jdbc.JdbcCatalog',
            'uri'={q(jdbc)}, 'jdbc.user'={q(u.username or '')}, 'jdbc.password'={q(u.password or '')},
            'jdbc.schema-version'='V1', 'warehouse'={q('file://' + os.path.abspath(a.warehouse))})""",
        f"CREATE DATABASE IF NOT EXISTS {ns}",
        f"""CREATE TABLE IF NOT EXISTS {ns}.ledger_events (
            event_id STRING NOT NULL, event_type STRING NOT NULL, trip_id STRING NOT NULL,
            amount DECIMAL(18, 3) NOT NULL, currency STRING NOT NULL, occurred_at TIMESTAMP_LTZ(6) NOT NULL,
            rider_id STRING, driver_id STRING, payment_id STRING, payout_id STRING, schema_version INT NOT NULL,
            kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, ingested_at TIMESTAMP_LTZ(6) NOT NULL
        ) WITH ('format-version'='2', 'write.parquet.compression-codec'='zstd')""",
        f"""CREATE TABLE IF NOT EXISTS {ns}.rejected_events (
            kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, kafka_key BYTES, payload BYTES NOT NULL,
            reason STRING NOT NULL, rejected_at TIMESTAMP_LTZ(6) NOT NULL
        ) WITH ('format-version'='2', 'write.parquet.compression-codec'='zstd')""",
        f"""CREATE TABLE IF NOT EXISTS {ns}.trip_balances (
            trip_id STRING NOT NULL, currency STRING NOT NULL,
            charged DECIMAL(18, 3) NOT NULL, collected DECIMAL(18, 3) NOT NULL, refunded DECIMAL(18, 3) NOT NULL,
            paid_out DECIMAL(18, 3) NOT NULL, fees DECIMAL(18, 3) NOT NULL, adjusted DECIMAL(18, 3) NOT NULL,
            rider_balance DECIMAL(18, 3) NOT NULL, settlement_balance DECIMAL(18, 3) NOT NULL,
            status STRING NOT NULL, event_count INT NOT NULL, last_occurred_at TIMESTAMP_LTZ(6) NOT NULL,
            PRIMARY KEY (trip_id, currency) NOT ENFORCED
        ) WITH ('format-version'='2', 'write.upsert.enabled'='true',
                'write.parquet.compression-codec'='zstd')""",
        f"""CREATE TEMPORARY TABLE src (
            k BYTES, v BYTES,
            part INT METADATA FROM 'partition' VIRTUAL, off BIGINT METADATA FROM 'offset' VIRTUAL,
            pt AS PROCTIME()
        ) WITH ('connector'='kafka', 'topic'={q(a.topic)}, 'properties.bootstrap.servers'={q(a.brokers)},
            'properties.group.id'={q('recon-peer-flink-' + a.namespace)},
            'properties.isolation.level'='read_committed', 'scan.startup.mode'='earliest-offset',
            'key.format'='raw', 'key.fields'='k', 'value.format'='raw', 'value.fields-include'='EXCEPT_KEY')""",
        "CREATE TEMPORARY FUNCTION decode_event AS 'recon.peers.FlinkDecode' LANGUAGE JAVA",
        """CREATE TEMPORARY VIEW decoded AS
           SELECT part, off, k, v, pt, d.*,
                  COALESCE(d.event_id, CONCAT('bad:', CAST(part AS STRING), ':', CAST(off AS STRING))) AS dkey
           FROM src, LATERAL TABLE(decode_event(k, v)) AS d(reason, event_id, event_type, trip_id, amount,
                currency, occurred_at, rider_id, driver_id, payment_id, payout_id, schema_version)""",
    ]
    for stmt in ddl:
        t_env.execute_sql(stmt)
    # One Table object for the three INSERTs, so that they share one decode and one deduplication (views
    # written in SQL are expanded once per INSERT, and the decode's correlation variables make their digests
    # differ: the optimizer then built three decodes and three dedup states).
    t_env.create_temporary_view("first_seen", t_env.sql_query(
        """SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY dkey ORDER BY pt ASC) AS rn FROM decoded)
           WHERE rn = 1"""))

    zero = "CAST(0 AS DECIMAL(18, 3))"

    def total(event_type):
        return f"SUM(CASE WHEN event_type = '{event_type}' THEN amount ELSE {zero} END)"

    sums = f"""SELECT trip_id, currency,
        {total('trip_charge')} AS charged, {total('rider_payment')} AS collected, {total('refund')} AS refunded,
        {total('driver_payout')} AS paid_out, {total('platform_fee')} AS fees, {total('adjustment')} AS adjusted,
        COUNT(*) AS n, MAX(occurred_at) AS last_at
      FROM first_seen WHERE reason IS NULL GROUP BY trip_id, currency"""
    rider = "(charged + adjusted) - collected"
    settle = "(charged + adjusted - refunded) - paid_out - fees"
    stmts = t_env.create_statement_set()
    stmts.add_insert_sql(f"""INSERT INTO {ns}.ledger_events
        SELECT event_id, event_type, trip_id, amount, currency, occurred_at, rider_id, driver_id, payment_id,
               payout_id, schema_version, part, off, CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(6))
        FROM first_seen WHERE reason IS NULL""")
    stmts.add_insert_sql(f"""INSERT INTO {ns}.rejected_events
        SELECT part, off, k, v, reason, CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(6))
        FROM first_seen WHERE reason IS NOT NULL""")
    stmts.add_insert_sql(f"""INSERT INTO {ns}.trip_balances
        SELECT trip_id, currency,
          CAST(charged AS DECIMAL(18, 3)), CAST(collected AS DECIMAL(18, 3)), CAST(refunded AS DECIMAL(18, 3)),
          CAST(paid_out AS DECIMAL(18, 3)), CAST(fees AS DECIMAL(18, 3)), CAST(adjusted AS DECIMAL(18, 3)),
          CAST({rider} AS DECIMAL(18, 3)), CAST({settle} AS DECIMAL(18, 3)),
          CASE WHEN {rider} < 0 OR {settle} < 0 THEN 'DISCREPANCY'
               WHEN {rider} = 0 AND {settle} = 0 AND charged > 0 THEN 'BALANCED' ELSE 'OPEN' END,
          CAST(n AS INT), last_at
        FROM ({sums})""")
    if a.explain:
        print(stmts.explain())
        return
    result = stmts.execute()
    print(f"flink job submitted: {result.get_job_client().get_job_id()} at {time.time():.3f}", flush=True)
    # Runs until the bench stops the process group.
    result.wait()


if __name__ == "__main__":
    sys.exit(main())
