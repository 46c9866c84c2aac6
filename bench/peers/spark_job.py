#!/usr/bin/env python3
"""The Spark peer of recon (bench/peers): one Structured Streaming query in local[2] (PySpark 3.5 + Iceberg 1.10,
infra/spark's install plus Spark's Kafka source), run by bench/peers/run.py with $RECON_CACHE/venv-spark's Python.
It never stops by itself: the bench polls the tables and stops the process group.

  Kafka (kafka.isolation.level=read_committed, startingOffsets=earliest, failOnDataLoss)
    -> decode_event(key, value)          recon's validation in Java (udf/src/recon/peers/EventDecoder.java)
    -> dropDuplicates(dkey)              first seen wins (state store); dkey = event_id, or partition:offset for a
                                         rejected record, so every rejected record passes
    -> foreachBatch(batch, batch_id), in this order:
         trip_balances    the batch's sums per (trip_id, currency) MERGEd into an Iceberg v2 table
                          (merge-on-read); a trip row carries the batch_id that last changed it and a replayed
                          batch skips rows already at that batch: idempotent per row
         rejected_events  appended, snapshot property peer.batch-id; a batch the table already has is skipped
         ledger_events    appended likewise, last: its peer.batch-id says the whole batch is in
  Exactly once: the Kafka offsets of every batch are in checkpointLocation (offset log before, commit log after
  foreachBatch), a batch re-run after a crash reads the same records and the same dedup state, and every write
  above is idempotent by batch id. Trigger: processingTime --interval-ms (Spark takes everything available
  at each trigger unless --max-offsets-per-trigger). Catalog: Iceberg JdbcCatalog on PostgreSQL (catalog `recon`,
  schema V1), warehouse on a local directory (HadoopFileIO).
"""

import argparse
import glob
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "infra", "spark"))

import recon_spark  # noqa: E402

SUMS = [("charged", "trip_charge"), ("collected", "rider_payment"), ("refunded", "refund"),
        ("paid_out", "driver_payout"), ("fees", "platform_fee"), ("adjusted", "adjustment")]


def session(app, warehouse, extra_jars=(), driver_memory="2g", parallelism=2):
    """A SparkSession with infra/spark's configuration (catalog `recon` = Iceberg JdbcCatalog on
    RECON_PG_CATALOG_URL), the warehouse on a local directory through HadoopFileIO instead of S3FileIO, and
    infra/spark's jars plus `extra_jars`."""
    return recon_spark.session(app, {
        "spark.master": f"local[{parallelism}]",
        "spark.driver.memory": driver_memory,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.catalog.recon.io-impl": "org.apache.iceberg.hadoop.HadoopFileIO",
        "spark.sql.catalog.recon.warehouse": "file://" + os.path.abspath(warehouse),
    }, extra_jars)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--warehouse", required=True, help="a local directory")
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--checkpoints", required=True, help="a local directory (checkpointLocation)")
    ap.add_argument("--interval-ms", type=int, default=2000)
    ap.add_argument("--max-offsets-per-trigger", type=int, default=0, help="0: no limit (Spark's default)")
    ap.add_argument("--kafka-jars", required=True)
    ap.add_argument("--udf-jar", required=True)
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--parallelism", type=int, default=2, help="local[N]")
    ap.add_argument("--explain", action="store_true")
    a = ap.parse_args()
    # The catalog URL comes from RECON_PG_CATALOG_URL (recon_spark.local_overrides_from_env).
    spark = session(f"recon-peer-spark-{a.namespace}", a.warehouse,
                    sorted(glob.glob(os.path.join(a.kafka_jars, "*.jar"))) + [a.udf_jar], a.driver_memory,
                    a.parallelism)
    from pyspark.sql import functions as F
    from pyspark.sql.types import (DecimalType, IntegerType, StringType, StructField, StructType,
                                   TimestampType)

    spark.udf.registerJavaFunction("decode_event", "recon.peers.SparkDecode", StructType([
        StructField("reason", StringType()), StructField("event_id", StringType()),
        StructField("event_type", StringType()), StructField("trip_id", StringType()),
        StructField("amount", DecimalType(18, 3)), StructField("currency", StringType()),
        StructField("occurred_at", TimestampType()), StructField("rider_id", StringType()),
        StructField("driver_id", StringType()), StructField("payment_id", StringType()),
        StructField("payout_id", StringType()), StructField("schema_version", IntegerType())]))

    ns = f"recon.`{a.namespace}`"
    money = "DECIMAL(18, 3) NOT NULL"
    for stmt in [
        f"CREATE NAMESPACE IF NOT EXISTS {ns}",
        f"""CREATE TABLE IF NOT EXISTS {ns}.ledger_events (
              event_id STRING NOT NULL, event_type STRING NOT NULL, trip_id STRING NOT NULL, amount {money},
              currency STRING NOT NULL, occurred_at TIMESTAMP NOT NULL, rider_id STRING, driver_id STRING,
              payment_id STRING, payout_id STRING, schema_version INT NOT NULL, kafka_partition INT NOT NULL,
              kafka_offset BIGINT NOT NULL, batch_id BIGINT NOT NULL, ingested_at TIMESTAMP NOT NULL)
            USING iceberg PARTITIONED BY (days(occurred_at))
            TBLPROPERTIES ('format-version'='2', 'write.parquet.compression-codec'='zstd')""",
        f"""CREATE TABLE IF NOT EXISTS {ns}.rejected_events (
              kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, kafka_key BINARY, payload BINARY NOT NULL,
              reason STRING NOT NULL, batch_id BIGINT NOT NULL, rejected_at TIMESTAMP NOT NULL)
            USING iceberg PARTITIONED BY (days(rejected_at))
            TBLPROPERTIES ('format-version'='2', 'write.parquet.compression-codec'='zstd')""",
        f"""CREATE TABLE IF NOT EXISTS {ns}.trip_balances (
              trip_id STRING NOT NULL, currency STRING NOT NULL,
              {", ".join(f"{c} {money}" for c, _ in SUMS)},
              rider_balance {money}, settlement_balance {money}, status STRING NOT NULL, event_count INT NOT NULL,
              last_occurred_at TIMESTAMP NOT NULL, batch_id BIGINT NOT NULL)
            USING iceberg
            TBLPROPERTIES ('format-version'='2', 'write.parquet.compression-codec'='zstd',
              'write.merge.mode'='merge-on-read', 'write.update.mode'='merge-on-read',
              'write.delete.mode'='merge-on-read')""",
    ]:
        spark.sql(stmt)

    reader = (spark.readStream.format("kafka")
              .option("kafka.bootstrap.servers", a.brokers)
              .option("subscribe", a.topic)
              .option("startingOffsets", "earliest")
              .option("kafka.isolation.level", "read_committed")
              .option("failOnDataLoss", "true"))
    if a.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(a.max_offsets_per_trigger))
    first_seen = (reader.load()
                  .selectExpr("partition AS part", "offset AS off", "key AS k", "value AS v",
                              "decode_event(key, value) AS d")
                  .selectExpr("part", "off", "k", "v", "d.*")
                  .selectExpr("*", "coalesce(event_id, concat('bad:', part, ':', off)) AS dkey")
                  .dropDuplicates(["dkey"]))

    def last_batch(table):
        rows = spark.sql(f"SELECT max(CAST(summary['peer.batch-id'] AS BIGINT)) AS b FROM {ns}.{table}.snapshots").collect()
        return rows[0]["b"] if rows and rows[0]["b"] is not None else -1

    done = {t: last_batch(t) for t in ("ledger_events", "rejected_events")}

    def balances(col):
        """rider_balance, settlement_balance and status (recon's rules, schemas/src/balance.rs, less the
        conflicting-duplicate and currency-mismatch flags) over sums named by col(name)."""
        r = f"({col('charged')} + {col('adjusted')}) - {col('collected')}"
        s = f"({col('charged')} + {col('adjusted')} - {col('refunded')}) - {col('paid_out')} - {col('fees')}"
        status = (f"CASE WHEN {r} < 0 OR {s} < 0 THEN 'DISCREPANCY' "
                  f"WHEN {r} = 0 AND {s} = 0 AND {col('charged')} > 0 THEN 'BALANCED' ELSE 'OPEN' END")
        return f"CAST({r} AS DECIMAL(18, 3))", f"CAST({s} AS DECIMAL(18, 3))", status

    def updated(c):
        return f"(t.{c} + s.{c})"

    def inserted(c):
        return f"s.{c}"

    def write_batch(df, batch_id):
        if batch_id <= done["ledger_events"]:
            return
        df.persist()
        valid = df.where("reason IS NULL")
        sums = valid.groupBy("trip_id", "currency").agg(
            *[F.expr(f"CAST(sum(CASE WHEN event_type = '{t}' THEN amount ELSE CAST(0 AS DECIMAL(18, 3)) END) "
                     f"AS DECIMAL(18, 3)) AS {c}") for c, t in SUMS],
            F.expr("CAST(count(*) AS INT) AS n"), F.expr("max(occurred_at) AS last_at"))
        view = f"peer_batch_sums_{batch_id}"
        sums.createOrReplaceTempView(view)
        u_rider, u_settle, u_status = balances(updated)
        sets = ", ".join([f"t.{c} = CAST({updated(c)} AS DECIMAL(18, 3))" for c, _ in SUMS] + [
            f"t.rider_balance = {u_rider}", f"t.settlement_balance = {u_settle}", f"t.status = {u_status}",
            "t.event_count = t.event_count + s.n", "t.last_occurred_at = greatest(t.last_occurred_at, s.last_at)",
            f"t.batch_id = {batch_id}"])
        cols = ["trip_id", "currency"] + [c for c, _ in SUMS] + [
            "rider_balance", "settlement_balance", "status", "event_count", "last_occurred_at", "batch_id"]
        vals = ["s.trip_id", "s.currency"] + [inserted(c) for c, _ in SUMS] + list(balances(inserted)) + [
            "s.n", "s.last_at", str(batch_id)]
        df.sparkSession.sql(f"""MERGE INTO {ns}.trip_balances t USING {view} s
            ON t.trip_id = s.trip_id AND t.currency = s.currency
            WHEN MATCHED AND t.batch_id < {batch_id} THEN UPDATE SET {sets}
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)}) VALUES ({", ".join(vals)})""")
        df.sparkSession.catalog.dropTempView(view)
        if batch_id > done["rejected_events"]:
            bad = df.where("reason IS NOT NULL").selectExpr(
                "part AS kafka_partition", "off AS kafka_offset", "k AS kafka_key", "v AS payload", "reason",
                f"CAST({batch_id} AS BIGINT) AS batch_id", "current_timestamp() AS rejected_at")
            if not bad.isEmpty():
                bad.writeTo(f"{ns}.rejected_events").option("snapshot-property.peer.batch-id", str(batch_id)).append()
            done["rejected_events"] = batch_id
        valid.selectExpr(
            "event_id", "event_type", "trip_id", "amount", "currency", "occurred_at", "rider_id", "driver_id",
            "payment_id", "payout_id", "schema_version", "part AS kafka_partition", "off AS kafka_offset",
            f"CAST({batch_id} AS BIGINT) AS batch_id", "current_timestamp() AS ingested_at",
        ).writeTo(f"{ns}.ledger_events").option("snapshot-property.peer.batch-id", str(batch_id)).append()
        done["ledger_events"] = batch_id
        df.unpersist()

    if a.explain:
        first_seen.explain(True)
        return
    query = (first_seen.writeStream.foreachBatch(write_batch)
             .option("checkpointLocation", os.path.abspath(a.checkpoints))
             .trigger(processingTime=f"{a.interval_ms} milliseconds")
             .start())
    print(f"spark query started: {query.id} at {time.time():.3f}", flush=True)
    # Runs until the bench stops the process group.
    query.awaitTermination()


if __name__ == "__main__":
    sys.exit(main())
