#!/usr/bin/env python3
"""recon against its peers (issue 17): one topic, published once, drained one engine after another into fresh
tables, for several rounds: recon exactly-once, recon at-least-once, Apache Flink (PyFlink, Flink SQL) and Spark
Structured Streaming, each doing recon's work as closely as it allows (README.md beside this file says how and
what differs). Every result is read back and checked against the truth the generator recorded in PostgreSQL.

Each run is timed from the engine's start until its tables hold every valid event and the balances of the same
commit (the bench polls the Iceberg metadata through the SQL catalog every 0.25 s), then the engine is stopped.
CPU seconds and peak RSS cover every process of the engine (its own session: PyFlink's and PySpark's JVMs
included): /proc is sampled every 0.25 s, and the root's wait4 rusage (reaped children included) is taken when
it is larger. Needs the services of infra/local (Kafka, PostgreSQL; warehouses and checkpoints are local
directories, so the Python S3 test server is not what is measured) and bench/peers/install:

    bash infra/local/up && eval "$(bash infra/local/env)"
    CARGO_TARGET_DIR=/tmp/rel-target cargo build --release -p recon-pipeline
    bench/peers/run --binary /tmp/rel-target/release/recon-pipeline --trips 200000 --rounds 3 --out /tmp/peers.json
    bench/peers/run --smoke            # tiny topic, one round: proves all four complete and exact (CI)

`bench/peers/run` installs (cached) and runs this file with $RECON_CACHE/venv-spark's Python. Prints one JSON
document on stdout (and to --out) and a human summary on stderr; exits 1 if any run failed or was not exact.
"""

import argparse
import datetime
import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ENGINES = ["recon-eo", "recon-alo", "flink", "spark"]
# The snapshot-summary key that names the commit (checkpoint / batch) of each engine's tables.
COMMIT_KEY = {"recon": "recon.checkpoint-id", "flink": "flink.max-committed-checkpoint-id", "spark": "peer.batch-id"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Sessions of the engine or verifier running now: killed if this bench is stopped (timeout, Ctrl-C), so that no
# JVM outlives it.
RUNNING = set()


def stopped(signum, _frame):
    kill_running()
    raise SystemExit(128 + signum)
PAGE = os.sysconf("SC_PAGE_SIZE")


def kind(engine):
    return engine.split("-")[0]


def recon_config(job, topic, work, interval_ms, delivery):
    return f"""job_id = "{job}"
delivery = "{delivery}"
[source]
brokers = "{os.environ['RECON_KAFKA_BOOTSTRAP']}"
topic = "{topic}"
[catalog]
uri = "{os.environ['RECON_PG_CATALOG_URL']}"
warehouse = "{work}/warehouse"
namespace = "{job}"
[checkpoint]
store = "{work}/checkpoints"
interval_ms = {interval_ms}
[state]
cold_dir = "{work}/cold"
"""


class Tree(threading.Thread):
    """Samples every process of one session (the engine's, started with start_new_session) every `period` s:
    CPU per process (last value seen) and the sum of RSS at each sample (its peak)."""

    def __init__(self, sid, period=0.25):
        super().__init__(daemon=True)
        self.sid, self.period = sid, period
        self.cpu, self.names = {}, {}
        self.peak_rss = 0
        self.stop = threading.Event()

    def sample(self):
        total = 0
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
                rest = stat[stat.rindex(")") + 2:].split()
                # rest[0] is field 3 (state): session is field 6, utime 14, stime 15, rss 24.
                if int(rest[3]) != self.sid:
                    continue
                pid = int(d)
                self.cpu[pid] = (int(rest[11]) + int(rest[12])) / CLK_TCK
                total += int(rest[21]) * PAGE
                self.names[pid] = stat[stat.index("(") + 1:stat.rindex(")")]
            except (OSError, ValueError, IndexError):
                continue
        self.peak_rss = max(self.peak_rss, total)

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period)


class Catalog:
    """Reads the current snapshot summaries of a namespace's tables: the SQL catalog (PostgreSQL) names each
    table's metadata file, which lies in the run's local warehouse."""

    def __init__(self, url):
        import psycopg2

        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        self.cache = {}

    def forget(self, namespace):
        """Removes a namespace of this bench (its tables and properties) from the catalog database."""
        with self.conn.cursor() as cur:
            cur.execute("DELETE FROM iceberg_tables WHERE catalog_name = 'recon' AND table_namespace = %s",
                        (namespace,))
            cur.execute("DELETE FROM iceberg_namespace_properties WHERE catalog_name = 'recon' AND namespace = %s",
                        (namespace,))

    def summaries(self, namespace):
        with self.conn.cursor() as cur:
            cur.execute("SELECT table_name, metadata_location FROM iceberg_tables WHERE catalog_name = 'recon' "
                        "AND table_namespace = %s", (namespace,))
            rows = cur.fetchall()
        out = {}
        for table, location in rows:
            if location not in self.cache:
                path = re.sub(r"^file:(//)?", "", location)
                opener = gzip.open if path.endswith(".gz") else open
                with opener(path, "rt") as f:
                    meta = json.load(f)
                current = meta.get("current-snapshot-id")
                snaps = meta.get("snapshots") or []
                summary = next((s["summary"] for s in snaps if s["snapshot-id"] == current), {})
                self.cache[location] = {"summary": summary, "snapshots": len(snaps)}
            out[table] = self.cache[location]
        return out


def wait_rusage(proc, deadline):
    """Waits for `proc` (at most `deadline` seconds); returns (status, cpu_s, maxrss_kib) or None."""
    end = time.time() + deadline
    while time.time() < end:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = status
            return status, ru.ru_utime + ru.ru_stime, ru.ru_maxrss
        time.sleep(0.05)
    return None


def session_pids(sid):
    """The live (not zombie) processes of session `sid`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
                rest = stat[stat.rindex(")") + 2:].split()
                if int(rest[3]) == sid and rest[0] != "Z":
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                continue
    return out


def stop_engine(proc, engine, tree):
    """recon: SIGTERM (final checkpoint and commit, exit 0). The JVM engines: SIGTERM to the whole session
    (its process group). SIGKILL to the group after the deadlines; waits until no process of the session is left
    (a JVM whose parent exited first). Returns the root's wait4 (status, cpu_s, maxrss_kib) or None."""
    try:
        if kind(engine) == "recon":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    ru = wait_rusage(proc, 120)
    if ru is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        ru = wait_rusage(proc, 30)
    end, killed = time.time() + 30, 0
    while session_pids(tree.sid):
        tree.sample()
        if time.time() > end:
            if killed == 3:
                print(f"WARNING: processes {session_pids(tree.sid)} of {engine} survive SIGKILL", file=sys.stderr)
                break
            try:
                os.killpg(tree.sid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            end, killed = time.time() + 10, killed + 1
        time.sleep(0.1)
    return ru


def launch(engine, a, topic, work, namespace):
    log = open(os.path.join(work, f"{engine}.log"), "w")
    env = dict(os.environ)
    if kind(engine) == "recon":
        cfg = os.path.join(work, "recon.toml")
        with open(cfg, "w") as f:
            f.write(recon_config(namespace, topic, work, a.interval_ms,
                                 "exactly-once" if engine == "recon-eo" else "at-least-once"))
        cmd = [a.binary, "run", "--config", cfg]
    elif engine == "flink":
        jars = sorted(os.path.join(a.flink_jars, j) for j in os.listdir(a.flink_jars) if j.endswith(".jar"))
        env.update({
            # Flink's lib/ is PyFlink's; these go on the same JVM classpath (what HADOOP_CLASSPATH is for).
            "HADOOP_CLASSPATH": os.pathsep.join(jars + [os.path.join(a.udf_dir, "peers-flink-udf.jar")]),
            "FLINK_LOG_DIR": work,
            "LOG4J_PROPERTIES": os.path.join(HERE, "conf", "flink-log4j.properties"),
            "JVM_ARGS": f"-Xmx{a.jvm_heap}",
        })
        cmd = [a.flink_python, os.path.join(HERE, "flink_job.py"), "--brokers", os.environ["RECON_KAFKA_BOOTSTRAP"],
               "--topic", topic, "--catalog-url", os.environ["RECON_PG_CATALOG_URL"],
               "--warehouse", os.path.join(work, "warehouse"), "--namespace", namespace,
               "--checkpoints", os.path.join(work, "checkpoints"), "--interval-ms", str(a.interval_ms),
               "--parallelism", str(a.parallelism)]
    else:
        env.update({"SPARK_LOCAL_IP": "127.0.0.1"})
        cmd = [a.spark_python, os.path.join(HERE, "spark_job.py"), "--brokers", os.environ["RECON_KAFKA_BOOTSTRAP"],
               "--topic", topic, "--warehouse", os.path.join(work, "warehouse"), "--namespace", namespace,
               "--checkpoints", os.path.join(work, "checkpoints"), "--interval-ms", str(a.interval_ms),
               "--max-offsets-per-trigger", str(a.spark_max_offsets_per_trigger),
               "--kafka-jars", a.spark_kafka_jars, "--udf-jar", os.path.join(a.udf_dir, "peers-spark-udf.jar"),
               "--driver-memory", a.jvm_heap, "--parallelism", str(a.parallelism)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True), log.name


def startup_seconds(engine, text, started):
    """When the engine was ready to read, from its log: recon's "recovered" line (UTC), the JVM jobs' own line
    printed once the job was submitted / the query started (flink_job.py, spark_job.py)."""
    if kind(engine) == "recon":
        m = re.search(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+INFO recon_pipeline::job: recovered", text, re.M)
        if not m:
            return None
        at = datetime.datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
    else:
        m = re.search(r"(?:job submitted|query started): \S+ at ([0-9.]+)", text)
        if not m:
            return None
        at = float(m.group(1))
    return at - started


def run_engine(engine, a, topic, work, namespace, truth_events, catalog):
    started = time.time()
    proc, log = launch(engine, a, topic, work, namespace)
    RUNNING.add(proc.pid)
    tree = Tree(proc.pid)
    tree.start()
    key = COMMIT_KEY[kind(engine)]
    first_commit = done_at = None
    ledger_commit = None
    end = started + a.deadline_s
    problem = None
    while True:
        if proc.poll() is not None:
            problem = f"exited with {proc.returncode} before it was done"
            break
        if time.time() > end:
            problem = f"not done within {a.deadline_s} s"
            break
        tables = catalog.summaries(namespace)
        ledger = tables.get("ledger_events", {}).get("summary", {})
        records = int(ledger.get("total-records", 0))
        if records and first_commit is None:
            first_commit = time.time() - started
        if records > truth_events:
            problem = f"ledger_events holds {records} rows, more than the {truth_events} events of the truth"
            break
        if records == truth_events:
            ledger_commit = int(ledger.get(key, -1))
            if kind(engine) == "spark":
                # trip_balances is merged before the ledger's append in the same batch (spark_job.py).
                done_at = time.time()
                break
            balances = tables.get("trip_balances", {}).get("summary", {})
            if int(balances.get(key, -1)) >= ledger_commit:
                done_at = time.time()
                break
        time.sleep(0.25)
    seconds = (done_at or time.time()) - started
    ru = stop_engine(proc, engine, tree)
    RUNNING.discard(proc.pid)
    tree.stop.set()
    tree.join(timeout=5)
    cpu_sampled = sum(tree.cpu.values())
    cpu_rusage = ru[1] if ru else 0.0
    status = ru[0] if ru else None
    text = open(log, errors="replace").read()
    if kind(engine) == "recon" and problem is None and (status != 0 or "stopped cleanly" not in text):
        problem = f"recon did not stop cleanly (status {status})"
    startup = startup_seconds(engine, text, started)
    tables = catalog.summaries(namespace)
    return {
        "engine": engine, "namespace": namespace, "seconds": seconds, "first_commit_s": first_commit,
        "events_per_s": truth_events / seconds if done_at else None,
        "cpu_seconds": max(cpu_sampled, cpu_rusage), "cpu_seconds_sampled": cpu_sampled,
        "cpu_seconds_root_rusage": cpu_rusage,
        "peak_rss_mib": tree.peak_rss / 2**20, "startup_s": startup,
        "events_per_s_after_startup": truth_events / (seconds - startup) if done_at and startup else None,
        "processes": sorted(set(tree.names.values())), "ledger_commit": ledger_commit,
        "ledger_snapshots": tables.get("ledger_events", {}).get("snapshots"),
        "balances_snapshots": tables.get("trip_balances", {}).get("snapshots"),
        "logs": work, "problem": problem,
        "log_tail": text[-3000:] if problem else None,
    }


def publish(a, topic):
    gen = subprocess.run([a.binary, "generate", "--brokers", os.environ["RECON_KAFKA_BOOTSTRAP"], "--topic", topic,
                          "--partitions", str(a.partitions), "--trips", str(a.trips), "--seed", str(a.seed),
                          "--poison-rate", str(a.poison_rate), "--truth-postgres", os.environ["RECON_PG_TRUTH_URL"], "--no-progress"],
                         capture_output=True, text=True, timeout=3600)
    out = gen.stdout + gen.stderr
    m = re.search(r"published (\d+) records", out)
    t = re.search(r"truth\s+run (\S+): (\d+) events, (\d+) rejects", out)
    if gen.returncode != 0 or not m or not t:
        raise SystemExit(f"generate failed:\n{out[-4000:]}")
    summary = [line for line in out[out.index("published"):].splitlines() if not re.match(r"\d{4}-\d\d-", line)]
    return {"records": int(m.group(1)), "truth_run": t.group(1), "truth_events": int(t.group(2)),
            "truth_rejects": int(t.group(3)), "generate_summary": summary}


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def ratio(x, y):
    return x / y if x is not None and y else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="recon-pipeline (default: target/release/recon-pipeline; with --smoke, "
                    "target/debug/recon-pipeline after cargo build)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny topic (--trips 1500, 4 partitions, --poison-rate 0.01), one round, deadline 240 s per "
                    "run, 300 s for all runs")
    ap.add_argument("--trips", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--poison-rate", type=float, default=0.001,
                    help="the generator's fraction of bad records, cycling through its 20 classes (--smoke: 0.01, "
                    "so that every class is there)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"any of {','.join(ENGINES)}")
    ap.add_argument("--interval-ms", type=int, default=2000,
                    help="recon's checkpoint interval, Flink's checkpoint interval, Spark's trigger interval")
    ap.add_argument("--parallelism", type=int, default=2, help="Flink's parallelism and Spark's local[N]")
    ap.add_argument("--jvm-heap", default="2g", help="-Xmx of Flink's JVM and spark.driver.memory")
    ap.add_argument("--spark-max-offsets-per-trigger", type=int, default=0, help="0: no limit (Spark's default)")
    ap.add_argument("--deadline-s", type=int, default=1800, help="per run, from start to done")
    ap.add_argument("--budget-s", type=int, default=0,
                    help="the runs together, from the first start (0: none; --smoke: 300); a run gets what is left")
    ap.add_argument("--seed", type=int, help="generator seed (default: random, recorded in the JSON)")
    ap.add_argument("--out")
    ap.add_argument("--keep", action="store_true",
                    help="with --smoke, keep the runs' directories and catalog entries (kept anyway on a failure, "
                    "and always without --smoke)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    if a.smoke:
        a.trips, a.partitions, a.rounds, a.deadline_s = 1500, 4, 1, min(a.deadline_s, 240)
        a.poison_rate = max(a.poison_rate, 0.01)
        a.budget_s = a.budget_s or 300
    for k in ("RECON_KAFKA_BOOTSTRAP", "RECON_PG_CATALOG_URL", "RECON_PG_TRUTH_URL"):
        if k not in os.environ:
            raise SystemExit(f'{k} is not set: eval "$(bash infra/local/env)" first')
    for k in ("PEERS_FLINK_VENV", "PEERS_FLINK_JARS", "PEERS_SPARK_VENV", "PEERS_SPARK_KAFKA_JARS", "PEERS_UDF_DIR"):
        if k not in os.environ:
            raise SystemExit(f"{k} is not set: run this through bench/peers/run (it installs and sets them)")
    a.flink_python = os.path.join(os.environ["PEERS_FLINK_VENV"], "bin", "python")
    a.spark_python = os.path.join(os.environ["PEERS_SPARK_VENV"], "bin", "python")
    a.flink_jars, a.spark_kafka_jars = os.environ["PEERS_FLINK_JARS"], os.environ["PEERS_SPARK_KAFKA_JARS"]
    a.udf_dir = os.environ["PEERS_UDF_DIR"]
    engines = [e for e in a.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            raise SystemExit(f"unknown engine {e!r}; known: {', '.join(ENGINES)}")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    if not a.binary and a.smoke:
        # The smoke proves completeness and exactness, not speed: the current debug build (what cargo test built).
        t = time.time()
        subprocess.run(["cargo", "build", "-q", "-p", "recon-pipeline", "--bin", "recon-pipeline"], cwd=ROOT,
                       check=True, timeout=3600)
        a.binary = os.path.join(target, "debug", "recon-pipeline")
        print(f"cargo build (debug) of {a.binary}: {time.time() - t:.1f} s", file=sys.stderr)
    elif not a.binary:
        a.binary = os.path.join(target, "release", "recon-pipeline")
        if not os.path.exists(a.binary):
            raise SystemExit(f"no {a.binary}: build it (nice -n 10 cargo build --release -p recon-pipeline) "
                             "or pass --binary")
    if a.seed is None:
        a.seed = random.randrange(1, 2**31)

    run = uuid.uuid4().hex[:8]
    topic = f"bench-peers-{run}.events"
    t0 = time.time()
    pub = publish(a, topic)
    print(f"published {pub['records']} records to {topic} ({pub['truth_events']} distinct valid events, "
          f"{pub['truth_rejects']} bad records) in {time.time() - t0:.1f} s", file=sys.stderr)
    catalog = Catalog(os.environ["RECON_PG_CATALOG_URL"])
    results = []
    budget_end = time.time() + a.budget_s if a.budget_s else None
    deadline = a.deadline_s
    for rnd in range(a.rounds):
        for engine in engines:
            if budget_end:
                a.deadline_s = max(1, min(deadline, int(budget_end - time.time())))
            work = tempfile.mkdtemp(prefix=f"peers-{engine}-")
            namespace = f"bp{run}r{rnd}{engine.replace('-', '')}"
            r = run_engine(engine, a, topic, work, namespace, pub["truth_events"], catalog)
            r["round"] = rnd
            results.append(r)
            brief = {k: r[k] for k in ("engine", "round", "seconds", "events_per_s", "cpu_seconds", "peak_rss_mib",
                                       "startup_s", "first_commit_s", "ledger_snapshots", "problem")}
            print(json.dumps(brief), file=sys.stderr)

    # Read every result back (one Spark session for all) and check it against the truth.
    spec = os.path.join(tempfile.mkdtemp(prefix="peers-verify-"), "spec.json")
    with open(spec, "w") as f:
        json.dump({"truth_run": pub["truth_run"], "runs": [
            {"namespace": r["namespace"], "kind": kind(r["engine"])} for r in results]}, f)
    t_verify = time.time()
    v = subprocess.Popen([a.spark_python, os.path.join(HERE, "verify.py"), "--spec", spec, "--out", spec + ".out"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env=dict(os.environ, SPARK_LOCAL_IP="127.0.0.1"))
    RUNNING.add(v.pid)
    try:
        v_out, v_err = v.communicate(timeout=240 if a.smoke else 3600)
    except subprocess.TimeoutExpired:
        os.killpg(v.pid, signal.SIGKILL)
        v_out, v_err = v.communicate()
    RUNNING.discard(v.pid)
    if v.returncode != 0 or not os.path.exists(spec + ".out"):
        raise SystemExit(f"verify.py failed ({v.returncode}):\n{v_out[-3000:]}\n{v_err[-5000:]}")
    checks = json.load(open(spec + ".out"))
    for r in results:
        r["check"] = checks[r["namespace"]]
        r["exact"] = r["problem"] is None and r["check"]["exact"]
    verify_s = time.time() - t_verify
    print(f"read back and checked {len(results)} runs against the truth in {verify_s:.1f} s", file=sys.stderr)

    summary = {}
    for engine in engines:
        rs = [r for r in results if r["engine"] == engine]
        summary[engine] = {
            "events_per_s_median": median(r["events_per_s"] for r in rs),
            "seconds_median": median(r["seconds"] for r in rs),
            "cpu_seconds_median": median(r["cpu_seconds"] for r in rs),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rs),
            "first_commit_s_median": median(r["first_commit_s"] for r in rs),
            "startup_s_median": median(r["startup_s"] for r in rs),
            "events_per_s_after_startup_median": median(r["events_per_s_after_startup"] for r in rs),
            "runs": len(rs), "exact_runs": sum(1 for r in rs if r["exact"]),
        }

    def ratios(x, y):
        if x not in summary or y not in summary:
            return None
        sx, sy = summary[x], summary[y]
        return {"events_per_s": ratio(sx["events_per_s_median"], sy["events_per_s_median"]),
                "events_per_s_after_startup": ratio(sx["events_per_s_after_startup_median"],
                                                    sy["events_per_s_after_startup_median"]),
                "cpu_seconds": ratio(sx["cpu_seconds_median"], sy["cpu_seconds_median"]),
                "peak_rss": ratio(sx["peak_rss_mib_max"], sy["peak_rss_mib_max"])}

    doc = {
        "run": run, "topic": topic, "seed": a.seed, "trips": a.trips, "partitions": a.partitions,
        "rounds": a.rounds, "smoke": a.smoke, "poison_rate": a.poison_rate, "interval_ms": a.interval_ms, "parallelism": a.parallelism,
        "jvm_heap": a.jvm_heap, "spark_max_offsets_per_trigger": a.spark_max_offsets_per_trigger,
        "binary": a.binary, "versions": os.environ.get("PEERS_VERSIONS"), "publish": pub,
        "verify_seconds": verify_s, "results": results, "summary": summary,
        "ratios": {"recon_eo_over_flink": ratios("recon-eo", "flink"),
                   "recon_eo_over_spark": ratios("recon-eo", "spark"),
                   "exactly_once_over_at_least_once": ratios("recon-eo", "recon-alo")},
        "all_exact": all(r["exact"] for r in results),
    }
    out = json.dumps(doc, indent=2)
    print(out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out)
    print(f"\n{pub['records']} records ({pub['truth_events']} distinct valid events) on {a.partitions} partitions, "
          f"{a.rounds} round(s), interval {a.interval_ms} ms, medians:", file=sys.stderr)
    print(f"  {'engine':10} {'events/s':>10} {'seconds':>8} {'cpu s':>7} {'peak rss':>9} {'startup':>8} "
          f"{'events/s after startup':>23}  exact", file=sys.stderr)

    def num(x, fmt):
        return format(x, fmt) if x is not None else "-"

    for engine, s in summary.items():
        print(f"  {engine:10} {num(s['events_per_s_median'], ',.0f'):>10} {s['seconds_median']:8.1f} "
              f"{s['cpu_seconds_median']:7.1f} {s['peak_rss_mib_max']:5.0f} MiB {num(s['startup_s_median'], '.1f'):>6} s "
              f"{num(s['events_per_s_after_startup_median'], ',.0f'):>23}  {s['exact_runs']}/{s['runs']}",
              file=sys.stderr)
    for name, rr in doc["ratios"].items():
        if rr:
            parts = [f"{k} {v:.2f}x" for k, v in rr.items() if v is not None]
            print(f"  {name}: {', '.join(parts)}", file=sys.stderr)
    for r in results:
        if not r["exact"]:
            print(f"  NOT EXACT: {r['engine']} round {r['round']}: {r['problem'] or ''} "
                  f"{json.dumps(r['check'].get('failures'))} (logs {r['logs']})", file=sys.stderr)
    print(f"  all runs complete and exact: {doc['all_exact']}", file=sys.stderr)
    if a.smoke and doc["all_exact"] and not a.keep:
        # The smoke leaves nothing behind but its topic and truth rows: its work directories and catalog entries
        # (namespaces of its own, unique per run) go.
        for r in results:
            shutil.rmtree(r["logs"], ignore_errors=True)
            catalog.forget(r["namespace"])
        shutil.rmtree(os.path.dirname(spec), ignore_errors=True)
    return 0 if doc["all_exact"] else 1


def kill_running():
    for sid in list(RUNNING):
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_running()
