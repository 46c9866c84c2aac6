#!/usr/bin/env python3
"""Reads every run's tables back (one Spark session, catalog `recon` on RECON_PG_CATALOG_URL) and checks them
against the truth the generator recorded in PostgreSQL (RECON_PG_TRUTH_URL: truth_events, truth_rejects of one
run id). Run by bench/peers/run.py with $RECON_CACHE/venv-spark's Python; writes {namespace: checks} as JSON.

Per run (namespace):
  ledger     rows == distinct event ids == the truth's distinct valid events; joined with truth_events on
             event_id: none missing, none extra, none whose trip, type, amount, currency or occurred_at differs.
  balances   the current balance of every trip (recon: its trip_balances row of the highest checkpoint_id; the
             peers: their upserted/merged row) against the truth's per-trip sums (truth_events grouped by trip):
             currency, the six sums, rider_balance, settlement_balance and event_count equal for every trip,
             none missing, none extra, one row per trip.
  rejected   rejected_events counted by reason == the truth's bad records by class (recon: all of them; the peers:
             all but conflicting_duplicate, which they drop as a duplicate event id instead of dead-lettering).
"""

import argparse
import json
import os
import sys
from urllib.parse import urlparse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from spark_job import SUMS, session  # noqa: E402

CHECKED = ["currency"] + [c for c, _ in SUMS] + ["rider_balance", "settlement_balance", "event_count"]


def jdbc(url):
    u = urlparse(url)
    return f"jdbc:postgresql://{u.hostname}:{u.port or 5432}{u.path}", u.username or "", u.password or ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help='{"truth_run": ..., "runs": [{"namespace", "kind"}]}')
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    spec = json.load(open(a.spec))
    spark = session("recon-peers-verify", os.path.join(os.path.dirname(a.spec), "warehouse"))
    url, user, password = jdbc(os.environ["RECON_PG_TRUTH_URL"])

    def truth(query):
        return (spark.read.format("jdbc").option("url", url).option("user", user).option("password", password)
                .option("driver", "org.postgresql.Driver").option("query", query).load())

    run = spec["truth_run"].replace("'", "''")
    events = truth(f"""SELECT event_id::text AS event_id, event_type, trip_id, amount::numeric(18, 3) AS amount,
                              currency, occurred_at FROM truth_events WHERE run_id = '{run}'""").cache()
    events.createOrReplaceTempView("truth_events")
    n_truth = events.count()
    reject_classes = {r["class"]: r["n"] for r in truth(
        f"SELECT class, count(*)::bigint AS n FROM truth_rejects WHERE run_id = '{run}' GROUP BY class").collect()}
    sums = ", ".join(f"CAST(sum(CASE WHEN event_type = '{t}' THEN amount ELSE 0 END) AS DECIMAL(18, 3)) AS {c}"
                     for c, t in SUMS)
    spark.sql(f"""SELECT trip_id, min(currency) AS currency, {sums}, CAST(count(*) AS INT) AS event_count
                  FROM truth_events GROUP BY trip_id""").createOrReplaceTempView("truth_sums")
    spark.sql("""SELECT *, CAST((charged + adjusted) - collected AS DECIMAL(18, 3)) AS rider_balance,
                        CAST((charged + adjusted - refunded) - paid_out - fees AS DECIMAL(18, 3)) AS settlement_balance
                 FROM truth_sums""").cache().createOrReplaceTempView("truth_trips")
    n_trips = spark.table("truth_trips").count()

    out = {}
    for r in spec["runs"]:
        ns, kind = f"recon.`{r['namespace']}`", r["kind"]
        c = {"truth_events": n_truth, "truth_trips": n_trips}
        row = spark.sql(f"SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM {ns}.ledger_events").first()
        c["ledger_rows"], c["ledger_distinct_ids"] = row["n"], row["ids"]
        same = " AND ".join(f"l.{k} <=> t.{k}" for k in ("trip_id", "event_type", "amount", "currency", "occurred_at"))
        row = spark.sql(f"""SELECT
              count_if(l.event_id IS NULL) AS missing, count_if(t.event_id IS NULL) AS extra,
              count_if(l.event_id IS NOT NULL AND t.event_id IS NOT NULL AND NOT ({same})) AS differ
            FROM {ns}.ledger_events l FULL OUTER JOIN truth_events t ON l.event_id = t.event_id""").first()
        c["ledger_missing"], c["ledger_extra"], c["ledger_differ"] = row["missing"], row["extra"], row["differ"]
        if kind == "recon":
            current = f"""SELECT * FROM (SELECT b.*, row_number() OVER (PARTITION BY trip_id
                              ORDER BY checkpoint_id DESC) AS rn FROM {ns}.trip_balances b) WHERE rn = 1"""
        else:
            current = f"SELECT * FROM {ns}.trip_balances"
        spark.sql(current).createOrReplaceTempView("current_balances")
        same = " AND ".join(f"b.{k} <=> t.{k}" for k in CHECKED)
        row = spark.sql(f"""SELECT count(*) AS n, count(DISTINCT b.trip_id) AS trips,
              count_if(t.trip_id IS NULL) AS extra,
              count_if(t.trip_id IS NOT NULL AND NOT ({same})) AS differ
            FROM current_balances b LEFT JOIN truth_trips t ON b.trip_id = t.trip_id""").first()
        c["balance_rows"], c["balance_trips"] = row["n"], row["trips"]
        c["balance_extra"], c["balance_differ"] = row["extra"], row["differ"]
        c["balance_missing"] = spark.sql("""SELECT count(*) AS n FROM truth_trips t
            LEFT ANTI JOIN current_balances b ON b.trip_id = t.trip_id""").first()["n"]
        c["balance_status"] = {x["status"]: x["n"] for x in spark.sql(
            "SELECT status, count(*) AS n FROM current_balances GROUP BY status").collect()}
        c["rejected"] = {x["reason"]: x["n"] for x in spark.sql(
            f"SELECT reason, count(*) AS n FROM {ns}.rejected_events GROUP BY reason").collect()}
        expected = dict(reject_classes)
        if kind != "recon":
            expected.pop("conflicting_duplicate", None)
        c["rejected_expected"] = expected
        failures = []
        if not (c["ledger_rows"] == c["ledger_distinct_ids"] == n_truth):
            failures.append(f"ledger rows {c['ledger_rows']}, distinct ids {c['ledger_distinct_ids']}, truth {n_truth}")
        for k in ("ledger_missing", "ledger_extra", "ledger_differ", "balance_missing", "balance_extra",
                  "balance_differ"):
            if c[k]:
                failures.append(f"{k} {c[k]}")
        if not (c["balance_rows"] == c["balance_trips"] == n_trips):
            failures.append(f"balance rows {c['balance_rows']}, trips {c['balance_trips']}, truth trips {n_trips}")
        if c["rejected"] != expected:
            failures.append(f"rejected by reason {c['rejected']} != expected {expected}")
        c["failures"], c["exact"] = failures, not failures
        out[r["namespace"]] = c
        print(json.dumps({"namespace": r["namespace"], "exact": c["exact"], "failures": failures}), file=sys.stderr)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    spark.stop()


if __name__ == "__main__":
    main()
